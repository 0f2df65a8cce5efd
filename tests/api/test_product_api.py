"""The /product routes over real HTTP on embedded FalkorDB, Qdrant edge and SQLite (open mode)."""

from __future__ import annotations

import time
import uuid

from tests.fixtures.api import RunningApi

CONVERSATION = [
    {
        "role": "user",
        "content": "I adopted a grey cat named Miso from the shelter last weekend.",
        "chat_time": "2026-05-02T10:00:00",
        "message_id": "m-1",
    },
    {
        "role": "assistant",
        "content": "Congratulations on adopting Miso! Grey cats are lovely.",
        "chat_time": "2026-05-02T10:00:05",
        "message_id": "m-2",
    },
]


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def add(api: RunningApi, user: str, messages: object, **fields: object) -> dict:
    response = api.post("/product/add", {"user_id": user, "messages": messages, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def search(api: RunningApi, user: str, query: str, **fields: object) -> dict:
    response = api.post("/product/search", {"user_id": user, "query": query, **fields})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def count(api: RunningApi, user: str, cube: str | None = None) -> int:
    body = {"user_id": user, "mem_cube_id": cube or user}
    response = api.post("/product/get_memory", body)
    assert response.status_code == 200, response.text
    return response.json()["data"]["text_mem"][0]["total_nodes"]


def test_health(open_api: RunningApi) -> None:
    body = open_api.http.get("/health").json()
    assert body["status"] == "healthy"
    assert body["service"] == "memos-ray"


def test_add_then_search_returns_memory_with_turn_sources(open_api: RunningApi) -> None:
    user = new_user()
    body = add(open_api, user, CONVERSATION, async_mode="sync")
    assert body["code"] == 200
    # One memory per turn (the default granularity); a user turn is a fact about the user.
    assert len(body["data"]) == 2
    said, answered = body["data"]
    assert (said["memory_type"], answered["memory_type"]) == ("UserMemory", "LongTermMemory")
    assert said["cube_id"] == user
    assert said["memory"] == f"user: [2026-05-02T10:00:00]: {CONVERSATION[0]['content']}"

    data = search(open_api, user, "Which shelter animal did I adopt last weekend?")
    memories = data["text_mem"][0]["memories"]
    assert data["text_mem"][0]["cube_id"] == user
    assert memories[0]["id"] == said["memory_id"]
    sources = memories[0]["metadata"]["sources"]
    assert [(s["message_id"], s["chat_time"]) for s in sources] == [("m-1", "2026-05-02T10:00:00")]
    assert 0.45 <= memories[0]["metadata"]["relativity"] <= 1.0
    assert "embedding" not in memories[0]["metadata"]
    assert set(data) >= {"text_mem", "pref_mem", "tool_mem", "skill_mem", "act_mem", "para_mem"}


def test_user_only_window_is_user_memory_and_strings_and_parts_are_accepted(
    open_api: RunningApi,
) -> None:
    user = new_user()
    only_user = [{"role": "user", "content": "I am allergic to peanuts."}]
    assert add(open_api, user, only_user)["data"][0]["memory_type"] == "UserMemory"
    plain = add(open_api, user, "The office wifi password rotates every Monday.")
    assert plain["data"][0]["memory"] == "The office wifi password rotates every Monday."
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "My passport number ends in 4471."},
                {"type": "image_url", "image_url": {"url": "https://example.invalid/p.png"}},
            ],
            "message_id": "p-1",
        }
    ]
    added = add(open_api, user, parts)["data"][0]
    assert "passport number ends in 4471" in added["memory"]
    assert count(open_api, user) == 3


def test_exact_duplicates_are_stored_once(open_api: RunningApi) -> None:
    user = new_user()
    first = add(open_api, user, CONVERSATION)
    second = add(open_api, user, CONVERSATION)
    assert [m["memory_id"] for m in first["data"]] == [m["memory_id"] for m in second["data"]]
    assert "2 duplicates skipped" in second["message"]
    assert count(open_api, user) == 2


def test_async_add_without_a_model_stores_fast_memories_at_once(open_api: RunningApi) -> None:
    body = add(open_api, new_user(), CONVERSATION, async_mode="async")
    assert "stored in fast mode at once" in body["message"] and "no chat model" in body["message"]
    assert body["data"] and all("task_id" not in entry for entry in body["data"])


def test_relativity_threshold_and_top_k(open_api: RunningApi) -> None:
    user = new_user()
    for i, fact in enumerate(
        [
            "I play the cello in a community orchestra.",
            "My sister lives in Lisbon and works as an architect.",
            "I run five kilometres every morning before work.",
        ]
    ):
        add(open_api, user, [{"role": "user", "content": fact, "message_id": f"f{i}"}])
    data = search(open_api, user, "Which instrument do I play?", top_k=1)
    memories = data["text_mem"][0]["memories"]
    assert len(memories) == 1
    assert "cello" in memories[0]["memory"]
    strict = search(open_api, user, "Which instrument do I play?", relativity=0.99)
    assert strict["text_mem"][0]["memories"] == []
    loose = search(open_api, user, "Which instrument do I play?", relativity=0.0, dedup="no")
    assert len(loose["text_mem"][0]["memories"]) == 3


def test_filter_dsl_on_info_and_dates(open_api: RunningApi) -> None:
    user = new_user()
    add(open_api, user, "Project Falcon ships in June.", info={"project": "falcon", "prio": 2})
    add(open_api, user, "Project Heron ships in July.", info={"project": "heron", "prio": 5})
    data = search(
        open_api, user, "When does the project ship?", relativity=0.0, filter={"project": "heron"}
    )
    texts = [m["memory"] for m in data["text_mem"][0]["memories"]]
    assert texts == ["Project Heron ships in July."]
    data = search(open_api, user, "project ship", relativity=0.0, filter={"prio": {"lt": 3}})
    assert [m["memory"] for m in data["text_mem"][0]["memories"]] == [
        "Project Falcon ships in June."
    ]
    data = search(
        open_api,
        user,
        "project ship",
        relativity=0.0,
        filter={"and": [{"created_at": {"gte": "2020-01-01"}}, {"project": {"in": ["falcon"]}}]},
    )
    assert len(data["text_mem"][0]["memories"]) == 1
    data = search(
        open_api, user, "project ship", relativity=0.0, filter={"created_at": {"lt": "2020-01-01"}}
    )
    assert data["text_mem"][0]["memories"] == []


def test_multi_cube_fan_out_and_per_cube_filter(open_api: RunningApi) -> None:
    user = new_user()
    cube = f"team-{uuid.uuid4().hex[:6]}"
    created = open_api.post("/product/create_cube", {"owner_id": user, "cube_id": cube})
    assert created.status_code == 200, created.text
    add(open_api, user, "I keep my bike in the basement storage room.")
    add(open_api, user, "The team bike rack is behind building C.", writable_cube_ids=[cube])
    data = search(
        open_api, user, "where is the bike", readable_cube_ids=[user, cube], relativity=0.0
    )
    assert [b["cube_id"] for b in data["text_mem"]] == [user, cube]
    assert all(len(b["memories"]) == 1 for b in data["text_mem"])
    per_cube = {user: {"memory": {"like": "nothing-matches"}}, cube: {"memory": {"like": "rack"}}}
    data = search(
        open_api,
        user,
        "where is the bike",
        readable_cube_ids=[user, cube],
        relativity=0.0,
        filter=per_cube,
    )
    assert [len(b["memories"]) for b in data["text_mem"]] == [0, 1]


def test_get_memory_pages_newest_first(open_api: RunningApi) -> None:
    user = new_user()
    ids = [add(open_api, user, f"Numbered note {i}.")["data"][0]["memory_id"] for i in range(5)]
    page1 = open_api.post(
        "/product/get_memory", {"user_id": user, "mem_cube_id": user, "page": 1, "page_size": 2}
    ).json()["data"]["text_mem"][0]
    page3 = open_api.post(
        "/product/get_memory", {"user_id": user, "mem_cube_id": user, "page": 3, "page_size": 2}
    ).json()["data"]["text_mem"][0]
    assert page1["total_nodes"] == 5
    assert [m["id"] for m in page1["memories"]] == [ids[4], ids[3]]
    assert [m["id"] for m in page3["memories"]] == [ids[0]]


def test_get_by_id_by_ids_and_get_all(open_api: RunningApi) -> None:
    user = new_user()
    added = [m["memory_id"] for m in add(open_api, user, CONVERSATION)["data"]]
    memory_id = added[0]
    one = open_api.http.get(f"/product/get_memory/{memory_id}").json()["data"]
    assert one["id"] == memory_id
    unknown = open_api.http.get(f"/product/get_memory/{uuid.uuid4()}")
    assert unknown.status_code == 200 and unknown.json()["data"] is None
    many = open_api.post("/product/get_memory_by_ids", [memory_id, str(uuid.uuid4())]).json()
    assert [m["id"] for m in many["data"]["memories"]] == [memory_id]
    everything = open_api.post("/product/get_all", {"user_id": user}).json()["data"]
    assert everything[0]["cube_id"] == user
    graph = everything[0]["memories"][0]
    assert sorted(n["id"] for n in graph["nodes"]) == sorted(added)
    assert graph["edges"] == [] and graph["total_nodes"] == 2
    assert everything[0]["memory_statistics"] == {"UserMemory": 1, "LongTermMemory": 1}


def test_delete_leaves_no_trace(open_api: RunningApi) -> None:
    user = new_user()
    marker = f"zebracode{uuid.uuid4().hex[:6]}"
    memory_id = add(open_api, user, f"The vault code word is {marker}.")["data"][0]["memory_id"]
    keep_id = add(open_api, user, "The vault is in the cellar.")["data"][0]["memory_id"]
    assert search(open_api, user, marker, relativity=0.0)["text_mem"][0]["memories"]
    response = open_api.post("/product/delete_memory", {"user_id": user, "memory_ids": [memory_id]})
    assert response.status_code == 200, response.text
    assert response.json()["data"]["deleted_count"] == 1

    found = search(open_api, user, marker, relativity=0.0, dedup="no")["text_mem"][0]["memories"]
    assert memory_id not in [m["id"] for m in found]
    service = open_api.stack.service
    assert service.graph.existing_ids(user, [memory_id]) == set()
    assert service.vectors.retrieve(user, [memory_id]) == []
    from memos_ray.core.keywords import query_vector

    keyword_hits = service.vectors.search_sparse([user], query_vector(marker), 10)
    assert memory_id not in [h.id for h in keyword_hits]
    assert service.graph.existing_ids(user, [keep_id]) == {keep_id}
    assert open_api.http.get(f"/product/get_memory/{memory_id}").json()["data"] is None


def test_delete_by_filter(open_api: RunningApi) -> None:
    user = new_user()
    add(open_api, user, "Temporary note one.", info={"kind": "temp"})
    add(open_api, user, "Permanent note.", info={"kind": "keep"})
    response = open_api.post(
        "/product/delete_memory", {"user_id": user, "filter": {"kind": "temp"}}
    )
    assert response.json()["data"]["deleted_count"] == 1
    assert count(open_api, user) == 1


def test_bad_input_is_refused_with_a_message_and_stores_nothing(open_api: RunningApi) -> None:
    user = new_user()
    add(open_api, user, "Baseline memory.")
    before = count(open_api, user)
    cases = [
        (
            open_api.http.post(
                "/product/add", content=b"{not json", headers={"content-type": "application/json"}
            ),
            422,
        ),
        (open_api.post("/product/add", {"messages": "no user id"}), 400),
        (open_api.post("/product/add", {"user_id": user, "messages": 42}), 422),
        (open_api.post("/product/add", {"user_id": user, "messages": []}), 400),
        (
            open_api.post(
                "/product/add", {"user_id": user, "messages": [{"role": "user", "content": "   "}]}
            ),
            400,
        ),
        (
            open_api.post(
                "/product/add", {"user_id": user, "messages": [{"role": "robot", "content": "hi"}]}
            ),
            422,
        ),
        (
            open_api.post(
                "/product/add",
                {"user_id": user, "messages": [{"role": "user", "content": "x" * 1_000_001}]},
            ),
            413,
        ),
        (open_api.post("/product/search", {"user_id": user, "query": "x", "top_k": "many"}), 422),
        (
            open_api.post(
                "/product/search",
                {"user_id": user, "query": "x", "filter": {"memory": {"regex": ".*"}}},
            ),
            400,
        ),
        (
            open_api.post(
                "/product/search",
                {"user_id": user, "query": "x", "readable_cube_ids": ["no-such-cube"]},
            ),
            404,
        ),
        (
            open_api.post(
                "/product/delete_memory", {"user_id": user, "memory_ids": ["a"], "filter": {"a": 1}}
            ),
            422,
        ),
    ]
    for response, status in cases:
        assert response.status_code == status, (status, response.text)
        body = response.json()
        assert body["code"] == status and body["message"], body
    assert count(open_api, user) == before
    unknown = open_api.post(
        "/product/search", {"user_id": user, "query": "x", "filter": {"memory": {"regex": ".*"}}}
    ).json()
    assert "unknown operator 'regex'" in unknown["message"]


def test_a_deeply_nested_filter_is_refused_not_a_stall(open_api: RunningApi) -> None:
    user = new_user()
    add(open_api, user, "Project Falcon ships in June.", info={"project": "falcon"})
    spec: dict = {"project": "falcon"}
    for i in range(20):
        spec = {"or": [{"project": f"x{i}"}, {"and": [{"prio": {"gte": 0}}, spec]}]}
    start = time.monotonic()
    response = open_api.post("/product/search", {"user_id": user, "query": "ship", "filter": spec})
    assert response.status_code == 422, response.text
    assert "filter.or[1].and[1]" in response.text and "deeper" in response.text
    assert time.monotonic() - start < 5


def test_a_graph_server_down_is_a_503_then_recovers(open_api: RunningApi) -> None:
    """Last in the module: it stops the shared graph server (and starts it again)."""
    user = new_user()
    add(open_api, user, "A note written before the outage.")
    server = open_api.stack._falkordb
    assert server is not None
    port = server.redis_port
    server.stop()
    try:
        response = open_api.post("/product/get_memory", {"user_id": user, "mem_cube_id": user})
        assert response.status_code == 503, response.text
        assert str(port) not in response.text  # no internal address in the answer
    finally:
        server.start()
    assert count(open_api, user) == 1


def test_a_cube_without_preferences_costs_one_store_search_per_ttl(open_api: RunningApi) -> None:
    """Searches ask the preference store once for a cube with nothing to find (then not
    again for the TTL), and a preference written here shows on the very next search."""
    from memos_ray.services.fine_reader import ExtractedPreference

    prefs = open_api.stack.services.preferences
    assert prefs is not None
    store = prefs.store
    calls: list[str] = []
    real_search, real_list = store.search, store.list

    def counted_search(*args: object, **kw: object) -> object:
        calls.append("search")
        return real_search(*args, **kw)  # type: ignore[arg-type]

    def counted_list(*args: object, **kw: object) -> object:
        calls.append("list")
        return real_list(*args, **kw)  # type: ignore[arg-type]

    user = new_user()
    add(open_api, user, CONVERSATION)
    store.search, store.list = counted_search, counted_list  # type: ignore[method-assign]
    try:
        for _ in range(3):
            assert search(open_api, user, "what tea do I like?")["pref_mem"][0]["memories"] == []
        assert calls == ["search"]
        prefs.add_extracted(user, user, [ExtractedPreference(preference="I like green tea")], [])
        found = search(open_api, user, "what tea do I like?")["pref_mem"][0]["memories"]
        assert [p["memory"] for p in found] == ["I like green tea"]
        assert calls == ["search", "search"]
    finally:
        del store.search, store.list

"""Fast-mode ranking through the API: speakers, sessions, dates, and index freshness."""

from __future__ import annotations

import uuid

from memos_ray.core.reader import Turn, fast_windows
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.services.memory import MemoryService
from tests.api.test_product_api import add, search
from tests.fixtures.api import RunningApi


def _user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def _sources(data: dict) -> list[str]:
    return [
        s["message_id"]
        for memory in data["text_mem"][0]["memories"]
        for s in memory["metadata"]["sources"]
    ]


def test_speaker_names_are_kept_and_rank(open_api: RunningApi) -> None:
    user = _user()
    chat = [
        ("Ann", "user", "I finally adopted a kitten, her name is Miso."),
        ("Bo", "assistant", "My dog Rex chewed my shoes again."),
        ("Ann", "user", "Pottery class was fun today."),
    ]
    messages = [
        {"role": role, "name": name, "content": text, "message_id": f"D1:{i}"}
        for i, (name, role, text) in enumerate(chat, start=1)
    ]
    added = add(open_api, user, messages, session_id="session_1")["data"]
    assert added[0]["memory"] == "Ann: I finally adopted a kitten, her name is Miso."
    found = search(open_api, user, "What pet does Bo have?", relativity=0)
    top = found["text_mem"][0]["memories"][0]
    assert top["metadata"]["sources"][0]["name"] == "Bo"
    assert top["metadata"]["sources"][0]["message_id"] == "D1:2"


def test_a_question_about_me_is_answered_by_what_i_said(open_api: RunningApi) -> None:
    """Roles only (no names): a first-person question lifts the user's own turns, one
    about the assistant's earlier words the assistant's (step 5's perspective term)."""
    user = _user()
    chat = [
        ("user", "Any tips for eating out in Tokyo?"),
        ("assistant", "Where to have the best ramen? Many had the best ramen at Ichiran."),
        ("user", "Last week I ate at a tiny noodle shop in Osaka: the best bowl of my life."),
        ("assistant", "That sounds wonderful."),
    ]
    messages = [
        {"role": role, "content": text, "message_id": f"m{i}"}
        for i, (role, text) in enumerate(chat)
    ]
    add(open_api, user, messages, session_id="s1")
    mine = search(open_api, user, "Where did I have the best ramen?", relativity=0)
    assert _sources(mine)[0] == "m2"
    yours = search(open_api, user, "Which ramen place did you recommend?", relativity=0)
    assert _sources(yours)[0] == "m1"


def test_reference_time_resolves_relative_dates(open_api: RunningApi) -> None:
    user = _user()
    said = [
        ("2026-03-01", "We had dinner at an Italian place downtown.", "a"),
        ("2026-04-20", "We had dinner at a Thai place downtown.", "b"),
        ("2026-01-10", "The car needs new winter tyres.", "c"),
        ("2026-02-02", "My brother moved to Oslo for work.", "d"),
        ("2026-02-14", "I signed up for a spring marathon.", "e"),
        ("2026-03-20", "The printer at the office broke again.", "f"),
        ("2026-04-02", "We painted the kitchen a pale green.", "g"),
        ("2026-05-01", "Our neighbour lent us a ladder.", "h"),
    ]
    for day, text, mid in said:
        message = {
            "role": "user",
            "content": text,
            "chat_time": f"{day}T19:00:00",
            "message_id": mid,
        }
        add(open_api, user, [message], session_id=f"s-{mid}")
    query = "Where did we have dinner last week?"
    late = search(open_api, user, query, relativity=0, reference_time="2026-04-25T12:00:00")
    early = search(open_api, user, query, relativity=0, reference_time="2026-03-06T12:00:00")
    assert _sources(late)[0] == "b"
    assert _sources(early)[0] == "a"


def test_neighbouring_turn_lifts_the_answer(open_api: RunningApi) -> None:
    """The answer "Lisbon" shares no word with the question; its question turn does."""
    user = _user()
    turns = [
        "Where did your sister fly in from for the wedding?",
        "Lisbon, she landed on Friday.",
        "We rented a boat on the lake last summer.",
        "The boat had a tiny kitchen.",
        "Groceries cost more every month.",
        "I switched to a cheaper supermarket.",
    ]
    roles = ["assistant", "user"] * 3
    messages = [
        {"role": r, "content": t, "message_id": f"t{i}"}
        for i, (r, t) in enumerate(zip(roles, turns, strict=True))
    ]
    add(open_api, user, messages, session_id="only")
    found = search(open_api, user, "Which city did my sister fly in from?", relativity=0, top_k=3)
    assert set(_sources(found)[:2]) == {"t0", "t1"}


def test_writes_from_another_replica_are_seen(
    open_api: RunningApi, embedder: SentenceTransformerEmbedder
) -> None:
    """A second service over the same stores (another replica, a job) adds a memory after
    this one cached the cube's index: the next search must find it."""
    user = _user()
    add(open_api, user, "The spare key is under the blue flowerpot.")
    before = search(open_api, user, "Where is the boat moored?", relativity=0)
    assert all("boat" not in m["memory"] for m in before["text_mem"][0]["memories"])

    stack = open_api.stack.service
    other = MemoryService(stack.graph, stack.vectors, embedder)
    turns = [Turn("user", "The boat is moored at pier 7 in the marina.", message_id="x-1")]
    other.add_windows(user, user, fast_windows(turns))

    after = search(open_api, user, "Where is the boat moored?", relativity=0)
    assert _sources(after)[0] == "x-1"

    deleted = other.delete(user, [after["text_mem"][0]["memories"][0]["id"]])
    assert len(deleted) == 1
    gone = search(open_api, user, "Where is the boat moored?", relativity=0)
    assert "x-1" not in _sources(gone)


def test_near_duplicates_are_dropped_unless_dedup_is_no(open_api: RunningApi) -> None:
    user = _user()
    said = "I moved to Porto in March and love the river walks."
    for mid, when in (("d1", "2026-03-02T09:00:00"), ("d2", "2026-03-09T09:00:00")):
        message = {"role": "user", "content": said, "chat_time": when, "message_id": mid}
        add(open_api, user, [message], session_id=mid)
    add(open_api, user, "The bakery on the corner sells great custard tarts.")
    query = "Where did I move in March?"
    deduped = _sources(search(open_api, user, query, relativity=0))
    both = _sources(search(open_api, user, query, relativity=0, dedup="no"))
    assert len([m for m in deduped if m in ("d1", "d2")]) == 1
    assert {"d1", "d2"} <= set(both[:2])


def test_searching_an_empty_cube_finds_nothing(open_api: RunningApi) -> None:
    user = _user()
    cube = f"empty-{uuid.uuid4().hex[:6]}"
    created = open_api.post("/product/create_cube", {"owner_id": user, "cube_id": cube})
    assert created.status_code == 200, created.text
    found = search(open_api, user, "anything at all", readable_cube_ids=[cube])
    assert found["text_mem"][0]["memories"] == []


def test_a_repeated_message_keeps_both_sources(open_api: RunningApi) -> None:
    user = _user()
    messages = [
        {"role": "user", "content": "Remind me to water the ferns.", "message_id": "r1"},
        {"role": "assistant", "content": "Sure, I will remind you.", "message_id": "r2"},
        {"role": "user", "content": "Remind me to water the ferns.", "message_id": "r3"},
    ]
    added = add(open_api, user, messages, session_id="s")["data"]
    assert len(added) == 2
    found = search(open_api, user, "water the ferns", relativity=0)
    top = found["text_mem"][0]["memories"][0]
    assert [s["message_id"] for s in top["metadata"]["sources"]] == ["r1", "r3"]
    assert top["memory"] == "user: Remind me to water the ferns."

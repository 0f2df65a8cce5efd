"""jobs.reorganize on real stores: a cube seeded with known duplicates and superseded facts.

The seeds' cosines under all-MiniLM-L6-v2 were measured, not guessed: the paraphrases score
0.96-0.97 (over the 0.92 threshold), "camping in June 2023" vs "July 2023" 0.98 (kept apart
by its anchors), the same-key pairs 0.73-0.77 (over 0.5) and the same-key hobbies 0.40
(under it). The LLM test uses the scripted TEST DOUBLE (tests/fixtures/scripted_model.py):
SmolLM2 runs here but is too small to judge contradictions reliably.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from memos_ray.config import MemosConfig, NoLLMConfig, NoPreferenceConfig
from memos_ray.core.organize import (
    Entry,
    anchors,
    build_topic_tree,
    normalise,
    plan_duplicates,
    same_anchors,
)
from memos_ray.core.reader import Turn, Window, fast_windows
from memos_ray.domain.memory import EdgeType, MemoryItem, MemoryStatus, MemoryType, SourceMessage
from memos_ray.models.chat import ChatRequest
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.runtime.compose import LocalStack
from memos_ray.services.memory import MemoryService, SearchOptions
from memos_ray.services.reorganize import ReorganizeParams, Reorganizer
from tests.fixtures.scripted_model import ScriptedChatModel

REPO = Path(__file__).resolve().parents[2]
TOPIC = str(MemoryType.TOPIC)

# (user, text, key): added in this order, so each one is newer than those before it.
SEEDS: list[tuple[str, str, str | None]] = [
    ("alice", "Alice's cat is called Tom.", None),
    ("alice", "alice's cat is called tom", None),  # exact duplicate of the first
    ("alice", "Caroline attends an LGBTQ support group every week.", None),
    ("alice", "Every week Caroline goes to an LGBTQ support group.", None),  # near (0.96)
    ("alice", "John works as a nurse at the city hospital.", None),
    ("alice", "John is a nurse at the city hospital.", None),  # near (0.97)
    ("alice", "Melanie went camping in June 2023.", None),
    ("alice", "Melanie went camping in July 2023.", None),  # 0.98, other month: kept
    ("alice", "Alice lives in Paris.", "Alice's home city"),
    ("alice", "Alice lives in Berlin.", "Alice's home city"),  # supersedes Paris
    ("alice", "Bob's favourite food is sushi.", "Bob's favourite food"),
    ("alice", "Bob's favorite food is ramen.", "Bob's favourite food"),  # supersedes sushi
    ("alice", "Melanie paints landscapes in watercolour.", "Melanie's hobby"),
    ("alice", "Melanie runs a marathon every spring.", "Melanie's hobby"),  # 0.40: kept
    ("bob", "alice's cat is called Tom!", None),  # another user's words: kept
    ("alice", "The quarterly report is due on Friday.", None),
    ("alice", "Kubernetes clusters need regular upgrades.", None),
]
EXPECTED_MERGED = {
    ("alice's cat is called tom", "Alice's cat is called Tom.", "exact duplicate"),
    (
        "Every week Caroline goes to an LGBTQ support group.",
        "Caroline attends an LGBTQ support group every week.",
        "near duplicate",
    ),
    (
        "John is a nurse at the city hospital.",
        "John works as a nurse at the city hospital.",
        "near duplicate",
    ),
}
EXPECTED_ARCHIVED = {
    ("Alice lives in Paris.", "Alice lives in Berlin.", "same key, newer value"),
    ("Bob's favourite food is sushi.", "Bob's favorite food is ramen.", "same key, newer value"),
}


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    model = SentenceTransformerEmbedder()
    model.embed(["warm up"])
    return model


def _config(data_dir: Path) -> MemosConfig:
    return MemosConfig(
        data_dir=data_dir, llm=NoLLMConfig(), preference=NoPreferenceConfig()
    ).resolved()


def _fact(text: str, key: str | None) -> Window:
    source = SourceMessage(type="doc", content=text)
    return Window(text=text, memory_type=MemoryType.USER, sources=[source], key=key, mode="fine")


TURNS = ("Thanks!", "thanks!!")  # two conversation turns: duplicates, but records of events


def _seed(service: MemoryService, cube: str) -> dict[str, str]:
    """SEEDS and TURNS; text -> id."""
    ids: dict[str, str] = {}
    for user, text, key in SEEDS:
        ids[text] = service.add_windows(cube, user, [_fact(text, key)]).stored[0].id
    for said in TURNS:
        turn = Turn("user", said, None, uuid.uuid4().hex, name="Caroline")
        added = service.add_windows(cube, "alice", fast_windows([turn], 1, 2000))
        ids[said] = added.stored[0].id
    return ids


def _snapshot(service: MemoryService, cube: str) -> dict[str, tuple[str, int, str]]:
    nodes, _ = service.graph.list_nodes(cube)
    return {n.id: (str(n.metadata.status), n.metadata.version, n.memory) for n in nodes}


def _check_tree(service: MemoryService, cube: str, leaf_size: int) -> list[MemoryItem]:
    """Every active memory has exactly one parent, a topic; topics form one tree."""
    nodes, _ = service.graph.list_nodes(cube)
    topics = {n.id: n for n in nodes if n.metadata.memory_type == TOPIC}
    active = {
        n.id
        for n in nodes
        if n.metadata.memory_type != TOPIC and n.metadata.status == MemoryStatus.ACTIVATED
    }
    parents: dict[str, list[str]] = {}
    for edge in service.graph.get_edges(cube):
        if edge.type == EdgeType.PARENT:
            assert edge.source in topics, "only topics are parents"
            parents.setdefault(edge.target, []).append(edge.source)
    for item_id in active:
        assert len(parents.get(item_id, [])) == 1, f"memory {item_id} has {parents.get(item_id)}"
    assert set(parents) <= active | set(topics), "no parent for archived memories"
    roots = [t for t in topics if t not in parents]
    assert len(roots) == 1 and all(len(parents[t]) == 1 for t in topics if t not in roots)
    for topic in topics.values():
        assert topic.memory and topic.metadata.key
        children = [c for c, ps in parents.items() if topic.id in ps]
        if topic.metadata.info["topic_level"] == 0:
            assert 1 <= len(children) <= leaf_size and set(children) <= active
    return list(topics.values())


@pytest.fixture(scope="module")
def ray_config(
    tmp_path_factory: pytest.TempPathFactory, ray_cluster: None
) -> Iterator[MemosConfig]:
    from memos_ray.runtime.compose import stop_embedded

    config = _config(tmp_path_factory.mktemp("reorganize-ray"))
    yield config
    stop_embedded(config)


@pytest.fixture(scope="module")
def ray_service(
    ray_config: MemosConfig, embedder: SentenceTransformerEmbedder
) -> Iterator[MemoryService]:
    from memos_ray.runtime.compose import build_ray_stores

    graph, vectors = build_ray_stores(ray_config)
    service = MemoryService(graph, vectors, embedder)
    yield service
    service.close()


@pytest.mark.ray
def test_job_merges_and_archives_exactly_the_seeded_ones(
    ray_config: MemosConfig, ray_service: MemoryService
) -> None:
    from jobs.reorganize import run

    cube, service = f"reorg-{uuid.uuid4().hex[:8]}", ray_service
    ids = _seed(service, cube)
    text_of = {v: k for k, v in ids.items()}
    before = _snapshot(service, cube)
    params = ReorganizeParams(llm="none", leaf_size=4, branching=3)

    summary = run(ray_config, [cube], False, params, concurrency=1)
    [report] = summary["per_cube"]
    assert report["error"] is None and summary["errors"] == 0
    merged = {(text_of[m["archived"]], text_of[m["kept"]], m["reason"]) for m in report["merged"]}
    archived = {
        (text_of[m["archived"]], text_of[m["kept"]], m["reason"]) for m in report["archived"]
    }
    assert merged == EXPECTED_MERGED and archived == EXPECTED_ARCHIVED
    assert summary["merged"] == 3 and summary["archived"] == 2

    # Archived: resolvable by id, pointing at the survivor, never searched.
    edges = {(e.source, e.target) for e in service.graph.get_edges(cube) if e.type == "MERGED_TO"}
    gone = {old: new for old, new, _ in merged | archived}
    for old, new in gone.items():
        [item] = service.get_by_ids([cube], [ids[old]])
        assert item.metadata.status == MemoryStatus.ARCHIVED
        assert item.metadata.history[-1].reason and ids[new] in item.metadata.history[-1].reason
        assert (ids[old], ids[new]) in edges
        hits = service.search(old, {cube: None}, SearchOptions(relativity=0, top_k=20))[cube]
        assert ids[old] not in {h.id for h in hits} and ids[new] in {h.id for h in hits}
    assert len(edges) == len(gone)
    # Survivors of a merge carry the absorbed copy's provenance; nothing else changed.
    [cat] = service.get_by_ids([cube], [ids["Alice's cat is called Tom."]])
    assert [s.content for s in cat.metadata.sources] == [
        "Alice's cat is called Tom.",
        "alice's cat is called tom",
    ]
    after = _snapshot(service, cube)
    changed = {i for i in before if after[i] != before[i]}
    assert changed == {ids[t] for t in gone} | {ids[kept] for _, kept, _ in merged}
    assert all(after[i][1] == before[i][1] + 1 for i in changed)

    topics = _check_tree(service, cube, leaf_size=4)
    assert report["topics"] == len(topics) > 1 and report["parents_added"] == report["parents"]
    page, _ = service.get_page(cube)
    assert not [i for i in page if i.metadata.memory_type == TOPIC]  # not a text memory
    hits = service.search(topics[0].memory, {cube: None}, SearchOptions(relativity=0))[cube]
    assert all(h.metadata.memory_type != TOPIC for h in hits)

    # Idempotent: a second run changes nothing at all.
    settled = _snapshot(service, cube)
    again = run(ray_config, [cube], False, params, concurrency=1)
    assert again["changed_cubes"] == 0 and again["merged"] == again["archived"] == 0
    assert again["per_cube"][0]["topics_unchanged"] == len(topics)
    assert _snapshot(service, cube) == settled

    # Turns are left alone by default; asked to, it merges them like any other memory.
    turns = Reorganizer(service, params.model_copy(update={"include_turns": True})).run(cube)
    assert [(m.archived, m.kept) for m in turns.merged] == [(ids[TURNS[1]], ids[TURNS[0]])]

    # New memories: the tree follows, stale topics and their edges go (in-process: the
    # job runs this same Reorganizer).
    service.add_windows(cube, "alice", [_fact("Alice adopted a second cat named Luna.", None)])
    third = Reorganizer(service, params).run(cube)
    assert third.topics_created and third.topics_removed and not third.merged
    remaining = {t.id for t in _check_tree(service, cube, leaf_size=4)}
    assert not remaining & set(third.topics_removed)


@pytest.mark.ray
def test_cli_all_cubes_prints_one_json_line(
    ray_config: MemosConfig,
    ray_service: MemoryService,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`main` on the running cluster (the test session's): every cube, one JSON line."""
    from jobs.reorganize import main

    cubes = sorted(f"all-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for cube in cubes:
        for text in ("Tea is Ann's favourite drink.", "Ann walks her dog at dawn."):
            ray_service.add_windows(cube, "ann", [_fact(text, None)])
    monkeypatch.setenv("MEMOS_LLM__BACKEND", "none")
    monkeypatch.setenv("MEMOS_PREFERENCE__BACKEND", "none")
    code = main(["--all-cubes", "--data-dir", str(ray_config.data_dir), "--concurrency", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 1
    summary = json.loads(lines[0])
    per_cube = {r["cube_id"]: r for r in summary["per_cube"]}
    assert set(cubes) <= set(per_cube) and summary["errors"] == 0
    for cube in cubes:
        assert len(per_cube[cube]["topics_created"]) == 1 and per_cube[cube]["parents"] == 2
        _check_tree(ray_service, cube, leaf_size=20)


def judge_answers(request: ChatRequest) -> str:
    """The scripted LLM's answers for JUDGED (module level: a Serve replica imports it)."""
    system, user = request.messages[0].content, request.messages[-1].content
    if system.startswith("You name"):
        return '{"key": "People and things", "summary": "Facts about jobs and cars."}'
    new, existing = user.split("\nExisting:\n")
    listing = existing.splitlines()
    for n, line in enumerate(listing):
        if "Globex" in new and "Acme" in line:
            return json.dumps({"relation": "contradiction", "index": n})
        if "Bob's car" in new and "Toyota" in line:
            return json.dumps({"relation": "duplicate", "index": n})
    return '{"relation": "unrelated", "index": -1}'


JUDGED = [
    "Alice works at Acme as an engineer.",
    "Bob drives a red Toyota.",
    "Dana's hobby is pottery.",
    "Alice works at Globex as a designer.",  # 0.71 to Acme: the judge says contradiction
    "Bob's car is a red Toyota.",  # 0.88: under the rule's 0.92, the judge says duplicate
    "Dana's hobby is rock climbing.",  # 0.69: the judge says unrelated
]


def test_llm_judges_contradictions_and_names_topics(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    """Pairs too far apart for the rules go to the judge; its answers decide."""
    calls: list[str] = []

    def answer(request: ChatRequest) -> str:
        calls.append(request.messages[0].content[:10])
        return judge_answers(request)

    texts = JUDGED
    with LocalStack(_config(tmp_path), embedder=embedder) as stack:
        cube, service = "llm-cube", stack.service
        ids = {t: service.add_windows(cube, "u", [_fact(t, None)]).stored[0].id for t in texts}
        model = ScriptedChatModel(answer)
        report = Reorganizer(service, ReorganizeParams(leaf_size=3), model).run(cube)
        assert report.error is None and report.llm == "scripted"
        assert [(m.archived, m.kept, m.reason) for m in report.archived] == [
            (ids[texts[0]], ids[texts[3]], "contradiction (LLM)")
        ]
        assert [(m.archived, m.kept, m.reason) for m in report.merged] == [
            (ids[texts[4]], ids[texts[1]], "duplicate (LLM)")
        ]
        judged = calls.count("You compar")
        assert judged == 3 and report.llm_calls == len(calls)
        topics = _check_tree(service, cube, leaf_size=3)
        assert {t.metadata.key for t in topics} == {"People and things"}
        assert {t.metadata.info["topic_summary_by"] for t in topics} == {"llm"}

        calls.clear()
        second = Reorganizer(service, ReorganizeParams(leaf_size=3), model).run(cube)
        # The same judgement again (one unrelated pair is left), no topic re-named.
        assert not second.changed and calls == ["You compar"]


@pytest.mark.ray
def test_job_asks_the_llm_deployment(ray_config: MemosConfig, ray_service: MemoryService) -> None:
    """The job's workers send their judgements through a Serve app's LLMDeployment (here
    the scripted TEST DOUBLE deployed as one), not a model of their own."""
    from jobs.reorganize import run
    from memos_ray.runtime.jobs_llm import LLMRoute
    from tests.fixtures.scripted_model import scripted_llm_app, scripted_llm_calls

    cube = "judged-by-deployment"
    ids = {t: ray_service.add_windows(cube, "u", [_fact(t, None)]).stored[0].id for t in JUDGED}
    with scripted_llm_app("scripted-judge", judge_answers):
        params = ReorganizeParams(leaf_size=3)
        summary = run(ray_config, [cube], False, params, 1, LLMRoute(app="scripted-judge"))
        (report,) = summary["per_cube"]
        assert report["error"] is None and report["llm"] == "scripted"
        assert [(m["archived"], m["kept"]) for m in report["archived"]] == [
            (ids[JUDGED[0]], ids[JUDGED[3]])
        ]
        assert [(m["archived"], m["kept"]) for m in report["merged"]] == [
            (ids[JUDGED[4]], ids[JUDGED[1]])
        ]
        assert report["llm_calls"] == scripted_llm_calls("scripted-judge") > 0


def test_job_process_starts_its_own_cluster(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    """`python -m jobs.reorganize` with no address: local Ray, embedded stores, clean stop."""
    config = _config(tmp_path)
    with LocalStack(config, embedder=embedder) as stack:
        for text in ("Ann drinks tea every morning.", "Ann's dog is called Rex."):
            stack.service.add_windows("solo", "ann", [_fact(text, None)])
    env = {
        "MEMOS_LLM__BACKEND": "none",
        "MEMOS_PREFERENCE__BACKEND": "none",
        "RAY_AUTH_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "RAY_ADDRESS": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "jobs.reorganize", "--cube", "solo", "--data-dir", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["cubes"] == 1 and summary["topics_created"] == 1
    with LocalStack(config, embedder=embedder) as stack:  # what it wrote was kept
        _check_tree(stack.service, "solo", leaf_size=20)


# -- the algorithms alone -------------------------------------------------------------


def test_anchor_rules() -> None:
    assert normalise("Alice's  cat, is called TOM!") == "alice s cat is called tom"
    assert anchors("Melanie went camping in June 2023.") == {"melanie", "june", "2023"}
    assert same_anchors("In June 2023, Melanie went camping.", "Melanie went camping in June 2023")
    assert not same_anchors("I went to the park yesterday", "I went to the park today")
    assert not same_anchors("Alice likes cats.", "Alice doesn't like cats.")


def test_duplicates_never_chain() -> None:
    """A~B and B~C but not A~C: only B joins A; C stays."""
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.3), np.sin(0.3)])
    c = np.array([np.cos(0.6), np.sin(0.6)])
    entries = [
        Entry(id=i, text=i, user_id="u", memory_type="UserMemory", mode="fine", created_at=t)
        for i, t in (("a", "1"), ("b", "2"), ("c", "3"))
    ]
    merges = plan_duplicates(entries, np.stack([a, b, c]), threshold=float(np.cos(0.35)))
    assert [(m.kept, m.absorbed) for m in merges] == [("a", "b")]


def test_tree_is_deterministic_and_covers_every_entry() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    entries = [
        Entry(
            id=str(uuid.UUID(int=i)),
            text=f"m{i}",
            user_id="u",
            memory_type="x",
            mode="",
            created_at="",
        )
        for i in range(300)
    ]
    tree = build_topic_tree("c", entries, vectors, leaf_size=10, branching=4, seed=1)
    leaves = [t for t in tree if t.level == 0]
    covered = [c for t in leaves for c in t.children]
    assert sorted(covered) == sorted(e.id for e in entries) and len(set(covered)) == 300
    assert all(len(t.children) <= 10 for t in leaves) and tree[-1].is_root
    shuffled = rng.permutation(300)
    again = build_topic_tree(
        "c", [entries[i] for i in shuffled], vectors[shuffled], leaf_size=10, branching=4, seed=1
    )
    assert [t.id for t in again] == [t.id for t in tree]

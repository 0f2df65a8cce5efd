"""One contract for every PreferenceStore backend: Milvus Lite in-process and over its server.

Real Milvus Lite and the real MiniLM embedder. Tests isolate themselves by unique cube ids,
so one store per backend serves the whole module.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from memos_ray.domain.memory import iso
from memos_ray.embedded.milvus_server import MilvusLiteServer
from memos_ray.errors import BadRequestError, StoreError
from memos_ray.models.embedder import SentenceTransformerEmbedder
from memos_ray.stores.preference import Preference, PreferenceStore
from memos_ray.stores.preference.milvus import MilvusPreferenceStore, quote

DIM = 384

EVERYDAY = [
    "Prefers aisle seats on long flights",
    "Likes spicy Thai food",
    "Goes to bed before ten on weeknights",
    "Uses vim keybindings in every editor",
    "Wants answers in bullet points",
    "Drinks oat milk lattes",
    "Wants meetings about deadlines kept under fifteen minutes",
    "Prefers email over phone calls for project updates",
    "Likes weekly summaries of open tickets every Friday",
]


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    model = SentenceTransformerEmbedder()
    model.embed(["warm up"])
    return model


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusLiteServer]:
    with MilvusLiteServer(tmp_path_factory.mktemp("milvus-server")) as server:
        yield server


@pytest.fixture(scope="module", params=["lite-file", "lite-server"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MilvusPreferenceStore]:
    if request.param == "lite-file":
        uri = str(tmp_path_factory.mktemp("milvus-file") / "prefs.db")
    else:
        uri = request.getfixturevalue("milvus_server").uri
    opened = MilvusPreferenceStore(DIM, uri=uri)
    yield opened
    opened.close()


@pytest.fixture
def cube() -> str:
    return f"cube-{uuid.uuid4().hex[:10]}"


def _prefs(
    cube_id: str,
    texts: Sequence[str],
    kind: str = "explicit",
    prefix: str = "p",
) -> list[Preference]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return [
        Preference(
            id=f"{prefix}{i}",
            cube_id=cube_id,
            user_id="u1",
            kind=kind,  # type: ignore[arg-type]
            preference=text,
            created_at=iso(start + timedelta(minutes=i)),
            updated_at=iso(start + timedelta(minutes=i)),
        )
        for i, text in enumerate(texts)
    ]


def _add(
    store: PreferenceStore, embedder: SentenceTransformerEmbedder, items: list[Preference]
) -> None:
    store.upsert(items[0].cube_id, items, embedder.embed([p.preference for p in items]))


def _search(
    store: PreferenceStore,
    embedder: SentenceTransformerEmbedder,
    cube_id: str,
    query: str,
    top_k: int = 3,
    kinds: Sequence[str] | None = None,
) -> list[Preference]:
    return store.search(cube_id, query, embedder.embed([query])[0], top_k, kinds)


def test_upsert_and_get_round_trip(
    store: PreferenceStore, embedder: SentenceTransformerEmbedder, cube: str
) -> None:
    item = Preference(
        id="pref-1",
        cube_id=cube,
        user_id="alice",
        kind="implicit",
        preference="Prefers aisle seats on long flights",
        reasoning="Asked twice to change to an aisle seat",
        topic="travel",
        source_memory_ids=["m1", "m2"],
        session_id="s-9",
    )
    store.upsert(cube, [item], embedder.embed([item.preference]))
    assert store.get(cube, ["pref-1"]) == [item]
    other = _prefs(cube, ["Likes spicy Thai food"], prefix="q")
    _add(store, embedder, other)
    # Order as asked; unknown ids skipped.
    assert [p.id for p in store.get(cube, ["q0", "missing", "pref-1"])] == ["q0", "pref-1"]


def test_search_finds_by_meaning(
    store: PreferenceStore, embedder: SentenceTransformerEmbedder, cube: str
) -> None:
    _add(store, embedder, _prefs(cube, EVERYDAY))
    hits = _search(store, embedder, cube, "Where does the user like to sit on a plane?")
    assert hits[0].preference == "Prefers aisle seats on long flights"
    assert all(h.score is not None for h in hits)
    assert [h.score for h in hits] == sorted((h.score or 0.0 for h in hits), reverse=True)


def test_search_finds_rare_keyword_dense_misses(
    store: PreferenceStore, embedder: SentenceTransformerEmbedder, cube: str
) -> None:
    target = "Uses the codename bluefinch for the garden redesign"
    texts = [*EVERYDAY, target]
    _add(store, embedder, _prefs(cube, texts))
    query = "bluefinch meeting deadline update by email"
    # By meaning alone the codename preference is not among the best two ...
    dense = embedder.embed(texts) @ embedder.embed([query])[0]
    assert target not in [texts[i] for i in np.argsort(-dense)[:2]]
    # ... the keyword side brings it in.
    assert target in [h.preference for h in _search(store, embedder, cube, query, top_k=2)]


def test_kinds_filter(
    store: PreferenceStore, embedder: SentenceTransformerEmbedder, cube: str
) -> None:
    _add(store, embedder, _prefs(cube, ["Prefers window seats on trains"], "explicit", "e"))
    _add(store, embedder, _prefs(cube, ["Seems to prefer window seats on buses"], "implicit", "i"))
    query = "window seats"
    assert {h.id for h in _search(store, embedder, cube, query)} == {"e0", "i0"}
    assert [h.id for h in _search(store, embedder, cube, query, kinds=["implicit"])] == ["i0"]
    assert [h.id for h in _search(store, embedder, cube, query, kinds=["explicit"])] == ["e0"]
    assert _search(store, embedder, cube, query, kinds=[]) == []


@pytest.mark.parametrize(
    "other",
    ['quoted "cube"', "back\\slash\\", 'x" or cube_id != "', "line\nbreak\t'single'"],
)
def test_tenant_isolation(
    store: PreferenceStore, embedder: SentenceTransformerEmbedder, cube: str, other: str
) -> None:
    other = f"{other}-{cube}"
    _add(store, embedder, _prefs(cube, EVERYDAY[:4]))
    _add(store, embedder, _prefs(other, EVERYDAY[:4]))  # same ids, same texts
    for query in ("aisle seats on flights", "spicy"):
        hits = _search(store, embedder, cube, query, top_k=10)
        assert len(hits) == 4
        assert {h.cube_id for h in hits} == {cube}
        assert {h.cube_id for h in _search(store, embedder, other, query, top_k=10)} == {other}
    assert {p.cube_id for p in store.get(other, ["p0", "p1"])} == {other}
    assert store.list(other)[1] == 4
    # Writes to one cube leave the other alone.
    assert store.set_status(cube, ["p0"], "archived") == 1
    assert store.get(other, ["p0"])[0].status == "activated"
    assert store.delete(cube, ["p1"]) == 1
    assert [p.id for p in store.get(other, ["p1"])] == ["p1"]
    assert store.delete_cube(cube) == 3
    assert store.list(cube) == ([], 0)
    assert store.list(other)[1] == 4


def test_archived_not_searched_but_got(
    store: PreferenceStore, embedder: SentenceTransformerEmbedder, cube: str
) -> None:
    _add(store, embedder, _prefs(cube, EVERYDAY))
    query = "aisle seat on a plane"
    assert _search(store, embedder, cube, query)[0].id == "p0"
    assert store.set_status(cube, ["p0", "missing"], "archived") == 1
    assert "p0" not in [h.id for h in _search(store, embedder, cube, query, top_k=20)]
    [got] = store.get(cube, ["p0"])
    assert got.status == "archived"
    assert got.updated_at > got.created_at
    assert got.preference == EVERYDAY[0]
    # Still listed (list shows every status) and searchable again once reactivated.
    assert store.list(cube)[1] == len(EVERYDAY)
    store.set_status(cube, ["p0"], "activated")
    assert _search(store, embedder, cube, query)[0].id == "p0"


def test_delete(store: PreferenceStore, embedder: SentenceTransformerEmbedder, cube: str) -> None:
    _add(store, embedder, _prefs(cube, EVERYDAY[:3]))
    assert store.delete(cube, ["p0", "p2", "missing"]) == 2
    assert [p.id for p in store.get(cube, ["p0", "p1", "p2"])] == ["p1"]
    assert [h.id for h in _search(store, embedder, cube, EVERYDAY[0], top_k=5)] == ["p1"]
    assert store.delete(cube, ["p0"]) == 0


def test_list_newest_first_with_total(
    store: PreferenceStore, embedder: SentenceTransformerEmbedder, cube: str
) -> None:
    _add(store, embedder, _prefs(cube, EVERYDAY))  # p{i} created i minutes after the first
    newest = [f"p{i}" for i in reversed(range(len(EVERYDAY)))]
    items, total = store.list(cube)
    assert total == len(EVERYDAY)
    assert [p.id for p in items] == newest
    page, total = store.list(cube, offset=2, limit=3)
    assert total == len(EVERYDAY)
    assert [p.id for p in page] == newest[2:5]
    assert store.list(cube, offset=50, limit=5) == ([], len(EVERYDAY))


def test_upsert_is_idempotent_by_id(
    store: PreferenceStore, embedder: SentenceTransformerEmbedder, cube: str
) -> None:
    _add(store, embedder, _prefs(cube, EVERYDAY[:3]))
    _add(store, embedder, _prefs(cube, EVERYDAY[:3]))
    assert store.list(cube)[1] == 3
    assert [h.id for h in _search(store, embedder, cube, "marmalade", top_k=1)] != ["p1"]
    # Replace p1's text: the new words find it, the old keyword no longer does.
    [changed] = _prefs(cube, ["Spreads Seville orange marmalade on toast"])
    changed.id = "p1"
    _add(store, embedder, [changed])
    assert store.list(cube)[1] == 3
    assert _search(store, embedder, cube, "marmalade", top_k=1)[0].id == "p1"
    hits = _search(store, embedder, cube, "spicy Thai food", top_k=3)
    assert EVERYDAY[1] not in [h.preference for h in hits]  # no stale copy anywhere
    assert store.get(cube, ["p1"])[0].preference == changed.preference


def test_bad_input_is_refused(store: PreferenceStore, cube: str) -> None:
    [item] = _prefs(cube, ["Likes tea"])
    with pytest.raises(BadRequestError):
        store.upsert(cube, [item], np.zeros((1, DIM + 1), dtype=np.float32))
    with pytest.raises(BadRequestError):
        store.upsert("another-cube", [item], np.ones((1, DIM), dtype=np.float32))
    with pytest.raises(BadRequestError):
        store.search(cube, "tea", np.ones(3, dtype=np.float32), 3)


def test_empty_query_text_uses_meaning_only(
    store: PreferenceStore, embedder: SentenceTransformerEmbedder, cube: str
) -> None:
    _add(store, embedder, _prefs(cube, EVERYDAY[:3]))
    vector = embedder.embed([EVERYDAY[1]])[0]
    assert store.search(cube, "?!", vector, 1)[0].id == "p1"


def test_other_dimension_on_same_collection_is_refused(store: MilvusPreferenceStore) -> None:
    # Same uri and collection as the module's store (a second client in this process).
    with pytest.raises(StoreError, match="384-d"):
        MilvusPreferenceStore(DIM // 2, uri=store._uri)


def test_quote_escapes_filter_literals() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    assert quote("x\ny") == '"x\\ny"'

"""jobs.reembed: a cube moves to a new embedding model and dimension and stays searchable.

The "new model" is real and local: all-MiniLM-L6-v2 with a fixed orthogonal projection
384 -> 256 appended as a sentence-transformers Dense module, saved to a temp folder. Its
vectors differ from MiniLM's in values and dimension, so a query embedded with the wrong
model against the wrong store fails outright (dimension check) instead of ranking quietly
worse.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from memos_ray.config import MemosConfig, NoLLMConfig, NoPreferenceConfig
from memos_ray.core.reader import Window
from memos_ray.domain.memory import MemoryStatus, MemoryType, SourceMessage
from memos_ray.models.embedder import SentenceTransformerEmbedder, default_model_path
from memos_ray.runtime.compose import LocalStack
from memos_ray.services.memory import MemoryService, OneSpace, SearchOptions
from memos_ray.services.reembed import CubeMover, ReembedParams, ReembedReport
from memos_ray.services.spaces import (
    EmbeddingSpace,
    SpaceRegistry,
    SpaceResolver,
    SpaceStores,
    default_space,
    route_spaces,
    space_embedder,
    space_for_model,
)

FACTS = [
    "Alice's cat is called Tom.",
    "Alice lives in Berlin.",
    "Bob drives a red Toyota.",
    "Dana's hobby is pottery.",
    "The quarterly report is due on Friday.",
    "Kubernetes clusters need regular upgrades.",
]
NEW_DIM = 256


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    model = SentenceTransformerEmbedder()
    model.embed(["warm up"])
    return model


def save_projected_model(path: Path) -> Path:
    """MiniLM plus a seeded orthogonal 384 -> 256 projection, saved as a local model folder
    (also the "new model" of tests/api/test_reembed_live.py)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    base = SentenceTransformer(default_model_path(), device="cpu")
    basis, _ = torch.linalg.qr(
        torch.randn(384, NEW_DIM, generator=torch.Generator().manual_seed(7))
    )
    head = Dense(
        384,
        NEW_DIM,
        bias=False,
        activation_function=torch.nn.Identity(),
        init_weight=basis.T.contiguous(),
    )
    SentenceTransformer(modules=[*base, head], device="cpu").save(str(path))
    return path


@pytest.fixture(scope="module")
def projected_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_projected_model(tmp_path_factory.mktemp("minilm-proj256"))


def _config(data_dir: Path) -> MemosConfig:
    return MemosConfig(
        data_dir=data_dir, llm=NoLLMConfig(), preference=NoPreferenceConfig()
    ).resolved()


def _fact(text: str) -> Window:
    source = SourceMessage(type="doc", content=text)
    return Window(text=text, memory_type=MemoryType.USER, sources=[source], mode="fine")


def _top(service: MemoryService, cube: str, query: str) -> list[str]:
    hits = service.search(query, {cube: None}, SearchOptions(relativity=0, top_k=3))
    return [h.memory for h in hits[cube]]


def test_move_step_by_step_never_stops_search(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, projected_model: Path
) -> None:
    config = _config(tmp_path)
    with LocalStack(config, embedder=embedder) as stack:
        graph, registry = stack.service.graph, SpaceRegistry(stack.tenancy.engine)
        stores = SpaceStores(config, stack.service.vectors, in_ray=False)
        resolver = SpaceResolver(config, registry, stores, embedder)
        target = space_for_model(config, str(projected_model), NEW_DIM)
        assert target.location != default_space(config).location
        new_model = space_embedder(config, target)
        mover = CubeMover(graph, registry, stores, new_model, target, default_space(config))
        cube = "moving"
        # As running services hold them: what they read is trusted for ttl_s, and "no cube
        # was ever moved" is answered from that cache without any per-cube query.
        trusting = SpaceResolver(config, registry, stores, embedder, ttl_s=3600)
        brief = SpaceResolver(config, registry, stores, embedder, ttl_s=0.2)
        assert trusting.space_of(cube) == brief.space_of(cube) == default_space(config)
        # A writer that resolved the cube before the move and keeps writing to that space.
        old_space = resolver.of(cube)
        before = MemoryService(graph, search_config=config.search, spaces=OneSpace(old_space))
        ids = {t: before.add_windows(cube, "u", [_fact(t)]).stored[0].id for t in FACTS}

        # Copied beside the old vectors: the cube still lives in the old space.
        report = ReembedReport(cube_id=cube, target=target)
        source = mover.begin(cube, report)
        assert source == default_space(config) and registry.get(cube).state == "migrating"
        mover.copy(cube, source, report)
        assert report.copied == len(FACTS) and report.rounds == 2  # the second finds nothing
        assert resolver.space_of(cube) == source and resolver.of(cube) is old_space
        assert _top(before, cube, "What is the name of Alice's cat?")[0] == FACTS[0]
        new_store = stores.store(target)
        [record] = new_store.retrieve(cube, [ids[FACTS[0]]])
        assert len(record.dense) == NEW_DIM
        assert float(np.dot(record.dense, new_model.embed([FACTS[0]])[0])) > 0.999

        # Writes that land in the old space during the move: an add, an archive, a delete.
        late = "Alice bought a blue bicycle yesterday."
        late_id = before.add_windows(cube, "u", [_fact(late)]).stored[0].id
        [berlin] = before.get_by_ids([cube], [ids[FACTS[1]]])
        before.update_items(cube, [berlin.revised("moved", status=MemoryStatus.ARCHIVED)])
        before.delete(cube, [ids[FACTS[5]]])

        mover.switch(cube, source, report)
        assert trusting.space_of(cube) == source  # within its ttl: why cleanup waits
        time.sleep(0.3)
        assert brief.space_of(cube) == target  # its ttl passed: the switch is seen
        after = MemoryService(
            graph, search_config=config.search, spaces=OneSpace(resolver.of(cube))
        )
        assert resolver.space_of(cube) == target and after.vectors is new_store
        assert after.embedder.dim == NEW_DIM  # queries are now embedded with the new model
        assert _top(after, cube, "Who has a bicycle?")[0] == late
        assert FACTS[1] not in _top(after, cube, "Where does Alice live?")
        assert new_store.retrieve(cube, [ids[FACTS[5]]]) == []

        # After the switch: a write through the new space, and a late one through the old.
        fresh = "Alice started learning Japanese."
        after.add_windows(cube, "u", [_fact(fresh)])
        [toyota] = after.get_by_ids([cube], [ids[FACTS[2]]])
        after.update_items(cube, [toyota.revised("sold", status=MemoryStatus.ARCHIVED)])
        [pottery] = before.get_by_ids([cube], [ids[FACTS[3]]])
        before.update_items(cube, [pottery.revised("tagged", tags=["craft"])])

        mover.cleanup(cube, source, report)
        assert report.state == "moved" and source is not None
        assert stack.service.vectors.count(cube) == 0  # the old vectors are gone
        assert _top(after, cube, "Which language is Alice learning?")[0] == fresh
        kept = {r.id: r.payload for r in new_store.retrieve(cube, [*ids.values(), late_id])}
        assert kept[ids[FACTS[2]]]["status"] == MemoryStatus.ARCHIVED  # not overwritten
        assert '"craft"' in kept[ids[FACTS[3]]]["item"]  # the late write came over
        assert new_store.count(cube) == len(FACTS) - 1 + 2  # one deleted, two added
        assert late_id in kept

        # In two runs: "copy" leaves the cube where it is, the next run resumes the move.
        other = "phased"
        before.add_windows(other, "u", [_fact(FACTS[0])])
        copy_only = ReembedParams(phase="copy", grace_s=0)
        phased = CubeMover(graph, registry, stores, new_model, target, source, copy_only)
        assert phased.move(other).state == "migrating" and resolver.space_of(other) == source
        assert new_store.count(other) == stack.service.vectors.count(other) == 1
        finish = ReembedParams(grace_s=0)
        finished = CubeMover(graph, registry, stores, new_model, target, source, finish).move(other)
        assert finished.state == "moved" and finished.copied == 0 and finished.removed_old == 1
        assert resolver.space_of(other) == target

        # The service a running app holds: one search over cubes of two spaces, each
        # embedded with its own model; writes and direct store reads follow each cube.
        router = MemoryService(graph, search_config=config.search, spaces=resolver)
        stays = "stays"
        router.add_windows(stays, "u", [_fact(FACTS[2])])
        assert stack.service.vectors.count(stays) == 1 and new_store.count(stays) == 0
        options = SearchOptions(relativity=0, top_k=3)
        found = router.search("Who has a bicycle?", {cube: None, stays: None}, options)
        assert list(found) == [cube, stays]
        assert found[cube][0].memory == late and found[stays][0].memory == FACTS[2]
        assert router.vectors_of(cube).count(cube) == new_store.count(cube)
        [near] = router.nearest(cube, late, 1)
        assert near.id == late_id  # embedded with the cube's 256-d model, not the default
        stores.close()


@pytest.fixture(scope="module")
def ray_config(
    tmp_path_factory: pytest.TempPathFactory, ray_cluster: None
) -> Iterator[MemosConfig]:
    from memos_ray.runtime.compose import stop_embedded

    config = _config(tmp_path_factory.mktemp("reembed-ray"))
    yield config
    stop_embedded(config)


@pytest.mark.ray
def test_job_moves_cubes_and_is_idempotent(
    ray_config: MemosConfig, embedder: SentenceTransformerEmbedder, projected_model: Path
) -> None:
    from jobs.reembed import run
    from memos_ray.runtime.compose import build_ray_stores, build_tenancy_store
    from memos_ray.services.spaces import stop_space_store

    graph, vectors = build_ray_stores(ray_config)
    service = MemoryService(graph, vectors, embedder)
    cubes = [f"re-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for cube in cubes:
        for text in FACTS:
            service.add_windows(cube, "u", [_fact(text)])
    target = space_for_model(ray_config, str(projected_model), NEW_DIM)
    params = ReembedParams(grace_s=0)
    registry = SpaceRegistry(build_tenancy_store(ray_config).engine)
    stores = SpaceStores(ray_config, vectors, in_ray=True)
    try:
        summary = run(ray_config, cubes, False, target, params, concurrency=1)
        assert summary["errors"] == 0 and summary["moved"] == 2
        assert summary["copied"] == summary["removed_old"] == 2 * len(FACTS)
        assert summary["config_for_new_cubes"]["embedder"]["dim"] == NEW_DIM
        resolver = SpaceResolver(ray_config, registry, stores, embedder)
        moved = MemoryService(graph, search_config=ray_config.search, spaces=resolver)
        for cube in cubes:
            assert registry.active(cube, default_space(ray_config)) == target
            assert vectors.count(cube) == 0 and stores.store(target).count(cube) == len(FACTS)
            assert _top(moved, cube, "Who drives a Toyota?")[0] == FACTS[2]

        again = run(ray_config, cubes, False, target, params, concurrency=1)
        assert again["moved"] == 0 and again["already_in_target"] == 2 and again["copied"] == 0
    finally:
        service.close()
        stop_space_store(ray_config, target)


def test_cli_refuses_a_wrong_dimension(
    tmp_path: Path, projected_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.reembed import main

    code = main(
        [
            *("--cube", "c", "--data-dir", str(tmp_path)),
            *("--model", str(projected_model), "--dim", "300"),
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 2 and "256-dimensional" in out["error"]
    assert not any(tmp_path.iterdir())  # nothing was opened, nothing moved


def test_space_of_the_configured_model_is_the_configured_store(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert space_for_model(config, "", 384) == default_space(config)
    other = space_for_model(config, "/models/e5-small", 384)
    assert other.location.startswith("qdrant-edge-spaces/e5-small-384-")
    assert other == EmbeddingSpace(model="/models/e5-small", dim=384, location=other.location)


def test_the_served_app_holds_one_memory_service_over_every_space(
    tmp_path: Path, embedder: SentenceTransformerEmbedder
) -> None:
    """Routes, chat, fine and preferences get the served app's MemoryService itself (no
    class mirrors its methods), each call resolved to the cube's space; unmoved cubes use
    the configured store and model."""
    config = _config(tmp_path)
    with LocalStack(config, embedder=embedder) as stack:
        served = route_spaces(
            config, stack.service, stack.tenancy.engine, lambda space: embedder, in_ray=False
        )
        assert type(served) is MemoryService and isinstance(served.spaces, SpaceResolver)
        assert served.spaces.default is stack.service.spaces.default
        served.add_windows("plain", "u", [_fact(FACTS[0])])
        assert stack.service.vectors.count("plain") == 1
        assert served.vectors_of("plain") is stack.service.vectors
        served.spaces.stores.close()

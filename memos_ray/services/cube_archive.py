"""A MemCube as a portable directory: dump a cube, load it elsewhere or under another name.

Layout (format `memos-ray-cube`, version 1):

    manifest.json      format, version, the cube, its embedding space, counts, and a sha256
                       and size for every other file (written last)
    memories.jsonl     every memory node (any type, any status) with its metadata, sources
                       and history; topic nodes included
    edges.jsonl        the cube's graph edges, each once (written with its source node)
    vectors.jsonl      one line per vector point: its memory id, its sequence number and how
                       many token rows it has
    dense.f32          the points' pooled vectors, float32 rows in vectors.jsonl's order
    tokens.f16         their token vectors (late interaction), float16 rows, concatenated
    preferences.jsonl  the cube's preferences (re-embedded on load: there are few)
    adapter/           the cube's LoRA adapter, if it has one

Both directions stream in batches, so memory stays flat as the cube grows. A dump is
written into a hidden sibling directory and renamed into place when complete: a dump that
dies midway leaves no directory that loads. A load checks the manifest, the format version
and every checksum before it writes anything, and refuses a non-empty target cube.

Loading under another name maps ids: an id derived from the cube and the text (as every
add derives them) is derived again for the new cube, so later adds of the same text still
deduplicate; any other id is mapped by a stable hash of the new cube and the old id. Edges
and preferences' source ids follow the mapping.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memos_ray.config import MemosConfig
from memos_ray.domain.memory import Edge, MemoryItem, iso, memory_id_for, utc_now
from memos_ray.errors import BadRequestError, ConflictError
from memos_ray.models.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterStore
from memos_ray.models.embedder import Encoded
from memos_ray.services.memory import (
    MemoryService,
    SpaceBinding,
    embedding_text,
    vector_records,
)
from memos_ray.services.preferences import PreferenceService, preference_id
from memos_ray.services.ranking import SEQ
from memos_ray.stores.preference.base import Preference

FORMAT = "memos-ray-cube"
VERSION = 1
BATCH = 512
_NAMESPACE = uuid.UUID("5b0d3c52-3f6e-4d39-9d55-0c2f1b6a7e41")
_FILES = (
    "memories.jsonl",
    "edges.jsonl",
    "vectors.jsonl",
    "dense.f32",
    "tokens.f16",
    "preferences.jsonl",
)

Progress = Callable[[str, int, int], None]


class ArchiveError(BadRequestError):
    """A dump that cannot be loaded: missing, corrupt, truncated, or of another format."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str
    bytes: int = Field(ge=0)


class ArchivedSpace(BaseModel):
    """The embedding space the dump's vectors are in: a load into the same one keeps them."""

    model_config = ConfigDict(extra="forbid")

    model: str
    dim: int = Field(ge=1)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["memos-ray-cube"]
    version: int
    cube_id: str
    cube_name: str
    owner_id: str | None = None
    created_at: str
    space: ArchivedSpace
    counts: dict[str, int]
    files: dict[str, FileEntry]


def space_of(
    memory: MemoryService, cube_id: str, default_model: str, default_dim: int
) -> ArchivedSpace:
    """The cube's embedding space as a dump records it (a moved cube's own, else the
    deployment's)."""
    resolve = getattr(memory.spaces, "space_of", None)
    if resolve is not None:
        space = resolve(cube_id)
        return ArchivedSpace(model=space.model, dim=space.dim)
    return ArchivedSpace(model=default_model, dim=default_dim)


def space_for(memory: MemoryService, cube_id: str, config: MemosConfig) -> ArchivedSpace:
    """`space_of` with the deployment's embedder as the default."""
    return space_of(memory, cube_id, config.embedder.model or "", config.embedder.dim)


@dataclass
class LoadReport:
    cube_id: str
    memories: int = 0
    vectors: int = 0
    edges: int = 0
    preferences: int = 0
    adapter: bool = False
    # True when the dump's space differs from the target's and every point was re-embedded.
    reembedded: bool = False
    id_map: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What a load did, without the id map."""
        return {
            "cube_id": self.cube_id,
            "memories": self.memories,
            "vectors": self.vectors,
            "edges": self.edges,
            "preferences": self.preferences,
            "adapter": self.adapter,
            "reembedded": self.reembedded,
        }


class _Hashed:
    """A file written once, its sha256 and size kept as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: IO[bytes] = path.open("wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def line(self, value: Any) -> None:
        self.write(json.dumps(value, ensure_ascii=False).encode() + b"\n")

    def close(self) -> FileEntry:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return FileEntry(sha256=self.digest.hexdigest(), bytes=self.size)


def dump(
    memory: MemoryService,
    cube_id: str,
    target: Path,
    *,
    space: ArchivedSpace,
    cube_name: str | None = None,
    owner_id: str | None = None,
    preferences: PreferenceService | None = None,
    adapters: AdapterStore | None = None,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> Manifest:
    """Write the cube into `target` (which must not exist yet)."""
    target = target.expanduser().resolve()
    if target.exists():
        raise ConflictError(f"{target.name} exists already; dump into a new directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        manifest = _write(
            memory,
            cube_id,
            work,
            space,
            cube_name,
            owner_id,
            preferences,
            adapters,
            batch,
            progress,
        )
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _write(
    memory: MemoryService,
    cube_id: str,
    work: Path,
    space: ArchivedSpace,
    cube_name: str | None,
    owner_id: str | None,
    preferences: PreferenceService | None,
    adapters: AdapterStore | None,
    batch: int,
    progress: Progress | None,
) -> Manifest:
    out = {name: _Hashed(work / name) for name in _FILES}
    counts = dict.fromkeys(("memories", "edges", "vectors", "token_rows", "preferences"), 0)
    vectors = memory.vectors_of(cube_id)
    total = memory.graph.count(cube_id)
    after: str | None = None
    # Keyset pages in id order: each page costs the same however deep the dump is, and a
    # cube taking writes meanwhile never has a memory dumped twice (what is added during
    # the dump may or may not be in it: a dump is a snapshot only of a quiet cube).
    while nodes := memory.graph.nodes_after(cube_id, after, batch):
        after = nodes[-1].id
        ids = [n.id for n in nodes]
        for node in nodes:
            data = node.model_dump(mode="json")
            data["metadata"].pop("embedding", None)
            data["metadata"].pop("relativity", None)
            out["memories.jsonl"].line(data)
        counts["memories"] += len(nodes)
        own = set(ids)
        for edge in memory.graph.get_edges(cube_id, ids):
            if edge.source in own:
                out["edges.jsonl"].line(edge.model_dump(mode="json"))
                counts["edges"] += 1
        for record in vectors.retrieve(cube_id, ids, with_tokens=True):
            tokens = record.tokens if record.tokens is not None else None
            rows = 0 if tokens is None else len(tokens)
            out["vectors.jsonl"].line(
                {"id": record.id, "seq": record.payload.get(SEQ), "tokens": rows}
            )
            out["dense.f32"].write(np.asarray(record.dense, dtype="<f4").tobytes())
            if tokens is not None and rows:
                out["tokens.f16"].write(np.asarray(tokens, dtype="<f2").tobytes())
            counts["vectors"] += 1
            counts["token_rows"] += rows
        if progress is not None:
            progress("dump", counts["memories"], total)
    if preferences is not None:
        start = 0
        while True:
            page, _ = preferences.store.list(cube_id, offset=start, limit=batch)
            for item in page:
                out["preferences.jsonl"].line(item.model_dump(mode="json", exclude={"score"}))
            counts["preferences"] += len(page)
            if len(page) < batch:
                break
            start += len(page)
    files = {name: handle.close() for name, handle in out.items()}
    adapter = adapters.get(cube_id) if adapters is not None else None
    if adapter is not None:
        (work / "adapter").mkdir()
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            blob = (Path(adapter.path) / name).read_bytes()
            (work / "adapter" / name).write_bytes(blob)
            files[f"adapter/{name}"] = FileEntry(
                sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob)
            )
    counts["adapter"] = int(adapter is not None)
    manifest = Manifest(
        format=FORMAT,
        version=VERSION,
        cube_id=cube_id,
        cube_name=cube_name or cube_id,
        owner_id=owner_id,
        created_at=iso(utc_now()),
        space=space,
        counts=counts,
        files=files,
    )
    path = work / "manifest.json"
    path.write_text(manifest.model_dump_json(indent=2))
    with path.open("rb") as fh:
        os.fsync(fh.fileno())
    return manifest


def read_manifest(source: Path) -> Manifest:
    """The manifest, with every file it lists checked (size and sha256)."""
    path = source / "manifest.json"
    if not path.is_file():
        raise ArchiveError(
            f"{source.name}: no manifest.json (not a cube dump, or an unfinished one)"
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{source.name}: manifest.json is unreadable: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ArchiveError(f"{source.name}: not a {FORMAT} dump")
    if raw.get("version") != VERSION:
        raise ArchiveError(
            f"{source.name}: format version {raw.get('version')!r}; this memos-ray reads "
            f"version {VERSION}"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ArchiveError(f"{source.name}: manifest.json is malformed: {exc}") from exc
    for name in (*_FILES, *(f for f in manifest.files if f.startswith("adapter/"))):
        entry = manifest.files.get(name)
        if entry is None:
            raise ArchiveError(f"{source.name}: the manifest lists no {name}")
        _check_file(source, name, entry)
    return manifest


def _check_file(source: Path, name: str, entry: FileEntry) -> None:
    path = source / name
    if not path.is_file():
        raise ArchiveError(f"{source.name}: {name} is missing")
    if path.stat().st_size != entry.bytes:
        raise ArchiveError(
            f"{source.name}: {name} is {path.stat().st_size} bytes, the manifest says "
            f"{entry.bytes} (truncated or changed)"
        )
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != entry.sha256:
        raise ArchiveError(f"{source.name}: {name} does not match its checksum (corrupt)")


def map_id(old_id: str, text: str, old_cube: str, new_cube: str) -> str:
    """The id a memory of `old_cube` takes in `new_cube` (itself when the cube is the same)."""
    if new_cube == old_cube:
        return old_id
    if old_id == memory_id_for(old_cube, text):
        return memory_id_for(new_cube, text)
    return str(uuid.uuid5(_NAMESPACE, f"{new_cube}\x00{old_id}"))


def load(
    memory: MemoryService,
    source: Path,
    *,
    as_cube: str | None = None,
    space: ArchivedSpace,
    preferences: PreferenceService | None = None,
    adapters: AdapterStore | None = None,
    batch: int = BATCH,
    progress: Progress | None = None,
    keep_map: bool = False,
    manifest: Manifest | None = None,
) -> LoadReport:
    """Write the dump at `source` into `as_cube` (default: the dumped cube's id), which must
    hold no memories. `space` is the target cube's embedding space: the same as the dump's
    keeps the stored vectors, another one re-embeds every point. The old-to-new id map lives
    in a temporary SQLite file, so memory stays flat; `keep_map` also returns it. A caller
    that has checked the dump already passes its `manifest` (no second pass over the files)."""
    source = source.expanduser().resolve()
    if manifest is None:
        manifest = read_manifest(source)
    cube_id = as_cube or manifest.cube_id
    if memory.graph.count(cube_id):
        raise ConflictError(f"cube {cube_id!r} already holds memories; load into a new cube")
    same_space = manifest.space == space
    report = LoadReport(cube_id=cube_id, reembedded=not same_space)
    at = memory.spaces.of(cube_id)
    with tempfile.TemporaryDirectory(prefix="memos-load-") as scratch:
        ids = _IdMap(Path(scratch) / "ids.sqlite")
        try:
            _map_ids(source, manifest, cube_id, ids, batch)
            _check_vectors(source, manifest, ids, batch)
            try:
                _write_memories(
                    memory,
                    source,
                    manifest,
                    cube_id,
                    ids,
                    space,
                    same_space,
                    at,
                    report,
                    batch,
                    progress,
                )
                for page in _batches(_json_lines(source / "edges.jsonl"), batch):
                    edges = _mapped_edges(page, ids)
                    memory.graph.add_edges(cube_id, edges)
                    report.edges += len(edges)
            finally:
                at.indexes.invalidate(cube_id)
            if preferences is not None:
                report.preferences = _load_preferences(
                    source, preferences, manifest, cube_id, ids, batch
                )
            if keep_map:
                report.id_map = ids.everything()
        finally:
            ids.close()
    if adapters is not None and "adapter/adapter_config.json" in manifest.files:
        config = json.loads((source / "adapter" / CONFIG_FILE).read_text())
        adapters.put(cube_id, config, (source / "adapter" / WEIGHTS_FILE).read_bytes())
        report.adapter = True
    return report


class _IdMap:
    """Old id to new id, on disk."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE ids (old TEXT PRIMARY KEY, new TEXT NOT NULL)")

    def add(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO ids VALUES (?, ?)", pairs)

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM ids").fetchone()[0])

    def get(self, olds: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(olds))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT old, new FROM ids WHERE old IN ({marks})", chunk)
            found.update(dict(rows.fetchall()))
        return found

    def everything(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT old, new FROM ids").fetchall())

    def close(self) -> None:
        self._db.close()


def _map_ids(source: Path, manifest: Manifest, cube_id: str, ids: _IdMap, batch: int) -> None:
    for page in _batches(_json_lines(source / "memories.jsonl"), batch):
        try:
            ids.add(
                [(d["id"], map_id(d["id"], d["memory"], manifest.cube_id, cube_id)) for d in page]
            )
        except (KeyError, TypeError) as exc:
            raise ArchiveError(f"{source.name}: a memory has no id or text") from exc
    if ids.count() != manifest.counts.get("memories", -1):
        raise ArchiveError(f"{source.name}: memories.jsonl does not hold the counted memories")


def _check_vectors(source: Path, manifest: Manifest, ids: _IdMap, batch: int) -> None:
    """Every point names a memory, and the vector files hold exactly their rows."""
    dense = tokens = 0
    width = manifest.space.dim
    for page in _batches(_json_lines(source / "vectors.jsonl"), batch):
        known = ids.get([str(d.get("id")) for d in page])
        for data in page:
            if str(data.get("id")) not in known:
                raise ArchiveError(
                    f"{source.name}: a vector point has no memory ({data.get('id')})"
                )
            rows = data.get("tokens")
            if not isinstance(rows, int) or rows < 0:
                raise ArchiveError(f"{source.name}: a vector point's token count is malformed")
            dense += width * 4
            tokens += rows * width * 2
    if dense != manifest.files["dense.f32"].bytes:
        raise ArchiveError(f"{source.name}: dense.f32 does not hold one row per point")
    if tokens != manifest.files["tokens.f16"].bytes:
        raise ArchiveError(f"{source.name}: tokens.f16 does not hold the counted token rows")


class _VectorReader:
    """The dump's points in order. They are a subsequence of memories.jsonl (a dump writes
    each batch's points after its nodes, in node order), so a walk pairs them up."""

    def __init__(self, source: Path, dim: int) -> None:
        self._lines = _json_lines(source / "vectors.jsonl")
        self._dense = (source / "dense.f32").open("rb")
        self._tokens = (source / "tokens.f16").open("rb")
        self._dim = dim
        self._next: dict[str, Any] | None = next(self._lines, None)

    def take(self, old_id: str) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(seq, dense row, token rows) if the next point is this memory's, else None."""
        if self._next is None or self._next.get("id") != old_id:
            return None
        data, self._next = self._next, next(self._lines, None)
        dense = np.frombuffer(self._dense.read(self._dim * 4), dtype="<f4")
        rows = int(data["tokens"])
        raw = self._tokens.read(rows * self._dim * 2)
        tokens = np.frombuffer(raw, dtype="<f2").reshape(rows, self._dim)
        seq = data.get("seq")
        return (int(seq) if seq is not None else 0), dense, tokens

    def done(self) -> bool:
        return self._next is None

    def close(self) -> None:
        self._dense.close()
        self._tokens.close()


def _write_memories(
    memory: MemoryService,
    source: Path,
    manifest: Manifest,
    cube_id: str,
    ids: _IdMap,
    space: ArchivedSpace,
    same_space: bool,
    at: SpaceBinding,
    report: LoadReport,
    batch: int,
    progress: Progress | None,
) -> None:
    reader = _VectorReader(source, manifest.space.dim)
    try:
        for page in _batches(_json_lines(source / "memories.jsonl"), batch):
            mapped = ids.get([d["id"] for d in page])
            nodes: list[MemoryItem] = []
            points: list[tuple[MemoryItem, int, np.ndarray, np.ndarray]] = []
            for data in page:
                old_id = data["id"]
                data["id"], data["cube_id"] = mapped[old_id], cube_id
                try:
                    node = MemoryItem.model_validate(data)
                except ValidationError as exc:
                    raise ArchiveError(f"{source.name}: a memory is malformed: {exc}") from exc
                nodes.append(node)
                point = reader.take(old_id)
                if point is not None:
                    points.append((node, *point))
            # Nodes first: a vector point is an add's commit marker (see MemoryService).
            memory.graph.upsert_nodes(cube_id, nodes)
            report.memories += len(nodes)
            if points:
                items = [p[0] for p in points]
                seqs = [p[1] for p in points]
                if same_space:
                    dense = np.stack([p[2] for p in points]).astype(np.float32)
                    tokens = [p[3] for p in points]
                    encoded = Encoded(dense, tokens if any(len(t) for t in tokens) else None)
                else:
                    encoded = at.embedder.encode([embedding_text(i) for i in items])
                at.vectors.upsert(cube_id, vector_records(items, seqs, encoded))
                report.vectors += len(items)
            if progress is not None:
                progress("load", report.memories, manifest.counts.get("memories", 0))
        if not reader.done():
            raise ArchiveError(f"{source.name}: vectors.jsonl is out of order with the memories")
    finally:
        reader.close()


def _mapped_edges(page: Sequence[dict[str, Any]], ids: _IdMap) -> list[Edge]:
    edges = [Edge.model_validate(d) for d in page]
    mapped = ids.get([e.source for e in edges] + [e.target for e in edges])
    return [
        Edge(source=mapped[e.source], target=mapped[e.target], type=e.type)
        for e in edges
        if e.source in mapped and e.target in mapped
    ]


def _load_preferences(
    source: Path,
    preferences: PreferenceService,
    manifest: Manifest,
    cube_id: str,
    ids: _IdMap,
    batch: int,
) -> int:
    done = 0
    lines = _json_lines(source / "preferences.jsonl")
    for page in _batches(lines, batch):
        items = []
        sources_of = ids.get([s for d in page for s in d.get("source_memory_ids") or []])
        for data in page:
            item = Preference.model_validate(data)
            new_id = (
                preference_id(cube_id, item.preference)
                if item.id == preference_id(manifest.cube_id, item.preference)
                else map_id(item.id, item.preference, manifest.cube_id, cube_id)
            )
            sources = [sources_of.get(s, s) for s in item.source_memory_ids]
            items.append(
                item.model_copy(
                    update={"id": new_id, "cube_id": cube_id, "source_memory_ids": sources}
                )
            )
        dense = preferences.memory.query_embedder.embed([i.preference for i in items])
        preferences.upsert(cube_id, items, np.asarray(dense, dtype=np.float32))
        done += len(items)
    return done


def _json_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise ArchiveError(f"{path.name} line {number} is not JSON") from exc
            if not isinstance(value, dict):
                raise ArchiveError(f"{path.name} line {number} is not an object")
            yield value


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    page: list[Any] = []
    for item in items:
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page

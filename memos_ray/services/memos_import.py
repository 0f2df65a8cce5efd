"""Loading a cube that MemOS dumped (`GeneralMemCube.dump`): its `config.json` and textual
memory file, as MemOS 2.0 writes them.

The layout, from MemOS's source: `config.json` names the cube (`cube_id`, `user_id`) and each
memory's backend and file (`memory_filename`, default `textual_memory.json`). The textual file
is `{"nodes": [{id, memory, metadata}], "edges": [{source, target, type}]}` for `tree_text`,
a list of vector-db items whose `payload` is the memory for `general_text`, and a list of
memories for `naive_text`. A `pref_text` file maps collection names to vector-db items
(`memory`, `payload.preference`, `payload.preference_type`).

MemOS's embeddings come from a model memos-ray may not have, so every memory is embedded
again. Memories get memos-ray ids (derived from the cube and the text, as every add does):
two MemOS nodes with the same text become one memory, and edges follow the new ids. Nothing
is written before the whole dump has been read and checked.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from memos_ray.domain.memory import (
    Edge,
    EdgeType,
    MemoryItem,
    MemoryMetadata,
    MemoryStatus,
    MemoryType,
    SourceMessage,
    memory_id_for,
)
from memos_ray.services.cube_archive import ArchiveError, LoadReport, Progress
from memos_ray.services.memory import MemoryService, embedding_text, vector_records
from memos_ray.services.preferences import PreferenceService, preference_id
from memos_ray.stores.preference.base import Preference

CONFIG = "config.json"
DEFAULT_FILE = "textual_memory.json"
TEXT_BACKENDS = ("tree_text", "simple_tree_text", "general_text", "naive_text")
# Fields memos-ray keeps as its own metadata; MemOS's others go to `info["memos"]`.
_KEPT = ("user_id", "session_id", "key", "tags", "background", "confidence", "created_at")
_STATUSES = {s.value for s in MemoryStatus}
_TYPES = {t.value for t in MemoryType} - {MemoryType.TOPIC.value}
_EDGES = {e.value for e in EdgeType}


@dataclass
class MemosDump:
    cube_id: str
    user_id: str | None
    items: list[MemoryItem] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    preferences: list[Preference] = field(default_factory=list)


def is_memos_dump(source: Path) -> bool:
    return (source / CONFIG).is_file() and not (source / "manifest.json").exists()


def read(source: Path, cube_id: str | None = None) -> MemosDump:
    """The dump, mapped onto memos-ray's records for `cube_id` (default: MemOS's cube id)."""
    config = _json(source, CONFIG)
    if not isinstance(config, dict) or not isinstance(config.get("cube_id"), str):
        raise ArchiveError(f"{source.name}: {CONFIG} is not a MemOS cube config (no cube_id)")
    cube = cube_id or config["cube_id"]
    dump = MemosDump(cube_id=cube, user_id=config.get("user_id"))
    owner = dump.user_id or cube
    text = _section(config, "text_mem")
    if text is not None:
        backend, name = text
        if backend not in TEXT_BACKENDS:
            raise ArchiveError(f"{source.name}: text_mem backend {backend!r} is not textual")
        raw = _json(source, name) if (source / name).is_file() else None
        if raw is not None:
            nodes, edges = _text_records(source, raw)
            old_to_new = _add_items(source, dump, nodes, owner)
            dump.edges = _mapped_edges(edges, old_to_new)
    pref = _section(config, "pref_mem")
    if pref is not None and (source / pref[1]).is_file():
        dump.preferences = _preferences(source, _json(source, pref[1]), cube, owner)
    return dump


def load(
    memory: MemoryService,
    dump: MemosDump,
    *,
    preferences: PreferenceService | None = None,
    batch: int = 512,
    progress: Progress | None = None,
) -> LoadReport:
    """Write a MemOS dump (see `read`) into its cube, which must hold no memories, embedding
    every memory with the cube's model."""
    cube_id = dump.cube_id
    if memory.graph.count(cube_id):
        raise ArchiveError(f"cube {cube_id!r} already holds memories; load into a new cube")
    report = LoadReport(cube_id=cube_id, reembedded=True)
    at = memory.spaces.of(cube_id)
    seq = time.time_ns()
    try:
        for start in range(0, len(dump.items), batch):
            items = dump.items[start : start + batch]
            memory.graph.upsert_nodes(cube_id, items)
            encoded = at.embedder.encode([embedding_text(i) for i in items])
            seqs = list(range(seq + start, seq + start + len(items)))
            at.vectors.upsert(cube_id, vector_records(items, seqs, encoded))
            report.memories += len(items)
            report.vectors += len(items)
            if progress is not None:
                progress("load", report.memories, len(dump.items))
        memory.graph.add_edges(cube_id, dump.edges)
        report.edges = len(dump.edges)
    finally:
        at.indexes.invalidate(cube_id)
    if preferences is not None and dump.preferences:
        texts = [p.preference for p in dump.preferences]
        dense = np.asarray(preferences.memory.query_embedder.embed(texts), dtype=np.float32)
        preferences.upsert(cube_id, dump.preferences, dense)
        report.preferences = len(dump.preferences)
    return report


def _json(source: Path, name: str) -> Any:
    try:
        return json.loads((source / name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchiveError(f"{source.name}: {name} is missing") from None
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{source.name}: {name} is not readable JSON: {exc}") from None


def _section(config: dict[str, Any], key: str) -> tuple[str, str] | None:
    """(backend, memory file) of one memory of the config, None when it is not set up."""
    section = config.get(key)
    if not isinstance(section, dict) or section.get("backend") in (None, "uninitialized"):
        return None
    inner = section.get("config")
    name = (inner.get("memory_filename") if isinstance(inner, dict) else None) or DEFAULT_FILE
    if not isinstance(name, str) or Path(name).name != name:
        raise ArchiveError(f"{key}.config.memory_filename must be a file name, not {name!r}")
    return str(section["backend"]), name


def _text_records(source: Path, raw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(nodes, edges) from any of MemOS's textual layouts."""
    if isinstance(raw, dict) and isinstance(raw.get("nodes"), list):
        return raw["nodes"], list(raw.get("edges") or [])
    if isinstance(raw, list):
        # general_text keeps the memory in a vector-db item's payload; naive_text is bare.
        return [r.get("payload", r) if isinstance(r, dict) else r for r in raw], []
    raise ArchiveError(f"{source.name}: the textual memory file has no nodes or memory list")


def _add_items(source: Path, dump: MemosDump, nodes: list[Any], owner: str) -> dict[str, str]:
    old_to_new: dict[str, str] = {}
    seen: set[str] = set()
    for number, node in enumerate(nodes, 1):
        if not isinstance(node, dict) or not isinstance(node.get("memory"), str):
            raise ArchiveError(f"{source.name}: memory {number} has no text")
        text = node["memory"]
        if not text.strip():
            continue
        new_id = memory_id_for(dump.cube_id, text)
        if isinstance(node.get("id"), str):
            old_to_new[node["id"]] = new_id
        if new_id in seen:
            continue
        seen.add(new_id)
        try:
            metadata = _metadata(node.get("metadata") or {}, owner)
        except (ValidationError, TypeError, ValueError) as exc:
            raise ArchiveError(f"{source.name}: memory {number} is malformed: {exc}") from None
        dump.items.append(
            MemoryItem(id=new_id, memory=text, cube_id=dump.cube_id, metadata=metadata)
        )
    return old_to_new


def _metadata(raw: dict[str, Any], owner: str) -> MemoryMetadata:
    kept = {k: raw[k] for k in _KEPT if raw.get(k) is not None}
    kept.setdefault("user_id", owner)
    status = raw.get("status")
    if status in _STATUSES:
        kept["status"] = status
    memory_type = raw.get("memory_type")
    kept["memory_type"] = memory_type if memory_type in _TYPES else MemoryType.LONG_TERM.value
    if raw.get("updated_at"):
        kept["updated_at"] = raw["updated_at"]
    kept["sources"] = [_source(s) for s in raw.get("sources") or []]
    rest = {
        k: v
        for k, v in raw.items()
        if k not in (*_KEPT, "status", "memory_type", "updated_at", "sources", "embedding")
        and v not in (None, [], {}, "")
    }
    info = dict(raw.get("info") or {}) if isinstance(raw.get("info"), dict) else {}
    rest.pop("info", None)
    if rest:
        info["memos"] = rest
    return MemoryMetadata(**kept, info=info)


def _source(raw: Any) -> SourceMessage:
    """MemOS keeps sources as objects, or as their JSON text (graph stores)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return SourceMessage(type="chat", content=raw)
    if not isinstance(raw, dict):
        return SourceMessage(type="chat", content=str(raw))
    return SourceMessage.model_validate({k: v for k, v in raw.items() if v is not None})


def _mapped_edges(raw: list[Any], old_to_new: dict[str, str]) -> list[Edge]:
    edges: dict[tuple[str, str, str], Edge] = {}
    for entry in raw:
        if not isinstance(entry, dict) or entry.get("type") not in _EDGES:
            continue
        source = old_to_new.get(str(entry.get("source")))
        target = old_to_new.get(str(entry.get("target")))
        if source and target and source != target:
            edge = Edge(source=source, target=target, type=entry["type"])
            edges[(source, target, edge.type)] = edge
    return list(edges.values())


def _preferences(source: Path, raw: Any, cube_id: str, owner: str) -> list[Preference]:
    if not isinstance(raw, dict):
        raise ArchiveError(f"{source.name}: the preference file is not a map of collections")
    found: dict[str, Preference] = {}
    for collection, items in raw.items():
        for item in items if isinstance(items, list) else []:
            payload = item.get("payload") or {} if isinstance(item, dict) else {}
            text = payload.get("preference") or item.get("memory")
            if not isinstance(text, str) or not text.strip():
                continue
            kind = (
                "implicit"
                if "implicit" in str(payload.get("preference_type", collection))
                else "explicit"
            )
            pid = preference_id(cube_id, text)
            found[pid] = Preference(
                id=pid,
                cube_id=cube_id,
                user_id=str(payload.get("user_id") or owner),
                kind=kind,
                preference=text,
                reasoning=str(payload.get("reasoning") or ""),
            )
    return list(found.values())

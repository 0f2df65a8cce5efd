"""Domain objects to MemOS JSON."""

from __future__ import annotations

from typing import Any

from memos_ray.domain.memory import Edge, MemoryItem
from memos_ray.stores.preference.base import Preference


def item_json(item: MemoryItem) -> dict[str, Any]:
    data = item.model_dump(mode="json")
    meta = data["metadata"]
    meta.pop("embedding", None)
    if meta.get("relativity") is None:
        meta.pop("relativity", None)
    data["ref_id"] = f"[{item.id.split('-')[0]}]"
    return data


def graph_node_json(item: MemoryItem) -> dict[str, Any]:
    """A memory as a node of a drawn graph: enough to label it and open it."""
    meta = item.metadata
    return {
        "id": item.id,
        "memory": item.memory,
        "memory_type": meta.memory_type,
        "status": meta.status,
        "key": meta.key,
        "created_at": meta.created_at,
    }


def edge_json(edge: Edge) -> dict[str, Any]:
    return edge.model_dump(mode="json")


def bucket(cube_id: str, items: list[MemoryItem], total: int | None = None) -> dict[str, Any]:
    return {
        "cube_id": cube_id,
        "memories": [item_json(i) for i in items],
        "total_nodes": len(items) if total is None else total,
    }


def preference_json(preference: Preference) -> dict[str, Any]:
    """A preference in the item shape MemOS clients read from `pref_mem`."""
    return {
        "id": preference.id,
        "memory": preference.preference,
        "cube_id": preference.cube_id,
        "metadata": {
            "memory_type": "PreferenceMemory",
            "preference_type": f"{preference.kind}_preference",
            "user_id": preference.user_id,
            "session_id": preference.session_id,
            "topic": preference.topic,
            "reasoning": preference.reasoning,
            "source_memory_ids": preference.source_memory_ids,
            "status": preference.status,
            "created_at": preference.created_at,
            "updated_at": preference.updated_at,
            "relativity": preference.score,
        },
        "ref_id": f"[{preference.id.split('-')[0]}]",
    }


def preference_bucket(cube_id: str, preferences: list[Preference]) -> dict[str, Any]:
    return {
        "cube_id": cube_id,
        "memories": [preference_json(p) for p in preferences],
        "total_nodes": len(preferences),
    }

"""Domain objects to MemOS JSON."""

from __future__ import annotations

from typing import Any

from memos_ray.domain.memory import Edge, MemoryItem


def item_json(item: MemoryItem) -> dict[str, Any]:
    data = item.model_dump(mode="json")
    meta = data["metadata"]
    meta.pop("embedding", None)
    if meta.get("relativity") is None:
        meta.pop("relativity", None)
    data["ref_id"] = f"[{item.id.split('-')[0]}]"
    return data


def edge_json(edge: Edge) -> dict[str, Any]:
    return edge.model_dump(mode="json")


def bucket(cube_id: str, items: list[MemoryItem], total: int | None = None) -> dict[str, Any]:
    return {
        "cube_id": cube_id,
        "memories": [item_json(i) for i in items],
        "total_nodes": len(items) if total is None else total,
    }

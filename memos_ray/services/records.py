"""MemOS's delete records: a whole cube soft-deleted under a record id, and later either
recovered or purged by that id. The id is kept in each memory's `info`, so a recover
brings back exactly what that delete took, and nothing deleted otherwise."""

from __future__ import annotations

from collections.abc import Iterator

from memos_ray.domain.memory import MemoryItem, MemoryStatus, MemoryType
from memos_ray.services.memory import VISIBLE_STATUSES, MemoryService
from memos_ray.services.preferences import PreferenceService

RECORD_KEY = "delete_record_id"
# The status a memory had before the delete (an archived memory is recovered archived).
PRIOR_KEY = "delete_record_status"
_BATCH = 256
_KINDS = tuple(str(t) for t in MemoryType if t != MemoryType.TOPIC)


def _pages(
    memory: MemoryService, cube_id: str, statuses: tuple[str, ...]
) -> Iterator[list[MemoryItem]]:
    """The cube's memories in batches; each batch is changed before the next is read, so
    the scan re-reads from the start until nothing matching is left."""
    while True:
        items, _ = memory.graph.list_nodes(
            cube_id, memory_types=_KINDS, statuses=statuses, limit=_BATCH
        )
        yield items
        if len(items) < _BATCH:
            return


def soft_delete(memory: MemoryService, cube_id: str, record_id: str) -> int:
    """Every visible memory of the cube to `deleted`, tagged with the record."""
    done = 0
    for items in _pages(memory, cube_id, VISIBLE_STATUSES):
        changed = [_tagged(i, record_id) for i in items]
        if changed:
            memory.update_items(cube_id, changed)
        done += len(changed)
    return done


def _tagged(item: MemoryItem, record_id: str) -> MemoryItem:
    info = {**item.metadata.info, RECORD_KEY: record_id, PRIOR_KEY: str(item.metadata.status)}
    reason = f"deleted by record {record_id}"
    return item.revised(reason, status=MemoryStatus.DELETED, info=info)


def _of_record(memory: MemoryService, cube_id: str, record_id: str) -> list[MemoryItem]:
    deleted, _ = memory.graph.list_nodes(
        cube_id, memory_types=_KINDS, statuses=(str(MemoryStatus.DELETED),)
    )
    return [i for i in deleted if i.metadata.info.get(RECORD_KEY) == record_id]


def hard_delete(memory: MemoryService, cube_id: str, record_id: str) -> int:
    """Purge what the record deleted (MemOS's `hard_delete`): gone from every store."""
    ids = [i.id for i in _of_record(memory, cube_id, record_id)]
    return len(memory.delete(cube_id, ids)) if ids else 0


def recover(memory: MemoryService, cube_id: str, record_id: str) -> int:
    """What the record deleted back to active, the tag removed."""
    items = _of_record(memory, cube_id, record_id)
    changed = []
    for item in items:
        meta = item.metadata.info
        info = {k: v for k, v in meta.items() if k not in (RECORD_KEY, PRIOR_KEY)}
        prior = meta.get(PRIOR_KEY)
        status = MemoryStatus(prior) if prior in set(MemoryStatus) else MemoryStatus.ACTIVATED
        reason = f"recovered from record {record_id}"
        changed.append(item.revised(reason, status=status, info=info))
    for start in range(0, len(changed), _BATCH):
        memory.update_items(cube_id, changed[start : start + _BATCH])
    return len(changed)


def clear_cube(
    memory: MemoryService, preferences: PreferenceService | None, cube_id: str
) -> list[str]:
    """Every memory of the cube, and its preferences, gone from every store; the cube itself
    (its id, owner and grants) stays. Returns the memory ids deleted."""
    deleted = memory.delete(cube_id, memory.graph.find_ids(cube_id))
    if preferences is not None:
        preferences.store.delete_cube(cube_id)
    return deleted

"""Built-in scheduler task handlers (labels in `config.BUILTIN_HANDLERS`).

Each runs in a cube's scheduler actor and must be idempotent: a task interrupted by a crash
runs again from the start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memos_ray.core.reader import Turn, fast_windows
from memos_ray.domain.memory import Edge, EdgeType, MemoryStatus
from memos_ray.runtime.compose import Services
from memos_ray.scheduler.context import HandlerContext
from memos_ray.services.feedback import FeedbackService, FeedbackTask
from memos_ray.services.fine import PreferenceBatch
from memos_ray.services.reorganize import Reorganizer
from memos_ray.stores.sql.tasks import Task

if TYPE_CHECKING:
    pass


def mem_read(task: Task, context: HandlerContext) -> dict[str, Any]:
    """Fine extraction of the fast memories an async add stored. With `fine.keep_turns` (the
    default) the turns stay searchable and each fact links to them (MATERIAL); without it
    they are archived, each pointing (MERGED_TO) at what was read from it."""
    services: Services = context.services()
    if services.fine is None:
        raise RuntimeError("mem_read needs an LLM (llm.backend is 'none')")
    cube = task.cube_id
    items = services.memory.get_by_ids([cube], list(task.payload.get("memory_ids") or []))
    fresh = [
        i
        for i in items
        if i.metadata.status == MemoryStatus.ACTIVATED and "mode:fast" in i.metadata.tags
    ]
    if not fresh:
        return {"read": 0, "skipped": len(items)}
    turns = [
        Turn(
            role=s.role or "user",
            content=s.content or item.memory,
            chat_time=s.chat_time,
            message_id=s.message_id,
            name=s.name,
        )
        for item in fresh
        for s in (item.metadata.sources or [])
        if (s.content or "").strip()
    ]
    fine_cfg = context.config.fine
    windows = fast_windows(turns, fine_cfg.window_messages, fine_cfg.window_chars)
    session = fresh[0].metadata.session_id
    # The fast memories are the raw record: a window the LLM cannot read writes nothing.
    outcome = services.fine.add(cube, task.user_id, windows, session_id=session, keep_raw=False)
    made = list({m.id: m for m in [*outcome.stored, *outcome.merged]}.values())
    if made and not outcome.errors:
        if context.config.fine.keep_turns:
            # The turns stay searchable; each fact links to the turns it was read from.
            edges = [
                Edge(source=m.id, target=item.id, type=EdgeType.MATERIAL)
                for m in made
                for item in fresh
            ]
            services.memory.graph.add_edges(cube, edges)
        else:
            for item in fresh:
                archived = services.fine.archive(cube, item, None, f"read by task {task.task_id}")
                services.memory.graph.add_edges(
                    cube,
                    [Edge(source=archived.id, target=m.id, type=EdgeType.MERGED_TO) for m in made],
                )
    follow_ups: list[str] = []
    tasks = context.tasks
    if (
        made
        and context.config.scheduler.organize_after_read
        and tasks is not None
        and not tasks.waiting_with_label(cube, "mem_organize")
    ):
        follow_ups.append(context.follow_up(task, "mem_organize", {}).task_id)
    if outcome.unstored_preferences:
        batches = [b.model_dump(mode="json") for b in outcome.unstored_preferences]
        follow_ups.append(context.follow_up(task, "pref_add", {"batches": batches}).task_id)
    return {
        "read": len(fresh),
        "fine_memory_ids": [m.id for m in made],
        "errors": outcome.errors,
        "llm_calls": outcome.calls,
        "follow_up_task_ids": follow_ups,
    }


def pref_add(task: Task, context: HandlerContext) -> dict[str, Any]:
    """Store preferences a reading found (explicit ones at once, implicit ones as
    observations until seen on enough occasions). Idempotent: preferences are keyed by
    their text, observations by the messages they came from."""
    services: Services = context.services()
    batches = [PreferenceBatch.model_validate(b) for b in task.payload.get("batches") or []]
    if services.preferences is None:
        return {"stored": 0, "observed": 0, "skipped": "no preference store is configured"}
    stored: list[str] = []
    observed = 0
    for batch in batches:
        done = services.preferences.add_extracted(
            task.cube_id,
            task.user_id,
            batch.preferences,
            batch.sources,
            batch.session_id,
            batch.memory_ids,
        )
        stored += [p.id for p in done.stored]
        observed += len(done.observed)
    return {"stored": len(stored), "preference_ids": stored, "observed": observed}


def mem_feedback(task: Task, context: HandlerContext) -> dict[str, Any]:
    """A user's correction, applied as the synchronous route would (`FeedbackService`);
    what it wrote is keyed by content, so a re-run after a crash adds nothing twice."""
    services: Services = context.services()
    if services.fine is None:
        raise RuntimeError("mem_feedback needs an LLM (llm.backend is 'none')")
    request = FeedbackTask.model_validate(task.payload)
    outcome = FeedbackService(services.fine).apply_task(task.cube_id, task.user_id, request)
    return {"answer": outcome.answer, "record": outcome.record(), "error": outcome.error}


def activation_refresh(task: Task, context: HandlerContext) -> dict[str, Any]:
    """Recompute the KV cache of the cube's activation prefix (its newest memories)."""
    services: Services = context.services()
    if services.chat is None:
        return {"tokens": 0}
    return {"tokens": services.chat.warm(task.cube_id, task.payload.get("system_prompt"))}


def mem_organize(task: Task, context: HandlerContext) -> dict[str, Any]:
    """Reorganise the cube (`jobs.reorganize`'s work for one cube): merge duplicates, archive
    contradicted facts, bring the topic tree up to date. Idempotent: a run over an organised
    cube changes nothing. A failed run raises, so the scheduler retries it."""

    services: Services = context.services()
    params = context.config.reorganize.model_copy(update=task.payload.get("params") or {})
    model = services.fine.model if services.fine is not None else None
    ledger = services.fine.ledger if services.fine is not None else None
    report = Reorganizer(services.memory, params, model, ledger).run(task.cube_id)
    if report.error is not None:
        raise RuntimeError(report.error)
    return {
        "merged": len(report.merged),
        "archived": len(report.archived),
        "topics": report.topics,
        "topics_created": len(report.topics_created),
        "topics_removed": len(report.topics_removed),
        "parents_added": report.parents_added,
        "llm_calls": report.llm_calls,
    }

"""Chat with memory: search the readable cubes, build the prompt, answer, write back.

Prompt layout (the same for every backend):

1. system: the system prompt plus the primary cube's hot memories (activation memory). It
   changes only when that cube's newest memories change, so backends keep its KV cache.
   A system prompt holding `{memories}` gets the retrieved memories there instead, and then
   nothing is cached (the text differs per question).
2. the last `max_history` messages of the conversation;
3. user: the memories retrieved for this question, then the question.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memos_ray import metrics
from memos_ray.config import ChatConfig, ReaderConfig
from memos_ray.core.filters import FilterExpr
from memos_ray.core.reader import Turn, fast_windows
from memos_ray.domain.memory import DEFAULT_SESSION, MemoryItem
from memos_ray.models.adapters import AdapterStore
from memos_ray.models.chat import (
    ChatModel,
    ChatRequest,
    Delta,
    Generation,
    Message,
    SamplingParams,
    Usage,
    split_reasoning,
)
from memos_ray.services.memory import Query, SearchOptions
from memos_ray.services.preferences import PreferenceService, preference_string
from memos_ray.stores.preference.base import Preference
from memos_ray.stores.sql.base import TenancyStore

if TYPE_CHECKING:
    from memos_ray.services.memory import MemoryService

logger = logging.getLogger("memos_ray.services.chat")

MEMORIES_SLOT = "{memories}"


@dataclass(frozen=True)
class ChatTurn:
    """One question to answer, already authorised (cubes checked by the caller)."""

    query: str
    user_id: str
    readable_cubes: Sequence[str]
    write_cube: str | None
    history: Sequence[Message] = ()
    system_prompt: str | None = None
    top_k: int = 10
    relativity: float = 0.45
    cube_filters: Mapping[str, FilterExpr | None] = field(default_factory=dict)
    session_id: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    model: str | None = None
    include_preference: bool = True
    pref_top_k: int = 6


@dataclass(frozen=True)
class PreparedChat:
    request: ChatRequest
    memories: list[MemoryItem]
    hot: list[MemoryItem]
    preferences: list[Preference] = field(default_factory=list)

    @property
    def prompt(self) -> list[dict[str, str]]:
        return [m.model_dump() for m in self.request.messages]


@dataclass(frozen=True)
class ChatAnswer:
    response: str
    reasoning: str
    generation: Generation
    prepared: PreparedChat


class ChatService:
    def __init__(
        self,
        memory: MemoryService,
        model: ChatModel,
        config: ChatConfig,
        reader: ReaderConfig,
        adapters: AdapterStore,
        ledger: TenancyStore | None = None,
        preferences: PreferenceService | None = None,
    ) -> None:
        self.memory = memory
        self.preferences = preferences
        # Where each answer's tokens are counted, against the cube whose memories it used.
        self.ledger = ledger
        self.model = model
        self.config = config
        self.reader = reader
        self.adapters = adapters
        self._warming: set[str] = set()
        self._warm_lock = threading.Lock()

    # -- prompt ----------------------------------------------------------------------------

    def prepare(self, turn: ChatTurn) -> PreparedChat:
        cubes = list(turn.readable_cubes)
        primary = cubes[0]
        filters = {c: turn.cube_filters.get(c) for c in cubes}
        query = Query(turn.query)  # embedded once for memories and preferences
        found = self.memory.search(
            query,
            filters,
            SearchOptions(
                top_k=turn.top_k,
                relativity=turn.relativity,
                session_id=turn.session_id,
            ),
        )
        system = turn.system_prompt or self.config.system_prompt
        slot = MEMORIES_SLOT in system
        hot = [] if slot else self.hot_memories(primary)
        hot_ids = {m.id for m in hot}
        retrieved = [m for cube in cubes for m in found.get(cube, []) if m.id not in hot_ids]
        retrieved.sort(key=lambda m: -(m.metadata.relativity or 0.0))
        retrieved = retrieved[: turn.top_k]
        preferences: list[Preference] = []
        if self.preferences is not None and turn.include_preference and turn.pref_top_k:
            found_prefs = self.preferences.search(cubes, query, turn.pref_top_k)
            preferences = [p for cube in cubes for p in found_prefs.get(cube, [])]
            preferences = preferences[: turn.pref_top_k]
        messages: list[Message] = []
        if slot:
            block = render_memories(retrieved) or "(no memories found)"
            messages.append(Message(role="system", content=system.replace(MEMORIES_SLOT, block)))
            user = turn.query
        else:
            if hot:
                system = activation_prompt(system, hot)
            messages.append(Message(role="system", content=system))
            user = turn.query
            if retrieved:
                user = f"Memories related to this message:\n{render_memories(retrieved)}\n\n{user}"
        if preferences:
            user = f"The user's preferences:\n{preference_string(preferences)}\n\n{user}"
        history = list(turn.history)[-self.config.max_history :] if self.config.max_history else []
        messages.extend(history)
        messages.append(Message(role="user", content=user))
        request = ChatRequest(
            messages=tuple(messages),
            params=turn.params,
            model=turn.model,
            adapter=self.adapters.get(primary),
            prefix_messages=0 if slot else 1,
        )
        return PreparedChat(request=request, memories=retrieved, hot=hot, preferences=preferences)

    def hot_memories(self, cube_id: str) -> list[MemoryItem]:
        """The cube's newest memories within the activation budget, oldest first."""
        activation = self.config.activation
        if not activation.enabled:
            return []
        newest, _ = self.memory.get_page(cube_id, page=1, page_size=activation.max_memories)
        kept: list[MemoryItem] = []
        size = 0
        for item in newest:
            size += len(item.memory) + 16
            if size > activation.max_chars:
                break
            kept.append(item)
        # Oldest first, and ordered by a stable key: the same set renders the same text.
        return sorted(kept, key=lambda m: (m.metadata.created_at, m.id))

    # -- answer ----------------------------------------------------------------------------

    def complete(
        self, turn: ChatTurn, *, write_back: bool, prepared: PreparedChat | None = None
    ) -> ChatAnswer:
        prepared = prepared or self.prepare(turn)
        generation = self.model.generate(prepared.request)
        self._count(turn, generation.usage)
        response, reasoning = split_reasoning(generation.text)
        if write_back:
            self.write_back(turn, response)
        return ChatAnswer(response, reasoning, generation, prepared)

    def stream(
        self, turn: ChatTurn, prepared: PreparedChat, *, write_back: bool
    ) -> Iterator[Delta]:
        """Deltas of the answer; the exchange is written back once the stream ends."""
        parts: list[str] = []
        for delta in self.model.stream(prepared.request):
            parts.append(delta.text)
            if delta.usage is not None:
                self._count(turn, delta.usage)
            yield delta
        if write_back:
            response, _ = split_reasoning("".join(parts))
            self.write_back(turn, response)

    def _count(self, turn: ChatTurn, usage: Usage) -> None:
        if self.ledger is not None:
            cube = turn.readable_cubes[0]
            self.ledger.record_llm_usage(cube, usage.prompt_tokens, usage.completion_tokens)
        metrics.llm_tokens("chat", usage.prompt_tokens, usage.completion_tokens)

    def write_back(self, turn: ChatTurn, response: str) -> None:
        """Remember the exchange in the writable cube, then re-warm its activation prefix."""
        if turn.write_cube is None or not response.strip():
            return
        turns = [Turn(role="user", content=turn.query.strip())]
        turns.append(Turn(role="assistant", content=response.strip()))
        windows = fast_windows(turns, self.reader.window_messages, self.reader.window_chars)
        self.memory.add_windows(
            turn.write_cube,
            turn.user_id,
            windows,
            session_id=turn.session_id or DEFAULT_SESSION,
        )
        self.warm_in_background(turn.write_cube, turn.system_prompt)

    def warm(self, cube_id: str, system_prompt: str | None = None) -> int:
        """Compute the KV cache of the cube's activation prefix now; returns its tokens."""
        system = system_prompt or self.config.system_prompt
        if MEMORIES_SLOT in system:
            return 0
        hot = self.hot_memories(cube_id)
        if not hot:
            return 0
        content = activation_prompt(system, hot)
        request = ChatRequest(
            messages=(Message(role="system", content=content), Message(role="user", content="")),
            params=SamplingParams(max_tokens=1, temperature=0),
            adapter=self.adapters.get(cube_id),
            prefix_messages=1,
        )
        return self.model.warm_prefix(request).tokens

    def warm_in_background(self, cube_id: str, system_prompt: str | None) -> None:
        with self._warm_lock:
            if cube_id in self._warming:
                return
            self._warming.add(cube_id)

        def run() -> None:
            try:
                self.warm(cube_id, system_prompt)
            except Exception:  # best effort: the next chat computes the prefix itself
                logger.warning("activation warm-up failed for cube %s", cube_id, exc_info=True)
            finally:
                with self._warm_lock:
                    self._warming.discard(cube_id)

        threading.Thread(target=run, name="activation-warm", daemon=True).start()


def activation_prompt(system: str, hot: Sequence[MemoryItem]) -> str:
    """The cached prefix: the system prompt, then the cube's newest memories."""
    return f"{system}\n\n# What you remember (most recent)\n{render_memories(hot)}"


def render_memories(items: Sequence[MemoryItem]) -> str:
    return "\n".join(f"- {_dated(m)}" for m in items)


def _dated(item: MemoryItem) -> str:
    """The memory's text with its date, unless the text already shows the turn's time."""
    times = [s.chat_time for s in item.metadata.sources if s.chat_time]
    if times and times[0] in item.memory:
        return item.memory
    when = times[0][:16].replace("T", " ") if times else item.metadata.created_at[:10]
    return f"[{when}] {item.memory}"

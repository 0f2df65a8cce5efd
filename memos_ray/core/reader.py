"""Fast-mode MemReader: conversation windows become memories without any LLM.

Each memory is a window of consecutive turns (one turn by default) rendered as
`speaker: [chat_time]: content` lines, the speaker being the message's `name` or else its
role, and keeps one source per turn so a hit can be traced back to the exact messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from memos_ray.domain.memory import MemoryType, SourceMessage


@dataclass(frozen=True)
class Turn:
    role: str
    content: str
    chat_time: str | None = None
    message_id: str | None = None
    file_ids: tuple[str, ...] = ()
    name: str | None = None


@dataclass(frozen=True)
class Window:
    text: str
    memory_type: MemoryType
    sources: list[SourceMessage]
    file_ids: list[str] = field(default_factory=list)
    # Set by the fine reader: a short title, the window's summary, the LLM's tags.
    key: str | None = None
    background: str = ""
    tags: tuple[str, ...] = ()
    mode: str = "fast"


def render_turn(turn: Turn) -> str:
    when = f"[{turn.chat_time}]: " if turn.chat_time else ""
    return f"{turn.name or turn.role}: {when}{turn.content}"


def split_windows(
    turns: Sequence[Turn], max_messages: int = 4, max_chars: int = 2000
) -> list[list[Turn]]:
    """Greedy consecutive windows; a turn longer than max_chars gets a window of its own."""
    windows: list[list[Turn]] = []
    current: list[Turn] = []
    size = 0
    for turn in turns:
        length = len(render_turn(turn))
        if current and (len(current) >= max_messages or size + length > max_chars):
            windows.append(current)
            current, size = [], 0
        current.append(turn)
        size += length + 1
    if current:
        windows.append(current)
    return windows


def fast_windows(
    turns: Sequence[Turn], max_messages: int = 4, max_chars: int = 2000
) -> list[Window]:
    """User-only windows are UserMemory (facts about the user); mixed ones LongTermMemory."""
    kept = [t for t in turns if t.content.strip()]
    result: list[Window] = []
    for window in split_windows(kept, max_messages, max_chars):
        roles = {t.role for t in window}
        memory_type = MemoryType.USER if roles == {"user"} else MemoryType.LONG_TERM
        sources = [
            SourceMessage(
                type="chat",
                role=t.role,
                chat_time=t.chat_time,
                message_id=t.message_id,
                content=t.content,
                name=t.name,
            )
            for t in window
        ]
        file_ids = [f for t in window for f in t.file_ids]
        text = "\n".join(render_turn(t) for t in window)
        result.append(
            Window(text=text, memory_type=memory_type, sources=sources, file_ids=file_ids)
        )
    return result


def text_memory(text: str) -> Window:
    """A plain string added as a memory of its own (MemOS `memory_content`)."""
    source = SourceMessage(type="doc", role=None, content=text)
    return Window(text=text.strip(), memory_type=MemoryType.LONG_TERM, sources=[source])

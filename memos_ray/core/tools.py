"""Tool memory: tool schemas and tool-call trajectories, with their lesson.

An agent that once called a tool wrongly should find that next time: each trajectory (the
task, the calls with their arguments and results, the outcome) is one memory whose text
says whether it worked and, when it did not, what failed. Pure logic: messages in, windows
out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memos_ray.core.reader import Window
from memos_ray.domain.memory import MemoryType, SourceMessage

_ERROR = re.compile(
    r"\b(error|exception|traceback|failed|failure|not found|invalid|denied|timed? ?out)\b"
    r"|\bstatus(?: code)?[:= ]+[45]\d\d\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ToolMessage:
    role: str
    content: str
    message_id: str | None = None
    chat_time: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()


def schema_windows(tools: Sequence[dict[str, Any]]) -> list[Window]:
    """OpenAI-format tool definitions (`{"type": "function", "function": {...}}`)."""
    windows = []
    for tool in tools:
        function = tool.get("function", tool)
        name = str(function.get("name") or "").strip()
        if not name:
            continue
        description = str(function.get("description") or "").strip()
        parameters = json.dumps(function.get("parameters") or {}, sort_keys=True)
        text = f"Tool {name}: {description}\nParameters: {parameters}".strip()
        windows.append(
            Window(
                text=text,
                memory_type=MemoryType.TOOL_SCHEMA,
                sources=[SourceMessage(type="tool_schema", content=json.dumps(tool))],
                key=name,
                tags=("tool", name),
                mode="tool",
            )
        )
    return windows


def trajectory_windows(messages: Sequence[ToolMessage]) -> list[Window]:
    """One window per assistant turn that called tools, up to the answer that followed."""
    windows = []
    task = ""
    index = 0
    while index < len(messages):
        message = messages[index]
        if message.role == "user" and message.content.strip():
            task = message.content.strip()
        if message.role != "assistant" or not message.tool_calls:
            index += 1
            continue
        involved = [message]
        results: dict[str, str] = {}
        index += 1
        while index < len(messages) and (
            messages[index].role == "tool"
            or (messages[index].role == "assistant" and messages[index].tool_calls)
        ):
            current = messages[index]
            involved.append(current)
            if current.role == "tool":
                results[current.tool_call_id or str(len(results))] = current.content
            index += 1
        outcome = ""
        if index < len(messages) and messages[index].role == "assistant":
            outcome = messages[index].content.strip()
            involved.append(messages[index])
            index += 1
        calls = [c for m in involved for c in m.tool_calls]
        windows.append(_trajectory(task, calls, results, outcome, involved))
    return windows


def _trajectory(
    task: str,
    calls: list[dict[str, Any]],
    results: dict[str, str],
    outcome: str,
    involved: list[ToolMessage],
) -> Window:
    lines = [f"Task: {task}" if task else "Task: (not stated)"]
    failures = []
    names = []
    for position, call in enumerate(calls):
        function = call.get("function", call)
        name = str(function.get("name") or "tool")
        names.append(name)
        arguments = function.get("arguments") or ""
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, sort_keys=True)
        result = results.get(str(call.get("id")), results.get(str(position), ""))
        lines.append(f"Called {name}({_clip(arguments, 300)}) -> {_clip(result, 300)}")
        if _ERROR.search(result):
            failures.append(f"{name}({_clip(arguments, 120)}) failed: {_clip(result, 160)}")
    if outcome:
        lines.append(f"Outcome: {_clip(outcome, 400)}")
    if failures:
        lines.append("Result: failure. Lesson: " + "; ".join(failures))
    else:
        lines.append("Result: success.")
    sources = [
        SourceMessage(
            type="tool",
            role=m.role,
            content=m.content,
            message_id=m.message_id,
            chat_time=m.chat_time,
            tool_call_id=m.tool_call_id,
        )
        for m in involved
    ]
    return Window(
        text="\n".join(lines),
        memory_type=MemoryType.TOOL_TRAJECTORY,
        sources=sources,
        key=", ".join(dict.fromkeys(names)),
        tags=("tool", "failure" if failures else "success", *dict.fromkeys(names)),
        mode="tool",
    )


def _clip(text: str, limit: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."

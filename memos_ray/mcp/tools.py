"""The MCP tools: MemOS's MCP tool names and arguments, plus memos-ray's own.

Each tool is one or two REST calls made as the tool's caller (see `memos_ray.mcp.rest`), so
a tool can do exactly what that caller's key may do over REST, and nothing more. What a
MemOS argument cannot mean here is refused with a message that says what to do instead (a
server path, a user role, starting or stopping the scheduler).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

from memos_ray import __version__
from memos_ray.mcp.rest import Rest

Resolver = Callable[[Context], AbstractAsyncContextManager[Rest]]
"""The REST view of the caller behind one tool call."""

INSTRUCTIONS = (
    "memos-ray: long-term memory for this conversation's user. Search memories before "
    "answering questions about the user's past, add what is worth remembering, and correct "
    "wrong memories with update_memory or add_feedback. Cubes are memory containers; a "
    "user's default cube has the user's id."
)

# Chat turns kept per (caller, user, cube): what the service's chat takes as `history`.
HISTORY_MESSAGES = 40
HISTORY_CONVERSATIONS = 1024


class ToolResult(BaseModel):
    """What the service answered: its message and the data (MemOS's envelope, unwrapped)."""

    message: str
    data: Any = None


class ChatHistories:
    """Recent chat turns, bounded in count and length. MemOS keeps chat history in its server
    process per user; so does this layer (the service's chat is stateless)."""

    def __init__(self) -> None:
        self._turns: OrderedDict[tuple[str, str, str], list[dict[str, str]]] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> list[dict[str, str]]:
        return list(self._turns.get(key, []))

    def append(self, key: tuple[str, str, str], *messages: dict[str, str]) -> None:
        turns = self._turns.pop(key, [])
        self._turns[key] = [*turns, *messages][-HISTORY_MESSAGES:]
        while len(self._turns) > HISTORY_CONVERSATIONS:
            self._turns.popitem(last=False)

    def clear(self, identity: str, user_id: str) -> int:
        keys = [k for k in self._turns if k[0] == identity and k[1] == user_id]
        for key in keys:
            del self._turns[key]
        return len(keys)


def build_server(resolve: Resolver) -> MCPServer:
    """The MCP server whose tools call the API through `resolve`."""
    server = _quiet_server()
    histories = ChatHistories()
    users: dict[str, str] = {}

    async def acting_user(rest: Rest, user_id: str | None) -> str:
        """The named user, else stdio's default, else the API key's own user."""
        if user_id:
            return user_id
        if rest.default_user:
            return rest.default_user
        if rest.identity not in users:
            data, _ = await rest.call("POST", "/product/get_user_info", json={})
            if len(users) >= HISTORY_CONVERSATIONS:
                users.clear()
            users[rest.identity] = data["user_id"]
        return users[rest.identity]

    def result(answer: tuple[Any, str]) -> ToolResult:
        data, message = answer
        return ToolResult(message=message, data=data)

    # -- MemOS's tools ------------------------------------------------------------------

    @server.tool()
    async def chat(
        query: str, ctx: Context, user_id: str | None = None, cube_id: str | None = None
    ) -> ToolResult:
        """Answer `query` with the chat model, using the user's memories (and the cube's
        LoRA adapter, if it has one). The question and answer are remembered; earlier turns
        of this chat are sent as history."""
        async with resolve(ctx) as rest:
            user = await acting_user(rest, user_id)
            key = (rest.identity, user, cube_id or "")
            body: dict[str, Any] = {"user_id": user, "query": query, "history": histories.get(key)}
            if cube_id:
                body["readable_cube_ids"] = body["writable_cube_ids"] = [cube_id]
            data, message = await rest.call("POST", "/product/chat/complete", json=body)
        histories.append(
            key,
            {"role": "user", "content": query},
            {"role": "assistant", "content": data["response"]},
        )
        return ToolResult(message=message, data=data)

    @server.tool()
    async def create_user(
        user_id: str, ctx: Context, role: str = "USER", user_name: str | None = None
    ) -> ToolResult:
        """Create a user (admin only); the answer holds the new user's API key, shown once.
        `user_name` is accepted for MemOS clients: a user's id is its name here."""
        if role.upper() != "USER":
            raise ToolError(
                f"role {role!r}: admin rights come with an API key's 'admin' scope "
                "(POST /admin/keys), not with a user role"
            )
        async with resolve(ctx) as rest:
            return result(await rest.call("POST", "/admin/users", json={"user_id": user_id}))

    @server.tool()
    async def create_cube(
        cube_name: str,
        owner_id: str,
        ctx: Context,
        cube_path: str | None = None,
        cube_id: str | None = None,
    ) -> ToolResult:
        """Create an empty memory cube owned by `owner_id` (a new id unless `cube_id`)."""
        if cube_path:
            raise ToolError(
                "cube_path: memos-ray reads no cube from a server path; create the cube, or "
                "load a dump of your export folder with load_cube"
            )
        body = {"cube_name": cube_name, "owner_id": owner_id, "cube_id": cube_id}
        async with resolve(ctx) as rest:
            return result(await rest.call("POST", "/product/create_cube", json=body))

    @server.tool()
    async def register_cube(
        cube_name_or_path: str,
        ctx: Context,
        cube_id: str | None = None,
        user_id: str | None = None,
    ) -> ToolResult:
        """Make a cube available to the user: an unknown id becomes the user's new cube, an
        existing one must be readable by the user (shared with it, or its own)."""
        body = {
            "mem_cube_name_or_path": cube_name_or_path,
            "mem_cube_id": cube_id,
            "user_id": user_id,
        }
        async with resolve(ctx) as rest:
            return result(await rest.call("POST", "/product/register_cube", json=body))

    @server.tool()
    async def unregister_cube(cube_id: str, ctx: Context, user_id: str | None = None) -> ToolResult:
        """Remove a shared cube from the user's view; the owner's data stays."""
        body = {"cube_id": cube_id, "user_id": user_id}
        async with resolve(ctx) as rest:
            return result(await rest.call("POST", "/product/unregister_cube", json=body))

    @server.tool()
    async def search_memories(
        query: str,
        ctx: Context,
        user_id: str | None = None,
        cube_ids: list[str] | None = None,
        filter: dict[str, Any] | None = None,
        top_k: int = 10,
    ) -> ToolResult:
        """Memories relevant to `query` from the user's cubes (default: its own), best first:
        text memories, preferences and tool memories, each bucket per cube."""
        async with resolve(ctx) as rest:
            body = {
                "user_id": await acting_user(rest, user_id),
                "query": query,
                "readable_cube_ids": cube_ids,
                "filter": filter,
                "top_k": top_k,
            }
            return result(await rest.call("POST", "/product/search", json=body))

    @server.tool()
    async def add_memory(
        ctx: Context,
        memory_content: str | None = None,
        doc_path: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        cube_id: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
    ) -> ToolResult:
        """Remember a text (`memory_content`) or a conversation (`messages`: role and
        content each) in the user's cube (or `cube_id`); searchable when this returns."""
        if not (memory_content or messages or doc_path):
            raise ToolError("nothing to add: give memory_content or messages")
        body = {
            "user_id": user_id,
            "memory_content": memory_content,
            "doc_path": doc_path,
            "messages": messages,
            "writable_cube_ids": [cube_id] if cube_id else None,
            "session_id": session_id,
            "async_mode": "sync",
        }
        async with resolve(ctx) as rest:
            return result(await rest.call("POST", "/product/add", json=body))

    @server.tool()
    async def get_memory(
        cube_id: str, memory_id: str, ctx: Context, user_id: str | None = None
    ) -> ToolResult:
        """One memory with its metadata: sources, history, status, tags."""
        async with resolve(ctx) as rest:
            data, message = await rest.call(
                "GET", f"/product/get_memory/{memory_id}", params={"user_id": user_id}
            )
        if not data or data.get("cube_id") != cube_id:
            raise ToolError(f"memory {memory_id!r} not found in cube {cube_id!r}")
        return ToolResult(message=message, data=data)

    @server.tool()
    async def update_memory(
        cube_id: str,
        memory_id: str,
        memory_content: str,
        ctx: Context,
        user_id: str | None = None,
    ) -> ToolResult:
        """Replace a memory's text; the version it replaces stays in its history."""
        body = {
            "mem_cube_id": cube_id,
            "memory_id": memory_id,
            "memory": memory_content,
            "user_id": user_id,
        }
        async with resolve(ctx) as rest:
            return result(await rest.call("POST", "/product/update_memory", json=body))

    @server.tool()
    async def delete_memory(
        cube_id: str, memory_id: str, ctx: Context, user_id: str | None = None
    ) -> ToolResult:
        """Delete one memory from every store."""
        body = {"memory_ids": [memory_id], "writable_cube_ids": [cube_id], "user_id": user_id}
        async with resolve(ctx) as rest:
            data, message = await rest.call("POST", "/product/delete_memory", json=body)
        if not data.get("deleted_count"):
            raise ToolError(f"memory {memory_id!r} not found in cube {cube_id!r}")
        return ToolResult(message=message, data=data)

    @server.tool()
    async def delete_all_memories(
        cube_id: str, ctx: Context, user_id: str | None = None
    ) -> ToolResult:
        """Delete every memory and preference of the cube (the cube and its grants stay)."""
        async with resolve(ctx) as rest:
            path = f"/product/cubes/{cube_id}/clear"
            return result(await rest.call("POST", path, json={"user_id": user_id}))

    @server.tool()
    async def clear_chat_history(ctx: Context, user_id: str | None = None) -> ToolResult:
        """Forget the earlier turns of the user's chats (the memories they made stay)."""
        async with resolve(ctx) as rest:
            user = await acting_user(rest, user_id)
            cleared = histories.clear(rest.identity, user)
        return ToolResult(
            message=f"Chat history cleared for user {user}",
            data={"user_id": user, "conversations": cleared},
        )

    @server.tool()
    async def dump_cube(
        dump_dir: str, ctx: Context, user_id: str | None = None, cube_id: str | None = None
    ) -> ToolResult:
        """Dump the cube (default: the user's own) into the service's export folder as
        `dump_dir`: a name there, not a path. Load it again with load_cube (or
        `memos-ray cube load` on another machine)."""
        if "/" in dump_dir or "\\" in dump_dir:
            raise ToolError(
                "dump_dir names a dump in your export folder on the service; it is not a path"
            )
        async with resolve(ctx) as rest:
            cube = cube_id or await acting_user(rest, user_id)
            body = {"name": dump_dir, "user_id": user_id}
            return result(await rest.call("POST", f"/product/cubes/{cube}/dump", json=body))

    @server.tool()
    async def share_cube(
        cube_id: str,
        target_user_id: str,
        ctx: Context,
        access: Literal["read", "write"] = "read",
        user_id: str | None = None,
    ) -> ToolResult:
        """Give another user read (or write) access to a cube the user owns."""
        body = {
            "cube_id": cube_id,
            "target_user_id": target_user_id,
            "access": access,
            "user_id": user_id,
        }
        async with resolve(ctx) as rest:
            return result(await rest.call("POST", "/product/share_cube", json=body))

    @server.tool()
    async def get_user_info(ctx: Context, user_id: str | None = None) -> ToolResult:
        """The user, its role, and every cube it may reach with its access level."""
        async with resolve(ctx) as rest:
            body = {"user_id": user_id}
            return result(await rest.call("POST", "/product/get_user_info", json=body))

    @server.tool()
    async def control_memory_scheduler(
        action: Literal["status", "wait", "start", "stop"],
        ctx: Context,
        user_id: str | None = None,
        cube_id: str | None = None,
        timeout_seconds: float = 60,
    ) -> ToolResult:
        """The background work on memories: `status` counts the user's tasks by state,
        `wait` returns once the cube (default: the user's) has no pending task or the
        timeout passes."""
        if action in ("start", "stop"):
            raise ToolError(
                f"{action}: memos-ray's scheduler is always on (each cube's actor starts with "
                "its first task and exits when idle); use 'status' or 'wait'"
            )
        async with resolve(ctx) as rest:
            user = await acting_user(rest, user_id)
            if action == "status":
                path = "/product/scheduler/allstatus"
                return result(await rest.call("GET", path, params={"user_id": user}))
            params: dict[str, Any] = {
                "user_id": user,
                "user_name": cube_id or user,
                "timeout_seconds": timeout_seconds,
            }
            return result(await rest.call("POST", "/product/scheduler/wait", params=params))

    # -- memos-ray's tools --------------------------------------------------------------

    @server.tool()
    async def add_feedback(
        feedback_content: str,
        ctx: Context,
        user_id: str | None = None,
        cube_id: str | None = None,
        history: list[dict[str, Any]] | None = None,
        retrieved_memory_ids: list[str] | None = None,
        corrected_answer: bool = False,
    ) -> ToolResult:
        """Correct the memories with the user's feedback on an answer ("no, my cat is
        called Miso"): wrong memories are archived or rewritten, new facts added."""
        async with resolve(ctx) as rest:
            body = {
                "user_id": await acting_user(rest, user_id),
                "feedback_content": feedback_content,
                "writable_cube_ids": [cube_id] if cube_id else None,
                "history": history,
                "retrieved_memory_ids": retrieved_memory_ids,
                "corrected_answer": corrected_answer,
            }
            return result(await rest.call("POST", "/product/feedback", json=body))

    @server.tool()
    async def recover_memory(
        cube_id: str, memory_ids: list[str], ctx: Context, user_id: str | None = None
    ) -> ToolResult:
        """Bring archived or deleted memories back to active."""
        async with resolve(ctx) as rest:
            body = {
                "user_id": await acting_user(rest, user_id),
                "memory_ids": memory_ids,
                "writable_cube_ids": [cube_id],
            }
            return result(await rest.call("POST", "/product/recover_memory", json=body))

    @server.tool()
    async def scheduler_status(
        ctx: Context, task_id: str | None = None, user_id: str | None = None
    ) -> ToolResult:
        """The user's background tasks (or one, by the task id an add returned)."""
        async with resolve(ctx) as rest:
            params = {"user_id": user_id, "task_id": task_id}
            return result(await rest.call("GET", "/product/scheduler/status", params=params))

    @server.tool()
    async def load_cube(
        dump_name: str,
        ctx: Context,
        cube_id: str | None = None,
        user_id: str | None = None,
        from_user_id: str | None = None,
    ) -> ToolResult:
        """Load a dump of the export folder as a new cube of the user (`cube_id`, default
        the dumped cube's id); the admin may load another user's dump (`from_user_id`)."""
        body = {
            "name": dump_name,
            "cube_id": cube_id,
            "user_id": user_id,
            "from_user_id": from_user_id,
        }
        async with resolve(ctx) as rest:
            return result(await rest.call("POST", "/product/cubes/load", json=body))

    @server.tool()
    async def list_dumps(ctx: Context, user_id: str | None = None) -> ToolResult:
        """The finished dumps of the user's export folder."""
        async with resolve(ctx) as rest:
            params = {"user_id": user_id}
            return result(await rest.call("GET", "/product/cubes/dumps", params=params))

    return server


def _quiet_server() -> MCPServer:
    """The SDK configures the root logger when a server is made; a library must not, so
    whatever it added is taken back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server = MCPServer(
        "memos-ray", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    return server

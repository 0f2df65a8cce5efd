"""Chat routes: MemOS `/product/chat/complete|stream`, OpenAI `/v1/chat/completions`, and
per-cube LoRA adapters. Handlers are sync (they run in a pool); streams are sync iterators.

No `from __future__ import annotations`: FastAPI must see the dependency aliases as objects.
"""

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from memos_ray.api.context import ApiContext
from memos_ray.api.deps import Ctx, Who
from memos_ray.api.sse import sse_response
from memos_ray.domain.tenancy import LLMUsage
from memos_ray.errors import (
    BadRequestError,
    ForbiddenError,
    MemosError,
    NotFoundError,
    ServiceUnavailableError,
)
from memos_ray.models.chat import Message, ReasoningSplitter, SamplingParams
from memos_ray.runtime.netguard import public_message
from memos_ray.schemas.chat import (
    BusinessChatRequest,
    OpenAIChatRequest,
    PlaygroundChatRequest,
    ProductChatRequest,
)
from memos_ray.schemas.envelope import ok
from memos_ray.schemas.values import ValidText
from memos_ray.services.chat import ChatService, ChatTurn, PreparedChat
from memos_ray.services.inputs import check_query, filters_by_cube, message_text, requested_cubes
from memos_ray.services.tenancy import Caller


class AdapterUpload(ValidText):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None
    # PEFT's adapter_config.json and adapter_model.safetensors (base64).
    adapter_config: dict[str, Any]
    weights_base64: str = Field(min_length=1)


class BudgetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None
    # None lifts the budget; over it, fine extraction pauses (adds land in fast mode).
    budget_tokens: int | None = Field(default=None, ge=0)


logger = logging.getLogger("memos_ray.api")


def _usage_json(usage: LLMUsage) -> dict[str, Any]:
    return {
        **usage.model_dump(),
        "total_tokens": usage.total_tokens,
        "over_budget": usage.over_budget,
    }


product = APIRouter(prefix="/product")


@product.post("/chat/complete")
def chat_complete(req: ProductChatRequest, context: Ctx, who: Who) -> dict[str, Any]:
    chat = require_chat(context)
    turn, write_back = _product_turn(req, context, who)
    answer = chat.complete(turn, write_back=write_back)
    data: dict[str, Any] = {"response": answer.response, "reasoning": answer.reasoning}
    data.update(_extras(answer.prepared, req.include_prompt))
    data["usage"] = answer.generation.usage.model_dump()
    data["finish_reason"] = answer.generation.finish_reason
    return ok(data, "Chat completed successfully")


@product.post("/chat/stream")
def chat_stream(req: ProductChatRequest, context: Ctx, who: Who) -> StreamingResponse:
    return _stream(req, context, who)


@product.post("/chat/stream/playground")
def chat_stream_playground(req: PlaygroundChatRequest, context: Ctx, who: Who) -> StreamingResponse:
    """MemOS's playground chat: the same stream (the guide step is the playground UI's)."""
    return _stream(req, context, who)


@product.post("/chat/stream/business_user")
def chat_stream_business_user(
    req: BusinessChatRequest, context: Ctx, who: Who
) -> StreamingResponse:
    """MemOS's chat for a business user: the same stream, on the same access checks (the
    business key is MemOS's own routing label; memos-ray authenticates by API key)."""
    return _stream(req, context, who)


def chat_frames(
    chat: ChatService,
    turn: ChatTurn,
    prepared: PreparedChat,
    write_back: bool,
    end: dict[str, Any],
) -> Iterator[str]:
    """MemOS's chat stream: `text` / `reasoning` frames, an `error` frame if generation
    fails, then `end` carrying `end`'s fields with the finish reason and usage."""
    splitter = ReasoningSplitter()
    try:
        for delta in chat.stream(turn, prepared, write_back=write_back):
            final = delta.finish_reason is not None
            for kind, text in splitter.feed(delta.text, final=final):
                yield _sse({"type": kind, "data": text})
            if final:
                end["finish_reason"] = delta.finish_reason
                end["usage"] = delta.usage.model_dump() if delta.usage else None
    except MemosError as exc:
        logger.error("chat stream failed: %s", exc.message)
        yield _sse({"type": "error", "data": public_message(exc)})
    yield _sse({"type": "end", "data": end})


def _stream(req: ProductChatRequest, context: ApiContext, who: Caller) -> StreamingResponse:
    chat = require_chat(context)
    turn, write_back = _product_turn(req, context, who)
    prepared = chat.prepare(turn)

    def frames() -> Iterator[str]:
        if req.include_prompt:
            yield _sse({"type": "prompt", "data": prepared.prompt})
        yield from chat_frames(chat, turn, prepared, write_back, _extras(prepared, False))

    return sse_response(frames(), context.config.limits.sse_ping_s)


@product.put("/cubes/{cube_id}/adapter")
def put_adapter(cube_id: str, req: AdapterUpload, context: Ctx, who: Who) -> dict[str, Any]:
    context.access.require_write(who)
    chat = require_chat(context)
    user_id = context.access.act_as(who, req.user_id or who.user_id)
    context.access.cubes_for(user_id, [cube_id], write=True, caller=who)
    chat.adapters.put_base64(cube_id, req.adapter_config, req.weights_base64)
    return ok(chat.adapters.info(cube_id), "Adapter stored")


@product.get("/cubes/{cube_id}/adapter")
def get_adapter(cube_id: str, context: Ctx, who: Who, user_id: str | None = None) -> dict[str, Any]:
    chat = require_chat(context)
    acting = context.access.act_as(who, user_id or who.user_id)
    context.access.cubes_for(acting, [cube_id], write=False, caller=who)
    info = chat.adapters.info(cube_id)
    if info is None:
        raise NotFoundError(f"cube {cube_id!r} has no adapter")
    return ok(info, "Adapter found")


@product.delete("/cubes/{cube_id}/adapter")
def delete_adapter(
    cube_id: str, context: Ctx, who: Who, user_id: str | None = None
) -> dict[str, Any]:
    context.access.require_write(who)
    chat = require_chat(context)
    acting = context.access.act_as(who, user_id or who.user_id)
    context.access.cubes_for(acting, [cube_id], write=True, caller=who)
    if not chat.adapters.delete(cube_id):
        raise NotFoundError(f"cube {cube_id!r} has no adapter")
    return ok({"cube_id": cube_id}, "Adapter deleted")


@product.get("/cubes/{cube_id}/llm_usage")
def get_llm_usage(
    cube_id: str, context: Ctx, who: Who, user_id: str | None = None
) -> dict[str, Any]:
    acting = context.access.act_as(who, user_id or who.user_id)
    context.access.cubes_for(acting, [cube_id], write=False, caller=who)
    usage = context.access.tenancy.llm_usage(cube_id)
    return ok(_usage_json(usage), "LLM usage of the cube")


@product.put("/cubes/{cube_id}/llm_budget")
def put_llm_budget(cube_id: str, req: BudgetRequest, context: Ctx, who: Who) -> dict[str, Any]:
    context.access.require_write(who)
    acting = context.access.act_as(who, req.user_id or who.user_id)
    context.access.cubes_for(acting, [cube_id], write=True, caller=who)
    usage = context.access.tenancy.set_llm_budget(cube_id, req.budget_tokens)
    return ok(_usage_json(usage), "Budget set")


openai = APIRouter(prefix="/v1")


@openai.get("/models")
def list_models(context: Ctx, who: Who) -> dict[str, Any]:
    chat = require_chat(context)
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "memos-ray"}
            for name in chat.model.model_names
        ],
    }


@openai.post("/chat/completions", response_model=None)
def chat_completions(
    req: OpenAIChatRequest,
    context: Ctx,
    who: Who,
    x_memos_user_id: Annotated[str | None, Header()] = None,
    x_memos_cube_id: Annotated[str | None, Header()] = None,
    x_memos_write_back: Annotated[str | None, Header()] = None,
    x_memos_include_prompt: Annotated[str | None, Header()] = None,
) -> dict[str, Any] | StreamingResponse:
    chat = require_chat(context)
    requested_user = x_memos_user_id or req.user
    if who.unrestricted and not requested_user:
        raise BadRequestError(
            "say whose memories to use: the `user` field or an X-Memos-User-Id header"
        )
    user_id = context.access.act_as(who, requested_user or who.user_id)
    cube = (
        context.access.cubes_for(user_id, [x_memos_cube_id or user_id], write=False, caller=who)
    )[0]
    write_back = context.config.chat.openai_write_back
    if x_memos_write_back is not None:
        write_back = _flag(x_memos_write_back)
    write_cube = _writable(context, user_id, cube, who) if write_back else None
    turn = _openai_turn(req, context, user_id, cube, write_cube)
    chat.model.check_model(turn.model)
    reply = _OpenAIReply(
        chat, turn, req, cube, write_cube is not None, _flag(x_memos_include_prompt)
    )
    if not req.stream:
        return reply.completion()
    return sse_response(reply.chunks(), context.config.limits.sse_ping_s)


class _OpenAIReply:
    """One `/v1/chat/completions` answer in OpenAI's shapes, whole or as chunks."""

    def __init__(
        self,
        chat: ChatService,
        turn: ChatTurn,
        req: OpenAIChatRequest,
        cube: str,
        write_back: bool,
        include_prompt: bool,
    ) -> None:
        self.chat = chat
        self.turn = turn
        self.prepared = chat.prepare(turn)
        self.req = req
        self.cube = cube
        self.write_back = write_back
        self.include_prompt = include_prompt
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.req.model}

    def completion(self) -> dict[str, Any]:
        generation = self.chat.complete(
            self.turn, write_back=self.write_back, prepared=self.prepared
        ).generation
        message = {"role": "assistant", "content": generation.text}
        choice = {"index": 0, "message": message, "finish_reason": generation.finish_reason}
        return {
            **self._head("chat.completion"),
            "choices": [choice],
            "usage": _openai_usage(generation.usage.model_dump()),
            "memos": {"cube_id": self.cube, **_extras(self.prepared, self.include_prompt)},
        }

    def chunks(self) -> Iterator[str]:
        base = self._head("chat.completion.chunk")
        first = {"role": "assistant", "content": ""}
        yield _sse({**base, "choices": [{"index": 0, "delta": first, "finish_reason": None}]})
        usage: dict[str, Any] | None = None
        try:
            for delta in self.chat.stream(self.turn, self.prepared, write_back=self.write_back):
                if delta.text or delta.finish_reason:
                    choice = {
                        "index": 0,
                        "delta": {"content": delta.text} if delta.text else {},
                        "finish_reason": delta.finish_reason,
                    }
                    yield _sse({**base, "choices": [choice]})
                if delta.usage is not None:
                    usage = _openai_usage(delta.usage.model_dump())
        except MemosError as exc:
            logger.error("chat stream failed: %s", exc.message)
            yield _sse({"error": {"message": public_message(exc), "type": "server_error"}})
        options = self.req.stream_options
        if options and options.include_usage and usage is not None:
            yield _sse({**base, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"


def require_chat(context: ApiContext) -> ChatService:
    if context.chat is None:
        raise ServiceUnavailableError("no chat model is configured (llm.backend is 'none')")
    return context.chat


def _params(
    context: ApiContext,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: tuple[str, ...] = (),
    seed: int | None = None,
) -> SamplingParams:
    chat = context.config.chat
    tokens = max_tokens or chat.default_max_tokens
    if tokens > chat.max_tokens_limit:
        raise BadRequestError(f"max_tokens is {tokens}; the limit is {chat.max_tokens_limit}")
    return SamplingParams(
        max_tokens=tokens,
        temperature=chat.default_temperature if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        stop=stop,
        seed=seed,
    )


def _product_turn(
    req: ProductChatRequest, context: ApiContext, who: Caller
) -> tuple[ChatTurn, bool]:
    limits = context.config.limits
    for name in ("top_k", "pref_top_k"):
        if getattr(req, name) > limits.max_top_k:
            raise BadRequestError(f"{name} is over the limit of {limits.max_top_k}")
    user_id = context.access.act_as(who, req.user_id)
    readable = requested_cubes(req.readable_cube_ids, req.mem_cube_id)
    cubes = context.access.cubes_for(user_id, readable, write=False, caller=who)
    write_cube: str | None = None
    if req.add_message_on_answer:
        writable = requested_cubes(req.writable_cube_ids, req.mem_cube_id)
        write_cube = context.access.cubes_for(user_id, writable, write=True, caller=who)[0]
    history: list[Message] = []
    for message in req.history or []:
        text, _ = message_text(message)
        if text.strip():
            history.append(Message(role=message.role, content=text))
    if context.chat is not None:
        context.chat.model.check_model(req.model_name_or_path)
    check_query(req.query, context.config.limits)
    turn = ChatTurn(
        query=req.query,
        user_id=user_id,
        readable_cubes=cubes,
        write_cube=write_cube,
        history=history,
        system_prompt=req.system_prompt,
        top_k=req.top_k,
        relativity=req.relativity,
        cube_filters=filters_by_cube(req.filter, cubes),
        session_id=req.session_id,
        params=_params(context, req.max_tokens, req.temperature, req.top_p),
        model=req.model_name_or_path,
        include_preference=req.include_preference,
        pref_top_k=req.pref_top_k,
    )
    return turn, write_cube is not None


def _openai_turn(
    req: OpenAIChatRequest,
    context: ApiContext,
    user_id: str,
    cube: str,
    write_cube: str | None,
) -> ChatTurn:
    last = req.messages[-1]
    if last.role != "user" or not last.text().strip():
        raise BadRequestError("the last message must be a non-empty user message")
    check_query(last.text(), context.config.limits)
    system = "\n\n".join(m.text() for m in req.messages if m.role in ("system", "developer"))
    history = [
        Message(role=m.role, content=m.text())
        for m in req.messages[:-1]
        if m.role in ("user", "assistant", "tool") and m.text().strip()
    ]
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return ChatTurn(
        query=last.text(),
        user_id=user_id,
        readable_cubes=[cube],
        write_cube=write_cube,
        history=history,
        system_prompt=system or None,
        params=_params(
            context,
            req.max_completion_tokens or req.max_tokens,
            req.temperature,
            req.top_p,
            stop,
            req.seed,
        ),
        model=req.model,
    )


def _writable(context: ApiContext, user_id: str, cube: str, who: Caller) -> str | None:
    """The cube when the caller may write it; read-only grants answer without writing."""
    try:
        return context.access.cubes_for(user_id, [cube], write=True, caller=who)[0]
    except ForbiddenError:
        return None


def _extras(prepared: PreparedChat, include_prompt: bool) -> dict[str, Any]:
    extras: dict[str, Any] = {
        "memory_ids": [m.id for m in prepared.memories],
        "activation_memory_ids": [m.id for m in prepared.hot],
        "preference_ids": [p.id for p in prepared.preferences],
        "adapter": prepared.request.adapter.name if prepared.request.adapter else None,
    }
    if include_prompt:
        extras["prompt"] = prepared.prompt
    return extras


def _openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
        "prompt_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
    }


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

"""Request and response models of the /product routes (MemOS field names and defaults)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from memos_ray.schemas.messages import ChatMessage
from memos_ray.schemas.values import FilterDict, InfoDict, ToolList, ValidText

# Short identifiers and labels: stored on every memory they tag, so bounded.
SessionId = Annotated[str, Field(max_length=256)]
Tag = Annotated[str, Field(max_length=256)]
IdList = Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=10_000)]


class _Request(ValidText):
    # MemOS clients send fields we do not use; unknown ones are ignored, typed ones checked.
    model_config = ConfigDict(extra="ignore")


def _raw_items_as_messages(data: Any) -> Any:
    """MemOS's add model turns `memory_content` and `doc_path` into role-less raw items in
    `messages` (`{"type": "text", "text"}`, `{"type": "file", "file": {...}}`): text items
    join `memory_content` (the same text twice is stored once), file items become a user
    message carrying the file part."""
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        return data
    messages: list[Any] = []
    texts: list[str] = []
    for item in data["messages"]:
        if isinstance(item, dict) and "role" not in item and item.get("type") == "text":
            text = item.get("text")
            if not isinstance(text, str):
                raise ValueError("a raw text item of messages needs a string `text`")
            if text != data.get("memory_content"):
                texts.append(text)
        elif isinstance(item, dict) and "role" not in item and item.get("type") == "file":
            messages.append({"role": "user", "content": [item]})
        else:
            messages.append(item)
    data = dict(data)
    if texts:
        data["memory_content"] = "\n\n".join(filter(None, [data.get("memory_content"), *texts]))
    data["messages"] = messages or None
    return data


class AddRequest(_Request):
    # MemOS lets an API key's owner stand for it; memos-ray needs it only without a key.
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    session_id: SessionId | None = None
    task_id: SessionId | None = None
    writable_cube_ids: IdList | None = None
    async_mode: Literal["async", "sync"] = "async"
    mode: Literal["fast", "fine"] | None = None
    messages: str | list[ChatMessage] | None = None
    chat_history: list[ChatMessage] | None = None
    custom_tags: Annotated[list[Tag], Field(max_length=100)] | None = None
    info: InfoDict | None = None
    is_feedback: bool = False
    mem_cube_id: str | None = None
    memory_content: str | None = None
    doc_path: str | None = None
    source: str | None = None
    # memos-ray's: tool definitions (OpenAI format) to keep as ToolSchemaMemory.
    tools: ToolList | None = None

    @model_validator(mode="before")
    @classmethod
    def _raw_items(cls, data: Any) -> Any:
        return _raw_items_as_messages(data)


class AddedMemory(BaseModel):
    memory: str
    memory_id: str
    memory_type: str
    cube_id: str


class SearchRequest(_Request):
    query: str = Field(min_length=1)
    user_id: str = Field(min_length=1, max_length=128)
    readable_cube_ids: IdList | None = None
    mode: Literal["fast", "fine", "mixture"] = "fast"
    session_id: SessionId | None = None
    top_k: int = Field(default=10, ge=1)
    relativity: float = Field(default=0.45, ge=0.0, le=1.0)
    dedup: Literal["mmr", "sim", "no"] | None = "mmr"
    rerank: bool = True
    include_preference: bool = True
    pref_top_k: int = Field(default=6, ge=0)
    search_tool_memory: bool = True
    tool_mem_top_k: int = Field(default=6, ge=0)
    include_skill_memory: bool = True
    skill_mem_top_k: int = Field(default=3, ge=0)
    filter: FilterDict | None = None
    search_memory_type: str = "All"
    reference_time: str | None = None
    chat_history: list[ChatMessage] | None = None
    internet_search: bool = False
    mem_cube_id: str | None = None


class CubeBucket(BaseModel):
    cube_id: str
    memories: list[dict[str, Any]]
    total_nodes: int


class SearchData(BaseModel):
    text_mem: list[CubeBucket] = Field(default_factory=list)
    pref_mem: list[CubeBucket] = Field(default_factory=list)
    tool_mem: list[CubeBucket] = Field(default_factory=list)
    skill_mem: list[CubeBucket] = Field(default_factory=list)
    act_mem: list[Any] = Field(default_factory=list)
    para_mem: list[Any] = Field(default_factory=list)
    pref_note: str = ""
    pref_string: str = ""


class GetMemoryRequest(_Request):
    # MemOS needs only the cube; memos-ray also takes the user (whose default cube it is).
    mem_cube_id: str | None = Field(default=None, min_length=1, max_length=128)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    include_preference: bool = True
    include_tool_memory: bool = True
    include_skill_memory: bool = True
    filter: FilterDict | None = None
    page: int | None = Field(default=None, ge=1, le=10**12)
    page_size: int | None = Field(default=None, ge=1)


class GetAllRequest(_Request):
    user_id: str = Field(min_length=1, max_length=128)
    # Activation and parametric memories are not kept as lists here: their buckets are empty.
    memory_type: Literal["text_mem", "act_mem", "param_mem", "para_mem"] = "text_mem"
    mem_cube_ids: IdList | None = None
    search_query: str | None = None
    search_type: Literal["fulltext", "embedding"] = "embedding"


class DeleteMemoryRequest(_Request):
    writable_cube_ids: IdList | None = None
    memory_ids: IdList | None = None
    file_ids: IdList | None = None
    filter: FilterDict | None = None
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    session_id: SessionId | None = None
    conversation_id: SessionId | None = None
    mem_cube_id: str | None = None
    auto_cleanup_working: bool | None = False

    @model_validator(mode="after")
    def _exactly_one_selector(self) -> DeleteMemoryRequest:
        """MemOS's modes: ids, file ids, or a filter; `user_id` / `session_id` alone are the
        quick delete (every memory of that user / session in the writable cubes). With ids
        or a filter, `user_id` is the user acting (memos-ray's reading)."""
        if self.conversation_id is not None:
            if self.session_id is not None and self.session_id != self.conversation_id:
                raise ValueError("conversation_id and session_id differ")
            self.session_id = self.conversation_id
        given = [n for n in ("memory_ids", "file_ids", "filter") if getattr(self, n)]
        if len(given) > 1 or (not given and not self.quick):
            raise ValueError(
                "give exactly one non-empty selector among memory_ids, file_ids and filter, "
                "or user_id / session_id alone for a quick delete"
            )
        return self

    @property
    def quick(self) -> bool:
        """A quick delete: no ids and no filter, only user_id and/or session_id."""
        selectors = (self.memory_ids, self.file_ids, self.filter)
        return not any(selectors) and (self.user_id is not None or self.session_id is not None)


class CreateCubeRequest(_Request):
    cube_name: str | None = Field(default=None, max_length=256)
    owner_id: str = Field(min_length=1, max_length=128)
    cube_id: str | None = Field(default=None, min_length=1, max_length=128)


class CreateUserRequest(ValidText):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128)


class GrantRequest(ValidText):
    model_config = ConfigDict(extra="forbid")

    cube_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    access: Literal["read", "write"]


class FeedbackRequest(_Request):
    user_id: str = Field(min_length=1, max_length=128)
    session_id: SessionId | None = None
    history: list[ChatMessage] | None = None
    retrieved_memory_ids: IdList | None = None
    feedback_content: str | None = Field(default=None, max_length=100_000)
    feedback_time: str | None = None
    writable_cube_ids: IdList | None = None
    mem_cube_id: str | None = None
    async_mode: Literal["async", "sync"] = "sync"
    # MemOS's: whether to answer with a corrected answer (the LLM's reply to the feedback).
    corrected_answer: bool = False
    info: InfoDict | None = None


class RecoverRequest(_Request):
    """memos-ray's: archived or deleted memories back to active."""

    user_id: str = Field(min_length=1, max_length=128)
    memory_ids: list[str] = Field(min_length=1, max_length=1000)
    writable_cube_ids: IdList | None = None
    mem_cube_id: str | None = None


class UpdateMemoryRequest(_Request):
    """memos-ray's: a memory's new text (MemOS's `update_memory`); the version it replaces
    stays in the memory's history."""

    mem_cube_id: str = Field(min_length=1, max_length=128)
    memory_id: str = Field(min_length=1, max_length=256)
    memory: str = Field(min_length=1, max_length=100_000)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    reason: str = Field(default="updated by the user", max_length=1000)

"""Request models of the MemOS SDK dialect (`MemOSClient`, routes under /api/openmem/v1).

Field names and defaults are those the SDK sends; the text, id and JSON bounds are the ones
the /product models apply (`values`, `product`), so the same input limits hold on both.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from memos_ray.schemas.messages import ChatMessage
from memos_ray.schemas.product import IdList, SessionId, Tag
from memos_ray.schemas.values import FilterDict, InfoDict, ValidText

UserId = Annotated[str, Field(min_length=1, max_length=128)]
# `user_id` and `agent_id` of an add may name several subjects.
Subjects = UserId | Annotated[list[UserId], Field(min_length=1, max_length=100)]
Label = Annotated[str, Field(max_length=256)]
TaskId = Annotated[str, Field(min_length=1, max_length=256)]
TagList = Annotated[list[Tag], Field(max_length=100)]
# File ids of one call: each becomes a condition of one store query.
FileIds = Annotated[
    list[Annotated[str, Field(max_length=256)]], Field(min_length=1, max_length=100)
]


class _SdkRequest(ValidText):
    # The SDK sends fields memos-ray does not use; unknown ones are ignored, typed ones checked.
    model_config = ConfigDict(extra="ignore")


class AddMessageRequest(_SdkRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    user_id: Subjects | None = None
    conversation_id: SessionId | None = None
    info: InfoDict | None = None
    source: Label | None = None
    app_id: Label | None = None
    agent_id: Subjects | None = None
    async_mode: bool = True
    tags: TagList | None = None
    allow_public: bool = False
    allow_knowledgebase_ids: IdList | None = None
    allow_memory_view: list[Label] | None = None


class SearchMemoryRequest(_SdkRequest):
    query: str = Field(min_length=1)
    user_id: UserId | None = None
    conversation_id: SessionId | None = None
    agent_id: UserId | None = None
    memory_limit_number: int = Field(default=6, ge=1)
    include_preference: bool = True
    knowledgebase_ids: IdList | None = None
    filter: FilterDict | None = None
    source: Label | None = None
    include_tool_memory: bool = False
    preference_limit_number: int = Field(default=6, ge=0)
    tool_memory_limit_number: int = Field(default=6, ge=0)
    relativity: float | None = Field(default=None, ge=0.0, le=1.0)
    include_skill: bool = False
    skill_limit_number: int = Field(default=6, ge=0)
    include_memory_view: list[Label] | None = None
    context_format: Label = "memory"


class GetMemoryRequest(_SdkRequest):
    user_id: UserId | None = None
    agent_id: UserId | None = None
    include_preference: bool = True
    include_tool_memory: bool = True
    include_memory_view: list[Label] | None = None
    filter: FilterDict | None = None
    page: int = Field(default=1, ge=1, le=10**12)
    # The SDK refuses more than 50 itself.
    size: int = Field(default=10, ge=1, le=50)


class GetMessageRequest(_SdkRequest):
    user_id: UserId
    conversation_id: SessionId = Field(min_length=1)
    conversation_limit_number: int | None = Field(default=None, ge=1)
    # The newest messages of the conversation, at most this many (MemOS: default 6, max 50).
    message_limit_number: int | None = Field(default=None, ge=1, le=50)
    source: Label | None = None


class DeleteMemoryRequest(_SdkRequest):
    """One selector: `memory_ids`, or `filter` (within the subject's cube), or only a subject
    (`user_id` or `agent_id`): then every memory of that subject's cube."""

    memory_ids: IdList | None = None
    user_id: UserId | None = None
    agent_id: UserId | None = None
    filter: FilterDict | None = None
    memory_type: Label | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> DeleteMemoryRequest:
        if self.memory_ids and self.filter is not None:
            raise ValueError("give memory_ids or filter, not both")
        if not (self.memory_ids or self.filter is not None or self.user_id or self.agent_id):
            raise ValueError("give memory_ids, a filter, or the user_id (or agent_id) to clear")
        return self


class AddFeedbackRequest(_SdkRequest):
    user_id: UserId
    conversation_id: SessionId | None = None
    feedback_content: str = Field(min_length=1, max_length=100_000)
    agent_id: UserId | None = None
    app_id: Label | None = None
    feedback_time: Label | None = None
    allow_public: bool = False
    allow_knowledgebase_ids: IdList | None = None


class TaskStatusRequest(_SdkRequest):
    task_id: TaskId


class ChatRequest(_SdkRequest):
    user_id: UserId
    conversation_id: SessionId = Field(min_length=1)
    query: str = Field(min_length=1)
    internet_search: bool = False
    force_stop: bool = False
    use_mem_os_cube: bool = False
    source: Label | None = None
    system_prompt: str | None = Field(default=None, max_length=100_000)
    model_name: Label | None = None
    knowledgebase_ids: IdList | None = None
    filter: FilterDict | None = None
    add_message_on_answer: bool = True
    app_id: Label | None = None
    agent_id: UserId | None = None
    async_mode: bool = True
    tags: TagList | None = None
    info: InfoDict | None = None
    allow_public: bool = False
    allow_knowledgebase_ids: IdList | None = None
    max_tokens: int = Field(default=8192, ge=1)
    temperature: float | None = Field(default=0.7, ge=0, le=2)
    top_p: float | None = Field(default=0.95, gt=0, le=1)
    include_preference: bool = True
    preference_limit_number: int = Field(default=6, ge=0)
    memory_limit_number: int = Field(default=6, ge=1)
    stream: bool = False
    include_tool_memory: bool = False
    tool_memory_limit_number: int = Field(default=6, ge=0)
    relativity: float | None = Field(default=None, ge=0.0, le=1.0)


class CreateKnowledgebaseRequest(_SdkRequest):
    knowledgebase_name: str = Field(min_length=1, max_length=256)
    knowledgebase_description: str | None = Field(default=None, max_length=10_000)
    # memos-ray's: the owner, for the admin key or open mode (a user key owns what it creates).
    user_id: UserId | None = None


class DeleteKnowledgebaseRequest(_SdkRequest):
    knowledgebase_id: UserId


class KnowledgebaseFile(_SdkRequest):
    """A file sent inline: `content` is its text, base64, or a `data:` URL."""

    content: str = Field(min_length=1)
    name: Label | None = None
    type: Literal["document", "skill"] | None = None


class AddKnowledgebaseFileRequest(_SdkRequest):
    knowledgebase_id: UserId
    file: list[KnowledgebaseFile] = Field(min_length=1, max_length=100)


class DeleteKnowledgebaseFileRequest(_SdkRequest):
    file_ids: FileIds


class GetKnowledgebaseFileRequest(_SdkRequest):
    file_ids: FileIds | None = None
    knowledgebase_id: UserId | None = None
    type: Literal["document", "skill"] | None = None
    page: int | None = Field(default=None, ge=1, le=10**12)
    page_size: int | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _one_mode(self) -> GetKnowledgebaseFileRequest:
        if bool(self.file_ids) == bool(self.knowledgebase_id):
            raise ValueError("give exactly one of file_ids and knowledgebase_id")
        return self

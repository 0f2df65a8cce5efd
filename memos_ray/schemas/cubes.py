"""Request models of MemOS's cube-level /product routes (register, existence, owners, delete
records, suggestions): MemOS's field names, memos-ray's bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from memos_ray.schemas.messages import ChatMessage
from memos_ray.schemas.values import MemoryIdText, ValidText

CubeId = Field(min_length=1, max_length=128)


class _Request(ValidText):
    model_config = ConfigDict(extra="ignore")


class RegisterCubeRequest(_Request):
    mem_cube_name_or_path: str = Field(min_length=1, max_length=256)
    mem_cube_id: str | None = Field(default=None, min_length=1, max_length=128)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)


class ExistCubeRequest(_Request):
    mem_cube_id: str = CubeId


class MemoryIdsRequest(_Request):
    memory_ids: list[MemoryIdText] = Field(max_length=1000)


class DeleteByRecordRequest(_Request):
    mem_cube_id: str = CubeId
    record_id: str = Field(min_length=1, max_length=256)
    hard_delete: bool = False


class RecoverByRecordRequest(_Request):
    mem_cube_id: str = CubeId
    delete_record_id: str = Field(min_length=1, max_length=256)


class ShareCubeRequest(_Request):
    """MemOS's `share_cube`: the owner gives another user access to a cube."""

    cube_id: str = CubeId
    target_user_id: str = Field(min_length=1, max_length=128)
    access: Literal["read", "write"] = "read"
    user_id: str | None = Field(default=None, min_length=1, max_length=128)


class UnregisterCubeRequest(_Request):
    """MemOS's `unregister_cube`: the cube leaves the user's view; its data stays."""

    cube_id: str = CubeId
    user_id: str | None = Field(default=None, min_length=1, max_length=128)


class SuggestionRequest(_Request):
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    mem_cube_id: str = CubeId
    language: Literal["zh", "en"] = "zh"
    message: str | list[ChatMessage] | None = None

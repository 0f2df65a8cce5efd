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


class UserInfoRequest(_Request):
    """MemOS's `get_user_info`: who the user is and which cubes it may reach."""

    user_id: str | None = Field(default=None, min_length=1, max_length=128)


class ClearCubeRequest(_Request):
    """memos-ray's: every memory of the cube (MemOS's `delete_all_memories`)."""

    user_id: str | None = Field(default=None, min_length=1, max_length=128)


# A dump's name: one directory below the user's own export folder, never a path.
DumpName = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DumpCubeRequest(_Request):
    """memos-ray's: the cube written as a `memos-ray-cube` dump into the export folder."""

    name: str = DumpName
    user_id: str | None = Field(default=None, min_length=1, max_length=128)


class LoadCubeRequest(_Request):
    """memos-ray's: a dump of the export folder loaded as a new cube."""

    name: str = DumpName
    cube_id: str | None = Field(default=None, min_length=1, max_length=128)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    # The admin may load another user's dump; a user reads only its own folder.
    from_user_id: str | None = Field(default=None, min_length=1, max_length=128)

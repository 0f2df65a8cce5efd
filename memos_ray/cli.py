"""`memos-ray`: serve the API on embedded defaults, and call it (add, search, admin)."""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from memos_ray.client import MemosClient, MemosClientError
from memos_ray.config import MemosConfig, load_config
from memos_ray.errors import MemosError
from memos_ray.logs import configure as configure_logging
from memos_ray.runtime.vllm_env import add_parser as add_vllm_env_parser

# The local profile (configs/local.yaml) ships inside the package, so that `memos-ray serve`
# runs the same app whichever directory it is started from.
PROFILE = ("profiles", "local.yaml")
CONFIG_HELP = "Serve config YAML (default: the packaged local profile, as configs/local.yaml)"


def local_profile_text() -> str:
    """The packaged local profile, byte for byte (a copy of configs/local.yaml)."""
    return importlib.resources.files("memos_ray").joinpath(*PROFILE).read_text()


def _config_file(value: str) -> Path:
    """argparse type of `--config`: a file named but missing is an error, never a fallback."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(
            f"config file {value} not found (leave --config out for the packaged local profile)"
        )
    return path


def _serve_spec(path: Path | None) -> dict[str, Any]:
    """The Serve config: `path`, else the packaged profile (never a file in the cwd)."""
    if path is not None and not path.is_file():
        raise SystemExit(f"memos-ray: config file {path} not found")
    spec = yaml.safe_load(local_profile_text() if path is None else path.read_text()) or {}
    if not isinstance(spec, dict):
        raise SystemExit(f"memos-ray: {path} is not a Serve config (a YAML mapping)")
    return spec


def _app_config(spec: dict[str, Any]) -> MemosConfig:
    """The first application's `args.config` over `MEMOS_*` environment variables."""
    apps = spec.get("applications") or [{}]
    return load_config((apps[0].get("args") or {}).get("config") or {})


def resolve_serve(
    path: Path | None, host: str | None = None, port: int | None = None
) -> tuple[str, int, MemosConfig]:
    """What `memos-ray serve` runs: HTTP host and port (flags over the file) and the config."""
    spec = _serve_spec(path)
    http = spec.get("http_options") or {}
    return (
        host or http.get("host", "127.0.0.1"),
        int(port or http.get("port", 8000)),
        _app_config(spec),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.data_dir:
        os.environ["MEMOS_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    host, port, config = resolve_serve(args.config, args.host, args.port)

    # deferred: Ray, Serve and torch load only for the commands that run them, so the client
    # commands (add, search, chat, admin) start in well under a second.
    from memos_ray.runtime.launcher import local_service
    from memos_ray.runtime.netguard import OpenNetworkError, require_admin_key

    try:
        require_admin_key(host, config, "memos-ray")
    except OpenNetworkError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    configure_logging(config.logging.format, config.logging.level)

    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    with local_service(
        config, host, port, dashboard=True, log_to_driver=args.verbose, ray_host=args.ray_host
    ) as url:
        # Again: `ray.init` installs its own SIGTERM handler, which ends the process at once
        # (no Serve shutdown, embedded stores left to die with it).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        mode = "API keys required" if config.auth_enabled else "OPEN (no auth, loopback only)"
        print(f"memos-ray is up at {url}  [{mode}]  data: {config.data_dir}")
        print("Ctrl-C (or SIGTERM) stops it; memories are kept in the data dir.", flush=True)
        stop.wait()
        print("memos-ray: stopping ...", flush=True)
    return 0


def _client(args: argparse.Namespace):

    return MemosClient(args.url, args.api_key)


def _print(data: Any) -> None:
    print(json.dumps(_plain(data), indent=2, ensure_ascii=False))


def _plain(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list):
        return [_plain(d) for d in data]
    return data


def cmd_add(args: argparse.Namespace) -> int:
    if args.from_file:
        return _bulk_add(args)
    if args.messages_json:
        messages: Any = json.loads(Path(args.messages_json).read_text())
    else:
        messages = [{"role": args.role, "content": " ".join(args.text)}]
    with _client(args) as client:
        _print(client.add(args.user, messages, cube_id=args.cube, async_mode="sync"))
    return 0


def _bulk_add(args: argparse.Namespace) -> int:
    """A JSON-lines file of chat messages, sent `--batch` at a time with a progress bar;
    every line is checked before the first is sent."""
    path = Path(args.from_file)
    messages: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise SystemExit(f"memos-ray: {path.name} line {number}: not JSON ({exc})") from None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise SystemExit(f"memos-ray: {path.name} line {number}: needs a string `content`")
        messages.append(message)
    stored = 0
    with _client(args) as client:
        for start in range(0, len(messages), args.batch):
            batch = messages[start : start + args.batch]
            stored += len(client.add(args.user, batch, cube_id=args.cube, async_mode="sync"))
            _progress_bar(start + len(batch), len(messages))
    print(file=sys.stderr)
    _print({"messages": len(messages), "memories": stored})
    return 0


def _progress_bar(done: int, total: int, width: int = 30) -> None:
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    print(f"\r[{bar}] {done}/{total} messages", end="", file=sys.stderr, flush=True)


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.get_memory_by_id(args.memory_id, user_id=args.user))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    fields = {"page": args.page, "page_size": args.page_size}
    with _client(args) as client:
        page = client.get_memory(args.user, args.cube, **fields)
    for bucket in page.text_mem:
        for memory in bucket.memories:
            print(f"{memory['id']}  {memory['memory']}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.delete_memory(args.user, args.cube, memory_ids=args.memory_ids))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    cubes = [args.cube] if args.cube else None
    with _client(args) as client:
        _print(client.search(args.user, " ".join(args.query), cubes, top_k=args.top_k))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Streams the answer as it comes; the memories used are listed after it."""
    cubes = [args.cube] if args.cube else None
    fields: dict[str, Any] = {"add_message_on_answer": not args.no_write_back}
    if args.max_tokens:
        fields["max_tokens"] = args.max_tokens
    with _client(args) as client:
        for frame in client.chat_stream(args.user, " ".join(args.query), cubes, **fields):
            if frame.type == "text":
                print(frame.data, end="", flush=True)
            elif frame.type == "error":
                print(f"\nerror: {frame.data}", file=sys.stderr)
                return 1
            elif frame.type == "end":
                used = frame.data.get("memory_ids") or []
                print(f"\n[{len(used)} memories retrieved]", file=sys.stderr)
    return 0


def cmd_create_cube(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.create_cube(args.owner, args.cube_id, args.name))
    return 0


def cmd_admin_user(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.create_user(args.user_id))
    return 0


def cmd_admin_grant(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.grant(args.cube_id, args.user_id, args.access))
    return 0


def _local_stack(args: argparse.Namespace) -> Any:
    """The data dir's embedded stores, opened in this process (the service must be stopped:
    embedded stores have one owner at a time)."""
    # deferred: torch and the stores load only for the commands that use them
    from memos_ray.runtime.compose import LocalStack

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.data_dir:
        os.environ["MEMOS_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    return LocalStack(_app_config(_serve_spec(args.config)))


def _progress(stage: str, done: int, total: int) -> None:
    print(f"\r{stage}: {done}/{total} memories", end="", file=sys.stderr, flush=True)


def cmd_cube_dump(args: argparse.Namespace) -> int:
    from memos_ray.models.adapters import AdapterStore
    from memos_ray.services import cube_archive

    with _local_stack(args) as stack:
        config, memory = stack.config, stack.services.memory
        space = cube_archive.space_for(memory, args.cube, config)
        cube = stack.services.tenancy.get_cube(args.cube)
        manifest = cube_archive.dump(
            memory,
            args.cube,
            Path(args.dir),
            space=space,
            cube_name=cube.cube_name if cube else None,
            owner_id=cube.owner_id if cube else None,
            preferences=stack.services.preferences,
            adapters=AdapterStore.for_config(config),
            batch=args.batch,
            progress=_progress,
        )
    print(file=sys.stderr)
    print(json.dumps({"cube_id": manifest.cube_id, "dir": args.dir, **manifest.counts}))
    return 0


def cmd_cube_load(args: argparse.Namespace) -> int:
    from memos_ray.domain.tenancy import Scope
    from memos_ray.models.adapters import AdapterStore
    from memos_ray.services import cube_archive, memos_import
    from memos_ray.services.tenancy import Caller

    source = Path(args.dir).expanduser().resolve()
    with _local_stack(args) as stack:
        config, memory = stack.config, stack.services.memory
        # The operator, on the data dir itself: like the master key.
        operator = Caller(user_id=None, is_admin=True, scopes=frozenset(Scope))
        if memos_import.is_memos_dump(source):
            # MemOS's own `GeneralMemCube.dump` layout: read whole, then written.
            dump = memos_import.read(source, args.as_cube)
            owner = args.owner or dump.user_id or dump.cube_id
            stack.services.access.claim_cube(owner, dump.cube_id, operator)
            report = memos_import.load(
                memory,
                dump,
                preferences=stack.services.preferences,
                batch=args.batch,
                progress=_progress,
            )
        else:
            manifest = cube_archive.read_manifest(source)
            cube_id = args.as_cube or manifest.cube_id
            owner = args.owner or manifest.owner_id or cube_id
            stack.services.access.claim_cube(owner, cube_id, operator)
            report = cube_archive.load(
                memory,
                source,
                as_cube=cube_id,
                space=cube_archive.space_for(memory, cube_id, config),
                preferences=stack.services.preferences,
                adapters=AdapterStore.for_config(config),
                batch=args.batch,
                progress=_progress,
                manifest=manifest,
            )
    print(file=sys.stderr)
    print(json.dumps(report.summary()))
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    # deferred: the MCP SDK loads only for this command
    from memos_ray.mcp.stdio import run_stdio

    run_stdio(args.url, args.api_key, args.user_id)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memos-ray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API on Ray Serve (embedded defaults)")
    serve.add_argument("--config", type=_config_file, help=CONFIG_HELP)
    serve.add_argument("--host", help="the HTTP API's bind address (default 127.0.0.1)")
    serve.add_argument(
        "--ray-host",
        default="127.0.0.1",
        help="the address Ray's own services (GCS, raylet, workers) bind to: loopback by "
        "default; another one lets other machines join, with Ray token auth required",
    )
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir", help="where embedded stores keep data (MEMOS_DATA_DIR)")
    serve.add_argument("--verbose", action="store_true", help="show Ray worker logs")
    serve.set_defaults(func=cmd_serve)

    def http_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=None, help="service URL (MEMOS_URL)")
        p.add_argument("--api-key", default=None, help="API key (MEMOS_API_KEY)")

    add = sub.add_parser("add", help="add a message (or a JSON list of messages)")
    http_opts(add)
    add.add_argument("--user", required=True)
    add.add_argument("--cube")
    add.add_argument("--role", default="user", choices=["user", "assistant"])
    add.add_argument("--messages-json", help="file with a JSON list of chat messages")
    add.add_argument(
        "--from-file", help="JSON-lines file of chat messages: a bulk add with a progress bar"
    )
    add.add_argument("--batch", type=int, default=50, help="messages per request (--from-file)")
    add.add_argument("text", nargs="*")
    add.set_defaults(func=cmd_add)

    get = sub.add_parser("get", help="one memory by id, with its metadata")
    http_opts(get)
    get.add_argument("--user")
    get.add_argument("memory_id")
    get.set_defaults(func=cmd_get)

    listing = sub.add_parser("list", help="a cube's memories, newest first (id and text)")
    http_opts(listing)
    listing.add_argument("--user", required=True)
    listing.add_argument("--cube")
    listing.add_argument("--page", type=int, default=1)
    listing.add_argument("--page-size", type=int, default=50)
    listing.set_defaults(func=cmd_list)

    delete = sub.add_parser("delete", help="delete memories by id")
    http_opts(delete)
    delete.add_argument("--user", required=True)
    delete.add_argument("--cube")
    delete.add_argument("memory_ids", nargs="+")
    delete.set_defaults(func=cmd_delete)

    search = sub.add_parser("search", help="search memories")
    http_opts(search)
    search.add_argument("--user", required=True)
    search.add_argument("--cube")
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument("query", nargs="+")
    search.set_defaults(func=cmd_search)

    chat = sub.add_parser("chat", help="ask a question answered with the user's memories")
    http_opts(chat)
    chat.add_argument("--user", required=True)
    chat.add_argument("--cube")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument(
        "--no-write-back", action="store_true", help="do not remember the question and answer"
    )
    chat.add_argument("query", nargs="+")
    chat.set_defaults(func=cmd_chat)

    cube = sub.add_parser("create-cube", help="create a cube owned by a user")
    http_opts(cube)
    cube.add_argument("--owner", required=True)
    cube.add_argument("--cube-id")
    cube.add_argument("--name")
    cube.set_defaults(func=cmd_create_cube)

    cubes = sub.add_parser("cube", help="dump a cube to a directory, or load one (service stopped)")
    cube_sub = cubes.add_subparsers(dest="cube_command", required=True)
    for name, helptext in (
        ("dump", "write CUBE into DIR (a new directory)"),
        ("load", "load the dump in DIR (into a cube without memories); MemOS's too"),
    ):
        cmd = cube_sub.add_parser(name, help=helptext)
        cmd.add_argument("--config", type=_config_file, help=CONFIG_HELP)
        cmd.add_argument("--data-dir", help="the data dir of the embedded stores (MEMOS_DATA_DIR)")
        cmd.add_argument("--batch", type=int, default=512, help="memories per batch")
        if name == "dump":
            cmd.add_argument("cube")
            cmd.add_argument("dir")
            cmd.set_defaults(func=cmd_cube_dump)
        else:
            cmd.add_argument("dir")
            cmd.add_argument("--as", dest="as_cube", help="load under this cube id")
            cmd.add_argument("--owner", help="the owner of a cube the load creates")
            cmd.set_defaults(func=cmd_cube_load)

    mcp = sub.add_parser(
        "mcp", help="MCP over stdio for desktop clients, calling a running service"
    )
    http_opts(mcp)
    mcp.add_argument(
        "--user-id",
        help="the user tools act for when they name none (MEMOS_USER_ID); "
        "default: the API key's own user",
    )
    mcp.set_defaults(func=cmd_mcp)

    # Its subcommands are parsed by memos_ray.bench.cli (see `main`).
    sub.add_parser("bench", help="benchmarks, separate from the tests (memos-ray bench -h)")

    add_vllm_env_parser(sub)

    admin = sub.add_parser("admin", help="users and grants (needs the admin key)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    user = admin_sub.add_parser("create-user", help="create a user and print its API key")
    http_opts(user)
    user.add_argument("user_id")
    user.set_defaults(func=cmd_admin_user)
    grant = admin_sub.add_parser("grant", help="share a cube with a user")
    http_opts(grant)
    grant.add_argument("cube_id")
    grant.add_argument("user_id")
    grant.add_argument("--access", choices=["read", "write"], default="read")
    grant.set_defaults(func=cmd_admin_grant)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["bench"]:
            # deferred: the benches pull in Ray, Serve and torch (see cmd_serve)
            from memos_ray.bench.cli import main as bench_main

            return bench_main(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except (MemosError, MemosClientError) as exc:
        print(f"memos-ray: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

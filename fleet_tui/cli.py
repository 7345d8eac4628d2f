"""The `fleet-tui` command: console (default; it attaches to a running fleet), --demo, --headless, --detach,
web, init, check.

Only the standard library is imported at module level so `--version` and `--help` stay fast; each mode
imports what it needs. Errors reach the user as one clear line (details in the debug log), never as a
traceback.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (keeps --version fast)

from fleet_tui import __version__

if TYPE_CHECKING:
    import argparse
    from pathlib import Path
    from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """An error whose message is the whole story for the user (exit code 1)."""


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    import argparse

    default = None if top else argparse.SUPPRESS
    parser.add_argument("--config", metavar="PATH", default=default,
                        help="fleet.toml to use (else $FLEET_CONFIG, ./fleet.toml, the user config dir)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=default,
                        help="debug log detail (the log file is under the state dir; default: info)")
    parser.add_argument("--repo", metavar="PATH", default=default,
                        help="git repository to work on (default: forge.repo for the local forge, else the "
                             "current directory)")


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="fleet-tui",
        description="Operator console for an autonomous coding-agent fleet: agents propose, build and "
                    "review; you approve issues and merge PRs.",
        epilog="Run without a command to open the console on the repository in fleet.toml "
               "(or the current git checkout with the embedded local forge); when that repository's fleet already "
               "runs (--headless, --detach, another console), the console attaches to it. --headless exits 0 when nothing "
               "failed, 3 when a forge action failed, 4 when an issue went to needs-human; 2 is a config "
               "error, 1 any other error.",
    )
    parser.add_argument("--version", action="version", version=f"fleet-tui {__version__}")
    _common(parser, top=True)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--demo", action="store_true",
                      help="run the whole loop on a sample project (local forge, scripted agents; no account)")
    mode.add_argument("--headless", action="store_true",
                      help="run the orchestrator without the console, one log line per event on stdout")
    mode.add_argument("--detach", action="store_true",
                      help="run the fleet as a background daemon (it keeps running after the console quits) "
                           "and attach the console to it")
    mode.add_argument("--attach", action="store_true",
                      help="attach to the running fleet of this repository; fail instead of hosting one")
    parser.add_argument("--socket", metavar="PATH",
                        help="attach to the fleet served on this socket (e.g. one forwarded over SSH with "
                             "`ssh -L`); implies --attach")
    parser.add_argument("--once", action="store_true",
                        help="with --headless: exit when nothing is left to do and no run is live")
    parser.add_argument("--pm", action="store_true", help="with --headless: run the PM first")
    parser.add_argument("--resume-budget", action="store_true",
                        help="with --headless: lift today's budget pause (a spent daily budget) and go on")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    init = sub.add_parser("init", help="write a fleet.toml (never writes a token)",
                          description="Write a fleet.toml from flags, or from short prompts on a terminal.")
    _common(init, top=False)
    init.add_argument("--path", default=None,
                      help="where to write (default: --config, else fleet.toml in --repo or the current directory)")
    init.add_argument("--forge", choices=("local", "github"), help="where issues and PRs live")
    init.add_argument("--github-repo", metavar="OWNER/NAME",
                      help="GitHub repository (with --forge github): owner/name or its URL (GitHub Enterprise too)")
    init.add_argument("--api-url", help="GitHub Enterprise API URL, e.g. https://ghe.example.com/api/v3/")
    init.add_argument("--approver", action="append", default=None, metavar="LOGIN",
                      help="login whose approval counts (repeatable)")
    init.add_argument("--runner", choices=("docker", "local"), help="where agents run")
    init.add_argument("--engine", choices=("codex", "claude", "aider", "scripted"), help="engine for all roles")
    init.add_argument("--image", help="Docker image for agents (with --runner docker)")
    init.add_argument("--yes", "-y", action="store_true", help="take defaults for anything not given; no prompts")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.add_argument("--print-example", action="store_true",
                      help="print fleet.toml.example (every key, its default and what it does) and exit")

    check = sub.add_parser("check", help="check config, forge, labels, Docker and engines; say how to fix each",
                           description="A doctor: checks everything the fleet needs and prints a fix for each "
                                       "failure. Exits non-zero when anything required fails.")
    _common(check, top=False)
    check.add_argument("--fix", action="store_true", help="create missing labels without asking")

    stats = sub.add_parser("stats", help="spend, runs, merges, QA pass rate, latencies, cost per merged PR",
                           description="The fleet's numbers from its journal: spend per hour and per day, runs "
                                       "and merged PRs per day, how often QA passes a PR on its first review, "
                                       "approve -> PR and PR -> merge latency, and cost per merged PR by engine "
                                       "and by role. Reads only; works while the fleet runs.")
    _common(stats, top=False)

    web = sub.add_parser("web", help="serve the console in a browser (textual-serve), on 127.0.0.1 with a token",
                         description="Serve the attached console through textual-serve. It listens on "
                                     "127.0.0.1 by default and prints a URL with a random access token; a request "
                                     "without the token is refused. From a laptop: `ssh -L 8000:127.0.0.1:8000 "
                                     "host`, then open the printed URL. Starts the fleet in the background when "
                                     "none runs for the repository.")
    _common(web, top=False)
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    web.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")

    image = sub.add_parser("image", help="the agents' Docker image",
                           description="Build the agents' Docker image (runner.image) with the coding CLIs of the "
                                       "engines fleet.toml uses.")
    image_sub = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    build = image_sub.add_parser("build", help="build runner.image for the configured engines",
                                 description="Build runner.image from the Dockerfile shipped with fleet-tui, with "
                                             "the coding CLIs of the configured engines. --offline builds it with "
                                             "no image registry: Debian packages plus the engines' npm/PyPI "
                                             "packages, loaded with docker import.")
    _common(build, top=False)
    build.add_argument("--offline", action="store_true",
                       help="no image registry: build from Debian packages (apt) and the engines' npm/PyPI packages")
    build.add_argument("--tag", metavar="IMAGE", help="image to build (default: runner.image)")
    build.add_argument("--engine", action="append", choices=("codex", "claude", "aider"), default=None,
                       help="coding CLI to install (repeatable; default: the engines the roles use)")
    for engine, label in (("codex", "Codex CLI"), ("claude", "Claude Code"), ("aider", "aider")):
        build.add_argument(f"--{engine}-version", metavar="VERSION", default="",
                           help=f"{label} version (default: the newest)")
    build.add_argument("--dry-run", action="store_true", help="show what would be built and from which files")
    build.add_argument("--print-dockerfile", action="store_true", help="print the packaged Dockerfile and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(f"fleet-tui {__version__}")  # the fast path: nothing else to import
        return EXIT_OK
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, given in (("--once", args.once), ("--pm", args.pm), ("--resume-budget", args.resume_budget)):
        if given and not args.headless:
            parser.error(f"{flag} goes with --headless")
    if args.command and (args.detach or args.attach or args.socket):
        parser.error(f"--detach, --attach and --socket go with the console, not with {args.command}")
    if args.socket and (args.headless or args.demo or args.detach):
        parser.error("--socket attaches a console: it does not go with --headless, --demo or --detach")
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every error ends as one line, never a traceback
        return _report(exc)


def _report(exc: BaseException) -> int:
    from fleet_tui.config import ConfigError
    from fleet_tui.errors import leaf_error

    exc = leaf_error(exc)

    if isinstance(exc, ConfigError):
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    from fleet_tui.logs import redact

    if isinstance(exc, UserError) or any(cls.__name__ in _USER_FACING for cls in type(exc).__mro__):
        print(f"fleet-tui: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAIL
    import logging

    logging.getLogger("fleet_tui.cli").error("unexpected error", exc_info=exc)
    where = f" (details in {_LOG_PATH})" if _LOG_PATH else ""
    print(f"fleet-tui: unexpected error: {redact(str(exc)) or type(exc).__name__}{where}", file=sys.stderr)
    return EXIT_FAIL


# Exceptions from the layers whose message is written for the user.
_USER_FACING = {"ForgeError", "NotFound", "RateLimitedError", "JournalError", "JournalLocked", "GitError",
                "RunnerError", "EngineConfigError", "WorkspaceError", "Refused", "UnsafeSocket", "FleetUnreachable"}
_LOG_PATH: Path | None = None


def _dispatch(args: argparse.Namespace) -> int:
    global _LOG_PATH
    import logging
    from pathlib import Path

    from fleet_tui.config import find_config, load_config, user_state_dir
    from fleet_tui.logs import setup_logging

    if args.command == "init":
        return cmd_init(args)
    if args.command == "image" and args.print_dockerfile:
        from fleet_tui.image import packaged_file

        sys.stdout.write(packaged_file("Dockerfile").read_text(encoding="utf-8"))
        return EXIT_OK

    config_path = None if args.demo else find_config(args.config)
    config = load_config(config_path)
    state_dir = Path(config.state_dir).expanduser() if config.state_dir else user_state_dir()
    demo_root = None
    if args.demo:  # the demo keeps everything, its debug log included, in its own directory
        from fleet_tui.demo import demo_workdir

        demo_root = demo_workdir()
        state_dir = demo_root / "state"
    _LOG_PATH = setup_logging(args.log_level or "info", state_dir / "logs")
    logging.getLogger("fleet_tui.cli").info("fleet-tui %s starting: mode=%s config=%s", __version__,
             args.command or ("demo" if args.demo else "headless" if args.headless else "console"), config_path)
    if args.command == "image":
        return cmd_image(args, config)
    if args.command == "stats":
        return cmd_stats(config, _repo_path(args, config), state_dir)
    if args.command == "web":
        return cmd_web(args, config, _repo_path(args, config), state_dir)
    if args.command == "check":
        from fleet_tui.doctor import run_check

        return run_check(config, config_path, repo=_repo_path(args, config), state_dir=state_dir, fix=args.fix)
    if args.demo:
        from fleet_tui.tui.launch import run_demo

        return run_demo(state_dir=state_dir, workdir=demo_root)
    repo = _repo_path(args, config)
    if args.headless:
        from fleet_tui.headless import run_headless

        return run_headless(config, repo_path=repo, state_dir=state_dir, once=args.once, pm=args.pm,
                            resume_budget=args.resume_budget)
    if args.socket:
        from fleet_tui.tui.launch import attach

        return attach(Path(args.socket).expanduser().absolute(), config, state_dir, repo="", forge_kind="local")
    if args.detach:
        ensure_daemon(args, config, repo, state_dir)
    from fleet_tui.remote.daemon import passthrough_args
    from fleet_tui.tui.launch import run_console

    return run_console(config, repo_path=repo, state_dir=state_dir, first_run=config_path is None and not args.detach
                       and not args.attach, attach_only=args.detach or args.attach,
                       daemon_argv=passthrough_args(args))


def ensure_daemon(args: argparse.Namespace, config: Any, repo: Path, state_dir: Path) -> None:
    """Start the fleet for `repo` as a background `--headless` process unless one runs already."""
    from pathlib import Path

    from fleet_tui.remote.daemon import journal_for, passthrough_args, running_fleet, start_daemon

    where = journal_for(config, repo, state_dir)
    if running_fleet(where) is not None:
        return
    pid = start_daemon(passthrough_args(args), where, cwd=Path.cwd())
    print(f"fleet-tui: the fleet runs in the background (pid {pid}); stop it with `kill {pid}`", file=sys.stderr)


def cmd_web(args: argparse.Namespace, config: Any, repo: Path, state_dir: Path) -> int:
    """`fleet-tui web`: the attached console in a browser, behind a random token."""
    import shlex

    from fleet_tui.remote.daemon import passthrough_args
    from fleet_tui.tui.web import serve_console

    ensure_daemon(args, config, repo, state_dir)
    command = " ".join(shlex.quote(part) for part in
                       [sys.executable, "-m", "fleet_tui", "--attach", *passthrough_args(args)])
    return serve_console(command, host=args.host, port=args.port)


def _repo_path(args: argparse.Namespace, config: Any) -> Path:
    from pathlib import Path

    if args.repo:
        return Path(args.repo).expanduser().resolve()
    if config.forge.kind == "local" and config.forge.repo:
        return Path(config.forge.repo).expanduser().resolve()
    return Path.cwd()


# --- image ---------------------------------------------------------------------------------------


def cmd_image(args: argparse.Namespace, config: Any) -> int:
    from fleet_tui.image import ImageError, build_offline, build_with_dockerfile, describe, plan_for

    versions = {engine: getattr(args, f"{engine}_version") for engine in ("codex", "claude", "aider")}
    try:
        plan = plan_for(config, tag=args.tag or "", engines=args.engine,
                        versions={k: v for k, v in versions.items() if v})
        if args.dry_run:
            print(describe(plan, args.offline))
            return EXIT_OK
        if args.offline:
            build_offline(plan)
        else:
            build_with_dockerfile(plan)
    except ImageError as exc:
        raise UserError(str(exc)) from None
    print(f"built {plan.tag}; next: `fleet-tui check`")
    return EXIT_OK


# --- init -------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    if args.print_example:
        from fleet_tui.image import packaged_file

        sys.stdout.write(packaged_file("fleet.toml.example").read_text(encoding="utf-8"))
        return EXIT_OK
    import tomli_w

    from fleet_tui.config import check_approvers, parse_config
    from fleet_tui.init_config import InitError, Prompter, init_data

    repo_dir = Path(args.repo).expanduser().resolve() if args.repo else Path.cwd()
    target = args.path or args.config or (repo_dir / "fleet.toml" if args.repo else "fleet.toml")
    path = Path(target).expanduser()
    if path.exists() and not args.force:
        raise UserError(f"{path} exists already; pass --force to overwrite it")
    try:
        data = init_data(args, repo_dir=repo_dir, prompter=None if args.yes else Prompter(),
                         warn=lambda message: print(message, file=sys.stderr))
    except InitError as exc:
        raise UserError(str(exc)) from None
    forge = data["forge"]["kind"]
    text = _INIT_HEADER + tomli_w.dumps(data)
    check_approvers(parse_config(text, str(path)), str(path))  # what init writes must load
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"wrote {path}")
    steps = []
    if forge == "github":
        steps.append("export GITHUB_TOKEN (a fine-grained token; see README) or run `gh auth login`")
    if data["runner"]["kind"] == "docker":
        steps.append("`fleet-tui image build`")
    steps += ["`fleet-tui check --fix`", "`fleet-tui` in the repository"]
    print("next: " + ", then ".join(steps))
    return EXIT_OK


_INIT_HEADER = """\
# fleet-tui configuration (written by `fleet-tui init`). Every key is documented in fleet.toml.example.
# Never put a token here: the GitHub token comes from GITHUB_TOKEN / GH_TOKEN or `gh auth token`.

"""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def cmd_stats(config: Any, repo: Path, state_dir: Path) -> int:
    """`fleet-tui stats`: the stats view's numbers as text."""
    from datetime import UTC, datetime

    from fleet_tui.stats import compute, report
    from fleet_tui.store import Journal, journal_dir

    repo_id = config.forge.repo if config.forge.kind == "github" else str(repo.resolve())
    where = journal_dir(state_dir, repo_id)
    if not where.is_dir():
        print(f"no journal for {repo_id} yet (under {state_dir}): run the fleet first")
        return 0
    journal = Journal.open(where, lock=False)
    try:
        print("\n".join(report(compute(journal, datetime.now(UTC)), budget_day_usd=config.policy.budget_day_usd)))
    finally:
        journal.close()
    return 0

"""Starting the console: on a configured repository, or on the demo's sample project. The fleet is built
inside the app's worker (`DeferredFleet`), so the first frame is drawn before any slow set-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from fleet_tui.config import FleetConfig
from fleet_tui.control import DeferredFleet, FleetControl
from fleet_tui.remote.daemon import FleetUnreachable as FleetUnreachableError
from fleet_tui.tui.attach import HandOff
from fleet_tui.tui.view import SetupItem, SetupProbe


def _run(control: FleetControl, config: FleetConfig, state_dir: Path, first_run: SetupProbe | None = None,
         hand_off: HandOff | None = None) -> int:
    from fleet_tui.tui.app import make_app

    app = make_app(control, config, state_dir=state_dir, first_run=first_run, hand_off=hand_off)
    app.run()
    return app.return_code or 0


@asynccontextmanager
async def hosted(config: FleetConfig, *, repo_path: Path, state_dir: Path) -> AsyncIterator[FleetControl]:
    """The fleet built for `config`, served to other consoles on its journal's socket while it runs."""
    from fleet_tui.orchestrator import build_fleet
    from fleet_tui.remote.server import serving_if_possible

    async with (build_fleet(config, repo_path=repo_path, state_dir=state_dir) as orchestrator,
                serving_if_possible(orchestrator, orchestrator.journal.dir)):
        yield orchestrator


def run_console(config: FleetConfig, *, repo_path: Path, state_dir: Path, first_run: bool = False,
                attach_only: bool = False, daemon_argv: list[str] | None = None) -> int:
    """`fleet-tui`: the console on `repo_path` (local forge) or on `forge.repo` (GitHub). When the fleet for
    that repository already runs (a `--headless` daemon, another console), the console attaches to it; else it
    hosts the fleet and serves it to other consoles. `attach_only` refuses to host (the browser's console).
    `daemon_argv` (the flags a background `--headless` needs) enables the console's detach key.
    `first_run` (no config file was found) opens the set-up screen and starts nothing."""
    from fleet_tui.remote.daemon import journal_for, running_fleet

    label = config.forge.repo if config.forge.kind == "github" else repo_path.name
    if not first_run:
        where = journal_for(config, repo_path, state_dir)
        if running_fleet(where) is not None:
            return attach(where, config, state_dir, repo=label, forge_kind=config.forge.kind)
        if attach_only:
            raise FleetUnreachableError(f"no fleet runs for {label}: start one with `fleet-tui --headless` "
                                        "(or `fleet-tui --detach`)")
    control = DeferredFleet(lambda: hosted(config, repo_path=repo_path, state_dir=state_dir),
                            repo=label, forge_kind=config.forge.kind)
    probe = (lambda: first_run_items(config, repo_path=repo_path, state_dir=state_dir)) if first_run else None
    start = None
    if daemon_argv is not None and not first_run:
        start = _background_fleet(daemon_argv, journal_for(config, repo_path, state_dir), label, config.forge.kind)
    return _run(control, config, state_dir, probe, start)


def _background_fleet(argv: list[str], where: Path, label: str, forge_kind: str) -> HandOff:
    def start() -> FleetControl:
        from fleet_tui.remote import socket_path
        from fleet_tui.remote.client import RemoteFleet
        from fleet_tui.remote.daemon import start_daemon

        start_daemon(argv, where, cwd=Path.cwd())
        return RemoteFleet(socket_path(where), repo=label, forge_kind=forge_kind)

    return start


def attach(where: Path, config: FleetConfig, state_dir: Path, *, repo: str, forge_kind: str) -> int:
    """The console on the fleet served in the journal directory `where` (or on the socket `where`, e.g. one
    forwarded over SSH); quitting it leaves the fleet running. An unreachable, unsafe or other-version fleet is
    reported before the console opens."""
    from fleet_tui.remote import socket_path
    from fleet_tui.remote.client import RemoteFleet, probe

    path = where if where.suffix == ".sock" or where.is_socket() else socket_path(where)
    try:
        hello = anyio.run(lambda: probe(path))
    except FileNotFoundError:
        raise FleetUnreachableError(f"no fleet is served on {path}") from None
    except ConnectionRefusedError:
        raise FleetUnreachableError(f"nothing answers on {path}: the fleet stopped (a stale socket)") from None
    repo = repo or str(hello.get("repo") or path)
    return _run(RemoteFleet(path, repo=repo, forge_kind=forge_kind), config, state_dir)


def first_run_items(config: FleetConfig, *, repo_path: Path, state_dir: Path) -> list[SetupItem]:
    """What a first run lacks: the config file, the agent image (Docker runner), the engines' API keys.
    Blocking (it asks the Docker engine): call it in a thread."""
    from fleet_tui.doctor import Doctor

    items = [SetupItem("config", "missing", "no fleet.toml here or in the user config folder", "fleet-tui init")]
    if config.runner.kind == "docker":
        items.append(_agent_image(config.runner.image))
    doctor = Doctor(config, None, repo_path, state_dir)
    doctor.results = []
    doctor._engine_env()  # the same probe `fleet-tui check` runs
    for check in doctor.results:
        status = "ok" if check.status == "ok" else "missing"
        items.append(SetupItem("engine API key", status, f"{check.name.removeprefix('env ')}: {check.detail}",
                               check.fix))
    return items


def _agent_image(image: str) -> SetupItem:
    """Is the agents' image on the Docker engine? Only asks (ping, image lookup): never starts a container."""
    import os

    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine is the answer
        where = os.environ.get("DOCKER_HOST", "the local socket")
        return SetupItem("agent image", "missing", f"cannot reach the Docker engine at {where}: {exc}",
                         "start Docker (or set DOCKER_HOST), or choose the local runner in `fleet-tui init`")
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return SetupItem("agent image", "missing", f"{image} is not on the Docker engine", "fleet-tui image build")
    except Exception as exc:  # noqa: BLE001
        return SetupItem("agent image", "warn", f"cannot look up {image}: {exc}", "fleet-tui image build")
    finally:
        client.close()
    return SetupItem("agent image", "ok", f"{image} is on the Docker engine")


def run_demo(*, state_dir: Path, workdir: Path | None = None) -> int:
    """`fleet-tui --demo`: the sample project is created after the first frame, then the PM runs at once."""
    from fleet_tui.demo import create_sample_repo, demo_config, demo_workdir

    root = workdir or demo_workdir()
    repo = root / "tasklist"
    config = demo_config(repo, root / "state")

    @asynccontextmanager
    async def fleet() -> AsyncIterator[FleetControl]:
        from fleet_tui.orchestrator import build_fleet
        from fleet_tui.remote.server import serving_if_possible

        await anyio.to_thread.run_sync(create_sample_repo, repo)
        async with (build_fleet(config, repo_path=repo, state_dir=root / "state") as orchestrator,
                    serving_if_possible(orchestrator, orchestrator.journal.dir)):
            await orchestrator.run_pm()
            yield orchestrator

    control = DeferredFleet(fleet, repo="tasklist (demo)", forge_kind="local")
    code = _run(control, config, state_dir)
    print(f"demo repository kept at {repo} (journal and logs under {root / 'state'})")
    return code

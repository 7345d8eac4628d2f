"""Starting the console: on a configured repository, or on the demo's sample project. The fleet is built
inside the app's worker (`DeferredFleet`), so the first frame is drawn before any slow set-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from fleet_tui.config import FleetConfig
from fleet_tui.control import DeferredFleet, FleetControl
from fleet_tui.tui.view import SetupItem, SetupProbe


def _run(control: DeferredFleet, config: FleetConfig, state_dir: Path, first_run: SetupProbe | None = None) -> int:
    from fleet_tui.tui.app import make_app

    app = make_app(control, config, state_dir=state_dir, first_run=first_run)
    app.run()
    return app.return_code or 0


def run_console(config: FleetConfig, *, repo_path: Path, state_dir: Path, first_run: bool = False) -> int:
    """`fleet-tui`: the console on `repo_path` (local forge) or on `forge.repo` (GitHub). `first_run` (no config
    file was found) opens the set-up screen and starts nothing."""
    from fleet_tui.orchestrator import build_fleet

    label = config.forge.repo if config.forge.kind == "github" else repo_path.name
    control = DeferredFleet(lambda: build_fleet(config, repo_path=repo_path, state_dir=state_dir),
                            repo=label, forge_kind=config.forge.kind)
    probe = (lambda: first_run_items(config, repo_path=repo_path, state_dir=state_dir)) if first_run else None
    return _run(control, config, state_dir, probe)


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

        await anyio.to_thread.run_sync(create_sample_repo, repo)
        async with build_fleet(config, repo_path=repo, state_dir=root / "state") as orchestrator:
            await orchestrator.run_pm()
            yield orchestrator

    control = DeferredFleet(fleet, repo="tasklist (demo)", forge_kind="local")
    code = _run(control, config, state_dir)
    print(f"demo repository kept at {repo} (journal and logs under {root / 'state'})")
    return code

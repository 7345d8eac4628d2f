"""Starting the console: on a configured repository, or on the demo's sample project. The fleet is built
inside the app's worker (`DeferredFleet`), so the first frame is drawn before any slow set-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from fleet_tui.config import FleetConfig
from fleet_tui.control import DeferredFleet, FleetControl


def _run(control: DeferredFleet, config: FleetConfig, state_dir: Path) -> int:
    from fleet_tui.tui.app import make_app

    app = make_app(control, config, state_dir=state_dir)
    app.run()
    return app.return_code or 0


def run_console(config: FleetConfig, *, repo_path: Path, state_dir: Path) -> int:
    """`fleet-tui`: the console on `repo_path` (local forge) or on `forge.repo` (GitHub)."""
    from fleet_tui.orchestrator import build_fleet

    label = config.forge.repo if config.forge.kind == "github" else repo_path.name
    control = DeferredFleet(lambda: build_fleet(config, repo_path=repo_path, state_dir=state_dir),
                            repo=label, forge_kind=config.forge.kind)
    return _run(control, config, state_dir)


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

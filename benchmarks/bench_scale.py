"""A fleet at scale: 200 approved issues over a pool of 8 hosts, with the real orchestrator (observe, `reconcile`,
executor, supervisor), the local forge, real workspaces and the scripted engine; only the hosts are simulated.

The runner is `SimPool`: the pool's own placement (`fleet_tui.runners.pool.place`) over 8 simulated hosts of
4 slots each, every run a real local process (the scripted agent: it prints, works for a while, commits,
answers). Dev runs work `DEV_S` seconds, QA runs `QA_S` (a real run takes minutes; the figures here are the
fleet's own overhead around runs of that shape). Once `LOSE_AFTER` Dev runs have started, one busy host stops
answering for `AWAY_S` seconds: its runs' waits raise `HostUnreachable` as a dead engine's would, it takes no
new run, and it answers again afterwards, when the supervisor re-attaches its runs.

Figures:
- dispatch throughput: Dev runs started per second, from the first approval to the 200th Dev run started;
- placement balance: runs placed per host (min / max), and mean busy slots per host while any run is live;
- host loss: from the loss until every run on it is shown "host unreachable", until the next run is placed
  on another host; from its return until its runs are followed again, and until a new run is placed on it;
- `reconcile()` time per tick (median, p95, max) over the whole run.

Run: `python benchmarks/bench_scale.py [issues] [hosts]` (defaults 200 and 8; a few minutes on 2 cores).
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet_tui import orchestrator as orchestrator_module
from fleet_tui.config import EngineConfig, FleetConfig, PolicyConfig, RoleConfig, RolesConfig
from fleet_tui.git import git_sync
from fleet_tui.model import Role, RunChanged, RunState
from fleet_tui.runners.base import HostUnreachable, LiveRun, RunSpec
from fleet_tui.runners.local import LocalRunner
from fleet_tui.runners.pool import HostSlots, place

SLOTS = 4
DEV_S = 30.0  # a tenth of a typical Dev run
QA_S = 10.0
LOSE_AFTER = 60
AWAY_S = 8.0


class SimHost:
    def __init__(self, name: str) -> None:
        self.name = name
        self.runs: set[str] = set()
        self.up = True
        self.gone = anyio.Event()  # set while the host is away
        self.back = anyio.Event()
        self.placed = 0


class SimHandle:
    """A local run's handle whose host can go away: then its output stops and its wait raises."""

    def __init__(self, inner: Any, host: SimHost) -> None:
        self.inner, self.sim_host, self.run_id = inner, host, inner.run_id
        self.host = host.name  # what the supervisor shows
        self.started_at = getattr(inner, "started_at", time.time())

    async def lines(self):  # type: ignore[no-untyped-def]
        async with anyio.create_task_group() as tg:
            queue_send, queue_recv = anyio.create_memory_object_stream[str](1000)

            async def pump() -> None:
                async with queue_send:
                    async for line in self.inner.lines():
                        await queue_send.send(line)
            tg.start_soon(pump)

            async def cut() -> None:
                await self.sim_host.gone.wait()
                tg.cancel_scope.cancel()
            tg.start_soon(cut)
            async with queue_recv:
                async for line in queue_recv:
                    yield line
            tg.cancel_scope.cancel()

    async def wait(self) -> int:
        result: dict[str, int] = {}
        async with anyio.create_task_group() as tg:
            async def finish() -> None:
                result["code"] = await self.inner.wait()
                tg.cancel_scope.cancel()

            async def lose() -> None:
                await self.sim_host.gone.wait()
                tg.cancel_scope.cancel()
            tg.start_soon(finish)
            tg.start_soon(lose)
        if "code" not in result:
            raise HostUnreachable(f"host {self.host} does not answer")
        return result["code"]

    async def stop(self) -> None:
        if not self.sim_host.up:
            raise HostUnreachable(f"host {self.host} does not answer")
        await self.inner.stop()


class SimPool:
    """The pool's placement and host bookkeeping over simulated hosts; each run a local process."""

    kind = "docker"

    def __init__(self, local: LocalRunner, hosts: int) -> None:
        self.local = local
        self.sim = [SimHost(f"h{n}") for n in range(hosts)]
        self.by_run: dict[str, SimHost] = {}
        self.changed = anyio.Event()
        self.started: list[tuple[float, str, str]] = []  # (time, run id, host)

    def paths(self, workspace: Path, scratch: Path) -> tuple[str, str]:
        return self.local.paths(workspace, scratch)

    def _host(self, name: str) -> SimHost:
        return next(h for h in self.sim if h.name == name)

    def host_of(self, run_id: str) -> str:
        host = self.by_run.get(run_id)
        return host.name if host else ""

    def is_reachable(self, name: str) -> bool | None:
        return self._host(name).up

    async def wait_for_host(self, name: str) -> None:
        host = self._host(name)
        while not host.up:
            await host.back.wait()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def start(self, spec: RunSpec) -> SimHandle:
        while True:
            name = place([HostSlots(h.name, SLOTS, len(h.runs), h.up, True) for h in self.sim])
            if name is not None:
                break
            await self.changed.wait()
        host = self._host(name)
        host.runs.add(spec.run_id)
        host.placed += 1
        self.by_run[spec.run_id] = host
        self.started.append((time.perf_counter(), spec.run_id, name))
        try:
            inner = await self.local.start(spec)
        except BaseException:
            host.runs.discard(spec.run_id)
            raise
        return SimHandle(inner, host)

    async def find_runs(self) -> list[LiveRun]:
        return await self.local.find_runs()

    async def attach(self, run_id: str) -> SimHandle:
        host = self.by_run[run_id]
        if not host.up:
            raise HostUnreachable(f"host {host.name} does not answer")
        return SimHandle(await self.local.attach(run_id), host)

    async def collect(self, run_id: str, scratch: Path) -> None:
        host = self.by_run.get(run_id)
        if host is not None and not host.up:
            raise HostUnreachable(f"host {host.name} does not answer")

    async def cleanup(self, run_id: str) -> None:
        await self.local.cleanup(run_id)
        host = self.by_run.pop(run_id, None)
        if host is not None:
            host.runs.discard(run_id)
            self._notify()

    def lose(self, host: SimHost) -> None:
        host.up = False
        host.back = anyio.Event()
        host.gone.set()

    def restore(self, host: SimHost) -> None:
        host.up = True
        host.gone = anyio.Event()
        host.back.set()
        self._notify()


def fleet_config(root: Path, issues: int, hosts: int) -> FleetConfig:
    script = {
        "dev": [{"print": "working on {issue}"}, {"sleep": DEV_S}, {"write": "notes/{issue}.md", "content": "x\n"},
                {"commit": "#{issue}: {title}"}, {"final": "done"}],
        "qa": [{"sleep": QA_S}, {"final": "VERDICT: pass\n"}],
        "pm": [{"final": "[]"}],
    }
    path = root / "script.json"
    path.write_text(json.dumps(script))
    engine = EngineConfig(kind="scripted", command=sys.executable, script=str(path))
    capacity = hosts * SLOTS
    return FleetConfig(engines={"scripted": engine}, poll_interval_s=1,
                       roles=RolesConfig(pm=RoleConfig(engine="scripted"),
                                         dev=RoleConfig(engine="scripted", max_concurrent=capacity),
                                         qa=RoleConfig(engine="scripted", max_concurrent=capacity)),
                       policy=PolicyConfig(max_live_runs=capacity, max_open_proposals=issues + 10))


async def bench(issues: int, hosts: int) -> dict[str, Any]:
    from fleet_tui.forge.local import LocalForge
    from fleet_tui.orchestrator import Orchestrator
    from fleet_tui.store import Journal
    from fleet_tui.workspace import WorkspaceManager

    ticks: list[float] = []
    real_reconcile = orchestrator_module.reconcile

    def timed_reconcile(snapshot: Any, config: Any) -> Any:
        start = time.perf_counter()
        try:
            return real_reconcile(snapshot, config)
        finally:
            ticks.append(time.perf_counter() - start)

    orchestrator_module.reconcile = timed_reconcile  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        repo = root / "project"
        repo.mkdir()
        git_sync("init", "-q", "-b", "main", cwd=repo)
        (repo / "README.md").write_text("# bench\n")
        git_sync("add", "-A", cwd=repo)
        git_sync("-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-q", "-m", "start",
                 cwd=repo)
        config = fleet_config(root, issues, hosts)
        pool = SimPool(LocalRunner(grace_s=0.5, runs_dir=root / "runs"), hosts)
        journal = Journal.open(root / "journal")
        dev_started: dict[str, float] = {}
        dev_done: set[str] = set()
        unreachable_at: dict[str, float] = {}
        followed_again_at: dict[str, float] = {}
        busy_samples: list[list[int]] = []
        loss: dict[str, Any] = {}
        try:
            async with LocalForge(repo) as forge:
                orch = Orchestrator(config, forge=forge, runner=pool, journal=journal, repo_path=repo,
                                    workspaces=WorkspaceManager(root / "ws"))
                stream = orch.events()

                async def watch() -> None:
                    async for event in stream:
                        if not isinstance(event, RunChanged) or event.run is None:
                            continue
                        run = event.run
                        if run.host_unreachable:
                            unreachable_at.setdefault(run.run_id, time.perf_counter())
                        elif run.run_id in unreachable_at:
                            followed_again_at.setdefault(run.run_id, time.perf_counter())
                        if run.role is Role.DEV and run.state is RunState.RUNNING and run.host:
                            dev_started.setdefault(run.run_id, time.perf_counter())
                        if run.role is Role.DEV and run.state.finished:
                            dev_done.add(run.run_id)

                async def sample() -> None:
                    while True:
                        busy_samples.append([len(h.runs) for h in pool.sim])
                        await anyio.sleep(0.2)

                async def chaos() -> None:
                    while len(dev_started) < min(LOSE_AFTER, issues // 3):
                        await anyio.sleep(0.05)
                    victim = max(pool.sim, key=lambda h: len(h.runs))
                    on_it = set(victim.runs)
                    loss.update(host=victim.name, runs=len(on_it))
                    placed_before = len(pool.started)
                    lost_at = time.perf_counter()
                    pool.lose(victim)
                    while not on_it <= set(unreachable_at) and time.perf_counter() - lost_at < 30:
                        await anyio.sleep(0.01)
                    loss["shown_unreachable_s"] = max((unreachable_at.get(r, lost_at) for r in on_it),
                                                      default=lost_at) - lost_at
                    while len(pool.started) == placed_before:
                        await anyio.sleep(0.01)
                    loss["next_run_elsewhere_s"] = pool.started[placed_before][0] - lost_at
                    await anyio.sleep(max(0.0, AWAY_S - (time.perf_counter() - lost_at)))
                    back_at = time.perf_counter()
                    placed_back = len(pool.started)
                    pool.restore(victim)
                    with anyio.move_on_after(60):
                        while not on_it <= set(followed_again_at):
                            await anyio.sleep(0.01)
                    loss["followed_again_s"] = max((followed_again_at.get(r, back_at) for r in on_it),
                                                   default=back_at) - back_at
                    with anyio.move_on_after(60):
                        while not any(name == victim.name for _, _, name in pool.started[placed_back:]):
                            await anyio.sleep(0.01)
                    loss["new_run_on_it_s"] = next((at for at, _, name in pool.started[placed_back:]
                                                    if name == victim.name), float("nan")) - back_at

                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch)
                    tg.start_soon(orch.run)
                    while orch.ticks == 0:
                        await anyio.sleep(0.01)
                    tg.start_soon(sample)
                    tg.start_soon(chaos)
                    first_approval = time.perf_counter()
                    for n in range(issues):
                        issue = await forge.create_issue(f"Task {n}", f"Do {n}.", [config.labels.proposed])
                        await orch.approve(issue.number)
                    approved = time.perf_counter()
                    with anyio.fail_after(1800):
                        while len(dev_done) < issues:
                            await anyio.sleep(0.1)
                    all_done = time.perf_counter()
                    await orch.shutdown()
                    tg.cancel_scope.cancel()
        finally:
            journal.close()
            orchestrator_module.reconcile = real_reconcile  # type: ignore[assignment]
        starts = sorted(dev_started.values())
        busy = [row for row in busy_samples if sum(row)]
        per_host = Counter({h.name: h.placed for h in pool.sim})
        failed = sum(1 for run in Journal.open(root / "journal").runs() if run.role is Role.DEV
                     and run.state is not RunState.SUCCEEDED) if (root / "journal").exists() else 0
        return {
            "issues": issues, "hosts": hosts, "slots": hosts * SLOTS,
            "approve_all_s": approved - first_approval,
            "dispatch_all_s": starts[-1] - first_approval if starts else float("nan"),
            "dispatch_per_s": len(starts) / (starts[-1] - first_approval) if starts else 0.0,
            "all_dev_done_s": all_done - first_approval,
            "dev_not_succeeded": failed,
            "placed_min": min(per_host.values()), "placed_max": max(per_host.values()),
            "busy_mean_per_host": [round(statistics.fmean(col), 2) for col in zip(*busy, strict=True)] if busy else [],
            "busy_mean_total": statistics.fmean(sum(row) for row in busy) if busy else 0.0,
            "loss": loss,
            "ticks": len(ticks),
            "reconcile_median_ms": statistics.median(ticks) * 1000,
            "reconcile_p95_ms": sorted(ticks)[int(len(ticks) * 0.95) - 1] * 1000 if ticks else 0.0,
            "reconcile_max_ms": max(ticks) * 1000,
        }


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    issues = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    hosts = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    result = anyio.run(bench, issues, hosts)
    loss = result["loss"]
    print(f"{result['issues']} approved issues, {result['hosts']} hosts x {SLOTS} slots, Dev runs {DEV_S:g} s, "
          f"QA runs {QA_S:g} s")
    print(f"approving all:                 {result['approve_all_s']:.1f} s")
    print(f"dispatch throughput:           {result['dispatch_per_s']:.1f} Dev runs started/s "
          f"(all {result['issues']} started after {result['dispatch_all_s']:.1f} s)")
    print(f"all Dev runs ended after:      {result['all_dev_done_s']:.1f} s "
          f"({result['dev_not_succeeded']} not succeeded)")
    print(f"placement:                     {result['placed_min']}-{result['placed_max']} runs per host; "
          f"mean busy slots per host {result['busy_mean_per_host']} ({result['busy_mean_total']:.1f} of "
          f"{result['slots']} in all)")
    if loss:
        print(f"host {loss['host']} lost with {loss['runs']} runs: all shown unreachable after "
              f"{loss['shown_unreachable_s']:.2f} s; next run placed elsewhere after "
              f"{loss['next_run_elsewhere_s']:.2f} s; back after {AWAY_S:g} s: its runs followed again after "
              f"{loss['followed_again_s']:.2f} s, a new run placed on it after {loss['new_run_on_it_s']:.2f} s")
    print(f"reconcile per tick:            median {result['reconcile_median_ms']:.2f} ms, "
          f"p95 {result['reconcile_p95_ms']:.2f} ms, max {result['reconcile_max_ms']:.2f} ms "
          f"over {result['ticks']} ticks")


if __name__ == "__main__":
    main()

"""Supervising runs: starting a role's agent in a workspace through the runner, following it to its end
(log, live lines, usage as it streams), turning its outcome into the journal's record of the run, and
re-attaching after a restart the runs a previous process left behind. `fleet_tui.agents` drives one
process; this module keeps the journal and the events for all of them.

A run whose host stops answering (a Docker host of the pool, or the one engine) is neither killed nor lost
nor failed: it is shown as "host unreachable", and followed again from its first line (what the log holds
is not written twice) once the host answers; its files are collected then. Stopping it meanwhile records
the stop at once and removes the container when the host is back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from fleet_tui.context import FleetContext, findings_hash, log
from fleet_tui.engines.base import EngineResult, Task
from fleet_tui.model import AgentRun, Role, RunChanged, RunLogLines, RunState, Usage, Verdict
from fleet_tui.roles import pm as pm_role
from fleet_tui.roles import qa as qa_role
from fleet_tui.runners.base import HostUnreachable

LINES_SAVE_S = 1.0  # how often a live run's count of logged output lines is saved to the journal


def usage_minus(a: Usage, b: Usage) -> Usage:
    return Usage(max(0, a.input_tokens - b.input_tokens), max(0, a.output_tokens - b.output_tokens),
                 max(0, a.cached_tokens - b.cached_tokens), max(0.0, a.cost_usd - b.cost_usd))


@dataclasses.dataclass
class _Live:
    """A run this orchestrator supervises right now."""

    run: AgentRun
    sup: Any = None  # fleet_tui.agents.AgentSupervisor
    log: Any = None  # fleet_tui.store.RunLog
    kill: tuple[RunState, str] | None = None
    usage: Usage = Usage()
    scope: anyio.CancelScope | None = None
    tests: Any = None  # the supervisor of the QA run's test command while it runs
    lines_saved_at: float = 0.0  # when the count of output lines in the log was last saved
    engine: Any = None
    away: anyio.CancelScope | None = None  # the wait for its unreachable host, while it lasts


class RunSupervisor:
    """Every run this orchestrator supervises right now, and how each one starts, goes on and ends."""

    def __init__(self, ctx: FleetContext, engine_factory: Callable[[str, Any], Any],
                 create_proposals: Callable[[list[pm_role.Proposal], int], Awaitable[int]]) -> None:
        self.ctx = ctx
        self._engine_factory = engine_factory
        self._create_proposals = create_proposals
        self._live: dict[str, _Live] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    def bind(self, tg: anyio.abc.TaskGroup | None) -> None:
        """The task group runs are supervised in (the orchestrator's loop); None once it has ended."""
        self._tg = tg

    def live_run(self, run_id: str) -> AgentRun | None:
        live = self._live.get(run_id)
        return live.run if live is not None else None

    def live_runs(self) -> list[AgentRun]:
        return [live.run for live in self._live.values()]

    def __len__(self) -> int:
        return len(self._live)

    def detach_all(self) -> None:
        """Stop following every run; the processes themselves go on, to be re-attached at the next start."""
        for live in self._live.values():
            if live.scope is not None:
                live.scope.cancel()

    def settle_unsupervised(self) -> None:
        """A run the journal holds as live that nobody supervises failed to start: record it as lost."""
        for run in self.ctx.journal.runs(live_only=True):
            if run.run_id not in self._live:
                self.end_lost(run, "the run was not supervised (its start failed)")

    async def kill(self, run_id: str, state: RunState, reason: str) -> None:
        live = self._live.get(run_id)
        if live is None:
            run = self.ctx.journal.get_run(run_id)
            if run is not None and run.state.live:
                self.end_lost(dataclasses.replace(run, reason=reason), reason)
            return
        if live.kill is not None:
            return  # a stop is already under way: never issue it twice
        live.kill = (state, reason)
        self.ctx.notice(f"stopping run {run_id}: {reason}", "warning")
        if live.away is not None:  # its host does not answer: end it now, remove it when the host is back
            live.away.cancel()
            return
        try:
            if live.tests is not None:
                await live.tests.stop(reason)
            await live.sup.stop(reason)
        except HostUnreachable:
            pass  # its host went away just now: the run ends as stopped, its container goes when the host is back

    async def reattach(self) -> None:
        found = {r.run_id: r for r in await self.ctx.runner.find_runs()}
        if self.ctx.runner.kind == "local":
            self._sweep_local_orphans(keep=set(found))
        for run in self.ctx.journal.runs(live_only=True):
            if run.run_id in self._live:
                continue
            host = str(self.ctx.extras(run.run_id).get("host", "") or "")
            away = run.run_id not in found and host and self._host_reachable(host) is False
            if run.run_id in found or away:
                if away:
                    getattr(self.ctx.runner, "adopt", lambda *_: None)(run.run_id, host)
                run = dataclasses.replace(run, host=found[run.run_id].host if run.run_id in found else host)
                try:
                    ws = self.ctx.workspaces.open(run.run_id)
                    role_cfg = getattr(self.ctx.config.roles, run.role.value)
                    engine = self._engine_factory(role_cfg.engine, self.ctx.config)
                except Exception as exc:  # noqa: BLE001 - any failure means the run is lost to us
                    self.end_lost(run, f"cannot re-attach: {exc}")
                    continue
                live = self._make_live(run, engine)
                live.usage = self.ctx.journal.spend_for_run(run.run_id)  # the ledger's count, to add only the rest
                started = run.started_at.timestamp() if run.started_at else None
                logged = int(self.ctx.extras(run.run_id).get("output_lines", 0))
                self.ctx.notice(f"re-attached run {run.run_id}" if not away else
                                f"run {run.run_id} is on host {host}, which does not answer: it is kept", 
                                "info" if not away else "warning")
                self._spawn(live, ws, lambda live=live, ws=ws, role_cfg=role_cfg, started=started, logged=logged:
                            live.sup.reattach(live.run.run_id, scratch=ws.scratch, timeout_s=float(role_cfg.timeout_s),
                                              started_at=started, skip_lines=logged))
            else:
                self.ctx.set_extras(run.run_id, interrupted=True)
                self.end_lost(run, "the run was gone when the orchestrator started")
        for run_id in found:
            record = self.ctx.journal.get_run(run_id)
            if record is None:
                self.ctx.notice(f"a run {run_id} not in the journal is alive; stopping it", "warning")
                with contextlib.suppress(Exception):
                    handle = await self.ctx.runner.attach(run_id)
                    await handle.stop()
                    await self.ctx.runner.cleanup(run_id)
            elif not record.state.live and run_id not in self._live:
                # ended in the journal (e.g. stopped while its host was away) but still on its host: remove it
                with contextlib.suppress(Exception):
                    handle = await self.ctx.runner.attach(run_id)
                    await handle.stop()
                    await self.ctx.runner.cleanup(run_id)

    def _host_reachable(self, host: str) -> bool | None:
        is_reachable = getattr(self.ctx.runner, "is_reachable", None)
        return is_reachable(host) if is_reachable is not None else None

    def _sweep_local_orphans(self, *, keep: set[str]) -> None:
        """Kill what local runs of an earlier orchestrator process left running: a local agent leads its own
        session, so it outlives an orchestrator killed with SIGKILL, and a local run cannot be re-attached.
        Such processes are known by their HOME, which every engine puts inside the run's scratch dir."""
        keep = keep | set(self._live)  # runs the runner can re-attach to, and our own
        for pid, run_id in _processes_of_workspaces(Path(self.ctx.workspaces.root), os.getpid()):
            if run_id in keep:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                log.info("killed process %d left by run %s", pid, run_id)

    def end_lost(self, run: AgentRun, reason: str) -> None:
        ended = dataclasses.replace(run, state=RunState.LOST, ended_at=self.ctx.clock(), reason=reason)
        self.ctx.journal.upsert_run(ended)
        self.ctx.publish(RunChanged(at=self.ctx.clock(), run=ended))

    async def dispatch(self, role: Role, run_id: str, prompt: str | Callable[[Any], str], *, issue: int | None,
                       title: str, branch: str, attempt: int, qa_round: int, existing: bool, pr: int | None = None,
                       update: str | None = None, extras: dict[str, Any] | None = None) -> None:
        """Start a run. `prompt` may be a function of the workspace (an update round names the files that
        conflict); `update` ("merge" | "rebase") brings the fresh base into an existing branch first."""
        role_cfg = getattr(self.ctx.config.roles, role.value)
        engine = self._engine_factory(role_cfg.engine, self.ctx.config)
        run = AgentRun(run_id=run_id, role=role, issue=issue, state=RunState.QUEUED, pr=pr, branch=branch,
                       attempt=attempt, qa_round=qa_round, engine=role_cfg.engine, runner=self.ctx.runner.kind,
                       started_at=self.ctx.clock())
        self.ctx.journal.upsert_run(run)
        self.ctx.set_extras(run_id, **(extras or {}))
        try:
            await self._start_run(run, role_cfg, engine, prompt, title=title, existing=existing, update=update)
        except BaseException as exc:
            if run_id not in self._live:
                failed = dataclasses.replace(run, state=RunState.FAILED, ended_at=self.ctx.clock(),
                                             reason=f"cannot start: {exc}"[:300])
                with anyio.CancelScope(shield=True):
                    self.ctx.journal.upsert_run(failed)
                self.ctx.publish(RunChanged(at=self.ctx.clock(), run=failed))
            raise

    async def _start_run(self, run: AgentRun, role_cfg: Any, engine: Any, prompt: str | Callable[[Any], str], *,
                         title: str, existing: bool, update: str | None) -> None:
        run_id, role, issue, branch = run.run_id, run.role, run.issue, run.branch
        # the base (and the branch) as the forge has them now, never the operator's working tree
        git_source = getattr(self.ctx.forge, "git_source", None)
        source: Any = await git_source() if git_source is not None else self.ctx.repo_path
        more: dict[str, Any] = {"update": update} if update else {}
        ws = await self.ctx.workspaces.create(run_id, source, issue=issue, title=title, base=self.ctx.base,
                                              branch=branch, existing=existing, **more)
        if callable(prompt):
            prompt = prompt(ws)
        if role == Role.DEV:
            from fleet_tui.workspace import CommittingEngine

            engine = CommittingEngine(engine, f"Work on #{issue}", self.ctx.workspaces.author)
        self.ctx.set_extras(run_id, workspace=True)
        task = Task(run_id=run_id, role=role, prompt=prompt, issue=issue, title=title, branch=branch,
                    qa_round=run.qa_round)
        live = self._make_live(run, engine)
        network = role_cfg.network or self.ctx.config.runner.network
        spec = live.sup.build_spec(task, workspace=ws.repo, scratch=ws.scratch, timeout_s=float(role_cfg.timeout_s),
                                   network=network, labels={"fleet.run_id": run_id, "fleet.issue": str(issue or ""),
                                                            "fleet.role": role.value})
        live.run = dataclasses.replace(run, state=RunState.RUNNING)
        self.ctx.journal.upsert_run(live.run)
        command = self.ctx.config.policy.test_command.strip()
        if role == Role.QA and command:
            self._spawn(live, ws, lambda: self._tests_then_review(live, ws, task, command, role_cfg, spec))
        else:
            self._spawn(live, ws, lambda: live.sup.run(spec))

    async def _tests_then_review(self, live: _Live, ws: Any, task: Task, command: str, role_cfg: Any,
                                 spec: Any) -> Any:
        """QA: the repository's test command first, as its own run with no network; the review only when it
        passes (a failing suite already decides the verdict, and the fix round needs nothing more)."""
        from fleet_tui.agents import AgentSupervisor, RunOutcome

        run_id = live.run.run_id
        tests_id = f"{run_id}-tests"
        engine = qa_role.TestCommandEngine(command)
        sup = AgentSupervisor(self.ctx.runner, engine, log=live.log, publish=lambda batch: self._on_lines(live, batch))
        live.tests = sup
        test_task = dataclasses.replace(task, run_id=tests_id, prompt="")
        test_spec = sup.build_spec(test_task, workspace=ws.repo, scratch=ws.scratch,
                                   timeout_s=float(role_cfg.timeout_s), network="none",
                                   labels={"fleet.run_id": tests_id, "fleet.issue": str(task.issue or ""),
                                           "fleet.role": Role.QA.value})
        live.log.write(f"[fleet] running the test command: {command}")
        try:
            tests = await self._follow(live, ws, lambda: sup.run(test_spec), run_id=tests_id, sup=sup)
        finally:
            live.tests = None
        passed = tests.state == RunState.SUCCEEDED
        self.ctx.set_extras(run_id, tests={"passed": passed, "exit_code": tests.exit_code, "state": tests.state.value,
                                        "output": tests.result.summary[-qa_role.TEST_TAIL_CHARS * 2:]})
        live.log.write(f"[fleet] the tests {'pass' if passed else 'fail'} ({tests.reason or tests.state.value})")
        if passed and live.kill is None:
            return await live.sup.run(spec)
        state = RunState.SUCCEEDED if tests.state == RunState.FAILED else tests.state
        return RunOutcome(run_id, state, tests.exit_code, Usage(), EngineResult(ok=state == RunState.SUCCEEDED),
                          "" if state == RunState.SUCCEEDED else tests.reason, tests.last_line, tests.started_at,
                          tests.ended_at, tests.lines)

    # --- supervision (fleet_tui.agents does the work; this keeps the journal and the events) ----------

    def _make_live(self, run: AgentRun, engine: Any) -> _Live:
        run_log = self.ctx.journal.open_run_log(run.run_id)
        live = _Live(run=run, usage=run.usage, log=run_log, engine=engine)
        live.sup = self._new_sup(live)
        self._live[run.run_id] = live
        return live

    def _new_sup(self, live: _Live) -> Any:
        """A supervisor of `live`'s process (one per start or re-attach), writing to the run's one log."""
        from fleet_tui.agents import AgentSupervisor, Budget

        role_cfg = getattr(self.ctx.config.roles, live.run.role.value)
        return AgentSupervisor(self.ctx.runner, live.engine, log=live.log,
                               publish=lambda batch: self._on_lines(live, batch),
                               budget=Budget(role_cfg.budget_tokens, role_cfg.budget_usd, role_cfg.max_output_bytes),
                               stall_s=float(self.ctx.config.policy.stall_s),
                               on_handle=lambda handle: self._on_host(live, str(getattr(handle, "host", "") or "")))

    def _on_host(self, live: _Live, host: str) -> None:
        """The run has a process: note its host (the console shows it; a restart finds the run there)."""
        if host != live.run.host or live.run.host_unreachable:
            live.run = dataclasses.replace(live.run, host=host, host_unreachable=False)
            if host:
                self.ctx.set_extras(live.run.run_id, host=host)
            self.ctx.publish(RunChanged(at=self.ctx.clock(), run=live.run))

    async def _follow(self, live: _Live, ws: Any, start: Callable[[], Any], *, run_id: str | None = None,
                      sup: Any = None) -> Any:
        """`start()`'s outcome, once the run has really ended: while its host does not answer, the run is shown
        as "host unreachable" and re-attached (its output from the start, the log's lines not written again)
        when the host is back. `run_id`/`sup`: a run of `live` other than its own (the QA test command)."""
        from fleet_tui.agents import RunOutcome

        run_id = run_id or live.run.run_id
        try:
            outcome = await start()
        except HostUnreachable as exc:
            outcome = RunOutcome(run_id, RunState.RUNNING, None, live.usage, EngineResult(ok=False), str(exc),
                                 host_unreachable=True)
        role_cfg = getattr(self.ctx.config.roles, live.run.role.value)
        while getattr(outcome, "host_unreachable", False):
            wait_for_host = getattr(self.ctx.runner, "wait_for_host", None)
            host = getattr(self.ctx.runner, "host_of", lambda _: live.run.host)(run_id) or live.run.host
            if wait_for_host is None:
                return dataclasses.replace(outcome, state=RunState.LOST, reason=f"lost the run: {outcome.reason}",
                                           host_unreachable=False)
            if live.kill is None:
                live.run = dataclasses.replace(live.run, host=host, host_unreachable=True,
                                               last_line=f"host unreachable: {outcome.reason}"[:300])
                self.ctx.publish(RunChanged(at=self.ctx.clock(), run=live.run))
                self.ctx.notice(f"run {live.run.run_id}: host {host or 'the runner'} does not answer; the "
                                "run is kept and followed again when it does", "warning")
                with anyio.CancelScope() as away:
                    live.away = away
                    await wait_for_host(host)
                live.away = None
            if live.kill is not None:  # stopped while away: the container goes once its host answers
                assert self._tg is not None
                self._tg.start_soon(self._remove_when_back, host, run_id)
                return dataclasses.replace(outcome, state=live.kill[0], reason=live.kill[1], host_unreachable=False)
            live.run = dataclasses.replace(live.run, host_unreachable=False)
            self.ctx.publish(RunChanged(at=self.ctx.clock(), run=live.run))
            self.ctx.notice(f"run {live.run.run_id}: host {host or 'the Docker engine'} answers again; re-attached")
            old = sup if sup is not None else live.sup
            logged = max(int(getattr(old, "lines_seen", 0)),
                         int(self.ctx.extras(live.run.run_id).get("output_lines", 0)) if sup is None else 0)
            fresh = self._new_sup(live) if sup is None else type(old)(self.ctx.runner, old.engine, log=live.log,
                                                                      publish=lambda b: self._on_lines(live, b))
            if sup is None:
                live.sup = fresh
            else:
                sup = fresh
                live.tests = fresh
            started = live.run.started_at.timestamp() if live.run.started_at else None
            try:
                outcome = await fresh.reattach(run_id, scratch=ws.scratch, timeout_s=float(role_cfg.timeout_s),
                                               started_at=started, skip_lines=logged)
            except HostUnreachable as exc:
                outcome = dataclasses.replace(outcome, reason=str(exc))
            except Exception as exc:  # noqa: BLE001 - the host is back but the run is not: it is lost
                return dataclasses.replace(outcome, state=RunState.LOST, host_unreachable=False,
                                           reason=f"the run was gone when its host came back: {exc}"[:300])
        return outcome

    async def _remove_when_back(self, host: str, run_id: str) -> None:
        """A run stopped while its host was away: stop and remove its container once the host answers."""
        with contextlib.suppress(Exception):
            await self.ctx.runner.wait_for_host(host)
            handle = await self.ctx.runner.attach(run_id)
            await handle.stop()
            await self.ctx.runner.cleanup(run_id)

    def _spawn(self, live: _Live, ws: Any, start: Callable[[], Any]) -> None:
        self.ctx.publish(RunChanged(at=self.ctx.clock(), run=live.run))
        assert self._tg is not None, "runs are supervised inside run()"
        self._tg.start_soon(self._supervise, live, ws, start)

    async def _supervise(self, live: _Live, ws: Any, start: Callable[[], Any]) -> None:
        with anyio.CancelScope() as scope:
            live.scope = scope
            try:
                outcome = await self._follow(live, ws, start)
                with anyio.CancelScope(shield=True):
                    await self._finish(live, ws, outcome)
            finally:
                if live.log is not None:
                    live.log.close()
        if scope.cancelled_caught:
            self._live.pop(live.run.run_id, None)

    def _on_lines(self, live: _Live, batch: tuple[str, ...]) -> None:
        self._account(live, live.sup.usage)
        now = time.monotonic()
        if now - live.lines_saved_at >= LINES_SAVE_S:  # a re-attach after a restart skips what the log holds
            live.lines_saved_at = now
            self.ctx.set_extras(live.run.run_id, output_lines=int(getattr(live.sup, "lines_seen", 0)))
        last = next((line for line in reversed(batch) if line.strip()), "")
        if last:
            live.run = dataclasses.replace(live.run, last_line=last[-300:])
        self.ctx.publish(RunLogLines(at=self.ctx.clock(), run_id=live.run.run_id, lines=tuple(batch)))

    def _account(self, live: _Live, usage: Usage) -> None:
        """Record the spend since the last look, so daily and issue budgets see it while the run goes on."""
        delta = usage_minus(usage, live.usage)
        if delta.tokens or delta.cost_usd or delta.cached_tokens:
            self.ctx.journal.add_usage(live.run.run_id, live.run.issue, delta)
            live.usage = usage
            live.run = dataclasses.replace(live.run, usage=usage)
            self.ctx.wake()

    async def _finish(self, live: _Live, ws: Any, outcome: Any) -> None:
        self._account(live, outcome.usage)
        run = live.run
        result: EngineResult = outcome.result
        state, reason, code = outcome.state, outcome.reason, outcome.exit_code
        if live.kill is not None:
            state, reason = live.kill
        extras: dict[str, Any] = {}
        try:
            if state == RunState.SUCCEEDED and run.role == Role.DEV:
                made = await self.ctx.workspaces.collect(ws, base=self.ctx.base)
                extras.update(commits=len(made.commits), lines=made.lines_changed, files=list(made.paths),
                              head_sha=made.head_sha, bytes=int(getattr(made, "bytes_changed", 0)),
                              binary=list(getattr(made, "binary_files", ())),
                              rewritten=bool(getattr(made, "rewritten", False)),
                              unresolved=list(getattr(made, "unresolved", ())))
                if not made.commits:
                    state, reason = RunState.FAILED, "the run made no commits"
            elif state == RunState.SUCCEEDED and run.role == Role.QA:
                tests = self.ctx.extras(run.run_id).get("tests") or {}
                if tests and not tests.get("passed"):
                    verdict: Verdict | None = Verdict.CHANGES
                    findings: tuple[str, ...] = (qa_role.test_failure_finding(
                        self.ctx.config.policy.test_command, tests.get("exit_code"), tests.get("output", "")),)
                else:
                    parsed = qa_role.parse_message(result.summary)
                    verdict = result.verdict or parsed.verdict
                    findings = tuple(result.findings) or parsed.findings
                if verdict is None:
                    state, reason = RunState.FAILED, "the review gave no verdict"
                else:
                    extras.update(verdict=verdict.value, findings=list(findings))
                    if run.pr is not None:
                        self.ctx.journal.record_qa_round(run.pr, run.qa_round, head_sha=self.ctx.extras(run.run_id).get(
                            "head_sha", ""), verdict=verdict, findings_hash=findings_hash(findings))
            elif state == RunState.SUCCEEDED and run.role == Role.PM:
                slots = int(self.ctx.extras(run.run_id).get("slots", self.ctx.config.policy.max_open_proposals))
                open_titles = [i.title for i in await self.ctx.forge.list_issues()]
                proposals = pm_role.parse_message(result.summary, open_titles=open_titles, limit=slots)
                await self._create_proposals(proposals, slots)
        except Exception as exc:
            log.exception("collecting the result of %s failed", run.run_id)
            state, reason = RunState.FAILED, f"cannot collect the result: {exc}"[:300]
        if extras:
            self.ctx.set_extras(run.run_id, **extras)
        ended = dataclasses.replace(run, state=state, ended_at=self.ctx.clock(), exit_code=code, reason=reason,
                                    usage=live.usage, last_line=outcome.last_line or run.last_line)
        self.ctx.journal.upsert_run(ended)
        self._live.pop(run.run_id, None)
        with contextlib.suppress(Exception):
            self.ctx.workspaces.finish(run.run_id)
        self.ctx.publish(RunChanged(at=self.ctx.clock(), run=ended))
        self.ctx.wake()


def _processes_of_workspaces(root: Path, me: int) -> list[tuple[int, str]]:
    """(pid, run id) of every process whose HOME lies inside a run's dir under `root` (Linux /proc; none
    elsewhere). Engines and the test command give each run a HOME in its scratch dir; nothing else has one."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    prefix = (str(Path(root).resolve()) + os.sep).encode()
    found: list[tuple[int, str]] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            if item.startswith(b"HOME=") and item[5:].startswith(prefix):
                run_id = item[5 + len(prefix):].split(b"/", 1)[0].decode(errors="replace")
                found.append((int(entry.name), run_id))
                break
    return found

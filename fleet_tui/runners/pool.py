"""A pool of Docker hosts: where each new run goes (`place`, a pure function), which host each run lives on,
and which hosts answer right now.

Placement takes the host with the most free slots that is reachable and has the image; what a host has is
cached and looked at again when a start on it fails, or every few seconds while it is down or lacks the
image. A host that stops answering keeps its runs: they are neither killed nor counted as failed, the
supervisor shows them as "host unreachable" and follows them again when `wait_for_host` returns. Each host
is one `DockerRunner` (all of today's guarantees: instance labels, never another fleet's containers, logs
from the start on re-attach, bounded waits). With no `[[runner.hosts]]` the pool is the one engine of
$DOCKER_HOST (or the local socket), so there is a single code path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from fleet_tui.config import DockerHostConfig, RunnerConfig
from fleet_tui.runners.base import HostUnreachable, LiveRun, RunSpec
from fleet_tui.runners.docker import SCRATCH, WORKDIR, DockerRunHandle, DockerRunner, DockerUnavailable, ImageMissing
from fleet_tui.runners.local import RunnerError

RECHECK_S = 5.0  # how often a host that is down (or lacks the image) is looked at again


@dataclass(frozen=True, slots=True)
class HostSlots:
    """What placement knows of one host."""

    name: str
    max_runs: int
    running: int
    reachable: bool | None  # None: not looked at yet
    has_image: bool | None  # None: not known yet


def place(hosts: Sequence[HostSlots]) -> str | None:
    """The host a new run goes to: the most free slots among the hosts that are reachable (or not looked at
    yet) and not known to lack the image; the first listed wins a tie. None when every host is full, down or
    without the image."""
    best: HostSlots | None = None
    for host in hosts:
        if host.reachable is False or host.has_image is False:
            continue
        free = host.max_runs - host.running
        if free <= 0:
            continue
        if best is None or free > best.max_runs - best.running:
            best = host
    return best.name if best is not None else None


@dataclass
class _Host:
    name: str
    max_runs: int
    runner: DockerRunner
    reachable: bool | None = None
    has_image: bool | None = None
    error: str = ""
    checked_at: float = -1e9  # monotonic
    runs: set[str] = field(default_factory=set)

    def slots(self) -> HostSlots:
        return HostSlots(self.name, self.max_runs, len(self.runs), self.reachable, self.has_image)


class PoolRunner:
    """The docker runner over one or more engines; the `Runner` protocol, plus which host each run is on."""

    kind = "docker"

    def __init__(self, config: RunnerConfig, *, instance: str, repo: str = "", labels: dict[str, str] | None = None,
                 hosts: Sequence[DockerHostConfig] | None = None, timeout_s: float = 60.0,
                 recheck_s: float = RECHECK_S, single_max_runs: int = 1_000_000) -> None:
        """`hosts`: the engines (default `config.hosts`); none: the one engine of $DOCKER_HOST, which takes
        `single_max_runs` runs (the fleet's own concurrency limits apply before it)."""
        hosts = list(config.hosts if hosts is None else hosts)
        self.config = config
        self.recheck_s = recheck_s
        self._hosts: list[_Host] = []
        if not hosts:
            runner = DockerRunner(config, instance=instance, repo=repo, labels=labels, timeout_s=timeout_s)
            self._hosts.append(_Host("", single_max_runs, runner))
        for host in hosts:
            runner = DockerRunner(config, instance=instance, repo=repo, labels=labels, timeout_s=timeout_s, host=host)
            self._hosts.append(_Host(host.label, host.max_runs, runner))
        self.instance = self._hosts[0].runner.instance
        self._by_run: dict[str, _Host] = {}
        self._changed: anyio.Event | None = None  # made on first use, inside the event loop

    # --- hosts --------------------------------------------------------------------------------

    @property
    def hosts(self) -> list[str]:
        return [host.name for host in self._hosts]

    def host_of(self, run_id: str) -> str:
        """The name of the host `run_id` is on ("" when not known, or with a single unnamed engine)."""
        host = self._by_run.get(run_id)
        return host.name if host is not None else ""

    def runner_of(self, name: str) -> DockerRunner:
        return self._host(name).runner

    def is_reachable(self, name: str) -> bool | None:
        """Whether host `name` answered when last looked at (None: not looked at yet, or no such host)."""
        host = self._find(name)
        return host.reachable if host is not None else None

    def slots(self) -> list[HostSlots]:
        return [host.slots() for host in self._hosts]

    def adopt(self, run_id: str, name: str) -> None:
        """Record that `run_id` lives on host `name` (known from the journal while the host is down)."""
        host = self._find(name)
        if host is not None:
            self._assign(run_id, host)

    def _find(self, name: str) -> _Host | None:
        return next((host for host in self._hosts if host.name == name), None)

    def _host(self, name: str) -> _Host:
        host = self._find(name)
        if host is None:
            raise RunnerError(f"no Docker host named {name!r} in [[runner.hosts]]")
        return host

    def _assign(self, run_id: str, host: _Host) -> None:
        old = self._by_run.get(run_id)
        if old is not None and old is not host:
            old.runs.discard(run_id)
        self._by_run[run_id] = host
        host.runs.add(run_id)

    def _release(self, run_id: str) -> None:
        host = self._by_run.pop(run_id, None)
        if host is not None:
            host.runs.discard(run_id)
            self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_for_change(self, at_most: float) -> None:
        """Until a slot frees or a host comes or goes, or `at_most` seconds."""
        if self._changed is None:
            self._changed = anyio.Event()
        with anyio.move_on_after(at_most):
            await self._changed.wait()

    def _mark(self, host: _Host, *, reachable: bool, error: str = "") -> None:
        changed = host.reachable is not reachable
        host.reachable, host.error, host.checked_at = reachable, error, time.monotonic()
        if changed:
            self._notify()

    async def probe(self, name: str) -> bool:
        """Look at host `name` now: whether it answers (and, when it does, whether it has the image)."""
        return await self._probe(self._host(name))

    async def _probe(self, host: _Host) -> bool:
        image = self.config.image

        def look(api: object) -> bool:
            import docker.errors

            try:
                api.inspect_image(image)  # type: ignore[attr-defined]
            except docker.errors.ImageNotFound:
                return False
            return True

        try:
            with anyio.fail_after(30):
                has_image = await host.runner.call(look)
        except (HostUnreachable, TimeoutError) as exc:
            self._mark(host, reachable=False, error=str(exc) or "no answer within 30 s")
            return False
        except RunnerError as exc:
            self._mark(host, reachable=False, error=str(exc))
            return False
        host.has_image = has_image
        self._mark(host, reachable=True)
        return True

    async def _refresh(self) -> None:
        """Look again at the hosts not looked at yet, and those down or without the image for a while."""
        now = time.monotonic()
        stale = [host for host in self._hosts
                 if host.reachable is None or ((host.reachable is False or host.has_image is False)
                                               and now - host.checked_at >= self.recheck_s)]
        if stale:
            async with anyio.create_task_group() as tg:
                for host in stale:
                    tg.start_soon(self._probe, host)

    async def wait_for_host(self, name: str) -> None:
        """Return once host `name` answers again (looked at every `recheck_s`)."""
        host = self._host(name)
        while not await self._probe(host):
            await self._wait_for_change(self.recheck_s)

    # --- the Runner protocol ------------------------------------------------------------------

    def paths(self, spec_workspace: Path, spec_scratch: Path) -> tuple[str, str]:
        return WORKDIR, SCRATCH

    async def start(self, spec: RunSpec) -> DockerRunHandle:
        """Start `spec` on the host `place` picks. A host that turns out down, or without the image, is
        marked so and the next one is tried; with none free the start waits for a slot (up to the run's
        timeout), as a queue would."""
        give_up = time.monotonic() + max(30.0, float(spec.timeout_s))
        while True:
            await self._refresh()
            name = place(self.slots())
            if name is None:
                self._check_image_anywhere()
                if time.monotonic() >= give_up:
                    raise RunnerError(self._why_no_host())
                await self._wait_for_change(min(self.recheck_s, max(0.0, give_up - time.monotonic())))
                continue
            host = self._host(name)
            self._assign(spec.run_id, host)
            try:
                handle = await host.runner.start(spec)
            except HostUnreachable as exc:
                self._release(spec.run_id)
                self._mark(host, reachable=False, error=str(exc))
                continue
            except ImageMissing:
                self._release(spec.run_id)
                host.has_image, host.checked_at = False, time.monotonic()
                continue
            except BaseException:
                self._release(spec.run_id)
                raise
            handle.host = host.name
            return handle

    def _check_image_anywhere(self) -> None:
        """Every host answers and none has the image: no wait helps, say what to do."""
        if all(host.reachable and host.has_image is False for host in self._hosts):
            where = ", ".join(host.name or host.runner.where for host in self._hosts)
            raise ImageMissing(f"image {self.config.image!r} is on no Docker host ({where}); build it there with "
                               "`fleet-tui image build` (or docker save | docker -H HOST load)")

    def _why_no_host(self) -> str:
        parts = []
        for host in self._hosts:
            label = host.name or host.runner.where
            if host.reachable is False:
                parts.append(f"{label}: unreachable ({host.error[:120]})")
            elif host.has_image is False:
                parts.append(f"{label}: no image {self.config.image!r}")
            else:
                parts.append(f"{label}: {len(host.runs)}/{host.max_runs} runs")
        return "no Docker host could take the run: " + "; ".join(parts)

    async def find_runs(self) -> list[LiveRun]:
        """This instance's runs on every host that answers. A host that does not is marked down (its runs
        stay where the journal says they are); when none answers, the first host's error is raised."""
        found: dict[str, list[LiveRun]] = {}
        errors: dict[str, BaseException] = {}

        async def listing(host: _Host) -> None:
            try:
                with anyio.fail_after(60):
                    found[host.name] = await host.runner.find_runs()
            except (HostUnreachable, RunnerError, TimeoutError) as exc:  # one host's trouble is not the pool's
                errors[host.name] = exc
                self._mark(host, reachable=False, error=str(exc) or "no answer within 60 s")

        async with anyio.create_task_group() as tg:
            for host in self._hosts:
                tg.start_soon(listing, host)
        if not found:
            first = errors[self._hosts[0].name]
            raise first if isinstance(first, DockerUnavailable) else DockerUnavailable(str(first))
        runs = []
        for host in self._hosts:
            if host.name not in found:
                continue
            if host.reachable is not True:
                self._mark(host, reachable=True)
            for run in found[host.name]:
                self._assign(run.run_id, host)
                runs.append(run)
        return runs

    async def _locate(self, run_id: str) -> _Host:
        """The host of `run_id`: the one recorded, else the first answering host that has it."""
        host = self._by_run.get(run_id)
        if host is not None:
            return host
        for host in self._hosts:
            if host.reachable is False:
                continue
            try:
                runs = await host.runner.find_runs()
            except HostUnreachable as exc:
                self._mark(host, reachable=False, error=str(exc))
                continue
            if any(run.run_id == run_id for run in runs):
                self._assign(run_id, host)
                return host
        raise RunnerError(f"no container for run {run_id} of this fleet on any Docker host")

    async def attach(self, run_id: str, *, since: float | None = None, tail: int | None = None) -> DockerRunHandle:
        host = await self._locate(run_id)
        try:
            handle = await host.runner.attach(run_id, since=since, tail=tail)
        except HostUnreachable as exc:
            self._mark(host, reachable=False, error=str(exc))
            raise
        handle.host = host.name
        return handle

    async def collect(self, run_id: str, scratch: Path) -> None:
        host = await self._locate(run_id)
        try:
            await host.runner.collect(run_id, scratch)
        except HostUnreachable as exc:
            self._mark(host, reachable=False, error=str(exc))
            raise

    async def cleanup(self, run_id: str) -> None:
        """Remove the run's container from its host; its slot is free again."""
        host = self._by_run.get(run_id)
        if host is None:
            try:
                host = await self._locate(run_id)
            except RunnerError:
                return
        try:
            await host.runner.cleanup(run_id)
        except HostUnreachable as exc:
            self._mark(host, reachable=False, error=str(exc))
            raise
        self._release(run_id)

    async def ping(self) -> str:
        """The first answering engine's version; `DockerUnavailable` when none answers."""
        error: BaseException | None = None
        for host in self._hosts:
            try:
                return await host.runner.ping()
            except HostUnreachable as exc:
                error = error or exc
        assert error is not None
        raise error

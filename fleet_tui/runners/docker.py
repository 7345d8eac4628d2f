"""The Docker runner: one container per run, on any Docker engine (`DOCKER_HOST` unix://, tcp://, ssh://).

The container gets the workspace at /workspace and the scratch dir at /fleet, the image, limits, network
mode and non-root user from config, the Invocation's env and nothing else, and labels `fleet.run_id`,
`fleet.issue`, `fleet.role` (plus `fleet.timeout_s`) so a restarted orchestrator finds and re-attaches to
it. Containers are never auto-removed: the handle waits with a timeout, kills on timeout or stop, the
caller collects the exit code and last logs, then `cleanup()` removes the container.

The docker SDK is blocking: every call runs in a worker thread with its own client. Log streams and waits
use clients without a read timeout (the default one ends a quiet stream silently after 60 s), and a log
stream that breaks while the container still runs is reopened from the last timestamp it saw.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from fleet_tui.config import RunnerConfig
from fleet_tui.model import Role
from fleet_tui.runners.base import LiveRun, RunSpec
from fleet_tui.runners.local import TIMEOUT_EXIT, LineSplitter, RunnerError

if TYPE_CHECKING:
    from docker import APIClient

WORKDIR = "/workspace"
SCRATCH = "/fleet"
LABEL_RUN = "fleet.run_id"
LABEL_ISSUE = "fleet.issue"
LABEL_ROLE = "fleet.role"
LABEL_TIMEOUT = "fleet.timeout_s"

_T = TypeVar("_T")
_END = object()  # the log reader is done
_WAKE = object()  # releases a getter blocked on an abandoned stream
_QUEUE_FRAMES = 4096  # frames buffered between the reader thread and the consumer (backpressure beyond)


class DockerUnavailable(RunnerError):
    """The Docker engine cannot be reached."""


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def unreachable_message(exc: BaseException) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # What to do comes before the engine's own words, which can be long and get cut on screen.
    return (f'cannot reach the Docker engine at {docker_host()} (start Docker, or set runner.kind = "local"): '
            f"{detail[:300]}")


class _Clients:
    """One docker client per worker thread, and kind: with the normal timeout, or none (streams, waits)."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._local = threading.local()
        self._version: str | None = None

    def get(self, *, stream: bool = False) -> APIClient:
        attr = "stream" if stream else "plain"
        client = getattr(self._local, attr, None)
        if client is None:
            import docker
            import docker.errors

            try:
                client = docker.from_env(timeout=None if stream else self._timeout,
                                         version=self._version).api
            except docker.errors.DockerException as exc:
                raise DockerUnavailable(unreachable_message(exc)) from None
            self._version = client.api_version  # later clients skip the version round trip
            setattr(self._local, attr, client)
        return client


def _parse_ts(raw: bytes) -> tuple[int, int] | None:
    """Docker's RFC 3339 log timestamp as (epoch seconds, nanoseconds), comparable without float loss."""
    match = re.fullmatch(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z", raw)
    if not match:
        return None
    secs = int(datetime.fromisoformat(match.group(1).decode() + "+00:00").timestamp())
    return secs, int((match.group(2) or b"0").ljust(9, b"0"))


def _container_time(value: str) -> float:
    """A container's StartedAt/Created time as epoch seconds (0 when unset)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?", value or "")
    if not match or match.group(1).startswith("0001"):
        return 0.0
    secs = datetime.fromisoformat(match.group(1) + "+00:00").timestamp()
    return secs + float("0." + (match.group(2) or "0"))


class DockerRunHandle:
    """A run's container: stream its logs (once), wait for it with its timeout, stop it."""

    def __init__(self, runner: DockerRunner, run_id: str, container_id: str, *, role: Role,
                 issue: int | None, started_at: float, timeout_s: float, since: float | None = None,
                 tail: int | None = None) -> None:
        self.run_id = run_id
        self.container_id = container_id
        self.role = role
        self.issue = issue
        self.started_at = started_at
        self.timed_out = False
        self.stopped = False
        self.exit_code: int | None = None
        self.oom_killed = False
        self._runner = runner
        self._deadline = started_at + timeout_s
        self._since = since
        self._tail = tail
        self._done = anyio.Event()
        self._waiting = False

    # --- logs ---------------------------------------------------------------------------------

    async def lines(self) -> AsyncIterator[str]:
        frames: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_FRAMES)
        stop = threading.Event()
        holder: dict[str, Any] = {}
        reader = threading.Thread(target=self._read_logs, args=(frames, stop, holder),
                                  name=f"fleet-logs-{self.run_id}", daemon=True)
        reader.start()
        splitter = LineSplitter()
        try:
            while True:
                batch = await anyio.to_thread.run_sync(_take_batch, frames, abandon_on_cancel=True,
                                                       limiter=self._runner.limiter)
                ended = False
                chunks: list[bytes] = []
                for item in batch:
                    if item is _END:
                        ended = True
                    elif isinstance(item, bytes):
                        chunks.append(item)
                for line in splitter.feed(b"".join(chunks)):
                    yield line
                if ended:
                    break
            for line in splitter.flush():
                yield line
            if isinstance(holder.get("error"), BaseException):
                raise holder["error"]
        finally:
            stop.set()
            stream = holder.get("stream")
            if stream is not None:
                try:
                    stream.close()
                except Exception:  # noqa: BLE001 - closing a dead stream may fail in many ways
                    pass
            try:
                frames.put_nowait(_WAKE)
            except queue.Full:
                pass

    def _read_logs(self, frames: queue.Queue[Any], stop: threading.Event, holder: dict[str, Any]) -> None:
        """Thread: follow the container's log, frame by frame, reopening the stream if it breaks early."""
        import docker.errors
        import requests

        def put(item: object) -> None:
            while not stop.is_set():
                try:
                    frames.put(item, timeout=0.5)
                    return
                except queue.Full:
                    continue

        since: float | None = self._since
        tail: int | str = self._tail if self._tail is not None else "all"
        last: tuple[int, int] | None = None
        failures = 0
        try:
            api = self._runner.clients.get(stream=True)
            while not stop.is_set():
                try:
                    kwargs: dict[str, Any] = {"stream": True, "follow": True, "timestamps": True, "tail": tail}
                    if since:
                        kwargs["since"] = since
                    stream = api.logs(self.container_id, **kwargs)
                    holder["stream"] = stream
                    for frame in stream:
                        stamp, _, payload = frame.partition(b" ")
                        key = _parse_ts(stamp)
                        if key is None:  # no timestamp prefix: keep the frame as it is
                            put(frame)
                            continue
                        if last is not None and key <= last:
                            continue  # seen before the stream was reopened
                        last = key
                        put(payload)
                except docker.errors.NotFound:
                    break
                except (requests.exceptions.RequestException, docker.errors.APIError, OSError) as exc:
                    failures += 1
                    if stop.is_set() or failures > 5:
                        holder["error"] = RunnerError(f"log stream of run {self.run_id} broke: {exc}")
                        break
                    stop.wait(min(2.0, 0.2 * failures))
                if stop.is_set() or not self._runner.is_running(self.container_id):
                    break
                # The stream ended but the container lives on: reopen from the last line seen.
                tail = "all"
                since = (last[0] + last[1] / 1e9) if last else (since or None)
        except RunnerError as exc:
            holder["error"] = exc
        finally:
            put(_END)

    async def last_logs(self, n: int = 50) -> list[str]:
        """The last `n` lines the container wrote (for the outcome, after the run ended)."""
        def tail() -> bytes:
            return self._runner.clients.get().logs(self.container_id, stdout=True, stderr=True, tail=n)
        try:
            data = await self._runner.call(tail)
        except RunnerError:
            return []
        splitter = LineSplitter()
        return [*splitter.feed(data), *splitter.flush()]

    # --- wait / stop --------------------------------------------------------------------------

    async def wait(self) -> int:
        if self._waiting:
            await self._done.wait()
            assert self.exit_code is not None
            return self.exit_code
        self._waiting = True
        try:
            with anyio.move_on_after(max(0.0, self._deadline - time.time())) as scope:
                code = await self._runner.call(self._blocking_wait, long=True)
            if scope.cancelled_caught and not self.stopped:
                self.timed_out = True
                await self._runner.kill(self.container_id)
                code = await self._runner.call(self._blocking_wait, long=True)
            self.exit_code = TIMEOUT_EXIT if self.timed_out else code
        finally:
            self._done.set()
        return self.exit_code

    def _blocking_wait(self) -> int:
        import docker.errors

        api = self._runner.clients.get(stream=True)
        try:
            result = api.wait(self.container_id)
        except docker.errors.NotFound:
            raise RunnerError(f"the container of run {self.run_id} is gone") from None
        try:
            self.oom_killed = bool(api.inspect_container(self.container_id)["State"].get("OOMKilled"))
        except docker.errors.APIError:
            pass
        return int(result.get("StatusCode", -1))

    async def stop(self) -> None:
        if self.exit_code is None:
            self.stopped = True
        await self._runner.kill(self.container_id)


def _take_batch(frames: queue.Queue[Any]) -> list[Any]:
    """Thread: block for one frame, then take whatever else is already there."""
    batch = [frames.get()]
    while len(batch) < 4096:
        try:
            batch.append(frames.get_nowait())
        except queue.Empty:
            break
    return batch


class DockerRunner:
    """Starts runs as containers on the Docker engine `docker.from_env()` finds."""

    kind = "docker"

    def __init__(self, config: RunnerConfig, *, labels: dict[str, str] | None = None, timeout_s: float = 60.0,
                 grace_s: float = 2.0, max_threads: int = 256, init: bool = True) -> None:
        """`labels` go on every container and narrow `find_runs()` (e.g. one orchestrator's repository).
        `init`: run Docker's init as PID 1, so the agent gets signals (a stop's SIGTERM) and zombies are reaped."""
        self.config = config
        self.labels = dict(labels or {})
        self.clients = _Clients(timeout_s)
        self.limiter = anyio.CapacityLimiter(max_threads)  # streams and waits block a thread each
        self._grace_s = grace_s
        self._init = init

    def paths(self, spec_workspace: Path, spec_scratch: Path) -> tuple[str, str]:
        return WORKDIR, SCRATCH

    async def call(self, fn: Callable[[], _T], *, long: bool = False) -> _T:
        """Run a blocking SDK call in a thread; Docker errors become `RunnerError`s with a clear message."""
        import docker.errors
        import requests

        def guarded() -> _T:
            try:
                return fn()
            except RunnerError:
                raise
            except requests.exceptions.ConnectionError as exc:
                raise DockerUnavailable(unreachable_message(exc)) from None
            except docker.errors.DockerException as exc:
                raise RunnerError(f"Docker: {exc}") from None

        return await anyio.to_thread.run_sync(guarded, abandon_on_cancel=long, limiter=self.limiter)

    async def ping(self) -> str:
        """The engine's version; raises `DockerUnavailable` when it cannot be reached."""
        def version() -> str:
            return str(self.clients.get().version().get("Version", "?"))
        return await self.call(version)

    async def start(self, spec: RunSpec) -> DockerRunHandle:
        user = self.config.user.strip()
        if user in ("", "root", "0") or user.startswith(("0:", "root:")):
            raise RunnerError(f'runner.user is {user!r}: agents never run as root; use a uid like "1000:1000"')
        image = self.config.image
        labels = {**self.labels, **spec.labels, LABEL_RUN: spec.run_id, LABEL_ISSUE: "" if spec.issue is None
                  else str(spec.issue), LABEL_ROLE: str(spec.role), LABEL_TIMEOUT: str(spec.timeout_s)}
        name = "fleet-" + re.sub(r"[^A-Za-z0-9_.-]", "-", spec.run_id)

        def create_and_start() -> tuple[str, float]:
            import docker.errors

            api = self.clients.get()
            try:
                api.inspect_image(image)
            except docker.errors.ImageNotFound:
                raise RunnerError(f"image {image!r} is not on the Docker engine at {docker_host()}; build it "
                                  "(docker build -t fleet-agent:latest docker/) or set runner.image") from None
            host_config = api.create_host_config(
                binds={str(spec.workspace): {"bind": WORKDIR, "mode": "rw"},
                       str(spec.scratch): {"bind": SCRATCH, "mode": "rw"}},
                network_mode=spec.network or "none",
                mem_limit=self.config.memory,
                memswap_limit=self.config.memory,  # no swap beyond the memory limit
                nano_cpus=int(self.config.cpus * 1e9),
                pids_limit=self.config.pids,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                auto_remove=False,
                init=self._init,
            )
            container = api.create_container(
                image, command=list(spec.invocation.argv), name=name, user=user, working_dir=WORKDIR,
                environment=dict(spec.invocation.env), labels=labels, host_config=host_config,
                detach=True, stdin_open=False, tty=False,
                networking_config=None,
            )
            cid = container["Id"]
            try:
                api.start(cid)
            except BaseException:
                api.remove_container(cid, force=True)
                raise
            started = _container_time(api.inspect_container(cid)["State"].get("StartedAt", ""))
            return cid, started or time.time()

        cid, started_at = await self.call(create_and_start)
        return DockerRunHandle(self, spec.run_id, cid, role=spec.role, issue=spec.issue, started_at=started_at,
                               timeout_s=spec.timeout_s)

    def _filters(self, run_id: str | None = None) -> dict[str, Any]:
        wanted = [f"{k}={v}" for k, v in self.labels.items()]
        wanted.append(f"{LABEL_RUN}={run_id}" if run_id else LABEL_RUN)
        return {"label": wanted}

    async def find_runs(self) -> list[LiveRun]:
        """Every fleet container not yet cleaned up, running or exited: a run that ended while the
        orchestrator was down still has a result to collect (`attach` + `wait` returns it at once)."""
        def listing() -> list[dict[str, Any]]:
            return self.clients.get().containers(all=True, filters=self._filters())
        runs = []
        for row in await self.call(listing):
            labels = row.get("Labels") or {}
            issue = labels.get(LABEL_ISSUE, "")
            try:
                role = Role(labels.get(LABEL_ROLE, "dev"))
            except ValueError:
                continue
            runs.append(LiveRun(labels[LABEL_RUN], role, int(issue) if issue.isdigit() else None,
                                float(row.get("Created") or 0)))
        return runs

    async def attach(self, run_id: str, *, since: float | None = None, tail: int | None = None) -> DockerRunHandle:
        """A handle on the container of `run_id`. Its `lines()` start now (or at epoch `since`, or with the
        last `tail` lines); its `wait()` keeps the run's original deadline."""
        def lookup() -> dict[str, Any]:
            api = self.clients.get()
            rows = api.containers(all=True, filters=self._filters(run_id))
            if not rows:
                raise RunnerError(f"no container for run {run_id} on the Docker engine at {docker_host()}")
            return api.inspect_container(rows[0]["Id"])
        info = await self.call(lookup)
        labels = info["Config"].get("Labels") or {}
        issue = labels.get(LABEL_ISSUE, "")
        started = _container_time(info["State"].get("StartedAt", "")) or time.time()
        try:
            timeout_s = float(labels.get(LABEL_TIMEOUT, "0")) or 1e9
        except ValueError:
            timeout_s = 1e9
        if since is None and tail is None:
            since = time.time()
        return DockerRunHandle(self, run_id, info["Id"], role=Role(labels.get(LABEL_ROLE, "dev")),
                               issue=int(issue) if issue.isdigit() else None, started_at=started,
                               timeout_s=timeout_s, since=since, tail=tail)

    def is_running(self, container_id: str) -> bool:
        """Thread: whether the container still runs (False when it is gone or the engine cannot say)."""
        try:
            return bool(self.clients.get().inspect_container(container_id)["State"].get("Running"))
        except Exception:  # noqa: BLE001 - any failure means we cannot follow it further
            return False

    async def kill(self, container_id: str) -> None:
        """SIGTERM, then SIGKILL after the grace period; a container that already ended is fine."""
        import docker.errors

        def stop() -> None:
            try:
                self.clients.get().stop(container_id, timeout=max(1, int(self._grace_s)))
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: not running
                    raise
        await self.call(stop)

    async def cleanup(self, run_id: str) -> None:
        def remove() -> None:
            import docker.errors

            api = self.clients.get()
            for row in api.containers(all=True, filters=self._filters(run_id)):
                try:
                    api.remove_container(row["Id"], force=True)
                except docker.errors.NotFound:
                    pass
        await self.call(remove)

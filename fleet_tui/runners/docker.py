"""The Docker runner: one container per run, on one Docker engine: `DOCKER_HOST` (unix://, tcp://, ssh://), or
one `[[runner.hosts]]` entry given explicitly (its url and TLS files; `fleet_tui.runners.pool` places runs on a
pool of them).

The container gets the workspace at /workspace and the scratch dir at /fleet as one archive uploaded into it
before it starts (no bind mounts: a remote engine has no view of this machine's disk, and the local engine
takes the same path), and `collect()` downloads /fleet back into the scratch dir after the run
(fleet_tui/runners/transport.py). It gets the image, limits, network mode and non-root user from config,
the Invocation's env and nothing else, and labels `fleet.instance`, `fleet.repo`, `fleet.run_id`,
`fleet.issue`, `fleet.role` (plus `fleet.timeout_s`). A runner sees, attaches
to and removes only containers of its own fleet instance, so fleets sharing one engine never touch each
other's runs. Containers are never auto-removed: Docker keeps a run's whole output and exit code until
`cleanup()`, so a restarted orchestrator reads what it missed, even of a run that ended meanwhile.

The docker SDK is blocking: every call runs in a daemon thread, and no call on the way out blocks without a
bound (waits poll with a short timeout, log streams are closed from outside), so cancelling a supervisor
returns at once and the process can always exit while its containers keep running. A log stream that ends
early is reopened (container still running) or read once more without following (container ended): the
engine may close a follow stream before it has sent everything, and every line must arrive exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

from fleet_tui.config import DockerHostConfig, RunnerConfig
from fleet_tui.model import Role
from fleet_tui.runners.base import LABEL_INSTANCE, LABEL_REPO, HostUnreachable, LiveRun, RunSpec, check_instance
from fleet_tui.runners.local import TIMEOUT_EXIT, LineSplitter, RunnerError
from fleet_tui.runners.streams import END, Put, ResumePoint, follow_lines, in_daemon_thread, parse_log_ts
from fleet_tui.runners.transport import DEFAULT_LIMIT_BYTES, TransportError, pack_run, unpack_scratch

if TYPE_CHECKING:
    from docker import APIClient

WORKDIR = "/workspace"
SCRATCH = "/fleet"
LABEL_RUN = "fleet.run_id"
LABEL_ISSUE = "fleet.issue"
LABEL_ROLE = "fleet.role"
LABEL_TIMEOUT = "fleet.timeout_s"

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_QUEUE_FRAMES = 4096  # frames buffered between the reader thread and the consumer (backpressure beyond)
_POLL_S = 1.0  # one bounded wait on the engine; a cancelled wait leaves a thread for at most this long


class DockerUnavailable(RunnerError, HostUnreachable):
    """The Docker engine cannot be reached."""


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def unreachable_message(exc: BaseException, where: str | None = None) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # What to do comes before the engine's own words, which can be long and get cut on screen.
    return (f'cannot reach the Docker engine at {where or docker_host()} (start Docker, or set runner.kind = '
            f'"local"): {detail[:300]}')


def api_client(host: DockerHostConfig | None, *, timeout: float | None, version: str | None = None) -> APIClient:
    """A low-level client of one engine: `host` (its url and TLS files), or $DOCKER_HOST when None. An ssh://
    host goes through the `ssh` binary (`fleet_tui.runners.sshbridge`), so ~/.ssh/config and keys apply."""
    import docker

    if host is None:
        return docker.from_env(timeout=timeout, version=version).api
    url = host.url
    tls: Any = False
    if url.startswith("ssh://"):
        from fleet_tui.runners.sshbridge import bridge_for

        url = bridge_for(url).base_url
    elif host.tls_ca:
        import docker.tls

        tls = docker.tls.TLSConfig(client_cert=(os.path.expanduser(host.tls_cert), os.path.expanduser(host.tls_key)),
                                   ca_cert=os.path.expanduser(host.tls_ca), verify=True)
        url = "https://" + url.removeprefix("tcp://")
    return docker.APIClient(base_url=url, tls=tls, timeout=timeout, version=version or "auto")


class _Clients:
    """Docker clients for worker threads: a pool of ordinary ones (lent to one call at a time), and a fresh
    one without a read timeout for each log stream (closed from outside when the stream is abandoned)."""

    def __init__(self, timeout: float, host: DockerHostConfig | None = None) -> None:
        self._timeout = timeout
        self._host = host
        self.where = host.url if host is not None else docker_host()
        self._version: str | None = None
        self._idle: list[APIClient] = []
        self._lock = threading.Lock()

    def new(self, *, stream: bool = False) -> APIClient:
        import docker.errors
        import requests

        try:
            client = api_client(self._host, timeout=None if stream else self._timeout, version=self._version)
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise DockerUnavailable(unreachable_message(exc, self.where)) from None
        self._version = client.api_version  # later clients skip the version round trip
        return client

    @contextmanager
    def lend(self) -> Iterator[APIClient]:
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = self.new()
        try:
            yield client
        finally:
            with self._lock:
                if len(self._idle) < 32:
                    self._idle.append(client)
                    client = None
            if client is not None:
                client.close()


def _owner_of(user: str) -> tuple[int, int] | None:
    """The uid:gid the run's files are given in the container (None for a user name: kept as on the host)."""
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return None
    return int(uid), int(gid or uid)


def _container_time(value: str) -> float:
    """A container's StartedAt/Created time as epoch seconds (0 when unset)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?", value or "")
    if not match or match.group(1).startswith("0001"):
        return 0.0
    secs = datetime.fromisoformat(match.group(1) + "+00:00").timestamp()
    return secs + float("0." + (match.group(2) or "0"))


def _timed_out(exc: BaseException) -> bool:
    return "timed out" in str(exc).lower()


class ImageMissing(RunnerError):
    """The agent image is not on the engine."""


class DockerRunHandle:
    """A run's container: stream its logs (once), wait for it with its timeout, stop it."""

    def __init__(self, runner: DockerRunner, run_id: str, container_id: str, *, role: Role,
                 issue: int | None, started_at: float, timeout_s: float, since: float | None = None,
                 tail: int | None = None) -> None:
        self.run_id = run_id
        self.container_id = container_id
        self.host = runner.host_label  # the pool host it runs on ("" for the one engine of $DOCKER_HOST)
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
        self._stop_done: anyio.Event | None = None

    # --- logs ---------------------------------------------------------------------------------

    def lines(self) -> AsyncIterator[str]:
        """Every line from the start of the run (or from `since`/`tail` given to `attach`) to its end."""
        return follow_lines(self._read_logs, name=f"fleet-logs-{self.run_id}", limiter=self._runner.limiter,
                            close=_close_stream, queue_size=_QUEUE_FRAMES)

    def _read_logs(self, put: Put, stop: threading.Event, holder: dict[str, Any]) -> None:
        """Thread: follow the container's log frame by frame. A stream that ends while the container runs
        is reopened; once it has ended, one last read without following picks up what the follow missed."""
        import docker.errors
        import requests

        resume = ResumePoint()
        since: float | None = self._since
        tail: int | str = self._tail if self._tail is not None else "all"
        failures = 0
        follow = True
        try:
            api = self._runner.clients.new(stream=True)
            holder["api"] = api
            while not stop.is_set():
                try:
                    kwargs: dict[str, Any] = {"stream": True, "follow": follow, "timestamps": True, "tail": tail}
                    if since:
                        kwargs["since"] = since
                    stream = api.logs(self.container_id, **kwargs)
                    holder["stream"] = stream
                    if stop.is_set():
                        break
                    for frame in stream:
                        stamp, _, payload = frame.partition(b" ")
                        key = parse_log_ts(stamp)
                        if key is None:  # no timestamp prefix: keep the frame as it is
                            put(frame)
                        elif resume.accept(key):
                            put(payload)
                except (docker.errors.APIError, requests.exceptions.RequestException, OSError) as exc:
                    if isinstance(exc, docker.errors.APIError) and exc.status_code in (404, 409):  # gone, or going
                        holder["error"] = RunnerError(f"the container of run {self.run_id} was removed before all "
                                                      "its output was read")
                        break
                    _log.debug("log stream of %s broke: %r", self.run_id, exc)
                    failures += 1
                    if stop.is_set() or failures > 5:
                        if not stop.is_set():
                            holder["error"] = RunnerError(f"log stream of run {self.run_id} broke: {exc}")
                        break
                    stop.wait(min(2.0, 0.2 * failures))
                    tail, since = "all", resume.reopen() or since
                    continue
                if stop.is_set() or not follow:
                    break
                # The stream ended. The engine may end a follow stream before it has sent everything:
                # reopen it while the container runs, else read the rest once without following.
                follow = self._runner.is_running(self.container_id, api)
                _log.debug("log stream of %s ended; container running: %s", self.run_id, follow)
                tail, since = "all", resume.reopen() or since
        except RunnerError as exc:
            holder["error"] = exc
        finally:
            put(END)
            _close_client(holder.pop("api", None))

    async def last_logs(self, n: int = 50) -> list[str]:
        """The last `n` lines the container wrote (for the outcome, after the run ended)."""
        def tail(api: APIClient) -> bytes:
            return api.logs(self.container_id, stdout=True, stderr=True, tail=n)
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
                code = await self._wait_for_exit()
            if scope.cancelled_caught and not self.stopped:
                self.timed_out = True
                await self._runner.kill(self.container_id)
                code = await self._wait_for_exit()
            self.exit_code = TIMEOUT_EXIT if self.timed_out else code
        finally:
            if self.exit_code is not None:
                self._done.set()
            else:
                self._waiting = False  # cancelled: a later wait starts over
        return self.exit_code

    async def _wait_for_exit(self) -> int:
        """Short bounded waits on the engine, so a cancelled wait leaves no thread blocked for long."""
        while True:
            code = await self._runner.call(self._wait_briefly)
            if code is not None:
                return code

    def _wait_briefly(self, api: APIClient) -> int | None:
        import docker.errors
        import requests

        try:
            result = api.wait(self.container_id, timeout=_POLL_S)
        except docker.errors.NotFound:
            raise RunnerError(f"the container of run {self.run_id} is gone") from None
        except requests.exceptions.RequestException as exc:
            if _timed_out(exc):
                return None
            raise
        try:
            self.oom_killed = bool(api.inspect_container(self.container_id)["State"].get("OOMKilled"))
        except docker.errors.APIError:
            pass
        return int(result.get("StatusCode", -1))

    async def stop(self) -> None:
        """Kill the container; a stop while another is under way waits for that one (one engine call)."""
        if self.exit_code is None:
            self.stopped = True
        if self._stop_done is not None:
            await self._stop_done.wait()
            return
        self._stop_done = anyio.Event()
        try:
            await self._runner.kill(self.container_id)
        finally:
            self._stop_done.set()
            self._stop_done = None


def _close_stream(holder: dict[str, Any]) -> None:
    """Unblock a reader thread stuck in a quiet stream (the SDK's close shuts the socket down)."""
    stream = holder.get("stream")
    if stream is not None:
        with contextlib.suppress(Exception):  # closing a dead stream may fail in many ways
            stream.close()


def _close_client(api: Any) -> None:
    if api is not None:
        with contextlib.suppress(Exception):
            api.close()


class DockerRunner:
    """Starts runs as containers on the Docker engine `docker.from_env()` finds, and sees only its own."""

    kind = "docker"

    def __init__(self, config: RunnerConfig, *, instance: str, repo: str = "", labels: dict[str, str] | None = None,
                 timeout_s: float = 60.0, grace_s: float = 2.0, max_threads: int = 256, init: bool = True,
                 host: DockerHostConfig | None = None) -> None:
        """`instance`: this fleet's id (`fleet_instance_id()`); containers of other instances are invisible
        here. `repo`: the forge repository, a label for people reading `docker ps`. `labels` go on every
        container too. `init`: run Docker's init as PID 1, so the agent gets signals and zombies are reaped.
        `host`: the engine (a `[[runner.hosts]]` entry); None: $DOCKER_HOST or the local socket."""
        self.instance = check_instance(instance)
        self.repo = repo
        self.config = config
        self.host = host
        self.host_label = host.label if host is not None else ""
        self.labels = {**(labels or {}), LABEL_INSTANCE: self.instance, LABEL_REPO: repo}
        self.clients = _Clients(timeout_s, host)
        self.where = self.clients.where
        self.limiter = anyio.CapacityLimiter(max_threads)  # engine calls in flight
        self._grace_s = grace_s
        self._init = init
        self.collect_limit_bytes = DEFAULT_LIMIT_BYTES

    def paths(self, spec_workspace: Path, spec_scratch: Path) -> tuple[str, str]:
        return WORKDIR, SCRATCH

    async def call(self, fn: Callable[[APIClient], _T]) -> _T:
        """Run a blocking SDK call with a lent client in a daemon thread; Docker errors become `RunnerError`s
        with a clear message. Cancelling returns at once: the thread finishes (or not) on its own, and never
        keeps the process from exiting."""
        import docker.errors
        import requests
        import urllib3.exceptions

        def guarded() -> _T:
            try:
                with self.clients.lend() as api:
                    return fn(api)
            except RunnerError:
                raise
            except (requests.exceptions.ConnectionError, ConnectionError, urllib3.exceptions.ProtocolError) as exc:
                raise DockerUnavailable(unreachable_message(exc, self.where)) from None
            except docker.errors.DockerException as exc:
                raise RunnerError(f"Docker: {exc}") from None

        async with self.limiter:
            return await in_daemon_thread(guarded)

    async def ping(self) -> str:
        """The engine's version; raises `DockerUnavailable` when it cannot be reached."""
        return await self.call(lambda api: str(api.version().get("Version", "?")))

    def _labels_of(self, spec: RunSpec) -> dict[str, str]:
        return {**spec.labels, **self.labels, LABEL_RUN: spec.run_id,
                LABEL_ISSUE: "" if spec.issue is None else str(spec.issue), LABEL_ROLE: str(spec.role),
                LABEL_TIMEOUT: str(spec.timeout_s)}

    async def start(self, spec: RunSpec) -> DockerRunHandle:
        user = self.config.user.strip()
        if user in ("", "root", "0") or user.startswith(("0:", "root:")):
            raise RunnerError(f'runner.user is {user!r}: agents never run as root; use a uid like "1000:1000"')
        image = self.config.image
        owner = _owner_of(user)
        labels = self._labels_of(spec)
        name = "fleet-" + re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.instance}-{spec.run_id}")

        def create_and_start(api: APIClient) -> tuple[str, float]:
            import docker.errors

            try:
                api.inspect_image(image)
            except docker.errors.ImageNotFound:
                raise ImageMissing(f"image {image!r} is not on the Docker engine at {self.where}; build it with "
                                  "`fleet-tui image build` (`--offline` where no registry is reachable) or set "
                                  "runner.image") from None
            host_config = api.create_host_config(
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
                with pack_run(spec.workspace, spec.scratch, owner=owner) as archive:
                    if not api.put_archive(cid, "/", archive):
                        raise RunnerError(f"the engine at {self.where} refused the run's files")
                api.start(cid)
            except BaseException:
                api.remove_container(cid, force=True)
                raise
            started = _container_time(api.inspect_container(cid)["State"].get("StartedAt", ""))
            return cid, started or time.time()

        cid, started_at = await self.call(create_and_start)
        return DockerRunHandle(self, spec.run_id, cid, role=spec.role, issue=spec.issue, started_at=started_at,
                               timeout_s=spec.timeout_s)

    async def collect(self, run_id: str, scratch: Path) -> None:
        """Download the run's /fleet into `scratch` (replacing it): its result files and, for a Dev run, the
        branch as a bundle. What comes back is checked by `unpack_scratch` (plain files only, size-capped)."""
        def download(api: APIClient) -> None:
            rows = [row for row in api.containers(all=True, filters=self._filters(run_id))
                    if self._own(row.get("Labels"), run_id)]
            if not rows:
                raise RunnerError(f"no container for run {run_id} of this fleet on the Docker engine at {self.where}")
            stream, _ = api.get_archive(rows[0]["Id"], SCRATCH)
            try:
                unpack_scratch(stream, scratch, limit_bytes=self.collect_limit_bytes)
            except TransportError as exc:
                raise RunnerError(f"run {run_id}: {exc}") from None
        await self.call(download)

    def _filters(self, run_id: str | None = None) -> dict[str, Any]:
        """This instance's containers (of one run): the engine filters, and `_own` checks again."""
        wanted = [f"{LABEL_INSTANCE}={self.instance}"]
        wanted.append(f"{LABEL_RUN}={run_id}" if run_id else LABEL_RUN)
        return {"label": wanted}

    def _own(self, labels: dict[str, str] | None, run_id: str | None = None) -> bool:
        labels = labels or {}
        return (labels.get(LABEL_INSTANCE) == self.instance and LABEL_RUN in labels
                and (run_id is None or labels[LABEL_RUN] == run_id))

    async def find_runs(self) -> list[LiveRun]:
        """This instance's containers not yet cleaned up, running or exited: a run that ended while the
        orchestrator was down still has a result to collect (`attach` + `wait` returns it at once).
        Containers of other fleet instances on the same engine are never listed."""
        def listing(api: APIClient) -> list[dict[str, Any]]:
            return api.containers(all=True, filters=self._filters())
        runs = []
        for row in await self.call(listing):
            labels = row.get("Labels") or {}
            if not self._own(labels):
                continue
            issue = labels.get(LABEL_ISSUE, "")
            try:
                role = Role(labels.get(LABEL_ROLE, "dev"))
            except ValueError:
                continue
            runs.append(LiveRun(labels[LABEL_RUN], role, int(issue) if issue.isdigit() else None,
                                float(row.get("Created") or 0), host=self.host_label))
        return runs

    async def attach(self, run_id: str, *, since: float | None = None, tail: int | None = None) -> DockerRunHandle:
        """A handle on this instance's container of `run_id`. Its `lines()` give the whole output from the
        run's start (or from epoch `since`, or the last `tail` lines); its `wait()` keeps the run's deadline."""
        def lookup(api: APIClient) -> dict[str, Any]:
            rows = [row for row in api.containers(all=True, filters=self._filters(run_id))
                    if self._own(row.get("Labels"), run_id)]
            if not rows:
                raise RunnerError(f"no container for run {run_id} of this fleet on the Docker engine at "
                                  f"{self.where}")
            return api.inspect_container(rows[0]["Id"])
        info = await self.call(lookup)
        labels = info["Config"].get("Labels") or {}
        issue = labels.get(LABEL_ISSUE, "")
        started = _container_time(info["State"].get("StartedAt", "")) or time.time()
        try:
            timeout_s = float(labels.get(LABEL_TIMEOUT, "0")) or 1e9
        except ValueError:
            timeout_s = 1e9
        try:
            role = Role(labels.get(LABEL_ROLE, "dev"))
        except ValueError:
            role = Role.DEV
        return DockerRunHandle(self, run_id, info["Id"], role=role,
                               issue=int(issue) if issue.isdigit() else None, started_at=started,
                               timeout_s=timeout_s, since=since, tail=tail)

    def is_running(self, container_id: str, api: APIClient | None = None) -> bool:
        """Thread: whether the container still runs (False when it is gone or the engine cannot say)."""
        try:
            if api is not None:
                return bool(api.inspect_container(container_id)["State"].get("Running"))
            with self.clients.lend() as lent:
                return bool(lent.inspect_container(container_id)["State"].get("Running"))
        except Exception:  # noqa: BLE001 - any failure means we cannot follow it further
            return False

    async def kill(self, container_id: str) -> None:
        """SIGTERM, then SIGKILL after the grace period; a container that already ended is fine."""
        import docker.errors

        def stop(api: APIClient) -> None:
            try:
                api.stop(container_id, timeout=max(1, int(self._grace_s)))
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: not running
                    raise
        await self.call(stop)

    async def cleanup(self, run_id: str) -> None:
        """Remove this instance's container of `run_id` (running or not); another fleet's is never touched."""
        def remove(api: APIClient) -> None:
            import docker.errors

            for row in api.containers(all=True, filters=self._filters(run_id)):
                if not self._own(row.get("Labels"), run_id):
                    continue
                try:
                    api.remove_container(row["Id"], force=True)
                except docker.errors.NotFound:
                    pass
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # 409: its removal is already under way
                        raise
        await self.call(remove)

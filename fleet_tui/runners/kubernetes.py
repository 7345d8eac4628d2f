"""The Kubernetes runner: one Job per run, through the official `kubernetes` client (kubeconfig or in-cluster).

A run's pod has two containers sharing emptyDir volumes at /workspace, /fleet and /fleet-control: `agent`
runs the Invocation once the workspace has arrived, and `keeper` only keeps the pod alive until the run's
/fleet has been collected. A pod has no view of our disk, so the workspace travels in as a tar through the
exec stream (`tar xf` in the keeper, then `/fleet-control/ready`), and the result travels back the same way
(`collect()`: `tar cf - fleet`). The agent container's exit code comes from the kubelet, never from a file the
agent could write; the keeper is what lets the orchestrator read /fleet after that.

Pods run non-root (runner.user), with no privilege escalation, all capabilities dropped, a read-only root file
system (only the emptyDirs and /tmp are writable), no service account token, resource limits from [runner],
the engine keys from the Secret `engine_secret` names (never the forge token), and `activeDeadlineSeconds`
from the run's timeout plus a margin for collecting (the cluster ends the run even while no orchestrator is
watching). Jobs carry labels `fleet.instance`, `fleet.run_id`, `fleet.role`, `fleet.issue`, `fleet.egress`
(for NetworkPolicies) and annotations with the exact run id, repository and timeout: a restarted
orchestrator lists its own Jobs, re-attaches and reads each log from the start. A runner sees, attaches to and
deletes only Jobs of its own fleet instance.

The client is blocking: every call runs in a daemon thread with a bounded request timeout, and log streams
are shut down from outside, so cancelling a supervisor returns at once. What the Job looks like is built in
`fleet_tui.runners.kubernetes_job`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio

from fleet_tui.config import RunnerConfig
from fleet_tui.model import Role
from fleet_tui.runners.base import LABEL_INSTANCE, LiveRun, RunSpec, check_instance
from fleet_tui.runners.kubernetes_job import (
    AGENT,
    ANN_RUN,
    ANN_TIMEOUT,
    CONTROL,
    KEEPER,
    LABEL_ISSUE,
    LABEL_ROLE,
    LABEL_RUN,
    SCRATCH,
    WORKDIR,
    job_manifest,
    label_value,
    valid_label_key,
)
from fleet_tui.runners.local import TIMEOUT_EXIT, LineSplitter, RunnerError
from fleet_tui.runners.streams import END, Put, ResumePoint, follow_lines, in_daemon_thread, parse_log_ts

INSTALL_HINT = "pip install 'fleet-tui[kubernetes]'"

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_QUEUE_CHUNKS = 4096
_REQUEST_S = 30.0  # one ordinary API call
_OUTAGE_S = 15.0  # how long a waiting run rides out an unreachable API before it reports it
_PIECE_BYTES = 16384  # the longest log entry containerd (and Docker) store; a longer line is split
_STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z ")
_STUCK_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                            "CreateContainerError"})

try:  # the supervisor keeps a run whose host does not answer, and follows it again when it does
    from fleet_tui.runners.base import HostUnreachable as _HostUnreachable  # type: ignore[attr-defined]
except ImportError:  # a supervisor without that notion: an unreachable API is a plain runner error
    class _HostUnreachable(Exception):  # type: ignore[no-redef]
        pass


class KubernetesUnavailable(RunnerError, _HostUnreachable):
    """The Kubernetes API cannot be reached (or no configuration says where it is). Runs are not lost: the
    cluster keeps them, and they are re-attached once the API answers (`wait_for_host`)."""


def require_client() -> None:
    """Raise a clear error when the `kubernetes` package is missing."""
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        raise RunnerError(f'runner.kind = "kubernetes" needs the Kubernetes client: {INSTALL_HINT}') from None


# --- the blocking client --------------------------------------------------------------------------------------


class _Cluster:
    """The loaded client configuration (once) and fresh API clients for worker threads."""

    def __init__(self, kconfig: Any) -> None:
        self._settings = kconfig
        self._configuration: Any = None
        self._lock = threading.Lock()
        self._shared: Any = None

    @property
    def host(self) -> str:
        return getattr(self._configuration, "host", "") or "(not configured)"

    def configuration(self) -> Any:
        with self._lock:
            if self._configuration is None:
                self._configuration = self._load()
            return self._configuration

    def _load(self) -> Any:
        from kubernetes import client, config

        configuration = client.Configuration()
        path = self._settings.kubeconfig.strip() or None
        context = self._settings.context.strip() or None
        try:
            config.load_kube_config(config_file=str(Path(path).expanduser()) if path else None, context=context,
                                    client_configuration=configuration, persist_config=False)
        except (config.ConfigException, OSError) as exc:
            if path or context:
                raise KubernetesUnavailable(f"cannot load the kubeconfig{f' {path}' if path else ''}"
                                            f"{f' (context {context})' if context else ''}: {exc}") from None
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                raise KubernetesUnavailable(
                    "no Kubernetes configuration: set runner.kubernetes.kubeconfig, $KUBECONFIG or ~/.kube/config "
                    f"(or run the fleet in a pod): {exc}") from None
        configuration.connection_pool_maxsize = 32
        configuration.retries = 1
        return configuration

    def shared(self) -> Any:
        """One ApiClient for ordinary calls (urllib3's pool is thread-safe)."""
        from kubernetes import client

        configuration = self.configuration()
        with self._lock:
            if self._shared is None:
                self._shared = client.ApiClient(configuration)
            return self._shared

    def fresh(self) -> Any:
        """An ApiClient of its own: `stream()` swaps the transport of the client it is given while it runs."""
        from kubernetes import client

        return client.ApiClient(self.configuration())


def _status_message(exc: Any) -> str:
    """The message of a Kubernetes Status in an ApiException body, or its reason."""
    try:
        body = json.loads(exc.body or "{}")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (TypeError, ValueError):
        pass
    return str(getattr(exc, "reason", "") or exc)


class KubernetesRunHandle:
    """A run's Job: stream the agent container's log (once), wait for it with its timeout, stop it."""

    def __init__(self, runner: KubernetesRunner, run_id: str, job: str, *, role: Role, issue: int | None,
                 started_at: float, timeout_s: float, pod: str | None = None) -> None:
        self.run_id = run_id
        self.job = job
        self.role = role
        self.issue = issue
        self.started_at = started_at
        self.timed_out = False
        self.stopped = False
        self.exit_code: int | None = None
        self.pod = pod
        self._runner = runner
        self._timeout_s = timeout_s
        self._deadline = started_at + timeout_s
        self._done = anyio.Event()
        self._waiting = False

    def began(self, at: float) -> None:
        """The agent started at `at` (epoch seconds): its timeout counts from then, not from the Job's creation,
        so time spent waiting to be scheduled or for the image is not the agent's."""
        self.started_at = at
        self._deadline = at + self._timeout_s

    # --- logs ---------------------------------------------------------------------------------

    def lines(self) -> AsyncIterator[str]:
        """Every line the agent wrote, from the start of the run to its end."""
        return follow_lines(self._read_logs, name=f"fleet-k8s-logs-{self.run_id}", limiter=self._runner.limiter,
                            close=_shutdown, queue_size=_QUEUE_CHUNKS)

    def _read_logs(self, put: Put, stop: threading.Event, holder: dict[str, Any]) -> None:
        """Thread: follow the agent container's log with timestamps. A stream that ends while the container runs
        is reopened a little before the last line seen (duplicates skipped by timestamp); once it has ended, one
        read without following picks up what the follow missed."""
        from kubernetes.client.exceptions import ApiException

        resume = ResumePoint()
        follow = True
        failures, failing_since = 0, 0.0
        try:
            core = self._runner.core()
            while not stop.is_set():
                try:
                    state = self._runner.wait_container_started(self, stop, fresh=resume.last is None)
                    if state is None:
                        break
                    follow = follow and state == "running"
                    kwargs: dict[str, Any] = {"container": AGENT, "follow": follow, "timestamps": True,
                                              "_preload_content": False}
                    if not follow:  # a follow stream has no read timeout: a quiet agent is not a broken stream
                        kwargs["_request_timeout"] = _REQUEST_S
                    if resume.last is not None:
                        resume.reopen()
                        kwargs["since_seconds"] = max(1, math.ceil(time.time() - resume.last[0]) + 1)
                    response = core.read_namespaced_pod_log(self.pod, self._runner.namespace, **kwargs)
                    holder["stream"] = response
                    if stop.is_set():
                        break
                    pending = b""
                    for data in response.stream(65536, decode_content=False):
                        pending += data
                        *complete, pending = pending.split(b"\n")
                        for raw in complete:
                            self._deliver(raw + b"\n", resume, put)
                    if pending and not follow:
                        self._deliver(pending, resume, put)
                except RunnerError:
                    raise
                except Exception as exc:  # noqa: BLE001 - urllib3 errors vary widely
                    if stop.is_set():
                        break
                    if isinstance(exc, ApiException) and exc.status == 404:
                        holder["error"] = RunnerError(f"the pod of run {self.run_id} was removed before all its "
                                                      "output was read")
                        break
                    # The API restarting or a connection cut: reopen, for as long as an outage is ridden out.
                    _log.debug("log stream of %s broke: %r", self.run_id, exc)
                    failures, failing_since = failures + 1, failing_since or time.monotonic()
                    if time.monotonic() - failing_since > _OUTAGE_S:
                        holder["error"] = KubernetesUnavailable(f"log stream of run {self.run_id} broke: {exc}")
                        break
                    stop.wait(min(2.0, 0.2 * failures))
                    continue
                finally:
                    _shutdown(holder)
                failures, failing_since = 0, 0.0
                if not follow:
                    break
                follow = self._runner.agent_state(self) != "ended"  # unknown: the next look says
        except RunnerError as exc:
            holder["error"] = exc
        finally:
            put(END)

    @staticmethod
    def _deliver(raw: bytes, resume: ResumePoint, put: Callable[[object], None]) -> None:
        stamp, _, payload = raw.partition(b" ")
        key = parse_log_ts(stamp)
        if key is None:
            put(raw)
        elif resume.accept(key):
            put(_join_pieces(payload))

    async def last_logs(self, n: int = 50) -> list[str]:
        """The last `n` lines the agent wrote (for the outcome, after the run ended)."""
        def tail() -> str:
            if self.pod is None:
                return ""
            return self._runner.core().read_namespaced_pod_log(self.pod, self._runner.namespace, container=AGENT,
                                                                tail_lines=n, _request_timeout=_REQUEST_S)
        try:
            data = await self._runner.call(tail)
        except RunnerError:
            return []
        splitter = LineSplitter()
        return [*splitter.feed(str(data).encode()), *splitter.flush()]

    # --- wait / stop --------------------------------------------------------------------------

    async def wait(self) -> int:
        if self._waiting:
            await self._done.wait()
            assert self.exit_code is not None
            return self.exit_code
        self._waiting = True
        try:
            away_since: float | None = None
            while True:
                try:
                    outcome = await self._runner.call(lambda: self._runner.outcome(self))
                    away_since = None
                except KubernetesUnavailable:
                    # A blip (an API server restarting) is ridden out; a longer outage is the supervisor's to wait.
                    away_since = away_since or time.monotonic()
                    if time.monotonic() - away_since > _OUTAGE_S:
                        raise
                    await anyio.sleep(self._runner.poll_s)
                    continue
                if outcome is not None:
                    break
                if time.time() >= self._deadline and not self.timed_out and not self.stopped:
                    self.timed_out = True
                    await self._runner.signal_stop(self)
                await anyio.sleep(self._runner.poll_s)
            kind, code = outcome
            if kind == "deadline":
                self.timed_out = True
            self.exit_code = TIMEOUT_EXIT if self.timed_out else code
        finally:
            if self.exit_code is not None:
                self._done.set()
            else:
                self._waiting = False  # cancelled: a later wait starts over
        return self.exit_code

    async def stop(self) -> None:
        """End the agent now (the pod stays, so what it wrote can still be collected)."""
        if self.exit_code is None:
            self.stopped = True
        await self._runner.signal_stop(self)


def _join_pieces(payload: bytes) -> bytes:
    """One log line again. The runtime stores a line longer than 16 KiB in pieces, and with timestamps the
    kubelet writes each piece's: "TS piece1TS piece2...\n". The inner timestamps sit right after each full piece."""
    parts, pos = [], 0
    while len(payload) - pos > _PIECE_BYTES:
        parts.append(payload[pos:pos + _PIECE_BYTES])
        pos += _PIECE_BYTES
        stamp = _STAMP.match(payload, pos)
        if stamp is None:
            break
        pos = stamp.end()
    parts.append(payload[pos:])
    return b"".join(parts)


def _shutdown(holder: dict[str, Any]) -> None:
    """Unblock a reader thread stuck in a quiet log stream."""
    response = holder.pop("stream", None)
    if response is not None:
        with contextlib.suppress(Exception):  # closing a dead stream may fail in many ways
            response.shutdown()
        with contextlib.suppress(Exception):
            response.release_conn()


# --- the runner -------------------------------------------------------------------------------------------


class KubernetesRunner:
    """Starts runs as Jobs in one namespace of one cluster, and sees only its own fleet instance's Jobs."""

    kind = "kubernetes"

    def __init__(self, config: RunnerConfig, *, instance: str, repo: str = "", labels: dict[str, str] | None = None,
                 owner: tuple[int, int] | None = None, deadline_margin_s: float = 600.0, poll_s: float = 1.0,
                 start_timeout_s: float = 600.0, collect_limit_bytes: int = 2 << 30, ttl_after_finished_s: int = 86400,
                 read_only_root: bool = True, max_threads: int = 256) -> None:
        """`instance`: this fleet's id; Jobs of other instances are invisible here. `deadline_margin_s`: how long
        past the run's timeout the cluster keeps the pod for collecting before `activeDeadlineSeconds` ends it.
        `start_timeout_s`: how long `start()` waits for the pod to be scheduled and started."""
        require_client()
        self.instance = check_instance(instance)
        self.repo = repo
        self.config = config
        self.settings = config.kubernetes
        self.namespace = self.settings.namespace
        self.image = self.settings.image or config.image
        self.labels = {key: label_value(str(value)) for key, value in (labels or {}).items() if valid_label_key(key)}
        self.owner = owner
        self.poll_s = poll_s
        self.limiter = anyio.CapacityLimiter(max_threads)
        self._margin_s = deadline_margin_s
        self._start_timeout_s = start_timeout_s
        self._collect_limit = collect_limit_bytes
        self._ttl_s = ttl_after_finished_s
        self._read_only_root = read_only_root
        self._cluster = _Cluster(self.settings)
        self.reachable: bool | None = None
        self._recheck_s = 5.0
        self._starting = anyio.Lock()  # counting this fleet's Jobs and creating one is one step

    def paths(self, spec_workspace: Path, spec_scratch: Path) -> tuple[str, str]:
        return WORKDIR, SCRATCH

    # --- plumbing ---------------------------------------------------------------------------------------

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self._cluster.shared())

    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self._cluster.shared())

    def _translate(self, exc: BaseException) -> RunnerError:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        from fleet_tui.runners.transport import TransportError

        if isinstance(exc, RunnerError):
            return exc
        if isinstance(exc, TransportError):
            return RunnerError(str(exc))
        if isinstance(exc, ApiException):
            if exc.status == 0:
                return KubernetesUnavailable(f"cannot reach the Kubernetes API at {self._cluster.host}: "
                                             f"{str(exc.reason)[:300]}")
            if exc.status in (401, 403):
                return RunnerError(f"the Kubernetes API at {self._cluster.host} refused: {_status_message(exc)} "
                                   "(the fleet needs the Role in the Kubernetes docs)")
            return RunnerError(f"Kubernetes: {_status_message(exc)}")
        if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return KubernetesUnavailable(f"cannot reach the Kubernetes API at {self._cluster.host} (start the "
                                         f"cluster or fix runner.kubernetes): {detail[:300]}")
        raise exc

    async def call(self, fn: Callable[[], _T]) -> _T:
        """Run a blocking client call in a daemon thread; its errors become `RunnerError`s."""
        def guarded() -> _T:
            try:
                value = fn()
            except Exception as exc:  # noqa: BLE001 - translated, or raised as it is
                error = self._translate(exc)
                if isinstance(error, KubernetesUnavailable):
                    self.reachable = False
                raise error from None
            self.reachable = True
            return value

        async with self.limiter:
            return await in_daemon_thread(guarded)

    def is_reachable(self, host: str) -> bool | None:
        """Whether the API answered the last call (None before any); the cluster is this runner's one host."""
        return self.reachable

    async def wait_for_host(self, host: str) -> None:
        """Return once the API answers again (asked every few seconds)."""
        while True:
            try:
                await self.ping()
                return
            except KubernetesUnavailable:
                await anyio.sleep(self._recheck_s)

    async def ping(self) -> str:
        """The cluster's version; raises `KubernetesUnavailable` when it cannot be reached."""
        def version() -> str:
            from kubernetes import client

            info = client.VersionApi(self._cluster.shared()).get_code(_request_timeout=_REQUEST_S)
            return str(info.git_version)
        return await self.call(version)

    # --- the Job ----------------------------------------------------------------------------------------

    def job_manifest(self, spec: RunSpec) -> dict[str, Any]:
        """The Job for `spec`, as the API takes it."""
        return job_manifest(spec, self.config, instance=self.instance, repo=self.repo, image=self.image,
                            labels=self.labels, deadline_margin_s=self._margin_s, ttl_s=self._ttl_s,
                            read_only_root=self._read_only_root)

    async def start(self, spec: RunSpec) -> KubernetesRunHandle:
        """Create the Job, wait for its pod to run, deliver the workspace and scratch dir, then let it go."""
        manifest = self.job_manifest(spec)
        name = manifest["metadata"]["name"]

        def create() -> float | None:
            if len(self._own_jobs()) >= self.settings.max_runs:
                return None
            job = self.batch().create_namespaced_job(self.namespace, manifest, _request_timeout=_REQUEST_S)
            created = job.metadata.creation_timestamp
            return created.timestamp() if created else time.time()

        # At most max_runs Jobs of this fleet at once (ended ones count until cleaned up: their pods wait to be
        # collected); beyond that a start waits for a slot, up to the run's timeout, as a queue would.
        give_up = time.monotonic() + max(30.0, float(spec.timeout_s))
        while True:
            async with self._starting:
                created = await self.call(create)
            if created is not None:
                break
            if time.monotonic() >= give_up:
                raise RunnerError(f"runner.kubernetes.max_runs ({self.settings.max_runs}) Jobs of this fleet are "
                                  f"already in namespace {self.namespace}; run {spec.run_id} found no slot")
            await anyio.sleep(self.poll_s * 2)
        handle = KubernetesRunHandle(self, spec.run_id, name, role=spec.role, issue=spec.issue, started_at=created,
                                     timeout_s=spec.timeout_s)
        try:
            await self._deliver(handle, spec)
            handle.began(time.time())
        except BaseException:
            # Leave nothing behind; bounded, so quitting mid-start stays quick even when the API does not answer.
            with anyio.move_on_after(5, shield=True), contextlib.suppress(RunnerError):
                await self.cleanup(spec.run_id)
            raise
        return handle

    async def _deliver(self, handle: KubernetesRunHandle, spec: RunSpec) -> None:
        from fleet_tui.runners.transport import pack_run

        deadline = time.monotonic() + self._start_timeout_s
        while True:
            state = await self.call(lambda: self.keeper_state(handle))
            if state == "running":
                break
            if state in ("ended", "gone"):
                raise RunnerError(f"the pod of run {spec.run_id} ended before its workspace was delivered")
            if time.monotonic() > deadline:
                raise RunnerError(f"the pod of run {spec.run_id} did not start within {self._start_timeout_s:.0f} s"
                                  f" (kubectl -n {self.namespace} describe job {handle.job})")
            await anyio.sleep(self.poll_s / 2)

        def send() -> None:
            with pack_run(spec.workspace, spec.scratch, owner=self.owner) as packed, _without_roots(packed) as tar:
                size = tar.seek(0, 2)
                tar.seek(0)
                command = ["/bin/sh", "-c", f'head -c "$1" | tar xf - -C / -m --no-same-owner && touch {CONTROL}/ready',
                           "fleet-deliver", str(size)]
                code, err = self.exec(handle.pod or "", command, stdin=tar, timeout_s=self._start_timeout_s)
                if code != 0:
                    raise RunnerError(f"delivering the workspace of run {spec.run_id} failed ({code}): "
                                      f"{err.decode(errors='replace').strip()[:300]}")
        await self.call(send)

    # --- pod state (threads) ----------------------------------------------------------------------------

    def _pod(self, handle: KubernetesRunHandle) -> Any | None:
        pods = self.core().list_namespaced_pod(self.namespace, label_selector=f"job-name={handle.job}",
                                               _request_timeout=_REQUEST_S).items
        if not pods:
            return None
        pods.sort(key=lambda pod: pod.metadata.creation_timestamp.timestamp() if pod.metadata.creation_timestamp
                  else 0.0)
        pod = pods[-1]
        handle.pod = pod.metadata.name
        return pod

    @staticmethod
    def _container(pod: Any, name: str) -> Any | None:
        for status in (pod.status.container_statuses or []) if pod.status else []:
            if status.name == name:
                return status
        return None

    def _state(self, handle: KubernetesRunHandle, container: str) -> str:
        """"pending", "running", "ended" or "gone" for one container of the run's pod; a pod that cannot
        start (bad image, missing Secret) raises with the kubelet's reason."""
        pod = self._pod(handle)
        if pod is None:
            return "gone"
        status = self._container(pod, container)
        if status is None or status.state is None:
            return "ended" if pod.status and pod.status.phase in ("Succeeded", "Failed") else "pending"
        if status.state.terminated is not None:
            return "ended"
        if status.state.running is not None:
            return "running"
        waiting = status.state.waiting
        if waiting is not None and waiting.reason in _STUCK_REASONS:
            raise RunnerError(f"the pod of run {handle.run_id} cannot start: {waiting.reason}: "
                              f"{(waiting.message or '').strip()[:300]}")
        return "pending"

    def keeper_state(self, handle: KubernetesRunHandle) -> str:
        return self._state(handle, KEEPER)

    def agent_state(self, handle: KubernetesRunHandle) -> str:
        try:
            return self._state(handle, AGENT)
        except Exception:  # noqa: BLE001 - the API did not say
            return "unknown"

    def wait_container_started(self, handle: KubernetesRunHandle, stop: threading.Event, *,
                               fresh: bool = True) -> str | None:
        """Thread: "running" or "ended" once the agent container has started (logs exist); None when stopped,
        or when the pod is gone after its log was read (`fresh` False)."""
        while not stop.is_set():
            state = self._state(handle, AGENT)
            if state in ("running", "ended"):
                return state
            if state == "gone":
                if not fresh:  # deleted after its log was read (the cluster's deadline, or a cleanup)
                    return None
                raise RunnerError(f"the pod of run {handle.run_id} is gone")
            stop.wait(self.poll_s / 2)
        return None

    def outcome(self, handle: KubernetesRunHandle) -> tuple[str, int] | None:
        """Thread: ("exit", code) once the agent container ended, ("deadline", 124) when the cluster ended the
        run at activeDeadlineSeconds, None while it runs."""
        from kubernetes.client.exceptions import ApiException

        try:
            job = self.batch().read_namespaced_job(handle.job, self.namespace, _request_timeout=_REQUEST_S)
        except ApiException as exc:
            if exc.status == 404:
                if handle.stopped:
                    return "exit", 137
                raise RunnerError(f"the Job of run {handle.run_id} is gone") from None
            raise
        ended = [condition for condition in ((job.status.conditions or []) if job.status else [])
                 if condition.status == "True" and condition.type in ("Failed", "Complete")]
        # First: the cluster's deadline kills the agent too, and its exit code then is the kill's, not a result.
        if any(condition.reason == "DeadlineExceeded" for condition in ended):
            return "deadline", TIMEOUT_EXIT
        pod = self._pod(handle)
        status = self._container(pod, AGENT) if pod is not None else None
        if status is not None and status.state is not None and status.state.terminated is not None:
            return "exit", int(status.state.terminated.exit_code)
        if ended:
            return "exit", 137 if handle.stopped else 1  # ended with no exit code (its pod evicted, deleted)
        if pod is not None and pod.status is not None and pod.status.phase in ("Succeeded", "Failed"):
            return "exit", 137 if handle.stopped else 1  # the pod ended without the agent's exit (evicted)
        waiting = status.state.waiting if status is not None and status.state is not None else None
        if waiting is not None and waiting.reason in _STUCK_REASONS:
            raise RunnerError(f"the pod of run {handle.run_id} cannot start: {waiting.reason}: "
                              f"{(waiting.message or '').strip()[:300]}")
        return None

    async def signal_stop(self, handle: KubernetesRunHandle) -> None:
        """Tell the agent to end (through the keeper); a pod not running yet is deleted with its Job."""
        def signal() -> None:
            state = self.keeper_state(handle)
            if state == "running":
                code, err = self.exec(handle.pod or "", ["/bin/sh", "-c", f"touch {CONTROL}/stop"], timeout_s=_REQUEST_S)
                if code == 0:
                    return
                _log.debug("stop of %s through the keeper failed: %s", handle.run_id, err[:200])
            if self.agent_state(handle) in ("pending", "running", "gone"):
                self._delete(handle.job)
        await self.call(signal)

    # --- exec -------------------------------------------------------------------------------------------

    def exec(self, pod: str, command: list[str], *, stdin: IO[bytes] | None = None, timeout_s: float,
             sink: Callable[[bytes], None] | None = None, container: str = KEEPER) -> tuple[int, bytes]:
        """Thread: run `command` in a container of `pod` through the API's exec WebSocket; stdout goes to
        `sink`, and (exit code, stderr) comes back."""
        from kubernetes import client
        from kubernetes.stream import stream, ws_client

        api = self._cluster.fresh()
        try:
            ws = stream(client.CoreV1Api(api).connect_get_namespaced_pod_exec, pod, self.namespace,
                        container=container, command=command, stdin=stdin is not None, stdout=True, stderr=True,
                        tty=False, binary=True, _preload_content=False, _request_timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - the WebSocket handshake fails in many ways
            raise self._translate(exc) from None
        deadline = time.monotonic() + timeout_s
        err = bytearray()
        status = b""
        try:
            if hasattr(ws_client, "_IgnoredIO"):
                ws._all = ws_client._IgnoredIO()  # stdout goes to `sink`, not into one growing buffer

            def drain(wait: float) -> None:
                nonlocal status
                ws.update(timeout=wait)
                for channel in (1, 2, 3):
                    data = ws._channels.pop(channel, b"")
                    if not data:
                        continue
                    if channel == 1 and sink is not None:
                        sink(data)
                    elif channel == 2:
                        err.extend(data[-65536:])
                    elif channel == 3:
                        status += data

            if stdin is not None:
                while chunk := stdin.read(256 * 1024):
                    ws.write_stdin(chunk)
                    drain(0)
                ws.close_channel(0)  # v5: end of stdin (with v4 the command reads a known length)
            while ws.is_open():
                if time.monotonic() > deadline:
                    raise RunnerError(f"{command[0]} in pod {pod} took longer than {timeout_s:.0f} s")
                drain(0.5)
            drain(0)
        finally:
            with contextlib.suppress(Exception):
                ws.close()
            with contextlib.suppress(Exception):
                api.close()
        return _exit_of(status), bytes(err)

    # --- collect, find, attach, cleanup ---------------------------------------------------------------

    async def collect(self, run_id: str, scratch: Path) -> None:
        """Copy the run's /fleet back into `scratch`; called after wait() and before cleanup()."""
        from fleet_tui.runners.transport import unpack_scratch

        handle = await self.attach(run_id)

        def fetch() -> None:
            if self.keeper_state(handle) != "running":
                raise RunnerError(f"nothing to collect for run {run_id}: its pod is gone (the cluster ends it "
                                  f"{self._margin_s:.0f} s after the run's timeout)")
            chunks: queue.Queue[Any] = queue.Queue(maxsize=256)
            box: dict[str, Any] = {}

            def produce() -> None:
                try:
                    box["result"] = self.exec(handle.pod or "", ["tar", "cf", "-", "-C", "/", "fleet"],
                                              timeout_s=self._start_timeout_s, sink=chunks.put)
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                    box["error"] = exc
                finally:
                    chunks.put(END)

            def consume() -> Iterator[bytes]:
                while (item := chunks.get()) is not END:
                    yield item

            producer = threading.Thread(target=produce, name=f"fleet-k8s-collect-{run_id}", daemon=True)
            producer.start()
            try:
                unpack_scratch(consume(), scratch, limit_bytes=self._collect_limit)
            finally:
                while producer.is_alive():  # let a producer blocked on a full queue finish
                    with contextlib.suppress(queue.Empty):
                        chunks.get(timeout=0.2)
            if "error" in box:
                raise box["error"]
            code, err = box["result"]
            if code != 0:
                raise RunnerError(f"collecting the scratch dir of run {run_id} failed ({code}): "
                                  f"{err.decode(errors='replace').strip()[:300]}")
            self.exec(handle.pod or "", ["/bin/sh", "-c", f"touch {CONTROL}/collected"], timeout_s=_REQUEST_S)
        await self.call(fetch)

    def _selector(self, run_id: str | None = None) -> str:
        return f"{LABEL_INSTANCE}={self.instance}," + (f"{LABEL_RUN}={label_value(run_id)}" if run_id else LABEL_RUN)

    def _own_jobs(self, run_id: str | None = None) -> list[Any]:
        jobs = self.batch().list_namespaced_job(self.namespace, label_selector=self._selector(run_id),
                                                _request_timeout=_REQUEST_S).items
        own = []
        for job in jobs:
            meta = job.metadata
            if (meta.labels or {}).get(LABEL_INSTANCE) != self.instance or meta.deletion_timestamp is not None:
                continue
            if run_id is not None and (meta.annotations or {}).get(ANN_RUN) != run_id:
                continue
            own.append(job)
        return own

    async def find_runs(self) -> list[LiveRun]:
        """This instance's Jobs not yet cleaned up, running or ended; never another instance's."""
        runs = []
        for job in await self.call(self._own_jobs):
            labels, annotations = job.metadata.labels or {}, job.metadata.annotations or {}
            try:
                role = Role(labels.get(LABEL_ROLE, "dev"))
            except ValueError:
                continue
            issue = labels.get(LABEL_ISSUE, "")
            created = job.metadata.creation_timestamp
            runs.append(LiveRun(annotations.get(ANN_RUN, labels.get(LABEL_RUN, "")), role,
                                int(issue) if issue.isdigit() else None, created.timestamp() if created else 0.0))
        return runs

    async def attach(self, run_id: str) -> KubernetesRunHandle:
        """A handle on this instance's Job of `run_id`: its `lines()` start at the run's first line, its
        `wait()` keeps the run's deadline."""
        jobs = await self.call(lambda: self._own_jobs(run_id))
        if not jobs:
            raise RunnerError(f"no Job for run {run_id} of this fleet in namespace {self.namespace}")
        job = jobs[0]
        labels, annotations = job.metadata.labels or {}, job.metadata.annotations or {}
        try:
            timeout_s = float(annotations.get(ANN_TIMEOUT, "0")) or 1e9
        except ValueError:
            timeout_s = 1e9
        try:
            role = Role(labels.get(LABEL_ROLE, "dev"))
        except ValueError:
            role = Role.DEV
        issue = labels.get(LABEL_ISSUE, "")
        created = job.metadata.creation_timestamp
        handle = KubernetesRunHandle(self, run_id, job.metadata.name, role=role,
                                     issue=int(issue) if issue.isdigit() else None,
                                     started_at=created.timestamp() if created else time.time(), timeout_s=timeout_s)
        began = await self.call(lambda: self._agent_began(handle))
        if began is not None:
            handle.began(began)
        return handle

    def _agent_began(self, handle: KubernetesRunHandle) -> float | None:
        """Thread: when the agent container started (None while it has not, or its pod is gone)."""
        pod = self._pod(handle)
        status = self._container(pod, AGENT) if pod is not None else None
        state = status.state if status is not None else None
        for part in (state.running, state.terminated) if state is not None else ():
            if part is not None and part.started_at is not None:
                return float(part.started_at.timestamp())
        return None

    def _delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch().delete_namespaced_job(name, self.namespace, propagation_policy="Background",
                                               _request_timeout=_REQUEST_S)
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def cleanup(self, run_id: str) -> None:
        """Delete this instance's Job of `run_id` and its pod (running or not); another fleet's is never touched."""
        def remove() -> None:
            for job in self._own_jobs(run_id):
                self._delete(job.metadata.name)
        await self.call(remove)


def _exit_of(status: bytes) -> int:
    """The exit code in an exec stream's final Status (channel 3)."""
    if not status.strip():
        return 0
    try:
        body = json.loads(status)
    except ValueError:
        raise RunnerError(f"exec ended with an unreadable status: {status[:200]!r}") from None
    if body.get("status") == "Success":
        return 0
    for cause in (body.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
            return int(cause["message"])
    raise RunnerError(f"exec failed: {str(body.get('message') or body)[:300]}")


@contextlib.contextmanager
def _without_roots(packed: IO[bytes]) -> Iterator[IO[bytes]]:
    """`packed` without the entries of its top directories (`workspace`, `fleet`): those are the pod's volume
    roots, owned by root, and a non-root `tar` fails on changing their mode."""
    import tarfile

    with tempfile.TemporaryFile() as out:
        with tarfile.open(fileobj=packed, mode="r|") as source, \
                tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as target:
            for member in source:
                if member.isdir() and member.name.strip("/").removeprefix("./").count("/") == 0:
                    continue
                target.addfile(member, source.extractfile(member) if member.isfile() else None)
        out.seek(0)
        yield out


def check_cluster(config: RunnerConfig, *, timeout_s: float = 10.0) -> list[tuple[bool, str]]:
    """For `fleet-tui check`: (ok, what) for the client, the API, the namespace's Jobs and the engine Secret.
    Blocking; call it in a thread."""
    try:
        require_client()
    except RunnerError as exc:
        return [(False, str(exc))]
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    settings = config.kubernetes
    cluster = _Cluster(settings)
    results: list[tuple[bool, str]] = []
    try:
        api = cluster.shared()
        version = client.VersionApi(api).get_code(_request_timeout=timeout_s).git_version
        results.append((True, f"Kubernetes API at {cluster.host} ({version})"))
        client.BatchV1Api(api).list_namespaced_job(settings.namespace, limit=1, _request_timeout=timeout_s)
        results.append((True, f"Jobs in namespace {settings.namespace} can be listed"))
    except RunnerError as exc:
        return [*results, (False, str(exc))]
    except ApiException as exc:
        return [*results, (False, f"Kubernetes API at {cluster.host}: {_status_message(exc)}")]
    except Exception as exc:  # noqa: BLE001 - connection errors vary widely
        return [*results, (False, f"cannot reach the Kubernetes API at {cluster.host}: {str(exc)[:300]}")]
    if settings.engine_secret:
        results.append((True, (f"engine keys from Secret {settings.engine_secret} (the fleet needs no right to "
                               "read it; a missing Secret shows as CreateContainerConfigError when a run starts)")))
    else:
        results.append((False, "runner.kubernetes.engine_secret is empty: engines that need an API key get none"))
    return results


__all__ = ["KubernetesRunHandle", "KubernetesRunner", "KubernetesUnavailable", "check_cluster", "require_client"]

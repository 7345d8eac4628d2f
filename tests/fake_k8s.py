"""A loopback fake of the Kubernetes API that actually runs pods, for the Kubernetes runner's tests.

Real HTTP on 127.0.0.1 (aiohttp in a thread of its own) with the REST shapes the official client parses: Jobs
(create, get, list by labelSelector, delete with propagationPolicy; the API's default for Jobs orphans the
pods), Pods (get, list by labelSelector, phases and container states), pod logs (with `follow` streamed chunked
until the container ends, `timestamps`, `tailLines`, `sinceSeconds`), exec over WebSocket (channel.k8s.io v5 and
v4: 0 stdin, 1 stdout, 2 stderr, 3 the final Status, 255 close), Secrets (create, get, delete) and errors as
Status objects (400, 401, 404, 409, 422). It is strict where a real API server is: bad names, label keys and
values, unknown fields, restartPolicy Always in a Job, mounts of undeclared volumes, toleration rules, bad
quantities; a bearer token is required.

Each pod is backed by one container per pod container on the local Docker engine (the pod spec's image, user,
read-only root, capabilities, limits, `--network none`), its emptyDir volumes by host dirs (mode 0777, as the
kubelet makes them); exec is `docker exec`, logs are `docker logs`. A small controller starts pods for Jobs,
follows their containers, ends Jobs at `activeDeadlineSeconds` (deleting their pods, reason DeadlineExceeded)
and marks them Complete or Failed. Every container carries the label `fake-k8s.owner=<this fake's id>`, and
`close()` removes exactly those.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

OWNER_LABEL = "fake-k8s.owner"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_QUANTITY = re.compile(r"(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e\d+)?")
_STUCK = "ErrImagePull"

_JOB_SPEC_KEYS = {"activeDeadlineSeconds", "backoffLimit", "backoffLimitPerIndex", "completionMode", "completions",
                  "managedBy", "manualSelector", "maxFailedIndexes", "parallelism", "podFailurePolicy",
                  "podReplacementPolicy", "selector", "successPolicy", "suspend", "template", "ttlSecondsAfterFinished"}
_POD_SPEC_KEYS = {"activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsConfig",
                  "dnsPolicy", "enableServiceLinks", "hostAliases", "hostname", "imagePullSecrets", "initContainers",
                  "nodeName", "nodeSelector", "priority", "priorityClassName", "restartPolicy", "runtimeClassName",
                  "schedulerName", "securityContext", "serviceAccount", "serviceAccountName", "shareProcessNamespace",
                  "subdomain", "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints", "volumes"}
_CONTAINER_KEYS = {"args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe", "name",
                   "ports", "readinessProbe", "resources", "securityContext", "startupProbe", "stdin", "stdinOnce",
                   "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeMounts", "workingDir"}
_SECURITY_KEYS = {"allowPrivilegeEscalation", "capabilities", "privileged", "procMount", "readOnlyRootFilesystem",
                  "runAsGroup", "runAsNonRoot", "runAsUser", "seLinuxOptions", "seccompProfile", "appArmorProfile"}
_POD_SECURITY_KEYS = {"fsGroup", "fsGroupChangePolicy", "runAsGroup", "runAsNonRoot", "runAsUser", "seLinuxOptions",
                      "seccompProfile", "supplementalGroups", "sysctls", "appArmorProfile"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str, *, details: dict[str, Any] | None = None) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


class Invalid(Exception):
    def __init__(self, causes: list[tuple[str, str]]) -> None:
        super().__init__(causes)
        self.causes = causes


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.fullmatch(name))


def _label_value_ok(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 63 and (value == "" or bool(_LABEL_NAME.fullmatch(value)))


def _quantity_bytes(text: str) -> float:
    match = _QUANTITY.fullmatch(text)
    assert match
    number, suffix = float(match.group(1)), match.group(3) or ""
    scale = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
             "Ti": 2**40}.get(suffix)
    if scale is None and suffix.startswith("e"):
        scale = 10 ** int(suffix[1:])
    return number * (scale or 1)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: `$$` is a literal `$`, an unknown $(VAR) stays as written."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    out.append(env.get(name, f"$({name})"))
                    i = end + 1
                    continue
            out.append("$" + nxt)
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def validate_job(job: dict[str, Any], namespace: str) -> None:
    """Raise `Invalid` with (field, message) causes where a real API server rejects the Job."""
    causes: list[tuple[str, str]] = []

    def bad(field: str, message: str) -> None:
        causes.append((field, message))

    def unknown(obj: dict[str, Any], allowed: set[str], path: str) -> None:
        for key in obj:
            if key not in allowed:
                raise Invalid([(f"{path}.{key}", "strict decoding error: unknown field")])

    meta = job.get("metadata") or {}
    name = meta.get("name", "")
    if not name:
        bad("metadata.name", "Required value: name or generateName is required")
    elif len(name) > 63 or not _DNS_LABEL.fullmatch(name):
        bad("metadata.name", f"Invalid value: {name!r}: must be no more than 63 characters, a lowercase RFC 1123 "
                             "label")
    for where, labels in (("metadata.labels", meta.get("labels") or {}),
                          ("spec.template.metadata.labels",
                           ((job.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {})):
        for key, value in labels.items():
            if not _label_key_ok(key):
                bad(where, f"Invalid value: {key!r}: name part must consist of alphanumeric characters, '-', '_' or '.'")
            if not _label_value_ok(value):
                bad(where, f"Invalid value: {value!r}: a valid label must be an empty string or consist of "
                           "alphanumeric characters, '-', '_' or '.', and be at most 63 characters")
    for key, value in (meta.get("annotations") or {}).items():
        if not _label_key_ok(key) or not isinstance(value, str):
            bad("metadata.annotations", f"Invalid value: {key!r}")
    spec = job.get("spec")
    if not isinstance(spec, dict):
        raise Invalid([*causes, ("spec", "Required value")])
    unknown(spec, _JOB_SPEC_KEYS, "spec")
    for field in ("backoffLimit", "ttlSecondsAfterFinished"):
        if field in spec and (not isinstance(spec[field], int) or spec[field] < 0):
            bad(f"spec.{field}", "Invalid value: must be greater than or equal to 0")
    if "activeDeadlineSeconds" in spec and (not isinstance(spec["activeDeadlineSeconds"], int)
                                            or spec["activeDeadlineSeconds"] <= 0):
        bad("spec.activeDeadlineSeconds", "Invalid value: must be greater than 0")
    if spec.get("selector") and not spec.get("manualSelector"):
        bad("spec.selector", "Invalid value: `selector` will be auto-generated")
    template = spec.get("template") or {}
    pod = template.get("spec")
    if not isinstance(pod, dict):
        raise Invalid([*causes, ("spec.template.spec", "Required value")])
    unknown(pod, _POD_SPEC_KEYS, "spec.template.spec")
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        bad("spec.template.spec.restartPolicy", f"Unsupported value: {pod.get('restartPolicy')!r}: supported values: "
                                                '"OnFailure", "Never"')
    unknown(pod.get("securityContext") or {}, _POD_SECURITY_KEYS, "spec.template.spec.securityContext")
    volumes: set[str] = set()
    for index, volume in enumerate(pod.get("volumes") or []):
        vname = volume.get("name", "")
        if not _DNS_LABEL.fullmatch(vname) or len(vname) > 63 or vname in volumes:
            bad(f"spec.template.spec.volumes[{index}].name", f"Invalid value: {vname!r}")
        volumes.add(vname)
        if len([key for key in volume if key != "name"]) != 1:
            bad(f"spec.template.spec.volumes[{index}]", "Required value: must specify exactly one volume type")
    for key, value in (pod.get("nodeSelector") or {}).items():
        if not _label_key_ok(key) or not _label_value_ok(value):
            bad("spec.template.spec.nodeSelector", f"Invalid value: {key!r}: {value!r}")
    for index, toleration in enumerate(pod.get("tolerations") or []):
        where = f"spec.template.spec.tolerations[{index}]"
        operator = toleration.get("operator", "Equal")
        if operator not in ("Equal", "Exists"):
            bad(f"{where}.operator", f"Unsupported value: {operator!r}")
        if operator == "Exists" and toleration.get("value"):
            bad(f"{where}.operator", "Invalid value: value must be empty when `operator` is 'Exists'")
        if toleration.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            bad(f"{where}.effect", f"Unsupported value: {toleration.get('effect')!r}")
        if "tolerationSeconds" in toleration and toleration.get("effect") != "NoExecute":
            bad(f"{where}.effect", "Invalid value: effect must be 'NoExecute' when `tolerationSeconds` is set")
    containers = pod.get("containers") or []
    if not containers:
        bad("spec.template.spec.containers", "Required value")
    names: set[str] = set()
    for index, container in enumerate(containers):
        where = f"spec.template.spec.containers[{index}]"
        unknown(container, _CONTAINER_KEYS, where)
        cname = container.get("name", "")
        if not _DNS_LABEL.fullmatch(cname) or len(cname) > 63 or cname in names:
            bad(f"{where}.name", f"Invalid value: {cname!r}")
        names.add(cname)
        if not container.get("image"):
            bad(f"{where}.image", "Required value")
        if container.get("imagePullPolicy", "IfNotPresent") not in ("Always", "IfNotPresent", "Never"):
            bad(f"{where}.imagePullPolicy", "Unsupported value")
        for field in ("command", "args"):
            if not all(isinstance(part, str) for part in container.get(field) or []):
                bad(f"{where}.{field}", "Invalid value: must be strings")
        for env in container.get("env") or []:
            if not _ENV_NAME.fullmatch(env.get("name", "")):
                bad(f"{where}.env", f"Invalid value: {env.get('name')!r}: a valid environment variable name")
            if "value" in env and not isinstance(env["value"], str):
                bad(f"{where}.env", "Invalid value: must be a string")
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            if not _DNS_SUBDOMAIN.fullmatch(ref.get("name", "")):
                bad(f"{where}.envFrom", f"Invalid value: {ref.get('name')!r}")
        paths: set[str] = set()
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                bad(f"{where}.volumeMounts", f"Not found: {mount.get('name')!r}")
            path = mount.get("mountPath", "")
            if not path.startswith("/") or path in paths:
                bad(f"{where}.volumeMounts.mountPath", f"Invalid value: {path!r}")
            paths.add(path)
        resources = container.get("resources") or {}
        for kind in ("limits", "requests"):
            for resource, value in (resources.get(kind) or {}).items():
                if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
                    bad(f"{where}.resources.{kind}[{resource}]", f"Invalid value: {value!r}: must be a quantity")
        security = container.get("securityContext") or {}
        unknown(security, _SECURITY_KEYS, f"{where}.securityContext")
        for field in ("runAsUser", "runAsGroup"):
            if field in security and (not isinstance(security[field], int) or security[field] < 0):
                bad(f"{where}.securityContext.{field}", "Invalid value: must be between 0 and 2147483647")
    if causes:
        raise Invalid(causes)


def _selects(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


class FakeKubernetes:
    """The fake API server. `start()` it, write a kubeconfig with `kubeconfig()`, `close()` it."""

    def __init__(self, *, namespace: str = "fleet-test", node: str = "fake-node") -> None:
        self.namespace = namespace
        self.node = node
        self.token = secrets.token_hex(16)
        self.owner = f"fk{uuid.uuid4().hex[:12]}"
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.exec_protocols = ("v5.channel.k8s.io", "v4.channel.k8s.io")  # v4 only: a server before 1.30
        self.exec_spoken: list[str] = []  # the subprotocol of each exec, as negotiated
        self.errors: list[str] = []  # what went wrong in the controller (for a failing test to show)
        self._containers: dict[tuple[str, str], dict[str, str]] = {}  # pod -> container name -> docker id
        self._volumes = Path(tempfile.mkdtemp(prefix="fake-k8s-"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeKubernetes:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                self._runner = web.AppRunner(self._app(), handle_signals=False, shutdown_timeout=0.5)
                await self._runner.setup()
                site = web.TCPSite(self._runner, "127.0.0.1", 0)
                await site.start()
                self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                self._spawn(self._controller())
                ready.set()

            loop.run_until_complete(boot())
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name="fake-k8s", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def go_offline(self) -> None:
        """Stop answering, as an API server restarting does: connections refused, open streams cut."""
        async def down() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)

    def go_online(self) -> None:
        """Answer again on the same port, with everything (Jobs, pods, containers) as it was."""
        async def up() -> None:
            self._runner = web.AppRunner(self._app(), handle_signals=False, shutdown_timeout=0.5)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(up(), self._loop).result(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, *, server: str | None = None, token: str | None = None) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": server or self.url}}],
            "users": [{"name": "fake", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": self.namespace}}],
        }))
        return path

    def close(self) -> None:
        if self._loop is not None:
            async def stop() -> None:
                for task in list(self._tasks):
                    task.cancel()
                if self._runner is not None:
                    await self._runner.cleanup()
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={OWNER_LABEL}={self.owner}"],
                             capture_output=True, text=True, check=False).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
        shutil.rmtree(self._volumes, ignore_errors=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the app ------------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        base, batch = "/api/v1/namespaces/{ns}", "/apis/batch/v1/namespaces/{ns}"
        app.router.add_get("/version", self._version)
        app.router.add_get("/version/", self._version)
        app.router.add_post(f"{batch}/jobs", self._create_job)
        app.router.add_get(f"{batch}/jobs", self._list_jobs)
        app.router.add_get(f"{batch}/jobs/{{name}}", self._get_job)
        app.router.add_delete(f"{batch}/jobs/{{name}}", self._delete_job)
        app.router.add_get(f"{base}/pods", self._list_pods)
        app.router.add_get(f"{base}/pods/{{name}}", self._get_pod)
        app.router.add_get(f"{base}/pods/{{name}}/log", self._logs)
        app.router.add_get(f"{base}/pods/{{name}}/exec", self._exec)
        app.router.add_post(f"{base}/secrets", self._create_secret)
        app.router.add_get(f"{base}/secrets/{{name}}", self._get_secret)
        app.router.add_delete(f"{base}/secrets/{{name}}", self._delete_secret)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake", "platform": "linux/amd64",
                                  "gitCommit": "", "gitTreeState": "clean", "buildDate": _now(),
                                  "goVersion": "go1.22", "compiler": "gc"})

    # --- jobs ---------------------------------------------------------------------------------

    async def _create_job(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        try:
            job = await request.json()
        except ValueError:
            return _status(400, "BadRequest", "the body of the request was in an unknown format")
        if job.get("apiVersion", "batch/v1") != "batch/v1" or job.get("kind", "Job") != "Job":
            return _status(400, "BadRequest", "the API version in the data does not match the expected API version")
        meta = job.setdefault("metadata", {})
        if meta.get("namespace", ns) != ns:
            return _status(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                              "sent on the request")
        try:
            validate_job(job, ns)
        except Invalid as exc:
            strict = [cause for cause in exc.causes if "strict decoding error" in cause[1]]
            if strict:
                return _status(400, "BadRequest", f'strict decoding error: unknown field "{strict[0][0]}"')
            name = meta.get("name", "")
            message = f'Job.batch "{name}" is invalid: ' + "; ".join(f"{field}: {msg}" for field, msg in exc.causes)
            return _status(422, "Invalid", message, details={
                "name": name, "group": "batch", "kind": "Job",
                "causes": [{"reason": "FieldValueInvalid", "message": msg, "field": field} for field, msg in exc.causes]})
        name = meta["name"]
        if (ns, name) in self.jobs:
            return _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists',
                           details={"name": name, "group": "batch", "kind": "jobs"})
        uid = str(uuid.uuid4())
        meta.update({"namespace": ns, "uid": uid, "resourceVersion": str(time.time_ns()), "generation": 1,
                     "creationTimestamp": _now()})
        spec = job["spec"]
        selector = {"batch.kubernetes.io/controller-uid": uid}
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec["selector"] = {"matchLabels": selector}
        template_meta = spec["template"].setdefault("metadata", {})
        template_meta["labels"] = {**(template_meta.get("labels") or {}), **selector, "controller-uid": uid,
                                   "batch.kubernetes.io/job-name": name, "job-name": name}
        job.update({"apiVersion": "batch/v1", "kind": "Job",
                    "status": {"startTime": _now(), "active": 1, "ready": 0, "terminating": 0}})
        job["_started"] = time.time()
        self.jobs[(ns, name)] = job
        key, pod = self._make_pod(ns, job)
        self._spawn(self._run_pod(key, pod))
        return web.json_response(_public(job), status=201)

    async def _list_jobs(self, request: web.Request) -> web.Response:
        ns, selector = request.match_info["ns"], request.query.get("labelSelector", "")
        items = [_public(job) for (jns, _), job in self.jobs.items()
                 if jns == ns and _selects(selector, job["metadata"].get("labels") or {})]
        return web.json_response({"kind": "JobList", "apiVersion": "batch/v1",
                                  "metadata": {"resourceVersion": str(time.time_ns())}, "items": items})

    async def _get_job(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.jobs:
            return _not_found("jobs", key[1], group="batch")
        return web.json_response(_public(self.jobs[key]))

    async def _delete_job(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        policy = request.query.get("propagationPolicy")
        if request.can_read_body:
            with_body = await request.json()
            policy = (with_body or {}).get("propagationPolicy") or policy
        if policy not in (None, "Orphan", "Background", "Foreground"):
            return _status(400, "BadRequest", f"unsupported propagationPolicy {policy!r}")
        job = self.jobs.pop((ns, name), None)
        if job is None:
            return _not_found("jobs", name, group="batch")
        uid = job["metadata"]["uid"]
        for key, pod in list(self.pods.items()):
            owners = pod["metadata"].get("ownerReferences") or []
            if not any(owner.get("uid") == uid for owner in owners):
                continue
            if policy in (None, "Orphan"):  # the API's default for a Job: its pods stay
                pod["metadata"]["ownerReferences"] = []
            else:
                self._remove_pod(key)
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                  "details": {"name": name, "group": "batch", "kind": "jobs", "uid": uid}})

    # --- pods ---------------------------------------------------------------------------------

    async def _list_pods(self, request: web.Request) -> web.Response:
        ns, selector = request.match_info["ns"], request.query.get("labelSelector", "")
        items = [pod for (pns, _), pod in self.pods.items()
                 if pns == ns and _selects(selector, pod["metadata"].get("labels") or {})]
        return web.json_response({"kind": "PodList", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": str(time.time_ns())}, "items": items})

    async def _get_pod(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.pods:
            return _not_found("pods", key[1])
        return web.json_response(self.pods[key])

    def _container_for(self, request: web.Request) -> tuple[str, str] | web.Response:
        """(docker id, container name) of the request's pod container, or the API's error."""
        key = (request.match_info["ns"], request.match_info["name"])
        pod = self.pods.get(key)
        if pod is None:
            return _not_found("pods", key[1])
        names = [container["name"] for container in pod["spec"]["containers"]]
        name = request.query.get("container")
        if name is None:
            if len(names) > 1:
                return _status(400, "BadRequest", f"a container name must be specified for pod {key[1]}, choose one "
                                                  f"of: [{' '.join(names)}]")
            name = names[0]
        if name not in names:
            return _status(400, "BadRequest", f"container {name} is not valid for pod {key[1]}")
        status = next((s for s in pod["status"].get("containerStatuses", []) if s["name"] == name), None)
        docker_id = self._containers.get(key, {}).get(name)
        if docker_id is None or status is None or "waiting" in status["state"]:
            reason = (status or {}).get("state", {}).get("waiting", {}).get("reason", "ContainerCreating")
            return _status(400, "BadRequest", f'container "{name}" in pod "{key[1]}" is waiting to start: {reason}')
        return docker_id, name

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        found = self._container_for(request)
        if isinstance(found, web.Response):
            return found
        docker_id, _ = found
        query = request.query
        follow = query.get("follow") == "true"
        args = ["docker", "logs"]
        if follow:
            args.append("--follow")
        if query.get("timestamps") == "true":
            args.append("--timestamps")
        if query.get("tailLines"):
            args += ["--tail", query["tailLines"]]
        if query.get("sinceSeconds"):
            args += ["--since", f"{int(query['sinceSeconds'])}s"]
        process = await asyncio.create_subprocess_exec(*args, docker_id, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.STDOUT)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            assert process.stdout is not None
            while data := await process.stdout.read(65536):
                await response.write(data)
            await process.wait()
            await response.write_eof()
        except ConnectionResetError:  # the client went away (a stream shut down from its side): as a server does
            pass
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        return response

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        found = self._container_for(request)
        if isinstance(found, web.Response):
            return found
        docker_id, name = found
        pod = self.pods[(request.match_info["ns"], request.match_info["name"])]
        status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == name)
        if "running" not in status["state"]:
            return _status(400, "BadRequest", f"cannot exec in a stopped container: {name}")
        command = request.query.getall("command", [])
        if not command:
            return _status(400, "BadRequest", "you must specify at least 1 command")
        with_stdin = request.query.get("stdin") == "true"
        ws = web.WebSocketResponse(protocols=self.exec_protocols, max_msg_size=0)
        await ws.prepare(request)
        self.exec_spoken.append(ws.ws_protocol or "")
        process = await asyncio.create_subprocess_exec(
            "docker", "exec", *(["-i"] if with_stdin else []), docker_id, *command,
            stdin=asyncio.subprocess.PIPE if with_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)

        async def pump(stream: asyncio.StreamReader, channel: int) -> None:
            while data := await stream.read(65536):
                await ws.send_bytes(bytes([channel]) + data)

        async def feed() -> None:
            async for message in ws:
                if message.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    break
                data = message.data if isinstance(message.data, bytes) else message.data.encode()
                if not data or process.stdin is None:
                    continue
                if data[0] == 0:
                    process.stdin.write(data[1:])
                    await process.stdin.drain()
                elif data[0] == 255 and ws.ws_protocol == "v5.channel.k8s.io" and data[1:2] == b"\x00":
                    process.stdin.close()

        feeder = asyncio.ensure_future(feed())
        try:
            assert process.stdout is not None and process.stderr is not None
            await asyncio.gather(pump(process.stdout, 1), pump(process.stderr, 2))
            code = await process.wait()
            if code == 0:
                final = {"metadata": {}, "status": "Success"}
            else:
                final = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                         "message": f"command terminated with non-zero exit code: error executing command "
                                    f"{command}: exit status {code}",
                         "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
            await ws.send_bytes(b"\x03" + json.dumps(final).encode())
            await ws.close()
        except ConnectionResetError:  # the client went away
            pass
        finally:
            feeder.cancel()
            if process.returncode is None:
                process.kill()
                await process.wait()
        return ws

    # --- secrets ------------------------------------------------------------------------------

    async def _create_secret(self, request: web.Request) -> web.Response:
        ns, body = request.match_info["ns"], await request.json()
        name = (body.get("metadata") or {}).get("name", "")
        if not _DNS_SUBDOMAIN.fullmatch(name):
            return _status(422, "Invalid", f'Secret "{name}" is invalid: metadata.name: Invalid value')
        if (ns, name) in self.secrets:
            return _status(409, "AlreadyExists", f'secrets "{name}" already exists')
        data = dict(body.get("data") or {})
        data.update({key: base64.b64encode(value.encode()).decode()
                     for key, value in (body.get("stringData") or {}).items()})
        secret = {"apiVersion": "v1", "kind": "Secret", "type": body.get("type", "Opaque"), "data": data,
                  "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()), "creationTimestamp": _now()}}
        self.secrets[(ns, name)] = secret
        return web.json_response(secret, status=201)

    async def _get_secret(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        return web.json_response(self.secrets[key]) if key in self.secrets else _not_found("secrets", key[1])

    async def _delete_secret(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if self.secrets.pop(key, None) is None:
            return _not_found("secrets", key[1])
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})

    # --- the kubelet and the job controller ---------------------------------------------------

    def _make_pod(self, ns: str, job: dict[str, Any]) -> tuple[tuple[str, str], dict[str, Any]]:
        name = f"{job['metadata']['name']}-{secrets.token_hex(3)[:5]}"
        template = job["spec"]["template"]
        spec = json.loads(json.dumps(template["spec"]))
        spec.setdefault("serviceAccountName", "default")
        spec["nodeName"] = self.node
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "generateName": job["metadata"]["name"] + "-", "namespace": ns,
                         "uid": str(uuid.uuid4()), "creationTimestamp": _now(), "resourceVersion": str(time.time_ns()),
                         "labels": dict(template["metadata"]["labels"]),
                         "annotations": dict(template["metadata"].get("annotations") or {}),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                              "uid": job["metadata"]["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": spec,
            "status": {"phase": "Pending", "hostIP": "127.0.0.1", "startTime": _now(), "containerStatuses": [
                {"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0,
                 "started": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
                for c in spec["containers"]]},
        }
        key = (ns, name)
        self.pods[key] = pod
        return key, pod

    async def _run_pod(self, key: tuple[str, str], pod: dict[str, Any]) -> None:
        ns, name = key
        spec = pod["spec"]
        problem = await self._admit(ns, spec)
        if problem is not None:
            reason, message = problem
            for status in pod["status"]["containerStatuses"]:
                status["state"] = {"waiting": {"reason": reason, "message": message}}
            return
        pod_dir = self._volumes / name
        for volume in spec.get("volumes") or []:
            if "emptyDir" in volume:
                path = pod_dir / volume["name"]
                path.mkdir(parents=True)
                path.chmod(0o777)
        ids = await asyncio.gather(*(self._docker_run(ns, pod, container, pod_dir) for container in spec["containers"]))
        if key not in self.pods:  # deleted while its containers were being created
            await _docker("rm", "-f", *ids)
            return
        self._containers[key] = {c["name"]: cid for c, cid in zip(spec["containers"], ids)}
        await self._observe()

    async def _admit(self, ns: str, spec: dict[str, Any]) -> tuple[str, str] | None:
        """What the kubelet refuses before starting a container: a missing image or Secret, root with
        runAsNonRoot."""
        pod_security = spec.get("securityContext") or {}
        for container in spec["containers"]:
            security = {**pod_security, **(container.get("securityContext") or {})}
            if security.get("runAsNonRoot") and not security.get("runAsUser"):
                return "CreateContainerConfigError", "container has runAsNonRoot and image will run as root"
            for source in container.get("envFrom") or []:
                ref = source.get("secretRef")
                if ref and (ns, ref["name"]) not in self.secrets and not ref.get("optional"):
                    return "CreateContainerConfigError", f'secret "{ref["name"]}" not found'
            code, _ = await _docker("image", "inspect", container["image"])
            if code != 0:
                return _STUCK, f'pull access denied for {container["image"]} (no network in the fake cluster)'
        return None

    async def _docker_run(self, ns: str, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> str:
        spec = pod["spec"]
        security = {**(spec.get("securityContext") or {}), **(container.get("securityContext") or {})}
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            secret = self.secrets.get((ns, (source.get("secretRef") or {}).get("name", "")))
            for key, value in ((secret or {}).get("data") or {}).items():
                env[key] = base64.b64decode(value).decode()
        for item in container.get("env") or []:
            env[item["name"]] = expand(item.get("value", ""), env)
        command = [expand(part, env) for part in (container.get("command") or []) + (container.get("args") or [])]
        args = ["run", "-d", "--label", f"{OWNER_LABEL}={self.owner}", "--label", f"fake-k8s.pod={pod['metadata']['name']}",
                "--network", "none", "--stop-timeout", str(spec.get("terminationGracePeriodSeconds", 30))]
        if "runAsUser" in security:
            args += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        capabilities = security.get("capabilities") or {}
        args += [f"--cap-drop={cap}" for cap in capabilities.get("drop") or []]
        args += [f"--cap-add={cap}" for cap in capabilities.get("add") or []]
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        limits = (container.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            args += ["--memory", str(int(_quantity_bytes(limits["memory"])))]
        if "cpu" in limits:
            args += ["--cpus", f"{_quantity_bytes(limits['cpu']):.3f}"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        for mount in container.get("volumeMounts") or []:
            args += ["-v", f"{pod_dir / mount['name']}:{mount['mountPath']}{':ro' if mount.get('readOnly') else ''}"]
        if container.get("workingDir"):
            args += ["-w", container["workingDir"]]
        if command:
            args += ["--entrypoint", command[0], container["image"], *command[1:]]
        else:
            args.append(container["image"])
        code, out = await _docker(*args)
        if code != 0:
            raise RuntimeError(f"docker run failed: {out}")
        return out.strip()

    async def _observe(self) -> None:
        """Container states from Docker into pod statuses; then the job controller's decisions."""
        ids = {cid: (key, name) for key, names in self._containers.items() for name, cid in names.items()}
        if ids:
            _, out = await _docker("inspect", *ids)
            for info in json.loads(out) if out.strip().startswith("[") else []:
                key, name = ids.get(info["Id"], (None, None))
                pod = self.pods.get(key) if key else None
                if pod is None:
                    continue
                status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == name)
                state = info["State"]
                started = state.get("StartedAt", "")[:19] + "Z"
                if state.get("Running"):
                    status.update(state={"running": {"startedAt": started}}, ready=True, started=True,
                                  containerID=f"docker://{info['Id']}")
                elif state.get("Status") in ("exited", "dead"):
                    exit_code = int(state.get("ExitCode", 0))
                    status.update(ready=False, started=False, containerID=f"docker://{info['Id']}", state={
                        "terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                       "startedAt": started, "finishedAt": state.get("FinishedAt", "")[:19] + "Z",
                                       "containerID": f"docker://{info['Id']}"}})
                states = [s["state"] for s in pod["status"]["containerStatuses"]]
                if all("terminated" in s for s in states):
                    failed = any(s["terminated"]["exitCode"] != 0 for s in states)
                    pod["status"]["phase"] = "Failed" if failed else "Succeeded"
                elif any("running" in s for s in states):
                    pod["status"]["phase"] = "Running"
        now = time.time()
        for (ns, name), job in list(self.jobs.items()):
            status = job["status"]
            if status.get("conditions"):
                continue
            uid = job["metadata"]["uid"]
            pods = [(key, pod) for key, pod in self.pods.items()
                    if pod["metadata"]["labels"].get("controller-uid") == uid]
            deadline = job["spec"].get("activeDeadlineSeconds")
            if deadline is not None and now - job["_started"] >= deadline:
                for key, _ in pods:
                    self._remove_pod(key)
                self._finish(job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
                continue
            phases = [pod["status"]["phase"] for _, pod in pods]
            if "Succeeded" in phases:
                self._finish(job, "Complete", None, None)
            elif "Failed" in phases:
                self._finish(job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    @staticmethod
    def _finish(job: dict[str, Any], kind: str, reason: str | None, message: str | None) -> None:
        status = job["status"]
        status.update(active=0, ready=0)
        status["failed" if kind == "Failed" else "succeeded"] = 1
        if kind == "Complete":
            status["completionTime"] = _now()
        condition = {"type": kind, "status": "True", "lastProbeTime": _now(), "lastTransitionTime": _now()}
        if reason:
            condition.update(reason=reason, message=message)
        status["conditions"] = [condition]

    def _remove_pod(self, key: tuple[str, str]) -> None:
        self.pods.pop(key, None)
        ids = list(self._containers.pop(key, {}).values())
        if ids:
            self._spawn(_docker("rm", "-f", *ids))

    async def _controller(self) -> None:
        while True:
            try:
                await self._observe()
            except Exception as exc:  # noqa: BLE001 - one bad look must not stop the controller
                self.errors.append(repr(exc))
            await asyncio.sleep(0.25)


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in job.items() if not key.startswith("_")}


def _not_found(kind: str, name: str, *, group: str = "") -> web.Response:
    what = f"{kind}.{group}" if group else kind
    return _status(404, "NotFound", f'{what} "{name}" not found', details={"name": name, "group": group, "kind": kind})


async def _docker(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec("docker", *args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace")

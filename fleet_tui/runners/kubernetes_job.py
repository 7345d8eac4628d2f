"""The Job a run becomes: its name, labels and annotations, the pod's two containers (`agent` and `keeper`) and
the small shell scripts they run, limits and security settings. Pure: no client, no I/O (the Kubernetes runner
sends what this builds)."""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from fleet_tui.config import RunnerConfig
from fleet_tui.runners.base import LABEL_INSTANCE, RunSpec
from fleet_tui.runners.local import RunnerError

WORKDIR = "/workspace"
SCRATCH = "/fleet"
CONTROL = "/fleet-control"  # ready / stop / collected markers, outside what is collected
AGENT = "agent"
KEEPER = "keeper"
LABEL_RUN = "fleet.run_id"  # a label-safe form of the run id (the exact one is in ANN_RUN)
LABEL_ROLE = "fleet.role"
LABEL_ISSUE = "fleet.issue"
LABEL_EGRESS = "fleet.egress"  # "none" for runs that must not reach the network: select it in a NetworkPolicy
ANN_RUN = "fleet-tui/run-id"
ANN_REPO = "fleet-tui/repo"
ANN_TIMEOUT = "fleet-tui/timeout-s"
FORGE_TOKEN_NAMES = frozenset({"GITHUB_TOKEN", "GH_TOKEN", "GITHUB_PAT"})

# The agent container: wait (bounded) for the workspace, run the Invocation ("$@"), end it when the keeper is
# told to stop it. The container ends with the agent's own exit code.
_AGENT_SCRIPT = f"""c={CONTROL}
i=0
while [ ! -e "$c/ready" ]; do
  [ -e "$c/stop" ] && exit 143
  i=$((i+1)); if [ "$i" -gt 1200 ]; then echo "fleet: the workspace never arrived" >&2; exit 125; fi
  sleep 0.5
done
cd {WORKDIR} || exit 125
exec 3>&2
"$@" </dev/null 2>&3 3>&- &
pid=$!
exec 2>/dev/null  # the shell's own "Terminated" notes are not the agent's output
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
( while kill -0 "$pid" 2>/dev/null; do
    if [ -e "$c/stop" ]; then kill -TERM "$pid" 2>/dev/null; sleep 2; kill -KILL "$pid" 2>/dev/null; exit 0; fi
    sleep 0.5
  done ) &
code=0
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; code=$?; done
exit "$code"
"""
# The keeper: keep the pod (and its volumes) until the orchestrator has collected /fleet.
_KEEPER_SCRIPT = f"""trap 'exit 0' TERM INT
while [ ! -e {CONTROL}/collected ]; do sleep 1; done
"""


_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_KEY_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def label_value(text: str) -> str:
    """`text` when Kubernetes takes it as a label value; else a readable prefix and a hash of the whole."""
    if len(text) <= 63 and _LABEL_VALUE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:50].strip("-_.")
    return f"{stem}-{digest}" if stem else digest


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_KEY_NAME.fullmatch(name))


def job_name(instance: str, run_id: str) -> str:
    """A DNS label (<= 63) unique to (instance, run): readable run id, then a hash of both."""
    digest = hashlib.sha256(f"{instance}\0{run_id}".encode()).hexdigest()[:10]
    stem = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")[:40].strip("-")
    return f"fleet-{stem}-{digest}" if stem else f"fleet-{digest}"


def memory_quantity(memory: str) -> str:
    """Docker's 512m / 4g (binary units) as a Kubernetes quantity (512Mi / 4Gi)."""
    match = re.fullmatch(r"(\d+)([bkmg]?)", memory.strip().lower())
    if not match:
        raise RunnerError(f"runner.memory must look like 512m or 4g, got {memory!r}")
    return match.group(1) + {"": "", "b": "", "k": "Ki", "m": "Mi", "g": "Gi"}[match.group(2)]


def cpu_quantity(cpus: float) -> str:
    millis = max(1, round(cpus * 1000))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _no_expansion(text: str) -> str:
    """Kubernetes expands $(VAR) in command, args and env values; `$$` is a literal `$`."""
    return text.replace("$", "$$")


def _user_ids(user: str) -> tuple[int, int]:
    uid, _, gid = user.strip().partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise RunnerError(f'runner.user must be numeric for Kubernetes ("1000:1000"), got {user!r}')
    if int(uid) == 0:
        raise RunnerError(f'runner.user is {user!r}: agents never run as root; use a uid like "1000:1000"')
    return int(uid), int(gid or uid)


def run_labels(spec: RunSpec, *, instance: str, labels: dict[str, str]) -> dict[str, str]:
    """The labels of a run's Job and pod: the fleet's own over the run's extra ones (values made label-safe)."""
    extra = {key: label_value(str(value)) for key, value in {**spec.labels, **labels}.items() if valid_label_key(key)}
    result = {**extra, LABEL_INSTANCE: instance, LABEL_RUN: label_value(spec.run_id),
              LABEL_ROLE: label_value(str(spec.role)), LABEL_EGRESS: "none" if spec.network == "none" else "allowed",
              "app.kubernetes.io/managed-by": "fleet-tui"}
    if spec.issue is not None:
        result[LABEL_ISSUE] = str(spec.issue)
    return result


def job_manifest(spec: RunSpec, config: RunnerConfig, *, instance: str, repo: str, image: str,
                 labels: dict[str, str], deadline_margin_s: float, ttl_s: int, read_only_root: bool) -> dict[str, Any]:
    """The Job for `spec`, as the API takes it (`config`: [runner] and its [runner.kubernetes])."""
    settings = config.kubernetes
    uid, gid = _user_ids(config.user)
    labels = run_labels(spec, instance=instance, labels=labels)
    annotations = {ANN_RUN: spec.run_id, ANN_REPO: repo, ANN_TIMEOUT: str(spec.timeout_s)}
    limits = {"memory": memory_quantity(config.memory), "cpu": cpu_quantity(config.cpus)}
    container_security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                          "readOnlyRootFilesystem": read_only_root, "runAsNonRoot": True}
    env = [{"name": name, "value": _no_expansion(value)} for name, value in sorted(spec.invocation.env.items())
           if name not in FORGE_TOKEN_NAMES]
    mounts = [{"name": "workspace", "mountPath": WORKDIR}, {"name": "fleet", "mountPath": SCRATCH},
              {"name": "control", "mountPath": CONTROL}, {"name": "tmp", "mountPath": "/tmp"}]
    agent: dict[str, Any] = {
        "name": AGENT, "image": image, "imagePullPolicy": settings.image_pull_policy,
        "command": [_no_expansion(part) for part in ("/bin/sh", "-c", _AGENT_SCRIPT, "fleet-agent",
                                                      *spec.invocation.argv)],
        "workingDir": WORKDIR, "env": env, "resources": {"limits": limits, "requests": dict(limits)},
        "securityContext": container_security, "volumeMounts": mounts,
    }
    if settings.engine_secret:
        agent["envFrom"] = [{"secretRef": {"name": settings.engine_secret}}]
    keeper_limits = {"memory": "64Mi", "cpu": "100m"}
    keeper = {
        "name": KEEPER, "image": image, "imagePullPolicy": settings.image_pull_policy,
        "command": ["/bin/sh", "-c", _no_expansion(_KEEPER_SCRIPT)], "workingDir": "/",
        "resources": {"limits": keeper_limits, "requests": dict(keeper_limits)},
        "securityContext": container_security, "volumeMounts": mounts[:3],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never", "automountServiceAccountToken": False, "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 5,
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": name, "emptyDir": {}} for name in ("workspace", "fleet", "control", "tmp")],
        "containers": [agent, keeper],
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [
            {key: int(value) if key == "tolerationSeconds" else value for key, value in entry.items()}
            for entry in settings.tolerations]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(instance, spec.run_id), "namespace": settings.namespace,
                     "labels": labels, "annotations": annotations},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, math.ceil(spec.timeout_s + deadline_margin_s)),
            "ttlSecondsAfterFinished": ttl_s,
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
        },
    }

"""The Kubernetes runner against the loopback fake of the Kubernetes API (tests/fake_k8s.py), whose pods run as
containers on the local Docker engine with the `fleet-test:latest` image (tests/docker/build-test-image.sh).

The same tests run against a real cluster (kind or k3s) with one environment variable naming a kubeconfig
context; the cluster must be able to run the test image:

    kind create cluster --name fleet
    bash tests/docker/build-test-image.sh && kind load docker-image fleet-test:latest --name fleet
    FLEET_K8S_TEST_CONTEXT=kind-fleet pytest tests/test_runner_kubernetes.py

(optional: FLEET_K8S_TEST_NAMESPACE, default `default`; FLEET_K8S_TEST_IMAGE, default `fleet-test:latest`.)
The tests that check what the fake itself refuses run against the fake only. Every runner has a fleet instance
id of its own, so nothing here sees or deletes a Job it did not make. Without Docker the tests skip (and fail
under CI=true).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from conftest import in_ci
from fake_k8s import FakeKubernetes

from fleet_tui.config import KubernetesConfig, RunnerConfig
from fleet_tui.engines.base import Invocation
from fleet_tui.model import Role, RunState
from fleet_tui.runners.base import LABEL_INSTANCE, RunSpec
from fleet_tui.runners.kubernetes import KubernetesRunner, KubernetesUnavailable
from fleet_tui.runners.kubernetes_job import ANN_RUN, LABEL_EGRESS, LABEL_ISSUE, LABEL_ROLE
from fleet_tui.runners.local import RunnerError

REAL_CONTEXT = os.environ.get("FLEET_K8S_TEST_CONTEXT", "")
# Read before the tests' own HOME replaces the developer's: $KUBECONFIG as it is, else ~/.kube/config.
REAL_KUBECONFIG = "" if os.environ.get("KUBECONFIG") else str(Path.home() / ".kube" / "config")
IMAGE = os.environ.get("FLEET_K8S_TEST_IMAGE", "fleet-test:latest")
BUILD_SCRIPT = Path(__file__).parent / "docker" / "build-test-image.sh"
_INSTANCE_PREFIX = f"k8s-{os.getpid()}-{time.time_ns() % 10**6}-"
_instances = itertools.count()

pytestmark = [pytest.mark.anyio]
needs_docker = pytest.mark.docker
fake_only = pytest.mark.skipif(bool(REAL_CONTEXT), reason="checks the fake itself")


@dataclass
class Cluster:
    kubeconfig: str
    context: str
    namespace: str
    fake: FakeKubernetes | None

    def runner(self, *, instance: str | None = None, secret: str = "", **kwargs: object) -> KubernetesRunner:
        settings = KubernetesConfig(kubeconfig=self.kubeconfig, context=self.context, namespace=self.namespace,
                                    engine_secret=secret, image_pull_policy="IfNotPresent",
                                    node_selector={"kubernetes.io/os": "linux"},
                                    tolerations=[{"key": "fleet", "operator": "Exists", "effect": "NoSchedule"}])
        config = RunnerConfig(kind="kubernetes", image=IMAGE, memory="256m", cpus=0.5, kubernetes=settings)
        options = {"deadline_margin_s": 30.0, "poll_s": 0.25, "start_timeout_s": 60.0, **kwargs}
        return KubernetesRunner(config, instance=instance or f"{_INSTANCE_PREFIX}{next(_instances)}",
                                repo="octo/fleet", owner=(1000, 1000), **options)  # type: ignore[arg-type]


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"Kubernetes runner tests must run under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if REAL_CONTEXT:
        yield Cluster(REAL_KUBECONFIG, REAL_CONTEXT, os.environ.get("FLEET_K8S_TEST_NAMESPACE", "default"), None)
        return
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        try:
            client.images.get(IMAGE)
        except Exception:  # noqa: BLE001
            done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                _unavailable(f"image {IMAGE} missing and {BUILD_SCRIPT.name} failed: {done.stderr[-500:]}")
        client.close()
    except Exception as exc:  # noqa: BLE001 - no engine to back the fake's pods
        _unavailable(f"no reachable Docker engine: {exc}")
    fake = FakeKubernetes().start()
    path = fake.kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    try:
        yield Cluster(str(path), "", fake.namespace, fake)
    finally:
        fake.close()


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[tuple[FakeKubernetes, Path]]:
    """A fake with no need for Docker, for what the API server itself answers."""
    fake = FakeKubernetes().start()
    try:
        yield fake, fake.kubeconfig(tmp_path / "kubeconfig")
    finally:
        fake.close()


def run_dirs(tmp_path: Path) -> tuple[Path, Path]:
    workspace, scratch = tmp_path / "ws", tmp_path / "scratch"
    (workspace / "src").mkdir(parents=True)
    (workspace / "README.md").write_text("# Project\n")
    (workspace / "src" / "main.py").write_text("print('hi')\n")
    scratch.mkdir()
    (scratch / "prompt.md").write_text("do the thing\n")
    return workspace, scratch


def spec_for(tmp_path: Path, script: str, *, run_id: str, timeout_s: float = 60, issue: int | None = 7,
             role: Role = Role.DEV, env: dict[str, str] | None = None, network: str = "none") -> RunSpec:
    workspace, scratch = run_dirs(tmp_path / run_id)
    return RunSpec(run_id=run_id, role=role, issue=issue,
                   invocation=Invocation(argv=("sh", "-c", script), env=env or {}),
                   workspace=workspace, scratch=scratch, timeout_s=timeout_s, network=network)


async def collect_lines(handle: object) -> list[str]:
    return [line async for line in handle.lines()]  # type: ignore[attr-defined]


async def _extend(lines: list[str], handle: object) -> None:
    lines.extend(await collect_lines(handle))


def batch_api(runner: KubernetesRunner):  # type: ignore[no-untyped-def]
    return runner.batch()


# --- a whole run ----------------------------------------------------------------------------------------


@needs_docker
async def test_run_streams_lines_returns_exit_code_and_brings_fleet_back(cluster: Cluster, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_forge_token_never_in_a_pod")
    runner = cluster.runner(secret="fleet-engine-keys")
    # stdout and stderr are two streams: the log keeps each one's order, not their interleaving (a stderr line
    # may land among the 16 KiB pieces of a long stdout line still being written), so it comes apart.
    script = ('echo "start in $(pwd) as $(id -u):$(id -g)"; cat README.md; '
              'echo '"'literal: $(NOT_EXPANDED)'"' "$KEY"; cat /fleet/prompt.md; '
              'head -c 40000 /dev/zero | tr "\\0" a; echo; sleep 0.5; echo "to stderr" >&2; '
              'echo done > /fleet/result.txt; mkdir -p /fleet/out; echo nested > /fleet/out/n.txt; '
              'echo hack > /workspace/new.txt; exit 3')
    spec = spec_for(tmp_path, script, run_id="Dev-7-Hello_World-" + "x" * 60,
                    env={"KEY": "v$(HOME)", "GITHUB_TOKEN": "ghp_forge_token_never_in_a_pod"})
    core = runner.core()
    secret = {"metadata": {"name": "fleet-engine-keys"}, "stringData": {"ENGINE_KEY": "sk-from-the-secret"}}
    with contextlib.suppress(Exception):  # left by an earlier run against a real cluster
        core.delete_namespaced_secret("fleet-engine-keys", cluster.namespace)
    core.create_namespaced_secret(cluster.namespace, secret)
    spec = dataclasses.replace(spec, invocation=dataclasses.replace(
        spec.invocation, argv=("sh", "-c", 'echo "engine key: $ENGINE_KEY"; ' + script)))
    if cluster.fake is not None:  # exec as a server before 1.30 speaks it (no way to close stdin)
        cluster.fake.exec_protocols = ("v4.channel.k8s.io",)
        cluster.fake.exec_spoken.clear()
    handle = await runner.start(spec)
    try:
        with anyio.fail_after(60):
            lines = await collect_lines(handle)
            code = await handle.wait()
        assert code == 3
        out = [line for line in lines if line != "to stderr"]
        assert out[:2] == ["engine key: sk-from-the-secret", "start in /workspace as 1000:1000"]
        assert "# Project" in lines
        assert "a" * 40000 in lines, [len(line) for line in lines]  # a line longer than the runtime's 16 KiB pieces comes back whole
        assert "literal: $(NOT_EXPANDED) v$(HOME)" in lines, lines  # Kubernetes' own $(VAR) expansion never applies
        assert "to stderr" in lines and "do the thing" in lines

        # The Job as the API has it: security, limits, labels, the Secret and no forge token.
        job = batch_api(runner).read_namespaced_job(handle.job, cluster.namespace)
        labels = job.metadata.labels
        assert labels[LABEL_INSTANCE] == runner.instance and labels[LABEL_ROLE] == "dev"
        assert labels[LABEL_ISSUE] == "7" and labels[LABEL_EGRESS] == "none"
        assert job.metadata.annotations[ANN_RUN] == spec.run_id
        assert job.spec.backoff_limit == 0 and job.spec.active_deadline_seconds == 90
        pod = job.spec.template.spec
        assert pod.restart_policy == "Never" and pod.automount_service_account_token is False
        assert pod.security_context.run_as_non_root is True
        assert (pod.security_context.run_as_user, pod.security_context.run_as_group) == (1000, 1000)
        assert pod.node_selector == {"kubernetes.io/os": "linux"} and pod.tolerations[0].key == "fleet"
        for container in pod.containers:
            assert container.security_context.allow_privilege_escalation is False
            assert container.security_context.capabilities.drop == ["ALL"]
            assert container.security_context.read_only_root_filesystem is True
        agent = pod.containers[0]
        assert agent.resources.limits == {"memory": "256Mi", "cpu": "500m"}
        assert [source.secret_ref.name for source in agent.env_from] == ["fleet-engine-keys"]
        assert "GITHUB_TOKEN" not in {item.name for item in agent.env}
        assert "ghp_forge_token" not in json.dumps(runner.batch().api_client.sanitize_for_serialization(job))

        # /fleet comes back into scratch; the workspace on our disk is untouched.
        await runner.collect(spec.run_id, spec.scratch)
        assert (spec.scratch / "result.txt").read_text() == "done\n"
        assert (spec.scratch / "out" / "n.txt").read_text() == "nested\n"
        assert not (spec.workspace / "new.txt").exists()
        if cluster.fake is not None:
            assert set(cluster.fake.exec_spoken) == {"v4.channel.k8s.io"}
    finally:
        if cluster.fake is not None:
            cluster.fake.exec_protocols = FakeKubernetes().exec_protocols
        await runner.cleanup(spec.run_id)
        core.delete_namespaced_secret("fleet-engine-keys", cluster.namespace)
    assert await runner.find_runs() == []
    if cluster.fake is not None:  # Background propagation: the pod went with the Job
        assert not [key for key, pod in cluster.fake.pods.items() if key[1].startswith(handle.job)]


@needs_docker
async def test_timeout_ends_the_run_with_124(cluster: Cluster, tmp_path: Path) -> None:
    runner = cluster.runner()
    spec = spec_for(tmp_path, "echo started; sleep 60; echo never", run_id="dev-8-slow", timeout_s=3)
    handle = await runner.start(spec)
    lines: list[str] = []
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:  # as the supervisor does: read and wait at once
                tasks.start_soon(lambda: _extend(lines, handle))
                code = await handle.wait()
        assert code == 124 and handle.timed_out
        assert lines == ["started"]
    finally:
        await runner.cleanup(spec.run_id)


@needs_docker
async def test_the_cluster_ends_a_run_nobody_watches_at_its_deadline(cluster: Cluster, tmp_path: Path) -> None:
    """activeDeadlineSeconds holds while no orchestrator runs; a restarted one sees exit 124."""
    runner = cluster.runner(deadline_margin_s=0)
    spec = spec_for(tmp_path, "echo started; sleep 60", run_id="dev-9-away", timeout_s=12)
    await runner.start(spec)  # ... and the orchestrator goes away
    try:
        again = cluster.runner(instance=runner.instance, deadline_margin_s=0)
        with anyio.fail_after(40):
            while True:
                job = (await again.call(lambda: again._own_jobs(spec.run_id)))[0]
                if any(c.reason == "DeadlineExceeded" for c in (job.status.conditions or [])):
                    break
                await anyio.sleep(0.5)
            handle = await again.attach(spec.run_id)
            assert await handle.wait() == 124
    finally:
        await runner.cleanup(spec.run_id)


@needs_docker
async def test_stop_ends_the_agent_keeps_its_scratch_and_frees_its_slot(cluster: Cluster, tmp_path: Path) -> None:
    runner = cluster.runner()
    runner.settings = runner.settings.model_copy(update={"max_runs": 1})
    spec = spec_for(tmp_path, "echo partial > /fleet/partial.txt; echo up; sleep 60", run_id="dev-10-stop")
    second = spec_for(tmp_path, "echo second", run_id="dev-11-second")
    handle = await runner.start(spec)
    started: list[object] = []
    try:
        async with anyio.create_task_group() as tasks:
            async def start_second() -> None:  # max_runs = 1: waits for the first run's slot
                started.append(await runner.start(second))
            tasks.start_soon(start_second)
            with anyio.fail_after(30):
                async for line in handle.lines():
                    if line == "up":
                        break
            assert [run.run_id for run in await runner.find_runs()] == [spec.run_id] and not started
            began = time.monotonic()
            await handle.stop()
            with anyio.fail_after(30):
                code = await handle.wait()
            assert code != 0 and handle.stopped and not handle.timed_out
            assert time.monotonic() - began < 15
            await runner.collect(spec.run_id, spec.scratch)
            assert (spec.scratch / "partial.txt").read_text() == "partial\n"
            await runner.cleanup(spec.run_id)
        with anyio.fail_after(30):
            assert await started[0].wait() == 0  # type: ignore[attr-defined]
    finally:
        await runner.cleanup(spec.run_id)
        await runner.cleanup(second.run_id)


@needs_docker
async def test_a_restarted_runner_finds_only_its_runs_and_reads_from_the_start(cluster: Cluster,
                                                                              tmp_path: Path) -> None:
    first = cluster.runner()
    other = cluster.runner()  # another fleet in the same namespace
    spec = spec_for(tmp_path, "for i in 1 2 3; do echo line $i; done; sleep 3; echo line 4; exit 0",
                    run_id="qa-12-1", role=Role.QA, issue=12)
    await first.start(spec)
    try:
        assert await other.find_runs() == []
        with pytest.raises(RunnerError, match="no Job for run qa-12-1"):
            await other.attach(spec.run_id)
        restarted = cluster.runner(instance=first.instance)
        [found] = await restarted.find_runs()
        assert (found.run_id, found.role, found.issue) == ("qa-12-1", Role.QA, 12)
        handle = await restarted.attach(spec.run_id)
        lines: list[str] = []
        with anyio.fail_after(40):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(lambda: _extend(lines, handle))
                if cluster.fake is not None:  # the API server restarts meanwhile: nothing is lost or doubled
                    while not lines:
                        await anyio.sleep(0.05)
                    await anyio.to_thread.run_sync(cluster.fake.go_offline)
                    with pytest.raises(KubernetesUnavailable):
                        await restarted.find_runs()
                    assert restarted.is_reachable("") is False
                    await anyio.sleep(2)
                    await anyio.to_thread.run_sync(cluster.fake.go_online)
                assert await handle.wait() == 0
        assert lines == ["line 1", "line 2", "line 3", "line 4"]
        again = await restarted.attach(spec.run_id)  # after the end: the whole log once more
        assert await collect_lines(again) == lines
        await other.cleanup(spec.run_id)  # not its run: nothing happens
        assert len(await restarted.find_runs()) == 1
    finally:
        await first.cleanup(spec.run_id)
    assert await first.find_runs() == []


@needs_docker
async def test_an_image_the_cluster_cannot_pull_is_a_clear_error(cluster: Cluster, tmp_path: Path) -> None:
    runner = cluster.runner()
    runner.image = "fleet-no-such-image:never"
    spec = spec_for(tmp_path, "true", run_id="dev-13-noimage")
    with anyio.fail_after(30), pytest.raises(RunnerError, match="cannot start: (ErrImagePull|ImagePullBackOff)"):
        await runner.start(spec)
    assert await runner.find_runs() == []  # the failed start left nothing behind


# --- without a cluster ----------------------------------------------------------------------------------


async def test_an_unreachable_api_is_a_clear_error(tmp_path: Path) -> None:
    fake = FakeKubernetes()  # never started: only its kubeconfig writer is used
    path = fake.kubeconfig(tmp_path / "kubeconfig", server="http://127.0.0.1:9")
    config = RunnerConfig(kind="kubernetes", kubernetes=KubernetesConfig(kubeconfig=str(path)))
    runner = KubernetesRunner(config, instance="k8s-unreachable")
    with anyio.fail_after(20), pytest.raises(KubernetesUnavailable, match="cannot reach the Kubernetes API at "
                                                                         "http://127.0.0.1:9"):
        await runner.find_runs()
    missing = RunnerConfig(kind="kubernetes", kubernetes=KubernetesConfig(kubeconfig=str(tmp_path / "nope")))
    with pytest.raises(KubernetesUnavailable, match="cannot load the kubeconfig"):
        await KubernetesRunner(missing, instance="k8s-missing").find_runs()


async def test_a_wrong_token_is_refused_clearly(fake_api: tuple[FakeKubernetes, Path], tmp_path: Path) -> None:
    fake, _ = fake_api
    path = fake.kubeconfig(tmp_path / "bad", token="wrong")
    runner = KubernetesRunner(RunnerConfig(kind="kubernetes", kubernetes=KubernetesConfig(kubeconfig=str(path),
                                                                                          namespace="fleet-test")),
                              instance="k8s-badtoken")
    with pytest.raises(RunnerError, match="refused: Unauthorized"):
        await runner.find_runs()


def test_without_the_client_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as if it were not installed
    with pytest.raises(RunnerError, match=r"pip install 'fleet-tui\[kubernetes\]'"):
        KubernetesRunner(RunnerConfig(kind="kubernetes"), instance="k8s-noclient")


def test_check_says_what_works_and_what_is_missing(fake_api: tuple[FakeKubernetes, Path]) -> None:
    from fleet_tui.runners.kubernetes import check_cluster

    _, path = fake_api
    settings = KubernetesConfig(kubeconfig=str(path), namespace="fleet-test")
    results = check_cluster(RunnerConfig(kind="kubernetes", kubernetes=settings))
    assert [ok for ok, _ in results] == [True, True, False]
    assert "v1.31.0-fake" in results[0][1] and "engine_secret is empty" in results[2][1]
    down = settings.model_copy(update={"kubeconfig": str(FakeKubernetes().kubeconfig(path.with_name("down"),
                                                                                      server="http://127.0.0.1:9"))})
    [(ok, why)] = check_cluster(RunnerConfig(kind="kubernetes", kubernetes=down), timeout_s=3)
    assert not ok and "cannot reach the Kubernetes API at http://127.0.0.1:9" in why


def test_fleet_check_reports_the_cluster_not_the_local_sandbox(fake_api: tuple[FakeKubernetes, Path],
                                                               tmp_path: Path) -> None:
    """`fleet-tui check` with runner.kind = "kubernetes": rows for the cluster, a warning (not a failure) for a
    missing engine Secret, and nothing about bubblewrap or local engine binaries, which do not apply."""
    import subprocess

    import anyio

    from fleet_tui.config import FleetConfig
    from fleet_tui.doctor import Doctor

    _, path = fake_api
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "start"], check=True)
    runner = RunnerConfig(kind="kubernetes", kubernetes=KubernetesConfig(kubeconfig=str(path), namespace="fleet-test"))
    checks = anyio.run(Doctor(FleetConfig(runner=runner), None, repo, tmp_path / "state").run)
    cluster = [c for c in checks if c.name == "Kubernetes"]
    assert [c.status for c in cluster] == ["ok", "ok", "warn"]
    assert "v1.31.0-fake" in cluster[0].detail and "engine_secret" in cluster[2].fix
    assert not [c for c in checks if c.name in ("local sandbox", "Docker")]


def test_names_labels_and_quantities_are_what_kubernetes_takes() -> None:
    from fake_k8s import _label_value_ok, expand

    from fleet_tui.runners.kubernetes_job import _no_expansion, cpu_quantity, job_name, label_value, memory_quantity

    long_id = "Dev-7-" + "ü" * 80
    for run_id in ("dev-7-abc", long_id, "qa/12:1", "---"):
        name = job_name("f0123456789abcde", run_id)
        assert len(name) <= 63 and name == name.lower() and name[0].isalnum() and name[-1].isalnum()
        assert _label_value_ok(label_value(run_id))
    assert job_name("f1", "dev-7") != job_name("f2", "dev-7")  # two fleets, one namespace
    assert label_value(long_id) != label_value(long_id + "x")
    assert [memory_quantity(m) for m in ("512m", "4g", "1024k", "100")] == ["512Mi", "4Gi", "1024Ki", "100"]
    assert [cpu_quantity(c) for c in (2.0, 0.5, 1.25)] == ["2", "500m", "1250m"]
    for text in ("$(HOME)", "$$(HOME)", "a$", "$", "cost: $5 $(", "${X}"):
        assert expand(_no_expansion(text), {"HOME": "/root", "X": "y"}) == text


def test_root_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    config = RunnerConfig(kind="kubernetes", user="0:0")
    runner = KubernetesRunner(config, instance="k8s-root")
    with pytest.raises(RunnerError, match="never run as root"):
        runner.job_manifest(spec_for(tmp_path, "true", run_id="dev-1"))


@fake_only
def test_the_fake_refuses_what_an_api_server_refuses(fake_api: tuple[FakeKubernetes, Path], tmp_path: Path) -> None:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    fake, path = fake_api
    api = client.BatchV1Api(config.new_client_from_config(str(path)))
    runner = KubernetesRunner(RunnerConfig(kind="kubernetes", image="fleet-no-such-image:never",
                                           kubernetes=KubernetesConfig(namespace="fleet-test")), instance="k8s-strict")
    good = runner.job_manifest(spec_for(tmp_path, "true", run_id="dev-2"))

    def refused(change, status: int, reason: str) -> dict:  # type: ignore[no-untyped-def]
        body = json.loads(json.dumps(good))
        change(body)
        with pytest.raises(ApiException) as caught:
            api.create_namespaced_job("fleet-test", body)
        assert caught.value.status == status
        answer = json.loads(caught.value.body)
        assert (answer["kind"], answer["reason"]) == ("Status", reason)
        return answer

    refused(lambda b: b["metadata"].update(name="Fleet-Upper"), 422, "Invalid")
    refused(lambda b: b["metadata"].update(name="f" * 64), 422, "Invalid")
    refused(lambda b: b["metadata"]["labels"].update({"fleet.run_id": "has space"}), 422, "Invalid")
    refused(lambda b: b["spec"]["template"]["spec"].update(restartPolicy="Always"), 422, "Invalid")
    refused(lambda b: b["spec"]["template"]["spec"]["containers"][0].pop("image"), 422, "Invalid")
    refused(lambda b: b["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].append(
        {"name": "nowhere", "mountPath": "/x"}), 422, "Invalid")
    refused(lambda b: b["spec"]["template"]["spec"].update(
        tolerations=[{"key": "a", "operator": "Exists", "value": "b"}]), 422, "Invalid")
    # A misspelt field (the client itself refuses one, so straight over HTTP).
    import urllib.error
    import urllib.request

    body = json.loads(json.dumps(good))
    body["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Never"
    request = urllib.request.Request(f"{fake.url}/apis/batch/v1/namespaces/fleet-test/jobs", method="POST",
                                     data=json.dumps(body).encode(), headers={"Authorization": f"Bearer {fake.token}",
                                                                              "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as typo:
        urllib.request.urlopen(request, timeout=10)
    assert typo.value.code == 400 and "unknown field" in json.loads(typo.value.read())["message"]
    answer = refused(lambda b: b["metadata"].update(name="x_y"), 422, "Invalid")
    assert answer["details"]["causes"][0]["field"] == "metadata.name"

    api.create_namespaced_job("fleet-test", good)
    with pytest.raises(ApiException) as twice:
        api.create_namespaced_job("fleet-test", good)
    assert twice.value.status == 409
    with pytest.raises(ApiException) as missing:
        api.read_namespaced_job("fleet-nothing", "fleet-test")
    assert missing.value.status == 404 and json.loads(missing.value.body)["reason"] == "NotFound"
    # The API's default for a Job orphans its pod; the fleet always asks for Background.
    name = good["metadata"]["name"]
    pods = lambda: [p for p in fake.pods.values() if p["metadata"]["labels"].get("job-name") == name]
    assert len(pods()) == 1
    api.delete_namespaced_job(name, "fleet-test")
    assert len(pods()) == 1 and pods()[0]["metadata"]["ownerReferences"] == []


# --- the whole fleet on Kubernetes ------------------------------------------------------------------------


@needs_docker
async def test_the_fleet_runs_as_jobs_and_a_restarted_fleet_reattaches(cluster: Cluster, tmp_path: Path,
                                                                       repo: Path) -> None:
    """Approve -> Dev (the orchestrator quits mid-run; a new one re-attaches to the live Job and reads it from the
    start) -> PR -> QA pass, every run a Job built by `build_fleet`; the branch comes back as a bundle inside
    /fleet, and nothing of the fleet's is left in the namespace."""
    from fleet_tui.config import EngineConfig, FleetConfig, RoleConfig, RolesConfig
    from fleet_tui.orchestrator import build_fleet
    from fleet_tui.runners.base import Runner

    if not hasattr(Runner, "collect"):
        pytest.skip("the supervisor does not collect runs yet (Runner.collect comes with the Docker pool work)")
    script = tmp_path / "script.json"
    script.write_text(json.dumps({
        "dev": [{"print": "working on {issue}"}, {"sleep": 4}, {"write": "notes/{issue}.md", "content": "notes\n"},
                {"commit": "#{issue}: {title}"}, {"print": "finished"}, {"final": "done"}],
        "qa": [{"final": "Good.\n\nVERDICT: pass\n"}]}))
    settings = KubernetesConfig(kubeconfig=cluster.kubeconfig, context=cluster.context, namespace=cluster.namespace)
    config = FleetConfig(
        engines={"scripted": EngineConfig(kind="scripted", command="python3", script=str(script))},
        roles=RolesConfig(pm=RoleConfig(engine="scripted"), dev=RoleConfig(engine="scripted"),
                          qa=RoleConfig(engine="scripted")),
        runner=RunnerConfig(kind="kubernetes", image=IMAGE, memory="256m", cpus=0.5, kubernetes=settings),
        poll_interval_s=1)
    state = tmp_path / "state"
    async with build_fleet(config, repo_path=repo, state_dir=state) as orch:
        assert orch.runner.kind == "kubernetes"
        issue = await orch.forge.create_issue("Add notes", "Write the notes.", [orch.config.labels.proposed])
        await orch.approve(issue.number)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(orch.run)
                while True:  # until the Dev agent is at work in its pod, and its log's line count is saved
                    runs = [r for r in orch.journal.runs() if r.role == Role.DEV]
                    log = orch.log_path(runs[0].run_id) if runs else None
                    if (log is not None and log.exists() and "working on" in log.read_text()
                            and int(orch.ctx.extras(runs[0].run_id).get("output_lines", 0)) >= 1):
                        break
                    await anyio.sleep(0.2)
                tasks.cancel_scope.cancel()  # the orchestrator quits; the Job runs on
        dev_run = runs[0].run_id
        assert [run.run_id for run in await orch.runner.find_runs()] == [dev_run]
    async with build_fleet(config, repo_path=repo, state_dir=state) as again:
        with anyio.fail_after(90):
            await again.run(once=True)
        [pull] = await again.forge.list_pulls()
        assert pull.head.startswith(f"fleet/{issue.number}-")
        assert "<!-- fleet:verdict=pass round=1 -->" in pull.reviews[0].body
        shape = [(r.role, r.state) for r in again.journal.runs()]
        assert shape == [(Role.DEV, RunState.SUCCEEDED), (Role.QA, RunState.SUCCEEDED)]
        log_text = again.log_path(dev_run).read_text()
        assert log_text.count("working on") == 1 and log_text.count("finished") == 1  # from the start, once
        assert await again.runner.find_runs() == []  # every Job deleted once its result was in

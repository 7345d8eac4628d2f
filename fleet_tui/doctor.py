"""`fleet-tui check`: everything the fleet needs, checked one by one, each failure with its fix."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio

from fleet_tui.config import BUILTIN_ENGINES, BUILTIN_PM, DockerHostConfig, FleetConfig, resolve_token

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str = ""
    fix: str = ""
    required: bool = True


@dataclass
class Doctor:
    config: FleetConfig
    config_path: Path | None
    repo: Path
    state_dir: Path
    fix: bool = False
    ask: Callable[[str], bool] | None = None
    results: list[Check] | None = None
    _at: str = ""  # " @host" on the names of the checks of one pool host

    def add(self, *args: object, **kwargs: object) -> Check:
        check = Check(*args, **kwargs)  # type: ignore[arg-type]
        assert self.results is not None
        self.results.append(check)
        return check

    async def run(self) -> list[Check]:
        self.results = []
        where = str(self.config_path) if self.config_path else "none found: using defaults"
        self.add("config", "ok", where, "" if self.config_path else "`fleet-tui init` writes one")
        self._state_dir()
        self._forge_token_in_engine_env()
        self._ui()
        if self.config.forge.kind == "local":
            await self._local_forge()
        else:
            await self._github_forge()
        if self.config.runner.kind == "docker":
            await anyio.to_thread.run_sync(self._docker)
        elif self.config.runner.kind == "kubernetes":
            await anyio.to_thread.run_sync(self._kubernetes)
        else:
            self._local_sandbox()
            self._local_engines()
        self._engine_env()
        return self.results

    # --- checks ---------------------------------------------------------------------------------

    def _state_dir(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            probe = self.state_dir / ".write-check"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            self.add("state dir", "fail", f"{self.state_dir}: {exc.strerror}",
                     "set state_dir in fleet.toml to a writable folder")
            return
        self.add("state dir", "ok", str(self.state_dir))

    async def _local_forge(self) -> None:
        from fleet_tui.git import GitError, git

        try:
            top = await git("rev-parse", "--show-toplevel", cwd=self.repo)
        except (GitError, OSError):
            self.add("repository", "fail", f"{self.repo} is not a git repository",
                     f"run `git init` in {self.repo}, or point at the repository: `fleet-tui check --repo PATH` "
                     "or forge.repo = \"PATH\" in fleet.toml")
            return
        self.add("repository", "ok", f"{top} (local forge)")
        from fleet_tui.forge.local import LocalForge

        async with LocalForge(Path(top)) as forge:
            await self._labels(forge)

    async def _github_forge(self) -> None:
        forge_cfg = self.config.forge
        token, source = resolve_token(forge_cfg)
        if not token and not forge_cfg.app_id:
            names = " or ".join(forge_cfg.token_env)
            self.add("GitHub token", "fail", f"no token in {names}" + (" and none from `gh auth token`"
                                                                        if forge_cfg.use_gh_cli else ""),
                     "export GITHUB_TOKEN=<fine-grained token> (README lists the permissions), or `gh auth login`")
            return
        from fleet_tui.logs import register_secret

        register_secret(token)
        self.add("GitHub token", "ok", f"from {source}" if token else "GitHub App installation")
        from fleet_tui.forge.base import ForgeError
        from fleet_tui.forge.github import GitHubForge

        operator = os.environ.get(forge_cfg.operator_token_env) if forge_cfg.operator_token_env else None
        try:
            async with GitHubForge.from_config(self.config, token or "", operator) as forge:
                report = await forge.token_report()
                scopes = report.get("scopes")
                detail = f"{report.get('login', '?')} at {forge_cfg.api_url}"
                if scopes:
                    detail += f"; scopes: {', '.join(scopes) if isinstance(scopes, list) else scopes}"
                self.add("forge reachable", "ok", detail)
                for warning in report.get("warnings", []):
                    self.add("token scope", "warn", warning,
                             "use a fine-grained token with only issues, pull requests and contents read/write, "
                             "metadata read", required=False)
                await self._labels(forge)
                await self.forge_access(forge)
        except ForgeError as exc:
            self.add("forge reachable", "fail", str(exc),
                     "check forge.api_url and forge.repo, and that the token can read the repository")

    async def forge_access(self, forge: object) -> None:
        """The base branch exists (empty: the default branch the forge reports) and the fleet may push."""
        from fleet_tui.forge.base import ForgeError

        base = self.config.forge.base_branch
        default_branch = getattr(forge, "default_branch", None)
        branch_exists = getattr(forge, "branch_exists", None)
        if not base:
            if default_branch is None:
                self.add("base branch", "skip", "the forge cannot report its default branch", required=False)
            else:
                try:
                    base = await default_branch()
                    self.add("base branch", "ok", f"{base} (the repository's default branch; forge.base_branch "
                                                  "is empty)")
                except ForgeError as exc:
                    self.add("base branch", "fail", f"cannot read the default branch: {exc}",
                             "set forge.base_branch, and check the token can read the repository")
                    base = ""
        elif branch_exists is not None:
            try:
                if await branch_exists(base):
                    self.add("base branch", "ok", f"{base} (forge.base_branch)")
                else:
                    self.add("base branch", "fail", f"{base} does not exist on {self.config.forge.repo}",
                             "set forge.base_branch to an existing branch, or leave it empty for the default "
                             "branch")
            except ForgeError as exc:
                self.add("base branch", "fail", f"cannot look up {base}: {exc}",
                         "check the token can read the repository")
        check_push = getattr(forge, "check_push_access", None)
        if check_push is None:
            self.add("push access", "skip", "the forge cannot prove push access", required=False)
            return
        try:
            await check_push()
        except ForgeError as exc:
            self.add("push access", "fail", str(exc),
                     "give the token Contents: read and write on the repository (classic token: `repo` scope), "
                     "and check forge.push_url")
            return
        self.add("push access", "ok", f"the fleet can push branches to {self.config.forge.repo}")

    def _forge_token_in_engine_env(self) -> None:
        from fleet_tui.engines import forbidden_env_names

        forbidden = forbidden_env_names(self.config)
        names = dict(BUILTIN_ENGINES)
        names.update(self.config.engines)
        found = False
        for name, engine in sorted(names.items()):
            refused = sorted((set(engine.env) | ({engine.api_key_env} - {""})) & forbidden)
            if refused:
                found = True
                self.add(f"engine {name} env", "fail",
                         f"engines.{name}.env lists {', '.join(refused)}: the agents would receive the forge token",
                         f"remove {', '.join(refused)} from engines.{name}.env (the fleet pushes and opens PRs "
                         "itself; agents never need the forge token)")
        if not found:
            self.add("engine env", "ok", "no engine is given a forge token variable", required=False)

    def _ui(self) -> None:
        problems = ui_problems(self.config)
        for problem in problems:
            self.add("console keys/theme", "fail", problem, "fix [ui] in fleet.toml (fleet.toml.example lists the "
                     "key ids; the README's key table says what each does)")
        if not problems:
            self.add("console keys/theme", "ok", f"theme {self.config.ui.theme}"
                     + (f", {len(self.config.ui.keys)} key remap(s)" if self.config.ui.keys else ""),
                     required=False)

    def _local_sandbox(self) -> None:
        available = _local_sandbox_available()
        if available:
            self.add("local sandbox", "ok", "bubblewrap found: local runs are sandboxed with it",
                     required=False)
        else:
            self.add("local sandbox", "warn", "bubblewrap (bwrap) not found: local runs are unsandboxed; the "
                     "agents can read and write anything your user can",
                     "install bubblewrap (apt-get install bubblewrap), or use runner.kind = \"docker\"",
                     required=False)

    async def _labels(self, forge: object) -> None:
        labels = self.config.labels
        wanted = [labels.proposed, labels.approved, labels.in_progress, labels.needs_human]
        missing = await forge.missing_labels(wanted)  # type: ignore[attr-defined]
        if not missing:
            self.add("labels", "ok", ", ".join(wanted))
            return
        create = self.fix or (self.ask is not None and self.ask(f"Create the missing labels {', '.join(missing)}?"))
        if create:
            created = await forge.ensure_labels(missing)  # type: ignore[attr-defined]
            self.add("labels", "ok", f"created {', '.join(created) or 'none'}")
        else:
            self.add("labels", "fail", f"missing: {', '.join(missing)}", "run `fleet-tui check --fix` to create them")

    def _kubernetes(self) -> None:
        """The cluster the Jobs run in: the client installed, the API reachable, Jobs listable in the namespace,
        the engine Secret named. Whether nodes can pull the image shows on the first run (the cluster says)."""
        from fleet_tui.runners.kubernetes import check_cluster

        settings = self.config.runner.kubernetes
        for ok, what in check_cluster(self.config.runner):
            if ok:
                self.add("Kubernetes", "ok", what)
            elif "engine_secret is empty" in what:  # an engine on a keyless model server needs none
                self.add("Kubernetes", "warn", what, "kubectl create secret generic … with the engines' API keys, "
                         "then name it in runner.kubernetes.engine_secret", required=False)
            elif "pip install" in what:
                self.add("Kubernetes", "fail", what, "pip install 'fleet-tui[kubernetes]'")
            else:
                self.add("Kubernetes", "fail", what, f"check runner.kubernetes (kubeconfig, context, namespace "
                         f"{settings.namespace!r}) and the RBAC Role in README's Kubernetes section")

    def _docker(self) -> None:
        """The one engine of $DOCKER_HOST, or every host of the pool: each reachable, with the image and the
        engines' binaries in it, the networks and the model APIs the runs need (names end in `@host`)."""
        hosts = self.config.runner.hosts
        if not hosts:
            self._docker_host(None)
            return
        for host in hosts:
            self._docker_host(host)
        self.add("Docker hosts", "ok", f"{len(hosts)} host(s), {sum(h.max_runs for h in hosts)} run slot(s)",
                 required=False)

    def _docker_host(self, host: DockerHostConfig | None) -> None:
        import docker
        from fleet_tui.runners.docker import api_client

        runner = self.config.runner
        self._at = f" @{host.label}" if host is not None else ""
        name = f"Docker host {host.label}" if host is not None else "Docker engine"
        try:
            client = docker.DockerClient.__new__(docker.DockerClient)  # its api: the host's own client
            client.api = api_client(host, timeout=10)
            client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure to reach the engine is the report
            if host is None:
                where = os.environ.get("DOCKER_HOST", "the local socket")
                self.add(name, "fail", f"cannot reach the Docker engine at {where}: {exc}",
                         "start Docker (or set DOCKER_HOST=tcp://… / ssh://…), or set runner.kind = \"local\"")
            else:
                self.add(name, "fail", f"cannot reach {host.url}: {str(exc)[:300]}", _host_fix(host))
            return
        version = client.version().get("Version", "?")
        where = host.url if host is not None else client.api.base_url
        self.add(name, "ok", f"{where} (engine {version})" + (f", {host.max_runs} run slot(s)" if host else ""))
        try:
            client.images.get(runner.image)
        except docker.errors.ImageNotFound:
            self.add(f"agent image{self._at}", "fail", f"{runner.image} is not on the engine",
                     "run `fleet-tui image build` (or `fleet-tui image build --offline` without a registry)"
                     + (f" with DOCKER_HOST={host.url}, or `docker save {runner.image} | docker -H {host.url} "
                        "load`" if host is not None else ""))
            self._docker_networks(client)
            if self._api_probes():
                self.add(f"model API{self._at}", "skip", f"not probed: the agent image {runner.image} is missing "
                         "(see above)", required=False)
            return
        self.add(f"agent image{self._at}", "ok", runner.image)
        missing_networks = self._docker_networks(client)
        self._model_api(client, missing_networks)
        for role, name, binary in self._engine_binaries():
            try:
                output = client.containers.run(runner.image, ["sh", "-c", f"command -v {binary}"], remove=True,
                                               network_mode="none", user=runner.user, entrypoint=[],
                                               labels={CHECK_LABEL: "engine-binary"})
                self.add(f"{role} engine{self._at}", "ok", f"{name}: {output.decode().strip()} in {runner.image}")
            except docker.errors.ContainerError:
                self.add(f"{role} engine{self._at}", "fail", f"{binary} is not in {runner.image}",
                         f"rebuild the image with {binary} installed: `fleet-tui image build`")

    def _docker_networks(self, client: object) -> set[str]:
        """Checks the networks the roles' runs use; returns those the engine does not have."""
        import docker

        missing: set[str] = set()
        wanted: dict[str, list[str]] = {}
        for role in ("pm", "dev", "qa"):
            network = getattr(self.config.roles, role).network or self.config.runner.network
            wanted.setdefault(network, []).append(role)
        for network, roles in wanted.items():
            try:
                client.networks.get(network)  # type: ignore[attr-defined]
            except docker.errors.NotFound:
                where = "runner.network" if not any(getattr(self.config.roles, r).network for r in roles) \
                    else " / ".join(f"roles.{r}.network" for r in roles)
                if network in ("bridge", "host", "none"):
                    fix = (f"this engine has no {network!r} network (dockerd --bridge=none?): `docker network "
                           f"create fleet-egress` and set {where} = \"fleet-egress\"")
                else:
                    fix = f"docker network create {network}   (or set {where} to an existing network)"
                self.add(f"network {network}{self._at}", "fail",
                         f"Docker network {network!r} ({', '.join(roles)} runs) "
                         "does not exist on the engine", fix)
                missing.add(network)
            except docker.errors.APIError as exc:
                self.add(f"network {network}{self._at}", "fail",
                         f"cannot look up Docker network {network!r}: {exc}",
                         "check the Docker engine")
            else:
                self.add(f"network {network}{self._at}", "ok", f"{', '.join(roles)} runs use {network}",
                         required=False)
        return missing

    def _api_probes(self) -> dict[tuple[str, str, int], list[tuple[str, str]]]:
        """(network, host, port) -> [(role, engine name)]: where the runs of each role that calls a model API
        connect to, on the network they get (a run whose engine needs no API gets none). Roles whose API
        address is unknown (a `command` engine without base_url) are noted and left out."""
        probes: dict[tuple[str, str, int], list[tuple[str, str]]] = {}
        for role in ("pm", "dev", "qa"):
            role_cfg = getattr(self.config.roles, role)
            name = role_cfg.engine
            if name == BUILTIN_PM or not _needs_network(name, self.config):
                continue
            engine = self.config.engine(name)
            address = api_address(engine)
            if address is None:
                self.add(f"{role} model API", "skip", f"engine {name} ({engine.kind}) has no base_url, so its API "
                         "address is unknown: not probed",
                         f"set engines.{name}.base_url to have `check` probe it", required=False)
                continue
            network = role_cfg.network or self.config.runner.network
            probes.setdefault((network, *address), []).append((role, name))
        return probes

    def _model_api(self, client: object, missing_networks: set[str]) -> None:
        """Each role's runs can open a TCP connection to their model API, from a container of the agent image
        on the network they get: a run that cannot reach it fails only minutes in, after its timeout."""
        for (network, host, port), users in self._api_probes().items():
            roles = [role for role, _ in users]
            name = f"model API {host}:{port}{self._at}"
            if network in missing_networks:
                self.add(name, "skip", f"not probed: network {network!r} does not exist (see above)",
                         required=False)
                continue
            code, output = self._probe(client, network, host, port)
            if code == 0:
                self.add(name, "ok", f"{', '.join(roles)} runs reach {host}:{port} on network {network!r}")
            elif code == _PROBE_NO_TOOL:
                self.add(name, "skip", f"not probed: {self.config.runner.image} has no python3, node, bash or nc "
                         "to open a connection with", required=False)
            elif code is None:
                self.add(name, "warn", f"could not run the probe on network {network!r}: {output}",
                         "check the Docker engine", required=False)
            else:
                why = f" ({output})" if output else ""
                self.add(name, "fail", f"the agents cannot reach {host}:{port} on network {network!r}{why}",
                         self._api_fix(network, host, port, users))

    def _api_fix(self, network: str, host: str, port: int, users: list[tuple[str, str]]) -> str:
        roles = [role for role, _ in users]
        engines = sorted({name for _, name in users})
        if any(getattr(self.config.roles, r).network for r in roles):
            where = " / ".join(f"roles.{r}.network" for r in roles)
        else:
            where = "runner.network"
        base_urls = " / ".join(f"engines.{name}.base_url" for name in engines)
        if _is_loopback(host) and network != "host":
            return (f"{host} is the container itself on network {network!r}: for a model server on this host set "
                    f"{where} = \"host\" (and keep {base_urls} = http://127.0.0.1:{port}/…)")
        if _is_loopback(host):
            return f"nothing answers at {host}:{port} on this host: start the model server, or fix {base_urls}"
        if network == "host":
            return f"this host cannot reach {host}:{port}: check its egress (proxy, firewall) or {base_urls}"
        return (f"set {where} to a network with egress, or for a model server on this host use network = "
                f"\"host\" and {base_urls} = http://127.0.0.1:PORT")

    def _probe(self, client: object, network: str, host: str, port: int) -> tuple[int | None, str]:
        """Exit code and last output line of a short-lived container of the agent image that connects to
        host:port on `network`; (None, why) when the probe itself could not run. The container carries the
        label `fleet.check` and is removed whatever happens."""
        from fleet_tui.untrusted import line_for_terminal

        runner = self.config.runner
        try:
            # created, then started: a container that fails to start is still ours to remove
            container = client.containers.create(  # type: ignore[attr-defined]
                runner.image, ["sh", "-c", _PROBE_SCRIPT], network_mode=network, user=runner.user,
                entrypoint=[], environment={"FLEET_PROBE_HOST": host, "FLEET_PROBE_PORT": str(port)},
                labels={CHECK_LABEL: "model-api"})
        except Exception as exc:  # noqa: BLE001 - any failure to create the probe is the report
            return None, line_for_terminal(str(exc), limit=300)
        try:
            try:
                container.start()
            except Exception as exc:  # noqa: BLE001 - as above
                return None, line_for_terminal(str(exc), limit=300)
            try:
                code = int(container.wait(timeout=PROBE_WAIT_S).get("StatusCode", -1))
            except Exception:  # noqa: BLE001 - a name lookup that hangs past the connect timeout
                return 124, f"no answer within {PROBE_WAIT_S} s"
            output = container.logs().decode("utf-8", "replace").strip().splitlines()
            return code, line_for_terminal(output[-1], limit=300) if output else ""
        finally:
            with contextlib.suppress(Exception):  # gone already, or the engine went away: nothing to keep
                container.remove(force=True)

    def _engine_binaries(self) -> list[tuple[str, str, str]]:
        import shlex

        out = []
        for role in ("pm", "dev", "qa"):
            name = getattr(self.config.roles, role).engine
            if name == BUILTIN_PM:
                continue
            engine = self.config.engine(name)
            if engine.kind == "scripted":
                binary = "python3"
            else:
                parts = shlex.split(engine.command) if engine.command else [engine.kind]
                binary = parts[0]
            out.append((role, name, binary))
        return out

    def _local_engines(self) -> None:
        for role, name, binary in self._engine_binaries():
            if binary == "python3":
                self.add(f"{role} engine", "ok", f"{name}: runs with {sys.executable}")
                continue
            found = shutil.which(binary)
            if found:
                self.add(f"{role} engine", "ok", f"{name}: {found}")
            else:
                self.add(f"{role} engine", "fail", f"{binary} is not on PATH",
                         _INSTALL_HINTS.get(binary, f"install {binary} or change roles.{role}.engine"))

    def _engine_env(self) -> None:
        from fleet_tui.engines.prices import prices_of

        seen: set[str] = set()
        priced: set[str] = set()
        for role in ("pm", "dev", "qa"):
            name = getattr(self.config.roles, role).engine
            if name == BUILTIN_PM:
                continue
            engine = self.config.engine(name)
            budgets = self.config.policy.budget_day_usd or self.config.policy.budget_issue_usd or getattr(
                self.config.roles, role).budget_usd
            if (engine.kind in ("codex", "command") and budgets and name not in priced
                    and prices_of(engine) == (0.0, 0.0)):
                priced.add(name)
                self.add(f"engine {name} prices", "warn",
                         f"no price for model {engine.model or '(the CLI default)'}: its runs cost $0 and USD "
                         "budgets do not hold them",
                         f"set engines.{name}.model to a listed model, or price_input_per_mtok and "
                         "price_output_per_mtok", required=False)
            names = list(engine.env) + ([engine.api_key_env] if engine.api_key_env else [])
            for var in names:
                if var in seen:
                    continue
                seen.add(var)
                if os.environ.get(var):
                    self.add(f"env {var}", "ok", "set (passed only to the runs of the engines that list it)",
                             required=False)
                else:
                    self.add(f"env {var}", "warn", f"not set; {engine.kind} runs may fail to reach their model",
                             f"export {var}=…", required=False)


CHECK_LABEL = "fleet.check"  # on the containers `check` starts itself, and on no others
PROBE_TIMEOUT_S = 5  # the connect; the whole probe (container start, name lookup) gets PROBE_WAIT_S
PROBE_WAIT_S = 30
_PROBE_NO_TOOL = 3
# python3, then node, then bash's /dev/tcp or nc: whatever the image has. Host and port come in the
# environment, never in the script, so a base_url cannot inject shell.
_PROBE_SCRIPT = f"""\
if command -v python3 >/dev/null 2>&1; then
  exec python3 -c '
import os, socket, sys
try:
    socket.create_connection((os.environ["FLEET_PROBE_HOST"], int(os.environ["FLEET_PROBE_PORT"])),
                             timeout={PROBE_TIMEOUT_S}).close()
except OSError as exc:
    sys.exit(str(exc) or type(exc).__name__)
'
fi
if command -v node >/dev/null 2>&1; then
  exec node -e '
const s = require("net").connect({{host: process.env.FLEET_PROBE_HOST, port: +process.env.FLEET_PROBE_PORT}});
s.setTimeout({PROBE_TIMEOUT_S * 1000}, () => {{ console.error("timed out"); process.exit(1); }});
s.on("connect", () => {{ s.destroy(); process.exit(0); }});
s.on("error", (e) => {{ console.error(e.message); process.exit(1); }});
'
fi
if command -v bash >/dev/null 2>&1 && command -v timeout >/dev/null 2>&1; then
  exec timeout {PROBE_TIMEOUT_S} bash -c 'exec 3<>"/dev/tcp/$FLEET_PROBE_HOST/$FLEET_PROBE_PORT"'
fi
if command -v nc >/dev/null 2>&1; then
  exec nc -z -w {PROBE_TIMEOUT_S} "$FLEET_PROBE_HOST" "$FLEET_PROBE_PORT"
fi
echo "no python3, node, bash or nc in the image" >&2
exit {_PROBE_NO_TOOL}
"""

_VENDOR_API = {"codex": ("api.openai.com", 443), "aider": ("api.openai.com", 443),
               "claude": ("api.anthropic.com", 443)}


def _host_fix(host: DockerHostConfig) -> str:
    """What to try when a pool host does not answer, by how it is reached."""
    if host.url.startswith("ssh://"):
        target = host.url.removeprefix("ssh://").rstrip("/")
        return (f"`ssh {target} docker version` must work without a password (a key in ~/.ssh, the host in "
                "known_hosts, the user in the remote docker group); or remove the host from [[runner.hosts]]")
    if host.url.startswith("tcp://"):
        return (f"`docker -H {host.url}{' --tlsverify' if host.tls_ca else ''} version` must work: the engine "
                "listening there, the TLS files readable; or remove the host from [[runner.hosts]]")
    return f"start Docker on that socket (`docker -H {host.url} version`), or remove the host from [[runner.hosts]]"


def api_address(engine: object) -> tuple[str, int] | None:
    """Host and port an engine's runs call: from its `base_url` when set, else its vendor's API; None when
    not known (a `command` engine without base_url, or a base_url with no host)."""
    from urllib.parse import urlsplit

    base_url = str(getattr(engine, "base_url", "") or "").strip()
    if not base_url:
        return _VENDOR_API.get(str(getattr(engine, "kind", "")))
    parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
    try:
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _needs_network(name: str, config: FleetConfig) -> bool:
    """Whether engine `name`'s runs get a network: the engine says so on its invocation."""
    from fleet_tui.engines import make_engine
    from fleet_tui.engines.base import Task
    from fleet_tui.model import Role

    try:
        engine = make_engine(name, config, environ={})
        invocation = engine.invocation(Task(run_id="check", role=Role.DEV, prompt=""), workdir="/workspace",
                                       scratch="/fleet")
    except Exception:  # noqa: BLE001 - a config the engine refuses is reported by the engine checks
        try:
            return config.engine(name).kind != "scripted"
        except KeyError:
            return False
    return bool(invocation.needs_network)


def _local_sandbox_available() -> bool:
    try:
        from fleet_tui.runners import local
    except ImportError:  # pragma: no cover - the runner is part of the package
        local = None  # type: ignore[assignment]
    probe = getattr(local, "local_sandbox_available", None)
    return bool(probe()) if probe is not None else shutil.which("bwrap") is not None


def ui_problems(config: FleetConfig, theme_dir: Path | None = None) -> list[str]:
    """What is wrong with `[ui]`: unknown binding ids, remaps that collide or take over `q` (quit), and a theme
    the console does not know. The ids and themes come from the console's own tables (this imports Textual,
    so it runs in `check`, never when a config is loaded)."""
    from fleet_tui.tui.actions import ACTIONS

    problems: list[str] = []
    defaults = {action.id: action.key for action in ACTIONS}
    remaps = config.ui.keys
    unknown = sorted(set(remaps) - set(defaults))
    if unknown:
        problems.append(f"ui.keys: unknown binding id(s) {', '.join(map(repr, unknown))}; known: "
                        f"{', '.join(defaults)}")
    owners: dict[str, list[str]] = {}
    for action_id, default in defaults.items():
        keys = remaps.get(action_id, default)
        for key in (part.strip() for part in keys.split(",")):
            if key:
                owners.setdefault(key, []).append(action_id)
    for key, ids in owners.items():
        if key == "q":
            continue  # reported below as taking over quit
        remapped = [i for i in ids if i in remaps]
        if len(ids) > 1 and remapped:
            problems.append(f"ui.keys: {key!r} would be bound to {' and '.join(ids)}; give each its own key")
    for action_id, keys in remaps.items():
        if action_id != "quit" and action_id in defaults and "q" in (part.strip() for part in keys.split(",")):
            problems.append(f"ui.keys.{action_id} = {keys!r} takes over q (quit); pick another key")
    theme = config.ui.theme
    from fleet_tui.config import user_config_dir
    from fleet_tui.tui.themes import known_theme_names

    known = known_theme_names(theme_dir if theme_dir is not None else user_config_dir() / "themes")
    if theme not in known:
        problems.append(f"ui.theme {theme!r} is not a known theme; known: {', '.join(sorted(known))} (or add "
                        f"THEME.toml to {user_config_dir() / 'themes'})")
    return problems


_INSTALL_HINTS = {
    "codex": "npm install -g @openai/codex",
    "claude": "npm install -g @anthropic-ai/claude-code",
    "aider": "pipx install aider-chat",
}

_MARKS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red"), "skip": ("-", "dim")}


def render(results: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    table.add_column("")
    table.add_column("check")
    table.add_column("result", overflow="fold")
    table.add_column("fix", overflow="fold")
    for check in results:
        mark, colour = _MARKS[check.status]
        table.add_row(Text(mark, style=colour), Text(check.name), Text(check.detail), Text(check.fix, style="cyan"))
    Console().print(table)


def run_check(config: FleetConfig, config_path: Path | None, *, repo: Path, state_dir: Path, fix: bool) -> int:
    def ask(question: str) -> bool:
        if not sys.stdin.isatty():
            return False
        try:
            return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
        except EOFError:
            return False

    doctor = Doctor(config, config_path, repo, state_dir, fix=fix, ask=ask)
    results = anyio.run(doctor.run)
    render(results)
    failed = [c for c in results if c.status == "fail" and c.required]
    if failed:
        print(f"\n{len(failed)} required check(s) failed.")
        return 1
    print("\nall required checks passed.")
    return 0

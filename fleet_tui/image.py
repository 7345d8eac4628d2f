"""`fleet-tui image build`: the agents' Docker image for the engines fleet.toml uses.

Two ways to build it. The default sends the Dockerfile shipped inside the package to the Docker engine
(`docker build`, which pulls `node:22-bookworm-slim`). `--offline` needs no image registry: Debian packages
are fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a root file system, the engines'
npm and PyPI packages are installed into it, and the tree is loaded with `docker import` (the way
tests/docker/build-test-image.sh builds the test image).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fleet_tui.config import BUILTIN_PM, FleetConfig

# Files shipped inside the wheel (pyproject force-include) under this folder of the package; in a checkout
# they are read from where they live in the repository.
PACKAGED_DIR = "_data"
_CHECKOUT_PATHS = {"Dockerfile": "docker/Dockerfile", "fleet.toml.example": "fleet.toml.example"}

NPM_PACKAGES = {"codex": "@openai/codex", "claude": "@anthropic-ai/claude-code"}
PYPI_PACKAGES = {"aider": "aider-chat"}
IMAGE_ENGINES = ("codex", "claude", "aider")

# What every agent image has: a shell, git, Python, certificates, and the tools agents reach for.
BASE_PACKAGES = ("base-files", "bash", "dash", "coreutils", "findutils", "grep", "sed", "diffutils", "patch",
                 "git", "python3", "ca-certificates", "ripgrep", "procps", "less", "openssh-client")
# Heavy packages git and the CLIs do not need; leaving them out keeps the image (and vfs copies of it) small.
EXCLUDE_RE = re.compile(r"^(perl|perl-modules-.*|libperl.*|liberror-perl|git-man|debconf.*|cdebconf.*|install-info"
                        r"|dpkg|tzdata|systemd.*|libsystemd.*|udev|adduser|passwd|login|util-linux.*)$")
AGENT_UID = 1000


class ImageError(Exception):
    """The image cannot be built; the message says why and what to do."""


@dataclass
class BuildPlan:
    """What `image build` will do: the image tag, the engines it carries and the CLI versions."""

    tag: str
    engines: tuple[str, ...]
    versions: dict[str, str] = field(default_factory=dict)  # engine -> version ("latest" / "" for the newest)

    def build_args(self) -> dict[str, str]:
        args = {"ENGINES": " ".join(self.engines)}
        for engine, arg in (("codex", "CODEX_VERSION"), ("claude", "CLAUDE_CODE_VERSION"),
                            ("aider", "AIDER_VERSION")):
            version = self.versions.get(engine)
            if version:
                args[arg] = "" if engine == "aider" and version == "latest" else version
        return args


def packaged_file(name: str) -> Path:
    """A file shipped with fleet-tui (`Dockerfile`, `fleet.toml.example`): from the installed package, else from
    the checkout. Raises ImageError when neither has it (a broken install)."""
    from importlib import resources

    try:
        entry = resources.files("fleet_tui") / PACKAGED_DIR / name
        if entry.is_file():
            return Path(str(entry))
    except (OSError, ModuleNotFoundError):
        pass
    checkout = Path(__file__).resolve().parents[1] / _CHECKOUT_PATHS[name]
    if checkout.is_file():
        return checkout
    raise ImageError(f"{name} is missing from this fleet-tui installation; reinstall fleet-tui")


def engines_for(config: FleetConfig) -> tuple[str, ...]:
    """The coding CLIs the configured roles need in the image, in a stable order."""
    kinds = set()
    for role in ("pm", "dev", "qa"):
        name = getattr(config.roles, role).engine
        if name == BUILTIN_PM:
            continue
        kinds.add(config.engine(name).kind)
    return tuple(kind for kind in IMAGE_ENGINES if kind in kinds)


def plan_for(config: FleetConfig, *, tag: str = "", engines: Iterable[str] | None = None,
             versions: dict[str, str] | None = None) -> BuildPlan:
    chosen = tuple(engines) if engines is not None else engines_for(config)
    unknown = sorted(set(chosen) - set(IMAGE_ENGINES))
    if unknown:
        raise ImageError(f"cannot put {', '.join(unknown)} in the image; choose from {', '.join(IMAGE_ENGINES)}")
    return BuildPlan(tag=tag or config.runner.image, engines=chosen, versions=dict(versions or {}))


Progress = Callable[[str], None]


def _say(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def _docker_client():  # type: ignore[no-untyped-def]
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine is the report
        where = os.environ.get("DOCKER_HOST", "the local socket")
        raise ImageError(f"cannot reach the Docker engine at {where}: {exc}; start Docker or set DOCKER_HOST") from None
    return client


# --- docker build ---------------------------------------------------------------------------------


def build_with_dockerfile(plan: BuildPlan, progress: Progress = _say) -> str:
    """`docker build` of the packaged Dockerfile; returns the image id."""
    import docker

    dockerfile = packaged_file("Dockerfile")
    client = _docker_client()
    progress(f"building {plan.tag} for {', '.join(plan.engines) or 'no coding CLI'} from {dockerfile}")
    with tempfile.TemporaryDirectory(prefix="fleet-image-") as context:
        shutil.copy(dockerfile, Path(context) / "Dockerfile")
        image_id = ""
        try:
            for chunk in client.api.build(path=context, tag=plan.tag, buildargs=plan.build_args(), rm=True,
                                          forcerm=True, decode=True, pull=False):
                if "error" in chunk:
                    raise ImageError(f"docker build failed: {str(chunk['error']).strip()}"
                                     + _registry_hint(str(chunk["error"])))
                text = str(chunk.get("stream", "")).rstrip()
                if text:
                    for line in text.splitlines():
                        progress(line)
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = str(aux["ID"])
        except docker.errors.APIError as exc:
            raise ImageError(f"docker build failed: {exc.explanation or exc}") from None
    progress(f"built {plan.tag}")
    return image_id


def _registry_hint(error: str) -> str:
    if re.search(r"pull|registry|resolve|manifest|dial tcp|TLS handshake", error, re.IGNORECASE):
        return "; without access to an image registry use `fleet-tui image build --offline`"
    return ""


# --- offline build --------------------------------------------------------------------------------


def _run(args: list[str], *, cwd: Path | None = None, what: str, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False,
                              env={**os.environ, **(env or {})})
    except OSError as exc:
        raise ImageError(f"{what}: cannot run {args[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ImageError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout


def offline_tools_missing(plan: BuildPlan) -> list[str]:
    """Host tools the offline build needs and cannot find."""
    needed = ["apt-get", "apt-cache", "dpkg-deb"]
    if any(engine in NPM_PACKAGES for engine in plan.engines):
        needed.append("npm")
    return [tool for tool in needed if shutil.which(tool) is None]


def debian_packages(plan: BuildPlan) -> tuple[str, ...]:
    extra = ("nodejs",) if any(engine in NPM_PACKAGES for engine in plan.engines) else ()
    return BASE_PACKAGES + extra


# apt as on a fresh Debian: no package counts as installed here, so the candidates (and their dependencies)
# are the archive's, not a version installed on this host from a source apt cannot download from.
_APT_FRESH = ("-o", "Dir::State::status=/dev/null")


def resolve_packages(names: Iterable[str]) -> list[str]:
    """The packages to download: `names` and everything they depend on, less the excluded heavy ones."""
    out = _run(["apt-cache", *_APT_FRESH, "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                "--no-breaks", "--no-replaces", "--no-enhances", *names], what="resolving Debian packages")
    wanted = set()
    for line in out.splitlines():
        if not line or not (line[0].isalnum()):
            continue
        name = line.strip().removesuffix(":any")
        if not EXCLUDE_RE.match(name):
            wanted.add(name)
    missing = [name for name in names if name not in wanted and not EXCLUDE_RE.match(name)]
    if missing:
        raise ImageError(f"apt does not know {', '.join(missing)}; run `apt-get update` (as root) first")
    return sorted(wanted)


def download_debs(packages: list[str], into: Path, progress: Progress) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    base = ["apt-get", *_APT_FRESH, "download", "-qq", "-o", "APT::Sandbox::User=root"]
    try:
        _run([*base, *packages], cwd=into, what="downloading Debian packages")
    except ImageError:
        # One name that is only virtual spoils the batch: fetch one by one and skip what cannot be fetched.
        for name in packages:
            try:
                _run([*base, name], cwd=into, what=f"downloading {name}")
            except ImageError:
                progress(f"skipped {name} (not downloadable)")
    debs = sorted(into.glob("*.deb"))
    if not debs:
        raise ImageError("no Debian package could be downloaded; check the apt sources and the network")
    return debs


def make_rootfs(root: Path, debs: list[Path], progress: Progress) -> None:
    for index, deb in enumerate(debs, 1):
        _run(["dpkg-deb", "-x", str(deb), str(root)], what=f"unpacking {deb.name}")
        if index % 25 == 0 or index == len(debs):
            progress(f"unpacked {index}/{len(debs)} packages")
    # Merged /usr, as Debian installs it: /bin, /sbin, /lib* are links into /usr.
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = root / name
        if top.is_dir() and not top.is_symlink():
            target = root / "usr" / name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(top, target, symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(top)
            top.symlink_to(f"usr/{name}")
    usr_bin = root / "usr" / "bin"
    if not (usr_bin / "sh").exists():
        (usr_bin / "sh").symlink_to("dash")
    if not (usr_bin / "python3").exists():
        versions = sorted(p.name for p in usr_bin.glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name))
        if versions:
            (usr_bin / "python3").symlink_to(versions[-1])
    for doc in ("usr/share/doc", "usr/share/locale", "usr/share/man", "usr/share/info"):
        shutil.rmtree(root / doc, ignore_errors=True)
    for folder in ("etc", "tmp", "root", "home/agent", "workspace", "fleet", "var/tmp", "etc/ssl/certs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                     f"agent:x:{AGENT_UID}:{AGENT_UID}:fleet agent:/home/agent:/bin/bash\n"
                                     "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (root / "etc/group").write_text(f"root:x:0:\nagent:x:{AGENT_UID}:\nnogroup:x:65534:\n")
    # ca-certificates' own script never ran (dpkg-deb -x runs no maintainer scripts): build its bundle.
    certs = sorted((root / "usr/share/ca-certificates").rglob("*.crt"))
    (root / "etc/ssl/certs/ca-certificates.crt").write_text(
        "".join(path.read_text(encoding="utf-8", errors="replace") for path in certs))
    # The workspace belongs to the host's checkout: trust it, and give commits an identity when it has none.
    (root / "etc/gitconfig").write_text("[safe]\n\tdirectory = *\n[user]\n\tname = fleet agent\n"
                                        "\temail = fleet-agent@localhost\n[init]\n\tdefaultBranch = main\n")


def install_engines(root: Path, plan: BuildPlan, progress: Progress) -> None:
    npm = [f"{NPM_PACKAGES[e]}@{plan.versions.get(e) or 'latest'}" for e in plan.engines if e in NPM_PACKAGES]
    if npm:
        progress(f"npm install {' '.join(npm)}")
        _run(["npm", "install", "--global", "--no-audit", "--no-fund", "--prefix", str(root / "usr/local"), *npm],
             what="installing the npm engines", env={"NPM_CONFIG_UPDATE_NOTIFIER": "false"})
    if "aider" in plan.engines:
        image_python = sorted(p.name for p in (root / "usr/bin").glob("python3.*")
                              if re.fullmatch(r"python3\.\d+", p.name))
        host_python = f"python{sys.version_info.major}.{sys.version_info.minor}"
        if not image_python or image_python[-1] != host_python:
            raise ImageError(f"aider offline needs the image's Python ({', '.join(image_python) or 'none'}) to "
                             f"match this one ({host_python}); build without --offline, or drop aider")
        version = plan.versions.get("aider", "")
        spec = PYPI_PACKAGES["aider"] + (f"=={version}" if version and version != "latest" else "")
        progress(f"pip install {spec}")
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(root / "opt/aider"), spec],
             what="installing aider")
        wrapper = root / "usr/local/bin/aider"
        wrapper.parent.mkdir(parents=True, exist_ok=True)
        wrapper.write_text('#!/bin/sh\nPYTHONPATH=/opt/aider exec python3 -m aider "$@"\n')
        wrapper.chmod(0o755)


def _owner(member: tarfile.TarInfo) -> tarfile.TarInfo:
    agent = member.name in ("./home/agent", "./workspace", "./fleet") or member.name.startswith("./home/agent/")
    member.uid = member.gid = AGENT_UID if agent else 0
    member.uname = member.gname = "agent" if agent else "root"
    if member.name in ("./tmp", "./var/tmp"):
        member.mode = 0o1777
    return member


def import_rootfs(root: Path, tag: str, work: Path, progress: Progress) -> None:
    archive = work / "rootfs.tar"
    progress("packing the root file system")
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".", filter=_owner)
    size_mib = archive.stat().st_size / 2**20
    progress(f"importing {size_mib:.0f} MiB as {tag}")
    repository, _, version = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
    changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
               "ENV HOME=/home/agent", "ENV DISABLE_AUTOUPDATER=1", "WORKDIR /workspace",
               f"USER {AGENT_UID}:{AGENT_UID}", 'CMD ["/bin/bash"]']
    client = _docker_client()
    import docker

    try:
        client.api.import_image_from_file(str(archive), repository=repository, tag=version or "latest",
                                          changes=changes)
    except docker.errors.APIError as exc:
        raise ImageError(f"docker import failed: {exc.explanation or exc}") from None


def verify(tag: str, plan: BuildPlan, progress: Progress) -> None:
    """Run the image once: git, python3 and each engine's CLI answer `--version`."""
    client = _docker_client()
    script = "git --version && python3 --version" + "".join(
        f" && {'aider' if e == 'aider' else e} --version" for e in plan.engines)
    import docker

    try:
        out = client.containers.run(tag, ["sh", "-c", script], remove=True, network_mode="none",
                                    user=f"{AGENT_UID}:{AGENT_UID}", entrypoint=[])
    except docker.errors.ContainerError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] if exc.stderr else []
        raise ImageError(f"{tag} was built but does not run its tools: {' '.join(detail) or exc}") from None
    for line in out.decode(errors="replace").splitlines():
        progress(f"  {line.strip()}")


def build_offline(plan: BuildPlan, progress: Progress = _say) -> None:
    missing = offline_tools_missing(plan)
    if missing:
        raise ImageError(f"--offline needs {', '.join(missing)} on this machine (a Debian or Ubuntu host with "
                         "apt; npm for the codex and claude engines)")
    started = time.monotonic()
    shown = progress

    def progress(message: str) -> None:
        shown(f"{time.monotonic() - started:5.1f}s {message}")

    with tempfile.TemporaryDirectory(prefix="fleet-image-") as tmp:
        work = Path(tmp)
        names = debian_packages(plan)
        progress(f"resolving the dependencies of {len(names)} Debian packages")
        packages = resolve_packages(names)
        progress(f"downloading {len(packages)} Debian packages")
        debs = download_debs(packages, work / "debs", progress)
        root = work / "rootfs"
        root.mkdir()
        make_rootfs(root, debs, progress)
        install_engines(root, plan, progress)
        import_rootfs(root, plan.tag, work, progress)
    progress("checking the image runs its tools")
    verify(plan.tag, plan, progress)
    progress(f"built {plan.tag} in {time.monotonic() - started:.0f} s")


def describe(plan: BuildPlan, offline: bool) -> str:
    """What a build would do (`--dry-run`)."""
    lines = [f"image:      {plan.tag}", f"engines:    {', '.join(plan.engines) or 'none (no coding CLI)'}",
             f"Dockerfile: {packaged_file('Dockerfile')}", f"example:    {packaged_file('fleet.toml.example')}"]
    if offline:
        lines.append(f"offline:    Debian packages {', '.join(debian_packages(plan))} (and their dependencies)")
        npm = [NPM_PACKAGES[e] for e in plan.engines if e in NPM_PACKAGES]
        if npm:
            lines.append(f"            npm {', '.join(npm)}")
        if "aider" in plan.engines:
            lines.append("            PyPI aider-chat")
    else:
        lines.append("build args: " + " ".join(f"{k}={v!r}" for k, v in plan.build_args().items()))
    return "\n".join(lines)


__all__ = ["BuildPlan", "ImageError", "build_offline", "build_with_dockerfile", "describe", "engines_for",
           "packaged_file", "plan_for"]

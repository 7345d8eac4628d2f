"""The core imports without textual (only tui/ and cli.py may use it); --version imports nothing heavy."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import fleet_tui


def _core_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(fleet_tui.__path__, "fleet_tui."):
        if info.name.startswith("fleet_tui.tui") or info.name in ("fleet_tui.cli", "fleet_tui.__main__"):
            continue
        names.append(info.name)
    return names


def test_core_imports_without_textual() -> None:
    modules = _core_modules()
    assert "fleet_tui.config" in modules and "fleet_tui.model" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"core modules pulled in textual: {result.stdout}"


def test_version_and_help_import_nothing_heavy() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from fleet_tui import cli\n"
        "for argv in (['--version'], ['--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try: cli.main(argv)\n"
        "        except SystemExit: pass\n"
        "heavy = [m for m in ('textual', 'githubkit', 'docker', 'pydantic', 'rich', 'httpx') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_githubkit_imports_with_pinned_hishel() -> None:
    """githubkit 0.16.1 breaks beside hishel 2: the pin keeps it importable."""
    result = subprocess.run([sys.executable, "-c", "import githubkit, hishel; from githubkit import GitHub; "
                             "print(hishel.__version__ if hasattr(hishel, '__version__') else '')"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    version = result.stdout.strip()
    assert not version or int(version.split(".")[0]) < 2


def test_config_imports_without_pydantic() -> None:
    """The schema loads on every start: it must not pay for pydantic (githubkit's dependency, imported lazily)."""
    code = (
        "import sys\n"
        "from fleet_tui.config import FleetConfig, parse_config\n"
        "config = parse_config('[roles.dev]\\nmax_concurrent = 3\\n')\n"
        "assert config.roles.dev.max_concurrent == 3 and FleetConfig() != config\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"fleet_tui.config pulled in: {result.stdout}"

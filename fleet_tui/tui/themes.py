"""Console themes: the packaged TOML files (fleet-dark, fleet-light), the user's own theme files, and
the remembered choice in `<state dir>/ui.json`."""

from __future__ import annotations

import json
import logging
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from textual.theme import Theme

log = logging.getLogger(__name__)

DEFAULT_THEME = "fleet-dark"
_THEME_KEYS = {"name", "primary", "secondary", "warning", "error", "success", "accent", "foreground",
               "background", "surface", "panel", "boost", "dark", "luminosity_spread", "text_alpha", "variables"}


def theme_from_toml(text: str, source: str) -> Theme:
    """A Textual theme from the text of a theme file; ValueError/TypeError name the file and the problem."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _THEME_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_THEME_KEYS))})")
    if not isinstance(data.get("name"), str) or not isinstance(data.get("primary"), str):
        raise TypeError(f"{source}: needs at least `name` and `primary` strings")
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise TypeError(f"{source}: [variables] must map names to strings")
    return Theme(**data)


def _packaged_theme_texts() -> list[tuple[str, str]]:
    """(source, text) of the built-in theme files: inside the installed package, else the checkout's themes/."""
    found: list[tuple[str, str]] = []
    try:
        folder = resources.files("fleet_tui") / "themes"
        if folder.is_dir():
            for entry in sorted(folder.iterdir(), key=lambda e: e.name):
                if entry.name.endswith(".toml"):
                    found.append((entry.name, entry.read_text(encoding="utf-8")))
    except (OSError, ModuleNotFoundError):
        pass
    if not found:
        checkout = Path(__file__).resolve().parents[2] / "themes"
        if checkout.is_dir():
            found = [(str(path), path.read_text(encoding="utf-8")) for path in sorted(checkout.glob("*.toml"))]
    return found


def load_themes(user_dir: Path | None) -> tuple[list[Theme], list[str]]:
    """Built-in themes, then the user's `<user_dir>/*.toml` (which may override them). Returns the themes and
    one message per file that could not be used."""
    themes: list[Theme] = []
    problems: list[str] = []
    sources = _packaged_theme_texts()
    if user_dir is not None and user_dir.is_dir():
        for path in sorted(user_dir.glob("*.toml")):
            try:
                sources.append((str(path), path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{path}: cannot read: {exc}")
    for source, text in sources:
        try:
            themes.append(theme_from_toml(text, source))
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))
    return themes, problems


def known_theme_names(user_dir: Path | None) -> set[str]:
    """Every theme the console can show: Textual's own, the packaged ones and the user's files."""
    from textual.theme import BUILTIN_THEMES

    loaded, _ = load_themes(user_dir)
    return set(BUILTIN_THEMES) | {theme.name for theme in loaded}


def _ui_state_file(state_dir: Path) -> Path:
    return state_dir / "ui.json"


def remembered_theme(state_dir: Path | None, configured: str) -> str:
    """The theme to start with: the last one picked in the console, unless fleet.toml's theme changed since."""
    if state_dir is None:
        return configured
    try:
        data = json.loads(_ui_state_file(state_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return configured
    if not isinstance(data, dict) or data.get("configured") != configured or not isinstance(data.get("theme"), str):
        return configured
    return data["theme"]


def remember_theme(state_dir: Path | None, theme: str, configured: str) -> None:
    if state_dir is None:
        return
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        _ui_state_file(state_dir).write_text(json.dumps({"theme": theme, "configured": configured}), encoding="utf-8")
    except OSError as exc:
        log.warning("cannot remember the theme: %s", exc)

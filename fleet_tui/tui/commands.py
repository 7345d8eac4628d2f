"""Command palette entries built from the same action table as the key bindings."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content
from textual.fuzzy import Matcher

from fleet_tui.tui.actions import ACTIONS, KEY_DISPLAY

if TYPE_CHECKING:
    from fleet_tui.tui.app import FleetApp


class FleetCommands(Provider):
    """Every operator key, searchable by name; running one acts on the row selected in the main screen."""

    def _entries(self) -> list[tuple[str, str, str]]:
        app: FleetApp = self.app  # type: ignore[assignment]
        entries = []
        for action in ACTIONS:
            key = app.key_for(action.id)
            entries.append((f"{action.name} ({KEY_DISPLAY.get(key, key)})", action.help, action.id))
        return entries

    async def discover(self) -> Hits:
        app: FleetApp = self.app  # type: ignore[assignment]
        for name, help_text, action_id in self._entries():
            yield DiscoveryHit(Content(name), partial(app.run_fleet_action, action_id), help=help_text)

    async def search(self, query: str) -> Hits:
        app: FleetApp = self.app  # type: ignore[assignment]
        matcher = self.matcher(query)
        for name, help_text, action_id in self._entries():
            score = matcher.match(f"{name} {action_id}")
            if score > 0:
                yield Hit(score, _highlight(matcher, name), partial(app.run_fleet_action, action_id), help=help_text)


def _highlight(matcher: Matcher, name: str) -> Content:
    """`name` with the matched letters styled, built as Content: a remapped key from fleet.toml (`[`, say) is
    text, never markup (`Matcher.highlight` would parse it)."""
    content = Content(name)
    _score, offsets = matcher.fuzzy_search.match(matcher.query, name)
    for offset in offsets:
        if not name[offset].isspace():
            content = content.stylize(matcher.match_style, offset, offset + 1)
    return content

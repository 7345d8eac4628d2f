"""Command palette entries built from the same action table as the key bindings."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

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
            entries.append((f"{action.description} ({KEY_DISPLAY.get(key, key)})", action.help, action.id))
        return entries

    async def discover(self) -> Hits:
        app: FleetApp = self.app  # type: ignore[assignment]
        for name, help_text, action_id in self._entries():
            yield DiscoveryHit(name, partial(app.run_fleet_action, action_id), help=help_text)

    async def search(self, query: str) -> Hits:
        app: FleetApp = self.app  # type: ignore[assignment]
        matcher = self.matcher(query)
        for name, help_text, action_id in self._entries():
            score = matcher.match(f"{name} {action_id}")
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(app.run_fleet_action, action_id), help=help_text)

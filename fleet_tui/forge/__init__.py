"""The event system: the `Forge` protocol and its backends (embedded local forge, GitHub)."""

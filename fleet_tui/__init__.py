"""fleet-tui: a terminal operator console for an autonomous coding-agent fleet."""

__version__ = "0.1.0"

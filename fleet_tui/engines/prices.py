"""USD cost of a run from token counts and the engine's configured price table."""

from __future__ import annotations

from fleet_tui.config import EngineConfig
from fleet_tui.model import Usage

_MTOK = 1_000_000


def cost_usd(config: EngineConfig, input_tokens: int, output_tokens: int) -> float:
    """Cost at the configured per-million-token prices (0 when none are configured).

    Cached input tokens are charged as input: the config has no cached price, and an upper bound is the
    safe side for budgets.
    """
    return (input_tokens * config.price_input_per_mtok + output_tokens * config.price_output_per_mtok) / _MTOK


def priced_usage(
    config: EngineConfig,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    reported_cost: float | None = None,
) -> Usage:
    """Usage with its cost: what the CLI reported when it did, else the configured prices."""
    cost = reported_cost if reported_cost is not None else cost_usd(config, input_tokens, output_tokens)
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached_tokens, cost_usd=cost)

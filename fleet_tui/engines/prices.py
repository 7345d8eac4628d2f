"""USD cost of a run from token counts: the engine's configured prices, else the built-in table below.

The table holds list prices (USD per million tokens, input and output) of common OpenAI and Anthropic models,
and what an engine that names no model (the CLI picks its own default) is charged, so daily and per-issue
USD budgets work without configuration. Prices change: set `price_input_per_mtok` / `price_output_per_mtok`
on an engine to override them, or for a model the table does not list (its runs then cost 0 and only token
budgets hold them).
"""

from __future__ import annotations

from fleet_tui.config import EngineConfig
from fleet_tui.model import Usage

_MTOK = 1_000_000

# model -> (input, output) USD per million tokens. A dated or suffixed name (claude-sonnet-4-5-20250929,
# openai/gpt-5.1) is priced by the longest entry it starts with, after any provider prefix.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    # OpenAI (Codex CLI, aider)
    "gpt-5.4": (2.50, 15.0),
    "gpt-5.2": (1.75, 14.0),
    "gpt-5.1-codex-max": (1.25, 10.0),
    "gpt-5.1-codex-mini": (0.25, 2.0),
    "gpt-5.1-codex": (1.25, 10.0),
    "gpt-5.1": (1.25, 10.0),
    "gpt-5-codex": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5": (1.25, 10.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.0),
    "o4-mini": (1.10, 4.40),
    "o3": (2.0, 8.0),
    "codex-mini-latest": (1.50, 6.0),
    # Anthropic (Claude Code, aider)
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-haiku": (0.80, 4.0),
    # Claude Code's aliases
    "sonnet": (3.0, 15.0),
    "opus": (5.0, 25.0),
    "haiku": (1.0, 5.0),
}


# An engine that names no model runs the CLI's own default, which changes between CLI versions: it is
# charged at the price of the family that default comes from (Codex CLI: the GPT-5 codex models; Claude
# Code: Sonnet, until the CLI reports the run's own cost).
CLI_DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "codex": (1.25, 10.0),
    "claude": (3.0, 15.0),
}


def default_price(model: str) -> tuple[float, float] | None:
    """The table's (input, output) price of `model`, or None when it has none."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    if not name:
        return None
    if name in DEFAULT_PRICES:
        return DEFAULT_PRICES[name]
    matches = [key for key in DEFAULT_PRICES if name.startswith((key + "-", key + "@"))]
    return DEFAULT_PRICES[max(matches, key=len)] if matches else None


def prices_of(config: EngineConfig) -> tuple[float, float]:
    """(input, output) USD per million tokens: the engine's own prices when either is set, else the table's
    price of its model (of the CLI's default when it names none), else nothing (0, 0)."""
    if config.price_input_per_mtok or config.price_output_per_mtok:
        return config.price_input_per_mtok, config.price_output_per_mtok
    if not config.model.strip():
        return CLI_DEFAULT_PRICES.get(config.kind, (0.0, 0.0))
    return default_price(config.model) or (0.0, 0.0)


def cost_usd(config: EngineConfig, input_tokens: int, output_tokens: int) -> float:
    """Cost at the engine's prices (0 when it has none).

    Cached input tokens are charged as input: the config has no cached price, and an upper bound is the
    safe side for budgets.
    """
    price_in, price_out = prices_of(config)
    return (input_tokens * price_in + output_tokens * price_out) / _MTOK


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

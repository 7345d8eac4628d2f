"""The Textual operator console. `make_app()` builds it; nothing outside this package imports Textual."""

from __future__ import annotations

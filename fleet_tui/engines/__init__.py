"""LLM workers: how each coding CLI is invoked headlessly and how its output is read."""

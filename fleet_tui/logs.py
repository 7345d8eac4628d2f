"""The debug log: one rotating file under the state dir, with secrets redacted before anything is written."""

from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path

# Token shapes (GitHub classic/fine-grained/OAuth/App tokens, OpenAI/Anthropic keys) and auth headers.
SECRET_RE = re.compile(
    r"(?:ghp_|gho_|ghs_|ghu_|ghr_|github_pat_|sk-(?:ant-|proj-)?)[A-Za-z0-9_\-]{8,}"
    r"|(?i:authorization:\s*(?:bearer|token|basic)\s+)\S+"
    r"|(?i:x-access-token:)[^@\s]+"
)
_known_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """A secret whose exact text is redacted wherever it appears in a log record (e.g. a token read from gh)."""
    if value and len(value) >= 8:
        _known_secrets.add(value)


def redact(text: str) -> str:
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    return SECRET_RE.sub("[REDACTED]", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


LEVELS = ("debug", "info", "warning", "error")


def setup_logging(level: str, log_dir: Path, *, stderr: bool = False) -> Path:
    """Log to `<log_dir>/fleet-tui.log` (rotated, 5 x 2 MiB). Returns the file's path."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "fleet-tui.log"
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper()))
    for handler in list(root.handlers):
        if getattr(handler, "_fleet", False):
            root.removeHandler(handler)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(path, maxBytes=2 * 1024 * 1024, backupCount=5, encoding="utf-8")
    ]
    if stderr:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler._fleet = True  # type: ignore[attr-defined]
        handler.addFilter(RedactingFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    for noisy in ("httpx", "httpcore", "hishel", "docker", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    try:
        path.chmod(0o600)
    except OSError:
        pass
    return path

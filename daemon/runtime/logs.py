"""structlog set-up: console on a terminal, JSON lines otherwise, and a JSON log file."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

_INSTALLED: list[logging.Handler] = []  # handlers this module added to the root logger

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(
    log_format: str = "auto",
    *,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    logfile: Path | None = None,
) -> None:
    """Route structlog through stdlib logging to ``stream`` and, if given, a rotating file.

    ``log_format`` is ``auto`` (console when ``stream`` is a terminal, else JSON),
    ``console`` or ``json``. The file always gets JSON lines.
    """
    stream = stream or sys.stderr
    use_console = log_format == "console" or (
        log_format == "auto" and hasattr(stream, "isatty") and stream.isatty()
    )
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    while _INSTALLED:  # a second configure_logging replaces, never stacks, our handlers
        handler = _INSTALLED.pop()
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(stream)
    console.setLevel(level)
    console.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=_SHARED,
        )
    )
    _INSTALLED.append(console)
    root.addHandler(console)
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.handlers.RotatingFileHandler(
            logfile, maxBytes=10_000_000, backupCount=3, encoding="utf-8"
        )
        to_file.setLevel(logging.INFO)
        to_file.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
                foreign_pre_chain=_SHARED,
            )
        )
        _INSTALLED.append(to_file)
        root.addHandler(to_file)
    root.setLevel(min(level, logging.INFO) if logfile else level)
    # Libraries that chat at INFO (diffusers, httpx) stay quiet unless something is wrong.
    for noisy in ("diffusers", "transformers", "httpx", "urllib3", "apscheduler", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

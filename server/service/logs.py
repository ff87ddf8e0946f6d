"""The server's log: one line per event on stderr, as text or as JSON objects (`--log-format`).

Times are ISO-8601 with their zone. graytune's own loggers log at `--log-level`; everything else
(OpenCLIP's start-up chatter, gRPC, urllib3) only from WARNING up. Each call's audit line carries
its fields as data too (`extra=`), so a JSON log gives them as keys: method, caller, tier, peer,
call_id, status, reason, samples, bytes, latency.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

FORMATS = ("text", "json")
# OpenCLIP's warning for a model made without weights: the server says so itself, with what to
# do about it, and builds its built-in weights from exactly such a model.
OPENCLIP_RANDOM_INIT = "No pretrained weights loaded for model"


def iso_time(record: logging.LogRecord) -> str:
    """2026-12-07T21:20:38.182+00:00."""
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return iso_time(record)


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    class Formatter(JsonFormatter):
        def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
            return iso_time(record)

    return Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
    )


def configure(level: str, log_format: str) -> None:
    """The process's logging: graytune's loggers at `level`, the rest at WARNING, to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    handler.addFilter(lambda record: not str(record.msg).startswith(OPENCLIP_RANDOM_INIT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("graytune").setLevel(level.upper())

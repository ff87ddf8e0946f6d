"""The key file's schema: what a key file and each of its keys may hold, checked in full.

A problem is one line naming the file, the entry and the field
(`keys.json: keys[2] (id k1a2b3c4d): budget_samples: "lots" is not an integer`); a file is
refused with all its problems at once, so an owner fixes them in one go.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graytune.contract import TIERS

# The id sits between underscores in the secret (`gt_<id>_<random>`).
KEY_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_LABEL_CHARS = 100
REQUIRED = ("id", "sha256", "tier")
OPTIONAL = (
    "label",
    "expires_at",
    "budget_samples",
    "gradient_budget_samples",
    "rate_per_second",
    "gradient_clip_norm",
    "gradient_noise_std",
    "pixel_gradients",
)
PIXEL_GRADIENTS = ("allowed", "never")  # whether Backward may return the key a per-pixel gradient


class KeyFileError(ValueError):
    """A key file, or a key's values, that cannot be used: one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, datetime) else value.isoformat()
    return text if len(text) <= 40 else text[:37] + "..."


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{shown(value)} is not an integer"
    return f"{value} is negative (0 freezes the key)" if value < 0 else ""


def _rate(value: Any) -> str:
    if not is_number(value):
        return f"{shown(value)} is not a number"
    return "" if math.isfinite(value) and value > 0 else f"{shown(value)} is not a positive finite number"


def _non_negative(value: Any) -> str:
    if not is_number(value):
        return f"{shown(value)} is not a number"
    return "" if math.isfinite(value) and value >= 0 else f"{shown(value)} is not a finite number >= 0"


def _pixel_gradients(value: Any) -> str:
    return "" if value in PIXEL_GRADIENTS else f"{shown(value)} is not one of {', '.join(PIXEL_GRADIENTS)}"


def _tier(value: Any) -> str:
    return "" if value in TIERS else f"{shown(value)} is not one of {', '.join(TIERS)}"


def _key_id(value: Any) -> str:
    return (
        ""
        if isinstance(value, str) and KEY_ID.fullmatch(value)
        else f"{shown(value)} is not 1-64 letters, digits or '-'"
    )


def _sha256(value: Any) -> str:
    return (
        ""
        if isinstance(value, str) and SHA256.fullmatch(value)
        else f"{shown(value)} is not 64 lowercase hex digits (the SHA-256 of the secret)"
    )


def _label(value: Any) -> str:
    if not isinstance(value, str) or not value.isprintable() or not value.strip():
        return f"{shown(value)} is not printable text (no tabs or line breaks)"
    return "" if len(value) <= MAX_LABEL_CHARS else f"{len(value)} characters, more than {MAX_LABEL_CHARS}"


def _expiry(value: Any) -> str:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        return f"{shown(value)} is not a date and time with a time zone"
    return ""


# The check of each field's value; "" when it is right. None is "not set" for optional fields.
VALUE_CHECKS = {
    "id": _key_id,
    "sha256": _sha256,
    "tier": _tier,
    "label": _label,
    "expires_at": _expiry,
    "budget_samples": _count,
    "gradient_budget_samples": _count,
    "rate_per_second": _rate,
    "gradient_clip_norm": _non_negative,
    "gradient_noise_std": _non_negative,
    "pixel_gradients": _pixel_gradients,
}


def value_problems(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, problem) for each value of a key that is not allowed."""
    return [
        (name, problem)
        for name, value in fields.items()
        if value is not None and (problem := VALUE_CHECKS[name](value))
    ]


def parse_expiry(text: str) -> datetime:
    """ISO-8601 with a time zone ("2027-01-31T00:00:00Z"), or a date alone (its start, in UTC)."""
    when = datetime.fromisoformat(text)
    if len(text) == 10:  # a date: midnight UTC
        when = when.replace(tzinfo=UTC)
    if when.utcoffset() is None:
        raise ValueError(f"{text!r} has no time zone (write UTC as {text}Z)")
    return when.astimezone(UTC)


def format_expiry(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_key_file(text: str, source: str) -> list[dict[str, Any]]:
    """The entries of a key file's text, each a dict of an ApiKey's fields (`expires_at` a
    datetime). Raises KeyFileError with every problem found."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise KeyFileError([f"{source}: line {e.lineno} column {e.colno}: not valid JSON: {e.msg}"]) from None
    if not isinstance(document, dict) or set(document) != {"keys"} or not isinstance(document["keys"], list):
        got = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise KeyFileError(
            [f'{source}: must be a JSON object with exactly one field, "keys", a list of keys (found {shown(got)})']
        )
    problems: list[str] = []
    entries: list[dict[str, Any]] = []
    first_of: dict[str, int] = {}  # key id -> index of its first entry
    for index, entry in enumerate(document["keys"]):
        where = f"{source}: keys[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: {shown(entry)} is not a JSON object")
            continue
        if entry.get("id") and isinstance(entry["id"], str):
            where += f" (id {entry['id']})"
        entry_problems = [f"{where}: {name}: missing (required)" for name in REQUIRED if name not in entry]
        entry_problems += [
            f"{where}: {name}: unknown field (known: {', '.join(REQUIRED + OPTIONAL)})"
            for name in entry
            if name not in VALUE_CHECKS
        ]
        fields = {name: value for name, value in entry.items() if name in VALUE_CHECKS}
        if isinstance(fields.get("expires_at"), str):
            try:
                fields["expires_at"] = parse_expiry(fields["expires_at"])
            except ValueError:
                entry_problems.append(
                    f"{where}: expires_at: {shown(fields['expires_at'])} is not an ISO-8601 "
                    "date and time with a time zone (e.g. 2027-01-31T00:00:00Z)"
                )
                del fields["expires_at"]
        entry_problems += [f"{where}: {name}: {problem}" for name, problem in value_problems(fields)]
        key_id = entry.get("id")
        if isinstance(key_id, str) and key_id in first_of:
            entry_problems.append(f"{where}: id: duplicate of keys[{first_of[key_id]}]")
        elif isinstance(key_id, str):
            first_of[key_id] = index
        problems += entry_problems
        if not entry_problems:
            entries.append(fields)
    if problems:
        raise KeyFileError(problems)
    return entries


def read_key_file(path: Path) -> list[dict[str, Any]]:
    """parse_key_file of a file; a file that cannot be read is a KeyFileError too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        if isinstance(e, PermissionError):  # a container's uid is not the one that created the file
            why += f" (this process runs as uid {os.getuid()}: `chown {os.getuid()} {path}`, mode 0600 kept)"
        raise KeyFileError([f"{path}: cannot read: {why}"]) from None
    return parse_key_file(text, str(path))


def key_file_text(entries: list[dict[str, Any]]) -> str:
    """A key file's text: unset fields left out, expiry as ISO-8601 UTC."""
    keys = [
        {
            name: format_expiry(value) if isinstance(value, datetime) else value
            for name, value in entry.items()
            if value is not None
        }
        for entry in entries
    ]
    return json.dumps({"keys": keys}, indent=2, sort_keys=True) + "\n"

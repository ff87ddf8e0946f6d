"""API keys: a JSON file of key ids, SHA-256 hashes of the secrets, tiers and limits.

    {"keys": [{"id": "k3f9a1c2d", "sha256": "…", "tier": "graybox", "label": "acme",
               "expires_at": "2027-01-31T00:00:00Z", "budget_samples": 100000, "rate_per_second": 20}]}

The secret (`gt_<id>_<random>`) is shown once, when `graytune-server keys create` makes it;
the file holds only its hash, so a leaked key file grants nothing. key_schema says what a
file may hold; a running server re-reads it with `reload()` (see key_reload).
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from graytune.server.access.key_schema import KeyFileError, key_file_text, read_key_file, value_problems


@dataclass(frozen=True)
class ApiKey:
    id: str
    sha256: str
    tier: str
    budget_samples: int | None = None  # samples of Embed/Forward over the key's life
    rate_per_second: float | None = None  # calls per second, bursts up to one second's worth
    gradient_budget_samples: int | None = None  # samples of Backward over the key's life
    # What Backward returns to this key, per sample and input: rescaled to at most this L2
    # norm, then Gaussian noise of this standard deviation added (extraction defences).
    gradient_clip_norm: float | None = None
    gradient_noise_std: float | None = None
    # "never": no per-pixel gradient is returned to this key; it trains a pixel adapter through
    # the frugal image call (InputHeader.pixel_adapter), whose gradients are the adapter's.
    pixel_gradients: str | None = None  # None: "allowed"
    label: str | None = None  # the owner's note of whose key it is
    expires_at: datetime | None = None  # refused from then on

    def __post_init__(self) -> None:
        problems = value_problems(asdict(self))
        if problems:
            raise KeyFileError([f"key {self.id}: {name}: {problem}" for name, problem in problems])

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class KeyChanges(NamedTuple):
    added: list[str]
    revoked: list[str]
    changed: list[str]  # same id, other values (tier, limits, label, expiry)


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or written: inode, size, modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)


class KeyFile:
    def __init__(self, path: Path, clock: Callable[[], datetime] = utc_now):
        """Reads the file (absent: no keys yet); raises KeyFileError with every problem."""
        self.path = Path(path)
        self.clock = clock
        self.identity: tuple[int, int, int] | None = None  # file_identity() of the file as last read, valid or not
        # Replaced whole, never changed in place: authenticate() on other threads sees the
        # old dict or the new one.
        self.keys: dict[str, ApiKey] = self._read() if self.path.exists() else {}

    def _read(self) -> dict[str, ApiKey]:
        self.identity = file_identity(self.path)  # before reading: a change meanwhile is seen again
        return {entry["id"]: ApiKey(**entry) for entry in read_key_file(self.path)}

    def authenticate(self, secret: str) -> ApiKey | None:
        """The key a secret belongs to, or None (unknown, wrong or expired). Compares hashes
        in constant time."""
        parts = secret.split("_")
        key = self.keys.get(parts[1]) if len(parts) == 3 and parts[0] == "gt" else None
        if key is None or not hmac.compare_digest(key.sha256, hash_secret(secret)) or key.expired(self.clock()):
            return None
        return key

    def reload(self) -> KeyChanges:
        """Reads the file again and swaps in its keys; on KeyFileError the keys stay as they were."""
        old, new = self.keys, self._read()
        self.keys = new
        return KeyChanges(
            added=[i for i in new if i not in old],
            revoked=[i for i in old if i not in new],
            changed=[i for i in new if i in old and new[i] != old[i]],
        )

    def create(
        self, tier: str, budget_samples: int | None = None, rate_per_second: float | None = None, **fields: Any
    ) -> str:
        """Adds a key and returns its secret, which is stored nowhere. `fields`: the other
        optional fields of ApiKey (gradient budget, clipping, noise, label, expiry); a value
        not allowed raises KeyFileError."""
        key_id = "k" + secrets.token_hex(4)
        secret = f"gt_{key_id}_{secrets.token_urlsafe(24).replace('_', '-')}"
        key = ApiKey(key_id, hash_secret(secret), tier, budget_samples, rate_per_second, **fields)
        self.keys = {**self.keys, key_id: key}
        self.save()
        return secret

    def revoke(self, key_id: str) -> ApiKey:
        """Removes a key and returns it; an unknown id raises KeyError."""
        if key_id not in self.keys:
            raise KeyError(key_id)
        key = self.keys[key_id]
        self.keys = {i: k for i, k in self.keys.items() if i != key_id}
        self.save()
        return key

    def list(self) -> builtins.list[ApiKey]:
        return list(self.keys.values())

    def save(self) -> None:
        text = key_file_text([asdict(k) for k in self.keys.values()])
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

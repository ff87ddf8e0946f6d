"""API keys: a JSON file of key ids, SHA-256 hashes of the secrets, tiers and limits.

    {"keys": [{"id": "k3f9a1c2", "sha256": "…", "tier": "graybox",
               "budget_samples": 100000, "rate_per_second": 20}]}

The secret (`gt_<id>_<random>`) is shown once, when `graytune-server keys create` makes it;
the file holds only its hash, so a leaked key file grants nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

from graytune.server.access.tiers import TIERS


@dataclass(frozen=True)
class ApiKey:
    id: str
    sha256: str
    tier: str
    budget_samples: Optional[int] = None  # samples of Embed/Forward over the key's life
    rate_per_second: Optional[float] = None  # calls per second, bursts up to one second's worth
    gradient_budget_samples: Optional[int] = None  # samples of Backward over the key's life
    # What Backward returns to this key, per sample and input: rescaled to at most this L2
    # norm, then Gaussian noise of this standard deviation added (extraction defences).
    gradient_clip_norm: Optional[float] = None
    gradient_noise_std: Optional[float] = None

    def __post_init__(self):
        if self.tier not in TIERS:
            raise ValueError(f"key {self.id}: tier '{self.tier}' is not one of {list(TIERS)}")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.keys: Dict[str, ApiKey] = {}
        if self.path.exists():
            entries = json.loads(self.path.read_text()).get("keys", [])
            self.keys = {e["id"]: ApiKey(**e) for e in entries}

    def authenticate(self, secret: str) -> Optional[ApiKey]:
        """The key a secret belongs to, or None. Compares hashes in constant time."""
        parts = secret.split("_")
        key = self.keys.get(parts[1]) if len(parts) == 3 and parts[0] == "gt" else None
        if key is None or not hmac.compare_digest(key.sha256, hash_secret(secret)):
            return None
        return key

    def create(self, tier: str, budget_samples: Optional[int] = None,
               rate_per_second: Optional[float] = None, **limits) -> str:
        """Adds a key and returns its secret, which is stored nowhere. `limits`: the other
        optional fields of ApiKey (gradient budget, clipping, noise)."""
        key_id = "k" + secrets.token_hex(4)
        secret = f"gt_{key_id}_{secrets.token_urlsafe(24).replace('_', '-')}"
        self.keys[key_id] = ApiKey(key_id, hash_secret(secret), tier, budget_samples, rate_per_second,
                                   **limits)
        self.save()
        return secret

    def revoke(self, key_id: str) -> None:
        if self.keys.pop(key_id, None) is None:
            raise KeyError(f"no key '{key_id}' in {self.path}")
        self.save()

    def list(self) -> List[ApiKey]:
        return list(self.keys.values())

    def save(self) -> None:
        text = json.dumps({"keys": [asdict(k) for k in self.keys.values()]}, indent=2, sort_keys=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

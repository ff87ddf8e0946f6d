"""The credential check of every graytune.v1 call.

A call carries `authorization: Bearer <secret>` metadata; `caller_for` finds its key, or None
(the servicer answers UNAUTHENTICATED before reading anything else). Health checking and
reflection are not graytune.v1 methods: they stay open, as load balancers and tools expect.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from graytune.contract import AUTHORIZATION_HEADER
from graytune.server.access.credentials import ApiKey, KeyFile

UNAUTHENTICATED_MESSAGE = (
    f"{AUTHORIZATION_HEADER}: missing, unknown, revoked or expired API key; send "
    f"'{AUTHORIZATION_HEADER}: Bearer <key>' (the graytune CLI and OracleClient send "
    f"$GRAYTUNE_API_KEY)"
)


@dataclass(frozen=True)
class Caller:
    id: str  # the key id: owns the graphs it creates, names it in logs and metrics
    tier: str
    key: ApiKey | None = None  # None in development mode


UNKNOWN_CALLER = Caller("-", "-")  # who a call without a valid key is, in logs and metrics


class Authenticator:
    def __init__(self, keys: KeyFile | None, dev_tier: str | None = None):
        if (keys is None) == (dev_tier is None):
            raise ValueError("give a key file, or a tier for development mode, not both")
        self.keys, self.dev_tier = keys, dev_tier

    def caller_for(self, metadata: Iterable[tuple[str, str | bytes]]) -> Caller | None:
        if self.keys is None:
            assert self.dev_tier is not None  # __init__: no key file means a development tier
            return Caller("dev", self.dev_tier)
        value = cast(str, dict(metadata).get(AUTHORIZATION_HEADER, ""))  # gRPC gives bytes for "-bin" keys only
        scheme, _, secret = value.partition(" ")
        key = self.keys.authenticate(secret.strip()) if scheme.lower() == "bearer" else None
        return None if key is None else Caller(key.id, key.tier, key)

"""Failed sign-ins and unknown bearer tokens, throttled per client address across every web replica.

Each failure takes a token from the address's bucket (``web_auth_failures_per_min`` per minute, as many at
once); the failure that empties it locks the address out until a token is back, and while it is locked
out none of its tokens is even compared: a guesser gets ``web_auth_failures_per_min`` guesses a
minute, whatever its speed, and a caller with a good token is never slowed down by anyone else's failures.
"""

from __future__ import annotations

import math
from typing import cast

import redis
from fastapi import HTTPException

from core.keys import Keys
from core.lua_scripts import load_script


class AuthThrottle:
    def __init__(self, client: redis.Redis, keys: Keys, per_min: int) -> None:
        self._redis = client
        self._keys = keys
        self.per_min = per_min

    def refuse_if_blocked(self, address: str) -> None:
        """HTTPException 429 (Retry-After) while ``address`` is locked out."""
        left_ms = int(cast(int, self._redis.pttl(self._keys.auth_lockout(address))))
        if left_ms > 0:
            wait_s = max(1, math.ceil(left_ms / 1000))
            raise HTTPException(
                429,
                f"too many failed sign-ins or unknown tokens from this address; try again in {wait_s} s "
                f"(at most {self.per_min} a minute: web_auth_failures_per_min)",
                {"Retry-After": str(wait_s)},
            )

    def failed(self, address: str) -> None:
        """Count one failure of ``address``; lock it out when that emptied its bucket."""
        wait_s = float(
            load_script(self._redis, "auth_failure")(
                keys=[self._keys.auth_failures(address)], args=[self.per_min / 60, self.per_min]
            )
        )
        if wait_s > 0:
            self._redis.set(self._keys.auth_lockout(address), "1", px=max(1, math.ceil(wait_s * 1000)))

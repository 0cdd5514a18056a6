"""Dashboard sign-ins: a random session id in an HttpOnly, SameSite=Strict cookie, the session in Redis.

Signing in takes an ingress token (the principal it names is who the pages show jobs for); the token is
checked once and never stored. The session is a Redis hash keyed by the sha256 of the cookie's value
(a dump of Redis does not hand out live cookies), holding the principal's name, the sha256 of the token it
was opened with and a CSRF token, with the sign-in's lifetime as its expiry. A session is good only while
that token is still its principal's: rotating or removing a token signs its sessions out at once. Every
web replica reads the same sessions; signing out deletes it.

Every action (a POST) must carry the session's CSRF token in its form, compared in constant time, and
its ``Origin`` (when the browser sends one) must be the dashboard's own: with SameSite=Strict that makes a
cross-site form post fail twice over.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import cast

import redis

from config.settings import PrincipalSettings
from core.keys import Keys

COOKIE = "imagineq_session"


@dataclass(frozen=True)
class Session:
    principal: PrincipalSettings
    csrf: str


class SessionStore:
    def __init__(self, client: redis.Redis, keys: Keys, principals: list[PrincipalSettings], ttl_s: int) -> None:
        self._redis = client
        self._keys = keys
        # By name and token: a principal with several tokens (``default``) has one entry per token.
        self._principals = {(principal.name, principal.fingerprint): principal for principal in principals}
        self._ttl_s = ttl_s

    def _key(self, session_id: str) -> str:
        return self._keys.dashboard_session(hashlib.sha256(session_id.encode()).hexdigest())

    def open(self, principal: PrincipalSettings) -> str:
        """A new session for ``principal``; returns the cookie value."""
        session_id = secrets.token_urlsafe(32)
        key = self._key(session_id)
        with self._redis.pipeline() as pipe:
            pipe.hset(
                key,
                mapping={
                    "principal": principal.name,
                    "token": principal.fingerprint,
                    "csrf": secrets.token_urlsafe(32),
                },
            )
            pipe.expire(key, self._ttl_s)
            pipe.execute()
        return session_id

    def find(self, session_id: str | None) -> Session | None:
        """The live session of this cookie value; None when unknown, expired, or the token it was opened
        with is no longer its principal's (a rotated or removed token signs its sessions out)."""
        if not session_id or len(session_id) > 128:
            return None
        data = cast("dict[str, str]", self._redis.hgetall(self._key(session_id)))
        principal = self._principals.get((data.get("principal", ""), data.get("token", "")))
        if principal is None or not data.get("csrf"):
            return None
        return Session(principal=principal, csrf=data["csrf"])

    def close(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= 128:
            self._redis.delete(self._key(session_id))


def csrf_ok(session: Session, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(session.csrf.encode(), given.encode())

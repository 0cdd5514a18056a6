"""What the handlers share: the deployment's clients, the callback receiver, metrics, token checks."""

from __future__ import annotations

import logging
import threading
import time
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any

from celery import Celery
from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from config.celery import QUEUES
from config.settings import PrincipalSettings, Settings
from core.catalog import MODELS
from core.clients import Clients
from core.fair_share import PrincipalShare, read_shares
from core.jobs import Job, JobState
from core.quota import QuotaLimiter
from producers.api import Producer
from producers.web.callbacks import CallbackReceiver
from producers.web.metrics import RedisCollector, build_registry
from producers.web.principals import EnqueueLimits, TokenTable, principal_table
from producers.web.throttle import AuthThrottle
from workers.chains import rest_of_job

if TYPE_CHECKING:
    from workers.batch.reader import BatchSubmitter

log = logging.getLogger("imagineq.http")

PING_TIMEOUT_S = 0.5


class Web:
    """Everything the handlers use, built once per app from Settings."""

    def __init__(self, settings: Settings) -> None:
        from workers.celery import create_app as create_celery

        self.settings = settings
        clients = Clients.build(settings)
        self.redis, self.keys, self.jobs = clients.redis, clients.keys, clients.jobs
        self.quota = QuotaLimiter.for_settings(self.redis, self.keys, settings)
        self.celery: Celery = create_celery(settings)
        self.producer = Producer(settings, client=self.redis, app=self.celery)
        hmac_key = settings.callbacks.hmac_key
        self.callbacks = CallbackReceiver(
            self.redis,
            self.keys,
            self.jobs,
            self.wake,
            self.release,
            hmac_key=hmac_key.get_secret_value().encode() if hmac_key is not None else None,
            max_age_s=settings.callbacks.max_age_s,
            early_ttl_s=settings.early_callback_ttl_s,
        )
        self.registry = build_registry(
            RedisCollector(self.redis, self.keys, self.jobs, self.quota, QUEUES, shares=self.principal_shares)
        )
        self.principals = principal_table(settings.principals())
        self.ops_tokens: TokenTable[bool] = TokenTable.of_tokens((token, True) for token in settings.ops_tokens)
        self.limits = EnqueueLimits(self.redis, self.keys)
        self.throttle = AuthThrottle(self.redis, self.keys, settings.web_auth_failures_per_min)
        self._workers: tuple[float, list[str]] = (-1e9, [])
        self._workers_lock = threading.Lock()

    @cached_property
    def presigner(self) -> Any:
        """Signs links to stored outputs for the endpoint clients reach (``dashboard.video_endpoint_url``,
        else the S3 endpoint): built on first use, so a web that never hands one out never builds it."""
        from workers.storage import build_s3_client

        s3, endpoint = self.settings.s3, self.settings.dashboard.video_endpoint_url
        if endpoint:
            s3 = s3.model_copy(update={"endpoint_url": endpoint})
        return build_s3_client(s3, self.settings.http)

    @cached_property
    def batch_submitter(self) -> BatchSubmitter:
        """Reads batches submitted over HTTP (built on first use)."""
        from workers.batch.reader import BatchSubmitter

        return BatchSubmitter(self.settings, client=self.redis)

    def presigned(self, uri: str) -> str | None:
        """A short-lived GET link to a stored object (``dashboard.video_url_ttl_s``)."""
        from workers.storage import presigned_get_url

        return presigned_get_url(self.presigner, uri, self.settings.dashboard.video_url_ttl_s)

    def principal_shares(self) -> list[PrincipalShare]:
        """Fair share per principal (``core.fair_share``): every configured principal and the operator."""
        weights = {principal.name: principal.weight for principal in self.settings.principals()}
        slots = [(account.name, pool) for account in self.settings.accounts for pool in MODELS]
        return read_shares(self.redis, self.keys, weights, slots)

    def release(self, job: Job) -> None:
        """A callback said the job's task ended: its in-progress slot is free upstream already, so it goes
        back at once (the next job need not wait for the record to be read). Idempotent."""
        if job.account is not None and job.state is JobState.GENERATING:
            self.quota.release(job.account, job.id, pool=job.pool)

    def wake(self, job: Job) -> None:
        """A poll reads the job's record now, then store follows."""
        rest_of_job(self.celery, job, woken=True).apply_async()

    def workers_seen(self) -> list[str]:
        with self._workers_lock:
            at, names = self._workers
            if time.monotonic() - at < self.settings.health_workers_cache_s:
                return names
            try:
                replies = self.celery.control.ping(timeout=PING_TIMEOUT_S) or []
            except Exception as error:  # the broker is unreachable: report no workers, keep serving
                log.warning("healthz: worker ping failed: %s", error)
                replies = []
            names = sorted(name for reply in replies for name in reply)
            self._workers = (time.monotonic(), names)
            return names

    def close(self) -> None:
        self.redis.close()


def web_of(request: Request) -> Web:
    """The app's :class:`Web` (set by ``create_api``)."""
    web: Web = request.app.state.web
    return web


#: A handler parameter that receives the app's :class:`Web`.
WebDep = Annotated[Web, Depends(web_of)]


_bearer = HTTPBearer(auto_error=False, description="One of the configured ingress tokens")
JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def client_address(request: Request) -> str:
    """The client's address: the connection's peer, or what a trusted proxy forwarded
    (``web_trusted_proxies``, applied by the app's proxy-headers middleware)."""
    return request.client.host if request.client is not None else "unknown"


def authorized(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> PrincipalSettings:
    """The principal of the bearer token on ``/v1/*`` (401 without a known one; 429 for an address that
    sent too many unknown ones, before its token is even looked at)."""
    web = web_of(request)
    address = client_address(request)
    web.throttle.refuse_if_blocked(address)
    principal = web.principals.find(credentials.credentials) if credentials is not None else None
    if principal is None:
        if credentials is not None:
            web.throttle.failed(address)
        raise HTTPException(401, "missing or unknown bearer token", {"WWW-Authenticate": "Bearer"})
    return principal


def is_operator(request: Request) -> bool:
    """True when the request carries one of the ops tokens (``/metrics``, ``/healthz`` details). Read
    by hand, not declared as a security scheme: ``/healthz`` answers everyone, with less detail."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and web_of(request).ops_tokens.find(token.strip()) is not None


#: A handler parameter: whether the caller holds an ops token.
Operator = Annotated[bool, Depends(is_operator)]

#: A handler parameter that receives the caller's principal (and refuses unknown tokens).
Caller = Annotated[PrincipalSettings, Depends(authorized)]

"""The per-process set of clients a worker uses, built once after fork from Settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis

from config.settings import Settings
from core.catalog import Catalog
from core.clients import Clients
from core.jobstore import JobStore
from core.keys import Keys
from core.quota import QuotaLimiter
from core.workflows import WorkflowStore
from workers.inputs import Inputs
from workers.poll_plan import PollPlan
from workers.storage import Storage
from workers.upstream import UpstreamClient, build_session


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    keys: Keys
    jobs: JobStore
    workflows: WorkflowStore
    quota: QuotaLimiter
    plan: PollPlan
    storage: Storage
    catalog: Catalog
    _clients: dict[str, UpstreamClient] = field(default_factory=dict)
    _inputs: Inputs | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        clients = Clients.build(settings)
        storage = Storage(
            settings.s3, settings.http, downloads=settings.downloads, result_hosts=settings.result_hosts()
        )
        if settings.s3.create_bucket:
            storage.ensure_bucket()  # local S3 servers: the first task of each process creates it
        return cls(
            settings=settings,
            redis=clients.redis,
            keys=clients.keys,
            jobs=clients.jobs,
            workflows=clients.workflows,
            quota=QuotaLimiter.for_settings(clients.redis, clients.keys, settings),
            plan=PollPlan(clients.redis, clients.keys, settings.accounts),
            storage=storage,
            catalog=Catalog(settings),
        )

    @property
    def inputs(self) -> Inputs:
        """Image inputs and parents at submit time (built on first use)."""
        with self._lock:
            if self._inputs is None:
                self._inputs = Inputs(self.settings, self.redis, self.keys, self.jobs, self.storage)
            return self._inputs

    def upstream(self, account: str) -> UpstreamClient:
        """The client for ``account`` (one pooled session per account per process)."""
        with self._lock:
            client = self._clients.get(account)
            if client is None:
                client = UpstreamClient(
                    self.settings.account(account), self.settings.http, build_session(self.settings.http)
                )
                self._clients[account] = client
            return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        if self._inputs is not None:
            self._inputs.close()
        self.redis.close()

"""The network-fault stack: a whole deployment spread over hosts in network namespaces (devstack/netns.py),
each service behind a latency proxy (devstack/netproxy.py), for the scenarios of
:mod:`devstack.chaos_net_scenarios` (``make chaos-net``).

Hosts, each a namespace with one address in 198.19.0.0/16 (which exists only inside them):

    redis1    the Redis primary and a Sentinel        redis2, redis3   a replica and a Sentinel each
    s3        SeaweedFS (bucket versioning on)        upstream         the simulator (signed callbacks)
    web       the web process (callbacks)             worker1, worker2 a submit, a poll and a store worker each
    beat      beat (the reconciler every 2 s, as the chaos stack's loop)

Every server listens on its host's loopback and is reached through a ``netproxy`` on the host's address,
so every connection between hosts crosses one proxy: all of them take the latency written to one file
(``set_latency``). The test itself (the producer and the checks) is in the root namespace, on the bridge
as 198.19.0.1: partitions between hosts never cut it off. The upstream's real limits apply (30 in
progress; 300 creations per window, the window scaled to ``WINDOW_S`` on both sides so scenarios run back
to back), with the simulator's real generation times.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, cast

import redis

from devstack import services
from devstack.chaos import BUCKET, HMAC_KEY, IN_PROGRESS_LIMIT, SIM_DEFAULTS, SIMULATOR_ARGS, STACK_ENV
from devstack.deployment import Deployment
from devstack.netns import Host, Net
from devstack.processes import Service, ServiceError, await_ready, http_ok, spawn
from devstack.procfile import command
from devstack.redis_servers import redis_reachable, redis_server_binary
from devstack.s3_servers import SEAWEED_PORTS, S3Credentials, s3_identity, weed_argv
from devstack.services import LocalStack

MASTER: Final = "imagineq"
REDIS_PORT: Final = 6379
SENTINEL_PORT: Final = 26379
S3_PORT: Final = 8333
SIMULATOR_PORT: Final = 8900
WEB_PORT: Final = 8000
#: Every server listens this much above the port its proxy takes on the host's address.
BEHIND: Final = 10000
#: The creation window, scaled on both sides (300 creations per WINDOW_S): at 30 in progress and 10-25 s
#: per task about 100 creations a minute happen, so the window is checked but never what paces a run.
CREATIONS_PER_WINDOW: Final = 300
WINDOW_S: Final = 120
HOSTS: Final = ("redis1", "redis2", "redis3", "s3", "upstream", "web", "worker1", "worker2", "beat")
WORKER_HOSTS: Final = ("worker1", "worker2")
QUEUES: Final = ("submit", "poll", "store")
#: Processes per worker host and queue. Each submit and poll is a chain of round trips (Redis, replicas'
#: WAIT, the upstream) that a slow link stretches: 100 ms each way makes a submit take about 2 s, so
#: keeping 30 slots busy at 10-25 s per task takes four submitters a host, not two (docs/operating.md).
WORKER_CONCURRENCY: Final = {"submit": 4, "poll": 4, "store": 4}
#: The Sentinels wait this long without an answer (the chaos stack's 2 s, plus the latency scenario's
#: 100 ms each way and 1 % loss: a retransmission takes 200 ms and more).
DOWN_AFTER_MS: Final = 5000


class NetStack:
    """Every process of a deployment on its own host; faults between hosts (see the module docstring)."""

    def __init__(self, net: Net, stack: LocalStack) -> None:
        self.net, self.stack = net, stack
        self.log_dir = stack.log_dir
        self.hosts = {name: net.host(name) for name in HOSTS}
        self.latency_file = self.log_dir / "latency.json"
        self.set_latency(0, 0)
        self.proxies: list[Service] = []
        self.redis_nodes = {name: self._redis(self.hosts[name]) for name in ("redis1", "redis2", "redis3")}
        self.sentinels = [self._sentinel(self.hosts[name]) for name in ("redis1", "redis2", "redis3")]
        self._await_replication()
        credentials = S3Credentials.generate()
        self.s3 = self._s3(self.hosts["s3"], credentials)
        self.simulator = self._simulator(self.hosts["upstream"])
        upstream = f"http://{self.hosts['upstream'].address}:{SIMULATOR_PORT}"
        sentinels = ";".join(
            f"sentinel://{self.hosts[n].address}:{SENTINEL_PORT}" for n in ("redis1", "redis2", "redis3")
        )
        self.env = services.deployment_env(
            redis_url=sentinels,
            s3=self.s3,
            simulator_url=upstream,
            bucket=BUCKET,
            extra={
                **STACK_ENV,
                "IMAGINEQ_REDIS_SENTINEL_MASTER": MASTER,
                "IMAGINEQ_ACCOUNTS": json.dumps(
                    [
                        {
                            "name": "default",
                            "api_key": "sim-key",
                            "base_url": upstream,
                            "max_in_progress": IN_PROGRESS_LIMIT,
                            "max_creations_per_window": CREATIONS_PER_WINDOW,
                            "creation_window_s": WINDOW_S,
                        }
                    ]
                ),
                "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://{self.hosts['web'].address}:{WEB_PORT}",
                "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
                "IMAGINEQ_INGRESS_TOKENS": '["chaos-token-0123456789abcdef"]',
                "IMAGINEQ_DOWNLOADS__ALLOW_NETWORKS": '["198.19.0.0/16"]',
            },
        )
        self.dep = Deployment(stack, self.env, self.simulator)
        self.dep.s3.create_bucket(Bucket=BUCKET)
        self.dep.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        self.web = self._web(self.hosts["web"])
        self.workers: dict[str, list[Service]] = {}
        self.clock_offsets: dict[str, str] = {}
        self._workers_lock = threading.Lock()
        for name in WORKER_HOSTS:
            self.start_workers(name)
        self.beat = self._spawn(self.hosts["beat"], "beat", command("beat"), env=self.env)
        self.creations_per_hour = CREATIONS_PER_WINDOW
        self.figures: dict[str, float] = {}
        self.crashes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()

    # -- what the scenarios' checks read (as devstack.chaos.ChaosStack) ---------------------------------
    ha = True

    @property
    def jobs(self) -> Any:
        return self.dep.producer.jobs

    def sim(self, **changes: Any) -> None:
        self.dep.sim_config(**changes)

    def reset_simulator(self) -> None:
        self.dep.sim("reset", {})
        self.dep.sim_config(**SIM_DEFAULTS)

    # -- faults -----------------------------------------------------------------------------------------
    def set_latency(self, latency_ms: float, jitter_ms: float) -> None:
        """Every proxy (every link between hosts) takes this latency, each way, within 0.2 s."""
        temporary = self.latency_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"latency_ms": latency_ms, "jitter_ms": jitter_ms}))
        temporary.replace(self.latency_file)

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def primary(self) -> str:
        """The host of the primary the majority of the Sentinels name now."""
        answers: Counter[str] = Counter()
        for name in ("redis1", "redis2", "redis3"):
            client = redis.Redis(self.hosts[name].address, SENTINEL_PORT, socket_timeout=2, decode_responses=True)
            with contextlib.suppress(redis.RedisError):
                address, _ = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)  # type: ignore[no-untyped-call]
                answers[address] += 1
            client.close()
        address = answers.most_common(1)[0][0] if answers else ""
        return next((name for name, host in self.hosts.items() if host.address == address), "")

    def start_workers(self, host_name: str, clock_offset: str | None = None) -> None:
        """The host's submit, poll and store workers (with ``faketime`` when ``clock_offset``, e.g. "+30s")."""
        host = self.hosts[host_name]
        prefix = ["faketime", "-f", clock_offset] if clock_offset else []
        group = [
            self._spawn(
                host,
                f"{queue}-{host_name}",
                [
                    *prefix,
                    *services.worker_argv(queue, concurrency=WORKER_CONCURRENCY[queue], name=f"{queue}-{host_name}@%h"),
                ],
                env=self.env,
            )
            for queue in QUEUES
        ]
        with self._workers_lock:
            self.workers[host_name] = group
            if clock_offset:
                self.clock_offsets[host_name] = clock_offset
            else:
                self.clock_offsets.pop(host_name, None)

    def stop_workers(self, host_name: str) -> None:
        """Stop the host's workers warm (SIGTERM: running tasks finish), as a redeploy would."""
        with self._workers_lock:
            group = self.workers.pop(host_name, [])
        for service in group:
            service.stop(timeout_s=120)

    # -- building ---------------------------------------------------------------------------------------
    def _spawn(self, host: Host, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> Service:
        service = spawn(name, ["ip", "netns", "exec", host.namespace, *argv], log_dir=self.log_dir, env=env)
        return self.stack.add(service)

    def _proxy(self, host: Host, port: int, target: str = "127.0.0.1") -> None:
        """The proxy on the host's address and ``port``, to its server on ``target`` at ``port + BEHIND``
        (a server checking its port is free may look at every address: the two never share a port)."""
        argv = [sys.executable, "-m", "devstack.netproxy", "--listen", f"{host.address}:{port}"]
        argv += ["--to", f"{target}:{port + BEHIND}", "--config", str(self.latency_file)]
        self.proxies.append(self._spawn(host, f"proxy-{host.name}-{port}", argv))

    def _redis(self, host: Host) -> Service:
        data = self.log_dir / f"redis-{host.name}"
        data.mkdir(exist_ok=True)
        # Bound to the host's address (behind its proxy's port): Redis and Sentinel bind their outgoing
        # connections to their first bind address, and from 127.0.0.1 no other host is reachable.
        argv = [redis_server_binary(), "--port", str(REDIS_PORT + BEHIND), "--bind", host.address, "--dir", str(data)]
        argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"]
        # Replicas are seen by the others at their host's address (their connections come from a proxy).
        argv += ["--replica-announce-ip", host.address, "--replica-announce-port", str(REDIS_PORT)]
        if host.name != "redis1":
            argv += ["--replicaof", self.hosts["redis1"].address, str(REDIS_PORT)]
        service = self._spawn(host, f"redis-{host.name}", argv)
        self._proxy(host, REDIS_PORT, host.address)
        service.url = f"redis://{host.address}:{REDIS_PORT}/0"
        await_ready(service, lambda: redis_reachable(service.url), 30)
        return service

    def _sentinel(self, host: Host) -> Service:
        folder = self.log_dir / f"sentinel-{host.name}"
        folder.mkdir(exist_ok=True)
        config = folder / "sentinel.conf"
        lines = [
            f"port {SENTINEL_PORT + BEHIND}",
            f"bind {host.address}",
            f"dir {folder}",
            f"sentinel announce-ip {host.address}",
            f"sentinel announce-port {SENTINEL_PORT}",
            f"sentinel monitor {MASTER} {self.hosts['redis1'].address} {REDIS_PORT} 2",
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} 20000",
            f"sentinel parallel-syncs {MASTER} 1",
        ]
        config.write_text("\n".join(lines) + "\n")
        service = self._spawn(host, f"sentinel-{host.name}", [redis_server_binary(), str(config), "--sentinel"])
        self._proxy(host, SENTINEL_PORT, host.address)
        service.url = f"redis://{host.address}:{SENTINEL_PORT}"
        await_ready(service, lambda: redis_reachable(service.url), 30)
        return service

    def _await_replication(self) -> None:
        primary = redis.Redis.from_url(self.redis_nodes["redis1"].url, decode_responses=True)
        try:
            services.wait_until(
                lambda: int(cast("dict[str, Any]", primary.info("replication"))["connected_slaves"]) == 2,
                60,
                "two replicas to connect",
            )
        finally:
            primary.close()

        def known() -> bool:
            client = redis.Redis.from_url(self.sentinels[0].url, decode_responses=True, socket_timeout=2)
            try:
                replicas = client.execute_command("SENTINEL", "replicas", MASTER)  # type: ignore[no-untyped-call]
                sentinels = client.execute_command("SENTINEL", "sentinels", MASTER)  # type: ignore[no-untyped-call]
                return len(replicas) == 2 and len(sentinels) == 2
            except redis.RedisError:
                return False
            finally:
                client.close()

        services.wait_until(known, 60, "the Sentinels to know the replicas and each other")

    def _s3(self, host: Host, credentials: S3Credentials) -> Service:
        data = self.log_dir / "s3"
        data.mkdir(exist_ok=True)
        credentials = s3_identity(data, credentials)
        ports = {name: 28000 + i for i, name in enumerate(SEAWEED_PORTS)}
        ports["s3"] = S3_PORT + BEHIND
        service = self._spawn(host, "s3", weed_argv(data, ports))
        self._proxy(host, S3_PORT)
        service.url = f"http://{host.address}:{S3_PORT}"
        service.extra = {"access_key_id": credentials.access_key_id, "secret_access_key": credentials.secret_access_key}
        await_ready(service, lambda: http_ok(f"{service.url}/"), 60)
        return service

    def _simulator(self, host: Host) -> Service:
        url = f"http://{host.address}:{SIMULATOR_PORT}"
        port = str(SIMULATOR_PORT + BEHIND)
        argv = [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", port, "--admin"]
        # Real generation times (the simulator's documented ones), the real window's size, scaled in time.
        args = list(SIMULATOR_ARGS)
        gen = args.index("--gen-time")
        del args[gen : gen + 2]
        argv += [*args, "--max-per-window", str(CREATIONS_PER_WINDOW), "--window-s", str(WINDOW_S)]
        argv += ["--result-base-url", url]
        service = self._spawn(host, "simulator", argv)
        self._proxy(host, SIMULATOR_PORT)
        service.url = url
        await_ready(service, lambda: http_ok(f"{url}/__sim__/stats"), 60)
        return service

    def _web(self, host: Host) -> Service:
        service = self._spawn(host, "web", services.web_argv(WEB_PORT + BEHIND), env=self.env)
        self._proxy(host, WEB_PORT)
        service.url = f"http://{host.address}:{WEB_PORT}"
        await_ready(service, lambda: http_ok(f"{service.url}/healthz"), 90)
        return service

    # -- supervision ------------------------------------------------------------------------------------
    def _supervise(self) -> None:
        """A process supervisor's job: a worker that exited by itself is counted and started again."""
        while not self._stop.wait(1.0):
            with self._workers_lock:
                groups = {name: list(group) for name, group in self.workers.items()}
            for host_name, group in groups.items():
                dead = [service for service in group if not service.alive()]
                if not dead or self._stop.is_set():
                    continue
                for service in dead:
                    self.crashes[service.name] += 1
                    print(f"  supervisor: {service.name} exited ({service.process.returncode}); restarting", flush=True)
                with self._workers_lock:
                    offset = self.clock_offsets.get(host_name)
                    if self.workers.get(host_name) is group:
                        self.workers.pop(host_name)
                for service in group:
                    service.stop(timeout_s=30)
                with contextlib.suppress(ServiceError):
                    self.start_workers(host_name, offset)

    def close(self) -> None:
        self._stop.set()
        self._supervisor.join(timeout=60)
        self.dep.close()


@contextlib.contextmanager
def net_stack(log_dir: Path) -> Iterator[NetStack]:
    """The stack, on hosts made for it; everything removed at the end (namespaces, links, processes)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with services.terminate_on_signals(), Net(prefix="iqnet") as net, LocalStack(log_dir) as stack:
        chaos = NetStack(net, stack)
        try:
            yield chaos
        finally:
            chaos.close()  # then the stack stops every process, before the namespaces go

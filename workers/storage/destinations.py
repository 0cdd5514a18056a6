"""Where a result download may connect: allowed result hosts, and public addresses only.

A result URL comes from the upstream's record, but it is still input from outside: a redirect, a DNS
answer or a compromised file host could point it at the deployment's own network (Redis, S3, a cloud
metadata service). Two checks stand between a URL and a connection:

- **the host name and port** of the URL, and of every redirect hop, must be one of the allowed result
  hosts (``downloads.result_hosts``: exact names, or ``*.example.com`` for any name under a domain; a
  bare name allows the web ports 80 and 443 only, ``name:port`` that port);
- **every address** the name resolves to must be public — not loopback, private, link-local (cloud
  metadata services live there), multicast, reserved or unspecified — unless it lies in one of the
  explicitly allowed networks (``downloads.allow_networks``, e.g. the loopback of a local simulator).

The address check runs inside the connection itself (:class:`GuardedHTTPConnection`): the name is
resolved once, the addresses are checked, and the socket connects to exactly those addresses, so a second
DNS answer can never slip a different address in between the check and the connection. TLS still
verifies the certificate against the host name. Result downloads connect directly, never through an
environment proxy, so the address checked is the address connected to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection
from urllib3.util.retry import Retry

from core.errors import ImagineQError
from workers.socket_watch import WatchedConnectionMixin, use_connection_classes

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RefusedDestination(ImagineQError):
    """A connection was refused before it was made: the address is not one results may come from.

    Deliberately not an ``OSError``: urllib3 and requests pass it through untouched, so it can never be
    mistaken for (or retried as) a network failure.
    """

    def __init__(self, host: str) -> None:
        super().__init__(f"result host {host!r} resolves to an address results may not come from")
        self.host = host


#: Ports a result host named without one may be reached on.
WEB_PORTS = frozenset({80, 443})


@dataclass(frozen=True)
class HostAllowlist:
    """Hosts results may be downloaded from: ``name``, ``*.domain`` (names under it), ``*`` (any name),
    ``...:port``."""

    patterns: tuple[tuple[str, int | None], ...]

    @classmethod
    def of(cls, patterns: Iterable[str]) -> HostAllowlist:
        return cls(tuple(_split_port(pattern) for pattern in patterns))

    def allows(self, host: str, port: int) -> bool:
        host = _normal_host(host)
        for pattern, pattern_port in self.patterns:
            if (port not in WEB_PORTS) if pattern_port is None else (port != pattern_port):
                continue
            if pattern == "*":
                return True
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False


def _split_port(pattern: str) -> tuple[str, int | None]:
    pattern = pattern.strip()
    if pattern.startswith("["):  # [v6]:port or [v6]
        address, _, rest = pattern[1:].partition("]")
        return _normal_host(address), int(rest[1:]) if rest.startswith(":") else None
    name, colon, port = pattern.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        return _normal_host(name), int(port)
    return _normal_host(pattern), None


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses, plus the explicitly allowed networks."""

    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, networks: Iterable[str]) -> AddressPolicy:
        return cls(tuple(ipaddress.ip_network(network, strict=False) for network in networks))

    def allows(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope id names an interface
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = embedded_ipv4(ip)
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            elif embedded and not self._allowed_network(ip):
                # 6to4, NAT64, Teredo and IPv4-compatible addresses reach the IPv4 address inside them:
                # they are as allowed as that address, never more.
                return all(self._allows_ip(inner) for inner in embedded)
        return self._allows_ip(ip)

    def _allows_ip(self, ip: IPAddress) -> bool:
        if self._allowed_network(ip):
            return True
        return ip.is_global and not ip.is_multicast

    def _allowed_network(self, ip: IPAddress) -> bool:
        return any(ip.version == network.version and ip in network for network in self.allowed_networks)


#: IPv6 prefixes whose addresses carry an IPv4 address a gateway forwards to: NAT64's well-known prefix
#: (RFC 6052, the last 32 bits) and its local-use prefix (RFC 8215, any layout: refused as a whole).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
#: The deprecated IPv4-compatible form ``::a.b.c.d`` (RFC 4291), which some stacks still route as IPv4.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_UNSPECIFIED_V4 = ipaddress.IPv4Address("0.0.0.0")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to (mapped, 6to4, Teredo, NAT64, IPv4-compatible); the
    local-use NAT64 prefix, whose layout is the operator's, yields the unspecified address (refused)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    elif ip in _NAT64_LOCAL:
        found.append(_UNSPECIFIED_V4)
    elif ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: or ::1, which are themselves
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


class _Guard:
    """``_new_conn`` of urllib3's connection classes, resolving once and connecting only where allowed."""

    policy: ClassVar[AddressPolicy] = AddressPolicy()
    # Provided by urllib3's HTTPConnection, which every concrete class below also derives from.
    _dns_host: str
    host: str
    port: int
    timeout: Any
    source_address: tuple[str, int] | None
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        host = self._dns_host.strip("[]")
        try:
            found = socket.getaddrinfo(host, self.port, connection.allowed_gai_family(), socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise NameResolutionError(self.host, self, e) from e  # type: ignore[arg-type]
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        # One refused address refuses the name: a name that also points inside is not a file host.
        if not addresses or not all(self.policy.allows(address) for address in addresses):
            raise RefusedDestination(self.host)
        error: OSError | None = None
        for address in addresses:
            try:
                # An address literal: create_connection resolves nothing more.
                return connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as e:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from e
            except OSError as e:
                error = e
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")  # type: ignore[arg-type]


class GuardedHTTPConnection(WatchedConnectionMixin, _Guard, HTTPConnection):
    pass


class GuardedHTTPSConnection(WatchedConnectionMixin, _Guard, HTTPSConnection):
    pass


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections check and pin the addresses they connect to, and register
    with the thread's :class:`~workers.socket_watch.SocketWatch` (so a deadline can end them)."""

    def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
        self._policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        policy = self._policy
        http_conn = type("PolicyHTTPConnection", (GuardedHTTPConnection,), {"policy": policy})
        https_conn = type("PolicyHTTPSConnection", (GuardedHTTPSConnection,), {"policy": policy})
        use_connection_classes(self, http_conn, https_conn)


def guarded_session(policy: AddressPolicy, *, user_agent: str, pool_maxsize: int = 16) -> requests.Session:
    """A session for result downloads: guarded connections, no urllib3 retries, no environment proxies."""
    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(policy, pool_maxsize=pool_maxsize, max_retries=Retry(total=0, read=False, redirect=False))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    return session

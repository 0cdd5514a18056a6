"""Redis URLs: which forms are accepted, the Sentinels of a ``sentinel://`` list, and a URL safe to show."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")


def sentinel_nodes(url: str) -> list[tuple[str, int]] | None:
    """The (host, port) of every Sentinel of a ``sentinel://`` URL list; None for any other URL."""
    if not url.startswith("sentinel://"):
        return None
    nodes = []
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        nodes.append((parts.hostname or "localhost", parts.port or 26379))
    return nodes


def check_redis_url(value: str) -> str:
    """``value`` if it is a Redis URL redis-py can connect with, else ValueError saying what is wrong."""
    if value.startswith("sentinel://"):
        for part in value.split(";"):
            if not part.strip().startswith("sentinel://"):
                raise ValueError("a Sentinel list is sentinel://host:port;sentinel://host:port;...")
            _check_url(part.strip())
        return value
    return _check_url(value)


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in REDIS_SCHEMES:
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ValueError(f"must be a redis://, rediss://, unix:// or sentinel:// URL, not {shown}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path (unix:///path/to/redis.sock)")
        return value
    if not parts.hostname:
        raise ValueError("needs a host (redis://host:6379/0)")
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"the database (the path) must be a number, not {database!r}")
    return value


def redact_url(url: str) -> str:
    """The URL without user info, query string and fragment: safe to show or log (no password, no
    presigned signature). Every URL ImagineQ prints goes through here (a Sentinel list part by part)."""
    if url.startswith("sentinel://") and ";" in url:
        return ";".join(redact_url(part.strip()) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        return "<unparseable URL>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

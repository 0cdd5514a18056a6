"""What every settings model shares: field docstrings are their descriptions (the configuration reference
is generated from them, ``docs/reference/configuration.md``), and the small checks several use."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, SecretStr


class SettingsModel(BaseModel):
    """A part of the settings; a field's docstring is its description."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class FrozenSettingsModel(SettingsModel):
    """A part of the settings that is compared and hashed (an account, a principal)."""

    model_config = ConfigDict(use_attribute_docstrings=True, frozen=True)


def secret_not_blank(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


def check_networks(value: list[str]) -> list[str]:
    """Every entry a network in CIDR form (a bare address is its own /32 or /128)."""
    import ipaddress

    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{network!r} is not a network (CIDR, e.g. 127.0.0.0/8)") from None
    return value


def check_host_patterns(value: list[str]) -> list[str]:
    """Every entry a host name, ``*.domain`` pattern, ``*`` (any name) or ``name:port``."""
    for host in value:
        if host == "*" or host.startswith("*:"):
            host = "any" + host[1:]
        name = host.removeprefix("*.")
        name, colon, port = name.rpartition(":") if not name.endswith("]") else (name, "", "")
        name = name if colon else port
        if colon and not port.isdigit():
            raise ValueError(f"{host!r}: the port must be a number")
        if not name or "*" in name or "/" in name or "@" in name:
            raise ValueError(f"{host!r} is not a host name, *.domain pattern or name:port")
    return value

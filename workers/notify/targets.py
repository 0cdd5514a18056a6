"""Which endpoints an event goes to, whose trust each is sent under, and the secret each is signed with.

Two kinds of receiver, trusted differently:

- **the operator's**: a principal's ``webhooks`` endpoints (written into the settings by the operator),
  and the ``notify_url`` of a job enqueued without a principal (the Python API, the CLI, a batch) or by
  an admin: they may be in the networks of ``notify.allow_networks``, on any port;
- **a tenant's**: the ``notify_url`` a principal gave its own job. It may name only the principal's
  ``notify_hosts`` (any host on ports 80 and 443 by default), in public networks or the principal's
  ``notify_networks``, and it is signed with that principal's own secret (``notify_secret``, else one
  derived from ``notify.signing_secret`` and its name): a tenant that can verify its webhooks cannot
  sign one for another tenant's receiver.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from config.settings import PrincipalSettings, Settings, WebhookEndpoint
from core.errors import ValidationError
from core.events import Event
from core.jobs import Job
from workers.storage.destinations import WEB_PORTS, AddressPolicy, HostAllowlist

JOB_TARGET = "job"


@dataclass(frozen=True)
class Target:
    #: ``job`` (the job's own notify_url) or ``principal:<name>:<index>`` (an endpoint in the settings).
    ref: str
    url: str
    #: Whose ``notify_url`` it is: the principal that gave it (a tenant's receiver), else None (the
    #: operator's: an endpoint in the settings, or a job enqueued without a principal).
    tenant: str | None = None


def targets_for(event: Event, job: Job | None, settings: Settings) -> list[Target]:
    targets: list[Target] = []
    if event.job_id is not None:
        if job is not None and job.notify_url and notify_secret(job.owner, settings) is not None:
            targets.append(Target(JOB_TARGET, job.notify_url, tenant=tenant_of(job.owner, settings)))
        principals = [p for p in settings.principals() if p.name == event.owner] if event.owner else []
    elif (event.workflow_id is not None or event.type == "budget.warning") and event.owner:
        # a tenant's workflow or budget: its endpoints
        principals = [p for p in settings.principals() if p.name == event.owner]
    else:  # a batch, a workflow or budget of no principal, an account: the admins' endpoints
        principals = [p for p in settings.principals() if p.admin]
    for principal in principals:
        for index, endpoint in enumerate(principal.webhooks):
            if event.type in endpoint.events:
                targets.append(Target(f"principal:{principal.name}:{index}", endpoint.url))
    return targets


def tenant_of(owner: str | None, settings: Settings) -> str | None:
    """Whose trust a job's ``notify_url`` is sent under: its owner's, unless it has none or is an admin
    (an admin's receivers are the operator's)."""
    if owner is None:
        return None
    principal = settings.principal(owner)
    return None if principal is not None and principal.admin else owner


def secret_for(ref: str, url: str, settings: Settings, tenant: str | None = None) -> str | None:
    """The signing secret of the endpoint ``ref`` names, if it is still configured for ``url``;
    ``tenant``: the principal whose job's ``notify_url`` it is."""
    if ref == JOB_TARGET:
        return notify_secret(tenant, settings)
    endpoint = _endpoint(ref, settings)
    return endpoint.secret.get_secret_value() if endpoint is not None and endpoint.url == url else None


def notify_secret(owner: str | None, settings: Settings) -> str | None:
    """The secret the ``notify_url`` deliveries of ``owner``'s jobs are signed with: the deployment's
    ``notify.signing_secret`` for jobs without a principal; a principal's own ``notify_secret``, else
    one derived from ``notify.signing_secret`` and its name. None when there is none (no such job may
    set a ``notify_url``)."""
    master = settings.notify.signing_secret
    if owner is None:
        return master.get_secret_value() if master is not None else None
    principal = settings.principal(owner)
    if principal is not None and principal.notify_secret is not None:
        return principal.notify_secret.get_secret_value()
    if master is None:
        return None
    return derived_secret(master.get_secret_value(), owner)


def derived_secret(master: str, principal: str) -> str:
    """``whsec_`` + base64 of HMAC-SHA256(master, principal's name): distinct per principal, and no
    principal's secret tells anything of another's or of the master."""
    digest = hmac.new(master.encode(), f"imagineq-notify:{principal}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(digest).decode()


def tenant_policy(principal: PrincipalSettings | None) -> tuple[HostAllowlist | None, AddressPolicy]:
    """Where a tenant's ``notify_url`` may go: its hosts (None: any host, on ports 80 and 443) and networks."""
    if principal is None:
        return HostAllowlist.of([]), AddressPolicy()  # a principal no longer configured: nowhere
    hosts = HostAllowlist.of(principal.notify_hosts) if principal.notify_hosts else None
    return hosts, AddressPolicy.of(principal.notify_networks)


def tenant_host_allowed(url: str, principal: PrincipalSettings | None) -> bool:
    hosts, _ = tenant_policy(principal)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if hosts is None:
        return port in WEB_PORTS
    return hosts.allows(parts.hostname or "", port)


def check_tenant_notify_url(url: str, principal: PrincipalSettings) -> None:
    """ValidationError naming ``notify_url`` when the principal may not send its webhooks there."""
    if tenant_host_allowed(url, principal):
        return
    allowed = ", ".join(principal.notify_hosts) if principal.notify_hosts else "any host on ports 80 and 443"
    raise ValidationError("notify_url", f"must name one of principal {principal.name}'s notify_hosts ({allowed})")


def breaker_scope(url: str, tenant: str | None) -> str:
    """What an endpoint's breaker counts failures of: one receiver (scheme, host, port) as reached under
    one trust (a tenant's, or the operator's). Paths and query strings do not make new receivers, and one
    tenant's failures never hold another's deliveries."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return f"{tenant or '-'}|{scheme}://{(parts.hostname or '').lower()}:{port}"


def _endpoint(ref: str, settings: Settings) -> WebhookEndpoint | None:
    kind, _, rest = ref.partition(":")
    name, _, index = rest.rpartition(":")
    if kind != "principal" or not index.isdigit():
        return None
    for principal in settings.principals():
        if principal.name == name and int(index) < len(principal.webhooks):
            return principal.webhooks[int(index)]
    return None

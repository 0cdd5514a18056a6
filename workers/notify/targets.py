"""Which endpoints an event goes to, and the secret each is signed with."""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import Settings, WebhookEndpoint
from workers.events import Event
from workers.jobs import Job

JOB_TARGET = "job"


@dataclass(frozen=True)
class Target:
    #: ``job`` (the job's own notify_url) or ``principal:<name>:<index>`` (an endpoint in the settings).
    ref: str
    url: str


def targets_for(event: Event, job: Job | None, settings: Settings) -> list[Target]:
    targets: list[Target] = []
    if event.job_id is not None:
        if job is not None and job.notify_url and settings.notify.signing_secret is not None:
            targets.append(Target(JOB_TARGET, job.notify_url))
        principals = [p for p in settings.principals() if p.name == event.owner] if event.owner else []
    else:  # a batch: the admins' endpoints
        principals = [p for p in settings.principals() if p.admin]
    for principal in principals:
        for index, endpoint in enumerate(principal.webhooks):
            if event.type in endpoint.events:
                targets.append(Target(f"principal:{principal.name}:{index}", endpoint.url))
    return targets


def secret_for(ref: str, url: str, settings: Settings) -> str | None:
    """The signing secret of the endpoint ``ref`` names, if it is still configured for ``url``."""
    if ref == JOB_TARGET:
        secret = settings.notify.signing_secret
        return secret.get_secret_value() if secret is not None else None
    endpoint = _endpoint(ref, settings)
    return endpoint.secret.get_secret_value() if endpoint is not None and endpoint.url == url else None


def _endpoint(ref: str, settings: Settings) -> WebhookEndpoint | None:
    kind, _, rest = ref.partition(":")
    name, _, index = rest.rpartition(":")
    if kind != "principal" or not index.isdigit():
        return None
    for principal in settings.principals():
        if principal.name == name and int(index) < len(principal.webhooks):
            return principal.webhooks[int(index)]
    return None

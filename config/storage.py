"""Where results are stored (S3), and which result URLs a store may fetch."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from config.models import SettingsModel, check_host_patterns, check_networks

DEFAULT_KEY_TEMPLATE = "videos/{yyyy}/{mm}/{dd}/{job_id}.mp4"
KEY_TEMPLATE_FIELDS = {"yyyy", "mm", "dd", "job_id", "task_id", "account"}


class S3Settings(SettingsModel):
    bucket: str = Field(default="imagineq", min_length=3, max_length=63)
    """The bucket results and their JSON sidecars go to."""
    endpoint_url: str | None = None
    """An S3-compatible endpoint (MinIO, SeaweedFS, ...); unset: AWS S3."""
    region: str = "us-east-1"
    """The bucket's region."""
    access_key_id: SecretStr | None = None
    """Access key (secret); unset: boto3's default credential chain."""
    secret_access_key: SecretStr | None = None
    """Secret key (secret); unset: boto3's default credential chain."""
    key_template: str = DEFAULT_KEY_TEMPLATE
    """Object key of a result; fields ``yyyy``, ``mm``, ``dd``, ``job_id`` (required), ``task_id``, ``account``."""
    part_size_mb: int = Field(default=8, ge=5, le=512)
    """Multipart part size; also the upper bound of the store worker's buffer per transfer."""
    max_download_bytes: int = Field(default=2 * 1024**3, ge=1)
    """Downloads larger than this are refused (bytes)."""
    create_bucket: bool = False
    """Create the bucket if it does not exist (local S3 servers)."""

    @field_validator("key_template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        import string

        names = {name for _, name, _, _ in string.Formatter().parse(value) if name}
        unknown = names - KEY_TEMPLATE_FIELDS
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; allowed: {sorted(KEY_TEMPLATE_FIELDS)}")
        if "job_id" not in names:
            raise ValueError("must contain {job_id} so every job has its own object")
        return value


#: Where the upstream's result files live (its own domain and kie.ai's file hosts), besides the hosts of
#: the configured accounts' base URLs, which are always allowed.
DEFAULT_RESULT_HOSTS = ("*.apikley.ru", "*.kie.ai", "*.aiquickdraw.com", "*.redpandaai.co")


class DownloadSettings(SettingsModel):
    """Which result URLs a store may fetch, and how slow a transfer may be."""

    result_hosts: list[str] = Field(default_factory=lambda: list(DEFAULT_RESULT_HOSTS))
    """Hosts results may come from, for the URL and every redirect hop: exact names or ``*.domain`` (any name under
    it), on ports 80 and 443, or ``name:port``. The accounts' base URL hosts are added.
    """
    image_hosts: list[str] = Field(default_factory=lambda: ["*"])
    """Hosts an input image URL may name (the URL and every redirect hop), as ``result_hosts``; ``*`` is any host
    name on ports 80 and 443. Its addresses must be public all the same (``allow_networks``)."""
    allow_networks: list[str] = Field(default_factory=list)
    """Networks (CIDR) allowed although not public, e.g. ``["127.0.0.0/8"]`` for a local simulator. Loopback,
    private, link-local (cloud metadata), multicast and reserved addresses are refused else.
    """
    content_types: list[str] = Field(default_factory=lambda: ["video/*", "image/*"])
    """Media types a result must be sent with (``type/*`` for any subtype); a video model's results must be of
    the ``video/`` ones, an image model's of the ``image/`` ones."""
    min_bytes_per_s: int = Field(default=32 * 1024, ge=0)
    """A transfer slower than this over ``throughput_window_s`` is abandoned (and retried later)."""
    throughput_window_s: float = Field(default=30.0, gt=0)
    """The window ``min_bytes_per_s`` is measured over."""
    deadline_s: float = Field(default=900.0, gt=0)
    """No transfer of one result may take longer than this."""
    headers_deadline_s: float = Field(default=60.0, gt=0)
    """A result host must have answered with its status and headers this long after the request began (a host that
    drips its headers would otherwise hold a store worker until the whole deadline).
    """

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return check_networks(value)

    @field_validator("result_hosts", "image_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return check_host_patterns(value)

    @field_validator("content_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        for media_type in value:
            main, _, sub = media_type.partition("/")
            if not main or not sub or main == "*":
                raise ValueError(f"{media_type!r} is not a media type (type/subtype or type/*)")
        return [media_type.lower() for media_type in value]

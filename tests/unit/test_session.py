"""The upstream/download session reads the environment once per origin, with requests' own answers."""

from __future__ import annotations

import pytest
import requests

from workers.upstream.client import Session

URLS = ("http://example.com/api/v1/jobs/recordInfo?taskId=1", "http://127.0.0.1:9/f.mp4", "https://cdn.example/x")


@pytest.fixture(autouse=True)
def proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3129")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")


@pytest.mark.parametrize("url", URLS)
def test_settings_are_what_requests_would_use(url: str) -> None:
    session, plain = Session(), requests.Session()
    for _ in range(2):  # the second answer comes from the cache
        assert session.merge_environment_settings(url, {}, None, None, None) == (
            plain.merge_environment_settings(url, {}, None, None, None)
        )


def test_no_proxy_hosts_go_direct_and_answers_do_not_share_state() -> None:
    session = Session()
    direct = session.merge_environment_settings(URLS[1], {}, None, None, None)
    assert "http" not in direct["proxies"]
    first = session.merge_environment_settings(URLS[0], {}, None, None, None)
    first["proxies"]["http"] = "http://changed:1"
    assert session.merge_environment_settings(URLS[0], {}, None, None, None)["proxies"]["http"] == (
        "http://proxy.internal:3128"
    )

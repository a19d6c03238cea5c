"""A web page against the default loopback server: DNS rebinding (a foreign Host header) is
refused with 403, and a cross-site "simple" POST (text/plain, form, multipart, or no type with an
Origin) with 415, each in the API's error shape; loopback names in every spelling and configured
names pass, as do ordinary clients (JSON, curl's default form type without Origin)."""

from __future__ import annotations

import pytest

from minerva.server.browser_guards import content_type_problem, host_name, is_loopback_host
from minerva.server.config import ServerConfig
from tests.reliability.input_app import api_shaped, figure, serve
from tests.unit.test_server_fake_backend import FakeBackend

LOOPBACK = ["localhost", "LOCALHOST:8000", "127.0.0.1", "127.1", "127.0.0.1:80", "[::1]",
            "[::1]:8000", "api.localhost", "localhost.", "0x7f.1", "2130706433",
            "[::ffff:127.0.0.1]"]  # fmt: skip
FOREIGN = ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io",
           "10.0.0.1", "[2001:db8::1]", "8.8.8.8"]  # fmt: skip
BODY = b'{"model": "fake", "prompt": "hi", "stream": false}'


def _config(**kwargs) -> ServerConfig:
    return ServerConfig(served_model_name="fake", **kwargs)


def test_host_header_is_checked_when_bound_to_loopback():
    async def run(client):
        out = {}
        for host in LOOPBACK + FOREIGN:
            for path in ("/v1/models", "/api/tags"):
                out[host, path] = await client.get(path, headers={"host": host})
        return out

    answers = serve(FakeBackend(), run, _config())
    refused = {h for (h, p), r in answers.items() if r.status_code == 403 and api_shaped(p, r)}
    served = {h for (h, _), r in answers.items() if r.status_code == 200}
    figure("Host check", f"{len(refused)} of {len(FOREIGN)} foreign Host names refused (403), "
           f"{len(served)} of {len(LOOPBACK)} loopback spellings served")  # fmt: skip
    assert refused == set(FOREIGN) and served == set(LOOPBACK)
    body = answers["evil.example", "/v1/models"].json()["error"]
    assert body["code"] == "host_not_allowed" and "--allowed-hosts" in body["message"]


def test_configured_hosts_pass_and_a_public_bind_is_not_checked():
    async def run(client):
        return [
            (await client.get("/api/tags", headers={"host": h})).status_code
            for h in ("Models.Example:8000", "other.example")
        ]

    assert serve(FakeBackend(), run, _config(allowed_hosts=["models.example"])) == [200, 403]
    assert serve(FakeBackend(), run, _config(allowed_hosts=["*"])) == [200, 200]
    public = _config(host="0.0.0.0", api_key="k")  # reachable by name from the network
    key = {"authorization": "Bearer k"}

    async def run_public(client):
        return (await client.get("/api/tags", headers={"host": "other.example", **key})).status_code

    assert serve(FakeBackend(), run_public, public) == 200


CROSS_SITE = {  # what a page can send without a CORS preflight
    "text/plain": {"content-type": "text/plain;charset=UTF-8"},
    "form": {"content-type": "application/x-www-form-urlencoded", "origin": "http://evil.example"},
    "multipart": {"content-type": "multipart/form-data; boundary=x"},
    "no type (Blob body)": {"origin": "http://evil.example"},
}
ORDINARY = {
    "application/json": {"content-type": "application/json"},
    "json; charset": {"content-type": "Application/JSON; charset=utf-8"},
    "curl -d default": {"content-type": "application/x-www-form-urlencoded"},
    "no type": {},
}


def test_cross_site_simple_posts_get_415_and_clients_pass():
    async def run(client):
        out = {}
        for path in ("/api/generate", "/v1/completions"):
            for name, headers in {**CROSS_SITE, **ORDINARY}.items():
                out[name, path] = await client.post(path, content=BODY, headers=headers)
        return out

    answers = serve(FakeBackend(), run, _config())
    refused = {k for k, r in answers.items() if r.status_code == 415 and api_shaped(k[1], r)}
    served = {k for k, r in answers.items() if r.status_code == 200}
    figure("content type", f"{len(refused)} of {2 * len(CROSS_SITE)} cross-site simple POSTs "
           f"refused (415), {len(served)} of {2 * len(ORDINARY)} client POSTs served")  # fmt: skip
    assert {n for n, _ in refused} == set(CROSS_SITE) and len(refused) == 2 * len(CROSS_SITE)
    assert {n for n, _ in served} == set(ORDINARY) and len(served) == 2 * len(ORDINARY)


@pytest.mark.parametrize(
    ("header", "name"),
    [("LOCALHOST:8000", "localhost"), ("[::1]:1", "::1"), ("a.example.", "a.example"),
     ("[::1]", "::1"), ("h", "h")],
)  # fmt: skip
def test_host_name(header, name):
    assert host_name(header) == name


def test_loopback_names_and_content_types():
    assert all(is_loopback_host(h) for h in LOOPBACK)
    assert not any(is_loopback_host(h) for h in FOREIGN)
    assert content_type_problem("GET", "text/plain", "http://x") is None
    assert content_type_problem("POST", "application/vnd.api+json", "http://x") is None
    assert "text/plain" in content_type_problem("POST", "text/plain", None)

"""Metrics label blow-up: made-up HTTP methods and random paths (on the public /health and
everywhere else) must not mint new /metrics series: every label takes values from a fixed set."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from minerva.server.config import ServerConfig
from minerva.server.metrics import HTTP_METHODS
from tests.reliability.input_app import figure, serve
from tests.unit.test_server_fake_backend import FakeBackend

ATTACKS = 300


def _series(text: str) -> set[tuple]:
    out = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.add((sample.name, tuple(sorted(sample.labels.items()))))
    return out


def test_labels_stay_bounded_under_made_up_methods_and_paths():
    async def run(client):
        await client.get("/health")
        await client.get("/nope")
        await client.request("BREW", "/health")
        before = (await client.get("/metrics")).text
        statuses = set()
        for i in range(ATTACKS):
            statuses.add((await client.request(f"X{i}METHOD", "/health")).status_code)
            statuses.add((await client.get(f"/random/{i}/path")).status_code)
            statuses.add((await client.request(f"Y{i}", f"/v1/x{i}")).status_code)
        after = (await client.get("/metrics")).text
        return before, after, statuses

    before, after, statuses = serve(FakeBackend(), run, ServerConfig(served_model_name="fake"))
    new = _series(after) - _series(before)
    http = [s for s in _series(after) if s[0] == "minerva_http_requests_total"]
    methods = {dict(labels)["method"] for _, labels in http}
    routes = {dict(labels)["route"] for _, labels in http}
    figure("metrics labels", f"{3 * ATTACKS} requests with made-up methods and paths: "
           f"{len(http)} (method, route, status) series in all, {len(new)} new samples; /metrics "
           f"{len(before)} -> {len(after)} bytes")  # fmt: skip
    assert methods <= HTTP_METHODS | {"other"} and "other" in methods
    assert routes <= {"/health", "/metrics", "unmatched"}, routes
    assert len(http) <= 10, http  # (method, route, status) combinations; 900+ when unbounded
    assert statuses <= {200, 404, 405}

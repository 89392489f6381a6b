"""examples/serve/ray_app.py: two Ray Serve replicas answer real HTTP requests exactly like the session.

One local Ray instance (2 CPUs, no dashboard) per module; Serve and Ray are
shut down in the fixture's teardown, whatever the tests did.
"""

from __future__ import annotations

import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx  # the [test] extra installs [ray] and [serve]: missing is an error, not a skip
import numpy as np
import pytest
import ray
from ray import serve

from latexport.runtime.session import LatencyAdjustableSession

SERVE_DIR = Path(__file__).resolve().parents[1] / "examples" / "serve"
sys.path.insert(0, str(SERVE_DIR))

import ray_app  # noqa: E402

#: Ray start-up plus two replicas loading the model takes ~10 s here; the bound only stops a hang.
DEPLOY_TIMEOUT_S = 180
REQUEST_TIMEOUT_S = 60
CLIENTS = 4
REQUESTS = 40
RATIOS = (1.0, 0.5, 0.2)
TEXTS = (
    "a gripping, funny film",
    "the story was long and the ending was bad, but the music and the actors were very good and funny",
    "boring plot",
    "one of the best films of the year",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def deploy(app, timeout_s: float) -> None:
    """serve.run with a bound: it waits for the replicas with no timeout of its own."""
    failure = []

    def run() -> None:
        try:
            serve.run(app, name=ray_app.APP_NAME, route_prefix="/")
        except Exception as error:  # handed to the test thread below
            failure.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        pytest.fail(f"Ray Serve did not start the replicas within {timeout_s} s")
    if failure:
        raise failure[0]


@pytest.fixture(scope="module")
def server_url(bert_classifier) -> str:
    """Two replicas of the tiny classifier behind Ray's HTTP proxy on 127.0.0.1."""
    # address="local": a fresh instance even if `ray start` runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=ray_app.RUNTIME_ENV)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deploy(ray_app.build_app(bert_classifier, replicas=2, num_cpus=1), DEPLOY_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def payload(index: int) -> dict:
    texts = [TEXTS[(index + offset) % len(TEXTS)] for offset in range(1 + index % 3)]
    return {"texts": texts, "keep_ratio": RATIOS[index % len(RATIOS)]}


def send_all(url: str, indices: list[int]) -> list[tuple[int, httpx.Response]]:
    """One client: its own keep-alive connection, requests one after another."""
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        return [(index, client.post("/classify", json=payload(index))) for index in indices]


def test_health_names_the_replica(server_url, bert_classifier):
    response = httpx.get(f"{server_url}/health", timeout=REQUEST_TIMEOUT_S)
    assert response.status_code == 200, response.text
    assert response.json()["labels"] == LatencyAdjustableSession(bert_classifier).labels
    assert response.headers[ray_app.REPLICA_HEADER]


def test_concurrent_requests_match_the_session_and_spread_over_both_replicas(server_url, bert_classifier):
    with ThreadPoolExecutor(CLIENTS) as pool:
        batches = pool.map(send_all, [server_url] * CLIENTS, [list(range(c, REQUESTS, CLIENTS)) for c in range(CLIENTS)])
        answers = [answer for batch in batches for answer in batch]

    failures = [f"{index}: {response.status_code} {response.text}" for index, response in answers if response.status_code != 200]
    assert not failures, failures
    assert len(answers) == REQUESTS

    session = LatencyAdjustableSession(bert_classifier)
    for index, response in answers:
        request, body = payload(index), response.json()
        expected = session.predict(request["texts"], keep_ratio=request["keep_ratio"])
        assert body["labels"] == expected.labels, index
        np.testing.assert_allclose(body["scores"], expected.scores.max(axis=1), atol=1e-5, err_msg=str(index))
        assert body["keep_ratio"] == pytest.approx(request["keep_ratio"])

    replicas = {response.headers[ray_app.REPLICA_HEADER] for _, response in answers}
    assert len(replicas) == 2, f"every request went to {replicas}"


def test_bad_keep_ratio_is_a_422_with_the_reason(server_url):
    response = httpx.post(f"{server_url}/classify", json={"texts": ["a good film"], "keep_ratio": 1.5},
                          timeout=REQUEST_TIMEOUT_S)
    assert response.status_code == 422
    assert "keep_ratio must be in (0, 1]" in response.json()["detail"]


def test_app_builder_reads_serve_run_arguments(bert_classifier):
    """``serve run ray_app:app_builder key=value`` passes strings; unknown keys are refused."""
    app = ray_app.app_builder({"model_dir": str(bert_classifier), "replicas": "3", "num_cpus": "0.5"})
    assert isinstance(app, serve.Application)
    with pytest.raises(ValueError, match="replica"):
        ray_app.app_builder({"model_dir": str(bert_classifier), "replica": "3"})

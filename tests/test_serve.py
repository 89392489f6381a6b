"""examples/serve: the service object, then the FastAPI app live on loopback under a bounded load."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from latexport.runtime.errors import InvalidInputError
from latexport.runtime.session import LatencyAdjustableSession

SERVE_DIR = Path(__file__).resolve().parent.parent / "examples" / "serve"
sys.path.insert(0, str(SERVE_DIR))

from loadtest import default_payloads, run_load  # noqa: E402
from service import ClassificationService  # noqa: E402

TEXTS = ["the film was very good and the music was great", "a dull , slow story with a bad ending"]


@pytest.fixture(scope="module")
def calibrated(calibrated_classifier):
    return calibrated_classifier


def test_service_answers_like_the_runtime_and_counts(calibrated):
    service = ClassificationService(calibrated, intra_op_threads=1)
    session = LatencyAdjustableSession(calibrated)
    for ratio in (1.0, 0.3):
        answer = service.classify(TEXTS, keep_ratio=ratio)
        expected = session.predict(TEXTS, keep_ratio=ratio)
        assert answer["labels"] == expected.labels and answer["keep_ratio"] == ratio
        np.testing.assert_allclose(answer["scores"], expected.scores.max(axis=1), atol=1e-5)
    budgeted = service.classify(TEXTS, target_ms=10_000)
    assert budgeted["keep_ratio"] == 1.0 and budgeted["target_ms"] == 10_000 and "predicted_ms" in budgeted
    with pytest.raises(InvalidInputError):
        service.classify([], keep_ratio=0.5)
    with pytest.raises(InvalidInputError, match="at most"):
        service.classify(["x"] * 65)
    with pytest.raises(InvalidInputError, match="target_ms"):
        service.classify(TEXTS, target_ms=-1)
    metrics = service.metrics.snapshot()
    assert metrics["requests"] == 6 and metrics["succeeded"] == 3 and metrics["errors"]["invalid"] == 3
    assert metrics["texts"] == 6 and metrics["budget_requests"] == 1
    assert metrics["latency_ms"]["p50"] > 0


def test_requests_at_any_ratio_or_budget_share_one_call_and_get_their_own_answers(calibrated):
    service = ClassificationService(calibrated, intra_op_threads=1, max_concurrent_calls=0)  # no worker: we drive it
    session = LatencyAdjustableSession(calibrated)
    asked = [([TEXTS[0]], 1.0, None), (TEXTS, 0.1, None), (TEXTS[::-1], [0.3, 0.7], None), (TEXTS, None, 10_000.0)]
    for texts, ratio, budget in asked:
        service._waiting.append(service._validate(texts, ratio, budget, None, time.perf_counter()))
    batch = service._take_batch()
    assert len(batch) == len(asked) and not service._waiting
    service._answer(batch)
    for request, (texts, ratio, budget) in zip(batch, asked):
        assert request.error is None and request.call_texts == 7
        # The budget is generous, so its rows run at the largest ratio: 1.0.
        expected = session.predict(texts, keep_ratio=1.0 if budget else ratio)
        assert request.prediction.labels == expected.labels
        np.testing.assert_allclose(request.prediction.logits, expected.logits, atol=1e-5, rtol=0)
        assert request.prediction.keep_ratio == pytest.approx(1.0 if budget else ratio)


def test_a_budgeted_row_keeps_as_much_as_the_call_already_pays_for(calibrated):
    service = ClassificationService(calibrated, intra_op_threads=1, max_concurrent_calls=0)
    tight, slow = (service._validate(TEXTS, None, 0.001, None, time.perf_counter()),
                   service._validate(TEXTS, 0.7, None, None, time.perf_counter()))
    service._answer([tight])
    fastest = tight.prediction.keep_ratio
    assert fastest < 0.7  # an impossible budget alone runs at the fastest ratio
    tight = service._validate(TEXTS, None, 0.001, None, time.perf_counter())
    service._answer([tight, slow])  # beside a row at 0.7 the call lasts as long as 0.7 needs anyway
    assert tight.prediction.keep_ratio == pytest.approx(0.7) and slow.prediction.keep_ratio == pytest.approx(0.7)


def test_budgets_need_a_calibration(bert_classifier):
    service = ClassificationService(bert_classifier)
    assert service.health()["latency_budgets"] is False
    with pytest.raises(InvalidInputError, match="latexport calibrate"):
        service.classify(TEXTS, target_ms=50)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(calibrated, tmp_path_factory):
    """examples/serve/app.py in its own process, as a user starts it."""
    port = free_port()
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, str(SERVE_DIR / "app.py"), str(calibrated), "--port", str(port), "--threads", "1"],
            stdout=output, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /health within 90 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_live_endpoints(server, calibrated):
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["latency_budgets"] is True
    session = LatencyAdjustableSession(calibrated)
    answer = httpx.post(server + "/classify", json={"texts": TEXTS, "keep_ratio": 0.3}).json()
    expected = session.predict(TEXTS, keep_ratio=0.3)
    assert answer["labels"] == expected.labels
    np.testing.assert_allclose(answer["scores"], expected.scores.max(axis=1), atol=1e-5)
    single = httpx.post(server + "/classify", json={"texts": TEXTS[0]}).json()
    assert single["keep_ratio"] == session.default_keep_ratio and len(single["labels"]) == 1
    for body, message in [
        ({"texts": TEXTS, "keep_ratio": 1.5}, "keep_ratio"),
        ({"texts": TEXTS, "keep_ratio": 0.5, "target_ms": 10}, "not both"),
        ({"texts": [""]}, "empty"),
        ({"text": "typo in the field name"}, "Field required"),
        ({"texts": TEXTS, "target_ms": "soon"}, "number"),
    ]:
        response = httpx.post(server + "/classify", json=body)
        assert response.status_code == 422, body
        assert message in response.text, response.text
    metrics = httpx.get(server + "/metrics").json()
    assert metrics["errors"]["invalid"] >= 5 and metrics["succeeded"] >= 2
    exposition = httpx.get(server + "/metrics/prometheus")
    assert exposition.headers["content-type"].startswith("text/plain")
    lines = exposition.text.splitlines()
    assert f'latexport_requests_total{{outcome="succeeded"}} {float(metrics["succeeded"])}' in lines
    assert f'latexport_requests_total{{outcome="invalid"}} {float(metrics["errors"]["invalid"])}' in lines
    assert any(line.startswith("latexport_request_latency_seconds_bucket") for line in lines)


def test_bounded_load_has_no_errors(server, capsys):
    before = httpx.get(server + "/metrics").json()
    report = run_load(server, clients=8, requests=2000, payload=default_payloads())
    with capsys.disabled():
        print("\n[load test, tiny model, 8 clients] " + report.render().replace("\n", "\n    "))
    assert report.errors == 0, report.error_samples
    # The service's own timing is part of what the client waits for: a unit or clock slip in either breaks this.
    assert 0 < report.server_latency_ms["p50"] <= report.client_latency_ms["p50"]
    assert report.server_latency_ms["max"] <= report.client_latency_ms["max"]
    after = httpx.get(server + "/metrics").json()
    assert after["succeeded"] - before["succeeded"] == 2000
    assert after["latency_ms"]["p99"] > 0


def test_budgeted_load(server, capsys):
    generous = run_load(server, clients=8, requests=200, payload=default_payloads(batch=2, target_ms=5_000))
    assert generous.errors == 0 and generous.budget_requests == 200
    assert generous.budget_met == 200  # a tiny model answers far within 5 s, at keep_ratio 1
    impossible = run_load(server, clients=4, requests=40, payload=default_payloads(target_ms=0.001))
    assert impossible.errors == 0 and impossible.budget_met == 0  # answered anyway, at the fastest ratio
    with capsys.disabled():
        print("\n[budget 5 s] " + generous.render().replace("\n", "\n    "))

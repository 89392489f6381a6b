"""`latexport demo`, run on a tiny checkpoint in place of the real MiniLM."""

from __future__ import annotations

import pytest

import latexport.demo
from latexport.demo import DEMO_RATIOS, run_demo


@pytest.fixture
def tiny_source(checkpoints, monkeypatch):
    source = checkpoints[("bert", "feature-extraction")]
    fetched = []
    monkeypatch.setattr(latexport.demo, "fetch", lambda asset: fetched.append(asset) or source)
    return fetched


def test_demo_converts_once_then_reuses_the_file(tiny_source, tmp_path, capsys):
    rows = run_demo(tmp_path / "demo", batch=2, seq_len=48, repeats=2)
    assert len(tiny_source) == 1 and "converted and validated" in capsys.readouterr().out
    assert [row.keep_ratio for row in rows] == list(DEMO_RATIOS)
    full = rows[0]
    assert full.speedup == 1.0 and full.estimated == pytest.approx(1.0) and full.cosine_to_full == pytest.approx(1.0)
    estimates = [row.estimated for row in rows]
    assert estimates == sorted(estimates) and estimates[-1] > 2  # fewer word-vectors, never more work
    assert all(row.median_ms > 0 and -1 <= row.cosine_to_full <= 1 + 1e-6 for row in rows)
    assert rows[-1].cosine_to_full < 0.9999  # dropping changed the embedding

    run_demo(tmp_path / "demo", batch=2, seq_len=48, repeats=1)
    assert len(tiny_source) == 1 and "using the model already converted" in capsys.readouterr().out


def test_demo_converts_again_over_a_file_it_cannot_read(tiny_source, tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "model.onnx").write_bytes(b"not a model")
    run_demo(tmp_path / "demo", batch=1, seq_len=32, repeats=1)
    assert "cannot read" in capsys.readouterr().out and len(tiny_source) == 1

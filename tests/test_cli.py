"""The command line end to end: convert, run, inspect, bench, and its error handling."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from latexport.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_convert_run_inspect_bench(runner, checkpoints, tmp_path):
    out = tmp_path / "model"
    result = runner.invoke(main, ["convert", str(checkpoints[("electra", "text-classification")]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "FAILED" not in result.output

    result = runner.invoke(main, ["run", str(out), "--keep-ratio", "0.5", "a good film", "a bad film"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line]
    from latexport.runtime.session import LatencyAdjustableSession

    expected = LatencyAdjustableSession(out).predict(["a good film", "a bad film"], keep_ratio=0.5).labels
    assert [line.split("\t")[1] for line in lines] == expected
    assert (out / "model.onnx").is_file() and json.loads((out / "config.json").read_text())["model_type"] == "electra"

    result = runner.invoke(main, ["inspect", str(out), "--keep-ratio", "0.5", "--seq-len", "100"])
    assert result.exit_code == 0, result.output
    assert "electra / text-classification" in result.output
    # 4 layers, 100 tokens, ratio 0.5, power 1.5: 92, 79, 64, 50 kept
    assert "    4        64     50" in result.output
    result = runner.invoke(main, ["inspect", str(out), "--keep-ratio", "0.5,1", "--seq-len", "100"])
    assert result.exit_code == 0, result.output
    # The row at 1.0 keeps all 100 in every layer, so the batch is as wide as at 1.0: no estimated gain.
    assert "    4          50         100          100" in result.output
    assert "estimated speedup of the batch (follows its widest row in every layer): 1.00x" in result.output

    json_path, plot_path = tmp_path / "bench.json", tmp_path / "bench.png"
    result = runner.invoke(
        main, ["bench", str(out), "--seq-len", "64", "--batch", "2", "--keep-ratios", "1,0.5", "--repeats", "3",
               "--json", str(json_path), "--plot", str(plot_path), "--row-ratios", "1,0.5"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(json_path.read_text())
    assert [row["keep_ratio"] for row in data["rows"]] == [1.0, 0.5, 1.0]
    assert data["rows"][2]["row_ratios"] == [1.0, 0.5] and data["rows"][2]["estimated_speedup"] == 1.0
    assert all(row["median_ms"] > 0 for row in data["rows"])
    # peak memory, measured in a fresh process per variant: the whole process, weights included
    assert all(row["peak_mib"] > 10 and 0 <= row["working_mib"] < row["peak_mib"] for row in data["rows"])
    assert plot_path.stat().st_size > 1000


def test_bench_with_a_plain_baseline(runner, converted, tmp_path):
    result = runner.invoke(
        main, ["bench", str(converted[("distilbert", "text-classification")]), "--seq-len", "32", "--keep-ratios", "1",
               "--repeats", "2", "--baseline", "torch", "--no-memory", "--graphs", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert "plain (torch)" in result.output
    data = json.loads((tmp_path / "bench-distilbert-text-classification-b1-s32.json").read_text())
    assert [row["name"] for row in data["rows"]] == ["plain (torch)", "latexport 1"]
    assert (tmp_path / "bench-distilbert-text-classification-b1-s32.png").stat().st_size > 1000


def test_feature_extraction_run(runner, converted):
    result = runner.invoke(main, ["run", str(converted[("bert", "feature-extraction")]), "a good film"])
    assert result.exit_code == 0, result.output
    assert "(32 dims)" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "{model}", "--keep-ratio", "0", "text"], "keep_ratio must be in (0, 1]"),
        (["run", "{model}", "--keep-ratio", "nan", "text"], "keep_ratio must be finite"),
        (["run", "{model}", "--provider", "cuda", "text"], "provider 'cuda' is not available"),
        (["run", "{tmp}/nothing", "text"], "is not a directory"),
        (["inspect", "{model}", "--keep-ratio", "2"], "every keep ratio must be in (0, 1]"),
        (["inspect", "{model}", "--keep-ratio", "1,0.5", "--seq-len", "10,20,30"], "2 ratios for 3 lengths"),
        (["convert", "{tmp}/nothing", "-o", "{tmp}/out"], "no such checkpoint directory"),
        (["convert", "{ckpt}", "-o", "{model}"], "already exists; pass --overwrite"),
        (["bench", "{model}", "--keep-ratios", "0.5,7"], "every keep ratio must be in (0, 1]"),
    ],
)
def test_errors_are_one_clear_line(runner, bert_classifier, checkpoints, tmp_path, args, message):
    import onnxruntime

    if "cuda" in args and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    fill = {"model": str(bert_classifier), "tmp": str(tmp_path), "ckpt": str(checkpoints[("bert", "text-classification")])}
    result = runner.invoke(main, [a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_failed_validation_exits_nonzero_with_report(runner, checkpoints, tmp_path):
    result = runner.invoke(main, ["convert", str(checkpoints[("bert", "text-classification")]), "-o", str(tmp_path / "o"), "--atol", "1e-30"])
    assert result.exit_code == 2
    assert "failed validation" in result.output and "FAILED" in result.output
    assert not (tmp_path / "o").exists()


def test_entry_point_is_installed():
    result = subprocess.run([sys.executable, "-m", "latexport.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "latexport" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "{model}", "--seq-len", "4096"], "exceeds the model's maximum"),
        (["tune", "{model}", "--data", "{data}", "--max-drop", "-1"], "max_drop must be 0 or more"),
        (["evaluate", "{model}", "--data", "{tmp}/missing.jsonl"], "no such data file"),
        (["finetune", "{ckpt}", "-o", "{tmp}/ft", "--train", "{one_label}", "--validation", "{one_label}"], "only one label"),
        (["finetune", "{tmp}/nothing", "-o", "{tmp}/ft", "--train", "{data}", "--validation", "{data}"], "no such checkpoint"),
        (["run", "{model}", ""], "texts[0] is empty"),
        (["finetune", "{ckpt}", "-o", "{tmp}/ft", "--train", "{data}", "--validation", "{data}", "--learning-rate", "-1"],
         "learning_rate must be positive"),
        (["finetune", "{ckpt}", "-o", "{tmp}/ft", "--train", "{data}", "--validation", "{data}", "--power", "9"], "power must be in"),
        (["convert", "{ckpt}", "-o", "{tmp}/ft", "--power", "0"], "power must be in"),
        (["bench", "{model}", "--threads", "-3"], "threads"),
    ],
)
def test_more_bad_inputs_are_one_clear_line(runner, bert_classifier, checkpoints, tmp_path, args, message):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a good film", "label": "label_a"}\n{"text": "bad", "label": "label_b"}\n')
    one_label = tmp_path / "one.jsonl"
    one_label.write_text('{"text": "a good film", "label": "x"}\n')
    fill = {"model": str(bert_classifier), "tmp": str(tmp_path), "ckpt": str(checkpoints[("bert", "text-classification")]),
            "data": str(data), "one_label": str(one_label)}
    result = runner.invoke(main, [a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "ft").exists()


def test_bench_compares_files_side_by_side_on_mixed_lengths(runner, bert_classifier, tmp_path):
    import shutil

    from latexport.runtime.session import LatencyAdjustableSession
    from latexport.runtime.timing import make_feed

    twin = tmp_path / "twin"
    shutil.copytree(bert_classifier, twin)
    result = runner.invoke(
        main, ["bench", str(bert_classifier), "--compare", str(twin), "--seq-len", "40", "--batch", "4",
               "--keep-ratios", "1,0.3", "--repeats", "2", "--mixed-lengths", "--no-memory", "--graphs", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / f"bench-{bert_classifier.name}-b4-s40-mixed.json").read_text())
    assert [row["name"] for row in data["rows"]] == ["latexport 1", "latexport 0.3", "latexport (twin) 1", "latexport (twin) 0.3"]
    assert data["environment"]["mixed_lengths"] is True and data["environment"]["compared"] == [str(twin)]
    rows = {row["name"]: row for row in data["rows"]}
    # each file is compared with itself at 1.0; the estimate counts the padded width
    assert rows["latexport 1"]["speedup_vs_full"] == 1.0 and rows["latexport (twin) 1"]["speedup_vs_full"] == 1.0
    assert rows["latexport 0.3"]["estimated_speedup"] == rows["latexport (twin) 0.3"]["estimated_speedup"] > 1.5
    assert "latexport (twin) 0.3" in result.output

    metadata = LatencyAdjustableSession(bert_classifier).metadata
    feed = make_feed(metadata, 8, 40, mixed_lengths=True)
    lengths = feed["attention_mask"].sum(axis=1)
    assert lengths.min() >= 10 and lengths.max() <= 40 and len(set(lengths.tolist())) > 1
    for row, length in enumerate(lengths):
        assert (feed["input_ids"][row, length:] == metadata.pad_token_id).all()
    assert (make_feed(metadata, 8, 40, mixed_lengths=False)["attention_mask"] == 1).all()


def test_bench_says_why_an_optimum_baseline_is_skipped(runner, converted, tmp_path, monkeypatch):
    """Without optimum installed, `--baseline optimum` is skipped with the reason, and the rest runs."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name.startswith("optimum") else real_find_spec(name, *args))
    result = runner.invoke(main, ["bench", str(converted[("distilbert", "text-classification")]), "--seq-len", "16",
                                  "--keep-ratios", "1", "--repeats", "2", "--baseline", "optimum", "--no-memory",
                                  "--graphs", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "skipped plain (optimum): optimum is not installed" in result.output
    assert "latexport[optimum]" in result.output


def test_a_plain_export_that_torch_cannot_trace_is_a_clear_error(checkpoints, monkeypatch, tmp_path):
    """`bench --baseline torch` on a model torch.onnx cannot trace (a Qwen2 with sliding windows
    fails inside it with "unordered_map::at"): one CheckpointError that names the way out."""
    import torch

    from latexport.export import baseline
    from latexport.runtime.errors import CheckpointError

    def untraceable(*args, **kwargs):
        raise RuntimeError("unordered_map::at")

    monkeypatch.setattr(torch.onnx, "export", untraceable)
    monkeypatch.setattr(baseline, "cache_dir", lambda: tmp_path)
    with pytest.raises(CheckpointError, match=r"plain torch.onnx export .* failed \(unordered_map::at\).*without --baseline"):
        baseline.baseline_path(str(checkpoints[("bert", "text-classification")]), "text-classification", "torch")
    assert not any((tmp_path / "baselines").glob("*/model.onnx")), "a failed export must leave no file behind"

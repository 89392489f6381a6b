"""``tune`` for decoders: the perplexity measure against transformers, the choice by
interval, the record in the file, and clear errors for text and options it cannot use."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from latexport.cli import main
from latexport.runtime.errors import LatexportError
from latexport.runtime.generation import CausalGenerator
from latexport.training.evaluate_lm import (
    LanguageEvaluation,
    RiseRow,
    choose_ratio,
    evaluate_language_model,
    text_windows,
    tune_language_model,
)

WORDS = "the film was a long story of the movie and a good story of the film".split()


@pytest.fixture()
def generation_dir(decoder_converted, tmp_path):
    """A private copy: tune writes into model.onnx, and the shared fixture must stay as converted."""
    target = tmp_path / "gpt2-generation"
    shutil.copytree(decoder_converted[("gpt2", "text-generation")].out_dir, target)
    return target


def own_text(tmp_path, documents=3, words=120, seed=0):
    rng = np.random.default_rng(seed)
    path = tmp_path / "mine.jsonl"
    rows = [{"text": " ".join(rng.choice(WORDS, size=words))} for _ in range(documents)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_continuation_nll_at_one_equals_transformers(decoder_checkpoints, generation_dir, tmp_path):
    """The measure tune holds to a budget, checked against a reference that shares none of our
    code: the transformers model's own log-likelihood of the same tokens."""
    from transformers import AutoModelForCausalLM

    generator = CausalGenerator(generation_dir)
    window = text_windows(generator, [str(own_text(tmp_path))], "text", 40, 12, 1)[0]
    ours = generator.continuation_nll(window[:40], window[40:], 1.0)
    model = AutoModelForCausalLM.from_pretrained(decoder_checkpoints[("gpt2", "text-generation")]).eval()
    with torch.no_grad():
        logits = model(torch.tensor([window])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    reference = -float(sum(log_probs[position - 1, window[position]] for position in range(40, 52)))
    assert ours == pytest.approx(reference, rel=1e-4, abs=1e-3)
    assert generator.continuation_nll(window[:40], window[40:], 0.3) != pytest.approx(ours, abs=1e-6), (
        "pruning the prompt changed nothing: the measure would not see a bad ratio")


def test_windows_are_consecutive_spans_taken_round_robin(generation_dir, tmp_path):
    generator = CausalGenerator(generation_dir)
    text = own_text(tmp_path, documents=2, words=200)
    windows = text_windows(generator, [str(text)], "text", 20, 5, 3)
    assert len(windows) == 3 and all(len(w) == 25 for w in windows)
    first_doc = json.loads(text.read_text().splitlines()[0])["text"]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(generation_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    ids = tokenizer.encode(first_doc, add_special_tokens=False).ids
    assert windows[0] == ids[:25] and windows[2] == ids[25:50]  # document 1, document 2, then document 1 again


def test_choice_holds_the_interval_not_the_point_to_the_budget():
    def row(ratio, rise, high, speedup):
        return RiseRow(ratio, 10 * (1 + rise), rise, (rise - 0.01, high), 10 / speedup, speedup)

    evaluation = LanguageEvaluation("m", 40, 1024, 64, [
        row(1.0, 0.0, 0.0, 1.0), row(0.5, 0.02, 0.04, 1.4), row(0.3, 0.03, 0.07, 1.7), row(0.1, 0.09, 0.12, 2.2)])
    ratio, constraint, note = choose_ratio(evaluation, max_rise=0.05)
    assert ratio == 0.5 and "95% interval" in constraint
    assert "0.3" in note and "windows" in note
    assert choose_ratio(evaluation, max_rise=0.0)[0] == 1.0
    assert choose_ratio(evaluation, target_speedup=1.5)[0] == 0.3
    with pytest.raises(LatexportError, match="exactly one"):
        choose_ratio(evaluation)
    with pytest.raises(LatexportError, match="no keep_ratio reached"):
        choose_ratio(evaluation, target_speedup=5)
    with pytest.raises(LatexportError, match="0 or more"):
        choose_ratio(evaluation, max_rise=-0.1)


def test_tune_records_the_fastest_ratio_whose_interval_fits(generation_dir, tmp_path):
    text = str(own_text(tmp_path))
    result = tune_language_model(generation_dir, [text], max_rise=0.5, keep_ratios=(1.0, 0.6, 0.3, 0.1), powers=(1.0, 2.0),
                                 prompt_tokens=40, scored_tokens=12, max_windows=6, repeats=2, threads=1)
    props = {p.key: p.value for p in onnx.load(str(generation_dir / "model.onnx"), load_external_data=False).metadata_props}
    assert float(props["latexport.default_keep_ratio"]) == result.keep_ratio
    record = json.loads(props["latexport.tuning"])
    assert record["metric"] == "perplexity rise" and record["windows"] == 6 and set(record["powers"]) == {"1", "2"}
    assert json.loads(props["latexport.profile"])["power"] == result.power
    curve = record["curve"]
    chosen = next(point for point in curve if point["keep_ratio"] == result.keep_ratio)
    assert result.keep_ratio == 1.0 or chosen["rise_interval"][1] <= 0.5
    faster_fitting = [p for p in curve if p["speedup"] > chosen["speedup"] and p["rise_interval"][1] <= 0.5]
    assert not faster_fitting
    full = next(point for point in curve if point["keep_ratio"] == 1.0)
    assert full["rise"] == 0.0 and full["rise_interval"] == [0.0, 0.0]
    assert CausalGenerator(generation_dir).default_keep_ratio == result.keep_ratio


def test_text_and_options_it_cannot_use_get_clear_errors(generation_dir, decoder_converted, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("the film")
    with pytest.raises(LatexportError, match="no window of 52 tokens"):
        evaluate_language_model(generation_dir, [str(short)], prompt_tokens=40, scored_tokens=12)
    with pytest.raises(LatexportError, match="maximum of 128 positions"):
        evaluate_language_model(generation_dir, [str(own_text(tmp_path))], prompt_tokens=200, scored_tokens=12)
    with pytest.raises(LatexportError, match="keep ratios"):
        evaluate_language_model(generation_dir, [str(own_text(tmp_path))], keep_ratios=(1.0, 1.5), prompt_tokens=40)
    runner = CliRunner()
    result = runner.invoke(main, ["tune", str(generation_dir), "--data", str(short), "--max-drop", "0.01"])
    assert result.exit_code != 0 and "--max-rise" in result.output
    classifier = decoder_converted[("gpt2", "text-classification")].out_dir
    result = runner.invoke(main, ["tune", str(classifier), "--data", str(short), "--max-rise", "0.05"])
    assert result.exit_code != 0 and "--max-drop" in result.output
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.onnx").write_bytes(b"not a model")
    result = runner.invoke(main, ["tune", str(corrupt), "--data", str(short), "--max-rise", "0.05"])
    assert result.exit_code != 0 and "not a readable ONNX file" in result.output


def test_tune_command_on_a_generation_directory(generation_dir, tmp_path):
    result = CliRunner().invoke(main, [
        "tune", str(generation_dir), "--data", str(own_text(tmp_path)), "--prompt-tokens", "40", "--scored-tokens", "12",
        "--windows", "4", "--powers", "file", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "rise [95% interval]" in result.output and "chose power" in result.output
    assert CausalGenerator(generation_dir).default_keep_ratio is not None

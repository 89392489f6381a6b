"""Fine-tuning: the output checkpoint, labels, reproducibility, resume, failures."""

import json
from dataclasses import asdict, replace
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latexport.export.conversion import convert
from latexport.runtime.errors import OutputExistsError, SettingsError
from latexport.runtime.session import LatencyAdjustableSession
from latexport.training.data import DataError
from latexport.training.finetune import (
    FinetuneSettings,
    Trainer,
    TrainingError,
    finetune,
)

POSITIVE = "good great best love happy funny bright".split()
NEGATIVE = "bad awful worst hate sad boring dull".split()
FILLER = "the film movie story plot was it this that of and very quite".split()


def sentiment_rows(count, seed, label_style="names"):
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 10))]
        for _ in range(3):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if positive else NEGATIVE))
        label = {"names": "positive" if positive else "negative", "ints": int(positive), "floats": 0.9 * positive + 0.05}[label_style]
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return {
        "train": write(folder / "train.jsonl", sentiment_rows(96, seed=1)),
        "validation": write(folder / "validation.jsonl", sentiment_rows(32, seed=2)),
    }


SMALL = dict(epochs=4, batch_size=16, max_length=32, learning_rate=3e-3, save_every=3, sampled_ratios=1)


@pytest.fixture(scope="module")
def finetuned(checkpoints, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "lat"
    result = finetune(str(checkpoints[("bert", "feature-extraction")]), out, data["train"], data["validation"],
                      settings=FinetuneSettings(**SMALL), progress=False)
    return out, result


def test_output_is_an_ordinary_checkpoint_with_the_data_labels(finetuned):
    out, result = finetuned
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["architectures"] == ["BertForSequenceClassification"]
    record = json.loads((out / "latexport_finetune.json").read_text())
    assert record["completed"] and record["power"] == 1.5 and record["settings"]["recipe"] == "lat"
    assert not (out / "training_state.pt").exists()
    assert set(result.validation) >= {"1.0", "0.5", "0.1"}
    assert result.steps == 24


def test_training_learns_and_convert_takes_the_checkpoint_as_is(finetuned, tmp_path):
    out, result = finetuned
    assert result.validation["1.0"] >= 0.9 and result.validation["0.1"] >= 0.9, result.validation
    converted = convert(str(out), tmp_path / "onnx")
    assert converted.metadata.labels == ["negative", "positive"]
    assert converted.metadata.profile.power == 1.5
    session = LatencyAdjustableSession(tmp_path / "onnx")
    assert session.predict(["a great great film"], keep_ratio=0.5).labels[0] in {"negative", "positive"}


def test_integer_and_regression_labels(checkpoints, tmp_path):
    train = write(tmp_path / "t.jsonl", sentiment_rows(32, 3, "ints"))
    result = finetune(str(checkpoints[("distilbert", "text-classification")]), tmp_path / "ints", train, train,
                      settings=FinetuneSettings(**{**SMALL, "epochs": 1}), progress=False)
    assert json.loads((result.out_dir / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}
    train = write(tmp_path / "r.jsonl", sentiment_rows(32, 4, "floats"))
    result = finetune(str(checkpoints[("distilbert", "text-classification")]), tmp_path / "reg", train, train,
                      settings=FinetuneSettings(**{**SMALL, "epochs": 1}), progress=False)
    config = json.loads((result.out_dir / "config.json").read_text())
    assert len(config["id2label"]) == 1
    assert config["problem_type"] == "regression"


@pytest.mark.parametrize("length", ["epochs", "until-stopped"])
def test_interrupted_run_resumes_to_the_same_weights(checkpoints, data, tmp_path, monkeypatch, length):
    """Resuming restores the optimizer, schedule and random states, and, when training runs until the
    validation score stops improving, the validation history and the best weights so far."""
    base = str(checkpoints[("bert", "feature-extraction")])
    settings = FinetuneSettings(**SMALL) if length == "epochs" else FinetuneSettings(**{**SMALL, "epochs": None, "max_steps": 24})
    uninterrupted = finetune(base, tmp_path / "a", data["train"], data["validation"], settings=settings, progress=False)

    original_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def crash_after_seven(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", crash_after_seven)
    with pytest.raises(KeyboardInterrupt):
        finetune(base, tmp_path / "b", data["train"], data["validation"], settings=settings, progress=False)
    record = json.loads((tmp_path / "b" / "latexport_finetune.json").read_text())
    assert record["step"] == 6 and not record["completed"]  # saved every 3 steps
    monkeypatch.setattr(torch.optim.AdamW, "step", original_step)
    resumed = finetune(base, tmp_path / "b", data["train"], data["validation"], settings=settings, progress=False)
    assert resumed.steps == uninterrupted.steps
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


def test_completed_or_foreign_output_is_refused(finetuned, data, checkpoints, tmp_path):
    out, _ = finetuned
    with pytest.raises(OutputExistsError, match="completed run"):
        finetune(str(checkpoints[("bert", "feature-extraction")]), out, data["train"], data["validation"],
                 settings=FinetuneSettings(**SMALL), progress=False)
    (tmp_path / "mine").mkdir()
    with pytest.raises(OutputExistsError, match="not a latexport fine-tuning run"):
        finetune(str(checkpoints[("bert", "feature-extraction")]), tmp_path / "mine", data["train"], data["validation"],
                 settings=FinetuneSettings(**SMALL), progress=False)


def test_nan_loss_is_reported(checkpoints, data, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "training_loss", lambda self, batch: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingError, match="loss became nan at epoch 1, step 1"):
        finetune(str(checkpoints[("bert", "feature-extraction")]), tmp_path / "nan", data["train"], data["validation"],
                 settings=FinetuneSettings(**SMALL), progress=False)


def test_unknown_validation_label_names_its_line(checkpoints, data, tmp_path):
    rows = sentiment_rows(5, 9) + [{"text": "a film", "label": "neutral"}]
    validation = write(tmp_path / "v.jsonl", rows)
    with pytest.raises(DataError, match=r"v.jsonl:6: unknown label 'neutral'"):
        finetune(str(checkpoints[("bert", "feature-extraction")]), tmp_path / "o", data["train"], validation,
                 settings=FinetuneSettings(**SMALL), progress=False)
    assert not (tmp_path / "o").exists()


def test_power_follows_text_length_unless_given():
    from latexport.training.finetune import auto_power

    assert auto_power([20, 30, 40]) == 1.5
    assert auto_power([250, 256, 200]) == 1.0
    assert FinetuneSettings(power=2.0).resolved([300]).power == 2.0
    assert FinetuneSettings().resolved([300]).power == 1.0


def test_lat_recipe_samples_the_smallest_ratio_and_log_uniform_others():
    settings = FinetuneSettings(sampled_ratios=200, min_keep_ratio=0.05)

    class Probe(Trainer):
        def __init__(self):
            self.settings = settings
            self.ratio_generator = torch.Generator().manual_seed(0)

    ratios = Probe().sample_ratios()
    assert ratios[0] == 0.05 and all(0.05 <= r <= 1.0 for r in ratios)
    logs = np.log(ratios[1:])
    assert abs(np.mean(logs) - np.log(0.05) / 2) < 0.25  # log-uniform: mean of log is halfway


@pytest.mark.parametrize("family", ["t5", "gpt2", "mpnet", "albert", "deberta-v2"])
def test_other_families_fine_tune_and_convert(tmp_path, data, family):
    """The family loop trains T5ForSequenceClassification (encoder pruned, decoder read at the
    last </s>), GPT2ForSequenceClassification (causal ACC, last-token head), and the classifiers
    of base-model checkpoints as all-mpnet-base-v2 (relative position bias), albert-base-v2
    (one shared layer) and deberta-v3-base (disentangled attention) are published."""
    from tiny import make_checkpoint, make_decoder_checkpoint, make_t5_checkpoint

    if family == "t5":
        checkpoint, architecture = make_t5_checkpoint(tmp_path / family, flan=True, task="feature-extraction"), "T5ForSequenceClassification"
    elif family == "gpt2":
        checkpoint, architecture = make_decoder_checkpoint(tmp_path / family, "gpt2"), "GPT2ForSequenceClassification"
    else:
        architecture = {
            "mpnet": "MPNetForSequenceClassification", "albert": "AlbertForSequenceClassification",
            "deberta-v2": "DebertaV2ForSequenceClassification",
        }[family]
        checkpoint = make_checkpoint(tmp_path / family, family, task="feature-extraction")
    out = tmp_path / "lat"
    result = finetune(str(checkpoint), out, data["train"], data["validation"],
                      settings=FinetuneSettings(**{**SMALL, "epochs": 2}), progress=False)
    assert json.loads((out / "config.json").read_text())["architectures"] == [architecture]
    assert result.steps == 12 and set(result.validation) >= {"1.0", "0.1"}
    converted = convert(str(out), tmp_path / "onnx")
    assert converted.report.passed and converted.metadata.task == "text-classification"
    assert converted.metadata.labels == ["negative", "positive"]


@pytest.mark.parametrize("recipe", ["plain", "lat"])
def test_the_plain_recipe_never_trains_with_dropping(checkpoints, tmp_path, monkeypatch, recipe):
    """`finetune --recipe plain` (the ablation baseline) runs every forward at 1.0; `lat` adds pruned ones."""
    from latexport.export.model import LatencyAdjustableModel

    ratios = []
    original = LatencyAdjustableModel.forward
    smallest = FinetuneSettings().min_keep_ratio

    def recording(self, input_ids, attention_mask, token_type_ids=None, keep_ratio=1.0, *args, **kwargs):
        if torch.is_grad_enabled():  # a training forward; validation runs under no_grad
            ratios.append(float(keep_ratio))
        return original(self, input_ids, attention_mask, token_type_ids, keep_ratio, *args, **kwargs)

    monkeypatch.setattr(LatencyAdjustableModel, "forward", recording)
    train = write(tmp_path / "t.jsonl", sentiment_rows(32, 5))
    result = finetune(str(checkpoints[("bert", "feature-extraction")]), tmp_path / recipe, train, train,
                      settings=FinetuneSettings(**{**SMALL, "epochs": 1, "recipe": recipe}), progress=False)
    record = json.loads((result.out_dir / "latexport_finetune.json").read_text())
    assert record["settings"]["recipe"] == recipe
    assert len(ratios) >= result.steps
    if recipe == "plain":
        assert set(ratios) == {1.0} and len(ratios) == result.steps
    else:
        # per step: the full pass, the smallest ratio, and one sampled ratio (SMALL)
        assert len(ratios) == 3 * result.steps and ratios.count(smallest) == result.steps


def test_the_step_budget_gives_small_data_more_epochs():
    from latexport.training.finetune import MAX_EPOCHS, MIN_EPOCHS, step_budget

    assert step_budget(1000, 32) == MAX_EPOCHS * 32
    assert step_budget(2000, 32) == 15 * 63
    assert step_budget(10_000, 32) == MIN_EPOCHS * 313
    assert step_budget(100_000, 32) == MIN_EPOCHS * 3125


def scripted_scores(monkeypatch, scores):
    """Make the validation score follow ``scores``, and remember the weights each evaluation saw."""
    seen = []

    def score(self):
        seen.append({name: tensor.clone() for name, tensor in self.model.state_dict().items()})
        return scores[len(seen) - 1]

    monkeypatch.setattr(Trainer, "validation_score", score)
    return seen


def test_training_stops_when_the_score_stops_improving_and_keeps_the_best(checkpoints, data, tmp_path, monkeypatch):
    seen = scripted_scores(monkeypatch, [0.5, 0.9, 0.7, 0.8, 0.6, 0.99, 0.99])
    settings = FinetuneSettings(**{**SMALL, "epochs": None, "max_steps": 60, "patience": 3})
    result = finetune(str(checkpoints[("bert", "feature-extraction")]), tmp_path / "o", data["train"], data["validation"],
                      settings=settings, progress=False)
    # 6 steps an epoch, one evaluation an epoch: the best (0.9) at step 12, then three without a new best
    assert result.steps == 30 and len(seen) == 5
    record = json.loads((tmp_path / "o" / "latexport_finetune.json").read_text())
    assert record["completed"] and record["stopping"] == result.stopping
    assert result.stopping["best_step"] == 12 and result.stopping["kept"] == "best" and not result.still_rising
    assert "stopped improving" in result.stopping["reason"]
    assert [entry["score"] for entry in result.stopping["history"]] == [0.5, 0.9, 0.7, 0.8, 0.6]
    saved = load_file(str(tmp_path / "o" / "model.safetensors"))
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, seen[1][name], atol=0, rtol=0)
    assert any(not torch.equal(saved[name], seen[-1][name]) for name in saved)  # not the last weights


@pytest.mark.parametrize("fixed_epochs", [None, 3])
def test_a_run_that_ends_while_the_score_rises_says_so(checkpoints, data, tmp_path, monkeypatch, fixed_epochs):
    scripted_scores(monkeypatch, [0.1 * step for step in range(1, 10)])
    settings = FinetuneSettings(**{**SMALL, "epochs": fixed_epochs, "max_steps": 18})
    result = finetune(str(checkpoints[("bert", "feature-extraction")]), tmp_path / "o", data["train"], data["validation"],
                      settings=settings, progress=False)
    assert result.steps == 18 and result.still_rising and result.stopping["best_step"] == 18
    assert "still rising" in result.stopping["reason"]
    record = json.loads((tmp_path / "o" / "latexport_finetune.json").read_text())
    assert record["stopping"]["still_rising"]


def test_the_finetune_command_reports_why_it_stopped(checkpoints, data, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from latexport.cli import main

    scripted_scores(monkeypatch, [0.1 * step for step in range(1, 10)])
    arguments = ["finetune", str(checkpoints[("bert", "feature-extraction")]), "-o", str(tmp_path / "o"),
                 "--train", data["train"], "--validation", data["validation"], "--max-steps", "12",
                 "--batch-size", "16", "--max-length", "32"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "stopped: the step budget of 12 steps ran out" in result.output
    assert "still rising" in result.output and "--max-steps 24" in result.output


def test_a_power_range_gives_each_pruned_pass_its_own_profile(checkpoints, tmp_path, monkeypatch):
    """`power_range`: pruned passes drop by powers drawn from the range; the full pass, validation and
    the recorded profile keep the run's own power."""
    from latexport.export.model import LatencyAdjustableModel

    seen = []
    original = LatencyAdjustableModel.forward

    def recording(self, input_ids, attention_mask, token_type_ids=None, keep_ratio=1.0, *args, **kwargs):
        seen.append((torch.is_grad_enabled(), float(keep_ratio), self.profile.power))
        return original(self, input_ids, attention_mask, token_type_ids, keep_ratio, *args, **kwargs)

    monkeypatch.setattr(LatencyAdjustableModel, "forward", recording)
    train = write(tmp_path / "t.jsonl", sentiment_rows(32, 5))
    settings = FinetuneSettings(**{**SMALL, "epochs": 1, "power": 1.5, "power_range": (2.0, 3.0)})
    result = finetune(str(checkpoints[("bert", "feature-extraction")]), tmp_path / "o", train, train,
                      settings=settings, progress=False)
    pruned = [power for training, ratio, power in seen if training and ratio < 1.0]
    others = {power for training, ratio, power in seen if not (training and ratio < 1.0)}
    assert len(pruned) == 2 * result.steps and all(2.0 <= power <= 3.0 for power in pruned)
    assert len(set(pruned)) == len(pruned) and others == {1.5}
    assert json.loads((result.out_dir / "latexport_finetune.json").read_text())["power"] == 1.5


def test_settings_added_later_leave_older_fingerprints_alone():
    """A run recorded before power_range existed must still be recognised (and resumed), not retrained."""
    import hashlib

    settings = FinetuneSettings(power=1.5)
    before = {k: v for k, v in asdict(settings).items() if k not in ("save_every", "power_range", "teacher")}
    assert settings.fingerprint() == hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    assert replace(settings, power_range=(1.5, 3.0)).fingerprint() != settings.fingerprint()
    with pytest.raises(SettingsError, match="power_range"):
        FinetuneSettings(power_range=(3.0, 1.5))


@pytest.fixture(scope="module")
def plain_teacher(checkpoints, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "plain"
    finetune(str(checkpoints[("bert", "feature-extraction")]), out, data["train"], data["validation"],
             settings=FinetuneSettings(**{**SMALL, "recipe": "plain"}), progress=False)
    return out


def test_a_teacher_is_the_starting_point_and_every_pass_distils_from_its_outputs(plain_teacher, data, tmp_path, monkeypatch):
    """With ``teacher``, the run starts from the teacher's weights, and the distillation target of each
    training step is the frozen teacher's output for those rows (transformers' own forward, computed
    here independently), not the student's full pass."""
    from transformers import AutoModelForSequenceClassification

    from latexport.training.data import read_examples

    targets = []
    original = Trainer.distill_loss

    def recording(self, student, teacher):
        targets.append(teacher.detach().clone())
        return original(self, student, teacher)

    monkeypatch.setattr(Trainer, "distill_loss", recording)
    batches = []
    original_batch = Trainer.training_loss

    def remember(self, batch):
        batches.append(batch)
        return original_batch(self, batch)

    monkeypatch.setattr(Trainer, "training_loss", remember)
    settings = FinetuneSettings(**{**SMALL, "epochs": 1, "teacher": str(plain_teacher)})
    trainer = Trainer(str(plain_teacher), read_examples(data["train"]), read_examples(data["validation"]), tmp_path / "o", settings)
    teacher_weights = load_file(str(plain_teacher / "model.safetensors"))
    for name, tensor in trainer.model.state_dict().items():
        if name in teacher_weights:
            torch.testing.assert_close(tensor, teacher_weights[name], atol=0, rtol=0)
    trainer.run(progress=False)

    reference = AutoModelForSequenceClassification.from_pretrained(str(plain_teacher), attn_implementation="eager").eval()
    assert len(batches) == 6 and len(targets) == 6 * 3  # the full pass and two pruned passes per step
    for step, batch in enumerate(batches):
        with torch.no_grad():
            expected = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 token_type_ids=batch.token_type_ids).logits
        for target in targets[3 * step: 3 * step + 3]:
            torch.testing.assert_close(target, expected, atol=1e-4, rtol=1e-4)
    record = json.loads((tmp_path / "o" / "latexport_finetune.json").read_text())
    assert record["settings"]["teacher"] == str(plain_teacher)


def test_a_teacher_for_other_labels_is_refused(plain_teacher, tmp_path):
    train = write(tmp_path / "t.jsonl", [{"text": f"row {i}", "label": ["a", "b", "c"][i % 3]} for i in range(12)])
    with pytest.raises(SettingsError, match="teacher .* was not fine-tuned for this data"):
        finetune(str(plain_teacher), tmp_path / "o", train, train,
                 settings=FinetuneSettings(**{**SMALL, "teacher": str(plain_teacher)}), progress=False)
    assert not (tmp_path / "o").exists()


def test_a_plain_teacher_is_trained_first_beside_the_output_and_reused(checkpoints, data, tmp_path, monkeypatch):
    """``teacher="plain"``: a plain run (the same settings, recipe plain) lands in ``OUT-plain-teacher``,
    and the LAT run distils from it; running again reuses both, and ``overwrite`` retrains both."""
    from latexport.training.finetune import teacher_directory

    runs = []
    original = Trainer.run

    def recording(self, progress=True):
        runs.append((self.out_dir.name, self.settings.recipe, self.settings.teacher))
        return original(self, progress)

    monkeypatch.setattr(Trainer, "run", recording)
    out = tmp_path / "lat"
    settings = FinetuneSettings(**{**SMALL, "epochs": 1, "teacher": "plain"})
    source = str(checkpoints[("bert", "feature-extraction")])
    result = finetune(source, out, data["train"], data["validation"], settings=settings, progress=False)
    teacher = teacher_directory(out)
    assert teacher == tmp_path / "lat-plain-teacher"
    assert runs == [("lat-plain-teacher", "plain", None), ("lat", "lat", str(teacher))]
    plain_record = json.loads((teacher / "latexport_finetune.json").read_text())
    assert plain_record["completed"] and plain_record["settings"]["recipe"] == "plain"
    assert plain_record["settings"]["seed"] == settings.seed and plain_record["settings"]["max_length"] == 32
    assert json.loads((out / "latexport_finetune.json").read_text())["settings"]["teacher"] == str(teacher)
    assert result.steps == 6

    with pytest.raises(OutputExistsError):  # the LAT run is complete; the teacher alone is not retrained
        finetune(source, out, data["train"], data["validation"], settings=settings, progress=False)
    assert len(runs) == 2
    finetune(source, out, data["train"], data["validation"], settings=settings, progress=False, overwrite=True)
    assert len(runs) == 4


def test_the_finetune_command_takes_a_teacher(checkpoints, data, tmp_path):
    from click.testing import CliRunner

    from latexport.cli import main

    arguments = ["finetune", str(checkpoints[("bert", "feature-extraction")]), "-o", str(tmp_path / "o"),
                 "--train", data["train"], "--validation", data["validation"], "--epochs", "1",
                 "--batch-size", "16", "--max-length", "32", "--teacher", "plain"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "plain teacher" in result.output and str(tmp_path / "o-plain-teacher") in result.output
    record = json.loads((tmp_path / "o" / "latexport_finetune.json").read_text())
    assert record["settings"]["teacher"] == str(tmp_path / "o-plain-teacher")

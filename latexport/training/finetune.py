"""``latexport finetune``: train one model that is good at every keep_ratio.

Recipe ("lat", the default), per step, with ACC elimination active:

1. the full model (keep_ratio 1) learns from the labels;
2. the smallest ratio of the range (``min_keep_ratio``, 0.05) and
   ``sampled_ratios`` (2) ratios drawn log-uniformly from [min_keep_ratio, 1)
   learn from the labels and from the full pass's predictions (in-place
   distillation, as in the sandwich rule of the Length-Adaptive Transformer).

One model then serves the whole keep_ratio range, which is what lets the
speed be chosen afterwards without training ("offline tuning").  The "plain"
recipe (step 1 only) is the ablation baseline.

How long to train: unless ``epochs`` is given, training runs until the
validation score stops improving (``patience`` evaluations without a new best),
within a step budget scaled to the data (``step_budget``: many epochs for a
small set, few for a large one), and the best evaluated weights are kept.  A
fixed epoch count does not fit small data with many classes: it stops while the
model is still learning.  Either way the run records its validation history,
and says so when it ended while the score was still rising.

Checkpoints are ordinary Hugging Face directories, written atomically every
``save_every`` steps and at each epoch's end, with the optimizer, scheduler
and random states (and the best weights so far) beside the weights until
training completes; running the same command again resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from latexport.export.checkpoint import load_config, load_tokenizer
from latexport.export.families import TASK_CLASSIFICATION, family_for
from latexport.export.model import LatencyAdjustableModel
from latexport.runtime.atomic import atomic_directory
from latexport.runtime.errors import LatexportError, OutputExistsError, SettingsError
from latexport.runtime.profile import EliminationProfile
from latexport.training.data import (
    Columns,
    DataError,
    Examples,
    decide_problem,
    encode_labels,
    label_names,
    read_examples,
    regression_targets,
)

log = logging.getLogger(__name__)

SETTINGS_FILE = "latexport_finetune.json"
STATE_FILE = "training_state.pt"
RECIPES = ("lat", "plain")
TEACHER_PLAIN = "plain"


class TrainingError(LatexportError):
    """Training cannot continue (a NaN loss, a resume that does not match)."""


@dataclass
class FinetuneSettings:
    epochs: Optional[int] = None  # None: until the validation score stops improving, within max_steps
    max_steps: Optional[int] = None  # None: ``step_budget`` for the data's size
    patience: int = 3  # evaluations without a new best before stopping (when epochs is None)
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    seed: int = 42
    recipe: str = "lat"
    sampled_ratios: int = 2
    min_keep_ratio: float = 0.05
    distill_weight: float = 0.5
    temperature: float = 2.0
    power: Optional[float] = None  # None: chosen from the training texts' length (``auto_power``)
    # Each pruned pass draws its profile power uniformly from this range (None: always ``power``).
    power_range: Optional[tuple[float, float]] = None
    # What the pruned passes distil from: None, the model's own full pass; "plain", a plain run trained
    # first (``teacher_directory``); or the path of a fine-tuned classifier for the same labels.  With a
    # teacher, training starts from its weights and distils every pass from its frozen outputs.
    teacher: Optional[str] = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    save_every: int = 200
    problem: str = "auto"

    def __post_init__(self):
        checks = [
            (self.recipe in RECIPES, f"recipe must be one of {RECIPES}, got {self.recipe!r}"),
            (0.0 < self.min_keep_ratio <= 1.0, f"min_keep_ratio must be in (0, 1], got {self.min_keep_ratio}"),
            (self.learning_rate > 0 and math.isfinite(self.learning_rate), f"learning_rate must be positive, got {self.learning_rate}"),
            (self.epochs is None or self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be at least 1, got {self.max_steps}"),
            (self.batch_size >= 1 and self.patience >= 1, "batch_size and patience must be at least 1"),
            (self.max_length >= 8, f"max_length must be at least 8, got {self.max_length}"),
            (self.sampled_ratios >= 0 and self.save_every >= 1, "sampled_ratios must be >= 0 and save_every >= 1"),
            (self.power is None or 0.25 <= self.power <= 4.0, f"power must be in [0.25, 4], got {self.power}"),
            (self.power_range is None or (len(self.power_range) == 2 and 0.25 <= self.power_range[0] <= self.power_range[1] <= 4.0),
             f"power_range must be (low, high) within [0.25, 4], got {self.power_range}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)

    def resolved(self, train_lengths: list[int]) -> "FinetuneSettings":
        """These settings with ``power`` fixed (``auto_power`` when it was left out)."""
        if self.power is not None:
            return self
        return replace(self, power=auto_power(train_lengths))

    def fingerprint(self) -> str:
        # A setting added later counts only when set, so runs from before it still resume.
        fields = {k: v for k, v in asdict(self).items() if k != "save_every" and not (k in ADDED_LATER and v is None)}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


ADDED_LATER = ("power_range", "teacher")
SHORT_TEXT_POWER, LONG_TEXT_POWER, LONG_TEXT_TOKENS = 1.5, 1.0, 128

# The step budget: about BUDGET_EXAMPLES examples seen, and between MIN_EPOCHS and MAX_EPOCHS passes.
BUDGET_EXAMPLES, MIN_EPOCHS, MAX_EPOCHS = 30_000, 3, 20
# Evaluate once an epoch, but at least this often on large sets, so that stopping can act within an epoch.
MOST_STEPS_BETWEEN_EVALUATIONS = 250
# What "the validation score" is for each recipe: LAT is scored over the range it serves.
MONITORED_RATIOS = {"lat": (1.0, 0.5, 0.25, 0.1), "plain": (1.0,)}


def step_budget(examples: int, batch_size: int) -> int:
    """The most steps a run with no fixed epoch count may take.

    Small sets need many passes (1,000 examples: 20 epochs) and large ones few
    (10,000: 3); early stopping usually ends the run well before the budget.
    """
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(BUDGET_EXAMPLES / max(examples, 1))))
    return epochs * math.ceil(examples / batch_size)


def auto_power(token_lengths: list[int]) -> float:
    """The profile shape for this data: 1.5 for short texts, 1.0 for long ones.

    Measured with MiniLM: on sentence-length reviews (27 tokens) power 1.5 keeps
    accuracy within a point at 1.55x where power 1 loses 2.6 points; on 256-token
    passages, LAT fine-tuned, power 1 keeps 94.4% at a measured 2.68x where power
    1.5 keeps 94.2% only up to 2.46x.  Short texts need every word until the
    upper layers; long ones are redundant early.  The split is at a median of
    128 tokens; between the two measured regimes it is a judgement, not a fit.
    """
    median = float(np.median(token_lengths)) if token_lengths else 0.0
    return LONG_TEXT_POWER if median >= LONG_TEXT_TOKENS else SHORT_TEXT_POWER


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: Optional[torch.Tensor]
    targets: torch.Tensor
    indices: Optional[np.ndarray] = None  # the rows' places in the data set (to look up the teacher's outputs)


@dataclass
class EncodedData:
    ids: list[list[int]]
    type_ids: list[list[int]]
    targets: list

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices, pad_id: int, with_types: bool, regression: bool) -> Batch:
        width = max(len(self.ids[i]) for i in indices)
        ids = torch.full((len(indices), width), pad_id, dtype=torch.int64)
        mask = torch.zeros((len(indices), width), dtype=torch.int64)
        types = torch.zeros((len(indices), width), dtype=torch.int64)
        for row, i in enumerate(indices):
            length = len(self.ids[i])
            ids[row, :length] = torch.tensor(self.ids[i])
            mask[row, :length] = 1
            types[row, :length] = torch.tensor(self.type_ids[i])
        dtype = torch.float32 if regression else torch.int64
        targets = torch.tensor([self.targets[i] for i in indices], dtype=dtype)
        return Batch(ids, mask, types if with_types else None, targets, np.asarray(indices))


@dataclass
class FinetuneResult:
    out_dir: Path
    steps: int
    seconds: float
    validation: dict = field(default_factory=dict)
    stopping: dict = field(default_factory=dict)  # why training ended, the best step and the validation history

    @property
    def still_rising(self) -> bool:
        return bool(self.stopping.get("still_rising"))


def encode(tokenizer, examples: Examples, targets: list, max_length: int) -> EncodedData:
    encoded = tokenizer(
        examples.texts, examples.text_pairs, truncation=True, max_length=max_length, return_token_type_ids=True
    )
    return EncodedData(ids=encoded["input_ids"], type_ids=encoded["token_type_ids"], targets=targets)


class Trainer:
    """One fine-tuning run; ``run`` trains (or resumes) and returns the result."""

    def __init__(self, model_source: str, train: Examples, validation: Examples, out_dir: Path, settings: FinetuneSettings):
        self.out_dir = Path(out_dir)
        self.problem = decide_problem(train.labels, settings.problem)
        self.regression = self.problem == "regression"
        if self.regression:
            self.label_names: list[str] = []
            train_targets, validation_targets = regression_targets(train), regression_targets(validation)
        else:
            self.label_names = label_names(train.labels)
            if len(self.label_names) < 2:
                raise DataError(f"{train.source}: only one label ({self.label_names}); classification needs two or more")
            train_targets, validation_targets = encode_labels(train, self.label_names), encode_labels(validation, self.label_names)

        load_config(model_source)  # a clear error for a missing or unsupported checkpoint, before anything else
        self.tokenizer = load_tokenizer(model_source)
        lengths = [min(len(ids), settings.max_length) for ids in self.tokenizer(train.texts[:2000])["input_ids"]]
        self.settings = settings = settings.resolved(lengths)
        resume_dir = self._resume_source()
        if settings.teacher is not None:
            self._check_teacher(settings.teacher)
        torch.manual_seed(settings.seed)  # before the new head is initialised: a seed fixes the whole run
        self.model = self._load_model(str(resume_dir) if resume_dir else (settings.teacher or model_source))
        self.family = family_for(self.model.config)
        layers = self.family.layer_shape(self.model.config).num_layers
        self.profile = EliminationProfile(layers, power=settings.power)
        self.lat = LatencyAdjustableModel(self.model, self.family, self.profile, task=TASK_CLASSIFICATION)
        self.with_types = self.family.uses_token_type_ids(self.model.config)
        self.train_data = encode(self.tokenizer, train, train_targets, settings.max_length)
        self.validation_data = encode(self.tokenizer, validation, validation_targets, settings.max_length)
        self.model_source = model_source
        #: The frozen teacher's outputs for every training row ([examples, labels]), or None without a teacher.
        self.teacher_outputs = self._teacher_outputs(settings.teacher, pad_id=self._pad_id()) if settings.teacher else None

        steps_per_epoch = math.ceil(len(self.train_data) / settings.batch_size)
        self.steps_per_epoch = steps_per_epoch
        if settings.epochs is not None:
            self.total_steps = steps_per_epoch * settings.epochs
        else:
            self.total_steps = settings.max_steps or step_budget(len(self.train_data), settings.batch_size)
        self.eval_every = min(steps_per_epoch, MOST_STEPS_BETWEEN_EVALUATIONS)
        self.optimizer = torch.optim.AdamW(self._parameter_groups(), lr=settings.learning_rate)
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(settings.warmup_ratio * self.total_steps), self.total_steps
        )
        self.step = 0
        self.history: list[dict] = []  # {"step", "score"} at each evaluation
        self.best: Optional[dict] = None  # {"step", "score", "weights"} of the best evaluation so far
        self.ratio_generator = torch.Generator().manual_seed(settings.seed + 1)
        if resume_dir:
            self._load_state(resume_dir)

    # --- setup -------------------------------------------------------------
    def _resume_source(self) -> Optional[Path]:
        if not self.out_dir.exists():
            return None
        settings_path = self.out_dir / SETTINGS_FILE
        if not settings_path.is_file():
            raise OutputExistsError(f"{self.out_dir} exists and is not a latexport fine-tuning run; pass --overwrite to replace it")
        record = json.loads(settings_path.read_text())
        if record.get("completed"):
            raise OutputExistsError(f"{self.out_dir} holds a completed run; pass --overwrite to train again")
        if record.get("fingerprint") != self.settings.fingerprint():
            raise TrainingError(
                f"{self.out_dir} holds an interrupted run with other settings; pass --overwrite to start afresh"
            )
        if not (self.out_dir / STATE_FILE).is_file():
            raise TrainingError(f"{self.out_dir} has no {STATE_FILE} to resume from; pass --overwrite to start afresh")
        return self.out_dir

    def _load_model(self, source: str):
        from transformers import AutoModelForSequenceClassification

        config = load_config(source)
        family_for(config)
        # ACC must score the attention the model will have at inference; dropout on the
        # probabilities would also randomise which word-vectors are kept (and it was a
        # third of the CPU time of a training step).
        for name in ("attention_probs_dropout_prob", "attention_dropout"):
            if hasattr(config, name):
                setattr(config, name, 0.0)
        if self.regression:
            config.num_labels, config.problem_type = 1, "regression"
            config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
        else:
            config.num_labels = len(self.label_names)
            config.problem_type = "single_label_classification"
            config.id2label = dict(enumerate(self.label_names))
            config.label2id = {name: i for i, name in enumerate(self.label_names)}
        with _quiet_transformers():
            return AutoModelForSequenceClassification.from_pretrained(
                source, config=config, attn_implementation="eager", ignore_mismatched_sizes=True
            )

    def _check_teacher(self, teacher: str) -> None:
        """The teacher must be a fine-tuned model for the same labels, or its outputs mean nothing here."""
        config = load_config(teacher)
        if self.regression:
            matches = config.num_labels == 1
            wanted = "a regression model (num_labels=1)"
        else:
            names = [str(config.id2label[key]) for key in sorted(config.id2label, key=int)] if config.id2label else []
            matches = names == [str(name) for name in self.label_names]
            wanted = f"labels {self.label_names}"
        if not matches:
            raise SettingsError(
                f"teacher {teacher} was not fine-tuned for this data: it has labels "
                f"{list(config.id2label.values()) if config.id2label else config.num_labels}, and the data needs {wanted}"
            )

    @torch.no_grad()
    def _teacher_outputs(self, teacher: str, pad_id: int) -> torch.Tensor:
        """One pass of the frozen teacher over the training set, at keep_ratio 1."""
        model = self._load_model(teacher).eval()
        full = LatencyAdjustableModel(model, self.family, self.profile, task=TASK_CLASSIFICATION)
        chunks = []
        for start in range(0, len(self.train_data), 64):
            rows = list(range(start, min(start + 64, len(self.train_data))))
            batch = self.train_data.batch(rows, pad_id, self.with_types, self.regression)
            chunks.append(full(batch.input_ids, batch.attention_mask, batch.token_type_ids, 1.0).output)
        return torch.cat(chunks)

    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _parameter_groups(self):
        decay, no_decay = [], []
        for name, parameter in self.model.named_parameters():
            (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(parameter)
        return [{"params": decay, "weight_decay": self.settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # --- training -----------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This epoch's batches: shuffled, then grouped by length within windows of
        50 batches so that little padding is computed, then shuffled again."""
        rng = np.random.default_rng(self.settings.seed + 1000 * epoch)
        order = rng.permutation(len(self.train_data))
        size = self.settings.batch_size
        window = 50 * size
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: len(self.train_data.ids[i]))
            batches.extend(np.array(chunk[i : i + size]) for i in range(0, len(chunk), size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def sample_ratios(self) -> list[float]:
        low = self.settings.min_keep_ratio
        draws = torch.rand(self.settings.sampled_ratios, generator=self.ratio_generator).tolist()
        return [low] + [math.exp(math.log(low) * (1.0 - u)) for u in draws]

    def sample_profiles(self) -> list[EliminationProfile]:
        """One profile per pruned pass: the run's own, or powers drawn from ``power_range``."""
        count = self.settings.sampled_ratios + 1
        if self.settings.power_range is None:
            return [self.profile] * count
        low, high = self.settings.power_range
        draws = torch.rand(count, generator=self.ratio_generator).tolist()
        return [EliminationProfile(self.profile.num_layers, power=low + (high - low) * u) for u in draws]

    def task_loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(output.squeeze(-1), targets)
        return F.cross_entropy(output, targets)

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(student, teacher)
        t = self.settings.temperature
        return F.kl_div(F.log_softmax(student / t, dim=-1), F.softmax(teacher / t, dim=-1), reduction="batchmean") * t * t

    def training_loss(self, batch: Batch) -> torch.Tensor:
        weight = self.settings.distill_weight
        full = self.lat(batch.input_ids, batch.attention_mask, batch.token_type_ids, 1.0).output
        if self.teacher_outputs is None:
            loss = self.task_loss(full, batch.targets)
            teacher = full.detach()
        else:  # the full pass too learns from the teacher, so that keep_ratio 1 stays the teacher's model
            teacher = self.teacher_outputs[torch.as_tensor(batch.indices)]
            loss = (1.0 - weight) * self.task_loss(full, batch.targets) + weight * self.distill_loss(full, teacher)
        if self.settings.recipe == "lat":
            pruned_losses = []
            for ratio, profile in zip(self.sample_ratios(), self.sample_profiles()):
                self.lat.use_profile(profile)
                student = self.lat(batch.input_ids, batch.attention_mask, batch.token_type_ids, ratio).output
                pruned_losses.append(
                    (1.0 - weight) * self.task_loss(student, batch.targets) + weight * self.distill_loss(student, teacher)
                )
            self.lat.use_profile(self.profile)
            loss = loss + torch.stack(pruned_losses).mean()
        return loss

    def run(self, progress: bool = True) -> FinetuneResult:
        from tqdm.auto import tqdm

        start = time.perf_counter()
        pad_id = self._pad_id()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not progress, desc=f"finetune ({self.settings.recipe})")
        smoothed = None
        batches, batches_epoch = None, None
        while self.step < self.total_steps and not self.patience_ran_out():
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            if batches_epoch != epoch:
                batches, batches_epoch = self.epoch_batches(epoch), epoch
            batch = self.train_data.batch(batches[offset], pad_id, self.with_types, self.regression)
            self.model.train()
            loss = self.training_loss(batch)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {self.step + 1}; "
                    f"try a lower --learning-rate (now {self.settings.learning_rate})"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
            if self.step % self.eval_every == 0 or self.step == self.total_steps:
                self.record_evaluation()
            postfix = {"loss": f"{smoothed:.4f}", "epoch": epoch + 1}
            if self.best is not None:
                postfix["best"] = f"{self.best['score']:.4f}@{self.best['step']}"
            bar.set_postfix(postfix)
            bar.update(1)
            if self.step % self.steps_per_epoch == 0 or self.step % self.settings.save_every == 0:
                if self.step < self.total_steps and not self.patience_ran_out():
                    self.save(completed=False)
        bar.close()
        stopping = self.stopping_record()
        if self.keeps_best and self.best is not None:
            self.model.load_state_dict(self.best["weights"])
        if stopping["still_rising"]:
            log.warning("%s: %s", self.out_dir, stopping["reason"])
        validation = self.evaluate(self.validation_data)
        self.save(completed=True, validation=validation, stopping=stopping)
        return FinetuneResult(self.out_dir, self.step, time.perf_counter() - start, validation, stopping)

    # --- how long to train ----------------------------------------------------
    @property
    def keeps_best(self) -> bool:
        """Without a fixed epoch count, training stops on the validation score and keeps its best weights."""
        return self.settings.epochs is None

    def validation_score(self) -> float:
        """The mean validation metric over the ratios this recipe serves (``MONITORED_RATIOS``)."""
        results = self.evaluate(self.validation_data, MONITORED_RATIOS[self.settings.recipe])
        return float(np.mean(list(results.values())))

    def record_evaluation(self) -> None:
        score = self.validation_score()
        if not math.isfinite(score):
            score = -math.inf  # a constant prediction has no Pearson correlation: never the best
        self.history.append({"step": self.step, "score": score})
        if self.best is None or score > self.best["score"]:
            weights = {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}
            self.best = {"step": self.step, "score": score, "weights": weights}

    def evaluations_since_best(self) -> int:
        if self.best is None:
            return 0
        return sum(1 for entry in self.history if entry["step"] > self.best["step"])

    def patience_ran_out(self) -> bool:
        return self.keeps_best and self.evaluations_since_best() >= self.settings.patience

    def stopping_record(self) -> dict:
        """Why training ended, for the output and the checkpoint's record."""
        rising = bool(self.history) and self.evaluations_since_best() == 0 and len(self.history) > 1
        if self.patience_ran_out():
            reason = f"the validation score stopped improving ({self.settings.patience} evaluations without a new best)"
            rising = False
        elif self.settings.epochs is not None:
            reason = f"{self.settings.epochs} epochs, as asked"
            if rising:
                reason += "; the validation score was still rising at the end: more epochs may help"
        else:
            reason = f"the step budget of {self.total_steps} steps ran out"
            if rising:
                reason += f"; the validation score was still rising at the end: --max-steps {2 * self.total_steps} may help"
        best = self.best or {"step": self.step, "score": None}
        return {
            "reason": reason,
            "still_rising": rising,
            "kept": "best" if self.keeps_best else "last",
            "best_step": best["step"],
            "best_score": best["score"],
            "monitored_ratios": list(MONITORED_RATIOS[self.settings.recipe]),
            "history": self.history,
        }

    # --- evaluation (PyTorch; ONNX evaluation is `latexport evaluate`) -------
    @torch.no_grad()
    def evaluate(self, data: EncodedData, ratios=(1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05)) -> dict:
        self.model.eval()
        pad_id = self._pad_id()
        outputs = {ratio: [] for ratio in ratios}
        for start in range(0, len(data), 64):
            batch = data.batch(list(range(start, min(start + 64, len(data)))), pad_id, self.with_types, self.regression)
            for ratio in ratios:
                outputs[ratio].append(self.lat(batch.input_ids, batch.attention_mask, batch.token_type_ids, ratio).output)
        targets = np.array(data.targets)
        results = {}
        for ratio, chunks in outputs.items():
            predictions = torch.cat(chunks).numpy()
            if self.regression:
                results[str(ratio)] = float(np.corrcoef(predictions[:, 0], targets)[0, 1])
            else:
                results[str(ratio)] = float((predictions.argmax(axis=1) == targets).mean())
        return results

    # --- checkpoints ---------------------------------------------------------
    def save(self, completed: bool, validation: Optional[dict] = None, stopping: Optional[dict] = None) -> None:
        with atomic_directory(self.out_dir, overwrite=True) as scratch:
            self.model.save_pretrained(scratch)
            self.tokenizer.save_pretrained(scratch)
            record = {
                "settings": asdict(self.settings),
                "fingerprint": self.settings.fingerprint(),
                "base_model": self.model_source,
                "problem": self.problem,
                "labels": self.label_names,
                "power": self.settings.power,
                "step": self.step,
                "total_steps": self.total_steps,
                "completed": completed,
            }
            if validation is not None:
                record["validation"] = validation
            if stopping is not None:
                record["stopping"] = stopping
            (scratch / SETTINGS_FILE).write_text(json.dumps(record, indent=2))
            if not completed:
                torch.save(
                    {
                        "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(),
                        "step": self.step,
                        "torch_rng": torch.get_rng_state(),
                        "ratio_rng": self.ratio_generator.get_state(),
                        "history": self.history,
                        "best": self.best,
                    },
                    scratch / STATE_FILE,
                )

    def _load_state(self, directory: Path) -> None:
        state = torch.load(directory / STATE_FILE, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        self.ratio_generator.set_state(state["ratio_rng"])
        self.history, self.best = state["history"], state["best"]
        log.warning("resuming %s at step %d of %d", directory, self.step, self.total_steps)


def finetune(
    model: str,
    out_dir: Path,
    train: str,
    validation: str,
    columns: Columns = Columns(),
    settings: FinetuneSettings = FinetuneSettings(),
    overwrite: bool = False,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``train`` (a file or hub split) into ``out_dir``; resumes an interrupted run.

    With ``settings.teacher == "plain"`` (LAT), a plain fine-tuning run comes first, into
    ``teacher_directory(out_dir)``, and the LAT run starts from it and distils from it.
    """
    import shutil

    out_dir = Path(out_dir)
    plain_first = settings.recipe == "lat" and settings.teacher == TEACHER_PLAIN
    if overwrite:
        for directory in (out_dir, teacher_directory(out_dir)) if plain_first else (out_dir,):
            if directory.exists():
                shutil.rmtree(directory)
    train_examples = read_examples(train, columns)
    validation_examples = read_examples(validation, columns)
    if plain_first:
        teacher_dir = teacher_directory(out_dir)
        plain = replace(settings, recipe="plain", teacher=None)
        if not completed_run(teacher_dir, plain):
            log.warning("fine-tuning the plain teacher first, into %s", teacher_dir)
            Trainer(model, train_examples, validation_examples, teacher_dir, plain).run(progress=progress)
        settings = replace(settings, teacher=str(teacher_dir))
    elif settings.teacher == TEACHER_PLAIN:
        settings = replace(settings, teacher=None)  # a plain run has no teacher
    return Trainer(model, train_examples, validation_examples, out_dir, settings).run(progress=progress)


def teacher_directory(out_dir: Path) -> Path:
    """Where ``teacher="plain"`` keeps the plain run it trains first: beside the output, named after it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}-plain-teacher")


def completed_run(directory: Path, settings: FinetuneSettings) -> bool:
    """A finished run with these settings is in ``directory`` (its power as it was resolved then)."""
    path = directory / SETTINGS_FILE
    if not path.is_file():
        return False
    record = json.loads(path.read_text())
    return bool(record.get("completed")) and record.get("fingerprint") == replace(settings, power=record.get("power")).fingerprint()


class _quiet_transformers:
    """transformers warns that the new head is untrained, which is the point of fine-tuning."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self.previous = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self.previous)

"""Latency budgets: from "answer within 20 ms" to a keep_ratio, per machine.

``latexport calibrate OUT_DIR`` (``latexport.runtime.calibrate``) times the model on this machine over a grid of
batch sizes, sequence lengths and keep ratios, and fits

    latency_ms = overhead_ms + token_ms * (batch * width)
               + linear_gflop_ms * linear GFLOPs + quadratic_gflop_ms * quadratic GFLOPs

where the GFLOPs come from the same FLOPs model as ``inspect`` (the widest row
of each layer, times the batch, as the padded graph computes it), split into
weight products and token-by-token products (attention scores, mixing, ACC),
which cost more per multiply-accumulate: on MiniLM with one FLOPs term the fit
missed 512-token calls by up to 27%.  The coefficients are non-negative, so
predicted latency never grows as keep_ratio falls.  What a linear fit cannot
see (caches: on BERT-base, 32 texts ran 10-14% slower per FLOP than the fit)
is corrected per shape: each calibrated (batch, length) keeps the median ratio
of measured to fitted time over its keep ratios, and a prediction multiplies
by that factor, interpolated in log-space between calibrated shapes.  The fit is stored as ``calibration.json`` beside ``model.onnx``.

A batch whose rows ask for different ratios costs what its widest row needs in
every layer, and rows are padded to one length, so it is predicted at its
highest ratio (``predict_rows_ms``; ``examples/serve`` budgets mixed calls so).

``LatencyAdjustableSession.predict(texts, target_ms=...)`` then bisects for the
largest keep_ratio whose predicted latency, plus a safety margin, fits what is
left of the budget after tokenisation.  The margin is measured too: the 90th
percentile, over the grid, of how far each point's 90th-percentile call
exceeded the fit (call-to-call jitter, and shapes the linear fit underrates),
so that a budget is met by about nine calls in ten on a machine as quiet as
during calibration rather than by half of them.  Numpy-only (no torch): it runs inside production services.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from latexport.runtime.atomic import write_text_atomic
from latexport.runtime.errors import InvalidInputError, ModelDirectoryError
from latexport.runtime.estimate import FlopsModel
from latexport.runtime.metadata import ModelMetadata
from latexport.runtime.profile import EliminationProfile

CALIBRATION_FILE = "calibration.json"
FEATURES = ("overhead_ms", "token_ms", "linear_gflop_ms", "quadratic_gflop_ms")
DEFAULT_BATCH_SIZES = (1, 4, 16)
DEFAULT_KEEP_RATIOS = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05)
#: Candidate ratios per grid when a budget chooses a ratio (coarse, then fine).
CANDIDATE_RATIOS = 64
#: Below this ratio latexport's fine-tuning does not train (its --min-keep-ratio
#: default), so a budget never pushes the model further down.
DEFAULT_MIN_KEEP_RATIO = 0.05


class CalibrationWarning(UserWarning):
    """The calibration was measured under different conditions than this session."""


def machine_fingerprint() -> dict:
    """What a latency measurement depends on besides the model: the CPU and its count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "system": platform.system()}


def batch_gflops(flops: FlopsModel, profile: EliminationProfile, longest: int, batch: int, keep_ratios) -> tuple:
    """(linear, quadratic) multiply-accumulates, in billions, of a padded batch whose
    longest row has ``longest`` tokens, at one keep ratio or at an array of them.

    Kept counts grow with a row's length, so the longest row sets every layer's
    padded width; all rows are padded to it.
    """
    ratios = np.atleast_1d(np.asarray(keep_ratios, dtype=np.float64))
    kept = profile.kept_counts_table(longest, ratios).astype(np.float64)  # [ratios, layers]
    entering = np.concatenate([np.full((len(ratios), 1), float(longest)), kept[:, :-1]], axis=1)
    linear, quadratic = flops.layer_cost_parts(entering, kept, kept < entering)
    decoder_linear, decoder_quadratic = flops.decoder_cost_parts(float(longest), kept[:, -1])
    linear = batch * (linear.sum(axis=1) + decoder_linear) / 1e9
    quadratic = batch * (quadratic.sum(axis=1) + decoder_quadratic) / 1e9
    if np.ndim(keep_ratios) == 0:
        return float(linear[0]), float(quadratic[0])
    return linear, quadratic


@dataclass
class LatencyModel:
    """A fitted per-machine latency predictor for one model file (module doc)."""

    coefficients: dict[str, float]
    flops: FlopsModel
    profile: EliminationProfile
    provider: str
    intra_op_threads: int
    machine: dict
    onnxruntime_version: str
    #: Median and worst relative error of the fit on its own measurements.
    fit_error: dict[str, float] = field(default_factory=dict)
    #: Predictions are scaled by (1 + margin) before they are compared with a budget (module doc).
    margin: float = 0.0
    #: Measured / fitted time per calibrated shape: {"batches": [...], "seq_lens": [...], "factors": [[...]]}.
    shape_correction: dict = field(default_factory=dict)
    measurements: list[dict] = field(default_factory=list)
    measured_at: str = ""

    # --- prediction ------------------------------------------------------------
    def predict_ms(self, batch: int, longest: int, keep_ratio: float) -> float:
        return float(self.predict_many(batch, longest, np.array([keep_ratio]))[0])

    def predict_many(self, batch: int, longest: int, keep_ratios: np.ndarray) -> np.ndarray:
        """Predicted milliseconds at each of ``keep_ratios`` (one pass, no Python loop over ratios)."""
        linear, quadratic = batch_gflops(self.flops, self.profile, longest, batch, keep_ratios)
        c = self.coefficients
        fitted = (c["overhead_ms"] + c["token_ms"] * batch * longest
                  + c["linear_gflop_ms"] * linear + c["quadratic_gflop_ms"] * quadratic)
        return fitted * self.correction(batch, longest)

    def correction(self, batch: int, longest: int) -> float:
        """The shape factor (module doc), bilinear in log(batch) and log(length), constant beyond the grid."""
        if not self.shape_correction:
            return 1.0
        batches = np.log(self.shape_correction["batches"])
        lengths = np.log(self.shape_correction["seq_lens"])
        log_factors = np.log(np.array(self.shape_correction["factors"]))
        along_lengths = [np.interp(np.log(longest), lengths, row) for row in log_factors]
        return float(np.exp(np.interp(np.log(batch), batches, along_lengths)))

    def predict_rows_ms(self, longest: int, keep_ratios) -> float:
        """A batch whose rows run at their own ratios (one per row).  The graph cuts every layer to
        its widest row and the rows are padded to ``longest``, so the row at the highest ratio is the
        widest everywhere: the call costs what the whole batch costs at that ratio."""
        ratios = np.atleast_1d(np.asarray(keep_ratios, dtype=np.float64))
        return self.predict_ms(len(ratios), longest, float(ratios.max()))

    def guarded_ms(self, batch: int, longest: int, keep_ratio: float) -> float:
        """The prediction with the safety margin: what a budget is compared with."""
        return self.predict_ms(batch, longest, keep_ratio) * (1.0 + self.margin)

    def choose_keep_ratio(
        self, batch: int, longest: int, budget_ms: float, min_keep_ratio: float = DEFAULT_MIN_KEEP_RATIO
    ) -> tuple[float, float]:
        """Largest keep_ratio in [min_keep_ratio, 1] (to about 1/4000) whose guarded
        prediction fits ``budget_ms``, and that guarded prediction.

        When even ``min_keep_ratio`` is predicted to miss, that ratio is returned
        (the fastest the model is allowed to go); the caller sees the prediction.
        This runs on every budgeted request: a coarse grid of candidates, then a
        fine grid inside the step where the budget is crossed, each predicted in
        one vectorised pass (about 0.1 ms in all).
        """
        low, high = min_keep_ratio, 1.0
        for _ in range(2):
            candidates = np.linspace(low, high, CANDIDATE_RATIOS)
            guarded = self.predict_many(batch, longest, candidates) * (1.0 + self.margin)
            # Predictions never fall as the ratio grows (non-negative coefficients), so
            # the fitting candidates are a prefix; its last one is the largest ratio.
            fitting = np.nonzero(guarded <= budget_ms)[0]
            best = int(fitting[-1]) if fitting.size else 0
            if best == len(candidates) - 1 or not fitting.size:
                break
            low, high = candidates[best], candidates[best + 1]
        return float(candidates[best]), float(guarded[best])

    # --- fitting ---------------------------------------------------------------
    @staticmethod
    def features(flops: FlopsModel, profile: EliminationProfile, batch: int, longest: int, keep_ratio: float) -> list[float]:
        """The fit's inputs, in the order of ``FEATURES``."""
        return [1.0, float(batch * longest), *batch_gflops(flops, profile, longest, batch, keep_ratio)]

    @classmethod
    def fit(cls, metadata: ModelMetadata, measurements: list[dict], **facts) -> "LatencyModel":
        """Non-negative least squares on relative error (each row divided by its latency),
        so a 2 ms call counts as much as a 200 ms one."""
        design = np.array(
            [cls.features(metadata.flops, metadata.profile, m["batch"], m["seq_len"], m["keep_ratio"]) for m in measurements]
        )
        observed = np.array([m["median_ms"] for m in measurements], dtype=np.float64)
        if not measurements or not (np.isfinite(observed) & (observed > 0)).all():
            raise InvalidInputError(
                f"every calibration measurement needs a positive, finite median_ms (got {sorted(set(observed.tolist()))[:5]})"
            )
        weights = 1.0 / observed
        active = list(range(design.shape[1]))
        solution = np.zeros(design.shape[1])
        # Four features: drop the most negative coefficient and refit until none is negative.
        while active:
            fitted, *_ = np.linalg.lstsq(design[:, active] * weights[:, None], observed * weights, rcond=None)
            if (fitted >= 0).all():
                solution[:] = 0.0
                solution[active] = fitted
                break
            del active[int(np.argmin(fitted))]
        fitted = design @ solution
        shape_correction = _shape_correction(measurements, observed / fitted)
        model = cls(
            coefficients={name: float(value) for name, value in zip(FEATURES, solution)},
            flops=metadata.flops,
            profile=metadata.profile,
            shape_correction=shape_correction,
            **facts,
        )
        predicted = np.array([model.predict_ms(m["batch"], m["seq_len"], m["keep_ratio"]) for m in measurements])
        relative = np.abs(predicted - observed) / observed
        slow_calls = np.array([m.get("p90_ms", m["median_ms"]) for m in measurements])
        model.margin = float(np.clip(np.percentile(slow_calls / predicted - 1.0, 90), 0.0, 0.5))
        model.fit_error = {"median": float(np.median(relative)), "max": float(relative.max())}
        model.measurements = [dict(m, predicted_ms=float(p)) for m, p in zip(measurements, predicted)]
        return model

    # --- storage ---------------------------------------------------------------
    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / CALIBRATION_FILE
        write_text_atomic(path, json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: Path) -> "LatencyModel":
        path = Path(model_dir) / CALIBRATION_FILE
        if not path.is_file():
            raise ModelDirectoryError(
                f"{path} does not exist; a latency budget needs this machine's calibration: run `latexport calibrate {model_dir}`"
            )
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
            fields["flops"] = FlopsModel(**fields["flops"])
            fields["profile"] = EliminationProfile(**fields["profile"])
            model = cls(**fields)
            missing = [name for name in FEATURES if name not in model.coefficients]
            if missing:
                raise KeyError(missing)
        except (ValueError, KeyError, TypeError) as error:
            raise ModelDirectoryError(f"{path} is not a readable calibration ({type(error).__name__}: {error}); calibrate again") from error
        return model

    def check_matches(self, metadata: ModelMetadata, provider: str, intra_op_threads: int) -> None:
        """Refuse a calibration of another model; warn when the machine or threads differ."""
        if self.flops != metadata.flops or self.profile != metadata.profile:
            raise ModelDirectoryError("calibration.json was measured for a different model file; run `latexport calibrate` again")
        if self.provider != provider:
            raise InvalidInputError(
                f"the calibration was measured with provider {self.provider!r} but this session uses {provider!r}; "
                "calibrate with the same provider"
            )
        here = machine_fingerprint()
        if here != self.machine or intra_op_threads != self.intra_op_threads:
            warnings.warn(
                f"calibration.json was measured on {self.machine} with {self.intra_op_threads} threads; this session runs on "
                f"{here} with {intra_op_threads}: budgets may be missed until `latexport calibrate` is run here",
                CalibrationWarning,
                stacklevel=3,
            )


def _shape_correction(measurements: list[dict], ratios: np.ndarray) -> dict:
    """Median measured/fitted ratio per (batch, length) of a full grid; empty when the grid is not full."""
    batches = sorted({m["batch"] for m in measurements})
    seq_lens = sorted({m["seq_len"] for m in measurements})
    factors = []
    for batch in batches:
        row = []
        for seq_len in seq_lens:
            at_shape = [r for m, r in zip(measurements, ratios) if m["batch"] == batch and m["seq_len"] == seq_len]
            if not at_shape:
                return {}
            row.append(float(np.median(at_shape)))
        factors.append(row)
    return {"batches": batches, "seq_lens": seq_lens, "factors": factors}

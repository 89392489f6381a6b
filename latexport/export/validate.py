"""Validation of an exported graph against its references, as optimum does.

* At ``keep_ratio = 1.0`` ONNX Runtime must reproduce the unmodified
  transformers model (logits or pooled embedding) within ``atol`` (for
  outputs larger than ``VALUE_SCALE``, atol in proportion to the largest).  A
  left-padded row is compared with what transformers gives for the same row
  padded on the right: latexport reads a row the same whichever side it is
  padded on, while BERT-style models in transformers count positions by
  column and read [CLS] at column 0 (see the README's "Padding").
* At every ratio, 1.0 included, it must reproduce the independent reference
  (``latexport.export.reference``: each row alone through transformers' own layers,
  ACC and the kept set in numpy): the same output within ``atol`` and the
  same kept word-vectors in every layer.  This is what catches a bug in the
  selection itself, which the graph and our PyTorch model share.
* Below 1.0 it must also reproduce our PyTorch implementation at the same
  ratio (outputs and kept word-vectors): the export itself is faithful.
* An encoder-decoder (text2text-generation) also checks its decoder graphs:
  at 1.0 the teacher-forced logits against transformers and the greedy
  continuation token for token against ``generate``; at lower ratios the
  greedy continuation against ``generate`` fed our PyTorch encoder's kept
  states and mask.  ``generate`` runs under the start, forced and banned
  tokens the file records and nothing else (``only_generation_config``), on
  the rows right-padded (BART and Marian count positions by column there).

Inputs are a right-padded batch (per-sample counts and masking), a batch
that mixes left and right padding and is wider than its longest row (so
that even at 1.0 the first layer drops the surplus width: the dropping
branch runs at every ratio), and a longer single sequence (the sequence
axis beyond the traced size).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime as ort
import torch

from latexport.export.checkpoint import LoadedCheckpoint
from latexport.export.families import TASK_FEATURES, TASK_GENERATION, TASK_TEXT2TEXT
from latexport.export.model import LatencyAdjustableModel
from latexport.export.pooling import pool
from latexport.export.passes import with_int64_outputs
from latexport.export.reference import reference_batch, reference_next_logits

DEFAULT_RATIOS = (0.75, 0.5, 0.25, 0.1)
#: Greedy tokens compared per prompt when validating generation.
GREEDY_TOKENS = 16


@dataclass
class Check:
    inputs: str
    keep_ratio: float
    reference: str
    max_abs_diff: float
    atol: float
    kept_mismatch: Optional[str] = None
    #: The difference scaled to the values' size (``_diff``), held to ``atol``; None: ``max_abs_diff``.
    excess: Optional[float] = None

    @property
    def passed(self) -> bool:
        measured = self.max_abs_diff if self.excess is None else self.excess
        return bool(measured <= self.atol) and self.kept_mismatch is None

    @property
    def compares_tokens(self) -> bool:
        """Greedy checks: ``max_abs_diff`` counts differing tokens, and must be 0."""
        return self.reference.endswith("greedy")


@dataclass
class ValidationReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def render(self) -> str:
        lines = [f"{'inputs':<14} {'keep_ratio':>10} {'reference':<13} {'max |diff|':>11} {'atol':>8}  kept tokens  result"]
        for c in self.checks:
            kept = "-" if c.reference == "transformers" or c.compares_tokens else ("same" if c.kept_mismatch is None else "DIFFER")
            lines.append(
                f"{c.inputs:<14} {c.keep_ratio:>10.2f} {c.reference:<13} {c.max_abs_diff:>11.2e} {c.atol:>8.0e}  "
                f"{kept:<11}  {'ok' if c.passed else 'FAILED'}"
            )
            if c.excess is not None and c.excess < c.max_abs_diff:
                lines[-1] += f" (scaled to the output's size: {c.excess:.2e})"
            if c.kept_mismatch:
                lines.append(f"{'':<14} {c.kept_mismatch}")
        return "\n".join(lines)


def validation_inputs(loaded: LoadedCheckpoint, seed: int = 0, room: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """A padded batch and a longer single sequence of random in-vocabulary ids."""
    tokenizer, config = loaded.tokenizer, loaded.config
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(min(config.vocab_size, 30000)) if i not in special]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if loaded.family.causal:
        # A prompt does not end with the end token; and where it doubles as padding (GPT-2),
        # transformers' classifiers would skip it when looking for the last token.
        end_id = None
    uses_token_types = loaded.family.uses_token_type_ids(config)

    def make(lengths: list[int], width: int) -> dict[str, np.ndarray]:
        ids = np.full((len(lengths), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(lengths), width), dtype=np.int64)
        types = np.zeros((len(lengths), width), dtype=np.int64)
        for row, length in enumerate(lengths):
            ids[row, :length] = rng.choice(vocab, size=length)
            if start_id is not None:
                ids[row, 0] = start_id
            if end_id is not None and length > 1:
                ids[row, length - 1] = end_id
            if loaded.family.causal and length >= 16:
                # The prompt ends by repeating an earlier passage, as a quote or a rerun story
                # does, so that a decoder rule's copy sources have something to find.
                block = length // 4
                ids[row, length - block : length] = ids[row, length // 8 : length // 8 + block]
            mask[row, :length] = 1
            if uses_token_types and length > 4:
                types[row, length // 2 : length] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if uses_token_types:
            feed["token_type_ids"] = types
        return feed

    limit = loaded.max_length - room  # room for generated tokens
    width = min(40, limit)
    mixed = make([max(2, width * 3 // 4), max(2, width // 2), min(7, width), max(2, width // 3)], width)
    for row in (1, 3):  # left-padded rows beside right-padded ones, all narrower than the batch
        for name in mixed:
            mixed[name][row] = np.roll(mixed[name][row], width - int(mixed["attention_mask"][row].sum()))
    return {
        "padded batch": make([width, max(2, width * 2 // 3), min(5, width)], width),
        "mixed padding": mixed,
        "long sequence": make([min(160, limit)], min(160, limit)),
    }


def right_padded(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same rows with their real tokens moved to the front (a stable reorder), width unchanged."""
    order = np.argsort(np.asarray(feed["attention_mask"]) <= 0, axis=1, kind="stable")
    return {name: np.take_along_axis(np.asarray(value), order, axis=1) for name, value in feed.items()}


def reference_output(loaded: LoadedCheckpoint, feed: dict[str, np.ndarray], pooling: Optional[str]) -> np.ndarray:
    """The unmodified transformers model's logits or pooled embedding, on the rows right-padded."""
    feed = right_padded(feed)
    tensors = {name: torch.from_numpy(value) for name, value in feed.items()}
    with torch.no_grad():
        if loaded.task == TASK_TEXT2TEXT:
            states = loaded.family.core(loaded.model)(**tensors).last_hidden_state.numpy()
            widest = int(feed["attention_mask"].sum(axis=1).max())  # the graph returns no surplus width
            return (states * feed["attention_mask"][..., None])[:, :widest]
        if loaded.family.causal:  # positions count real tokens, so padding on either side is neutral
            tensors["position_ids"] = loaded.family.initial_positions(tensors["attention_mask"] > 0)
        output = loaded.model(**tensors)
        if loaded.task == TASK_GENERATION:
            last = np.asarray(feed["attention_mask"]).shape[1] - 1 - np.argmax(np.asarray(feed["attention_mask"])[:, ::-1], axis=1)
            return output.logits[torch.arange(len(last)), torch.from_numpy(last)].numpy()
    if loaded.task == TASK_FEATURES:
        return pool(output.last_hidden_state, tensors["attention_mask"] > 0, pooling or "mean").numpy()
    return output.logits.numpy()


def pytorch_output(lat: LatencyAdjustableModel, feed: dict[str, np.ndarray], keep_ratio: float):
    tensors = {name: torch.from_numpy(value) for name, value in feed.items()}
    with torch.no_grad():
        result = lat(
            tensors["input_ids"], tensors["attention_mask"], tensors.get("token_type_ids"), torch.tensor(keep_ratio)
        )
    kept = [positions.numpy() for positions in result.kept_positions]
    if result.attention_mask is not None:
        return _masked_states(result.output.numpy(), kept), kept
    return result.output.numpy(), kept


def _masked_states(states: np.ndarray, kept: list[np.ndarray]) -> np.ndarray:
    """Encoder states with the surplus slots zeroed (what they hold there is not part of the contract)."""
    return states * (kept[-1] >= 0)[..., None]


def validate_export(
    model_path: Path,
    loaded: LoadedCheckpoint,
    lat: LatencyAdjustableModel,
    output_name: str,
    taps: list[str],
    atol: float = 1e-4,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
) -> ValidationReport:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        with_int64_outputs(model_path, taps), options, providers=["CPUExecutionProvider"]
    )
    report = ValidationReport()
    for label, feed in validation_inputs(loaded).items():
        for ratio in (1.0, *ratios):
            got, *got_kept = session.run([output_name, *taps], {**feed, "keep_ratio": np.array(ratio, dtype=np.float32)})
            if loaded.task == TASK_TEXT2TEXT:
                got = _masked_states(got, got_kept)
            if ratio == 1.0:
                expected = reference_output(loaded, feed, lat.pooling)
                report.checks.append(_float_check(label, ratio, "transformers", got, expected, atol))
            else:
                expected, expected_kept = pytorch_output(lat, feed, ratio)
                report.checks.append(
                    _float_check(label, ratio, "latexport-pt", got, expected, atol, _kept_mismatch(got_kept, expected_kept))
                )
            report.checks.append(independent_check(loaded, lat, feed, label, ratio, got, got_kept, atol))
    return report


def independent_check(
    loaded: LoadedCheckpoint, lat: LatencyAdjustableModel, feed: dict[str, np.ndarray], label: str, ratio: float,
    got: np.ndarray, got_kept: list[np.ndarray], atol: float,
) -> Check:
    """The ONNX outputs and kept sets of every row against ``latexport.export.reference``."""
    rows = reference_batch(loaded.model, loaded.task, lat.exponents, feed, ratio, lat.pooling or "mean", lat.scoring)
    worst, excess, mismatch = 0.0, 0.0, None
    for row, expected in enumerate(rows):
        output = got[row]
        if loaded.task == TASK_TEXT2TEXT:
            output = output[got_kept[-1][row] >= 0]
        difference, row_excess = _diff(output, expected.output)
        worst, excess = max(worst, difference), max(excess, row_excess)
        for layer, (kept, expected_kept) in enumerate(zip(got_kept, expected.kept_positions)):
            kept_row = kept[row][kept[row] >= 0]
            if mismatch is None and not np.array_equal(kept_row, expected_kept):
                mismatch = (
                    f"layer {layer}: row {row} keeps positions {_short(kept_row)}, "
                    f"the independent reference {_short(expected_kept)}"
                )
    return Check(label, ratio, "independent", worst, atol, kept_mismatch=mismatch, excess=excess)


def _short(positions: np.ndarray, limit: int = 12) -> str:
    shown = ", ".join(str(int(p)) for p in positions[:limit])
    return f"[{shown}{', ...' if len(positions) > limit else ''}] ({len(positions)})"


#: ``atol`` holds for outputs up to this size and grows in proportion above it.  Logits
#: are products of a hidden state with the whole vocabulary, so their float32 error
#: follows the size of the whole vector, not of each entry: the real SmolLM2's logits
#: (up to 30) moved by 2.4e-4 at an entry of -9 between two summation orders of the
#: same pruned pass, with the same kept tokens.
VALUE_SCALE = 10.0


def _diff(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max |got - expected|, the same divided by max(1, max |expected| / VALUE_SCALE)):
    a check passes when the second is within atol, so atol is absolute for outputs
    up to size 10 and relative (atol / VALUE_SCALE of the largest) above."""
    if got.shape != expected.shape:
        return float("inf"), float("inf")
    if not got.size:
        return 0.0, 0.0
    expected = expected.astype(np.float64)
    difference = float(np.abs(got.astype(np.float64) - expected).max())
    return difference, difference / max(1.0, float(np.abs(expected).max()) / VALUE_SCALE)


def _float_check(
    inputs: str, ratio: float, reference: str, got: np.ndarray, expected: np.ndarray, atol: float,
    kept_mismatch: Optional[str] = None,
) -> Check:
    difference, excess = _diff(got, expected)
    return Check(inputs, ratio, reference, difference, atol, kept_mismatch=kept_mismatch, excess=excess)


def _kept_mismatch(got: list[np.ndarray], expected: list[np.ndarray]) -> Optional[str]:
    for layer, (a, b) in enumerate(zip(got, expected)):
        if a.shape != b.shape:
            return f"layer {layer}: ONNX kept {a.shape[1]} slots, PyTorch {b.shape[1]}"
        if not np.array_equal(a, b):
            rows = sorted({int(r) for r in np.nonzero(a != b)[0]})
            return f"layer {layer}: kept positions differ in rows {rows}"
    return None


def validate_generation(
    model_dir: Path, loaded: LoadedCheckpoint, lat: LatencyAdjustableModel, atol: float, ratios: tuple[float, ...]
) -> ValidationReport:
    """The decoder graphs of a text2text-generation directory (module doc)."""
    from transformers.modeling_outputs import BaseModelOutput

    from latexport.runtime.generation import Seq2SeqGenerator

    generator = Seq2SeqGenerator(model_dir)
    settings = generator.settings
    greedy = seq2seq_greedy_config(settings, GREEDY_TOKENS)
    report = ValidationReport()
    rng = np.random.default_rng(1)
    for label, feed in validation_inputs(loaded).items():
        # transformers counts absolute positions (BART, Marian) by column: it reads a row as latexport does right-padded.
        tensors = {name: torch.from_numpy(value) for name, value in right_padded(feed).items()}
        batch = feed["input_ids"].shape[0]
        decoder_ids = rng.integers(3, loaded.config.vocab_size, size=(batch, 6))
        decoder_ids[:, 0] = settings["decoder_start_token_id"]
        states, mask = generator.encode_states(feed, 1.0)
        got = generator.decoder.run(
            ["logits"], {"input_ids": decoder_ids, "encoder_hidden_states": states, "encoder_attention_mask": mask}
        )[0]
        with torch.no_grad():
            expected = loaded.model(**tensors, decoder_input_ids=torch.from_numpy(decoder_ids)).logits.numpy()
        report.checks.append(_float_check(label + " logits", 1.0, "transformers", got, expected, atol))

        with torch.no_grad(), only_generation_config(loaded.model, greedy):
            expected_ids = loaded.model.generate(**tensors, generation_config=greedy)
        got_ids = generator.generate_ids(feed, 1.0, GREEDY_TOKENS).token_ids
        report.checks.append(_greedy_check(label, 1.0, "hf greedy", got_ids, expected_ids.numpy(), settings))
        for ratio in ratios:
            with torch.no_grad(), only_generation_config(loaded.model, greedy):
                result = lat(tensors["input_ids"], tensors["attention_mask"], None, torch.tensor(ratio))
                expected_ids = loaded.model.generate(
                    encoder_outputs=BaseModelOutput(last_hidden_state=result.output),
                    attention_mask=result.attention_mask,
                    generation_config=greedy,
                )
            got_ids = generator.generate_ids(feed, ratio, GREEDY_TOKENS).token_ids
            report.checks.append(_greedy_check(label, ratio, "pt greedy", got_ids, expected_ids.numpy(), settings))
    return report


def seq2seq_greedy_config(settings: dict, max_new_tokens: int):
    """transformers' greedy ``GenerationConfig`` for what a text2text directory records: its start and
    end tokens and the forced and suppressed tokens the runtime applies (``generation.constrain_tokens``)."""
    from transformers import GenerationConfig

    suppressed = settings.get("suppressed_token_ids")
    return GenerationConfig(
        decoder_start_token_id=settings["decoder_start_token_id"],
        eos_token_id=settings["eos_token_id"],
        pad_token_id=settings["pad_token_id"],
        forced_bos_token_id=settings.get("forced_bos_token_id"),
        forced_eos_token_id=settings.get("forced_eos_token_ids"),
        bad_words_ids=[[token] for token in suppressed] if suppressed else None,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
    )


@contextmanager
def only_generation_config(model, config):
    """Run ``generate`` with ``config`` and nothing else: transformers fills the fields a passed config
    leaves at their defaults from the model's own generation config (a checkpoint's beams, minimum
    length or n-gram ban), which latexport's greedy loop does not reproduce."""
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


def _greedy_check(label: str, ratio: float, reference: str, got: list[list[int]], expected: np.ndarray, settings) -> Check:
    """Token-for-token comparison; ``expected`` rows start with the decoder start token."""
    return _token_check(label, ratio, reference, got, expected[:, 1:].tolist(), settings["eos_token_id"])


def validate_causal_generation(
    model_dir: Path, loaded: LoadedCheckpoint, lat: LatencyAdjustableModel, atol: float, ratios: tuple[float, ...]
) -> ValidationReport:
    """The decode-step graph of a text-generation directory: at 1.0, greedy tokens
    against transformers' ``generate`` (each prompt alone, so no padding question
    arises there); at every ratio, the ONNX prompt pass and decode steps against
    ``PyTorchGenerator`` (the same modules run eagerly), on the padded batch."""
    from latexport.export.decoding import PyTorchGenerator
    from latexport.runtime.generation import CausalGenerator

    generator = CausalGenerator(model_dir)
    reference = PyTorchGenerator(lat)
    report = ValidationReport()
    for label, feed in validation_inputs(loaded, room=GREEDY_TOKENS).items():
        got = generator.generate_ids(feed, 1.0, GREEDY_TOKENS)
        expected = []
        for row in range(feed["input_ids"].shape[0]):
            prompt = torch.from_numpy(feed["input_ids"][row][feed["attention_mask"][row] > 0])[None]
            length = prompt.shape[1]
            with torch.no_grad():
                continuation = loaded.model.generate(
                    prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                    num_beams=1, eos_token_id=generator.settings["eos_token_id"], pad_token_id=generator.settings["pad_token_id"],
                )
            expected.append(continuation[0, length:].tolist())
        report.checks.append(_token_check(label, 1.0, "hf greedy", got.token_ids, expected, generator.settings["eos_token_id"]))
        for ratio in ratios:
            got = generator.generate_ids(feed, ratio, GREEDY_TOKENS)
            expected_ids, expected_logits = reference.greedy(feed, ratio, GREEDY_TOKENS, generator.settings["eos_token_id"])
            check = _token_check(label, ratio, "pt greedy", got.token_ids, expected_ids, generator.settings["eos_token_id"])
            report.checks.append(check)
            report.checks.append(
                _float_check(label + " logits", ratio, "latexport-pt", got.first_logits, expected_logits, atol)
            )
            report.checks.append(independent_step_check(generator, loaded, lat, feed, label, ratio, atol))
    return report


def independent_step_check(
    generator, loaded: LoadedCheckpoint, lat: LatencyAdjustableModel, feed: dict[str, np.ndarray], label: str,
    ratio: float, atol: float,
) -> Check:
    """One ONNX decode step over the pruned caches against ``reference_next_logits``: each row's
    new token run through transformers' whole layers beside the word-vectors that entered each
    one (so a window or rotary table misapplied over the cache shows up here)."""
    logits, cache = generator.prefill(feed, ratio)
    next_ids = logits.argmax(axis=-1)
    positions = np.asarray(feed["attention_mask"]).sum(axis=1, keepdims=True).astype(np.int64)
    got = generator.decoder_with_past.run(["logits"], {"input_ids": next_ids[:, None], "position_ids": positions, **cache})[0]
    rows = reference_batch(loaded.model, loaded.task, lat.exponents, feed, ratio, scoring=lat.scoring)
    expected = np.stack([
        reference_next_logits(loaded.model, row, next_ids[index], positions[index, 0]) for index, row in enumerate(rows)
    ])
    return _float_check(label + " step", ratio, "independent", got[:, -1], expected, atol)


def _token_check(label: str, ratio: float, reference: str, got: list[list[int]], expected: list[list[int]], eos: int) -> Check:
    differing, first_difference = 0, None
    for row, (got_row, expected_row) in enumerate(zip(got, expected)):
        if eos in expected_row:
            expected_row = expected_row[: expected_row.index(eos) + 1]
        width = max(len(got_row), len(expected_row))
        mismatches = [t for t in range(width) if t >= len(got_row) or t >= len(expected_row) or got_row[t] != expected_row[t]]
        differing += len(mismatches)
        if mismatches and first_difference is None:
            first_difference = f"greedy tokens differ in row {row} from token {mismatches[0]}"
    return Check(label + " tokens", ratio, reference, float(differing), 0.0, first_difference)

"""The exporter, weighed: TorchScript (what ``convert`` uses) against torch.export, on BERT-base.

    python examples/exporters.py [--seq-lens 128,512] [--repeats 7] [--threads 2]
    python examples/exporters.py --families     # does torch.export take every family? (tiny models)

PyTorch has deprecated the TorchScript exporter (``torch.onnx.export(...,
dynamo=False)``) and ``torch.jit.script`` in favour of ``torch.export``
(``dynamo=True``).  latexport's graph needs two things of an exporter: every
layer's keep count stays a tensor (TopK's k, the gathers' widths), and a layer
that keeps everything skips scoring and gathers (an ONNX ``If``; TorchScript
gets it from the scripted ``select_tokens_for_export``).

This script exports one BERT-base-shaped model (random weights, as in
``speed_bert_base.py``; power 1) both ways from the same
``LatencyAdjustableModel``:

* ``torchscript``: ``latexport.export.tracing.trace``, as ``convert`` does;
* ``torch.export``: the same module under ``torch.onnx.export(dynamo=True)``.
  Two things must change for it, patched here for the export only:
  ``select_tokens`` reads the widest keep count with ``.item()`` (an unbacked
  size) instead of TorchScript's tensor, and ``real_tokens_first`` subtracts
  instead of ``remainder`` (the ONNX translation refuses a symbolic divisor).
  The keep-everything ``If`` is tried as ``torch.cond`` first; where
  torch.export refuses it (its branches return different widths), every layer
  scores and gathers, even at 1.0.

Both files are checked against the eager model (logits within 1e-4, the same
kept positions in every layer) on a padded batch, left- and right-padded
rows, at every timed ratio; then their kept-positions taps are hidden
(``hide_outputs``, as ``convert`` does) and they are timed interleaved in one
process, the same ONNX Runtime options for both: batch 1 at each sequence
length, and batch 32 of mixed lengths (rows 25-100% of the length, right-padded).

Writes graphs/exporters.json and prints the tables.

``--families`` answers the other question, whether the route is open on every
family: tiny random checkpoints (the test suite's, ``tests/tiny.py``) of
BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT and T5 (classification) and of
GPT-2 and Llama (the pruned prompt pass of text generation, with its cache
outputs and the decoder prompt rule), each exported through torch.export and
compared output by output with the eager model on a padded batch at 1.0, 0.5
and 0.1.  Two more patches: T5's ``select_tokens_and_bias`` reads its widest
count by ``.item()`` too, and ``int`` in ``latexport.export.selection`` passes
a size through.  Writes graphs/exporters-families.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch

from latexport.export import model as model_module
from latexport.export import selection
from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import OPSET, build_model
from latexport.export.model import ExportWrapper
from latexport.export.passes import hide_outputs
from latexport.export.selection import drop_tokens, keeps_everything, relative_position_bias
from latexport.export.tracing import trace
from latexport.runtime.atomic import write_text_atomic
from latexport.runtime.timing import interleaved, session_options

from speed_bert_base import bert_base_checkpoint

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
RATIOS = (1.0, 0.7, 0.5, 0.3, 0.1)
INPUTS = ["input_ids", "attention_mask", "token_type_ids", "keep_ratio"]
#: What "matches eager" means here, as for ``convert``'s validation at 1.0.
TOLERANCE = 1e-4


def real_tokens_first_for_torch_export(valid: torch.Tensor) -> torch.Tensor:
    """``selection.real_tokens_first`` with a subtraction where it takes a remainder."""
    width = valid.shape[1]
    columns = torch.arange(width, dtype=torch.int64, device=valid.device).unsqueeze(0)
    order_key = torch.where(valid, columns, columns + width)
    values = torch.topk(order_key, width, dim=1, largest=False).values
    return torch.where(values >= width, values - width, values)


def select_tokens_for_torch_export(use_cond: bool):
    """``selection.select_tokens`` with the widest keep count as an unbacked size."""

    def select(probs, valid, always_keep, keep, residual, mixed, positions, causal=False, last_queries=0, sinks=0,
               recent=0, valid_lengths=None, span_before=0, span_after=0, copy_source=None):
        widest = keep.max()

        def dropping(probs, valid, always_keep, keep, residual, mixed, positions, widest):
            width = widest.item()
            torch._check(width >= 1)
            torch._check(width <= valid.shape[1])
            residual, mixed, kept_valid, positions, _ = drop_tokens(
                probs, valid, always_keep, keep, residual, mixed, positions, width, causal, last_queries, sinks,
                recent, valid_lengths, span_before, span_after, copy_source,
            )
            return residual, mixed, kept_valid, positions

        def keeping(probs, valid, always_keep, keep, residual, mixed, positions, widest):
            return residual.clone(), mixed.clone(), valid.clone(), positions.clone()

        operands = (probs, valid, always_keep, keep, residual, mixed, positions, widest)
        if use_cond:
            return torch.cond(keeps_everything(valid, keep, widest), keeping, dropping, operands)
        return dropping(*operands)

    return select


def select_tokens_and_bias_for_torch_export(probs, valid, always_keep, keep, residual, mixed, positions, bias,
                                            distance_table):
    """``selection.select_tokens_and_bias`` (T5) with the widest keep count as an unbacked size."""
    width = keep.max().item()
    torch._check(width >= 1)
    torch._check(width <= valid.shape[1])
    residual, mixed, kept_valid, positions, _ = drop_tokens(
        probs, valid, always_keep, keep, residual, mixed, positions, width
    )
    return residual, mixed, kept_valid, positions, relative_position_bias(distance_table, positions, kept_valid)


def example_args(width: int = 16) -> tuple:
    input_ids = torch.full((2, width), 5, dtype=torch.int64)
    attention_mask = torch.ones((2, width), dtype=torch.int64)
    attention_mask[1, width // 2 :] = 0
    return input_ids, attention_mask, torch.zeros((2, width), dtype=torch.int64), torch.tensor(0.5)


def export_torchscript(wrapper, path: Path, taps: list[str]) -> float:
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS[:3]}
    axes["logits"] = {0: "batch"}
    axes.update({tap: {0: "batch", 1: f"kept_{layer}"} for layer, tap in enumerate(taps)})
    start = time.perf_counter()
    traced = trace(wrapper, example_args(), path, INPUTS, ["logits", *taps], axes, OPSET)
    seconds = time.perf_counter() - start
    traced.path.rename(path)
    return seconds


def export_torch_export(wrapper, path: Path, taps: list[str], use_cond: bool) -> float:
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", min=2)
    dims = {0: batch, 1: sequence}
    start = time.perf_counter()
    with mock.patch.object(model_module, "select_tokens", select_tokens_for_torch_export(use_cond)), \
            mock.patch.object(model_module, "real_tokens_first", real_tokens_first_for_torch_export), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, example_args(), str(path), dynamo=True, input_names=INPUTS, output_names=["logits", *taps],
            dynamic_shapes=(dims, dims, (dims, None)), opset_version=18, verbose=False,
        )
    return time.perf_counter() - start


def feeds(batch: int, length: int, vocab: int, seed: int = 0, low: int = 1000) -> dict[str, np.ndarray]:
    """Rows of 25-100% of ``length`` real tokens, right-padded (batch 1: one full row)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, vocab, (batch, length)).astype(np.int64)
    lengths = [length] if batch == 1 else rng.integers(length // 4, length + 1, batch)
    mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def check(path: Path, lat) -> float:
    """Largest logit difference from the eager model over padded batches and ratios;
    raises if it exceeds ``TOLERANCE`` or any kept position differs."""
    session = ort.InferenceSession(str(path), session_options(2))
    eager = ExportWrapper(lat, True, True).eval()
    batch = feeds(4, 48, 30000, seed=1)
    left = {name: np.roll(value, 48 - int(batch["attention_mask"][3].sum()), axis=1)[3:] for name, value in batch.items()}
    worst = 0.0
    for feed in (batch, left, feeds(1, 40, 30000, seed=2)):
        for ratio in RATIOS:
            outputs = session.run(None, {**feed, "keep_ratio": np.array(ratio, dtype=np.float32)})
            with torch.no_grad():
                expected = eager(*(torch.from_numpy(feed[name]) for name in INPUTS[:3]), torch.tensor(ratio))
            worst = max(worst, float(np.abs(outputs[0] - expected[0].numpy()).max()))
            for layer, (got, want) in enumerate(zip(outputs[1:], expected[1:])):
                if got.shape != tuple(want.shape) or (got != want.numpy()).any():
                    raise AssertionError(f"{path.name}: layer {layer} keeps other positions at {ratio}")
    if worst > TOLERANCE:
        raise AssertionError(f"{path.name}: logits {worst:.2e} from eager")
    return worst


def production_copy(path: Path, taps: list[str]) -> Path:
    model = ir.load(str(path))
    hide_outputs(model, taps)
    target = path.with_name(path.stem + "-served.onnx")
    ir.save(model, str(target))
    return target


def family_sweep() -> dict:
    """Export every family's tiny checkpoint through torch.export; compare every output with eager."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny import make_checkpoint, make_decoder_checkpoint, make_t5_checkpoint

    from latexport.export.decoding import PrefillWrapper

    folder = Path(tempfile.mkdtemp(prefix="latexport-exporter-families-"))
    makers = {name: (lambda d, n=name: make_checkpoint(d, n), "text-classification")
              for name in ("bert", "roberta", "xlm-roberta", "electra", "distilbert")}
    makers["t5"] = (lambda d: make_t5_checkpoint(d, task="text-classification"), "text-classification")
    makers.update({name: (lambda d, n=name: make_decoder_checkpoint(d, n), "text-generation") for name in ("gpt2", "llama")})
    results = {}
    for name, (make, task) in makers.items():
        loaded = load_checkpoint(str(make(folder / name)), task=task)
        lat = build_model(loaded)
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", min=2)
        dims = {0: batch, 1: sequence}
        with_types = "token_type_ids" in token_inputs(loaded)
        if task == "text-generation":
            wrapper, shapes = PrefillWrapper(lat).eval(), (dims, dims, None)
        elif with_types:
            wrapper, shapes = ExportWrapper(lat, True, True).eval(), (dims, dims, (dims, None))
        else:
            wrapper, shapes = ThreeInputs(ExportWrapper(lat, False, True)).eval(), (dims, dims, None)
        args = example_args()
        args = args if with_types else (args[0], args[1], args[3])
        names = INPUTS if with_types else [INPUTS[0], INPUTS[1], INPUTS[3]]
        path = folder / f"{name}.onnx"
        try:
            start = time.perf_counter()
            with mock.patch.object(model_module, "select_tokens", select_tokens_for_torch_export(False)), \
                    mock.patch.object(model_module, "real_tokens_first", real_tokens_first_for_torch_export), \
                    mock.patch.object(model_module, "select_tokens_and_bias", select_tokens_and_bias_for_torch_export), \
                    mock.patch.object(selection, "int", lambda size: size, create=True), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, args, str(path), dynamo=True, input_names=names, dynamic_shapes=shapes,
                                  opset_version=18, verbose=False)
            seconds = time.perf_counter() - start
        except Exception as error:  # the refusal is the finding
            root = error
            while root.__cause__ is not None:
                root = root.__cause__
            results[name] = {"exported": False, "why": f"{type(root).__name__}: {str(root).strip()}"[:400]}
            print(name, "refused", flush=True)
            continue
        session = ort.InferenceSession(str(path), session_options(2))
        feed = feeds(3, 24, int(loaded.config.vocab_size) - 1, seed=3, low=5)
        feed = {key: value for key, value in feed.items() if key in names}
        worst, same_shapes = 0.0, True
        for ratio in (1.0, 0.5, 0.1):
            got = session.run(None, {**feed, "keep_ratio": np.array(ratio, dtype=np.float32)})
            with torch.no_grad():
                want = wrapper(*(torch.from_numpy(feed[key]) for key in names[:-1]), torch.tensor(ratio))
            want = want if isinstance(want, (tuple, list)) else (want,)
            for g, w in zip(got, want):
                w = w.numpy()
                same_shapes &= g.shape == w.shape
                if g.shape == w.shape:
                    worst = max(worst, float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()))
        results[name] = {"exported": True, "seconds": seconds, "outputs": len(got), "same_shapes": bool(same_shapes),
                         "max_abs_diff": worst, "matches": bool(same_shapes and worst <= TOLERANCE)}
        print(name, results[name], flush=True)
    return results


class ThreeInputs(torch.nn.Module):
    """``ExportWrapper`` without token types, with its signature spelled out for torch.export's shapes."""

    def __init__(self, wrapper: ExportWrapper):
        super().__init__()
        self.wrapper = wrapper

    def forward(self, input_ids, attention_mask, keep_ratio):
        return self.wrapper(input_ids, attention_mask, keep_ratio)


def token_inputs(loaded) -> list[str]:
    return ["input_ids", "attention_mask", *(["token_type_ids"] if loaded.family.uses_token_type_ids(loaded.config) else [])]


def main() -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise SystemExit("torch.export's ONNX translation needs onnxscript: pip install onnxscript")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", default="128,512")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", action="store_true", help="tiny checkpoints of every family, parity only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.families:
        results = family_sweep()
        write_text_atomic(GRAPHS / "exporters-families.json", json.dumps({"torch": torch.__version__, **results}, indent=1))
        return
    loaded = load_checkpoint(str(bert_base_checkpoint()), task="text-classification")
    lat = build_model(loaded, power=1.0)
    taps = [f"kept_positions.{layer}" for layer in range(len(lat.exponents))]
    wrapper = ExportWrapper(lat, True, True).eval()
    report: dict = {"torch": torch.__version__, "onnxruntime": ort.__version__, "export_seconds": {}, "max_abs_diff": {},
                    "refused": {}, "median_ms": {}}
    folder = Path(tempfile.mkdtemp(prefix="latexport-exporters-"))
    files = {}
    report["export_seconds"]["torchscript"] = export_torchscript(wrapper, folder / "torchscript.onnx", taps)
    files["torchscript"] = folder / "torchscript.onnx"
    try:
        report["export_seconds"]["torch.export+cond"] = export_torch_export(wrapper, folder / "cond.onnx", taps, True)
        files["torch.export+cond"] = folder / "cond.onnx"
    except Exception as error:  # the refusal is the finding, recorded as it is
        report["refused"]["torch.export+cond"] = traceback.format_exception_only(error)[-1].strip()[:400]
    report["export_seconds"]["torch.export"] = export_torch_export(wrapper, folder / "plain.onnx", taps, False)
    files["torch.export"] = folder / "plain.onnx"
    for name, path in files.items():
        report["max_abs_diff"][name] = check(path, lat)
    served = {name: ort.InferenceSession(str(production_copy(path, taps)), session_options(args.threads))
              for name, path in files.items()}
    vocab = int(loaded.config.vocab_size)
    shapes = [(1, int(n)) for n in args.seq_lens.split(",")] + [(32, int(n)) for n in args.seq_lens.split(",")]
    for batch, length in shapes:
        feed = feeds(batch, length, vocab)
        calls = {f"{name}|{ratio:g}": (lambda s=session, r=ratio: s.run(None, {**feed, "keep_ratio": np.array(r, np.float32)}))
                 for name, session in served.items() for ratio in RATIOS}
        times = interleaved(calls, args.repeats if batch == 1 else args.batch_repeats, 1)
        report["median_ms"][f"{batch}x{length}"] = {key: float(np.median(value)) * 1e3 for key, value in times.items()}
        print(f"timed batch {batch} x {length}", flush=True)
    write_text_atomic(GRAPHS / "exporters.json", json.dumps(report, indent=1))
    print(render(report, list(files)))


def render(report: dict, names: list[str]) -> str:
    lines = [f"torch {report['torch']}, onnxruntime {report['onnxruntime']}", "", "export seconds (BERT-base, taps included):"]
    lines += [f"  {name:<18} {seconds:7.1f}" for name, seconds in report["export_seconds"].items()]
    lines += [f"  {name:<18} refused: {why}" for name, why in report["refused"].items()]
    lines += ["", "largest logit difference from eager (kept positions equal in every layer):"]
    lines += [f"  {name:<18} {diff:.2e}" for name, diff in report["max_abs_diff"].items()]
    for shape, medians in report["median_ms"].items():
        lines += ["", f"batch x tokens {shape}: median ms (torch.export / torchscript)"]
        lines.append(f"  {'ratio':>6} " + " ".join(f"{name:>18}" for name in names) + f" {'ratio of times':>15}")
        for ratio in RATIOS:
            row = [medians[f"{name}|{ratio:g}"] for name in names]
            lines.append(f"  {ratio:>6g} " + " ".join(f"{value:>18.1f}" for value in row)
                         + f" {medians[f'torch.export|{ratio:g}'] / medians[f'torchscript|{ratio:g}']:>14.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

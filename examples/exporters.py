"""The exporter, weighed: TorchScript (``convert``'s default) against torch.export, on BERT-base.

    python examples/exporters.py [--seq-lens 128,512] [--repeats 7] [--threads 2]
    python examples/exporters.py --families     # every family through `convert --exporter torch-export` (tiny models)
    python examples/exporters.py --decoder      # SmolLM2-135M's prompt pass, both exporters, at 1,024 tokens

PyTorch has deprecated the TorchScript exporter (``torch.onnx.export(...,
dynamo=False)``) and ``torch.jit.script`` in favour of ``torch.export``
(``dynamo=True``).  latexport's graph needs two things of an exporter: every
layer's keep count stays a tensor (TopK's k, the gathers' widths), and a layer
that keeps everything skips scoring and gathers (an ONNX ``If``; TorchScript
gets it from the scripted ``select_tokens_for_export``).  torch.export carries
the keep count as an unbacked size (``selection.select_tokens_unbacked``) and
has no skip: it refuses the ``If`` as ``torch.cond``, whose branches return
different widths.

This script exports one BERT-base-shaped model (random weights, as in
``speed_bert_base.py``; power 1) both ways from the same
``LatencyAdjustableModel``, through ``latexport.export.tracing.trace`` with
each ``exporter``, as ``convert --exporter`` does.  Both files are checked
against the eager model (logits within 1e-4, the same kept positions in every
layer) on a padded batch, left- and right-padded rows, at every timed ratio;
then their kept-positions taps are hidden (``hide_outputs``, as ``convert``
does) and they are timed interleaved in one process, the same ONNX Runtime
options for both: batch 1 at each sequence length, and batch 32 of mixed
lengths (rows 25-100% of the length, right-padded).

Writes graphs/exporters.json and prints the tables.

``--families`` answers the other question, whether the route is open on every
family: ``convert(..., exporter="torch-export")`` on tiny random checkpoints
(the test suite's, ``tests/tiny.py``) of BERT, RoBERTa, XLM-R, ELECTRA and
DistilBERT (classification), T5 (classification, and text2text with its two
decoder graphs) and GPT-2 and Llama (text generation: the prompt pass and the
decode step), each validated as ``convert`` always validates.  Writes
graphs/exporters-families.json.

``--decoder`` converts the real SmolLM2-135M (``latexport.assets``) both ways
with ``convert`` (each validated) and times the prompt pass (``model.onnx``) on
one 1,024-token prompt of real text, ratios interleaved across both files.
Writes graphs/exporters-decoder.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch

from latexport.export.checkpoint import load_checkpoint
from latexport.export.conversion import OPSET, build_model, convert
from latexport.export.model import ExportWrapper
from latexport.export.passes import hide_outputs
from latexport.export.tracing import TORCH_EXPORT, TORCHSCRIPT, trace
from latexport.runtime.atomic import write_text_atomic
from latexport.runtime.timing import interleaved, session_options

from speed_bert_base import bert_base_checkpoint

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
RATIOS = (1.0, 0.7, 0.5, 0.3, 0.1)
INPUTS = ["input_ids", "attention_mask", "token_type_ids", "keep_ratio"]
#: What "matches eager" means here, as for ``convert``'s validation at 1.0.
TOLERANCE = 1e-4


def example_args(width: int = 16) -> tuple:
    input_ids = torch.full((2, width), 5, dtype=torch.int64)
    attention_mask = torch.ones((2, width), dtype=torch.int64)
    attention_mask[1, width // 2 :] = 0
    return input_ids, attention_mask, torch.zeros((2, width), dtype=torch.int64), torch.tensor(0.5)


def export_with(exporter: str, wrapper, path: Path, taps: list[str]) -> float:
    """Seconds to export ``wrapper`` into ``path`` with ``exporter`` (``latexport.export.tracing``)."""
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS[:3]}
    axes["logits"] = {0: "batch"}
    axes.update({tap: {0: "batch", 1: f"kept_{layer}"} for layer, tap in enumerate(taps)})
    start = time.perf_counter()
    traced = trace(wrapper, example_args(), path, INPUTS, ["logits", *taps], axes, OPSET, exporter)
    seconds = time.perf_counter() - start
    traced.path.rename(path)
    return seconds


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
    """``convert --exporter torch-export`` on every family's tiny checkpoint: exported, validated, how far from the references."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny import make_checkpoint, make_decoder_checkpoint, make_t5_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="latexport-exporter-families-"))
    makers = {name: lambda d, n=name: make_checkpoint(d, n) for name in ("bert", "roberta", "xlm-roberta", "electra", "distilbert")}
    makers["t5 (classification)"] = lambda d: make_t5_checkpoint(d, task="text-classification")
    makers["t5 (text2text)"] = lambda d: make_t5_checkpoint(d)
    makers.update({f"{name} (generation)": lambda d, n=name: make_decoder_checkpoint(d, n) for name in ("gpt2", "llama")})
    results = {}
    for index, (name, make) in enumerate(makers.items()):
        checkpoint = make(folder / f"checkpoint-{index}")
        start = time.perf_counter()
        try:
            converted = convert(str(checkpoint), folder / f"onnx-{index}", exporter="torch-export")
        except Exception as error:  # a refusal is the finding, recorded as it is
            results[name] = {"exported": False, "why": traceback.format_exception_only(error)[-1].strip()[:400]}
        else:
            checks = converted.report.checks
            results[name] = {
                "exported": True, "validated": converted.report.passed, "seconds": time.perf_counter() - start,
                "checks": len(checks), "references": sorted({check.reference for check in checks}),
                "largest_float_difference": max(check.max_abs_diff for check in checks if not check.reference.endswith("greedy")),
            }
        print(name, results[name], flush=True)
    return results


DECODER_RATIOS = (1.0, 0.5, 0.3, 0.2, 0.1)


def decoder_sweep(repeats: int, threads: int) -> dict:
    """Prompt-pass medians of SmolLM2-135M converted by each exporter, interleaved in one process."""
    from transformers import AutoTokenizer

    from latexport.assets import cache_dir, smollm2_checkpoint
    from latexport.training.corpora import austen_novels

    checkpoint = smollm2_checkpoint()
    report: dict = {"torch": torch.__version__, "onnxruntime": ort.__version__, "prompt_tokens": 1024,
                    "export_seconds": {}, "median_ms": {}}
    sessions = {}
    for exporter in (TORCHSCRIPT, TORCH_EXPORT):
        start = time.perf_counter()
        converted = convert(str(checkpoint), cache_dir() / f"exporters-smollm2-{exporter}", exporter=exporter, overwrite=True)
        report["export_seconds"][exporter] = time.perf_counter() - start
        assert converted.report.passed
        sessions[exporter] = ort.InferenceSession(str(converted.out_dir / "model.onnx"), session_options(threads))
        print(exporter, f"converted and validated in {report['export_seconds'][exporter]:.0f} s", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    text = sorted(austen_novels().items())[0][1]
    ids = np.array([tokenizer.encode(text[:20000], add_special_tokens=False)[:1024]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    calls = {f"{name}|{ratio:g}": (lambda s=session, r=ratio: s.run(None, {**feed, "keep_ratio": np.array(r, np.float32)}))
             for name, session in sessions.items() for ratio in DECODER_RATIOS}
    times = interleaved(calls, repeats, 1)
    report["median_ms"] = {key: float(np.median(value)) * 1e3 for key, value in times.items()}
    print(f"{'ratio':>6} {'torchscript ms':>15} {'torch-export ms':>16} {'ratio of times':>15}")
    for ratio in DECODER_RATIOS:
        traced, exported = report["median_ms"][f"{TORCHSCRIPT}|{ratio:g}"], report["median_ms"][f"{TORCH_EXPORT}|{ratio:g}"]
        print(f"{ratio:>6g} {traced:>15.1f} {exported:>16.1f} {exported / traced:>14.2f}x")
    return report


def main() -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise SystemExit("torch.export's ONNX translation needs onnxscript: pip install 'latexport[torch-export]'")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", default="128,512")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", action="store_true", help="tiny checkpoints of every family, parity only")
    parser.add_argument("--decoder", action="store_true", help="SmolLM2-135M's prompt pass at 1,024 tokens")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.decoder:
        write_text_atomic(GRAPHS / "exporters-decoder.json", json.dumps(decoder_sweep(args.repeats, args.threads), indent=1))
        return
    if args.families:
        results = family_sweep()
        write_text_atomic(GRAPHS / "exporters-families.json", json.dumps({"torch": torch.__version__, **results}, indent=1))
        return
    loaded = load_checkpoint(str(bert_base_checkpoint()), task="text-classification")
    lat = build_model(loaded, power=1.0)
    taps = [f"kept_positions.{layer}" for layer in range(len(lat.exponents))]
    wrapper = ExportWrapper(lat, True, True).eval()
    report: dict = {"torch": torch.__version__, "onnxruntime": ort.__version__, "export_seconds": {}, "max_abs_diff": {},
                    "median_ms": {}}
    folder = Path(tempfile.mkdtemp(prefix="latexport-exporters-"))
    files = {}
    for name, exporter in (("torchscript", TORCHSCRIPT), ("torch.export", TORCH_EXPORT)):
        files[name] = folder / f"{exporter}.onnx"
        report["export_seconds"][name] = export_with(exporter, wrapper, files[name], taps)
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

"""The CUDA checks, as one script for a machine with an NVIDIA GPU and onnxruntime-gpu.

    pip uninstall -y onnxruntime && pip install -e ".[export,bench,gpu]"
    python examples/cuda_check.py [--repeats 20]

On a BERT-base-shaped model (random weights; speed does not depend on them):

1. parity at keep_ratio 1.0: the CUDA execution provider against transformers,
   float32 (``convert``) and float16 (``convert --optimize cuda --fp16``);
2. the kept word-vectors on CUDA equal those on CPU at lower ratios;
3. the speedup curve at batch 1 and 32, sequence 128 and 512, against optimum's
   plain export on CUDA, interleaved in one process.  The runtime session
   uses IO binding on CUDA.

Writes graphs/cuda-bert-base-b{batch}-s{seq}.json/.png and prints the tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_bert_base import GRAPHS, bert_base_checkpoint  # noqa: E402

from latexport.assets import cache_dir  # noqa: E402
from latexport.bench.encoder import bench, plot, render  # noqa: E402
from latexport.export import convert  # noqa: E402
from latexport.export.checkpoint import load_checkpoint  # noqa: E402
from latexport.export.passes import with_int64_outputs  # noqa: E402
from latexport.runtime import LatencyAdjustableSession  # noqa: E402
from latexport.runtime.atomic import write_text_atomic  # noqa: E402
from latexport.runtime.timing import make_feed  # noqa: E402

RATIOS = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SystemExit("no CUDA execution provider here: install onnxruntime-gpu on a machine with an NVIDIA GPU")

    checkpoint = bert_base_checkpoint()
    fp32 = convert(str(checkpoint), cache_dir() / "bert-base-cuda-fp32", overwrite=True)
    fp16 = convert(str(checkpoint), cache_dir() / "bert-base-cuda-fp16", overwrite=True, optimize="cuda", fp16=True)
    print(fp16.variant_report.render())

    loaded = load_checkpoint(str(checkpoint))
    feed = make_feed(fp32.metadata, batch=4, seq_len=256, mixed_lengths=True)
    with torch.no_grad():
        reference = loaded.model(**{name: torch.from_numpy(value) for name, value in feed.items()}).logits.numpy()
    for result in (fp32, fp16):
        session = LatencyAdjustableSession(result.out_dir, provider="cuda")
        got = session.run(feed, keep_ratio=1.0)
        print(f"parity at 1.0 on CUDA, {'+'.join(result.metadata.optimizations) or 'float32'}: "
              f"max |logits - transformers| = {np.max(np.abs(got - reference)):.2e}")

    taps = fp32.metadata.kept_positions_taps
    graph = with_int64_outputs(fp32.out_dir / "model.onnx", taps)
    cpu = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    cuda = ort.InferenceSession(graph, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    for ratio in (0.5, 0.2, 0.05):
        ratio_feed = {**feed, "keep_ratio": np.array(ratio, dtype=np.float32)}
        same = [np.array_equal(a, b) for a, b in zip(cpu.run(taps, ratio_feed), cuda.run(taps, ratio_feed))]
        print(f"keep_ratio {ratio}: CUDA keeps the same word-vectors as CPU in {sum(same)}/{len(same)} layers")

    GRAPHS.mkdir(exist_ok=True)
    for batch in (1, 32):
        for seq_len in (128, 512):
            result = bench(
                fp32.out_dir, seq_len=seq_len, batch=batch, keep_ratios=RATIOS, provider="cuda", baselines=("optimum",),
                compare=(fp16.out_dir,), repeats=args.repeats, memory=False,
            )
            print(render(result) + "\n")
            stem = f"cuda-bert-base-b{batch}-s{seq_len}"
            write_text_atomic(GRAPHS / f"{stem}.json", result.to_json())
            plot(result, GRAPHS / f"{stem}.png", title=f"BERT-base shape, CUDA, batch {batch}, sequence {seq_len}")


if __name__ == "__main__":
    main()

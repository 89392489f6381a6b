"""Prompt-pass speed of a Qwen2.5-0.5B-shaped decoder with sliding windows, random weights.

    python examples/speed_qwen_window.py [--seq-len 1024] [--window 256] [--repeats 5]

No Qwen, Mistral, Phi-3 or Gemma weights ship in a registry package, so this
measures what the new decoder families cost and save, not what they keep. The
model has Qwen2.5-0.5B's shape: 24 layers, hidden 896, 14 query heads and 2
key/value heads, feed-forward 4,864, q/k/v biases, tied embeddings. It uses
SmolLM2's tokenizer and vocabulary (49,152), because the prompt pass computes
logits for the last token only. The upper 12 layers slide with a ``--window``
token window, as Qwen2's ``use_sliding_window`` would make them, so the
window masks built from original positions are part of what is timed.

It converts the model (validation included), then runs ``latexport bench``.
That command times the prompt pass at each ratio interleaved and reports
medians, the speedup over 1.0, the FLOPs estimate, and time to first token.
The results go to graphs/bench-qwen-window-b1-sSEQ.json and .png. There is no
plain-export baseline: ``torch.onnx`` failed to trace transformers' own
sliding-window mask code for this Qwen2 ("unordered_map::at", transformers
4.57, torch 2.13); optimum was not tried.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from latexport.assets import cache_dir, smollm2_checkpoint

REPO = Path(__file__).resolve().parents[1]


def make_checkpoint(target: Path, window: int) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(smollm2_checkpoint())
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
        use_sliding_window=True, sliding_window=window, max_window_layers=12,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep-ratios", default="1,0.5,0.3,0.15")
    arguments = parser.parse_args()
    checkpoint = make_checkpoint(cache_dir() / f"qwen2.5-0.5b-shape-window{arguments.window}", arguments.window)
    out_dir = cache_dir() / "qwen-window"
    if not (out_dir / "model.onnx").is_file():
        from latexport.export import convert

        result = convert(str(checkpoint), out_dir, overwrite=True)
        print(result.report.render())
    command = [
        sys.executable, "-m", "latexport.cli", "bench", str(out_dir), "--seq-len", str(arguments.seq_len),
        "--keep-ratios", arguments.keep_ratios, "--repeats", str(arguments.repeats), "--no-memory",
        "--new-tokens", "8", "--threads", "2", "--graphs", str(REPO / "graphs"),
    ]
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()

"""Regenerate everything in graphs/, one benchmark after the other (about 2.5 hours on 2 cores).

    python examples/regenerate_graphs.py

Runs, in order: the fine-tuning benchmark (accuracy against keep_ratio on real
text), the int8 accuracy check that reuses its checkpoints, the BERT-base
and T5-base speed benchmarks, SmolLM2 perplexity against time to first token,
and the latency-budget benchmark (calibration, budgets, and
the HTTP service under load).  Run it on an otherwise idle machine: the speed figures are
measured, and anything else running skews them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = (
    "finetune_benchmark.py",
    "int8_accuracy.py",
    "speed_bert_base.py",
    "speed_t5_base.py",
    "smollm2_austen.py",
    "long_prompts.py",
    "latency_budget.py",
)


def main() -> None:
    here = Path(__file__).resolve().parent
    started = time.perf_counter()
    for script in SCRIPTS:
        print(f"== {script} ==", flush=True)
        subprocess.run([sys.executable, str(here / script)], check=True)
    print(f"graphs/ regenerated in {(time.perf_counter() - started) / 60:.0f} minutes")


if __name__ == "__main__":
    main()

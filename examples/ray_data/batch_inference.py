"""Bulk offline jobs with Ray Data: classify or embed every text of a dataset into Parquet.

    latexport convert CHECKPOINT -o out/sst2
    python examples/ray_data/batch_inference.py out/sst2 texts.txt -o out/sst2-labels --keep-ratio 0.5
    python examples/ray_data/batch_inference.py out/sst2 reviews.parquet -o out/budgeted --target-ms 200 \\
        --keep-column id --workers 4 --threads 2 --address auto        # a budget per batch, on a cluster

The input is a text file (one text per line) or Parquet (a file or a directory
of them, ``--text-column``); blank lines and null or blank texts are skipped.  Ray Data reads it in blocks,
``map_batches`` hands batches to a fixed pool of actors (``--workers``), each
holding ONE ``LatencyAdjustableSession`` loaded once, and the results are
written as Parquet: the text, ``label``/``score``/``logits`` for a
classification directory (``value``/``logits`` for regression) or
``embedding`` for a feature-extraction one, and the ``keep_ratio`` each row
ran at.  The output directory appears only when the job has finished: Parquet
is written into a hidden sibling folder and renamed into place
(``latexport.runtime.atomic``), so a reader never sees half a result.

Actors run in other processes, possibly on other machines: ``RUNTIME_ENV``
ships this directory to them (so they import this module), and each opens the
model directory itself, so it must be readable at the same path on every node.
README.md in this directory has the measured throughput and the cluster steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from latexport.runtime.atomic import atomic_directory, check_target_free
from latexport.runtime.errors import LatexportError
from latexport.runtime.session import (
    LatencyAdjustableSession,
    check_keep_ratio,
    check_target_ms,
)

RAY_DATA_DIR = Path(__file__).resolve().parent
#: Pass to ``ray.init(runtime_env=...)``: Ray uploads this directory and makes it
#: every worker's working directory, so the actors can import ``ModelWorker``
#: from this module on any node.  latexport itself must be installed on each node.
RUNTIME_ENV = {"working_dir": str(RAY_DATA_DIR), "excludes": ["__pycache__", "README.md"]}
#: What a model directory may do: ``predict`` runs the first, ``embed`` the second.
TASKS = ("text-classification", "feature-extraction")
RESULT_COLUMNS = ("label", "score", "value", "logits", "embedding", "keep_ratio")
#: CPUs Ray reserves for each read and write task.  Reading lines or Parquet and
#: writing Parquet is light next to the model; at Ray's default of one CPU, the
#: reads waited forever behind actors that had reserved every CPU (2 workers x 1
#: thread on 2 cores), so they reserve none and Ray Data's backpressure bounds them.
#: Ray 2.60 lists Parquet files in a task of one CPU that cannot be lowered, so a
#: Parquet job still needs one CPU beyond the workers' (``local_ray_options``
#: gives a local instance that CPU; ``spare_cpu_warning`` says when a cluster lacks it).
IO_CPUS = 0


@dataclass
class JobResult:
    output_dir: Path
    task: str
    rows: int
    seconds: float
    #: The smallest, median and largest keep_ratio the rows ran at (one value unless ``target_ms``).
    keep_ratios: tuple[float, float, float]

    @property
    def texts_per_s(self) -> float:
        return self.rows / self.seconds


class ModelWorker:
    """One per actor: the session is loaded once and runs every batch Ray Data hands this actor."""

    def __init__(self, model_dir: str, keep_ratio: Optional[float], target_ms: Optional[float],
                 intra_op_threads: int, text_column: str):
        # Long texts are cut to the model's maximum, as every classifier does; one warning per batch would flood the logs.
        self.session = LatencyAdjustableSession(model_dir, intra_op_threads=intra_op_threads, truncation="silent")
        self.keep_ratio, self.target_ms, self.text_column = keep_ratio, target_ms, text_column
        # One call before the first batch warms the session up and gives the result columns of a batch with no text.
        self.no_results = self.results(["warm-up"]).slice(0, 0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        # As read_text skips blank lines, a null, empty or blank text has nothing to run: its row is skipped.
        batch = batch.filter(pc.not_equal(pc.utf8_trim_whitespace(batch.column(self.text_column)), ""))
        results = self.results(batch.column(self.text_column).to_pylist()) if batch.num_rows else self.no_results
        for field, values in zip(results.schema, results.columns):
            batch = batch.append_column(field, values)
        return batch

    def results(self, texts: list[str]) -> pa.Table:
        """The result columns of ``texts``: label, score and logits (value and logits for
        regression) or embedding, then the keep_ratio each ran at."""
        if self.session.metadata.task == "feature-extraction":
            embeddings, keep_ratio = self.embed(texts)
            columns = {"embedding": vectors_column(embeddings)}
        else:
            prediction = self.session.predict(texts, keep_ratio=self.keep_ratio, target_ms=self.target_ms)
            keep_ratio = prediction.keep_ratio
            if prediction.labels is None:  # regression: one value per text
                columns = {"value": pa.array(prediction.values, pa.float32())}
            else:
                columns = {"label": pa.array(prediction.labels, pa.string()),
                           "score": pa.array(prediction.scores.max(axis=1), pa.float32())}
            columns["logits"] = vectors_column(prediction.logits)
        columns["keep_ratio"] = pa.array(np.broadcast_to(np.asarray(keep_ratio, np.float32), len(texts)))
        return pa.table(columns)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, float]:
        """``session.embed``, or, with a budget, the largest ratio predicted to fit it (as ``predict`` chooses)."""
        if self.target_ms is None:
            keep_ratio = float(check_keep_ratio(self.keep_ratio, self.session.default_keep_ratio))
            return self.session.embed(texts, keep_ratio=keep_ratio), keep_ratio
        started = time.perf_counter()
        feed = self.session.encode(texts)
        keep_ratio, _ = self.session.keep_ratio_for_budget(feed, self.target_ms,
                                                          spent_ms=(time.perf_counter() - started) * 1000)
        return self.session.run(feed, keep_ratio), keep_ratio


def vectors_column(rows: np.ndarray) -> pa.FixedSizeListArray:
    """A [batch, width] float array as one fixed-size list per row (no copy into Python lists)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])


def check_job(model_dir: Path, input_path: str, output_dir: Path, keep_ratio: Optional[float],
              target_ms: Optional[float], threads: int, keep_columns: Sequence[str], overwrite: bool) -> str:
    """Everything that can be checked before Ray starts work; returns the directory's task.

    The model is opened once here too, so a missing directory, a generation
    model or a missing calibration is one clear error instead of failing actors.
    """
    if keep_ratio is not None and target_ms is not None:
        raise LatexportError("give --keep-ratio or --target-ms, not both")
    if keep_ratio is not None:
        check_keep_ratio(keep_ratio)
    if target_ms is not None:
        check_target_ms(target_ms)
    if "://" not in input_path:
        if not Path(input_path).exists():
            raise LatexportError(f"input {input_path} does not exist")
        if Path(input_path).is_file() and Path(input_path).stat().st_size == 0:
            raise LatexportError(f"input {input_path} is empty; nothing to run")
    if "://" in str(output_dir):
        raise LatexportError(f"output {output_dir} must be a filesystem path (shared storage on a cluster): "
                             "it is written beside its final place and renamed, which object stores cannot do")
    clashing = sorted(set(keep_columns) & set(RESULT_COLUMNS))
    if clashing:
        raise LatexportError(f"--keep-column {', '.join(clashing)} would clash with the result columns {RESULT_COLUMNS}")
    check_target_free(output_dir, overwrite)
    session = LatencyAdjustableSession(model_dir, intra_op_threads=threads)
    task = session.metadata.task
    if task not in TASKS:
        raise LatexportError(f"{model_dir} does {task}; this job runs text-classification or feature-extraction directories")
    if target_ms is not None:
        session.latency_model()  # raises, naming `latexport calibrate`, when the directory has no calibration
    return task


def is_parquet(input_path: str) -> bool:
    """A Parquet file or directory of them (by suffix or folder), else a text file with one text per line."""
    return Path(input_path).suffix == ".parquet" or ("://" not in input_path and Path(input_path).is_dir())


def spare_cpu_warning(input_path: str, workers: int, threads: int) -> Optional[str]:
    """Why the job would wait for a CPU the Ray instance does not have, or None."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    if not is_parquet(input_path) or workers * threads < cpus:
        return None
    return (f"Ray has {cpus:g} CPUs and {workers} workers x {threads} threads reserve {workers * threads}; listing the "
            "Parquet files needs one more, so the job waits until the cluster grows (or forever): use fewer workers")


def read_texts(input_path: str, text_column: str, keep_columns: Sequence[str]):
    import ray.data

    if is_parquet(input_path):
        return ray.data.read_parquet(input_path, num_cpus=IO_CPUS).select_columns([text_column, *keep_columns])
    if text_column != "text" or keep_columns:
        raise LatexportError("a text file has only the `text` column; --text-column and --keep-column need Parquet")
    return ray.data.read_text(input_path, num_cpus=IO_CPUS)  # skips blank lines


def run_job(
    model_dir: Union[str, Path],
    input_path: Union[str, Path],
    output_dir: Union[str, Path],
    *,
    keep_ratio: Optional[float] = None,
    target_ms: Optional[float] = None,
    batch_size: int = 64,
    workers: int = 2,
    threads: int = 1,
    text_column: str = "text",
    keep_columns: Sequence[str] = (),
    overwrite: bool = False,
) -> JobResult:
    """Run the model directory over every text of ``input_path`` into Parquet at ``output_dir``.

    Ray must already be initialised (``ray.init(..., runtime_env=RUNTIME_ENV)``).
    Each batch of ``batch_size`` texts runs at ``keep_ratio``, at the largest
    ratio predicted to answer within ``target_ms`` (needs ``latexport
    calibrate``), or, with neither, at the directory's recorded default.
    ``workers`` actors each reserve and use ``threads`` CPUs.  Rows are written
    in no particular order: carry an id through ``keep_columns`` to join results
    back.  (Ray's ``preserve_order`` does not help: Ray 2.60 writes each file with
    pyarrow's ``write_dataset(use_threads=True)``, which does not keep row order
    within a file.)  Throughput is measured from the first read to the last
    write, actor start-up and model loading included.
    """
    import ray.data

    model_dir, output_dir = Path(model_dir).absolute(), Path(output_dir).absolute()
    # Actors start in the runtime_env's working directory, so a relative local input must be resolved here.
    input_path = str(input_path) if "://" in str(input_path) else str(Path(input_path).absolute())
    task = check_job(model_dir, input_path, output_dir, keep_ratio, target_ms, threads, keep_columns, overwrite)
    waiting = spare_cpu_warning(input_path, workers, threads)
    if waiting:
        warnings.warn(waiting, stacklevel=2)  # not an error: an autoscaling cluster adds the CPU
    started = time.perf_counter()
    with atomic_directory(output_dir, overwrite=overwrite) as scratch:
        texts = read_texts(input_path, text_column, keep_columns)
        results = texts.map_batches(
            ModelWorker,
            fn_constructor_kwargs={"model_dir": str(model_dir), "keep_ratio": keep_ratio, "target_ms": target_ms,
                                   "intra_op_threads": threads, "text_column": text_column},
            # A fixed pool of `workers` actors (Ray 2.51 deprecated map_batches' `concurrency=` for this).
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads,
            batch_size=batch_size, batch_format="pyarrow",
        )
        results.write_parquet(str(scratch), ray_remote_args={"num_cpus": IO_CPUS})
        seconds = time.perf_counter() - started
        ratios = written_keep_ratios(scratch)
        if ratios.size == 0:
            raise LatexportError(f"{input_path} holds no texts (only blank lines, or null or blank texts); nothing was written")
    return JobResult(output_dir, task, int(ratios.size), seconds,
                     (float(ratios.min()), float(np.median(ratios)), float(ratios.max())))


def written_keep_ratios(folder: Path) -> np.ndarray:
    """The keep_ratio column of every Parquet file Ray wrote into ``folder`` (none for an empty input)."""
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    if not files:
        return np.empty(0, np.float32)
    return np.concatenate([pq.read_table(file, columns=["keep_ratio"]).column("keep_ratio").to_numpy() for file in files])


def local_ray_options(workers: int, threads: int) -> dict:
    """``ray.init`` arguments for a new local instance: every core, and at least one CPU
    beyond the workers' reservation for Ray Data's own tasks (``IO_CPUS``)."""
    return {"address": "local", "num_cpus": max(os.cpu_count() or 1, workers * threads + 1),
            "include_dashboard": False, "runtime_env": RUNTIME_ENV}


def main(argv: Optional[Sequence[str]] = None) -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="A converted text-classification or feature-extraction directory.")
    parser.add_argument("input", help="A text file (one text per line) or Parquet file/directory (local, s3://, ...).")
    parser.add_argument("-o", "--output", type=Path, required=True, help="Directory of Parquet files to write.")
    ratio = parser.add_mutually_exclusive_group()
    ratio.add_argument("--keep-ratio", type=float, help="Run every batch at this ratio (default: the directory's).")
    ratio.add_argument("--target-ms", type=float,
                       help="Per-batch latency budget: the largest ratio predicted to fit (needs `latexport calibrate`).")
    parser.add_argument("--batch-size", type=int, default=64, help="Texts per model call.")
    parser.add_argument("--workers", type=int, default=2, help="Actors, each with its own session (the actor pool's size).")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per actor (and CPUs it reserves).")
    parser.add_argument("--text-column", default="text", help="Parquet input: the column holding the texts.")
    parser.add_argument("--keep-column", action="append", default=[], dest="keep_columns",
                        help="Parquet input: another column to copy into the output, e.g. an id (repeatable).")
    parser.add_argument("--overwrite", action="store_true", help="Replace the output directory once the new one is complete.")
    parser.add_argument("--address", default="local",
                        help="Ray to use: 'local' starts a new instance (default), 'auto' joins the cluster `ray start` "
                             "runs here, 'ray://HEAD:10001' connects to a remote cluster.")
    args = parser.parse_args(argv)

    if args.address == "local":
        ray.init(**local_ray_options(args.workers, args.threads))
    else:
        ray.init(address=args.address, runtime_env=RUNTIME_ENV)
    try:
        result = run_job(args.model_dir, args.input, args.output, keep_ratio=args.keep_ratio, target_ms=args.target_ms,
                         batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                         text_column=args.text_column, keep_columns=args.keep_columns, overwrite=args.overwrite)
    except LatexportError as error:
        sys.exit(f"error: {error}")
    finally:
        ray.shutdown()
    low, median, high = result.keep_ratios
    ratios = f"{median:g}" if low == high else f"{low:g} to {high:g} (median {median:g})"
    print(f"{result.rows} texts in {result.seconds:.1f} s: {result.texts_per_s:.1f} texts/s "
          f"({args.workers} workers, {args.threads} threads each, keep_ratio {ratios}) -> {result.output_dir}")


if __name__ == "__main__":
    main()

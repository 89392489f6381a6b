"""The ``latexport`` command line: a thin skin over the library functions.

Each command calls one library function with the same names and defaults.
Errors that latexport raises on purpose are printed as one clear line and
exit with status 2 (validation failures print their report too); anything
else is a bug and keeps its traceback.  Commands that need torch import it
lazily, so ``run``, ``inspect`` and ``bench`` work on a runtime-only install.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from latexport import __version__
from latexport.errors import LatexportError, ValidationError


def _ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from error
    if not values or any(not (0.0 < value <= 1.0) for value in values):
        raise click.BadParameter(f"every keep ratio must be in (0, 1], got {text!r}")
    return values


class _LatexportGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ValidationError as error:
            click.echo(f"error: {error}\n{error.report}", err=True)
            sys.exit(2)
        except LatexportError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was left half-written", err=True)
            sys.exit(130)


@click.group(cls=_LatexportGroup)
@click.version_option(__version__, prog_name="latexport")
@click.option("-v", "--verbose", is_flag=True, help="Log progress and warnings.")
def main(verbose: bool) -> None:
    """Latency Adjustable Transformer: one ONNX file, speed chosen at run time by keep_ratio."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@main.command()
@click.argument("checkpoint")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory to write.")
@click.option("--task", type=click.Choice(["text-classification", "feature-extraction"]), help="Default: from the checkpoint.")
@click.option("--atol", default=1e-4, show_default=True, help="Validation tolerance on logits/embeddings.")
@click.option("--reach", default=1.0, show_default=True, help="Elimination profile: depth fraction at which keep_ratio is reached.")
@click.option("--pooling", type=click.Choice(["mean", "cls"]), help="Feature extraction pooling (default: the checkpoint's, else mean).")
@click.option("--tokenizer", help="Directory or hub id of the tokenizer, if the checkpoint has none.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--keep-invalid", is_flag=True, help="Keep the file even if validation fails (with a warning).")
def convert(checkpoint, out_dir, task, atol, reach, pooling, tokenizer, overwrite, keep_invalid):
    """Convert CHECKPOINT (a directory or hub id) into OUT_DIR/model.onnx with tokenizer and config."""
    from latexport.export import convert as convert_checkpoint

    start = time.perf_counter()
    result = convert_checkpoint(
        checkpoint, out_dir, task=task, atol=atol, reach=reach, pooling=pooling, tokenizer=tokenizer,
        overwrite=overwrite, keep_invalid=keep_invalid,
    )
    click.echo(result.report.render())
    status = "validated" if result.report.passed else "NOT validated (kept as asked)"
    click.echo(f"wrote {out_dir / 'model.onnx'} ({status}) in {time.perf_counter() - start:.1f} s")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--keep-ratio", type=float, help="Default: the model's recorded default.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def run(model_dir, texts, keep_ratio, provider):
    """Run MODEL_DIR on TEXTS at one keep ratio and print the results."""
    from latexport.runtime import LatencyAdjustableSession

    session = LatencyAdjustableSession(model_dir, provider=provider)
    start = time.perf_counter()
    if session.metadata.task == "feature-extraction":
        embeddings = session.embed(list(texts), keep_ratio=keep_ratio)
        elapsed = time.perf_counter() - start
        for text, vector in zip(texts, embeddings):
            click.echo(f"{_shorten(text)}\t[{', '.join(f'{v:.4f}' for v in vector[:4])}, ...] ({vector.shape[0]} dims)")
    else:
        prediction = session.predict(list(texts), keep_ratio=keep_ratio)
        elapsed = time.perf_counter() - start
        for index, text in enumerate(texts):
            if prediction.values is not None:
                click.echo(f"{_shorten(text)}\t{prediction.values[index]:.4f}")
            else:
                click.echo(f"{_shorten(text)}\t{prediction.labels[index]}\t{prediction.scores[index].max():.3f}")
    ratio = keep_ratio if keep_ratio is not None else session.default_keep_ratio
    click.echo(f"keep_ratio {ratio:g}: {elapsed * 1000:.1f} ms for {len(texts)} text(s), tokenisation included", err=True)


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--keep-ratio", default=0.5, show_default=True, type=float)
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(1))
def inspect(model_dir, keep_ratio, seq_len):
    """Print MODEL_DIR's metadata, per-layer kept counts and estimated speedup."""
    from latexport.inspection import load_metadata, render
    from latexport.runtime import check_keep_ratio

    check_keep_ratio(keep_ratio)
    click.echo(render(load_metadata(model_dir), seq_len, keep_ratio))


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1))
@click.option("--keep-ratios", default="1,0.9,0.7,0.5,0.3,0.2,0.1,0.05,0.02", show_default=True, callback=lambda c, p, v: _ratios(v))
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["optimum", "torch", "optimum-O2"]), help="Also time a plain export of the source checkpoint (repeatable).")
@click.option("--checkpoint", help="Checkpoint for the baseline (default: the one the model was converted from).")
@click.option("--repeats", default=20, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=0, show_default=True, help="ONNX Runtime intra-op threads (0: all cores).")
@click.option("--mixed-lengths", is_flag=True, help="Pad rows to random 25-100% lengths.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a speedup plot (PNG).")
def bench(model_dir, seq_len, batch, keep_ratios, provider, baselines, checkpoint, repeats, threads, mixed_lengths, json_path, plot_path):
    """Measure MODEL_DIR's latency at each keep ratio, interleaved with an optional plain baseline."""
    from latexport import bench as benchmark
    from latexport.atomic import write_text_atomic

    if 1.0 not in keep_ratios:
        keep_ratios = (1.0, *keep_ratios)
    result = benchmark.bench(
        model_dir, seq_len=seq_len, batch=batch, keep_ratios=keep_ratios, provider=provider, baselines=baselines,
        checkpoint=checkpoint, repeats=repeats, threads=threads, mixed_lengths=mixed_lengths,
    )
    click.echo(benchmark.render(result))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json_path, result.to_json())
    if plot_path:
        benchmark.plot(result, plot_path)


@main.command()
@click.option("-o", "--output", "out_dir", default=Path("out/all-minilm-l6-v2"), show_default=True, type=click.Path(path_type=Path))
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1))
@click.option("--seq-len", default=256, show_default=True, type=click.IntRange(8, 512))
@click.option("--repeats", default=10, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Convert again even if OUT_DIR exists.")
def demo(out_dir, batch, seq_len, repeats, threads, overwrite):
    """Convert the real all-MiniLM-L6-v2 and run it at several keep ratios, printing each latency."""
    from latexport.demo import run_demo

    run_demo(out_dir, batch=batch, seq_len=seq_len, repeats=repeats, threads=threads, overwrite=overwrite)


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


if __name__ == "__main__":
    main()

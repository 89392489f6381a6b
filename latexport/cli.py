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
from typing import Optional
from pathlib import Path

import click

from latexport import __version__
from latexport.runtime.errors import LatexportError, ValidationError


def _ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from error
    if not values or any(not (0.0 < value <= 1.0) for value in values):
        raise click.BadParameter(f"every keep ratio must be in (0, 1], got {text!r}")
    return values


def _powers(text: str) -> Optional[tuple[float, ...]]:
    """``--powers``: comma-separated profile powers, ``file`` for the file's own (``()``),
    or ``task`` for the task's own set (None)."""
    if text.strip() == "task":
        return None
    if text.strip() == "file":
        return ()
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise click.BadParameter(f"expected comma-separated numbers or 'file', got {text!r}") from error
    if not values or any(not (0.25 <= value <= 4.0) for value in values):
        raise click.BadParameter(f"every power must be in [0.25, 4], got {text!r}")
    return values


def _integers(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise click.BadParameter(f"{option} expects comma-separated whole numbers, got {text!r}") from error
    if not values or min(values) < 1:
        raise click.BadParameter(f"{option} expects positive numbers, got {text!r}")
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
        except OSError as error:  # a full disk, a permission, a vanished file: the environment, not a bug
            click.echo(f"error: {error.strerror or error}" + (f": {error.filename}" if error.filename else ""), err=True)
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
@click.option("--task", type=click.Choice(["text-classification", "feature-extraction", "text2text-generation", "text-generation"]), help="Default: from the checkpoint.")
@click.option("--atol", default=1e-4, show_default=True, help="Validation tolerance on logits/embeddings.")
@click.option("--power", type=float, help="Elimination profile shape: fraction(l) = keep_ratio ** ((l/L) ** power) (default: the fine-tuning run's, else the family's profile for the task: 1.5; a prompt pass holds off for its first 13%% of layers, then power 0.25).")
@click.option("--pooling", type=click.Choice(["mean", "cls"]), help="Feature extraction pooling (default: the checkpoint's, else mean).")
@click.option("--tokenizer", help="Directory or hub id of the tokenizer, if the checkpoint has none.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@click.option("--keep-invalid", is_flag=True, help="Keep the file even if validation fails (with a warning).")
@click.option("--optimize", type=click.Choice(["cpu", "cuda"]), is_flag=False, flag_value="cpu",
              help="Apply the ONNX Runtime fusions that pay on this target (bare --optimize: cpu); validated like the plain graph.")
@click.option("--quantize", type=click.Choice(["dynamic"]), help="int8 weight MatMuls (dynamic quantization); token selection stays float32.")
@click.option("--fp16", is_flag=True, help="float16 weights and activations, for CUDA (keep counts stay float32).")
@click.option("--exporter", type=click.Choice(["torchscript", "torch-export"]), default="torchscript", show_default=True,
              help="torch-export: PyTorch's newer exporter (needs onnxscript); its graphs measured 1.01-1.20x slower "
                   "on BERT-base and it does not take the decoders' prompt pass yet (README).")
@click.option("--transformers-js", is_flag=True,
              help="Also lay the directory out for transformers.js (onnx/model.onnx, its dtype in config.json); "
                   "text classification only. It runs at the file's recorded default keep ratio.")
def convert(checkpoint, out_dir, task, atol, power, pooling, tokenizer, overwrite, keep_invalid, optimize, quantize, fp16,
            exporter, transformers_js):
    """Convert CHECKPOINT (a directory or hub id) into OUT_DIR/model.onnx with tokenizer and config."""
    from latexport.export.conversion import convert as convert_checkpoint

    start = time.perf_counter()
    result = convert_checkpoint(
        checkpoint, out_dir, task=task, atol=atol, power=power, pooling=pooling, tokenizer=tokenizer,
        overwrite=overwrite, keep_invalid=keep_invalid, optimize=optimize, quantize=quantize, fp16=fp16,
        exporter=exporter, transformers_js=transformers_js,
    )
    click.echo(result.report.render())
    if result.variant_report:
        click.echo(result.variant_report.render())
    status = "validated" if result.report.passed else "NOT validated (kept as asked)"
    click.echo(f"wrote {out_dir / 'model.onnx'} ({status}) in {time.perf_counter() - start:.1f} s")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--keep-ratio", type=float, help="Default: the model's recorded default.")
@click.option("--target-ms", type=float, help="Instead of a ratio: a latency budget (needs `latexport calibrate` first).")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--show-kept", is_flag=True,
              help="Also print, for each text, one line per layer with the words still alive (dropped ones as dots).")
def run(model_dir, texts, keep_ratio, target_ms, provider, show_kept):
    """Run MODEL_DIR on TEXTS at one keep ratio and print the results."""
    from latexport.runtime.session import LatencyAdjustableSession

    session = LatencyAdjustableSession(model_dir, provider=provider)
    if session.metadata.generation is not None:
        raise click.UsageError(f"{model_dir} is a {session.metadata.task} model; use `latexport generate`")
    start = time.perf_counter()
    if session.metadata.task == "feature-extraction":
        if target_ms is not None:
            raise click.UsageError("--target-ms is for classification models")
        embeddings = session.embed(list(texts), keep_ratio=keep_ratio)
        elapsed = time.perf_counter() - start
        for text, vector in zip(texts, embeddings):
            click.echo(f"{_shorten(text)}\t[{', '.join(f'{v:.4f}' for v in vector[:4])}, ...] ({vector.shape[0]} dims)")
        ratio = keep_ratio if keep_ratio is not None else session.default_keep_ratio
    else:
        prediction = session.predict(list(texts), keep_ratio=keep_ratio, target_ms=target_ms)
        elapsed = time.perf_counter() - start
        for index, text in enumerate(texts):
            if prediction.values is not None:
                click.echo(f"{_shorten(text)}\t{prediction.values[index]:.4f}")
            else:
                click.echo(f"{_shorten(text)}\t{prediction.labels[index]}\t{prediction.scores[index].max():.3f}")
        ratio = prediction.keep_ratio
    budget = f" (budget {target_ms:g} ms)" if target_ms is not None else ""
    click.echo(f"keep_ratio {ratio:.3g}: {elapsed * 1000:.1f} ms for {len(texts)} text(s), tokenisation included{budget}", err=True)
    if show_kept:
        _echo_kept(session, texts, ratio)


def _echo_kept(session, texts, keep_ratio) -> None:
    """The kept words of each text, read by a second call through a session with the taps exposed
    (after the timed call, which stays the plain one)."""
    from latexport.runtime.kept_positions import KeptPositionsReader, render

    for words in KeptPositionsReader(session).read(list(texts), keep_ratio):
        click.echo(f"\n{_shorten(words.text)}  (keep_ratio {words.keep_ratio:g})")
        click.echo(render(words, highlight=lambda token: click.style(token, bold=True, fg="green")))


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--keep-ratio", type=click.FloatRange(0.0, 1.0, min_open=True), help="Default: the model's recorded default.")
@click.option("--graphs", "graphs_dir", default=Path("graphs"), show_default=True, type=click.Path(path_type=Path),
              help="Folder for explain-MODEL-rRATIO.png and the .json of kept positions beside it.")
def explain(model_dir, texts, keep_ratio, graphs_dir):
    """Draw which words of TEXTS (a few) each layer of MODEL_DIR keeps at one keep ratio, as a PNG."""
    from latexport.explain import explain as explain_texts
    from latexport.runtime.kept_positions import render

    explanation = explain_texts(model_dir, texts, keep_ratio, graphs_dir)
    for index, words in enumerate(explanation.words):
        verdict = f" -> {explanation.labels[index]}" if explanation.labels else ""
        click.echo(f"{_shorten(words.text)}{verdict}  (keep_ratio {words.keep_ratio:g})")
        click.echo(render(words, highlight=lambda token: click.style(token, bold=True, fg="green")) + "\n")
    click.echo(f"wrote {explanation.image} and {explanation.json.name}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--batch-sizes", default="1,4,16", show_default=True, help="Comma-separated batch sizes to time.")
@click.option("--seq-lens", help="Comma-separated sequence lengths (default: 16, 32, ... up to the model's maximum, at most 512).")
@click.option("--keep-ratios", default="1,0.7,0.5,0.3,0.2,0.1,0.05", show_default=True, callback=lambda c, p, v: _ratios(v))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0), help="ONNX Runtime intra-op threads the service will use (0: all cores).")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def calibrate(model_dir, batch_sizes, seq_lens, keep_ratios, repeats, threads, provider):
    """Measure MODEL_DIR's latency on this machine and store calibration.json beside it,
    so that `run --target-ms` and `predict(target_ms=...)` can pick a keep ratio for a budget."""
    from latexport.runtime.calibrate import calibrate as calibrate_model
    from latexport.runtime.calibrate import render

    model = calibrate_model(
        model_dir,
        batch_sizes=_integers(batch_sizes, "--batch-sizes"),
        seq_lens=_integers(seq_lens, "--seq-lens") if seq_lens else None,
        keep_ratios=keep_ratios,
        repeats=repeats,
        provider=provider,
        intra_op_threads=threads,
        progress=True,
    )
    click.echo(render(model))
    click.echo(f"wrote {Path(model_dir) / 'calibration.json'}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("prompts", nargs=-1, required=True)
@click.option("--keep-ratio", type=float, help="Fraction of prompt word-vectors kept by the last layer (default: the model's recorded ratio).")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(1), help="Stop after this many new tokens.")
@click.option("--sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", default=1.0, show_default=True, type=float, help="With --sample: softmax temperature.")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0), help="With --sample: keep the k likeliest tokens (0: all).")
@click.option("--top-p", default=1.0, show_default=True, type=float, help="With --sample: keep the smallest set of tokens with this much probability.")
@click.option("--seed", type=int, help="With --sample: seed for a reproducible draw.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def generate(model_dir, prompts, keep_ratio, max_new_tokens, sample, temperature, top_k, top_p, seed, provider):
    """Continue each of PROMPTS with MODEL_DIR (a text-generation or text2text-generation conversion) and print the text."""
    from latexport.runtime.generation import Sampling, open_generator

    if not sample and (temperature != 1.0 or top_k or top_p != 1.0 or seed is not None):
        raise click.UsageError("--temperature, --top-k, --top-p and --seed need --sample")
    generator = open_generator(model_dir, provider=provider)
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed) if sample else None
    result = generator.generate(list(prompts), keep_ratio=keep_ratio, max_new_tokens=max_new_tokens, sampling=sampling)
    for text in result.texts:
        click.echo(text)
    kept = ", ".join(f"{kept}/{length}" for kept, length in zip(result.kept_tokens, result.prompt_tokens))
    click.echo(
        f"keep_ratio {result.keep_ratio:.3g}: kept {kept} prompt tokens; first token {result.first_token_ms:.1f} ms, "
        f"total {result.total_ms:.1f} ms for {sum(len(ids) for ids in result.token_ids)} new token(s)",
        err=True,
    )


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--keep-ratio", default="0.5", show_default=True, callback=lambda c, p, v: _ratios(v),
              help="A ratio, or one per row of a batch (comma-separated).")
@click.option("--seq-len", default="128", show_default=True, callback=lambda c, p, v: _integers(v, "--seq-len"),
              help="A length, or one per row (comma-separated; one length is every row's).")
def inspect(model_dir, keep_ratio, seq_len):
    """Print MODEL_DIR's metadata, per-layer kept counts and estimated speedup (of a batch, for several rows)."""
    from latexport.runtime.inspection import load_metadata, render, render_batch

    metadata = load_metadata(model_dir)
    if len(keep_ratio) == 1 and len(seq_len) == 1:
        click.echo(render(metadata, seq_len[0], keep_ratio[0]))
        return
    rows = max(len(keep_ratio), len(seq_len))
    if {len(keep_ratio), len(seq_len)} - {1, rows}:
        raise click.BadParameter(f"{len(keep_ratio)} ratios for {len(seq_len)} lengths; give one of either, or as many")
    click.echo(render_batch(metadata, [seq_len[i % len(seq_len)] for i in range(rows)],
                            [keep_ratio[i % len(keep_ratio)] for i in range(rows)]))


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1))
@click.option("--keep-ratios", default="1,0.9,0.7,0.5,0.3,0.2,0.1,0.05,0.02", show_default=True, callback=lambda c, p, v: _ratios(v))
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["optimum", "torch", "optimum-O2"]), help="Also time a plain export of the source checkpoint (repeatable).")
@click.option("--checkpoint", help="Checkpoint for the baseline (default: the one the model was converted from).")
@click.option("--repeats", default=20, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0), help="ONNX Runtime intra-op threads (0: all cores).")
@click.option("--mixed-lengths", is_flag=True, help="Pad rows to random 25-100% lengths.")
@click.option("--graphs", "graphs_dir", default=Path("graphs"), show_default=True, type=click.Path(path_type=Path),
              help="Folder for the JSON and the plot (bench-MODEL-bBATCH-sSEQ.json/.png).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the JSON here instead.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write the plot (PNG) here instead.")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Measure each variant's peak memory in a fresh process.")
@click.option("--compare", "compare", multiple=True, type=click.Path(path_type=Path), help="Another latexport directory (say, its int8 variant) to time at the same ratios (repeatable).")
@click.option("--new-tokens", default=16, show_default=True, type=click.IntRange(0),
              help="Generation models: then time generating this many tokens from a --seq-len prompt (0: skip).")
@click.option("--row-ratios", default=None, callback=lambda c, p, v: _ratios(v) if v else (),
              help="Also time the batch with its rows at these ratios in turn, one per row (say 1,0.1): its latency follows its widest row.")
@click.option("--memory-arena/--no-memory-arena", default=True, show_default=True,
              help="ONNX Runtime's CPU memory arena; off returns each call's memory, for inputs of thousands of tokens.")
def bench(model_dir, seq_len, batch, keep_ratios, provider, baselines, checkpoint, repeats, threads, mixed_lengths,
          graphs_dir, json_path, plot_path, memory, compare, new_tokens, row_ratios, memory_arena):
    """Measure MODEL_DIR's latency at each keep ratio, interleaved with optional plain baselines;
    prints a table and writes JSON and a plot."""
    from latexport.bench import encoder as benchmark
    from latexport.runtime.atomic import write_text_atomic

    if 1.0 not in keep_ratios:
        keep_ratios = (1.0, *keep_ratios)
    result = benchmark.bench(
        model_dir, seq_len=seq_len, batch=batch, keep_ratios=keep_ratios, provider=provider, baselines=baselines,
        checkpoint=checkpoint, repeats=repeats, threads=threads, mixed_lengths=mixed_lengths, memory=memory,
        compare=tuple(compare), row_ratios=row_ratios, memory_arena=memory_arena,
    )
    click.echo(benchmark.render(result))
    stem = f"bench-{Path(model_dir).name}-b{batch}-s{seq_len}{'-mixed' if mixed_lengths else ''}"
    json_path = json_path or graphs_dir / f"{stem}.json"
    plot_path = plot_path or graphs_dir / f"{stem}.png"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json_path, result.to_json())
    benchmark.plot(result, plot_path)
    click.echo(f"wrote {json_path} and {plot_path}")
    if new_tokens and result.task in ("text2text-generation", "text-generation"):
        from latexport.bench.generation import (
            bench_generation,
            plot_generation,
            render_generation,
        )

        generation = bench_generation(
            model_dir, prompt_tokens=seq_len, new_tokens=new_tokens, batch=batch, keep_ratios=keep_ratios,
            provider=provider, repeats=max(3, repeats // 4), threads=threads,
        )
        click.echo(render_generation(generation))
        generation_json, generation_plot = (path.with_name(path.stem + "-generation" + path.suffix) for path in (json_path, plot_path))
        write_text_atomic(generation_json, generation.to_json())
        plot_generation(generation, generation_plot)
        click.echo(f"wrote {generation_json} and {generation_plot}")


@main.command()
@click.option("-o", "--output", "out_dir", default=Path("out/all-minilm-l6-v2"), show_default=True, type=click.Path(path_type=Path))
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1))
@click.option("--seq-len", default=256, show_default=True, type=click.IntRange(8, 512))
@click.option("--repeats", default=10, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0), help="ONNX Runtime intra-op threads (0: all cores).")
@click.option("--overwrite", is_flag=True, help="Convert again even if OUT_DIR exists.")
def demo(out_dir, batch, seq_len, repeats, threads, overwrite):
    """Convert the real all-MiniLM-L6-v2 and run it at several keep ratios, printing each latency."""
    from latexport.demo import run_demo

    run_demo(out_dir, batch=batch, seq_len=seq_len, repeats=repeats, threads=threads, overwrite=overwrite)


def _data_options(function):
    """The column options shared by finetune, evaluate and tune."""
    function = click.option("--label-column", default="label", show_default=True)(function)
    function = click.option("--text-pair-column", default=None, help="Second text of a pair task.")(function)
    function = click.option("--text-column", default="text", show_default=True)(function)
    return function


@main.command()
@click.argument("model")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path), help="Checkpoint directory to write.")
@click.option("--train", "train_data", required=True, help="CSV, TSV or JSON Lines file, or hub dataset name:split.")
@click.option("--validation", "validation_data", required=True, help="Held-out data, same format.")
@_data_options
@click.option("--epochs", type=click.IntRange(1),
              help="Train exactly this many epochs and keep the last weights (default: until the validation score "
                   "stops improving, keeping the best).")
@click.option("--max-steps", type=click.IntRange(1),
              help="Step budget without --epochs (default: scaled to the data, 3 to 20 epochs).")
@click.option("--patience", default=3, show_default=True, type=click.IntRange(1),
              help="Evaluations without a new best validation score before stopping.")
@click.option("--learning-rate", default=5e-5, show_default=True, type=float)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(8))
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--recipe", type=click.Choice(["lat", "plain"]), default="lat", show_default=True,
              help="lat: full pass plus pruned passes distilled from it; plain: ordinary fine-tuning.")
@click.option("--teacher", default="self", show_default=True,
              help="What LAT's passes distil from: self (the model's own full pass), plain (a plain run trained "
                   "first into OUT_DIR-plain-teacher, which LAT starts from), or a fine-tuned checkpoint directory.")
@click.option("--min-keep-ratio", default=0.05, show_default=True, type=float, help="Smallest keep ratio trained for.")
@click.option("--power", type=float, help="Elimination profile shape trained for (default: 1.5 for short texts, 1 for long; see inspect).")
@click.option("--problem", type=click.Choice(["auto", "classification", "regression"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Start afresh even if OUT_DIR holds a run.")
def finetune(model, out_dir, train_data, validation_data, text_column, text_pair_column, label_column, epochs,
             max_steps, patience, learning_rate, batch_size, max_length, seed, recipe, teacher, min_keep_ratio, power,
             problem, overwrite):
    """Fine-tune MODEL with ACC elimination active; running it again resumes an interrupted run."""
    from latexport.training.data import Columns
    from latexport.training.finetune import TEACHER_PLAIN, FinetuneSettings, teacher_directory
    from latexport.training.finetune import finetune as run_finetune

    settings = FinetuneSettings(
        epochs=epochs, max_steps=max_steps, patience=patience, learning_rate=learning_rate, batch_size=batch_size,
        max_length=max_length, seed=seed, recipe=recipe, min_keep_ratio=min_keep_ratio, power=power, problem=problem,
        teacher=None if teacher == "self" else teacher,
    )
    result = run_finetune(model, out_dir, train_data, validation_data, Columns(text_column, text_pair_column, label_column),
                          settings, overwrite=overwrite)
    if recipe == "lat" and teacher == TEACHER_PLAIN:
        click.echo(f"the plain teacher (ordinary fine-tuning, LAT's starting point) is in {teacher_directory(out_dir)}")
    scores = ", ".join(f"{ratio}: {value:.4f}" for ratio, value in result.validation.items())
    click.echo(f"wrote {out_dir} after {result.steps} steps in {result.seconds:.0f} s; validation by keep_ratio {{{scores}}}")
    stopping = result.stopping
    click.echo(f"stopped: {stopping['reason']}; kept the {stopping['kept']} weights (best validation score "
               f"{stopping['best_score']:.4f} at step {stopping['best_step']})")
    if result.still_rising:
        click.echo("warning: the validation score was still rising when training stopped", err=True)


@main.command(name="finetune-lm")
@click.argument("model")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path), help="Checkpoint directory to write.")
@click.option("--text", "sources", required=True, multiple=True,
              help="Training text (repeatable): a .txt file is one document; CSV, TSV, JSON Lines or a hub name:split give one per row.")
@click.option("--text-column", default="text", show_default=True, help="Column of the documents in tabular data.")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(1), help="Training steps, one span each.")
@click.option("--prompt-tokens", default=512, show_default=True, type=click.IntRange(2), help="Prompt length of each span (the pruned pass).")
@click.option("--scored-tokens", default=64, show_default=True, type=click.IntRange(1), help="Continuation tokens scored after each prompt.")
@click.option("--learning-rate", default=2e-5, show_default=True, type=float)
@click.option("--recipe", type=click.Choice(["lat", "plain"]), default="lat", show_default=True,
              help="lat: full prompt pass plus pruned ones distilled from it; plain: ordinary fine-tuning.")
@click.option("--min-keep-ratio", default=0.1, show_default=True, type=float, help="Smallest keep ratio trained for.")
@click.option("--power", default=None, type=float, help="Elimination profile shape trained for (default: the prompt-pass profile "
              "convert uses untrained; a power: keep_ratio ** ((l/L) ** power)). Convert reuses it.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
def finetune_lm(model, out_dir, sources, text_column, steps, prompt_tokens, scored_tokens, learning_rate, recipe,
                min_keep_ratio, power, seed, overwrite):
    """Fine-tune a decoder-only MODEL so that its pruned prompt pass keeps predicting the continuation.

    Each step scores the continuation of one random span after the full prompt
    pass and, with --recipe lat, after pruned ones (--min-keep-ratio and one
    log-uniform ratio), distilled from the full pass. Writes an ordinary
    Hugging Face checkpoint that `latexport convert --task text-generation` takes.
    There is no resume: an interrupted run starts again.
    """
    from latexport.training.data import read_documents
    from latexport.training.finetune_lm import (
        LanguageModelSettings,
        finetune_language_model,
    )

    settings = LanguageModelSettings(
        recipe=recipe, steps=steps, prompt_tokens=prompt_tokens, scored_tokens=scored_tokens, learning_rate=learning_rate,
        min_keep_ratio=min_keep_ratio, power=power, seed=seed,
    )
    documents = [text for source in sources for text in read_documents(source, text_column)]
    losses = finetune_language_model(model, out_dir, documents, settings, overwrite=overwrite)
    tail = losses[-min(len(losses), 20):]
    click.echo(f"wrote {out_dir} after {steps} steps; mean loss of the last {len(tail)}: {sum(tail) / len(tail):.4f}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Labelled CSV, TSV or JSON Lines file, or hub dataset name:split.")
@_data_options
@click.option("--keep-ratios", default="1,0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1", show_default=True, callback=lambda c, p, v: _ratios(v))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0), help="ONNX Runtime intra-op threads (0: all cores).")
@click.option("--graphs", "graphs_dir", default=Path("graphs"), show_default=True, type=click.Path(path_type=Path),
              help="Folder for the plot and JSON.")
def evaluate(model_dir, data, text_column, text_pair_column, label_column, keep_ratios, batch_size, threads, graphs_dir):
    """Metric and measured latency of MODEL_DIR at each keep ratio, as a table, JSON and plot."""
    from latexport.runtime.atomic import write_text_atomic
    from latexport.training import evaluate as evaluation
    from latexport.training.data import Columns

    result = evaluation.evaluate(model_dir, data, Columns(text_column, text_pair_column, label_column), keep_ratios,
                                 batch_size=batch_size, threads=threads)
    click.echo(evaluation.render(result))
    stem = f"evaluate-{Path(model_dir).name}-{Path(data).stem}"
    graphs_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(graphs_dir / f"{stem}.json", result.to_json())
    evaluation.plot(result, graphs_dir / f"{stem}.png")
    click.echo(f"wrote {graphs_dir / stem}.json and .png")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--data", required=True,
              help="Held-out data (never the test split): labelled for a classifier; for a text-generation directory, "
                   "the user's own text (a .txt file is one document; CSV, TSV or JSON Lines give one per row).")
@_data_options
@click.option("--max-drop", type=float, help="Classifiers: largest allowed metric drop, absolute (0.01 = one point).")
@click.option("--max-rise", type=float,
              help="Text generation: largest allowed continuation perplexity rise (0.05 = 5%, the default there).")
@click.option("--target-speedup", type=float, help="Smallest measured speedup wanted.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--prompt-tokens", default=1024, show_default=True, type=click.IntRange(2),
              help="Text generation: the prompt length of each window of the text.")
@click.option("--scored-tokens", default=64, show_default=True, type=click.IntRange(1),
              help="Text generation: continuation tokens scored after each prompt.")
@click.option("--windows", default=32, show_default=True, type=click.IntRange(1),
              help="Text generation: at most this many windows, taken round-robin over the documents.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0), help="ONNX Runtime intra-op threads (0: all cores).")
@click.option("--powers", "powers", default="task", show_default=True, callback=lambda c, p, v: _powers(v),
              help="Profile powers to try, each evaluated on the data; the chosen one is written into the file. "
                   "'task': 1,1.5,2,3 for a classifier, 0.25,0.5,1,1.5 for text generation; 'file': keep the file's own.")
def tune(model_dir, data, text_column, text_pair_column, label_column, max_drop, max_rise, target_speedup, batch_size,
         prompt_tokens, scored_tokens, windows, threads, powers):
    """Choose MODEL_DIR's default keep ratio and profile offline, from a constraint measured on held-out data.

    A classifier is held to --max-drop of accuracy (or --target-speedup); a
    text-generation directory to --max-rise of continuation perplexity on the
    given text (default 5%), each with its 95% interval.
    """
    from latexport.training import evaluate as evaluation
    from latexport.training.data import Columns

    if evaluation.task_of(model_dir) == "text-generation":
        if max_drop is not None:
            raise click.UsageError("a text-generation directory is tuned with --max-rise (perplexity), not --max-drop")
        _tune_language_model(model_dir, data, text_column, max_rise, target_speedup, prompt_tokens, scored_tokens,
                             windows, threads, powers)
        return
    if max_rise is not None:
        raise click.UsageError("--max-rise is for text-generation directories; a classifier takes --max-drop")
    result = evaluation.tune(model_dir, data, Columns(text_column, text_pair_column, label_column), max_drop=max_drop,
                             target_speedup=target_speedup, batch_size=batch_size, threads=threads,
                             **_powers_argument(powers))
    click.echo(evaluation.render(result.evaluation))
    if len(result.evaluations) > 1:
        click.echo(evaluation.render_powers(result))
    row = result.evaluation.row(result.keep_ratio)
    click.echo(
        f"chose power {result.power:g}, keep_ratio {result.keep_ratio:g} ({result.constraint}): "
        f"{evaluation.describe(result.evaluation, row)}, measured speedup {row.speedup:.2f}x; "
        f"recorded as the default in {Path(model_dir) / 'model.onnx'}"
    )
    if result.note:
        click.echo(f"note: {result.note}")


def _powers_argument(powers: Optional[tuple[float, ...]]) -> dict:
    """None (``task``): the tuner's own default; ``()`` (``file``): the file's own power only."""
    return {} if powers is None else {"powers": powers or None}


def _tune_language_model(model_dir, data, text_column, max_rise, target_speedup, prompt_tokens, scored_tokens, windows,
                         threads, powers):
    from latexport.training import evaluate_lm

    result = evaluate_lm.tune_language_model(
        model_dir, [data], text_column, max_rise=max_rise, target_speedup=target_speedup, **_powers_argument(powers),
        prompt_tokens=prompt_tokens, scored_tokens=scored_tokens, max_windows=windows, threads=threads,
    )
    click.echo(evaluate_lm.render(result.evaluation))
    if len(result.evaluations) > 1:
        click.echo(evaluate_lm.render_powers(result))
    row = result.evaluation.row(result.keep_ratio)
    low, high = row.rise_interval
    click.echo(
        f"chose power {result.power:g}, keep_ratio {result.keep_ratio:g} ({result.constraint}): perplexity rise "
        f"{100 * row.rise:+.1f}% [{100 * low:+.1f}, {100 * high:+.1f}], measured prompt-pass speedup {row.speedup:.2f}x; "
        f"recorded as the default in {Path(model_dir) / 'model.onnx'}"
    )
    if result.note:
        click.echo(f"note: {result.note}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--power", required=True, type=click.FloatRange(0.25, 4.0),
              help="New profile shape: fraction(l) = keep_ratio ** ((l/L) ** power).")
def reprofile(model_dir, power):
    """Rewrite MODEL_DIR's elimination profile in place, without exporting again (drops a tuned default)."""
    from latexport.runtime.reprofile import profile_of, reprofile as rewrite
    from latexport.runtime.session import MODEL_FILE

    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise LatexportError(f"{path} does not exist; give a directory written by latexport convert")
    before = profile_of(path)
    after = rewrite(path, power)
    click.echo(f"{path}: power {before.power:g} -> {after.power:g} over {after.num_layers} layers; "
               f"exponents {', '.join(f'{e:.3f}' for e in after.exponents())}")


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


if __name__ == "__main__":
    main()

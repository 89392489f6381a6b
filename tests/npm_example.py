"""An example folder's npm dependencies, installed by `npm ci` from its lockfile when missing or stale.

Used by the tests of examples/web; a registry that cannot be reached skips the
test (the machine's problem, not the example's), any other failure fails it.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

#: npm's codes for a registry it cannot reach.
NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH", "EHOSTUNREACH")


def installed_matches_lockfile(example: Path) -> bool:
    """Whether node_modules holds exactly the versions package-lock.json pins (npm writes
    node_modules/.package-lock.json on every install; versions, not mtimes, are compared)."""
    installed_path = example / "node_modules" / ".package-lock.json"
    if not installed_path.is_file():
        return False
    wanted = json.loads((example / "package-lock.json").read_text())["packages"]
    installed = json.loads(installed_path.read_text())["packages"]
    return all(installed.get(name, {}).get("version") == entry.get("version")
               for name, entry in wanted.items() if name and not entry.get("optional"))


def npm_ci(example: Path) -> Path:
    if not installed_matches_lockfile(example):
        started = time.perf_counter()
        result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=example, capture_output=True, text=True,
                                timeout=600, check=False)
        output = result.stdout + result.stderr
        if result.returncode != 0 and any(code in output for code in NETWORK_ERRORS):
            pytest.skip(f"the npm registry is unreachable and {example / 'node_modules'} is not installed")
        assert result.returncode == 0, f"npm ci failed in {example}:\n{output}"
        print(f"npm ci in {example.name} took {time.perf_counter() - started:.1f} s")
    return example

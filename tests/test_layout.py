"""The package's layout is its architecture: the deploy side (``latexport/runtime``)
never needs torch, and no module imports itself back through another."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "latexport"
HEAVY = ("torch", "transformers", "optimum")
#: What only the deploy side may not reach: the heavy stacks, and the sides that use them.
NOT_FROM_RUNTIME = (*HEAVY, "latexport.export", "latexport.training", "latexport.bench", "latexport.integrations",
                    "latexport.cli", "latexport.demo")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """Every module an import statement in the file names, function-level imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in MODULES)
    return names


def within(name: str, prefixes) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_the_deploy_side_names_no_torch_transformers_optimum_or_export_code():
    runtime = {name: path for name, path in MODULES.items() if within(name, ["latexport.runtime"])}
    assert {"latexport.runtime.session", "latexport.runtime.generation", "latexport.runtime.calibration"} <= set(runtime)
    offending = {name: sorted(n for n in imported(path) if within(n, NOT_FROM_RUNTIME)) for name, path in runtime.items()}
    assert not {name: found for name, found in offending.items() if found}


def test_the_deploy_side_imports_with_torch_transformers_and_optimum_unavailable():
    """In a fresh interpreter where importing any of them fails, every runtime module still imports."""
    runtime = [name for name in MODULES if within(name, ["latexport.runtime"])]
    script = f"""
import importlib, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {HEAVY!r}:
            raise ImportError('the deploy side must not import ' + name)
sys.meta_path.insert(0, Refuse())
for name in {runtime!r}:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})
assert not loaded, loaded
print('imported', len({runtime!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert f"imported {len(runtime)}" in result.stdout


def test_the_blocker_itself_catches_a_torch_import():
    """The check above can fail: an export-side module does not import under it."""
    script = """
import importlib, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch':
            raise ImportError('refused ' + name)
sys.meta_path.insert(0, Refuse())
importlib.import_module('latexport.export.model')
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0 and "refused torch" in result.stderr


def test_no_import_cycles():
    graph = {name: sorted(n for n in imported(path) if n in MODULES and n != name) for name, path in MODULES.items()}
    cycles, state = [], {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in graph[name]:
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)

"""The package layout stays true: parts import only parts below them (no cycles, lazy imports included), and no
source file grows past 500 lines. Reads the source with ``ast``; imports nothing of hf_tokcomp."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_tokcomp"

#: every part of the package, lowest first: a part may import itself and the parts before it, nothing else
LAYERS: list[set[str]] = [
    {"runtime"},
    {"hub"},
    {"models"},
    {"testing"},
    {"processor"},
    {"word_processor"},
    {"teachers"},
    {"training"},
    {"evaluation"},
    {"organism", "bench"},
    {"cli", "demo", "lmms", "vllm"},  # the optional lmms-eval and vLLM plugins (nothing else imports them)
    {"__main__"},
    {"__init__"},  # the package root re-exports the public API
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
MAX_LINES = 500


def _module(path: Path) -> list[str]:
    """``hf_tokcomp/models/vila/config.py`` -> ``["models", "vila", "config"]``; the root ``__init__`` -> ``[]``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _part(module: list[str]) -> str:
    return module[0] if module else "__init__"


def imports_of(path: Path) -> list[tuple[int, list[str]]]:
    """``(line, target module path)`` of every import of hf_tokcomp in ``path``, at any depth (functions too)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if node.module is None:  # `from . import a, b`: each name may be a module of the package
                found += [(node.lineno, target + [alias.name]) for alias in node.names]
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hf_tokcomp":
            found.append((node.lineno, node.module.split(".")[1:]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "hf_tokcomp"]
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_a_layer():
    parts = {_part(_module(path)) for path in _sources()}
    assert parts <= set(RANK), f"parts with no layer in LAYERS: {sorted(parts - set(RANK))}"


def test_imports_point_down_only():
    upward = []
    for path in _sources():
        source = _part(_module(path))
        for line, target in imports_of(path):
            dest = _part(target)
            if dest != source and RANK[dest] >= RANK[source]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({source}) imports {dest}")
    assert not upward, "imports that do not point down the layers:\n" + "\n".join(upward)


def test_runtime_imports_nothing_else_of_the_package():
    for path in (PACKAGE / "runtime").rglob("*.py"):
        assert all(_part(t) == "runtime" for _, t in imports_of(path)), path


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path):
    """A lazy import inside a function is still an import: plant one going up and watch it be found."""
    fake = tmp_path / "hf_tokcomp"
    (fake / "runtime").mkdir(parents=True)
    (fake / "runtime" / "mixin.py").write_text("def save():\n    from ..hub.writer import save_repo\n")
    (fake / "hub").mkdir()
    (fake / "hub" / "writer.py").write_text("from ..runtime.mixin import save\n")
    global PACKAGE
    real, PACKAGE = PACKAGE, fake
    try:
        with pytest.raises(AssertionError, match=r"runtime/mixin.py:2 \(runtime\) imports hub"):
            test_imports_point_down_only()
    finally:
        PACKAGE = real


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_file_over_500_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it along its seams"

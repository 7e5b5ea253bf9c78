"""The remote code of a compressor-only repo, GENERATED from this package's own source (never edited by hand).

The modules the runtime needs are concatenated in dependency order with their package-relative imports removed,
so the repo's code imports only the standard library, torch, transformers (and huggingface_hub, which
transformers depends on). The generator reads the source files as text; it imports none of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ..runtime._compat import VERSION

__all__ = ["remote_code", "CONFIG_MODULE", "MODELING_MODULE"]

CONFIG_MODULE, MODELING_MODULE = "configuration_tokcomp", "modeling_tokcomp"
#: the package modules the remote code is generated from, in dependency order
_REMOTE_MODULES = (
    "runtime._compat",
    "runtime.selectors.base",
    "runtime.selectors.learned",
    "runtime.selectors.attention",
    "runtime.selectors.random_tokens",
    "runtime.selectors.uniform",
    "runtime.selectors.divprune",
    "runtime.selectors.dart",
    "runtime.selectors.cdpruner",
    "runtime.selectors",
    "runtime.config",
    "runtime.registry",
    "runtime.features",
    "runtime.instruction",
    "runtime.compressor",
    "runtime.selection",
    "runtime.scoring",
    "runtime.continuation",
    "runtime.compression",
    "runtime.segments",
    "runtime.generation",
    "runtime.mixin",
    "hub.config",
    "hub.loader",
    "hub.resolve",
    "hub.mixin",
    "models.qwen_vl",
    "models.qwen2_vl",
    "models.qwen2_5_vl",
    "models.qwen3_vl",
    "models.qwen3_5",
    "models.llava_onevision",
    "models.internvl",
    "models.vila.config",
    "models.vila.projector",
    "models.vila.templates",
    "models.vila.checkpoint.loading",
    "models.vila.modeling",
    "models.registry",
)
#: the package's source tree: the generator reads these files as text, it never imports them
_PACKAGE = Path(__file__).resolve().parents[1]


def _strip(source: str, module: str) -> tuple[str, set[str]]:
    """Remove ``from __future__``, package-relative imports and ``__all__``; return the source and the
    top-level names it defines."""
    tree = ast.parse(source)
    drop: set[int] = set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or node.module == "__future__"):
            drop.update(range(node.lineno, node.end_lineno + 1))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            drop.update(range(node.lineno, node.end_lineno + 1))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    lines = [line for i, line in enumerate(source.splitlines(), 1) if i not in drop]
    return f"# ---- hf_tokcomp/{module.replace('.', '/')}.py ----\n" + "\n".join(lines).strip() + "\n", names


def _source(module: str) -> str:
    """The source text of ``hf_tokcomp.<module>`` (a package file, or a package's ``__init__.py``)."""
    path = _PACKAGE.joinpath(*module.split("."))
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()


def remote_code() -> dict[str, str]:
    """``{file name: source}`` of the repo's self-contained code, generated from the installed package."""
    header = (
        f'"""Generated from hf_tokcomp {VERSION} by hf_tokcomp.hub.remote_code.remote_code(): do not edit. '
        'Imports only torch, transformers and the standard library."""\n\nfrom __future__ import annotations\n\n'
    )
    chunks, seen = [], {}
    for module in _REMOTE_MODULES:
        source = _source(module)
        chunk, names = _strip(source, module)
        clash = {n for n in names if n in seen and not n.startswith("_Stock")}
        if clash:
            raise RuntimeError(
                f"remote code generation: {sorted(clash)} defined in both {module} and "
                f"{[seen[n] for n in clash]}; rename one"
            )
        seen.update(dict.fromkeys(names, module))
        chunks.append(chunk)
    modeling = header + "\n\n".join(chunks) + "\n\ncheck_transformers_version()\n"
    config_chunk, _ = _strip(_source("hub.config"), "hub.config")
    return {f"{MODELING_MODULE}.py": modeling, f"{CONFIG_MODULE}.py": header + config_chunk}

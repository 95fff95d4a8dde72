"""The package layout's one rule: subpackages import only subpackages of a lower layer (README, Layout)."""

import ast
from pathlib import Path

import attnbench

ROOT = Path(attnbench.__file__).resolve().parent

# Lowest first; a subpackage may import its own layer's top-level modules and any lower layer, never a
# subpackage of its own layer or a higher one.
LAYERS = [{"spec"}, {"analysis", "impls"}, {"store"}, {"measure"}, {"execute"}, {"report"}, {"compare", "tune", "gate"},
          {"integrations"}, {"cli"}]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _imports(path: Path, package: list[str]) -> set[str]:
    """The subpackages of attnbench that one file imports from (relative or absolute imports)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
                names = [a.name for a in node.names] if not parts else []
            elif (node.module or "").startswith("attnbench"):
                parts = node.module.split(".")[1:]
                names = [a.name for a in node.names] if not parts else []
            else:
                continue
            out.update(parts[:1] or names)
    return out


def test_every_subpackage_is_in_a_layer():
    subs = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert subs == set(LEVEL), f"add {sorted(subs - set(LEVEL))} to LAYERS (and to README's Layout)"


def test_imports_point_down_the_layers():
    wrong = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if len(rel) < 2:
            continue
        here = rel[0]
        for target in _imports(path, list(rel[:-1])):
            if target in LEVEL and target != here and LEVEL[target] >= LEVEL[here]:
                wrong.append(f"{'/'.join(rel)} imports {target}")
    assert not wrong, "imports against the layering: " + "; ".join(sorted(wrong))

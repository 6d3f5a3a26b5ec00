"""The package's layers: every import inside ``bpnp`` points down (or sideways within a layer), never up.

    geometry -> nodes -> data, models -> metrics -> viz -> training -> evaluation -> cli

Imports inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "bpnp"
# Rank of each subpackage; an import may reach its own rank or a lower one.
LAYERS = {
    "geometry": 0,
    "nodes": 1,
    "data": 2,
    "models": 2,
    "metrics": 3,
    "viz": 4,
    "training": 5,
    "evaluation": 6,
    "cli": 7,
    "__init__": 7,  # bpnp/__init__.py: lazy helpers for users, above everything
}


def layer_of(module: str) -> str:
    """``bpnp.data.sample`` -> ``data``; ``bpnp`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every ``bpnp`` import in a file, relative imports resolved."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] + ".__init__"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "bpnp"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: -node.level]
                module = ".".join([*base, module] if module else base)
            if module.split(".")[0] == "bpnp":
                out.append((node.lineno, module))
    return out


def module_layer(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).parts
    return rel[0] if len(rel) > 1 else path.stem


def upward_imports(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        own = module_layer(path, root)
        for line, module in imports(path, root):
            target = layer_of(module)
            if target in LAYERS and LAYERS[target] > LAYERS[own]:
                found.append(f"{path.relative_to(root.parent)}:{line} ({own}) imports {module} ({target})")
    return found


def test_every_subpackage_has_a_layer():
    found = {module_layer(p) for p in ROOT.rglob("*.py")}
    assert found <= set(LAYERS), f"give these a layer: {sorted(found - set(LAYERS))}"


def test_no_import_points_up():
    upward = upward_imports()
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_the_checker_sees_upward_imports(tmp_path):
    # a fake tree: geometry reaching training inside a function, viz reaching evaluation relatively
    (tmp_path / "bpnp" / "geometry").mkdir(parents=True)
    (tmp_path / "bpnp" / "viz").mkdir()
    (tmp_path / "bpnp" / "geometry" / "bad.py").write_text("def f():\n    from bpnp.training import module\n")
    relative = "from ..evaluation import report\nfrom bpnp.data import x\n"
    (tmp_path / "bpnp" / "viz" / "also.py").write_text(relative)
    found = upward_imports(tmp_path / "bpnp")
    assert found == [
        "bpnp/geometry/bad.py:2 (geometry) imports bpnp.training (training)",
        "bpnp/viz/also.py:1 (viz) imports bpnp.evaluation (evaluation)",
    ]

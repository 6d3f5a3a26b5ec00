"""The package's layers: every import inside ``bpnp`` points down (or sideways within a layer), never up.

    geometry -> nodes -> data, models -> metrics -> viz -> training -> evaluation -> cli

Imports inside functions count as much as those at the top of a module. And its functions are short:
over ``MAX_LINES`` lines, one states why at its top (``LONG_BECAUSE``).
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


# A function longer than this (from its ``def`` line to its last line, docstring included) states why,
# in a docstring line or a comment at the top of its body that starts with LONG_BECAUSE.
MAX_LINES = 60
LONG_BECAUSE = "Long because"
# The PnP layer's initialisation (the RANSAC stage and weighted_pnp's init arguments) is being
# reworked; its two long functions are split or annotated with that work.
NOT_YET_CHECKED: set[str] = set()


def states_why_long(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> bool:
    """A docstring line, or a comment before the first statement after the signature and docstring,
    that starts with LONG_BECAUSE."""
    doc = ast.get_docstring(node) or ""
    if any(line.strip().startswith(LONG_BECAUSE) for line in doc.splitlines()):
        return True
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    start = body[0].end_lineno if has_doc and len(body) > 1 else node.lineno
    first = body[1] if has_doc and len(body) > 1 else body[0]
    return any(line.strip().startswith(f"# {LONG_BECAUSE}") for line in lines[start : first.lineno - 1])


def long_functions(root: Path = ROOT) -> list[str]:
    """``path:line name (N lines)`` of every function over MAX_LINES lines that does not say why."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        text = path.read_text()
        lines = text.splitlines()
        functions = [
            n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        for node in sorted(functions, key=lambda n: n.lineno):
            size = node.end_lineno - node.lineno + 1
            if size <= MAX_LINES or f"{rel}:{node.name}" in NOT_YET_CHECKED or states_why_long(node, lines):
                continue
            found.append(f"{rel}:{node.lineno} {node.name} ({size} lines)")
    return found


def test_functions_are_short_or_say_why():
    long = long_functions()
    assert not long, (
        f"functions over {MAX_LINES} lines: split them into named helpers, or start them with a docstring"
        f" line or a comment '{LONG_BECAUSE} ...':\n" + "\n".join(long)
    )


def test_the_checker_sees_long_functions(tmp_path):
    # a fake tree: a function of each kind, the long ones with MAX_LINES statements after the header
    (tmp_path / "bpnp" / "nodes").mkdir(parents=True)
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    why = f"{LONG_BECAUSE} one pass over the plan."
    functions = {
        "short": "    return 1\n",
        "silent": body,
        "documented": f'    """Doc.\n\n    {why}\n    """\n' + body,
        "commented": f"    # {why}\n" + body,
        "commented_after_doc": f'    """Doc."""\n    # {why}\n' + body,
        "reason_too_late": '    """Doc."""\n' + body + f"    # {why}\n    return 0\n",
    }
    source = "".join(f"def {name}():\n{text}\n\n" for name, text in functions.items())
    source += "class Node:\n    def method(self):\n" + body.replace("    ", "        ")
    (tmp_path / "bpnp" / "nodes" / "fake.py").write_text(source)
    found = long_functions(tmp_path / "bpnp")
    assert [f.split(" ")[1] for f in found] == ["silent", "reason_too_late", "method"], found
    assert found[0] == f"bpnp/nodes/fake.py:5 silent ({MAX_LINES + 1} lines)"

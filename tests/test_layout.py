"""The package's shape: no import cycles, and inference and evaluation independent of
training and the distribution backends (a user colouring photos loads neither accelerate,
deepspeed nor the training step)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distcolor"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, lazy: bool) -> set[str]:
    """distcolor modules `path` imports: at module level (TYPE_CHECKING blocks included),
    and with `lazy` also inside functions."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if lazy else _module_level(tree.body)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("distcolor")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distcolor"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # submodules by name
    return found


def _module_level(body):
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):  # TYPE_CHECKING, optional imports
            yield from _module_level(node.body)
            for handler in getattr(node, "handlers", []):
                yield from _module_level(handler.body)
            yield from _module_level(node.orelse)


def graph(*, lazy: bool) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = {t for t in imports(path, lazy=lazy) if t in modules and t != name}
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        for t in list(targets):
            parts = t.split(".")
            targets |= {
                ".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in modules
            }
        edges[name] = targets - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each reported once, from its smallest name)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt) :]
                found.append(cycle)
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_the_package_has_no_import_cycles():
    edges = graph(lazy=False)
    # A package's __init__ importing its own modules is not a cycle of meaning.
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    assert cycles(edges) == []


def test_inference_and_evaluation_import_nothing_from_training_or_backends():
    edges = graph(lazy=True)
    for start in [m for m in edges if m.startswith(("distcolor.infer", "distcolor.evaluate"))]:
        seen, todo = set(), [start]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo += edges.get(module, ())
        banned = sorted(m for m in seen if m.startswith(("distcolor.train", "distcolor.backends")))
        assert banned == [], f"{start} reaches {banned}"


def test_the_colorize_api_loads_neither_accelerate_deepspeed_nor_the_training_step():
    code = (
        "import sys\n"
        "from distcolor import colorize, Colorizer\n"
        "import distcolor.infer.files\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('accelerate', 'deepspeed')\n"
        "          or m.startswith(('distcolor.train', 'distcolor.backends'))]\n"
        "print(sorted(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"

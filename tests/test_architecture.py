"""Imports run one way between the top-level parts of ``bfaseg``.

Every ``import`` in every module counts, also those inside functions and under
``if TYPE_CHECKING``: a part may import only parts below it in ``LAYERS``, so no two
parts can reach each other, directly or round about.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "bfaseg"

# bottom to top; a part imports only parts on earlier lines (names on one line: none imports another)
LAYERS = [
    ["errors"],
    ["config", "precision"],
    ["io"],
    ["data", "metrics"],
    ["models"],
    ["losses"],
    ["methods"],
    ["inference"],  # the one prediction pipeline; training's validation calls it
    ["training"],
    ["evaluation", "suggest"],
    ["reporting"],
    ["experiments"],
    ["cli"],
    ["__main__"],
]
RANK = {part: i for i, line in enumerate(LAYERS) for part in line}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str | None:
    """``bfaseg.training.trainer`` -> ``training``; ``bfaseg`` itself (the version) -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "bfaseg" and len(parts) > 1 else None


def imports_between_parts() -> dict[tuple[str, str], set[str]]:
    """``(importing part, imported part) -> files``, for every import across parts."""
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in sorted(PKG.rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        source = _part(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from bfaseg import training` names a part too
                targets = [base] + ([f"{base}.{a.name}" for a in node.names] if base == "bfaseg" else [])
            else:
                continue
            for target in targets:
                part = _part(target)
                if part and source and part != source:
                    edges[(source, part)].add(str(path.relative_to(PKG)))
    return edges


def test_every_part_has_a_layer():
    parts = {_part(_module_name(p)) for p in PKG.rglob("*.py")} - {None, "configs"}
    assert parts <= set(RANK), f"add to LAYERS: {sorted(parts - set(RANK))}"


def test_imports_run_one_way():
    upward = [
        f"{src} -> {dst} ({', '.join(sorted(files))})"
        for (src, dst), files in sorted(imports_between_parts().items())
        if RANK.get(dst, -1) >= RANK.get(src, len(LAYERS))
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_two_parts_reach_each_other():
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst in imports_between_parts():
        graph[src].add(dst)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    cycles = sorted({tuple(sorted((a, b))) for a in list(graph) for b in reach(a) if a != b and a in reach(b)})
    assert not cycles, f"parts that reach each other: {cycles}"


def test_the_check_sees_imports_inside_functions(tmp_path):
    # guard for the parser itself: a function-level import of a higher part must count
    tree = ast.parse("def f():\n    from bfaseg.training.trainer import Trainer\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "bfaseg.training.trainer" for n in ast.walk(tree))
    edges = imports_between_parts()
    assert ("training", "inference") in edges  # validation predicts through inference, inside a function


def _library_files():
    return [p for p in sorted(PKG.rglob("*.py")) if _part(_module_name(p)) not in ("cli", "__main__", "configs")]


def test_library_code_logs_and_only_the_cli_prints():
    printing = [
        f"{p.relative_to(PKG)}:{node.lineno}"
        for p in _library_files()
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]
    assert not printing, f"print() in library code (use logging): {printing}"


def test_nothing_imports_from_the_cli_but_its_entry_point():
    """cli/ modules parse options and call the library; none defines what another module needs."""
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                if name.startswith("bfaseg.cli.") and name != "bfaseg.cli.main":
                    offenders.append(f"{path.relative_to(PKG)} imports {name}")
    assert not offenders, offenders

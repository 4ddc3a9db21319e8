"""The package's layers, read from the source: the core (specdec/) knows nothing of gRPC, the
services or the clients; the client knows no service; the engines know only the engine contract
and plain config; and no two core modules import each other at load time (a cycle makes import
order matter)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "specdec"
ABOVE_CORE = ("client", "proposer_service", "verifier_service", "specdec_rpc", "bench", "training")
# What an engine may import from the core besides specdec.engine itself: plain data and config.
ENGINE_MAY_IMPORT = {"specdec.config", "specdec.cpu_cores", "specdec.errors", "specdec.types"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules `path` imports: every import, or only those run when it loads (not inside a
    function, not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)) or (
                    top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
                continue
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                visit([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])

    visit(tree.body)
    return found


def core_modules() -> dict[str, Path]:
    return {module_name(p): p for p in CORE.rglob("*.py")}


def test_the_core_imports_nothing_above_it():
    offenders = {name: sorted(m for m in imports(path, top_level_only=False)
                              if m.split(".")[0] in ABOVE_CORE)
                 for name, path in core_modules().items()}
    assert {n: m for n, m in offenders.items() if m} == {}


def test_the_client_imports_no_service():
    """The client's command lines start the services by module name and pass flags on under the
    services' declarations, which live in the core (specdec.service_config): no service code."""
    offenders = {}
    for path in (ROOT / "client").rglob("*.py"):
        bad = sorted(m for m in imports(path, top_level_only=False)
                     if m.split(".")[0] in ("proposer_service", "verifier_service"))
        if bad:
            offenders[module_name(path)] = bad
    assert offenders == {}


def test_engines_import_only_the_engine_package_and_plain_config():
    modules = core_modules()
    offenders = {}
    for name, path in modules.items():
        if not name.startswith("specdec.engine"):
            continue
        bad = {m for m in imports(path, top_level_only=False)
               if m.startswith("specdec.") and m in modules
               and not m.startswith("specdec.engine") and m not in ENGINE_MAY_IMPORT}
        if bad:
            offenders[name] = sorted(bad)
    assert offenders == {}


def test_no_import_cycle_in_the_core():
    modules = core_modules()
    graph = {name: {m for m in imports(path, top_level_only=True) if m in modules and m != name}
             for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how packages re-export: not a cycle.
    graph = {n: {m for m in deps if n != m.rsplit(".", 1)[0]} for n, deps in graph.items()}
    state: dict[str, int] = {}   # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                walk(dep, path + [dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert cycles == []

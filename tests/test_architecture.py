"""The layers of docs/architecture.md: commands import the library, never each other; the table code imports
nothing of the job code; core/ and tasks/ never import benchmarks/; no private name crosses a module; no circle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"run", "grid", "select", "report", "compare", "speed", "mc", "paper"}
LIBRARY = {"jobs", "tables", "timing"}


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path):
    """[(imported module, names taken from it)] of one file, relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [a.name for a in node.names]
            found.append((node.module, names))
            found += [(f"{node.module}.{n}", []) for n in names]  # `from benchmarks.jobs import plan`
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def sources(*folders):
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]


def layer(module):
    """'command', 'jobs', 'tables', 'timing', 'core', 'tasks' or None (not ours)."""
    parts = module.split(".")
    if parts[0] == "benchmarks" and len(parts) > 1:
        return "command" if parts[1] in COMMANDS else parts[1] if parts[1] in LIBRARY else None
    return parts[0] if parts[0] in ("core", "tasks") else None


ALLOWED = {"command": {"jobs", "tables", "timing", "core", "tasks"}, "jobs": {"jobs", "tables", "core", "tasks"},
           "tables": {"tables", "core", "tasks"}, "timing": {"timing", "core", "tasks"},
           "tasks": {"tasks", "core"}, "core": {"core"}}


def test_every_benchmarks_module_is_a_command_or_in_a_library_package():
    loose = [module_name(p) for p in (ROOT / "benchmarks").glob("*.py")
             if p.stem not in COMMANDS | {"__init__"}]
    assert not loose, f"{loose}: a command goes in COMMANDS (and docs/architecture.md), support code in jobs/ or tables/"


def test_each_layer_imports_only_the_layers_below_it():
    for path in sources("benchmarks", "core", "tasks"):
        own = layer(module_name(path))
        if own is None:
            continue
        for module, _ in imports(path):
            other = layer(module)
            if other is None or (own == "command" and other == "command" and module == module_name(path)):
                continue
            assert other in ALLOWED[own], (f"{path.relative_to(ROOT)} imports {module}: a {own} module may import "
                                           f"only {sorted(ALLOWED[own])} (docs/architecture.md)")


def test_no_private_name_is_imported_from_another_module():
    for path in sources("benchmarks"):
        for module, names in imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{path.relative_to(ROOT)} imports {private} from {module}: make it public or move it"


def test_no_import_circle_inside_benchmarks():
    graph = {}
    for path in sources("benchmarks"):
        name = module_name(path)
        graph[name] = {m for m, _ in imports(path) if m.startswith("benchmarks.") and m != name}
    done, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import circle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done or node not in graph:
            return
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)

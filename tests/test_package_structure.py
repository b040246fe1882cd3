"""The package's shape: no import cycle between light_rcnn's modules (module-level or inside
functions), no module over 500 lines without a written reason, tools that import the installed
package instead of editing ``sys.path``."""
import ast
import os

import light_rcnn

PACKAGE_DIR = os.path.dirname(os.path.abspath(light_rcnn.__file__))
TOOLS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
MAX_LINES = 500
# A module may exceed MAX_LINES if its docstring says why, in a line starting with this.
SIZE_REASON = "Over 500 lines because"


def _modules():
    """``{dotted name: (path, is_package)}`` of every module under light_rcnn/ (configs excluded)."""
    mods = {}
    for d, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = [x for x in dirs if x not in ("configs", "__pycache__")]
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), os.path.dirname(PACKAGE_DIR))[:-3].replace(os.sep, ".")
                is_pkg = rel.endswith(".__init__")
                mods[rel[: -len(".__init__")] if is_pkg else rel] = (os.path.join(d, f), is_pkg)
    return mods


def import_graph(mods):
    """Edges module -> light_rcnn modules it imports (anywhere in its body). A module importing its own
    ancestor package is not an edge (the ancestor is already initialized when it runs)."""
    graph = {}
    for name, (path, is_pkg) in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read(), filename=path)
        package = name if is_pkg else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in mods and t != name and not name.startswith(t + ".")}
        graph[name] = deps
    return graph


def find_cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_light_rcnn():
    mods = _modules()
    assert "light_rcnn.config" in mods and "light_rcnn.data.builtin" in mods
    graph = import_graph(mods)
    assert "light_rcnn.config" in graph["light_rcnn"]
    assert find_cycles(graph) == []


def test_no_module_over_500_lines_without_a_reason():
    too_long = []
    for name, (path, _) in _modules().items():
        with open(path) as f:
            text = f.read()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > MAX_LINES and SIZE_REASON not in doc:
            too_long.append(f"{name} ({text.count(chr(10))} lines)")
    assert too_long == []


def test_tools_do_not_edit_sys_path():
    offenders = []
    for f in sorted(os.listdir(TOOLS_DIR)):
        if f.endswith(".py"):
            with open(os.path.join(TOOLS_DIR, f)) as fh:
                if "sys.path" in fh.read():
                    offenders.append(f)
    assert offenders == []

"""The package stays readable: no function over 80 lines, no import cycle between its modules."""
import ast
import collections
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FUNCTION_LINES = 80


def _modules(package_dir: str) -> dict[str, str]:
    """module name -> path, for every .py file under package_dir."""
    root = os.path.dirname(package_dir)
    out = {}
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[module.removesuffix(".__init__")] = path
    return out


def long_functions(package_dir: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for path in _modules(package_dir).values():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def _imported(node, modules: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names]
    return []


def import_cycles(package_dir: str) -> list[list[str]]:
    """Strongly connected groups of modules that import each other, directly or through others.
    Imports anywhere in a module count, inside functions too; a module-level import of a.b.c also
    runs a.b's __init__, unless a.b is a package of the importing module itself (then it is being
    imported already; the root package always is)."""
    modules = _modules(package_dir)
    package = os.path.basename(package_dir)
    graph = collections.defaultdict(set)
    for module, path in modules.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            for name in _imported(node, modules):
                parts, own = name.split("."), module.split(".")
                parents = [".".join(parts[:k]) for k in range(2, len(parts))
                           if parts[:k] != own[:k]] if id(node) in top_level else []
                graph[module].update(n for n in [name, *parents] if n in modules and n.split(".")[0] == package
                                     and n != module)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph[v]:
                cycles.append(sorted(group))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_function_in_the_package_is_over_80_lines():
    assert long_functions(os.path.join(REPO, "jaxtag")) == []


def test_no_import_cycle_in_the_package():
    assert import_cycles(os.path.join(REPO, "jaxtag")) == []


def test_the_checks_find_a_long_function_and_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n\ndef f():\n" + "    x = 1\n" * 85)
    (pkg / "sub" / "b.py").write_text("def g():\n    from pkg import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert [entry.split(" ")[1] for entry in long_functions(str(pkg))] == ["f"]
    assert import_cycles(str(pkg)) == [["pkg.a", "pkg.sub.b"]]
    # Importing pkg.sub.b at module level runs pkg/sub/__init__.py, which imports d (lazily).
    (pkg / "sub" / "b.py").write_text("x = 1\n")
    (pkg / "sub" / "__init__.py").write_text("def lazy():\n    import pkg.d\n")
    (pkg / "d.py").write_text("import pkg.sub.b\n")
    assert import_cycles(str(pkg)) == [["pkg.d", "pkg.sub"]]


def test_readme_starts_with_the_two_commands_ci_runs_and_its_links_resolve():
    """README's first block: the install-train-evaluate command and the test command, which
    .ci/run runs exactly; every relative link of README and docs/ points at a file that exists."""
    import re
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    first = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    assert first[0].startswith("pip install -e '.[test]' && python -m jaxtag.main --config=configs/cnn_lstm.py")
    test_command = first[1].split("#")[0].strip()
    assert test_command == "python -m pytest -q -n 2"
    assert test_command in open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
    pages = [os.path.join(REPO, "README.md")] + [os.path.join(REPO, "docs", p) for p in os.listdir(os.path.join(REPO, "docs"))
                                                 if p.endswith(".md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", open(page, encoding="utf-8").read()):
            assert os.path.exists(os.path.join(os.path.dirname(page), target)), (page, target)


def test_every_test_the_docs_name_exists():
    """docs/ and README cite tests as evidence (file.py::name): each must be there, or the evidence is gone."""
    import re
    cited, missing = set(), []
    for folder in (REPO, os.path.join(REPO, "docs")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".md"):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                cited |= {(name, *m) for m in re.findall(r"\b(test_\w+\.py)::(\w+)", text)}
    for doc, module, test in sorted(cited):
        path = os.path.join(REPO, "tests", module)
        tree = ast.parse(open(path, encoding="utf-8").read()) if os.path.exists(path) else None
        names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))} if tree else set()
        if test not in names:
            missing.append(f"{doc}: {module}::{test}")
    assert len(cited) > 20 and missing == []

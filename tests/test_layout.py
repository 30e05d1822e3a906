"""The house's rooms (issue 12): the library imports no Airflow, and no module imports itself back.

Every module of alma_regen outside alma_regen.airflow is imported in a fresh interpreter
(its own: an import that another module made first cannot hide it) and must not load
`airflow`. The shims at the old import paths of serialized names are the exception, for
one release. And the import graph of the package (every import, also those inside
functions) has no cycle.

The product holds no developer tool: synth, serve-archive, the local S3 and the demo are
the distribution alma-regen-dev (devtools/), which the product (plugins/, dags/) never
imports; their subcommands reach `alma-regen` through the entry-point group
`alma_regen.commands`.
"""
import ast
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "plugins" / "alma_regen"
DEV = ROOT / "devtools" / "alma_regen_dev"
SHIMS = {"alma_regen.priority", "alma_regen.deadlines"}
DEV_TOOLS = ("synth", "serve_archive", "local_s3", "demo")
DEV_COMMANDS = {"synth", "serve-archive", "demo"}
PRODUCT_COMMANDS = {"inspect", "casa-versions", "restore", "stage", "image", "publish", "clean", "raw-cache", "run"}


def module_names(pkg: Path = PKG) -> dict:
    """Every importable module of a package; `__main__` (`python -m`, it runs on import) aside."""
    out = {}
    for p in sorted(pkg.rglob("*.py")):
        parts = list(p.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def loads_airflow(module: str) -> str | None:
    code = f"import sys, {module}; print('airflow' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return f"{module}: import failed: {r.stderr.strip().splitlines()[-1:]}"
    return f"{module} loads airflow" if r.stdout.strip() == "True" else None


def test_the_library_imports_no_airflow():
    library = [m for m in module_names() if not m.startswith("alma_regen.airflow") and m not in SHIMS]
    assert "alma_regen.products.publish" in library and "alma_regen.admission" in library and len(library) > 40
    assert {"alma_regen.cli", "alma_regen.cli.common", "alma_regen.cli.workspace"} <= set(library)
    with ThreadPoolExecutor(4) as pool:
        problems = [p for p in pool.map(loads_airflow, library) if p]
    assert problems == []


def test_the_airflow_layer_and_the_shims_do_load_airflow():
    # The check above can fail: these modules are the ones that do.
    for m in ("alma_regen.airflow.plugin", "alma_regen.priority"):
        assert loads_airflow(m) == f"{m} loads airflow"


def imports_of(module: str, path: Path, mods: dict) -> set:
    is_pkg = path.name == "__init__.py"
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            targets = [n if n in mods else target for n in names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != module:
                deps.add(t)
    return deps


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    mods = module_names()
    graph = {m: imports_of(m, p, mods) for m, p in mods.items()}
    assert "alma_regen.s3" in graph["alma_regen.products.publish"]  # the graph is read (a cycle would show)
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert cycles(graph) == []


def _imported_modules(path: Path) -> set:
    """Every module a file names in an import statement (also inside functions), absolute."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level:
            out.add(node.module or "")
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_product_holds_no_dev_tool():
    mods = module_names()
    leaves = {m.rpartition(".")[2] for m in mods}
    assert leaves.isdisjoint(DEV_TOOLS), sorted(leaves & set(DEV_TOOLS))
    assert not (ROOT / "include" / "casa_scripts" / "synth_delivery.py").exists()
    product = [*mods.values(), *sorted((ROOT / "dags").glob("*.py"))]
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p) if m.split(".")[0] == "alma_regen_dev")
                 for p in product}
    assert {k: v for k, v in offenders.items() if v} == {}
    # ... and the dev tools are where the product's CLI finds them.
    assert {m.rpartition(".")[2] for m in module_names(DEV)} >= {*DEV_TOOLS, "commands"}
    assert (DEV / "casa_scripts" / "synth_delivery.py").is_file()


def test_the_dev_commands_reach_the_cli_through_entry_points(monkeypatch):
    import importlib.metadata as md

    from alma_regen import cli

    def commands():
        sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
        return set(sub.choices)

    declared = {ep.name: ep.dist.name for ep in md.entry_points(group=cli.COMMANDS_GROUP)}
    assert declared == dict.fromkeys(DEV_COMMANDS, "alma-regen-dev")  # `make` installs devtools/ editable
    with_dev = commands()
    # Without alma-regen-dev the product's commands are all there, the dev ones absent.
    monkeypatch.setattr(md, "entry_points", lambda **kw: [])
    product = commands()
    assert product >= PRODUCT_COMMANDS and product.isdisjoint(DEV_COMMANDS)
    assert with_dev == product | DEV_COMMANDS


def test_the_readme_layout_names_every_part_of_the_package_and_nothing_else():
    """README's "What runs where" is the map a maintainer reads first: every module and package
    of alma_regen (and of its airflow/ layer) is on it, and every file it names exists."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## What runs where", 1)[1].split("\n\n", 2)[1]
    names = set(re.findall(r"[\w.]+\.py|[\w]+/", block))
    package = ROOT / "plugins" / "alma_regen"
    for folder in (package, package / "airflow"):
        for p in folder.iterdir():
            if p.name in ("__init__.py", "__pycache__"):
                continue
            wanted = p.name if p.suffix == ".py" else f"{p.name}/"
            if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()):
                assert wanted in names, f"README's layout does not name {p.relative_to(ROOT)}"
    for operator in (package / "airflow" / "operators").glob("*.py"):
        if operator.name != "__init__.py":
            assert operator.stem in block, f"README's layout does not name operators/{operator.name}"
    existing = {p.name for top in ("plugins", "include", "devtools", "tests") for p in (ROOT / top).rglob("*.py")}
    assert not {n for n in names if n.endswith(".py")} - existing

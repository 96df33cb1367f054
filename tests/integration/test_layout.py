"""The package's structure: no import cycle, the baselines inside the package, one CLI table."""

import ast
from pathlib import Path

import acdc_bench

PACKAGE = Path(acdc_bench.__file__).parent
BASELINES = PACKAGE.parent / "baselines"


def _modules() -> dict[str, Path]:
    """Module name -> file, for acdc_bench and its installed-inside baselines."""
    found = {}
    for root, prefix in ((PACKAGE, "acdc_bench"), (BASELINES, "acdc_bench.baselines")):
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (function-level imports too)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in modules and t != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    # a package's __init__ re-exporting its submodules is not a cycle with them
    for name in list(graph):
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert "acdc_bench.methods.registry" in graph and "acdc_bench.baselines.rigl" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


#: The floors of the package, lowest first: a module may import its own floor and lower ones only.
#: Every module of the package stands on one (the root ``acdc_bench/__init__.py`` aside: it loads
#: its public names from the api and methods floors on first use).
FLOORS = (
    ("acdc_bench.core", "acdc_bench.numerics", "acdc_bench.models"),  # tensors, kernels, FLOPs, models
    ("acdc_bench.data",),
    ("acdc_bench.methods",),  # the method contract, the registry, dense and AC/DC
    ("acdc_bench.baselines", "acdc_bench.api", "acdc_bench.integrations", "acdc_bench.testing"),
    ("acdc_bench.config",),  # suites, resolved runs, cells, recipes
    ("acdc_bench.budget",),
    ("acdc_bench.run",),
    ("acdc_bench.report",),
    ("acdc_bench.cli", "acdc_bench.__main__"),
)


def _floor(name: str) -> int | None:
    return next((i for i, floor in enumerate(FLOORS)
                 if any(name == place or name.startswith(place + ".") for place in floor)), None)


def _loaded_by_name() -> dict[str, set[str]]:
    """The package modules loaded by name (``importlib.import_module``), which no import statement
    shows: the registry's built-in methods and the root's public names."""
    import acdc_bench
    from acdc_bench.methods import registry

    return {"acdc_bench.methods.registry": set(registry.BUILTIN.values()), "acdc_bench": set(acdc_bench._EXPORTS.values())}


def test_every_module_of_the_package_stands_on_a_floor():
    unplaced = sorted(name for name in _modules() if name != "acdc_bench" and _floor(name) is None)
    assert not unplaced, f"modules on no floor of FLOORS (add each to the floor it belongs to): {unplaced}"


def test_the_modules_loaded_by_name_exist_and_register_what_they_are_listed_for():
    from acdc_bench.methods import get_method, registry

    modules = _modules()
    for loader, targets in _loaded_by_name().items():
        assert targets and targets <= set(modules), f"{loader} loads modules that do not exist: {targets - set(modules)}"
    for name, module in registry.BUILTIN.items():
        assert get_method(name).__module__ == module, f"{module} does not register the method {name!r}"


def test_the_floors_import_downwards_only():
    """core < data < methods < baselines, api < config < budget < run < report < cli: the budget code
    reads the runs already there through a store it is given (acdc_bench.run.store.RunStore), never
    acdc_bench.run itself. The modules loaded by name count as imports, except the registry's loads of
    the built-in methods: those are plugins, registered as any user's plugin method is."""
    modules = _modules()
    plugins = _loaded_by_name()["acdc_bench.methods.registry"]
    edges = {name: _imports(path, name, modules) for name, path in modules.items()}
    for loader, targets in _loaded_by_name().items():
        edges[loader] |= targets - (plugins if loader == "acdc_bench.methods.registry" else set())
    upward = []
    for name, targets in edges.items():
        mine = _floor(name)
        if mine is None:
            continue
        for target in targets:
            theirs = _floor(target)
            if theirs is not None and theirs > mine and not name.startswith(target + "."):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports up the floors: " + ", ".join(sorted(upward))
    assert _floor("acdc_bench.budget.matching") < _floor("acdc_bench.run.store") < _floor("acdc_bench.report.dryrun")
    assert all(_floor(module) <= _floor("acdc_bench.baselines") for module in plugins)


def test_builtin_methods_come_from_this_package_even_beside_another_baselines(tmp_path, monkeypatch):
    """Another importable package named ``baselines`` cannot hide GMP, RigL and STR."""
    import subprocess
    import sys

    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "__init__.py").write_text("raise ImportError('not ours')\n")
    code = ("from acdc_bench.methods import get_method; "
            "print(get_method('gmp').__module__, get_method('rigl').__module__, get_method('str').__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["acdc_bench.baselines.gmp", "acdc_bench.baselines.rigl", "acdc_bench.baselines.str"]


def test_cli_is_one_module_with_a_plain_table():
    from acdc_bench import cli

    assert set(cli.COMMANDS) == {"run", "plan", "flops", "download", "reproduce", "compare", "leaderboard", "verify"}
    source = Path(cli.__file__).read_text()
    assert "._actions" not in source and "_SubParsersAction" not in source
    assert not (PACKAGE / "reporting_cli.py").exists()


def _hooks_in_order(text: str) -> list[str]:
    return __import__("re").findall(r"^\s{4}`?(\w+)\(", text, __import__("re").M)


def test_the_docs_list_the_hooks_of_the_method_contract_in_call_order():
    from acdc_bench.methods import base

    page = (PACKAGE.parent / "docs" / "your-own-method.md").read_text()
    section = page.split("Hooks, in call order", 1)[1].split("```", 2)[1]
    contract = _hooks_in_order(base.__doc__)
    assert contract[:3] == ["setup", "bind_optimizer", "on_epoch_start"] and "finalize" in contract
    assert _hooks_in_order(section) == contract
    for hook in contract:  # every hook listed is a member the loop can call
        assert callable(getattr(base.SparsityMethod, hook))


RUN_FOLDER_ACCESS = __import__("re").compile(
    r"folder\.(read_\w+|write_\w+|finish|lock_run|is_finished|finished_problems)\("  # the format's readers, writers
    r"|/ folder\.[A-Z_]+\b"  # a path to one of its files
    r"|/ [\"'](config\.yaml|result\.json|metrics\.csv|checkpoint\.pt|failed\.txt|predictions\.npz|\.lock)[\"']"
    r"|from acdc_bench\.run\.folder import [^\n]*\b(read_\w+|write_\w+|lock_run|finish|is_finished)\b")


def test_run_folders_are_read_and_written_through_the_store_only():
    """acdc_bench/run/folder.py holds the run folder's formats and acdc_bench/run/store.py, the RunStore,
    every read and write of one: no other module of the package opens a run folder's files."""
    allowed = {"acdc_bench.run.folder", "acdc_bench.run.store"}
    found = [f"{name}: {match.group(0)}" for name, path in sorted(_modules().items()) if name not in allowed
             for match in RUN_FOLDER_ACCESS.finditer(path.read_text())]
    assert not found, "run-folder access outside the RunStore: " + "; ".join(found)
    assert RUN_FOLDER_ACCESS.search('metrics = run_dir / "metrics.csv"')
    assert RUN_FOLDER_ACCESS.search("folder.read_config(run_dir)")

"""Core is typed, and stays typed: mypy on core, a meta-test over every public function and
method in core/*.py, and the lazy public API of ``thawkit`` seen by type checkers with real types.

mypy checks the ``thawkit`` package without ``thawkit.plugins``, under the ``[tool.mypy]`` settings
in pyproject.toml. The package lives in core/ and the editable install maps it there through an
import hook, which mypy cannot follow; so these tests lay it out as installed: a link named
``thawkit`` to core/ (a copy where links are not allowed) on ``MYPYPATH``. Type-check core by
hand with ``python tests/test_typing.py``.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
CONFIG = ROOT / "pyproject.toml"


# ----------------------------------------------------------------------- running mypy
def lay_out(site: Path) -> Path:
    """``site/thawkit`` is core/: a link, or a copy where links are not allowed."""
    site.mkdir(parents=True, exist_ok=True)
    try:
        (site / "thawkit").symlink_to(CORE, target_is_directory=True)
    except OSError:
        shutil.copytree(CORE, site / "thawkit", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def run_mypy(site: Path, *targets: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """``python -m mypy TARGETS`` with pyproject's settings; paths under ``site/thawkit`` are
    reported as core/."""
    env = {**os.environ, "MYPYPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--cache-dir", str(cache),
         *targets], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    result.stdout = result.stdout.replace(str(site / "thawkit"), "core")
    return result


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mypy", reason="mypy comes with the test extra: pip install -e '.[test]'")
    return lay_out(tmp_path_factory.mktemp("typing") / "site")


def test_mypy_is_clean_on_core(site: Path) -> None:
    result = run_mypy(site, "-p", "thawkit", cache=site.parent / "cache")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mypy on core failed:\n{output}"
    checked = re.search(r"no issues found in (\d+) source files", output)
    assert checked, output
    # every module of core, and nothing else (thawkit.plugins is not core)
    assert int(checked.group(1)) == len(list(CORE.glob("*.py"))), output


def test_public_api_has_real_types_for_type_checkers(site: Path) -> None:
    """A client's ``thawkit.NAME`` is the real object for every name in ``__all__`` (not the Any of
    the lazy ``__getattr__``), and is exported even under ``no_implicit_reexport``."""
    import thawkit

    client = site.parent / "client.py"
    client.write_text("import thawkit\n\n" + "".join(f"reveal_type(thawkit.{name})\n"
                                                       for name in thawkit.__all__))
    result = run_mypy(site, str(client), cache=site.parent / "cache")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mypy on a client of thawkit failed:\n{output}"
    revealed = re.findall(r'client\.py:(\d+): note: Revealed type is "(.*)"', output)
    assert len(revealed) == len(thawkit.__all__), output
    by_name = {thawkit.__all__[int(line) - 3]: kind for line, kind in revealed}
    assert [name for name, kind in by_name.items() if kind == "Any"] == [], output
    assert by_name["adapt"].startswith("def (model: "), by_name["adapt"]
    assert by_name["adapt"].endswith("-> thawkit.adapted.Adapted"), by_name["adapt"]
    assert "strategy: str | thawkit.strategy.Strategy" in by_name["adapt"], by_name["adapt"]
    assert "layout: thawkit.layout.Layout" in by_name["Adapted"], by_name["Adapted"]
    assert by_name["Adapted"].endswith("-> thawkit.adapted.Adapted"), by_name["Adapted"]


# ---------------------------------------------------------- every public def is annotated
Function = ast.FunctionDef | ast.AsyncFunctionDef


def _decorators(fn: Function) -> set[str]:
    return {ast.unparse(d).split("(")[0].rsplit(".", 1)[-1] for d in fn.decorator_list}


def public_functions(source: str, filename: str = "<source>") -> list[tuple[str, Function, bool]]:
    """``(qualname, node, is_method)`` of the public functions in ``source`` and the public
    methods of its public classes (properties, class and static methods included)."""
    found: list[tuple[str, Function, bool]] = []

    def visit(body: list[ast.stmt], prefix: str, in_class: bool) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    not node.name.startswith("_"):
                found.append((prefix + node.name, node, in_class))
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, f"{prefix}{node.name}.", True)
            elif isinstance(node, ast.If):  # module-level `if TYPE_CHECKING:` / version switches
                visit(node.body + node.orelse, prefix, in_class)

    visit(ast.parse(source, filename).body, "", False)
    return found


def unannotated(source: str, filename: str) -> list[str]:
    """Public functions and methods in ``source`` without a return annotation or with an
    unannotated parameter (a method's ``self``/``cls`` excepted): ``file:line name: what``."""
    problems: list[str] = []
    for qualname, fn, method in public_functions(source, filename):
        args = fn.args
        positional = args.posonlyargs + args.args
        if method and "staticmethod" not in _decorators(fn):
            positional = positional[1:]  # self / cls
        missing = [a.arg for a in positional + args.kwonlyargs if a.annotation is None]
        missing += [f"*{a.arg}" for a in (args.vararg,) if a is not None and a.annotation is None]
        missing += [f"**{a.arg}" for a in (args.kwarg,) if a is not None and a.annotation is None]
        where = f"{filename}:{fn.lineno} {qualname}"
        if missing:
            problems.append(f"{where}: parameters without annotation: {', '.join(missing)}")
        if fn.returns is None:
            problems.append(f"{where}: no return annotation")
    return problems


def test_every_public_function_and_method_in_core_is_annotated() -> None:
    problems = [p for path in sorted(CORE.glob("*.py"))
                for p in unannotated(path.read_text(), f"core/{path.name}")]
    assert problems == [], "unannotated public API in core:\n" + "\n".join(problems)


def test_the_annotation_meta_test_sees_methods_and_gaps() -> None:
    source = '''
class Public:
    def ok(self, x: int, *args: str, **kw: float) -> None: ...
    @staticmethod
    def static(x) -> None: ...
    @property
    def prop(self): ...
    def _private(self, x): ...
class _Hidden:
    def method(self, x): ...
def loose(a, b: int, *, c, **kw) -> int: ...
def _helper(x): ...
'''
    assert unannotated(source, "m.py") == [
        "m.py:5 Public.static: parameters without annotation: x",
        "m.py:7 Public.prop: no return annotation",
        "m.py:11 loose: parameters without annotation: a, c, **kw",
    ]
    seen = {name for path in sorted(CORE.glob("*.py"))
            for name, _, _ in public_functions(path.read_text(), path.name)}
    # the methods the architecture names, and a hook spec, are among those checked
    assert {"Adapted.optimizer", "Layout.validate", "Strategy.phases", "Plan.table",
            "Registry.get", "thawkit_describe_layout"} <= seen


# ------------------------------------------------- the lazy API and the type-visible API agree
def _type_checking_imports() -> list[ast.ImportFrom]:
    tree = ast.parse((CORE / "__init__.py").read_text())
    blocks = [node for node in tree.body if isinstance(node, ast.If)
              and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"]
    assert len(blocks) == 1, "core/__init__.py needs one `if TYPE_CHECKING:` block of imports"
    imports = [node for node in blocks[0].body if isinstance(node, ast.ImportFrom)]
    assert len(imports) == len(blocks[0].body), "the TYPE_CHECKING block holds only imports"
    return imports


def test_all_matches_the_type_checking_imports() -> None:
    import thawkit

    typed: dict[str, str] = {}
    for node in _type_checking_imports():
        assert node.level == 1 and node.module, ast.unparse(node)
        for alias in node.names:
            # `X as X` is an explicit re-export: checkers cannot evaluate `__all__` (built from _LAZY)
            assert alias.asname == alias.name, f"write `{alias.name} as {alias.name}`: {ast.unparse(node)}"
            assert alias.name not in typed, f"{alias.name} is imported twice"
            typed[alias.name] = node.module
    # the lazy loader imports each name from the module type checkers are told it comes from
    assert typed == thawkit._LAZY
    # __all__ is the lazy names plus those __init__ binds itself (hookimpl, hookspec, __version__)
    eager = set(thawkit.__all__) - set(typed)
    assert set(typed) <= set(thawkit.__all__)
    assert eager == {"__version__", "hookimpl", "hookspec"}
    assert all(name in vars(thawkit) for name in eager)
    for name in thawkit.__all__:
        assert getattr(thawkit, name) is not None


if __name__ == "__main__":  # type-check core by hand: python tests/test_typing.py
    with tempfile.TemporaryDirectory() as tmp:
        site_dir = lay_out(Path(tmp) / "site")
        done = run_mypy(site_dir, "-p", "thawkit", cache=Path(tmp) / "cache")
        print(done.stdout + done.stderr, end="")
    sys.exit(done.returncode)

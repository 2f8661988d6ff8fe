"""The examples run, the example recipes plan, and the README and the docs show them exactly as
they are.

Code blocks in README.md and docs/*.md are tied to reality by a marker on the line before them:

* ``<!-- file: examples/x.py -->``: the block is the whole file (``examples/``, ``docs/snippets/``);
* ``<!-- file: examples/x.py#hook -->``: the block is the ``# [hook]`` ... ``# [end]`` region;
* ``<!-- output: thawkit plan ... -->`` or ``<!-- output: python examples/x.py -->``: the block is
  ``$ command`` and what it prints;
* ``<!-- run -->``: a Python block that runs as it stands; a page's run blocks run in order, in
  one namespace, from the repository root.

Every ``python`` block carries one of them. A block that drifts from its file, an output that
drifts from what the command prints, or a run block that fails, fails here.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import thawkit
from thawkit.plugins.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MARKER = r"<!-- (file|output|run)(?:: (.+?))? -->"
MARKED = re.compile(rf"^{MARKER}\n```\w*\n(.*?)^```\n", re.S | re.M)
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))
RECIPES = sorted(p.name for p in (EXAMPLES / "recipes").glob("*.yaml"))
SNIPPETS = sorted(p.name for p in (DOCS / "snippets").iterdir())


def readme() -> str:
    return README.read_text()


def name_of(page: Path) -> str:
    return str(page.relative_to(ROOT))


def marked_blocks(kinds: tuple[str, ...] = ("file", "output")) -> list[tuple[str, str, str, str]]:
    """``(page, kind, target, block)`` for every marked block of the README and the docs."""
    return [(name_of(page), m[1], m[2] or "", m[3]) for page in PAGES
            for m in MARKED.finditer(page.read_text()) if m[1] in kinds]


def region(path: Path, name: str) -> str:
    pattern = rf"^# \[{re.escape(name)}\]\n(.*?)^# \[end\]\n"
    match = re.search(pattern, path.read_text(), re.S | re.M)
    assert match, f"{path.relative_to(ROOT)} has no '# [{name}]' ... '# [end]' region"
    return match.group(1)


@functools.cache
def run_script(path: str) -> subprocess.CompletedProcess:
    """``python PATH`` from the repository root (``PATH``: examples/x.py, docs/snippets/x.py)."""
    env = {**os.environ, "THAWKIT_PLUGINS": ""}
    return subprocess.run([sys.executable, path], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def in_root(monkeypatch, capsys):
    """``main(argv)`` run from the repository root; returns (exit code, stdout + stderr)."""
    monkeypatch.chdir(ROOT)

    def call(argv: list[str]) -> tuple[int, str]:
        thawkit.reset_plugin_manager()
        try:
            code = main(argv)
        finally:
            thawkit.reset_plugin_manager()
        out = capsys.readouterr()
        return code, out.out + out.err

    return call


# ------------------------------------------------------------------ examples
#: examples that need an optional extra: the module they import, and the extra
NEEDS = {"lightning_finetune.py": ("lightning", "lightning"),
         "hf_text_classifier.py": ("transformers", "transformers"),
         "hf_wav2vec2_ctc.py": ("transformers", "transformers")}


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_script_runs(name):
    if name in NEEDS:
        module, extra = NEEDS[name]
        pytest.importorskip(module, reason=f"needs the {extra} extra: pip install -e '.[{extra}]'")
    result = run_script(f"examples/{name}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip(), f"examples/{name} printed nothing"


def missing_inputs(recipe: thawkit.Recipe) -> list[str]:
    """Local files a recipe must find before it can plan without its data: weights, and data
    to count classes."""
    needed = []
    weights = recipe.backbone.weights
    if weights and weights.endswith((".pth", ".pt", ".bin", ".ckpt", ".safetensors")):
        needed.append(weights)
    if recipe.head.num_classes is None and recipe.data.train:
        needed.append(recipe.data.train)
    return [path for path in needed if not (ROOT / path).exists()]


def has_data(recipe: thawkit.Recipe) -> bool:
    return all((ROOT / path).is_dir() for path in (recipe.data.train, recipe.data.val) if path)


def load_example_recipe(name: str) -> thawkit.Recipe:
    pm = thawkit.get_plugin_manager(entrypoints=False)
    return thawkit.load_recipe(EXAMPLES / "recipes" / name, pm=pm)


@pytest.mark.parametrize("name", RECIPES)
def test_example_recipe_validates(name):
    """Every field, name and strategy parameter checks out, even where planning needs data."""
    assert load_example_recipe(name).strategy.name


@pytest.mark.parametrize("name", RECIPES)
def test_example_recipe_plans(name, in_root):
    missing = missing_inputs(load_example_recipe(name))
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, written by `thawkit demo` or your own data")
    recipe = load_example_recipe(name)
    code, out = in_root(["plan", f"examples/recipes/{name}", *([] if has_data(recipe) else ["--no-data"])])
    assert code == 0, out
    assert out.startswith(f"strategy {load_example_recipe(name).strategy.name}")
    assert "\ntotal " in out


def test_custom_strategy_file_is_also_a_cli_plugin(in_root):
    code, out = in_root(["-p", "examples/custom_strategy.py", "strategies"])
    assert code == 0, out
    assert re.search(r"^every-other\s+examples/custom_strategy\.py\s", out, re.M)


def test_tiny_zoo_reads_toml_recipes(in_root, tmp_path):
    """The tiny zoo's thawkit_read_recipe, from the command line: TOML recipes and --set values."""
    recipe = tmp_path / "zoo.toml"
    recipe.write_text('plugins = []\n[backbone]\nsource = "tinyzoo"\nname = "tiny16"\n\n'
                      '[strategy]\nname = "top-fraction"\nfraction = 0.5\n\n'
                      '[labels]\nclasses = ["cat", "dog", "eel"]\n')
    code, out = in_root(["-p", "examples/tiny_zoo.py", "plan", str(recipe),
                         "--set", "strategy.fraction=1.0", "--set", "optimizer.name=sgd"])
    assert code == 0, out
    assert "\nstrategy top-fraction (fraction=1.0), norm=frozen; optimizer sgd " in out, out
    assert re.search(r"^head\s+head\s+51\s", out, re.M), out  # 3 classes from [labels]: 16*3+3
    code, out = in_root(["-p", "examples/tiny_zoo.py", "plan", str(recipe), "--set", "strategy"])
    assert (code, out.strip()) == (2, "thawkit plan: error: --set 'strategy': expected key.path=value")
    recipe.write_text("[backbone\n")
    code, out = in_root(["-p", "examples/tiny_zoo.py", "plan", str(recipe)])
    assert code == 2 and "not a readable TOML recipe" in out and "Traceback" not in out, out


def test_tiny_zoo_hooks_are_each_one_region():
    from thawkit.plugins.cli import hookspecs as cli_hookspecs
    from thawkit.plugins.train import hookspecs as train_hookspecs

    hooks = [n for module in (thawkit.hookspecs, cli_hookspecs, train_hookspecs) for n in dir(module)
             if n.startswith("thawkit_")]
    text = (EXAMPLES / "tiny_zoo.py").read_text()
    assert sorted(re.findall(r"^# \[(thawkit_\w+)\]$", text, re.M)) == sorted(hooks)
    for hook in hooks:
        assert f"def {hook}(" in region(EXAMPLES / "tiny_zoo.py", hook)



# ------------------------------------------------------------- README and docs
def test_pages_show_every_example():
    shown = {(kind, target.split("#")[0]) for _, kind, target, _ in marked_blocks()}
    for path in ([f"examples/{n}" for n in SCRIPTS] + [f"examples/recipes/{n}" for n in RECIPES]
                 + [f"docs/snippets/{n}" for n in SNIPPETS]):
        assert ("file", path) in shown or ("output", f"thawkit plan {path}") in shown \
            or ("output", f"thawkit plan {path} --no-data") in shown, \
            f"neither the README nor docs/ shows {path}"
    assert ("output", "thawkit strategies") in shown
    assert ("output", "thawkit plan examples/recipes/resnet18_gradual.yaml --no-data") in shown


@pytest.mark.parametrize("page", PAGES, ids=name_of)
def test_python_blocks_are_tied_or_run(page):
    """Every python block (indented ones too) has a file, output or run marker before it."""
    lines = page.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"\s*```python\s*", line):
            before = lines[i - 1].strip() if i else ""
            assert re.fullmatch(MARKER, before) and not before.startswith("<!-- output"), \
                f"{name_of(page)}:{i + 1}: a python block without <!-- file: ... --> or <!-- run -->"


@pytest.mark.parametrize("page, kind, target, shown", marked_blocks(),
                         ids=[f"{p}:{k}:{t}" for p, k, t, _ in marked_blocks()])
def test_block_matches_reality(page, kind, target, shown, in_root):
    if kind == "file":
        path, _, name = target.partition("#")
        actual = region(ROOT / path, name) if name else (ROOT / path).read_text()
        assert shown == actual, f"{page}: the block differs from {target}"
        return
    argv = shlex.split(target)
    if argv[0] == "thawkit":
        _, out = in_root(argv[1:])
    else:
        assert argv[0] == "python" and len(argv) == 2, f"{page}: cannot run {target!r}"
        result = run_script(argv[1])
        out = result.stdout + result.stderr
    assert shown == f"$ {target}\n{out.rstrip()}\n", f"{page}: the output of `{target}` is stale"


RUN_PAGES = [p for p in PAGES if any(m[1] == "run" for m in MARKED.finditer(p.read_text()))]


@pytest.mark.parametrize("page", RUN_PAGES, ids=name_of)
def test_run_blocks_run(page, monkeypatch):
    blocks = [m[3] for m in MARKED.finditer(page.read_text()) if m[1] == "run"]
    monkeypatch.chdir(ROOT)
    thawkit.reset_plugin_manager()
    try:
        exec(compile("\n".join(blocks), f"{name_of(page)} (run blocks)", "exec"),
             {"__name__": "__main__"})
    finally:
        thawkit.reset_plugin_manager()


def quick_start_commands(text: str) -> tuple[str, str]:
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    first, second = re.findall(r"^```bash\n(.+)\n```$", quick, re.M)
    return first, second


def test_readme_and_getting_started_describe_the_demo_alike():
    """What the demo runs and how long it takes, said once: the same sentence on both pages."""
    def demo_sentence(text: str) -> str:
        quick = text.split("## Quick start", 1)[1]
        sentence = re.search(r"^Set up, then run the main job.*?\):$", quick, re.S | re.M)
        assert sentence, "no demo sentence under Quick start"
        return re.sub(r"\]\((?:docs/)?", "](", " ".join(sentence[0].split()))

    assert demo_sentence(readme()) == demo_sentence((DOCS / "getting-started.md").read_text())


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    [command] = re.findall(r'^TEST_COMMAND="(.+)"$', ci, re.M)
    first, second = quick_start_commands(readme())
    assert second.endswith(f"&& {command}")
    assert "pip install -e '.[test]'" in second
    assert "pip install torch==2.14.1 torchvision==0.29.1" in first
    main_job = first.rsplit("&& ", 1)[1]
    assert main_job.startswith("thawkit ")
    if main_job.startswith("thawkit demo"):  # the demo needs the train extra (scikit-learn, ...)
        [extras] = re.findall(r"pip install -e '\.\[([\w,]+)\]'", first)
        assert "train" in extras.split(",")
    for arg in shlex.split(main_job):
        if arg.endswith(".yaml"):
            assert (ROOT / arg).is_file(), arg
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci
    assert quick_start_commands((DOCS / "getting-started.md").read_text()) == (first, second), \
        "docs/getting-started.md and the README show different quick-start commands"


def test_cli_page_lists_every_command():
    table = (DOCS / "cli.md").read_text().split("## Errors", 1)[0]
    [sub] = [a for a in build_parser()._actions if a.dest == "command"]
    missing = [c for c in sub.choices if f"| `thawkit {c}" not in table]
    assert missing == [], f"docs/cli.md's command table does not list {missing}"


def test_readme_is_a_landing_page():
    text = readme()
    assert len(text.encode()) < 8000, "README.md should stay a short landing page"
    headings = re.findall(r"^## (.+)$", text, re.M)
    for heading in ("Quick start", "Pick a strategy by name", "Documentation"):
        assert heading in headings, heading
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    for entry in nav:
        [page] = entry.values()
        if page != "index.md":
            assert f"](docs/{page})" in text, f"README.md does not link docs/{page}"
    for link in re.findall(r"\]\(((?:docs|examples)/[^)#]*)", text):
        assert (ROOT / link).exists(), f"README.md links {link}, which does not exist"

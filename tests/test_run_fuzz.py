"""Property test: ``predict`` and ``export`` on a tampered run directory (a file truncated,
garbled, replaced, removed, or one of its fields given another type) end with exit code 0 or 2,
one short message and never a traceback. In-process (``thawkit.plugins.cli.main``), derandomized."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from test_train import load, make_data, recipe_dict

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FILES = ["recipe.yaml", "data.json", "run.json", "metrics.jsonl", "model.safetensors",
         "best.safetensors", "plan.json", "checkpoint.pt"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import thawkit
    from thawkit.plugins.train import train

    tmp = tmp_path_factory.mktemp("fuzz")
    data = make_data(tmp)
    pm = thawkit.get_plugin_manager(entrypoints=False)
    assert train(load(recipe_dict(data, tmp / "run"), pm),
                 log=lambda s: None).status == "finished"
    return tmp / "run", str(data / "val" / "dog" / "0.png")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


@st.composite
def tampering(draw):
    name = draw(st.sampled_from(FILES))
    kind = draw(st.sampled_from(["truncate", "garble", "replace", "remove", "retype", "directory",
                                 "inject"]))
    return name, kind, draw(st.floats(0, 1)), draw(st.binary(min_size=1, max_size=64)), \
        draw(json_values), draw(st.integers(0, 10**6))


def tamper(path: Path, kind: str, where: float, blob: bytes, value, pick: int) -> None:
    import yaml

    raw = path.read_bytes()
    cut = int(len(raw) * where)
    if kind == "truncate":
        path.write_bytes(raw[:cut])
    elif kind == "garble":
        path.write_bytes(raw[:cut] + blob + raw[cut + len(blob):])
    elif kind == "replace":
        path.write_bytes(blob)
    elif kind == "remove":
        path.unlink()
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif path.suffix in (".json", ".yaml", ".jsonl"):  # retype or add a field (nested one level)
        doc = (json.loads(raw.splitlines()[0]) if path.suffix == ".jsonl"
               else yaml.safe_load(raw) if path.suffix == ".yaml" else json.loads(raw))
        keys = list(doc) if kind == "retype" else ["plugins", "backbone", "classes", "status"]
        key = keys[pick % len(keys)]
        if isinstance(doc.get(key), dict) and doc[key] and pick % 2:
            sub = list(doc[key])[pick % len(doc[key])]
            doc[key][sub] = value
        else:
            doc[key] = value
        text = json.dumps(doc) if path.suffix != ".yaml" else yaml.safe_dump(doc)
        path.write_text(text)
    else:
        path.write_bytes(blob + raw)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(change=tampering(), command=st.sampled_from(["predict", "predict --best", "export"]))
def test_tampered_run_directory_is_exit_0_or_2_without_traceback(run, tmp_path_factory, change,
                                                                 command):
    from thawkit.plugins.cli import main

    run_dir, image = run
    name, kind, where, blob, value, pick = change
    path = run_dir / name
    saved = path.read_bytes()
    out_dir = tmp_path_factory.mktemp("out")
    try:
        tamper(path, kind, where, blob, value, pick)
        argv = command.split()[:1] + [str(run_dir)] + (
            [image, *command.split()[1:]] if command.startswith("predict")
            else [str(out_dir / "m.safetensors")])
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse
                rc = exc.code
        message = err.getvalue()
        assert rc in (0, 2), (change, command, message)
        assert "Traceback" not in message and len(message) < 2000, message
        assert "failed in command" not in message, message  # an unexpected exception, wrapped
    finally:
        if path.is_dir():
            path.rmdir()
        path.write_bytes(saved)
        shutil.rmtree(out_dir)

"""Hostile and careless input (issue 10, the input side): every case one clean error (exit code 2,
one message, no traceback, a bounded length) naming what is wrong and where.

Each case below was a traceback, a misleading message or an unbounded output before."""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import pytest
import yaml

SMALL_CNN = "thawkit.plugins.train.demo_model:small_cnn"
BASE = {"backbone": {"source": "torchvision", "name": "resnet18"}, "strategy": {"name": "head-only"},
        "head": {"num_classes": 3}}


def cli(*argv: str) -> tuple[int, str, str]:
    """``thawkit ARGV`` in this process: exit code, stdout, stderr."""
    from thawkit.plugins.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, err: str, *expected: str, limit: int = 2000) -> None:
    """Exit code 2 and one bounded message naming ``expected``, not blaming a built-in plugin."""
    assert code == 2, err
    assert "Traceback" not in err and "built-in plugin" not in err, err
    assert err.count("error:") == 1 and len(err) < limit, err[:3000]
    for text in expected:
        assert text in err, err


# ------------------------------------------------------------------ documents
def _alias_bomb(width: int = 9, depth: int = 6) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n" + yaml.safe_dump(BASE)


DOCUMENTS = {
    "not UTF-8": (".yaml", b"\xff\xfe recipe", ["not UTF-8", ":1:"]),
    "not UTF-8 on line 3": (".yaml", b"backbone: {}\n# ok\nname: caf\xe9\n", ["not UTF-8", ":3:"]),
    "nested 3000 deep": (".yaml", b"a: " + b"[" * 3000 + b"]" * 3000, ["nested deeper than 100"]),
    "nested maps": (".yaml", "".join("  " * i + f"k{i}:\n" for i in range(150)).encode(),
                    ["nested deeper than 100"]),
    "a 5000-digit integer": (".yaml", f"train: {{seed: {'9' * 5000}}}\n".encode(), ["5,000 digits"]),
    "an alias bomb": (".yaml", _alias_bomb().encode(), ["expands to more than 100,000"]),
    "an alias chain nested deep": (".yaml", ("a0: &a0 [x]\n" + "".join(
        f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 300))).encode(), ["nested deeper than 100"]),
    "a recursive alias": (".yaml", b"a: &a [*a]\n", ["refers to a node that contains it"]),
    "a bad date": (".yaml", b"backbone: {kwargs: {x: 2020-13-45}}\n", ["does not parse", "month"]),
    "over 100 kB": (".yaml", b"# " + b"x" * 100_001 + b"\n", ["at most 100,000 bytes"]),
    "JSON nested deep": (".json", b"[" * 5000 + b"]" * 5000, ["nested deeper than 100"]),
    "JSON nested 150": (".json", b"{\"a\": " + b"[" * 150 + b"]" * 150 + b"}", ["nested deeper than 100"]),
    "a JSON 5000-digit integer": (".json", b"[" + b"7" * 5000 + b"]", ["5,000 digits"]),
    "YAML syntax": (".yaml", b"backbone: [\n", ["YAML does not parse"]),
    "a list": (".yaml", b"- 1\n", ["must be a mapping"]),
}


@pytest.mark.parametrize("case", list(DOCUMENTS))
def test_hostile_documents_are_one_clean_error(tmp_path, case):
    suffix, content, expected = DOCUMENTS[case]
    path = tmp_path / f"r{suffix}"
    path.write_bytes(content)
    code, out, err = cli("plan", str(path), "--json")
    assert_clean(code, err, *expected)
    assert out == ""


def test_limits_leave_ordinary_aliases_alone(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE) + "optimizer: {lr: &lr 0.01, weight_decay: *lr}\n")
    code, out, err = cli("plan", str(path))
    assert code == 0, err


def test_recipe_paths_that_are_no_file(tmp_path):
    code, _, err = cli("plan", "x" * 300 + ".yaml")  # longer than a file name may be
    assert_clean(code, err, "cannot be read", "File name too long", "more characters]")
    code, _, err = cli("plan", str(tmp_path))
    assert_clean(code, err, "is not a regular file")
    code, _, err = cli("plan", str(tmp_path / "missing.yaml"))
    assert_clean(code, err, "does not exist")


def test_set_values_keep_the_limits(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(BASE))
    code, _, err = cli("plan", str(path), "--set", "backbone.kwargs.x=" + "[" * 500 + "]" * 500)
    assert_clean(code, err, "nested deeper than 100")
    code, _, err = cli("plan", str(path), "--set", "train.seed=" + "9" * 5000)
    assert_clean(code, err, "5,000 digits")
    code, _, err = cli("plan", str(path), "--set", "backbone.kwargs." + ".".join(["a"] * 50_000) + "=1")
    assert_clean(code, err, "more than 100 parts", "more characters]")
    # what is no YAML stays a string, as before
    code, _, err = cli("plan", str(path), "--set", "train.output=[unclosed")
    assert code == 0, err


# ---------------------------------------------------- plan rejects what train would
PLAN_CASES = {
    "momentum: abc": ({"optimizer": {"name": "sgd", "momentum": "abc"}}, ["optimizer 'sgd'", "momentum"]),
    "betas: [2, 3]": ({"optimizer": {"name": "adam", "betas": [2, 3]}}, ["optimizer 'adam'", "beta"]),
    "warmup .inf": ({"schedule": {"warmup_epochs": float("inf")}}, ["schedule.warmup_epochs", "finite"]),
    "warmup longer than the run": ({"schedule": {"warmup_epochs": 20}, "train": {"epochs": 10}},
                                   ["warmup_epochs", "shorter than the run"]),
    "schedule parameter": ({"schedule": {"name": "step", "gamma": float("nan")}}, ["schedule.gamma"]),
    "seed 2**70": ({"train": {"seed": 2**70}}, ["train.seed"]),
    "builder device": ({"backbone": {"kwargs": {"device": "cuda:99"}}}, ["backbone.kwargs", "train.device"]),
    "no device": ({"train": {"device": "quantum:1"}}, ["train.device", "not a device"]),
    "std 0": ({"data": {"std": [0, 0, 0]}}, ["data.std.0", "greater than 0"]),
    "mean nan": ({"data": {"mean": [float("nan"), 0, 0]}}, ["data.mean.0", "finite"]),
    "image_size 100000": ({"data": {"image_size": 100000}}, ["data.image_size", "4096"]),
    "output ''": ({"train": {"output": ""}}, ["train.output", "working directory"]),
    "num_workers 10**6": ({"data": {"num_workers": 10**6}}, ["data.num_workers"]),
    "grad_clip inf": ({"train": {"grad_clip": float("inf")}}, ["train.grad_clip"]),
    "cache_memory digits": ({"train": {"cache_memory": "9" * 400 + "GB"}}, ["train.cache_memory"]),
    "num_classes 2**63": ({"head": {"num_classes": 2**63}}, ["head.num_classes"]),
    "dropout nan": ({"head": {"dropout": float("nan")}}, ["head.dropout"]),
    "torchvision num_classes -1": ({"backbone": {"kwargs": {"num_classes": -1}}},
                                   ["'torchvision:resnet18'", "{'num_classes': -1}", "RuntimeError"]),
    "vit image_size 7": ({"backbone": {"name": "vit_b_16", "kwargs": {"image_size": 7}}},
                         ["'torchvision:vit_b_16'", "{'image_size': 7}", "AssertionError"]),
    "timm global_pool 2": ({"backbone": {"source": "timm", "name": "resnet18", "kwargs": {"global_pool": 2}}},
                           ["'timm:resnet18'", "{'global_pool': 2}", "backbone.kwargs"]),
    "python misspelt kwarg": ({"backbone": {"source": "python", "name": SMALL_CNN, "kwargs": {"widht": 8}}},
                              [f"'python:{SMALL_CNN}'", "{'widht': 8}", "TypeError", "widht"]),
    "python module fails": ({"backbone": {"source": "python", "name": "json.decoder.nonexistent:f"}},
                            ["cannot import module"]),
    "gradual bad regex": ({"strategy": {"name": "gradual", "phases": [{"epoch": 0, "params": ["("]}]}},
                          ["strategy.phases.0.params.0", "not a valid regex"]),
}


def _merged(update: dict) -> dict:
    d = {k: dict(v) for k, v in BASE.items()}
    for section, values in update.items():
        d[section] = {**d.get(section, {}), **values}
    return d


@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_plan_rejects_what_train_would_fail_on(tmp_path, case):
    update, expected = PLAN_CASES[case]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_merged(update)))
    code, out, err = cli("plan", str(path))
    assert_clean(code, err, *expected)


def test_plan_builds_the_optimizer_and_schedule_it_shows(tmp_path):
    """The checks above come from building the optimizer and the schedule: good settings pass."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_merged({"optimizer": {"name": "sgd", "momentum": 0.9},
                                            "schedule": {"name": "step", "gamma": 0.5}})))
    code, out, err = cli("plan", str(path))
    assert code == 0 and "sgd" in out, err


# -------------------------------------------------------------- output limits
def test_error_messages_quote_a_bounded_amount_of_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short relative file name: the length of each line is fixed
    path = tmp_path / "r.yaml"
    huge = "y" * 50_000
    path.write_text(yaml.safe_dump({**BASE, "strategy": {"name": huge}}))
    code, _, err = cli("plan", str(path))
    assert_clean(code, err, "unknown strategy", "more characters]")
    path.write_text(yaml.safe_dump({**BASE, huge: 1, **{f"k{i}": i for i in range(100)}}, sort_keys=False))
    code, _, err = cli("plan", "r.yaml")
    assert_clean(code, err, "unknown field", "more characters]", "and 81 more problems", limit=4200)
    path.write_text(yaml.safe_dump(_merged({"train": {"cache_memory": "z" * 50_000}})))
    code, _, err = cli("plan", str(path))
    assert_clean(code, err, "train.cache_memory", "more characters]")


def test_the_cli_cuts_any_long_message(tmp_path):
    from thawkit.plugins.cli import MESSAGE_LIMIT

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, "backbone": {"source": "torchvision", "name": "resnet18",
                                                         "weights": "/" + "d/" * 3000 + "w.pt"}}))
    code, _, err = cli("plan", str(path))
    assert code == 2 and len(err) <= MESSAGE_LIMIT + 200, len(err)


# ------------------------------------------------------------------ weights
def _weights_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    import torch
    from safetensors.torch import save_file

    (tmp / "dir.pt").mkdir()
    os.mkfifo(tmp / "fifo.pt")
    (tmp / "zero.pt").symlink_to("/dev/zero")
    (tmp / "dangling.pt").symlink_to(tmp / "nowhere.pt")
    (tmp / "random.pt").write_bytes(bytes(range(7, 250)) * 4)
    (tmp / "empty.pt").write_bytes(b"")
    save_file({"w": torch.zeros(2)}, str(tmp / "st.pt"))
    (tmp / "cut.safetensors").write_bytes((tmp / "st.pt").read_bytes()[:-3])

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp / "code.pt").write_bytes(pickle.dumps({"w": Payload()}))
    return {"a directory": (tmp / "dir.pt", "is a directory"),
            "a FIFO": (tmp / "fifo.pt", "is a FIFO"),
            "a /dev/zero symlink": (tmp / "zero.pt", "is a device (a symbolic link to '/dev/zero')"),
            "a dangling symlink": (tmp / "dangling.pt", "is a broken symbolic link"),
            "random bytes": (tmp / "random.pt", "neither a zip archive nor a pickle"),
            "an empty file": (tmp / "empty.pt", "the file is empty"),
            "safetensors named .pt": (tmp / "st.pt", "looks like a safetensors file"),
            "a truncated safetensors": (tmp / "cut.safetensors", "not a valid safetensors file"),
            "pickled code": (tmp / "code.pt", "contains pickled code")}


def test_weight_files_say_what_they_are(tmp_path):
    from thawkit import WeightsError
    from thawkit.plugins.weights import read_weights

    for case, (path, expected) in _weights_cases(tmp_path).items():
        with pytest.raises(WeightsError) as info:
            read_weights(path)
        assert expected in str(info.value), (case, str(info.value))
        assert "does not exist" not in str(info.value) or case == "a dangling symlink"
        assert (expected == "contains pickled code") == ("pickled code" in str(info.value)), case


def test_plan_names_what_a_weights_path_is(tmp_path):
    cases = _weights_cases(tmp_path)
    for case in ("a directory", "a FIFO", "a /dev/zero symlink"):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({**BASE, "backbone": {"source": "torchvision", "name": "resnet18",
                                                             "weights": str(cases[case][0])}}))
        code, _, err = cli("plan", str(path))
        assert_clean(code, err, "is not a regular file")


# ---------------------------------------------------------- gradual phases
def _gradual(phases, pm):
    import thawkit
    from builders import resnet

    return thawkit.adapt(resnet(), "gradual", phases=phases, pm=pm)


def test_a_block_named_twice_in_one_phase_is_an_error(pm):
    from thawkit import ConfigError

    with pytest.raises(ConfigError, match=r"strategy\.phases\.1\.blocks: 'layer4' named twice"):
        _gradual([{"epoch": 0, "blocks": ["head"]}, {"epoch": 1, "blocks": ["layer4", "layer4"]}], pm)


def test_a_head_regex_in_phase_0_is_accepted(pm):
    adapted = _gradual([{"epoch": 0, "params": [r"^fc\."]}, {"epoch": 2, "params": ["layer4"]}], pm)
    assert [p.epoch for p in adapted.phases] == [0, 2]
    assert adapted.phases[0].trainable == {"fc.weight", "fc.bias"}
    with pytest.raises(Exception, match="already thawed by an earlier phase"):  # later: still an error
        _gradual([{"epoch": 0, "params": ["layer4"]}, {"epoch": 2, "params": ["layer4"]}], pm)


def test_phase_errors_use_the_recipe_path_style(tmp_path):
    """Errors from the schema (pydantic) and from the strategy name ``strategy.phases.N.field``."""
    path = tmp_path / "r.yaml"
    for phases, expected in (([{"epoch": 0, "blocks": "x", "rest": 3}], "strategy.phases.0.rest"),
                             ([{"epoch": 0, "rest": True}, {"epoch": 0, "rest": True}],
                              "strategy.phases.1.epoch"),
                             ([{"epoch": 1, "rest": True}], "strategy.phases.0.epoch")):
        path.write_text(yaml.safe_dump({**BASE, "strategy": {"name": "gradual", "phases": phases}}))
        code, _, err = cli("plan", str(path))
        assert_clean(code, err, expected)
        assert "phases[" not in err


# ----------------------------------------------------------------- data
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` (what the decoder's size check reads)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _data(tmp: Path, per_class: int = 2) -> Path:
    from test_train import write_folder

    write_folder(tmp / "train", ("a", "b"), per_class, size=16, seed=1)
    write_folder(tmp / "val", ("a", "b"), 1, size=16, seed=2)
    return tmp


def _recipe(data: Path, out: Path, pm, **sections):
    from test_train import load, recipe_dict

    return load(recipe_dict(data, out, **sections), pm)


def test_a_decompression_bomb_is_named_before_anything_is_written(tmp_path, pm):
    from thawkit.plugins.train import train
    from thawkit.plugins.train.data import DataError

    data = _data(tmp_path)
    bomb = data / "train" / "a" / "huge.png"
    bomb.write_bytes(_png_header(20000, 20000))
    with pytest.raises(DataError, match="huge.png.*too large to decode safely"):
        train(_recipe(data, tmp_path / "run", pm), log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_one_training_image_with_training_batchnorm_is_named_before_training(tmp_path, pm):
    from thawkit import ConfigError
    from thawkit.plugins.train import train

    data = tmp_path
    from test_train import write_folder

    write_folder(data / "train", ("a",), 1, size=16, seed=1)
    write_folder(data / "val", ("a",), 1, size=16, seed=2)
    # resnet18 at 16 px: layer4's BatchNorm sees 1x1 maps, so one image is one value per channel
    bn = {"backbone": {"source": "torchvision", "name": "resnet18", "kwargs": {}},
          "strategy": {"name": "full"}}
    recipe = _recipe(data, tmp_path / "run", pm, **bn)
    with pytest.raises(ConfigError, match="data.train has one image.*BatchNorm.*batch_size >= 2"):
        train(recipe, log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_the_batchnorm_check_passes_what_trains(tmp_path, pm):
    """Frozen BatchNorm statistics, or BatchNorm over larger maps, train on single images."""
    from thawkit.plugins.train.session import check_single_batches

    frozen = _recipe(tmp_path, tmp_path / "run", pm, backbone={
        "source": "torchvision", "name": "resnet18", "kwargs": {}}, strategy={"name": "head-only"})
    check_single_batches(frozen, 2, 16, 1)
    cnn = _recipe(tmp_path, tmp_path / "run", pm, strategy={"name": "full"})  # the small CNN: 2x2 maps
    check_single_batches(cnn, 2, 16, 1)
    full = _recipe(tmp_path, tmp_path / "run", pm, backbone={
        "source": "torchvision", "name": "resnet18", "kwargs": {}}, strategy={"name": "full"})
    with pytest.raises(Exception, match="data.batch_size is 1"):
        check_single_batches(full, 2, 16, 5)


def test_weights_names_too_long_for_a_file_name(pm):
    import thawkit
    from thawkit import ThawkitError

    for weights, expected in (("x" * 300, "unknown weights"), ("y" * 300 + ".pt", "File name too long")):
        with pytest.raises(ThawkitError, match=expected) as info:
            thawkit.load_backbone("torchvision:resnet18", pm=pm, weights=weights)
        assert "more characters]" in str(info.value) and len(str(info.value)) < 1000

"""thawkit train, plan, predict and export on transformers models from a recipe: text classification
from CSV/JSON Lines and audio classification from a folder per class (``data.reader``), with
stop/resume, and bad input as one message with exit 2 and nothing written. Tiny random models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("transformers")
soundfile = pytest.importorskip("soundfile")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from thawkit.plugins.cli import main  # noqa: E402
from thawkit.plugins.train.checkpoint import read_jsonl  # noqa: E402
from thawkit.plugins.train.rundir import RunDir  # noqa: E402

from hf_tiny import AUDIO, TEXT, quiet, sentences, tokenizer  # noqa: E402


def bert_dir(root: Path) -> Path:
    """A save_pretrained-style directory: a tiny BERT config and an in-memory tokenizer."""
    from transformers import BertConfig

    quiet()
    path = root / "tiny-bert"
    BertConfig(**TEXT).save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


def wav2vec2_dir(root: Path) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

    quiet()
    path = root / "tiny-wav2vec2"
    Wav2Vec2Config(**AUDIO).save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(path)
    return path


def text_files(root: Path) -> tuple[Path, Path]:
    def write(path, rows):
        path.write_text("review,stars\n" + "".join(f'"{t}",{"pos" if y else "neg"}\n' for t, y in rows))
        return path

    train = write(root / "train.csv", sentences(12, seed=1))
    val = root / "val.jsonl"
    val.write_text("".join(json.dumps({"review": t, "stars": "pos" if y else "neg"}) + "\n"
                           for t, y in sentences(6, seed=2)))
    return train, val


def tone(path: Path, hz: float, rate: int, seconds: float = 0.1) -> None:
    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(str(path), (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)


def audio_folders(root: Path) -> tuple[Path, Path]:
    for split, n in (("train", 3), ("val", 2)):
        for name, hz in (("high", 2000), ("low", 200)):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                tone(root / split / name / f"{i}.{'wav' if i % 2 else 'flac'}", hz + 10 * i,
                     16000 if i % 2 else 8000)
    return root / "train", root / "val"


def text_recipe(root: Path, **data) -> Path:
    train, val = text_files(root)
    d = {"backbone": {"source": "transformers", "name": str(bert_dir(root)),
                      "kwargs": {"task": "sequence-classification"}},
         "strategy": {"name": "gradual", "every": 1},
         "optimizer": {"name": "adamw", "lr": 0.01},
         "data": {"reader": "text", "train": str(train), "val": str(val), "text_column": "review",
                  "label_column": "stars", "max_length": 8, "batch_size": 4, **data},
         "train": {"epochs": 3, "deterministic": True, "device": "cpu", "output": str(root / "unused")}}
    path = root / "text.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def audio_recipe(root: Path) -> Path:
    train, val = audio_folders(root)
    d = {"backbone": {"source": "transformers", "name": str(wav2vec2_dir(root)),
                      "kwargs": {"task": "audio-classification"}},
         "strategy": {"name": "last-block"},
         "optimizer": {"name": "adamw", "lr": 0.01},
         "data": {"reader": "audio", "train": str(train), "val": str(val), "batch_size": 2},
         "train": {"epochs": 2, "deterministic": True, "device": "cpu", "output": str(root / "unused")}}
    path = root / "audio.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(RunDir(run).model))


# ----------------------------------------------------------------- text
def test_cli_text_run_resumes_exactly_and_predicts(tmp_path, capsys):
    recipe = text_recipe(tmp_path)
    assert main(["train", str(recipe), "--output", str(tmp_path / "full")]) == 0
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "12 train / 6 val text" in out
    assert "data.reader text" in out  # the cache is off, and the log says why
    info = json.loads((tmp_path / "full" / "data.json").read_text())
    assert info["classes"] == ["neg", "pos"] and info["preprocess"]["reader"] == "text"
    assert info["train"]["examples"] == 12

    # stopped after epoch 1, then continued: the same weights as the uninterrupted run
    assert main(["train", str(recipe), "--output", str(tmp_path / "split"), "--stop-after", "1"]) == 0
    assert main(["train", "--resume", str(tmp_path / "split")]) == 0
    capsys.readouterr()
    full, split = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert full.keys() == split.keys()
    assert all(torch.equal(full[k], split[k]) for k in full)
    assert read_jsonl(RunDir(tmp_path / "full").metrics) == [
        {**m, "seconds": f["seconds"]} for m, f in zip(read_jsonl(RunDir(tmp_path / "split").metrics),
                                                       read_jsonl(RunDir(tmp_path / "full").metrics))]

    # interrupted mid-epoch (as by Ctrl-C: the checkpoint holds the step), then continued
    from thawkit import load_recipe
    from thawkit.plugins.train import resume, train

    def interrupt(trainer):
        if trainer.state.epoch == 1 and trainer.state.step == 1:
            trainer.interrupt_requested = True

    first = train(load_recipe(str(recipe)), run_dir=tmp_path / "mid", log=lambda s: None,
                  on_step=interrupt)
    assert first.status == "interrupted" and "epoch 2, step 1" in first.message
    assert resume(tmp_path / "mid", log=lambda s: None).status == "finished"
    mid = weights(tmp_path / "mid")
    assert all(torch.equal(full[k], mid[k]) for k in full)

    assert main(["predict", str(tmp_path / "full"), "a good film", "an awful plot", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "a good film" and lines[3] == "an awful plot" and len(lines) == 6
    assert {ln.split()[-1] for ln in lines[1:3]} == {"neg", "pos"}
    probs = [float(ln.split()[0].rstrip("%")) for ln in lines[1:3] + lines[4:6]]
    assert abs(sum(probs[:2]) - 100) < 0.02 and abs(sum(probs[2:]) - 100) < 0.02

    out = tmp_path / "export.safetensors"
    assert main(["export", str(tmp_path / "full"), str(out)]) == 0
    assert out.is_file()


def test_cli_text_run_with_frozen_dropout_off(tmp_path, capsys):
    """``frozen_dropout: off`` in a recipe (YAML 1.2: ``off`` is a string) or by ``--set``: the plan
    says so, the layers frozen in each epoch run without dropout, frozen tensors stay the
    starting ones, and a stopped run resumes bit-identical."""
    from thawkit import load_recipe
    from thawkit.norm import _force_eval  # set_inference's hook
    from thawkit.plugins.interpolation import state_digest
    from thawkit.plugins.train import train

    recipe = text_recipe(tmp_path)
    assert main(["plan", str(recipe), "--set", "strategy.frozen_dropout=off"]) == 0
    assert "norm=frozen, frozen_dropout=off" in capsys.readouterr().out
    assert main(["plan", str(recipe), "--set", "strategy.frozen_dropout=sometimes"]) == 2
    err = capsys.readouterr().err
    assert "strategy.frozen_dropout: Input should be 'keep' or 'off'" in err and "Traceback" not in err
    assert "  name: gradual\n" in recipe.read_text()
    recipe.write_text(recipe.read_text().replace("  name: gradual\n",
                                                 "  name: gradual\n  frozen_dropout: off\n"))
    assert load_recipe(str(recipe)).strategy.params["frozen_dropout"] == "off"

    held: dict[int, list[bool]] = {}

    def watch(trainer):
        layers = trainer.s.adapted.model.bert.encoder.layer
        held.setdefault(trainer.state.epoch, [_force_eval in layers[i]._forward_pre_hooks.values()
                                              for i in (0, 1)])

    assert train(load_recipe(str(recipe)), run_dir=tmp_path / "full", log=lambda s: None,
                 on_step=watch).status == "finished"
    # gradual, one layer per epoch from the top: the frozen ones hold inference mode
    assert held == {0: [True, True], 1: [True, False], 2: [False, False]}
    final = weights(tmp_path / "full")
    start = json.loads((tmp_path / "full" / "start.json").read_text())["tensors"]
    stem = [k for k in start if k.startswith("bert.embeddings.")]
    assert stem and all(state_digest(final, [k]) == start[k] for k in stem)
    assert main(["train", str(recipe), "--output", str(tmp_path / "split"), "--stop-after", "2"]) == 0
    assert main(["train", "--resume", str(tmp_path / "split")]) == 0
    split = weights(tmp_path / "split")
    assert final.keys() == split.keys() and all(torch.equal(final[k], split[k]) for k in final)


def test_cli_text_run_with_a_relative_model_directory_resumes_from_elsewhere(tmp_path, monkeypatch,
                                                                              capsys):
    recipe = text_recipe(tmp_path, max_length=6)
    d = yaml.safe_load(recipe.read_text())
    d["backbone"]["name"] = "./tiny-bert"
    recipe.write_text(yaml.safe_dump(d))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "text.yaml", "--output", "run", "--stop-after", "1"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["backbone"]["name"] == str(tmp_path / "tiny-bert")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert "finished 3 epochs" in capsys.readouterr().out


def test_cli_plan_checks_the_text_data(tmp_path, capsys):
    recipe = text_recipe(tmp_path, text_column="body")
    assert main(["plan", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "data.train" in err and "no column 'body'" in err and "Traceback" not in err
    assert main(["plan", str(recipe), "--set", "data.text_column=review"]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.1" in out and "data.reader text" in out


# ----------------------------------------------------------------- audio
def test_cli_audio_run_trains_and_predicts(tmp_path, capsys):
    recipe = audio_recipe(tmp_path)
    assert main(["train", str(recipe), "--output", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "6 train / 4 val audio" in out
    info = json.loads((tmp_path / "run" / "data.json").read_text())
    assert info["classes"] == ["high", "low"] and info["preprocess"]["sampling_rate"] == 16000
    metrics = read_jsonl(RunDir(tmp_path / "run").metrics)
    assert len(metrics) == 2 and metrics[0]["trainable_params"] < sum(
        v.numel() for v in weights(tmp_path / "run").values())
    clip = tmp_path / "train" / "high" / "0.flac"
    assert main(["predict", str(tmp_path / "run"), str(clip)]) == 0
    assert str(clip) in capsys.readouterr().out
    # stopped after epoch 1 and continued: the uninterrupted run's weights
    assert main(["train", str(recipe), "--output", str(tmp_path / "split"), "--stop-after", "1"]) == 0
    assert main(["train", "--resume", str(tmp_path / "split")]) == 0
    full, split = weights(tmp_path / "run"), weights(tmp_path / "split")
    assert all(torch.equal(full[k], split[k]) for k in full)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "export")]) == 0
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["classes"] == ["high", "low"] and config["preprocess"]["reader"] == "audio"


# ------------------------------------------------------------ bad input
def _fails(args: list[str], capsys, *needles: str, nothing_in: Path | None = None,
           lines: int = 1) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == lines, err
    for needle in needles:
        assert needle in err, err
    if nothing_in is not None:
        assert not nothing_in.exists() or not any(nothing_in.iterdir())


@pytest.mark.parametrize("mutate, needles", [
    (lambda root: (root / "train.csv").write_text("review,grade\n\"good\",pos\n"),
     ["data.train", "no column 'stars'"]),
    (lambda root: (root / "val.jsonl").write_text(""), ["data.val", "an empty file"]),
    (lambda root: (root / "tiny-bert" / "config.json").unlink(), ["has no config.json"]),
])
def test_cli_bad_text_input_is_one_message_exit_2(tmp_path, capsys, mutate, needles):
    recipe = text_recipe(tmp_path)
    mutate(tmp_path)
    for command in ("plan", "train"):
        args = [command, str(recipe)] + (["--output", str(tmp_path / "run")] if command == "train" else [])
        _fails(args, capsys, *needles, nothing_in=tmp_path / "run")


def test_cli_task_without_head_is_exit_2(tmp_path, capsys):
    recipe = text_recipe(tmp_path)
    _fails(["train", str(recipe), "--output", str(tmp_path / "run"), "--set", "backbone.kwargs.task=ctc"],
           capsys, "has no ctc head", nothing_in=tmp_path / "run")


def test_cli_unreadable_audio_is_exit_2(tmp_path, capsys):
    recipe = audio_recipe(tmp_path)
    (tmp_path / "val" / "low" / "9.wav").write_bytes(b"RIFF not really a wav")
    _fails(["train", str(recipe), "--output", str(tmp_path / "run")], capsys,
           "data.val", "9.wav", "not a readable audio file", nothing_in=tmp_path / "run")


def test_cli_text_longer_than_the_model_takes_names_max_length(tmp_path, capsys):
    recipe = text_recipe(tmp_path)
    assert main(["train", str(recipe), "--output", str(tmp_path / "run"),
                 "--set", "backbone.kwargs.max_position_embeddings=4"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot run on a batch of shape (4, " in err
    assert "data.max_length: 8" in err and "max_position_embeddings" in err
    assert "image_size" not in err


def test_cli_probe_refuses_text_saying_why(tmp_path, capsys):
    recipe = text_recipe(tmp_path)
    _fails(["probe", str(recipe), "--output", str(tmp_path / "run"), "--lr", "0.01"], capsys,
           "probe: data.reader text", "one image tensor", nothing_in=tmp_path / "run")


def test_cli_unknown_reader_names_the_field(tmp_path, capsys):
    recipe = text_recipe(tmp_path)
    _fails(["plan", str(recipe), "--set", "data.reader=txt"], capsys, "data.reader: unknown data "
           "reader 'txt'; did you mean 'text'?", "audio, images, text", lines=2)


def test_cli_plan_warns_of_a_frozen_random_model_with_the_transformers_fix(tmp_path, capsys):
    """A config-only model under a freezing strategy trains to chance: the warning names
    ``pretrained: true``, the way the transformers: source takes a directory's weights."""
    assert main(["plan", str(text_recipe(tmp_path))]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert "frozen random backbone" in line and "backbone.pretrained: true" in line
    assert "weights: DEFAULT" not in line

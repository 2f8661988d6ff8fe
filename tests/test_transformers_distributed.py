"""``thawkit train --nproc 2`` (torchrun, gloo on CPU) on text and audio recipes: tiny random BERT
and wav2vec2 models, texts and clips of different lengths.

Checked: each process pads its own part of every batch (to that part's longest example, with
attention masks that cover exactly the real tokens or samples), the parts of a step together are
the one-process batch and every validation example is evaluated once, both processes end with
identical parameters, frozen ones bit-identical to the start, the metrics those of a one-process
run, stop and ``--resume`` under 2 processes bit-identical to the uninterrupted run, and the run
directory predicts. A wav2vec2-base-like model (group norm, no attention mask, dropout) that
skips layers at random (``layerdrop``) trains under DDP with the processes in step.

Why equal to one process only within float tolerance (as for images,
tests/test_train_distributed.py): the all-reduce adds the processes' gradients in another order,
and a process's part of a batch is padded to its own longest example rather than the batch's.
Padding changes nothing else here: BERT and this wav2vec2 (``feat_extract_norm: layer``, a
feature extractor that returns attention masks) mask padded positions. A wav2vec2 with
``feat_extract_norm: group`` (wav2vec2-base) takes no attention mask: its group norm sees the
zeros of the padding, so a clip's logits depend on the longest clip it is batched with, in one
process as in two; such a model matches a one-process run only when the clips are of one length.
Dropout is off in the comparisons: each process draws its own masks. The optimizer is SGD: the
gradient of BERT's attention key biases is zero in exact arithmetic (a softmax does not change
when the same number is added to every score), and Adam scales their rounding noise up to steps
of the learning rate's size, which then differ between one process and two.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

pytest.importorskip("transformers")
soundfile = pytest.importorskip("soundfile")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from test_train_distributed import rows, torchrun  # noqa: E402
from test_transformers_cli import bert_dir  # noqa: E402

from hf_tiny import AUDIO, WORDS, quiet  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")

TESTS = Path(__file__).resolve().parent
ATOL = 1e-5
N_TRAIN, N_VAL, BATCH = 13, 7, 5  # global batches 5, 5, 3: the last split 2 + 1 (uneven parts)
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
AUDIO_EXACT = {"do_stable_layer_norm": True, "feat_extract_norm": "layer", "mask_time_prob": 0.0,
               "layerdrop": 0.0, "hidden_dropout": 0.0, "activation_dropout": 0.0,
               "attention_dropout": 0.0, "feat_proj_dropout": 0.0, "final_dropout": 0.0}


# ------------------------------------------------------------------ data
def texts(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` texts of 1 to 11 words (longer than data.max_length: 8 ones are truncated)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 11))]
        out.append((" ".join(words), "pos" if {"good", "great", "loved"} & set(words) else "neg"))
    return out


def text_recipe(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("review,stars\n" + "".join(f'"{t}",{y}\n' for t, y in texts(N_TRAIN, 1)))
    (root / "val.jsonl").write_text("".join(json.dumps({"review": t, "stars": y}) + "\n"
                                            for t, y in texts(N_VAL, 2)))
    d = {"backbone": {"source": "transformers", "name": str(bert_dir(root)),
                      "kwargs": {"task": "sequence-classification", **NO_DROPOUT}},
         "strategy": {"name": "gradual", "every": 1},
         "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
         "data": {"reader": "text", "train": str(root / "train.csv"), "val": str(root / "val.jsonl"),
                  "text_column": "review", "label_column": "stars", "max_length": 8,
                  "batch_size": BATCH},
         "train": {"epochs": 3, "deterministic": True, "device": "cpu", "output": str(root / "ddp")}}
    path = root / "text.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def audio_recipe(root: Path) -> Path:
    """A folder per class of clips of 0.05 to 0.2 s (WAV and FLAC, 8 and 16 kHz); wav2vec2 with
    layer norms and a feature extractor that returns attention masks."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

    quiet()
    model = root / "tiny-wav2vec2"
    Wav2Vec2Config(**AUDIO).save_pretrained(model)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(model)
    # wav2vec2-base's kind: group norm over time, no attention mask, dropout on
    Wav2Vec2Config(**AUDIO).save_pretrained(root / "tiny-wav2vec2-base")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(root / "tiny-wav2vec2-base")
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for i in range(n):
            name, hz = ("high", 2000.0) if i % 2 else ("low", 200.0)
            rate = 16000 if i % 3 else 8000
            t = np.arange(int(rate * rng.uniform(0.05, 0.2))) / rate
            wave = 0.5 * np.sin(2 * np.pi * (hz + 10 * i) * t) + 0.05 * rng.standard_normal(len(t))
            (root / split / name).mkdir(parents=True, exist_ok=True)
            soundfile.write(str(root / split / name / f"{i}.{'wav' if i % 2 else 'flac'}"),
                            wave.astype(np.float32), rate)
    d = {"backbone": {"source": "transformers", "name": str(model),
                      "kwargs": {"task": "audio-classification", **AUDIO_EXACT}},
         "strategy": {"name": "gradual", "every": 1},
         "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
         "data": {"reader": "audio", "train": str(root / "train"), "val": str(root / "val"),
                  "batch_size": BATCH},
         "train": {"epochs": 3, "deterministic": True, "device": "cpu", "output": str(root / "ddp")}}
    # the same data on wav2vec2-base's kind, skipping layers at random in training (layerdrop)
    base = {**d, "backbone": {"source": "transformers", "name": str(root / "tiny-wav2vec2-base"),
                              "kwargs": {"task": "audio-classification", "layerdrop": 0.5}}}
    (root / "audio_base.yaml").write_text(yaml.safe_dump(base))
    path = root / "audio.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


# ------------------------------------------------ the shards, in one process
INPUTS = {"text": "input_ids", "audio": "input_values"}


def unpadded(kind: str, batch) -> list[tuple]:
    """Each example of a padded batch as ``(its real tokens or samples, label)``, after checking
    the padding: the batch is as wide as its longest example, masks are ones then zeros, and
    what they mask out is padding."""
    inputs, labels = batch
    values, mask = inputs[INPUTS[kind]], inputs["attention_mask"]
    lengths = mask.sum(1)
    assert values.shape == mask.shape and values.shape[1] == int(lengths.max())
    assert torch.equal(mask, (torch.arange(mask.shape[1]) < lengths[:, None]).to(mask.dtype))
    assert not values[mask == 0].any()  # the pad token (id 0) or silence
    return [(tuple(v[:n].tolist()), int(y)) for v, n, y in zip(values, lengths, labels)]


@pytest.mark.parametrize("kind", ["text", "audio"])
def test_each_process_pads_its_own_part_and_the_parts_are_the_batch(tmp_path, kind):
    """The loaders of a 2-process run (``shard``) over the reader's loaders: per step, the two
    parts hold the one-process batch's examples (the last step's parts unequal: 2 + 1), each
    padded to its own longest example; both processes take the same number of steps; the
    validation parts hold every example once."""
    import thawkit
    from thawkit.plugins.train.ddp import World, shard
    from thawkit.plugins.train.readers import reader_for

    recipe = thawkit.load_recipe(text_recipe(tmp_path) if kind == "text" else audio_recipe(tmp_path))
    reader = reader_for(recipe)
    splits = reader.scan(recipe)
    prep = reader.preprocess(recipe, None)
    one = reader.loaders(recipe, splits, prep, seed=0, pin_memory=False)
    parts = [shard(reader.loaders(recipe, splits, prep, seed=0, pin_memory=False),
                   World(rank=r, size=2), batch_size=BATCH, seed=0) for r in (0, 1)]
    own_widths = False
    for epoch in (0, 2):
        for loaders in (one, *parts):
            loaders.batches.set_epoch(epoch)
        whole = list(one.train)
        steps = [list(p.train) for p in parts]
        assert len(whole) == len(steps[0]) == len(steps[1]) == parts[0].steps_per_epoch == 3
        for batch, a, b in zip(whole, *steps):
            assert Counter(unpadded(kind, a) + unpadded(kind, b)) == Counter(unpadded(kind, batch))
            own_widths |= a[0][INPUTS[kind]].shape[1] != b[0][INPUTS[kind]].shape[1]
        assert [len(s[-1][1]) for s in steps] == [2, 1]
    assert own_widths  # the parts of some step are padded to different lengths
    val = [x for p in parts for batch in p.val for x in unpadded(kind, batch)]
    assert len(val) == N_VAL and Counter(val) == Counter(x for b in one.val for x in unpadded(kind, b))


# ------------------------------------------------------- under torchrun
DRIVER = '''
import json, os, sys
from pathlib import Path

import thawkit
import torch
from thawkit.plugins.cli import main
from thawkit.plugins.train import train

out = Path(sys.argv[1])
rank = int(os.environ["RANK"])


class Start:
    @thawkit.hookimpl
    def thawkit_run_start(self, run):
        self.params = {k: v.detach().clone() for k, v in run.adapted.model.named_parameters()}


def run(name, recipe, *overrides):
    start, last = Start(), {}
    r = thawkit.load_recipe(recipe, overrides=[f"train.output={out / name}", *overrides])
    status = train(r, callbacks=[start], on_step=lambda t: last.update(trainer=t)).status
    model = last["trainer"].s.model
    torch.save({"start": start.params, "status": status,
                "end": {k: v.detach().clone() for k, v in model.named_parameters()},
                "trainable": sorted(k for k, v in model.named_parameters() if v.requires_grad)},
               out / f"{name}{rank}.pt")


run("text", sys.argv[2])
# the command line: stopped after epoch 1, then resumed with 2 processes
codes = [main(["train", sys.argv[2], "--output", str(out / "stopped"), "--stop-after", "1"]),
         main(["train", "--resume", str(out / "stopped")])]
run("audio", sys.argv[3])
# layers skipped at random in training (wav2vec2's layerdrop), thawed ones included, on a model
# that takes no attention mask (its clips padded with zeros), with dropout
run("layerdrop", str(Path(sys.argv[3]).parent / "audio_base.yaml"))
(out / f"codes{rank}.json").write_text(json.dumps(codes))
'''


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf_ddp")
    text, audio = text_recipe(tmp / "text_data"), audio_recipe(tmp / "audio_data")
    (tmp / "driver.py").write_text(DRIVER)
    result = torchrun(str(tmp / "driver.py"), str(tmp), str(text), str(audio), cwd=tmp)
    return tmp, text, audio, result


def ranks(tmp: Path, name: str) -> list[dict]:
    return [torch.load(tmp / f"{name}{r}.pt", weights_only=True) for r in (0, 1)]


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["text", "audio", "layerdrop"])
def test_ranks_end_identical_and_frozen_parameters_stay(ddp_runs, name):
    """Both processes hold the same parameters at the end; the stem (never thawed in 3 epochs of
    gradual: head, then each of the 2 layers) is bit-identical to the start, the layers moved."""
    tmp = ddp_runs[0]
    a, b = ranks(tmp, name)
    assert a["status"] == b["status"] == "finished"
    assert [k for k in a["end"] if not torch.equal(a["end"][k], b["end"][k])] == []
    assert a["trainable"] == b["trainable"]
    frozen = [k for k in a["start"] if k not in a["trainable"]]
    assert frozen and not [k for k in frozen if ".layer.0." in k or ".layers.0." in k]
    assert [k for k in frozen if not torch.equal(a["start"][k], a["end"][k])] == []
    thawed = [k for k in a["trainable"] if ".layers.0." in k or ".layer.0." in k]
    assert thawed and any(not torch.equal(a["start"][k], a["end"][k]) for k in thawed)
    metrics = rows(tmp / name)  # every validation example counted once, in every epoch
    assert [r["epoch"] for r in metrics] == [1, 2, 3]
    assert all(r["val_top1"] * N_VAL == pytest.approx(round(r["val_top1"] * N_VAL)) for r in metrics)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["text", "audio"])
def test_metrics_and_weights_are_those_of_one_process(ddp_runs, name):
    """The same recipe in one process: the same accuracies (every validation example counted
    once), losses and weights within float tolerance."""
    from thawkit import load_recipe
    from thawkit.plugins.train import train

    tmp, text, audio, _ = ddp_runs
    one = tmp / f"{name}_one"
    recipe = load_recipe(str(text if name == "text" else audio), overrides=[f"train.output={one}"])
    assert train(recipe, log=lambda s: None).status == "finished"
    two = tmp / name
    a, b = weights(two), weights(one)
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < ATOL
    got, want = rows(two), rows(one)
    assert [r["epoch"] for r in got] == [1, 2, 3] and len(want) == 3
    for r2, r1 in zip(got, want):
        assert r2["val_top1"] * N_VAL == pytest.approx(round(r2["val_top1"] * N_VAL))
        assert r2["val_top1"] == r1["val_top1"] and r2["trainable_params"] == r1["trainable_params"]
        assert r2["val_loss"] == pytest.approx(r1["val_loss"], abs=ATOL)
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], abs=ATOL)
        assert r2["train_top1"] == r1["train_top1"]


@pytest.mark.slow
def test_text_resume_under_two_processes_is_bit_identical(ddp_runs):
    tmp = ddp_runs[0]
    assert json.loads((tmp / "codes0.json").read_text()) == [0, 0]
    assert json.loads((tmp / "codes1.json").read_text()) == [0, 0]
    assert (tmp / "stopped" / "model.safetensors").read_bytes() == \
        (tmp / "text" / "model.safetensors").read_bytes()
    assert rows(tmp / "stopped") == rows(tmp / "text")


@pytest.mark.slow
def test_the_runs_predict(ddp_runs, capsys):
    from thawkit.plugins.cli import main

    tmp, _, audio, _ = ddp_runs
    assert main(["predict", str(tmp / "text"), "a good film", "an awful plot", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "a good film" and lines[3] == "an awful plot"
    assert {ln.split()[-1] for ln in lines[1:3]} == {"neg", "pos"}
    clip = str(next((audio.parent / "val" / "high").iterdir()))
    assert main(["predict", str(tmp / "audio"), clip, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == clip and {ln.split()[-1] for ln in lines[1:3]} == {"high", "low"}

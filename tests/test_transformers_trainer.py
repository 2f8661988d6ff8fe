"""thawkit inside the Hugging Face Trainer: phases at epoch or step boundaries, frozen means
frozen after Trainer steps, resume from any checkpoint equals the uninterrupted run."""
from __future__ import annotations

import contextlib

import pytest

pytest.importorskip("transformers")

import thawkit  # noqa: E402
import torch  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from hf_tiny import build, quiet  # noqa: E402

EPOCHS, STEPS, BATCH = 3, 4, 4


class Texts(torch.utils.data.Dataset):
    """Random token ids with a label that depends on them, as the Trainer takes them."""

    def __init__(self, n: int = STEPS * BATCH, classes: int = 3):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, 99, (n, 10), generator=g)
        self.labels = self.ids[:, 0] % classes

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(10, dtype=torch.long),
                "labels": self.labels[i]}


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH,
                learning_rate=1e-3, seed=0, use_cpu=True, report_to=[], disable_tqdm=True,
                logging_strategy="no", save_strategy="no", dataloader_num_workers=0)
    return TrainingArguments(**{**base, **kw})


class Record(TrainerCallback):
    """The trainable set at every step."""

    def __init__(self, model):
        self.model, self.sets = model, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.sets.append(frozenset(n for n, p in self.model.named_parameters() if p.requires_grad))


def adapted_bert():
    quiet()
    torch.manual_seed(0)
    return thawkit.adapt(build("bert"), "gradual", num_classes=3, every=1)


def test_the_documented_form_thaws_one_block_per_epoch_and_frozen_stays_bit_identical(tmp_path):
    from thawkit.plugins.transformers import ThawkitCallback

    adapted = adapted_bert()
    model = adapted.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    record = Record(model)
    trainer = Trainer(model=adapted.model, args=args(tmp_path), train_dataset=Texts(),
                      optimizers=(adapted.optimizer("adamw", lr=2e-5, layer_decay=0.8), None),
                      callbacks=[ThawkitCallback(adapted), record])
    trainer.train()
    assert record.sets == [adapted.trainable_in(step // STEPS) for step in range(EPOCHS * STEPS)]
    assert record.sets[0] == adapted.trainable_in(0) and record.sets[-1] == adapted.trainable_in(2)
    layout = adapted.layout
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # stem never thaws in 3 epochs (head+neck, layer 1, layer 0): bit-identical, like every other frozen one
    assert not changed & set(layout.stem.params)
    assert changed & set(layout.block("encoder.layer.0").params)
    assert changed <= adapted.trainable_in(2)
    assert adapted.phase == 2 and adapted.epoch == 2


def test_the_trainers_own_optimizer_holds_what_thaws_later(tmp_path):
    """Without optimizers=..., the Trainer builds its optimizer while every parameter that will
    train requires gradients: blocks that thaw later are in it and do train."""
    from thawkit.plugins.transformers import ThawkitCallback

    adapted = adapted_bert()
    before = {n: p.detach().clone() for n, p in adapted.model.named_parameters()}
    trainer = Trainer(model=adapted.model, args=args(tmp_path), train_dataset=Texts(),
                      callbacks=[ThawkitCallback(adapted)])
    trainer.train()
    changed = {n for n, p in adapted.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed & set(adapted.layout.block("encoder.layer.0").params)
    assert not changed & set(adapted.layout.stem.params)


def test_an_optimizer_without_the_later_blocks_is_refused(tmp_path):
    from thawkit.plugins.transformers import ThawkitCallback

    adapted = adapted_bert()
    head = [p for n, p in adapted.model.named_parameters() if n in adapted.trainable_in(0)]
    trainer = Trainer(model=adapted.model, args=args(tmp_path), train_dataset=Texts(),
                      optimizers=(torch.optim.AdamW(head, lr=1e-3), None),
                      callbacks=[ThawkitCallback(adapted)])
    with pytest.raises(thawkit.ConfigError, match=r"the Trainer's optimizer lacks \d+ parameters that train "
                       r"in a phase of strategy 'gradual'.*optimizers=\(adapted.optimizer"):
        trainer.train()


def adapted_bert_without_frozen_dropout(how: str):
    """A gradual BERT whose frozen layers run without dropout, set as the strategy's policy or,
    deprecated, by the callback's argument (``thawkit_trainer`` passes it on)."""
    quiet()
    torch.manual_seed(0)
    if how == "strategy":
        return thawkit.adapt(build("bert"), "gradual", num_classes=3, every=1, frozen_dropout="off"), {}
    return adapted_bert(), {"frozen_dropout": "off"}


@pytest.mark.parametrize("how", ["strategy", "deprecated-argument"])
def test_phases_at_step_boundaries_and_the_short_helper(tmp_path, how):
    from thawkit.plugins.transformers import thawkit_trainer

    adapted, extra = adapted_bert_without_frozen_dropout(how)
    record = Record(adapted.model)
    from thawkit.norm import _force_eval as _inference  # set_inference's hook

    class Hooked(TrainerCallback):  # which layers run without dropout at each step
        seen: list = []

        def on_step_begin(self, args, state, control, **kwargs):
            layers = adapted.model.bert.encoder.layer
            self.seen.append([_inference in layers[i]._forward_pre_hooks.values() for i in (0, 1)])

    with pytest.warns(DeprecationWarning, match=r"thawkit_trainer\(frozen_dropout=...\) is deprecated.*"
                      r"thawkit.adapt\(model, \"gradual\", frozen_dropout=\"off\"\)") if extra else \
            contextlib.nullcontext():
        trainer = thawkit_trainer(adapted, args(tmp_path, num_train_epochs=1, weight_decay=0.05),
                                  train_dataset=Texts(), steps_per_epoch=1, layer_decay=0.5,
                                  callbacks=[record, Hooked()], **extra)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["head"]["lr"] == 1e-3 and groups["stem"]["lr"] == pytest.approx(1e-3 * 0.5 ** 3)
    assert groups["head"]["weight_decay"] == 0.05 and groups["head.no_decay"]["weight_decay"] == 0.0
    trainer.train()
    # one phase per optimizer step: head+neck, +layer 1, +layer 0, +stem
    assert record.sets == [adapted.trainable_in(i) for i in range(4)]
    assert Hooked.seen == [[True, True], [True, False], [False, False], [False, False]]
    assert "frozen_dropout=off" in adapted.plan.table().splitlines()[0]


def test_frozen_dropout_off_makes_frozen_layers_deterministic_until_they_thaw():
    """The strategy's policy, applied by core: no callback is needed outside the Trainer."""
    from thawkit.plugins.transformers import ThawkitCallback

    adapted, _ = adapted_bert_without_frozen_dropout("strategy")
    model = adapted.model.train()
    embeddings, layer0, layer1 = model.bert.embeddings, *(model.bert.encoder.layer[i] for i in (0, 1))
    hidden = torch.randn(2, 10, 32)
    ids = torch.randint(3, 99, (2, 10))

    def out(module, x):
        found = module(x)
        return found if isinstance(found, torch.Tensor) else found[0]

    def varies(module, x=hidden):
        return not torch.equal(out(module, x), out(module, x))

    model.train()  # the policy outlives model.train()
    assert not varies(layer0) and not varies(layer1) and not varies(embeddings, ids)
    assert not varies(model.bert, ids)  # the whole frozen encoder: the same output at every step
    adapted.on_epoch_start(1)  # layer 1 thaws: its dropout (0.1) is active again
    assert not varies(layer0) and varies(layer1)
    adapted.on_epoch_start(3)  # everything trains
    assert varies(layer0) and varies(embeddings, ids)
    keep = adapted_bert().model.train()  # the default keeps dropout in the frozen layers
    assert varies(keep.bert.encoder.layer[0]) and varies(keep.bert.embeddings, ids)
    plain = adapted_bert()
    with pytest.warns(DeprecationWarning, match=r"ThawkitCallback\(frozen_dropout=...\) is deprecated: "
                      r"dropout in frozen layers is the strategy's setting frozen_dropout"):
        ThawkitCallback(plain, frozen_dropout="off")
    assert plain.frozen_dropout == "off"  # applied with the phase when training begins
    with pytest.warns(DeprecationWarning), \
            pytest.raises(thawkit.ConfigError, match="frozen_dropout must be 'keep' or 'off'"):
        ThawkitCallback(adapted, frozen_dropout="no")
    with pytest.warns(DeprecationWarning), \
            pytest.raises(thawkit.ConfigError, match="frozen_dropout='keep' contradicts the strategy's"):
        ThawkitCallback(adapted, frozen_dropout="keep")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    from thawkit.plugins.transformers import ThawkitCallback

    out = tmp_path_factory.mktemp("full")
    adapted = adapted_bert()
    trainer = Trainer(model=adapted.model, args=args(out, save_strategy="steps", save_steps=2),
                      train_dataset=Texts(),
                      optimizers=(adapted.optimizer("adamw", lr=1e-3, layer_decay=0.8), None),
                      callbacks=[ThawkitCallback(adapted)])
    trainer.train()
    return {"dir": out, "after": _state(adapted.model)}


@pytest.mark.parametrize("checkpoint", ["checkpoint-4", "checkpoint-6", "checkpoint-10"])
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(full_run, tmp_path, checkpoint):
    """From the end of epoch 0 (layer 1 thaws after the resume), the middle of epoch 1 and the
    middle of epoch 2 (where the Trainer calls no epoch start before the first step)."""
    import json

    from thawkit.plugins.transformers import ThawkitCallback

    saved = json.loads((full_run["dir"] / checkpoint / "trainer_state.json").read_text())
    step = int(checkpoint.split("-")[1])
    assert saved["stateful_callbacks"]["thawkit"]["phase"] == (step - 1) // STEPS
    adapted = adapted_bert()
    trainer = Trainer(model=adapted.model, args=args(tmp_path), train_dataset=Texts(),
                      optimizers=(adapted.optimizer("adamw", lr=1e-3, layer_decay=0.8), None),
                      callbacks=[ThawkitCallback(adapted)])
    trainer.train(resume_from_checkpoint=str(full_run["dir"] / checkpoint))
    resumed, full = _state(adapted.model), full_run["after"]
    assert [k for k in full if not torch.equal(full[k], resumed[k])] == []


def test_resume_refuses_a_checkpoint_of_another_strategy(full_run, tmp_path):
    from thawkit.plugins.transformers import ThawkitCallback

    quiet()
    adapted = thawkit.adapt(build("bert"), "gradual", num_classes=3, every=2)
    trainer = Trainer(model=adapted.model, args=args(tmp_path), train_dataset=Texts(),
                      optimizers=(adapted.optimizer("adamw", lr=1e-3, layer_decay=0.8), None),
                      callbacks=[ThawkitCallback(adapted)])
    with pytest.raises(thawkit.ConfigError, match="strategy parameters"):
        trainer.train(resume_from_checkpoint=str(full_run["dir"] / "checkpoint-6"))


def _two_ranks(tmp_path, *flags):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(__file__).with_name("hf_ddp.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={port}", str(script), str(tmp_path), *flags],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]


@pytest.mark.slow
def test_two_processes_keep_thawed_blocks_equal_on_every_rank(tmp_path):
    """torchrun, 2 CPU ranks (gloo), each with its own shard of the data: after layer 0 thaws at
    epoch 2 the ranks still hold identical parameters; without the callback's registration
    before the wrap (``--naive``) DDP never averages the thawed layers and the ranks differ."""
    rank0, rank1 = _two_ranks(tmp_path / "ok")
    assert [n for n in rank0 if not torch.equal(rank0[n], rank1[n])] == []
    quiet()
    torch.manual_seed(0)
    initial = dict(build("bert").named_parameters())
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(rank0[name], initial[name])  # layer 0 did train
    rank0, rank1 = _two_ranks(tmp_path / "naive", "--naive")
    assert not torch.equal(rank0[name], rank1[name])

"""thawkit.plugins.lightning: the ThawkitFinetuning callback and configure_optimizers under Lightning.

A tiny conv net on 8x8 inputs, three epochs of six steps, gradual unfreezing one block per epoch
(epoch 0: fc; 1: +block2; 2: +block1; the stem and its BatchNorm stay frozen). Resumed runs must
equal the uninterrupted one bit for bit, which needs a loader that is resumable mid-epoch (Lightning
saves and restores ``state_dict``) and shuffles by a seed per epoch (``set_epoch``).
"""
import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

L = pytest.importorskip("lightning.pytorch")

import thawkit  # noqa: E402
from thawkit.plugins.lightning import ThawkitFinetuning, configure_optimizers  # noqa: E402

EPOCHS, STEPS, BATCH = 3, 6, 4


class Net(torch.nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU())
        self.block1 = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                          torch.nn.ReLU())
        self.block2 = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                          torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.block2(self.block1(self.stem(x))))


class Classifier(L.LightningModule):
    """What a user writes: the backbone in __init__, the optimizer helper in configure_optimizers."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.05, schedule: str = "cosine"):
        super().__init__()
        torch.manual_seed(0)
        self.model = Net()
        self.settings = {"optimizer": optimizer, "lr": lr, "schedule": schedule}
        self.seen = {}  # epoch -> trainable names at its first step
        self.groups = []  # (names, parameter ids) of the optimizer's groups at every step

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.setdefault(self.current_epoch, {n for n, p in self.model.named_parameters()
                                                  if p.requires_grad})
        opt = self.optimizers().optimizer
        self.groups.append([(g["name"], tuple(id(p) for p in g["params"])) for g in opt.param_groups])
        return torch.nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        s = self.settings
        # steps_per_epoch given: Lightning's estimate would load the data before the checkpoint's
        # loader position is restored (Lightning #20550), and the mid-epoch resume would not be exact
        return configure_optimizers(self, s["optimizer"], lr=s["lr"], momentum=0.9, weight_decay=1e-3,
                                    schedule=s["schedule"], steps_per_epoch=STEPS)


class Batches:
    """A fixed data set in batches, shuffled by ``seed + epoch``, resumable in the middle of an epoch."""

    def __init__(self, seed=0, steps=STEPS):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(steps * BATCH, 3, 8, 8, generator=g)
        self.y = torch.randint(0, 3, (steps * BATCH,), generator=g)
        self.seed, self.steps, self.epoch, self.done = seed, steps, 0, 0
        self.sampler = self  # Lightning calls loader.sampler.set_epoch(epoch)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.steps

    def __iter__(self):
        if self.done >= self.steps:
            self.done = 0
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        while self.done < self.steps:
            idx = order[self.done * BATCH:(self.done + 1) * BATCH]
            self.done += 1
            yield self.x[idx], self.y[idx]

    def state_dict(self):
        return {"epoch": self.epoch, "done": self.done}

    def load_state_dict(self, state):
        self.epoch, self.done = state["epoch"], state["done"]


def trainer(tmp_path, *callbacks, **kwargs):
    options = dict(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False,
                   enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                   default_root_dir=str(tmp_path))
    options.update(kwargs)
    if any(isinstance(c, L.callbacks.ModelCheckpoint) for c in callbacks):
        options["enable_checkpointing"] = True
    return L.Trainer(callbacks=list(callbacks), **options)


def finetuning(pm=None):
    return ThawkitFinetuning("gradual", num_classes=3, every=1, pm=pm)


def state(module):
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The uninterrupted run, checkpointing at every epoch end and at step 9 (mid epoch 1)."""
    tmp = tmp_path_factory.mktemp("full")
    module = Classifier()
    before = state(module)
    callback = finetuning(thawkit.get_plugin_manager(entrypoints=False))
    epochs = L.callbacks.ModelCheckpoint(dirpath=tmp / "epochs", filename="{epoch}", save_top_k=-1,
                                         every_n_epochs=1, save_on_train_epoch_end=True)
    mid = L.callbacks.ModelCheckpoint(dirpath=tmp / "steps", filename="{step}", save_top_k=-1,
                                      every_n_train_steps=9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = trainer(tmp, callback, epochs, mid)
        fit.fit(module, train_dataloaders=Batches())
    return {"module": module, "callback": callback, "trainer": fit, "before": before, "after": state(module),
            "warnings": [str(w.message) for w in caught], "dir": tmp}


def resume(tmp_path, checkpoint):
    module = Classifier()
    fit = trainer(tmp_path, finetuning())
    fit.fit(module, train_dataloaders=Batches(), ckpt_path=str(checkpoint))
    return module


def test_trainable_set_of_every_epoch_is_the_plan(full_run):
    adapted = full_run["callback"].adapted
    assert [ph.epoch for ph in adapted.phases] == [0, 1, 2, 3]
    assert full_run["module"].model is adapted.model and adapted.model.fc.out_features == 3
    expected = {e: set(adapted.phases[adapted.phase_at(e)].trainable) for e in range(EPOCHS)}
    assert full_run["module"].seen == expected
    assert {n.split(".")[0] for n in full_run["module"].seen[2]} == {"block1", "block2", "fc"}
    assert full_run["trainer"].callback_metrics["thawkit/phase"] == 2
    numel = sum(adapted.model.get_parameter(n).numel() for n in expected[2])
    assert full_run["trainer"].callback_metrics["thawkit/trainable_params"] == numel


def test_param_groups_never_change_and_name_every_block(full_run):
    groups = full_run["module"].groups
    assert len(groups) == EPOCHS * STEPS and all(g == groups[0] for g in groups)
    names = [name for name, _ in groups[0]]
    assert names == ["stem", "stem.no_decay", "block1", "block1.no_decay", "block2", "block2.no_decay",
                     "head", "head.no_decay"]  # every parameter that ever thaws: the stem thaws at epoch 3


def test_thawed_blocks_move_and_frozen_norm_statistics_stay(full_run):
    before, after = full_run["before"], full_run["after"]
    for name in ("stem.0.weight", "stem.1.weight", "stem.1.bias", "stem.1.running_mean",
                 "stem.1.running_var", "stem.1.num_batches_tracked"):
        assert torch.equal(before[name], after[name]), name
    for name in ("block1.0.weight", "block1.1.running_mean", "block2.0.weight"):
        assert not torch.equal(before[name], after[name]), name


def test_no_eval_mode_warning_from_frozen_norms(full_run):
    """The stem's BatchNorm runs in eval mode (thawkit's hook) without Lightning's warning."""
    assert not [w for w in full_run["warnings"] if "eval mode" in w]
    assert full_run["callback"].adapted.norm_mode("stem.1") == "frozen"


class DropoutNet(Net):
    """Net with dropout inside block1 and block2 (not between blocks): what frozen_dropout holds."""

    def __init__(self, classes=5):
        super().__init__(classes)
        self.block1.append(torch.nn.Dropout(0.5))
        self.block2.insert(2, torch.nn.Dropout(0.5))


def test_frozen_dropout_off_from_the_strategy_under_lightning(tmp_path):
    """``ThawkitFinetuning(..., frozen_dropout="off")``: the strategy's policy, applied by core at
    every phase change; a block's dropout is off while it is frozen and on once it thaws."""
    from thawkit.norm import _force_eval  # set_inference's hook

    class Module(Classifier):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model, self.held = DropoutNet(), {}

        def training_step(self, batch, batch_idx):
            drops = [m for b in (self.model.block1, self.model.block2) for m in b
                     if isinstance(m, torch.nn.Dropout)]
            self.held.setdefault(self.current_epoch, [_force_eval in d._forward_pre_hooks.values()
                                                      for d in drops])
            return super().training_step(batch, batch_idx)

    module = Module()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, ThawkitFinetuning("gradual", num_classes=3, every=1, frozen_dropout="off")).fit(
            module, train_dataloaders=Batches())
    # epoch 0: only fc trains; 1: +block2; 2: +block1
    assert module.held == {0: [True, True], 1: [True, False], 2: [False, False]}
    assert not [w for w in caught if "eval mode" in str(w.message)]  # the held layers are thawkit's


@pytest.mark.parametrize("checkpoint", ["epochs/epoch=0.ckpt", "steps/step=9.ckpt"])
def test_resume_equals_the_uninterrupted_run(full_run, tmp_path, checkpoint):
    """From the end of epoch 0 (phase 0, block2 thaws after the resume) and from the middle of
    epoch 1, where Lightning does not call on_train_epoch_start again: block2 must train at once."""
    saved = torch.load(full_run["dir"] / checkpoint, weights_only=False)
    [thawkit_state] = [v for k, v in saved["callbacks"].items() if k.startswith("ThawkitFinetuning")]
    assert thawkit_state["adapted"]["phase"] == (0 if "epoch" in checkpoint else 1)
    module = resume(tmp_path, full_run["dir"] / checkpoint)
    resumed, full = state(module), full_run["after"]
    assert [k for k in full if not torch.equal(full[k], resumed[k])] == []


def test_resume_refuses_a_checkpoint_of_another_strategy(full_run, tmp_path):
    module = Classifier()
    fit = trainer(tmp_path, ThawkitFinetuning("gradual", num_classes=3, every=2))
    with pytest.raises(thawkit.ConfigError, match="strategy parameters"):
        fit.fit(module, train_dataloaders=Batches(), ckpt_path=str(full_run["dir"] / "epochs/epoch=0.ckpt"))


def test_learning_rate_monitor_shows_one_series_per_named_group(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    module = Classifier()
    monitor = L.callbacks.LearningRateMonitor(logging_interval="step")
    fit = trainer(tmp_path, finetuning(), monitor, max_epochs=2, logger=CSVLogger(tmp_path),
                  log_every_n_steps=1)
    fit.fit(module, train_dataloaders=Batches())
    names = [g["name"] for g in fit.optimizers[0].param_groups]
    with open(fit.logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("thawkit-cosine/head")]
    assert sorted(k for k in rows[0] if k.startswith("thawkit-cosine/")) == \
        sorted(f"thawkit-cosine/{n}" for n in names)
    # every group is scheduled from the start: block2 thaws at epoch 1 at the rate of that moment
    lrs = [float(r["thawkit-cosine/block2"]) for r in rows]
    assert len(lrs) == 2 * STEPS and lrs == [float(r["thawkit-cosine/head"]) for r in rows]
    assert lrs[0] == 0.05 and all(a > b for a, b in zip(lrs, lrs[1:]))


def test_optimizer_from_the_callback_and_a_schedule_section(tmp_path):
    class Plain(Classifier):
        def configure_optimizers(self):
            return configure_optimizers(self)

    callback = ThawkitFinetuning({"name": "last-block", "blocks": 1}, num_classes=3,
                                 optimizer={"name": "sgd", "lr": 0.2, "layer_decay": 0.5},
                                 schedule={"name": "step", "step_size": 1, "gamma": 0.5})
    fit = trainer(tmp_path, callback, max_epochs=2)
    fit.fit(Plain(), train_dataloaders=Batches())
    groups = {g["name"]: g for g in fit.optimizers[0].param_groups}
    assert set(groups) == {"block2", "block2.no_decay", "head", "head.no_decay"}
    assert groups["head"]["initial_lr"] == 0.2 and groups["block2"]["initial_lr"] == pytest.approx(0.1)
    assert groups["head"]["lr"] == pytest.approx(0.1)  # one step decay after epoch 0


def test_bad_settings_fail_when_the_callback_is_built():
    with pytest.raises(thawkit.ConfigError, match="every"):
        ThawkitFinetuning("gradual", every=0)
    with pytest.raises(thawkit.UnknownNameError, match="gradual"):
        ThawkitFinetuning("graduall")
    with pytest.raises(thawkit.ConfigError, match="name"):
        ThawkitFinetuning({"every": 2})
    with pytest.raises(thawkit.ConfigError, match="momentum"):
        ThawkitFinetuning("gradual", optimizer={"name": "adamw", "momentum": 0.9})
    with pytest.raises(thawkit.ConfigError, match="schedule"):
        ThawkitFinetuning("gradual", schedule={"name": "cosine", "min_lr_ratio": 2})
    with pytest.raises(thawkit.ConfigError, match="num_classes"):
        ThawkitFinetuning("gradual", num_classes=0)


def test_missing_model_attribute_is_named(tmp_path):
    fit = trainer(tmp_path, ThawkitFinetuning("gradual", attribute="net"))
    with pytest.raises(thawkit.ConfigError, match="no attribute 'net'"):
        fit.fit(Classifier(), train_dataloaders=Batches())


class FromCallback(Classifier):
    def configure_optimizers(self):
        return configure_optimizers(self)  # the callback's optimizer and schedule


def test_lightning_cli_builds_the_callback_from_a_config(tmp_path):
    """The config of docs/embedding.md builds the callback and trains with its optimizer."""
    pytest.importorskip("jsonargparse")
    from lightning.pytorch.cli import LightningCLI

    config = Path(__file__).parent.parent / "examples" / "lightning_cli.yaml"
    quiet = ["--trainer.max_epochs=2", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
             "--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={tmp_path}"]
    cli = LightningCLI(FromCallback, run=False, args=["--config", str(config), *quiet])
    [callback] = [c for c in cli.trainer.callbacks if isinstance(c, ThawkitFinetuning)]
    assert callback.strategy.name == "gradual" and callback.strategy.params.every == 2
    assert callback.num_classes == 3 and callback.schedule.warmup_epochs == 1
    cli.trainer.fit(cli.model, train_dataloaders=Batches())
    groups = {g["name"]: g for g in cli.trainer.optimizers[0].param_groups}
    assert groups["block2"]["initial_lr"] == pytest.approx(0.05 * 0.7) and groups["head"]["momentum"] == 0.9
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("num_classes: 3", "num_classes: three"))
    with pytest.raises(SystemExit):
        LightningCLI(FromCallback, run=False, args=["--config", str(bad), *quiet])


def test_import_without_lightning_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "thawkit.plugins.lightning")
    monkeypatch.setitem(sys.modules, "lightning.pytorch.callbacks", None)
    with pytest.raises(ImportError, match=r"pip install 'thawkit\[lightning\]'"):
        import thawkit.plugins.lightning  # noqa: F401


# ---------------------------------------------------------------------------------- DDP
class PerRank(Classifier):
    """Each rank trains on its own half of the data (Lightning's DistributedSampler over a
    DataLoader); the head is replaced in __init__, since a forked or spawned rank's replacement
    would not reach the main process's module."""

    def __init__(self, out):
        super().__init__()
        self.model, _ = thawkit.replace_head(self.model, 3)
        self.out = out

    def train_dataloader(self):
        data = Batches(seed=1, steps=2 * STEPS)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x, data.y), batch_size=BATCH)

    def on_train_end(self):
        torch.save(dict(self.model.named_parameters()), f"{self.out}/rank{self.global_rank}.pt")


class NoRewrap(ThawkitFinetuning):
    def on_train_start(self, trainer, pl_module):
        pass  # never learns of the DDP wrap, so never re-wraps: a naive callback


def two_ranks(tmp_path, callback):
    """Two CPU ranks (gloo) forked from this process: no second import of torch and Lightning."""
    module = PerRank(str(tmp_path))
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    trainer(tmp_path, callback, strategy="ddp_fork", devices=2).fit(module)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return before, *ranks


needs_fork = pytest.mark.skipif(not torch.distributed.is_available()
                                or "fork" not in torch.multiprocessing.get_all_start_methods(),
                                reason="needs torch.distributed and the fork start method")


@needs_fork
def test_ddp_two_cpu_ranks_stay_identical_through_thaws(tmp_path):
    """Lightning #20340: DDP registers the parameters that require gradients when it wraps the
    model. The callback re-wraps at each thaw (block2 at epoch 1, block1 at epoch 2)."""
    before, a, b = two_ranks(tmp_path, ThawkitFinetuning("gradual", every=1))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert not torch.equal(a["block1.0.weight"], before["block1.0.weight"])
    assert not torch.equal(a["block2.0.weight"], before["block2.0.weight"])
    assert torch.equal(a["stem.0.weight"], before["stem.0.weight"])


@needs_fork
def test_control_without_the_rewrap_thawed_blocks_drift(tmp_path):
    """What the re-wrap prevents: blocks thawed after the wrap train on each rank's data alone."""
    _, a, b = two_ranks(tmp_path, NoRewrap("gradual", every=1))
    drifted = {k.split(".")[0] for k in a if not torch.equal(a[k], b[k])}
    assert drifted == {"block1", "block2"}


def script_ranks(tmp_path, *args):
    """Run tests/lightning_ddp.py (2 ranks, strategy="ddp"): weights saved before, by rank 0, by rank 1."""
    script = Path(__file__).with_name("lightning_ddp.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(script.parent)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path), *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(tmp_path / f"{name}.pt", weights_only=True) for name in ("before", "rank0", "rank1")]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_ddp_strategy_that_starts_each_rank_as_a_script(tmp_path):
    """strategy="ddp" as most users run it: Lightning starts rank 1 by running the script again
    (tests/lightning_ddp.py; slow: each rank imports torch and Lightning)."""
    before, a, b = script_ranks(tmp_path)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert not torch.equal(a["block1.0.weight"], before["block1.0.weight"])
    assert torch.equal(a["stem.0.weight"], before["stem.0.weight"])


def test_strategies_that_shard_are_refused_for_phases(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from thawkit.plugins.lightning import _check_lightning_strategy

    with pytest.raises(thawkit.ConfigError, match="FSDPStrategy.*strategy='ddp'"):
        _check_lightning_strategy(SimpleNamespace(strategy=FSDPStrategy()))


def test_from_recipe_takes_strategy_head_optimizer_and_schedule(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("backbone: {source: torchvision, name: resnet18}\n"
                      "strategy: {name: gradual, every: 2, norm: affine}\n"
                      "head: {num_classes: 3, dropout: 0.1}\n"
                      "optimizer: {name: sgd, lr: 0.1, momentum: 0.9}\n"
                      "schedule: {name: step, step_size: 2}\n")
    callback = ThawkitFinetuning.from_recipe(recipe)
    assert callback.strategy.params.every == 2 and callback.strategy.params.norm == "affine"
    assert (callback.num_classes, callback.dropout) == (3, 0.1)
    assert callback.optimizer.name == "sgd" and callback.optimizer.kwargs == {"momentum": 0.9}
    assert callback.schedule.name == "step" and callback.schedule.params == {"step_size": 2}


def test_from_adapted_uses_the_model_adapted_in_init(tmp_path):
    class Adapted(Classifier):
        def __init__(self):
            super().__init__()
            self.adapted = thawkit.adapt(self.model, "gradual", num_classes=3, every=1)
            self.model = self.adapted.model

    module = Adapted()
    head = module.model.fc
    callback = ThawkitFinetuning.from_adapted(module.adapted)
    trainer(tmp_path, callback, max_epochs=2).fit(module, train_dataloaders=Batches())
    assert callback.adapted is module.adapted and module.model.fc is head  # not adapted twice
    assert module.seen[1] == set(module.adapted.phases[1].trainable)


def test_without_the_flag_alignment_lightning_warns(tmp_path, monkeypatch):
    """The control of test_no_eval_mode_warning_from_frozen_norms: the frozen norms are what
    Lightning counts when on_fit_start leaves their flags alone (stem.1 and block1.1, frozen in phase 0)."""
    monkeypatch.setattr(ThawkitFinetuning, "on_fit_start", lambda self, trainer, pl_module: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, finetuning(), max_epochs=1).fit(Classifier(), train_dataloaders=Batches())
    assert [str(w.message) for w in caught if "eval mode" in str(w.message)] == \
        ["Found 2 module(s) in eval mode at the start of training. This may lead to unexpected behavior "
         "during training. If this is intentional, you can ignore this warning."]


def test_spawned_processes_cannot_replace_the_head():
    """Under ddp_spawn, Lightning loads the trained weights into the main process's module, whose
    head only the spawned processes replaced: refused in setup, before any training."""
    spawn = L.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, logger=False)  # starts nothing
    with pytest.raises(thawkit.ConfigError, match="strategy='ddp', or replace the head in __init__"):
        finetuning().setup(spawn, Classifier(), "fit")


# ---------------------------------------------------------------------------------- adapters
def lora():
    return ThawkitFinetuning("lora", num_classes=3, rank=2, pm=thawkit.get_plugin_manager(entrypoints=False))


def plain_names(state):
    """The adapted model's state with PEFT's names of the base layers mapped back to the plain ones
    (``stem.0.base_layer.weight`` -> ``stem.0.weight``); the adapters' own entries left out."""
    from thawkit.plugins.adapters import is_adapter_param

    return {k.replace(".base_layer.", "."): v for k, v in state.items() if not is_adapter_param(k)}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """LoRA (rank 2 on the convs of block1 and block2) under the callback, checkpointed at step 9."""
    pytest.importorskip("peft")
    tmp = tmp_path_factory.mktemp("lora")
    module = Classifier()
    before = state(module)
    callback = lora()
    mid = L.callbacks.ModelCheckpoint(dirpath=tmp / "steps", filename="{step}", save_top_k=-1,
                                      every_n_train_steps=9)
    injected = {}

    class Initial(L.Callback):  # the adapters as injected, before the first step
        def on_train_start(self, trainer, pl_module):
            injected.update({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    fit = trainer(tmp, callback, Initial(), mid)
    fit.fit(module, train_dataloaders=Batches())
    return {"module": module, "callback": callback, "trainer": fit, "before": before,
            "injected": injected, "after": state(module), "dir": tmp}


def test_lora_trains_adapters_and_head_and_keeps_the_base_bit_identical(lora_run):
    from thawkit.plugins.adapters import adapter_params

    module, adapted = lora_run["module"], lora_run["callback"].adapted
    adapters = {n for names in adapter_params(module.model).values() for n in names}
    assert {n.split(".lora_")[0] for n in adapters} == {"block1.0", "block2.0"}  # the blocks; not the stem
    assert module.model is adapted.model
    assert list(module.seen.values()) == [adapters | {"fc.weight", "fc.bias"}] * EPOCHS
    before, after = lora_run["before"], plain_names(lora_run["after"])
    base = [k for k in before if not k.startswith("fc.")]
    assert set(base) <= set(after) and any("running_var" in k for k in base)
    assert [k for k in base if not torch.equal(before[k], after[k])] == []  # weights and BN statistics
    injected, trained = lora_run["injected"], lora_run["after"]
    assert all(not torch.equal(injected[k], trained[k]) for k in adapters | {"fc.weight"})


def test_lora_optimizer_groups_hold_the_adapters(lora_run):
    from thawkit.plugins.adapters import adapter_params

    opt = lora_run["trainer"].optimizers[0]
    model = lora_run["module"].model
    name_of = {id(p): n for n, p in model.named_parameters()}
    grouped = {g["name"]: {name_of[id(p)] for p in g["params"]} for g in opt.param_groups}
    adapters = {n for names in adapter_params(model).values() for n in names}
    in_lora = set().union(*(v for k, v in grouped.items() if ".lora" in k))
    assert in_lora == adapters and all(".lora" in k or k.startswith("head") for k in grouped)
    assert sum(len(v) for v in grouped.values()) == len(adapters) + 2  # each once, plus fc


def test_lora_resume_from_a_lightning_checkpoint_equals_the_uninterrupted_run(lora_run, tmp_path):
    """Lightning restores the weights after the callback's setup: the adapters are in place to
    receive them (the checkpoint holds ``stem.0.base_layer.weight``, ``stem.0.lora_A...``)."""
    module = Classifier()
    fit = trainer(tmp_path, lora())
    fit.fit(module, train_dataloaders=Batches(), ckpt_path=str(lora_run["dir"] / "steps/step=9.ckpt"))
    resumed, full = state(module), lora_run["after"]
    assert len(module.groups) == EPOCHS * STEPS - 9  # went on from step 9 with the checkpoint's weights
    assert sorted(resumed) == sorted(full)
    assert [k for k in full if not torch.equal(full[k], resumed[k])] == []


def test_spawned_processes_cannot_add_adapters():
    """Under ddp_spawn/ddp_fork the adapters would exist in the started processes only: Lightning
    loads rank 0's weights back into the main process's module with strict=False, which drops the
    trained adapters silently (seen under ddp_fork: the main module had the trained head, no
    lora layers). Refused in setup, before any training."""
    pytest.importorskip("peft")
    spawn = L.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, logger=False)  # starts nothing
    with pytest.raises(thawkit.ConfigError, match=r"ThawkitFinetuning\('lora'\).*adds layers to the "
                       r"model \(block1\.0\.lora_A\.default\.weight, .*Use strategy='ddp'"):
        ThawkitFinetuning("lora", rank=2).setup(spawn, PerRank("."), "fit")
    single = L.Trainer(accelerator="cpu", devices=1, logger=False)
    ThawkitFinetuning("lora", rank=2).setup(single, PerRank("."), "fit")  # one process: no reason to refuse


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_ddp_strategy_with_lora_adapters(tmp_path):
    """lora under strategy="ddp" (tests/lightning_ddp.py --lora; slow: each rank imports torch,
    Lightning and PEFT): the ranks agree on every parameter and buffer, the adapters moved (PEFT
    starts lora_B at zero), the base weights and BatchNorm statistics did not, and rank 0, the
    main process, holds the adapters after fit()."""
    pytest.importorskip("peft")
    before, a, b = script_ranks(tmp_path, "--lora")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    lora_b = [k for k in a if ".lora_B." in k]
    assert {k.split(".lora_B.")[0] for k in lora_b} == {"block1.0", "block2.0"}
    assert all(a[k].abs().sum() > 0 for k in lora_b)
    base = plain_names(a)
    assert [k for k in before if not k.startswith("fc.") and not torch.equal(before[k], base[k])] == []
    assert "stem.1.running_var" in before and "block1.1.running_mean" in before


def test_configure_optimizers_checks_a_schedule_interval_as_train_does(tmp_path):
    """One scheduler builder for train, probe and Lightning: a schedule whose ``interval`` is
    neither ``step`` nor ``epoch`` is refused here too, naming the schedule."""
    class Weekly:
        @thawkit.hookimpl
        def thawkit_register_schedules(self, register):
            def weekly(optimizer, *, epochs, steps_per_epoch, warmup_epochs):
                return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

            weekly.interval = "weekly"
            register("weekly", weekly)

    class Plain(Classifier):
        def configure_optimizers(self):
            return configure_optimizers(self)

    pm = thawkit.get_plugin_manager(entrypoints=False)
    pm.register(Weekly())
    callback = ThawkitFinetuning("gradual", num_classes=3, every=1, schedule="weekly", pm=pm)
    with pytest.raises(thawkit.ConfigError, match="schedule 'weekly': interval must be 'step' or 'epoch'"):
        trainer(tmp_path, callback, max_epochs=1).fit(Plain(), train_dataloaders=Batches())

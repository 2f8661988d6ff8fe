"""Parameter groups in timm's form (``lr_scale=True``): a loop that follows timm's convention
(``group["lr"] = lr * group.get("lr_scale", 1.0)``, BEiT/MAE/DeiT fine-tuning scripts, timm's
own schedulers) gives every group the learning rate the baked form gives it."""
from __future__ import annotations

import math

import pytest
import thawkit
import torch
from builders import vit

SETTINGS = {"lr": 1e-3, "weight_decay": 0.05, "layer_decay": 0.7, "head_lr_mult": 2.0}


def timm_style_step(optimizer, lr: float) -> None:
    """What BEiT/MAE-style loops do at every step (their ``adjust_learning_rate``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def cosine(step: int, total: int = 10, base: float = SETTINGS["lr"]) -> float:
    return 0.5 * base * (1 + math.cos(math.pi * step / total))


@pytest.fixture(scope="module")
def adapted():
    pm = thawkit.get_plugin_manager(entrypoints=False)
    return thawkit.adapt(vit(), "gradual", num_classes=5, every=1, pm=pm)


def test_lr_scale_groups_carry_the_multipliers(adapted):
    baked = adapted.param_groups("adamw", **SETTINGS)
    scaled = adapted.param_groups("adamw", lr_scale=True, **SETTINGS)
    assert [g["name"] for g in scaled] == [g["name"] for g in baked]
    assert [g["params"] for g in scaled] == [g["params"] for g in baked]
    assert {g["lr"] for g in scaled} == {SETTINGS["lr"]}  # the base, as timm's groups have it
    assert len({g["lr"] for g in baked}) > 5 and all("lr_scale" not in g for g in baked)
    for b, s in zip(baked, scaled):
        assert s["lr"] * s["lr_scale"] == pytest.approx(b["lr"], rel=1e-12)


def test_timm_style_loop_gives_the_baked_rates(adapted):
    baked = adapted.param_groups("adamw", **SETTINGS)
    opt = torch.optim.AdamW(adapted.param_groups("adamw", lr_scale=True, **SETTINGS))
    for step in range(10):
        lr = cosine(step)
        timm_style_step(opt, lr)
        # the effective rate of each group is the baked rate scaled like the base rate
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(
            [b["lr"] * lr / SETTINGS["lr"] for b in baked], rel=1e-12)


def test_control_baked_groups_flatten_layer_decay_in_a_timm_style_loop(adapted):
    """The pitfall the option removes: without lr_scale every group gets the same rate."""
    opt = torch.optim.AdamW(adapted.param_groups("adamw", **SETTINGS))
    timm_style_step(opt, cosine(3))
    assert len({g["lr"] for g in opt.param_groups}) == 1


def test_timm_scheduler_works_with_both_forms_after_warmup(adapted):
    """timm's schedulers apply lr_scale themselves. In the baked form their warmup starts every
    group at the one warmup_lr_init; after warmup both forms give the same rates."""
    from timm.scheduler import CosineLRScheduler

    def run(**extra):
        opt = adapted.optimizer("adamw", **SETTINGS, **extra)
        sched = CosineLRScheduler(opt, t_initial=10, warmup_t=2, warmup_lr_init=1e-6)
        out = []
        for epoch in range(6):
            sched.step(epoch)
            out.append([g["lr"] for g in opt.param_groups])
        return out

    scaled, baked = run(lr_scale=True), run()
    assert len(set(baked[-1])) > 5
    assert len(set(baked[0])) == 1 and len(set(scaled[0])) > 5  # warmup: flat vs scaled
    for s, b in zip(scaled[2:], baked[2:]):
        assert s == pytest.approx(b, rel=1e-12)


def test_optimizer_and_torch_scheduler_with_the_baked_form(adapted):
    """torch's schedulers multiply each group's own lr: the (default) baked form is right there;
    with lr_scale groups a torch scheduler alone would train every group at the base rate."""
    opt = adapted.optimizer("adamw", lr_scale=True, **SETTINGS)
    assert all(g["lr"] == SETTINGS["lr"] and "lr_scale" in g for g in opt.param_groups)
    opt = adapted.optimizer("adamw", **SETTINGS)
    before = [g["lr"] for g in opt.param_groups]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5 * lr for lr in before])


def test_thawkit_train_refuses_lr_scale(tmp_path):
    from test_train import load, make_data, recipe_dict
    from thawkit.plugins.train import train

    pm = thawkit.get_plugin_manager(entrypoints=False)
    d = recipe_dict(make_data(tmp_path), tmp_path / "run", optimizer={"lr_scale": True})
    with pytest.raises(thawkit.ConfigError, match="optimizer.lr_scale"):
        train(load(d, pm), log=lambda s: None)
    assert not (tmp_path / "run").exists()

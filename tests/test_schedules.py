"""LR schedules: per-group multipliers preserved, warmup and end values, params, state round trip."""
from __future__ import annotations

import itertools
import math

import pytest
import thawkit
from thawkit.plugins.train.schedules import schedule_registry

EPOCHS, STEPS, BASE = 5, 4, 0.1
MULTS = (1.0, 0.5, 0.125)  # e.g. head, last block, stem under layer decay


def optimizer(name: str = "sgd"):
    import torch

    params = [torch.nn.Parameter(torch.zeros(3)) for _ in MULTS]
    groups = [{"params": [p], "lr": BASE * m, "name": f"g{i}"} for i, (p, m) in enumerate(zip(params, MULTS))]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=BASE)
    return torch.optim.SGD(groups, lr=BASE, momentum=0.9)


def drive(factory, opt, sched, epochs=EPOCHS, steps=STEPS, val_losses=None):
    """Per-step lrs of every group, stepping like the loop does."""
    out = []
    for e in range(epochs):
        for _ in range(steps):
            out.append([g["lr"] for g in opt.param_groups])
            opt.step()
            if factory.interval == "step":
                sched.step()
        if factory.interval == "epoch":
            sched.step(val_losses[e] if val_losses else 1.0)
    out.append([g["lr"] for g in opt.param_groups])  # after the run
    return out


@pytest.fixture(scope="module")
def schedules():

    return schedule_registry(thawkit.get_plugin_manager(entrypoints=False))


def test_builtin_names(schedules):
    assert {"constant", "cosine", "linear", "step", "onecycle", "plateau"} <= set(schedules.names())


@pytest.mark.parametrize("name", ["constant", "cosine", "linear", "step", "onecycle", "plateau"])
@pytest.mark.parametrize("warmup", [0, 1])
def test_every_schedule_keeps_group_multipliers(schedules, name, warmup):
    factory = schedules.get(name)
    opt = optimizer()
    sched = factory(opt, epochs=EPOCHS, steps_per_epoch=STEPS, warmup_epochs=warmup)
    losses = [1.0, 0.9, 0.9, 0.9, 0.9]  # plateau: one improvement, then a plateau
    for lrs in drive(factory, opt, sched, val_losses=losses):
        for lr, m in zip(lrs, MULTS):
            assert lr == pytest.approx(lrs[0] * m, rel=1e-9, abs=1e-15)


def lrs_of(name, schedules, warmup=0.0, **params):
    factory = schedules.get(name)
    opt = optimizer()
    sched = factory(opt, epochs=EPOCHS, steps_per_epoch=STEPS, warmup_epochs=warmup, **params)
    return [lrs[0] for lrs in drive(factory, opt, sched)]


def test_warmup_is_linear_and_reaches_the_lr(schedules):
    for name in ("constant", "cosine", "linear", "step"):
        extra = {"step_size": 3} if name == "step" else {}
        lrs = lrs_of(name, schedules, warmup=1, **extra)  # W = 4 steps
        assert lrs[:5] == pytest.approx([BASE * k / 5 for k in (1, 2, 3, 4)] + [BASE]), name
    half = lrs_of("cosine", schedules, warmup=0.5)  # fractional epochs: W = 2 steps
    assert half[:3] == pytest.approx([BASE / 3, 2 * BASE / 3, BASE])


def test_cosine_and_linear_end_values(schedules):
    total = EPOCHS * STEPS
    cos = lrs_of("cosine", schedules, warmup=1, min_lr_ratio=0.1)
    assert cos[4] == pytest.approx(BASE)
    assert cos[total] == pytest.approx(0.1 * BASE)  # after the last step
    mid = 4 + (total - 4) // 2
    assert cos[mid] == pytest.approx(0.1 * BASE + 0.9 * BASE * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in itertools.pairwise(cos[4:]))
    lin = lrs_of("linear", schedules)
    assert lin[0] == pytest.approx(BASE) and lin[total] == pytest.approx(0.0, abs=1e-12)
    assert lin[total // 2] == pytest.approx(BASE / 2)
    assert lrs_of("constant", schedules) == pytest.approx([BASE] * (total + 1))


def test_step_decays_at_epoch_boundaries(schedules):
    lrs = lrs_of("step", schedules, step_size=2, gamma=0.5)
    per_epoch = [lrs[e * STEPS] for e in range(EPOCHS)]
    assert per_epoch == pytest.approx([BASE, BASE, BASE / 2, BASE / 2, BASE / 4])
    lrs = lrs_of("step", schedules, milestones=[1, 4], gamma=0.1)
    assert [lrs[e * STEPS] for e in range(EPOCHS)] == pytest.approx(
        [BASE, BASE / 10, BASE / 10, BASE / 10, BASE / 100])


def test_onecycle_peaks_at_the_lr_and_ends_far_below(schedules):
    lrs = lrs_of("onecycle", schedules, warmup=1, div_factor=10, final_div_factor=100)
    assert lrs[0] == pytest.approx(BASE / 10)
    assert max(lrs) == pytest.approx(BASE)
    assert lrs[EPOCHS * STEPS - 1] == pytest.approx(BASE / 10 / 100)
    default = lrs_of("onecycle", schedules)
    assert max(default) == pytest.approx(BASE)


def test_onecycle_keeps_adamw_betas_unless_asked(schedules):
    factory = schedules.get("onecycle")
    opt = optimizer("adamw")
    sched = factory(opt, epochs=EPOCHS, steps_per_epoch=STEPS)
    drive(factory, opt, sched)
    assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)


def test_plateau_cuts_after_patience_with_floor_per_group(schedules):
    factory = schedules.get("plateau")
    assert factory.interval == "epoch"
    opt = optimizer()
    sched = factory(opt, epochs=8, steps_per_epoch=1, patience=1, factor=0.5, min_lr_ratio=0.2)
    seen = []
    for loss in [1.0, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]:
        opt.step()
        sched.step(loss)
        seen.append([g["lr"] for g in opt.param_groups])
    head = [s[0] for s in seen]
    assert head == pytest.approx([BASE, BASE, BASE, BASE / 2, BASE / 2, BASE / 4, BASE / 4, BASE / 5])
    assert seen[-1] == pytest.approx([BASE * m * 0.2 for m in MULTS])  # floor keeps multipliers


def test_plateau_warmup_in_whole_epochs(schedules):
    factory = schedules.get("plateau")
    opt = optimizer()
    sched = factory(opt, epochs=5, steps_per_epoch=3, warmup_epochs=1.5)  # rounds up to 2
    seen = [opt.param_groups[0]["lr"]]
    for loss in (1.0, 1.0, 1.0):
        sched.step(loss)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([BASE / 3, 2 * BASE / 3, BASE, BASE])


@pytest.mark.parametrize("name", ["constant", "cosine", "step", "onecycle", "plateau"])
def test_state_dict_round_trip_continues_exactly(schedules, name):
    """A schedule rebuilt from the recipe and loaded from a checkpoint goes on as if never stopped."""
    import torch

    factory = schedules.get(name)
    opt = optimizer()
    sched = factory(opt, epochs=EPOCHS, steps_per_epoch=STEPS, warmup_epochs=1)
    full = drive(factory, opt, sched)
    opt2 = optimizer()
    sched2 = factory(opt2, epochs=EPOCHS, steps_per_epoch=STEPS, warmup_epochs=1)
    head = drive(factory, opt2, sched2, epochs=2)[:-1]
    saved = {"opt": opt2.state_dict(), "sched": sched2.state_dict()}
    torch.save(saved, buf := __import__("io").BytesIO())
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    opt3 = optimizer()
    sched3 = factory(opt3, epochs=EPOCHS, steps_per_epoch=STEPS, warmup_epochs=1)
    opt3.load_state_dict(saved["opt"])
    sched3.load_state_dict(saved["sched"])
    tail = drive(factory, opt3, sched3, epochs=EPOCHS - 2)
    assert head + tail == full


def test_bad_params_are_config_errors(schedules, tmp_path):
    from thawkit.errors import ConfigError

    opt = optimizer()
    with pytest.raises(ConfigError, match=r"schedule\.min_lr_ratios: unknown field"):
        schedules.get("cosine")(opt, epochs=3, steps_per_epoch=2, min_lr_ratios=0.1)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        schedules.get("cosine")(opt, epochs=3, steps_per_epoch=2, warmup_epochs=3)
    with pytest.raises(ConfigError, match="not both"):
        schedules.get("onecycle")(opt, epochs=3, steps_per_epoch=2, warmup_epochs=1, pct_start=0.2)
    with pytest.raises(ConfigError, match="milestones"):
        schedules.get("step")(opt, epochs=3, steps_per_epoch=2, milestones=[5])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("backbone: {source: python, name: 'm:f'}\nstrategy: {name: full}\n"
                      "schedule: {name: plateau, patience: -1}\n")
    with pytest.raises(ConfigError, match=r"schedule\.patience"):
        thawkit.load_recipe(recipe, pm=thawkit.get_plugin_manager(entrypoints=False))
    recipe.write_text("backbone: {source: python, name: 'm:f'}\nstrategy: {name: full}\n"
                      "schedule: {name: cosin}\n")
    with pytest.raises(thawkit.UnknownNameError, match="cosine"):
        thawkit.load_recipe(recipe, pm=thawkit.get_plugin_manager(entrypoints=False))


def test_module_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, thawkit.plugins.train.schedules as s; "
            "assert 'torch' not in sys.modules; assert s.thawkit_register_schedules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name, interval", [("cosine", "step"), ("plateau", "epoch")])
def test_build_scheduler_and_end_epoch_step_as_the_schedule_says(name, interval):
    """The one builder (train, probe, Lightning) gives the interval; ``end_epoch`` steps an
    epoch-interval schedule once per epoch, a plateau one on the validation loss."""
    from thawkit.plugins.train.schedules import build_scheduler, end_epoch, watches_metric
    from thawkit.plugins.train.sections import ScheduleSection

    pm = thawkit.get_plugin_manager(entrypoints=False)
    opt = optimizer()
    section = ScheduleSection(name=name, patience=0) if name == "plateau" else ScheduleSection(name=name)
    sched, got = build_scheduler(section, opt, pm=pm, epochs=EPOCHS, steps_per_epoch=STEPS)
    assert got == interval and watches_metric(sched) == (name == "plateau")
    before = [g["lr"] for g in opt.param_groups]
    for loss in (1.0, 1.0, 1.0):  # no improvement: plateau lowers the lr; cosine does not step here
        end_epoch(sched, got, loss)
    after = [g["lr"] for g in opt.param_groups]
    assert (after < before) if name == "plateau" else after == before

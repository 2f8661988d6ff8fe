"""Parameter groups: exactly-once coverage, decay split, layer decay, multipliers, schedulers."""
import fnmatch

import pytest
import torch

import thawkit
from builders import resnet, vit
from thawkit.errors import ConfigError, UnknownNameError


def _norm_param_names(model):
    from thawkit.norm import norm_modules

    return {f"{path}.{n}" for path, m in norm_modules(model).items()
            for n, _ in m.named_parameters(recurse=False)}


@pytest.mark.parametrize("build", [resnet, vit])
@pytest.mark.parametrize("strategy", ["full", "last-block", "bitfit", "norm-only", "gradual"])
def test_every_trainable_parameter_in_exactly_one_group(build, strategy, pm):
    adapted = thawkit.adapt(build(), strategy, pm=pm)
    opt = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    names = {id(p): n for n, p in adapted.model.named_parameters()}
    seen = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen))
    assert set(seen) == set(adapted.ever_trainable)
    group_names = [g["name"] for g in opt.param_groups]
    assert all(group_names) and len(set(group_names)) == len(group_names)


@pytest.mark.parametrize("build", [resnet, vit])
def test_no_decay_groups_hold_exactly_biases_norms_1d_and_model_names(build, pm):
    model = build()
    adapted = thawkit.adapt(model, "full", pm=pm)
    opt = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    listed = set(getattr(model, "no_weight_decay", lambda: set())())
    norms = _norm_param_names(model)
    expected = {n for n, p in model.named_parameters()
                if p.ndim <= 1 or n.endswith(".bias") or n in norms
                or any(fnmatch.fnmatchcase(n, pat) for pat in listed)}
    got_no_decay = {names[id(p)] for g in opt.param_groups if g["name"].endswith(".no_decay")
                    for p in g["params"]}
    assert got_no_decay == expected
    for g in opt.param_groups:
        assert g["weight_decay"] == (0.0 if g["name"].endswith(".no_decay") else 0.05)
    if build is vit:
        assert {"pos_embed", "cls_token"} <= got_no_decay


def test_layer_decay_and_head_multiplier_live_in_group_lr(pm):
    adapted = thawkit.adapt(resnet(), "full", pm=pm)
    opt = adapted.optimizer("sgd", lr=0.1, weight_decay=0.0, layer_decay=0.5, head_lr_mult=2.0, momentum=0.9)
    lr = {g["name"]: g["lr"] for g in opt.param_groups}
    order = [b.name for b in adapted.layout.all_blocks]
    assert lr["head"] == pytest.approx(0.2)
    body = [b for b in order if b != "head"]
    scales = [lr[b] if b in lr else lr[b + ".no_decay"] for b in body]
    assert scales == sorted(scales), "lr must grow towards the head"
    assert scales[-1] == pytest.approx(0.1 * 0.5)  # layer4: one step below the head
    assert opt.defaults["momentum"] == 0.9


def test_explicit_block_lrs_override(pm):
    adapted = thawkit.adapt(resnet(), "last-block", blocks=1, pm=pm)
    opt = adapted.optimizer("adamw", lr=1e-3, lrs={"layer4": 1e-5})
    lr = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lr["layer4"] == 1e-5 and lr["head"] == 1e-3
    with pytest.raises(UnknownNameError, match="layer4"):
        adapted.optimizer("adamw", lrs={"layer5": 1e-5})


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "resnet18", "convnext_atto"])
def test_layer_decay_matches_timm_param_groups_layer_decay(arch, pm):
    import timm
    from timm.optim import param_groups_layer_decay

    model = timm.create_model(arch, pretrained=False, num_classes=10)
    adapted = thawkit.adapt(model, "full", pm=pm)
    opt = adapted.optimizer("adamw", lr=1.0, weight_decay=0.05, layer_decay=0.75)
    ours = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    nwd = list(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else []
    theirs = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=nwd, layer_decay=0.75)
    count = 0
    for g in theirs:
        for p in g["params"]:
            assert ours[id(p)][0] == pytest.approx(g["lr_scale"])
            assert ours[id(p)][1] == pytest.approx(g["weight_decay"])
            count += 1
    assert count == len(list(model.parameters()))


@pytest.mark.parametrize("make_sched", [
    lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6),
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1),
])
def test_torch_schedulers_keep_multipliers_across_thawing(make_sched, pm):
    adapted = thawkit.adapt(resnet(), "gradual", every=1, pm=pm)
    opt = adapted.optimizer("adamw", lr=1e-2, layer_decay=0.5)
    sched = make_sched(opt)
    base = [g["lr"] for g in opt.param_groups]
    n_groups = len(opt.param_groups)
    for epoch in range(5):
        adapted.on_epoch_start(epoch)
        opt.step()
        sched.step()
        now = [g["lr"] for g in opt.param_groups]
        ratios = [a / b for a, b in zip(now, base)]
        assert len(opt.param_groups) == n_groups
        assert max(ratios) == pytest.approx(min(ratios), rel=1e-9), "multipliers lost"
    assert ratios[0] < 1.0


def test_bad_optimizer_settings(pm):
    adapted = thawkit.adapt(resnet(), "full", pm=pm)
    with pytest.raises(UnknownNameError, match="adamw"):
        adapted.optimizer("adamx")
    with pytest.raises(ConfigError, match="layer_decay"):
        adapted.optimizer("adamw", layer_decay=1.5)
    with pytest.raises(ConfigError, match="momentu"):
        adapted.optimizer("sgd", momentu=0.9)


def test_param_groups_for_your_own_optimizer(pm):
    adapted = thawkit.adapt(resnet(), "last-block", pm=pm)
    groups = adapted.param_groups(lr=0.05, weight_decay=1e-4)
    opt = torch.optim.SGD(groups, lr=0.05)
    assert [g["name"] for g in opt.param_groups] == [g["name"] for g in groups]
    assert adapted.plan.optimizer["lr"] == 0.05

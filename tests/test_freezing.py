"""Strategies against hand-written recipes, and 'frozen means frozen' under real training steps."""
import copy

import pytest
import torch

import thawkit
from builders import resnet, trainable, vit


# ------------------------------------------------------------- hand-written equivalence
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_head_only_equals_fc_only(arch, pm):
    hand = resnet(arch)
    for n, p in hand.named_parameters():
        p.requires_grad = n.startswith("fc.")
    adapted = thawkit.adapt(resnet(arch), "head-only", pm=pm)
    assert trainable(adapted.model) == trainable(hand) == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_last_block_equals_layer4_and_fc(arch, pm):
    hand = resnet(arch)
    for n, p in hand.named_parameters():
        p.requires_grad = n.startswith(("layer4.", "fc."))
    adapted = thawkit.adapt(resnet(arch), "last-block", blocks=1, pm=pm)
    assert trainable(adapted.model) == trainable(hand)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_pattern_equals_layer4_in_name(arch, pm):
    hand = resnet(arch)
    for n, p in hand.named_parameters():
        p.requires_grad = "layer4" in n or n.startswith("fc")
    adapted = thawkit.adapt(resnet(arch), "pattern", include=["layer4"], pm=pm)
    assert trainable(adapted.model) == trainable(hand)


@pytest.mark.parametrize("strategy,params", [("head-only", {}), ("last-block", {"blocks": 2}),
                                             ("gradual", {"every": 1}), ("pattern", {"include": ["layer3"]})])
def test_groups_cover_the_filter_requires_grad_recipe(strategy, params, pm):
    adapted = thawkit.adapt(resnet(), strategy, num_classes=4, pm=pm, **params)
    opt = adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05)
    in_groups = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(in_groups) == len(set(in_groups)), "a parameter sits in two groups"
    by_hand = {id(p) for p in filter(lambda p: p.requires_grad, adapted.model.parameters())}
    if strategy == "gradual":  # every parameter that will ever thaw is in from the start
        assert by_hand < set(in_groups) and len(in_groups) == len(list(adapted.model.parameters()))
    else:
        assert set(in_groups) == by_hand


# ----------------------------------------------------------------- frozen means frozen
def _train_steps(adapted, steps=3, image=32):
    model = adapted.model
    opt = adapted.optimizer("adamw", lr=1e-2, weight_decay=0.1)
    model.train()
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        adapted.on_epoch_start(step)
        model.train()  # the norm policy must survive repeated train() calls
        x = torch.randn(4, 3, image, image, generator=gen) * 2 + 1
        y = torch.randint(0, 10, (4,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=False)  # the harsh variant: zeroed, not None, grads
        loss.backward()
        opt.step()


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("build", ["resnet", "vit"])
@pytest.mark.parametrize("strategy,params", [("head-only", {}), ("last-block", {"blocks": 1}),
                                             ("gradual", {"every": 2})])
def test_frozen_parameters_and_buffers_are_bit_identical(build, strategy, params, pm):
    model = resnet() if build == "resnet" else vit()
    adapted = thawkit.adapt(model, strategy, pm=pm, **params)
    frozen_at_end = {n for n, p in model.named_parameters() if n not in adapted.phases[
        adapted.phase_at(2)].trainable}
    before = _snapshot(model)
    _train_steps(adapted, steps=3)
    after = _snapshot(model)
    plan = adapted.plan
    frozen_blocks = {b.name for b in plan.blocks if b.trainable_per_phase[adapted.phase] == 0}
    assert frozen_at_end, "test needs frozen parameters"
    for name in frozen_at_end:
        assert torch.equal(before[name], after[name]), f"frozen {name} moved"
    # buffers (BatchNorm running stats, num_batches_tracked) in frozen blocks are untouched
    block_of = adapted.layout.block_of()
    moved_buffers = []
    for name, value in before.items():
        if name in block_of:
            continue
        owner = name.rsplit(".", 1)[0]
        sibling = next((p for p in block_of if p.startswith(owner + ".")), None)
        if sibling is not None and block_of[sibling] in frozen_blocks and not torch.equal(value, after[name]):
            moved_buffers.append(name)
    assert not moved_buffers
    trainable = adapted.trainable
    assert any(not torch.equal(before[n], after[n]) for n in trainable), "nothing trained"
    assert all(not torch.equal(before[n], after[n]) for n in adapted.layout.head.params)


def test_naive_norm_train_mode_does_update_statistics(pm):
    """Control: with norm=train the running statistics of frozen blocks do move."""
    adapted = thawkit.adapt(resnet(), "head-only", norm="train", pm=pm)
    before = adapted.model.layer1[0].bn1.running_mean.clone()
    _train_steps(adapted, steps=1)
    assert not torch.equal(before, adapted.model.layer1[0].bn1.running_mean)


def test_affine_norm_mode_trains_affine_but_keeps_statistics(pm):
    adapted = thawkit.adapt(resnet(), "head-only", norm="affine", pm=pm)
    bn = adapted.model.layer1[0].bn1
    assert bn.weight.requires_grad and not adapted.model.layer1[0].conv1.weight.requires_grad
    stats, weight = bn.running_var.clone(), bn.weight.detach().clone()
    _train_steps(adapted, steps=2)
    assert torch.equal(stats, bn.running_var)
    assert not torch.equal(weight, bn.weight)
    assert adapted.plan.param("layer1.0.bn1.weight").norm == "affine"


def test_frozen_norm_survives_deepcopy_and_eval_roundtrip(pm):
    adapted = thawkit.adapt(resnet(), "head-only", pm=pm)
    clone = copy.deepcopy(adapted.model)
    clone.train()
    before = clone.bn1.running_mean.clone()
    clone(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, clone.bn1.running_mean)


def test_thawed_block_norm_updates_statistics_after_thawing(pm):
    adapted = thawkit.adapt(resnet(), "gradual", every=1, pm=pm)
    bn = adapted.model.layer4[1].bn2
    adapted.on_epoch_start(1)  # layer4 thaws
    adapted.model.train()
    before = bn.running_mean.clone()
    adapted.model(torch.randn(2, 3, 32, 32))
    assert not torch.equal(before, bn.running_mean)
    assert adapted.plan.param("layer4.1.bn2.weight").norm == "trainable"

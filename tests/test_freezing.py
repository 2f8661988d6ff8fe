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


# -------------------------------------------------------------- dropout in frozen blocks
def _dropout_vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2,
                             num_classes=10, drop_path_rate=0.5, proj_drop_rate=0.3, drop_rate=0.3)


def _varies_per_block(adapted, x):
    """For each block of a ViT, whether two train-mode forwards on ``x`` give different outputs."""
    model, outs = adapted.model, {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: outs.__setitem__(k, o.detach().clone()))
             for k, b in enumerate(model.blocks)]
    model.train()  # the policy must survive every model.train()
    model(x)
    first = dict(outs)
    model(x)
    for h in hooks:
        h.remove()
    return [not torch.equal(first[k], outs[k]) for k in sorted(outs)]


def test_frozen_dropout_off_holds_frozen_blocks_until_they_thaw(pm):
    adapted = thawkit.adapt(_dropout_vit(), "gradual", every=1, frozen_dropout="off", pm=pm)
    x = torch.randn(2, 3, 32, 32)
    assert _varies_per_block(adapted, x) == [False, False]  # both blocks frozen: deterministic
    adapted.on_epoch_start(1)  # blocks.1 thaws: its drop-path and dropout are active again
    assert _varies_per_block(adapted, x) == [False, True]
    adapted.on_epoch_start(2)
    assert _varies_per_block(adapted, x) == [True, True]
    assert "blocks.0.drop_path1" in adapted.inference_modules(0)
    assert not adapted.inference_modules(3)  # everything trains in the last phase
    # a frozen block computes in train mode what it computes in eval mode
    adapted.on_epoch_start(1)
    tokens = torch.randn(2, 5, adapted.model.embed_dim)
    in_train = adapted.model.train().blocks[0](tokens)
    assert torch.equal(in_train, adapted.model.eval().blocks[0](tokens))


def test_frozen_dropout_keep_leaves_dropout_on_everywhere(pm):
    adapted = thawkit.adapt(_dropout_vit(), "gradual", every=1, pm=pm)
    assert adapted.frozen_dropout == "keep" and not adapted.inference_modules()
    assert _varies_per_block(adapted, torch.randn(2, 3, 32, 32)) == [True, True]
    adapted.model.blocks[0].eval()  # keep touches no module: a mode the user set stands
    adapted.on_epoch_start(2)
    assert adapted.model.blocks[0].training is False


def test_frozen_dropout_off_leaves_the_heads_dropout_on(pm):
    """The head always trains; a dropout outside every block (before the classifier) stays on."""
    from thawkit.plugins.train.demo_model import small_cnn

    adapted = thawkit.adapt(small_cnn(3, width=4, dropout=0.5), "head-only", frozen_dropout="off", pm=pm)
    held = adapted.inference_modules()
    assert {p.split(".")[0] for p in held} == {"stem", "block1", "block2", "block3"}
    assert not any(p.startswith(("pool", "fc")) for p in held)
    model = adapted.model.train()
    x = torch.randn(4, 3, 16, 16)
    assert not torch.equal(model(x), model(x))  # the head's dropout still draws masks
    assert torch.equal(model.block3(model.block2(model.block1(model.stem(x)))),
                       model.eval().block3(model.block2(model.block1(model.stem(x)))))


def test_frozen_dropout_off_keeps_frozen_parameters_and_statistics(pm):
    adapted = thawkit.adapt(_dropout_vit(), "gradual", every=2, frozen_dropout="off", pm=pm)
    frozen_at_end = [n for n, p in adapted.model.named_parameters()
                     if n not in adapted.phases[adapted.phase_at(2)].trainable]
    before = _snapshot(adapted.model)
    _train_steps(adapted, steps=3)
    after = _snapshot(adapted.model)
    assert frozen_at_end and all(torch.equal(before[n], after[n]) for n in frozen_at_end)
    assert all(not torch.equal(before[n], after[n]) for n in adapted.layout.head.params)


def test_frozen_dropout_in_the_plan_and_the_state(pm):
    adapted = thawkit.adapt(_dropout_vit(), "gradual", every=1, frozen_dropout="off", pm=pm)
    table = adapted.plan.table().splitlines()
    assert table[0] == "strategy gradual (every=1, start=0), norm=frozen, frozen_dropout=off"
    assert "frozen_dropout=off: a block shown '-' in a phase runs without dropout" in table[-1]
    assert adapted.plan.to_dict()["frozen_dropout"] == "off"
    keep = thawkit.adapt(_dropout_vit(), "gradual", every=1, pm=pm)
    assert "frozen_dropout" not in keep.plan.table() and keep.plan.to_dict()["frozen_dropout"] == "keep"
    # a state saved before the setting existed resumes with its default; another policy is refused
    old = keep.state_dict()
    del old["params"]["frozen_dropout"]
    keep.load_state_dict(old)
    with pytest.raises(thawkit.ConfigError, match="strategy parameters"):
        adapted.load_state_dict(keep.state_dict())
    with pytest.raises(thawkit.ConfigError, match="strategy.frozen_dropout: Input should be 'keep' or 'off'"):
        thawkit.adapt(_dropout_vit(), "head-only", frozen_dropout="on", pm=pm)


def test_a_plugin_params_model_from_before_frozen_dropout_keeps_dropout(pm):
    """A strategy plugin whose ``Params`` predates the field (a pydantic model of its own with
    ``norm``, not a StrategyParams subclass) still adapts, with dropout kept."""
    from pydantic import BaseModel

    class OldParams(BaseModel):
        norm: str = "frozen"

    class Old(thawkit.Strategy):
        name = "old-params"
        Params = OldParams

        def phases(self, layout, model):
            return [thawkit.Phase(0, layout.head.params)]

    adapted = thawkit.adapt(_dropout_vit(), Old(OldParams()), pm=pm)
    assert adapted.frozen_dropout == "keep" and not adapted.inference_modules()
    assert _varies_per_block(adapted, torch.randn(2, 3, 32, 32)) == [True, True]

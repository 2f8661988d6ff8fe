"""Gradual unfreezing: phases, explicit schedules, state round trip, and bad parameters."""
import pytest

import thawkit
from builders import resnet, trainable, vit
from thawkit.errors import ConfigError, UnknownNameError


def test_resnet18_thaws_one_block_every_two_epochs(pm):
    adapted = thawkit.adapt(resnet(), "gradual", every=2, pm=pm)
    model = adapted.model
    expected_new = [b.name for b in reversed(adapted.layout.blocks)] + ["stem"]
    seen = [trainable(model)]
    assert seen[0] == set(adapted.layout.head.params)
    for epoch in range(1, 2 * len(expected_new) + 3):
        changed = adapted.on_epoch_start(epoch)
        assert changed == (epoch % 2 == 0 and epoch // 2 <= len(expected_new))
        now = trainable(model)
        if changed:
            new_block = expected_new[epoch // 2 - 1]
            assert now - seen[-1] == set(adapted.layout.block(new_block).params)
            seen.append(now)
        else:
            assert now == seen[-1]
    assert seen[-1] == {n for n, _ in model.named_parameters()}


def test_vit_gradual_thaws_transformer_blocks_from_the_top(pm):
    adapted = thawkit.adapt(vit(), "gradual", every=1, start=2, pm=pm)
    model = adapted.model
    first = trainable(model)
    assert any(n.startswith("blocks.11.") for n in first) and any(n.startswith("blocks.10.") for n in first)
    assert not any(n.startswith("blocks.9.") for n in first)
    adapted.on_epoch_start(1)
    assert any(n.startswith("blocks.9.") for n in trainable(model))
    adapted.on_epoch_start(100)
    assert trainable(model) == {n for n, _ in model.named_parameters()}
    assert "cls_token" in trainable(model) and "pos_embed" in trainable(model)


def test_explicit_phases_blocks_patterns_and_rest(pm):
    adapted = thawkit.adapt(resnet(), "gradual", pm=pm, phases=[
        {"epoch": 0, "blocks": ["layer4"]},
        {"epoch": 3, "params": [r"^layer3\.1\."]},
        {"epoch": 5, "rest": True},
    ])
    model = adapted.model
    assert trainable(model) == {n for n, _ in model.named_parameters() if n.startswith(("layer4.", "fc."))}
    adapted.on_epoch_start(3)
    assert {n for n in trainable(model) if n.startswith("layer3.")} == \
        {n for n, _ in model.named_parameters() if n.startswith("layer3.1.")}
    adapted.on_epoch_start(5)
    assert trainable(model) == {n for n, _ in model.named_parameters()}
    assert [p.epoch for p in adapted.plan.phases] == [0, 3, 5]


@pytest.mark.parametrize("phases,match", [
    ([{"epoch": 0, "blocks": ["layer4"]}, {"epoch": 2, "blocks": ["layer4"]}], "already thawed"),
    ([{"epoch": 0, "params": ["nothing_matches"]}], "matches no parameter"),
    ([{"epoch": 1, "blocks": ["layer4"]}], "epoch 0"),
    ([{"epoch": 0, "blocks": ["layer4"]}, {"epoch": 0, "blocks": ["layer3"]}], "after the previous"),
    ([{"epoch": 0, "rest": True}, {"epoch": 2, "blocks": ["layer3"]}], "already thawed"),
    ([{"epoch": 0}], "blocks, params or rest"),
])
def test_bad_explicit_phases(phases, match, pm):
    with pytest.raises(ConfigError, match=match):
        thawkit.adapt(resnet(), "gradual", phases=phases, pm=pm)


def test_unknown_block_in_phase_suggests_closest(pm):
    with pytest.raises(UnknownNameError, match="layer4"):
        thawkit.adapt(resnet(), "gradual", phases=[{"epoch": 0, "blocks": ["layr4"]}], pm=pm)


@pytest.mark.parametrize("strategy,params,match", [
    ("last-block", {"blocks": -1}, "strategy.blocks"),
    ("last-block", {"blocks": 99}, "more than the"),
    ("gradual", {"every": 0}, "strategy.every"),
    ("pattern", {"include": ["layer9"]}, "matches no parameter"),
    ("pattern", {"include": ["("]}, "not a valid regex"),
    ("head-only", {"norm": "freeze"}, "strategy.norm"),
    ("head-only", {"blocks": 1}, "strategy.blocks: unknown field"),
])
def test_bad_strategy_parameters(strategy, params, match, pm):
    with pytest.raises(ConfigError, match=match):
        thawkit.adapt(resnet(), strategy, pm=pm, **params)


def test_unknown_strategy_lists_closest_and_all(pm):
    with pytest.raises(UnknownNameError) as info:
        thawkit.adapt(resnet(), "gradul", pm=pm)
    assert "'gradual'" in str(info.value) and "head-only" in str(info.value)


def test_state_round_trip_mid_gradual_restores_trainable_set_and_groups(pm):
    first = thawkit.adapt(resnet(), "gradual", every=2, pm=pm)
    opt1 = first.optimizer("adamw", lr=1e-3, layer_decay=0.8)
    for epoch in range(5):
        first.on_epoch_start(epoch)
    state = first.state_dict()
    import json
    state = json.loads(json.dumps(state))  # a checkpoint stores it as plain data

    second = thawkit.adapt(resnet(), "gradual", every=2, pm=pm)
    opt2 = second.optimizer("adamw", lr=1e-3, layer_decay=0.8)
    second.load_state_dict(state)
    assert trainable(second.model) == trainable(first.model)
    assert second.phase == first.phase == 2
    assert [g["name"] for g in opt2.param_groups] == [g["name"] for g in opt1.param_groups]
    opt2.load_state_dict(opt1.state_dict())  # same structure: loads without complaint
    assert second.on_epoch_start(5) is False and second.on_epoch_start(6) is True


def test_state_for_another_strategy_is_refused(pm):
    a = thawkit.adapt(resnet(), "gradual", every=2, pm=pm)
    b = thawkit.adapt(resnet(), "gradual", every=3, pm=pm)
    with pytest.raises(ConfigError, match="strategy parameters"):
        b.load_state_dict(a.state_dict())
    c = thawkit.adapt(resnet(), "head-only", pm=pm)
    with pytest.raises(ConfigError, match="gradual"):
        c.load_state_dict(a.state_dict())


def test_plan_table_and_json(pm):
    adapted = thawkit.adapt(resnet(), "gradual", every=2, num_classes=5, pm=pm)
    adapted.optimizer("adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    text = str(adapted.plan)
    assert "layer4" in text and "head" in text and "e3" in text and "total" in text
    import json
    data = json.loads(adapted.plan.to_json())
    names = [r["name"] for r in data["parameters"]]
    assert sorted(names) == sorted(n for n, _ in adapted.model.named_parameters())
    fc = next(r for r in data["parameters"] if r["name"] == "fc.weight")
    assert fc["phase"] == 0 and fc["trainable"] and fc["group"] == "head" and fc["lr"] == 1e-3
    conv = next(r for r in data["parameters"] if r["name"] == "conv1.weight")
    assert conv["phase"] == len(data["phases"]) - 1 and not conv["trainable"]
    bn = next(r for r in data["parameters"] if r["name"] == "bn1.weight")
    assert bn["norm"] == "frozen" and bn["weight_decay"] == 0.0

"""lp-ft: a linear probe, then fine-tuning with a scaled backbone lr; the switch in the plan, the
metrics and resume."""
from __future__ import annotations

import json

import pytest
from builders import trainable
from test_resume import assert_same_run, metrics, straight_and_resumed
from test_train import load, make_data, recipe_dict


def small(num_classes: int = 5):
    import torch
    from thawkit.plugins.train.demo_model import small_cnn

    torch.manual_seed(0)
    return small_cnn(num_classes=num_classes, width=4)


def test_phases_trainable_set_per_epoch_and_lrs(pm):
    import thawkit

    adapted = thawkit.adapt(small(), "lp-ft", num_classes=3, pm=pm, probe_epochs=2)
    opt = adapted.optimizer("adamw", lr=0.01, head_lr_mult=2.0)
    head = set(adapted.layout.head.params)
    everything = {n for n, _ in adapted.model.named_parameters()}
    assert [(p.epoch, p.label) for p in adapted.phases] == [(0, "probe: head"), (2, "fine-tune: all")]
    seen = []
    for epoch in range(4):
        adapted.on_epoch_start(epoch)
        seen.append(trainable(adapted.model))
    assert seen == [head, head, everything, everything]
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == pytest.approx(0.02) and lrs["head.no_decay"] == pytest.approx(0.02)
    backbone = {n: lr for n, lr in lrs.items() if not n.startswith("head")}
    assert set(backbone) >= {"stem", "block1", "block2", "block3"}
    assert all(lr == pytest.approx(0.001) for lr in backbone.values()), backbone
    # every trainable parameter in exactly one group, after the switch too
    names = {id(p): n for n, p in adapted.model.named_parameters()}
    grouped = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(everything)


def test_last_blocks_and_layer_decay_multiply(pm):
    import thawkit

    adapted = thawkit.adapt(small(), "lp-ft", num_classes=3, pm=pm, blocks=1,
                            backbone_lr_scale=0.5)
    plain = thawkit.adapt(small(), "last-block", num_classes=3, pm=pm, blocks=1)
    assert adapted.phases[1].trainable == plain.phases[0].trainable
    assert adapted.phases[1].label == "fine-tune: last 1 block(s)"
    groups = {g["name"]: g["lr"] for g in adapted.optimizer("sgd", lr=0.1, layer_decay=0.5).param_groups}
    reference = {g["name"]: g["lr"] for g in plain.optimizer("sgd", lr=0.1, layer_decay=0.5).param_groups}
    assert groups["head"] == reference["head"] == pytest.approx(0.1)
    assert groups["block3"] == pytest.approx(0.5 * reference["block3"]) == pytest.approx(0.025)
    # an explicit per-block lr still wins over the strategy's factor
    explicit = adapted.optimizer("sgd", lr=0.1, lrs={"block3": 0.3}).param_groups
    assert {g["name"]: g["lr"] for g in explicit}["block3"] == 0.3


def test_plan_shows_the_switch(pm):
    import thawkit

    adapted = thawkit.adapt(small(), "lp-ft", num_classes=3, pm=pm, probe_epochs=3)
    adapted.optimizer("adamw", lr=0.01)
    text = str(adapted.plan)
    assert "lp-ft (probe_epochs=3" in text and " e0 " in text and " e3" in text
    assert [p.label for p in adapted.plan.phases] == ["probe: head", "fine-tune: all"]


@pytest.mark.parametrize("params, field", [
    ({"probe_epochs": 0}, "strategy.probe_epochs"),
    ({"blocks": 0}, "strategy.blocks"),
    ({"blocks": 9}, "strategy.blocks"),
    ({"backbone_lr_scale": 0}, "strategy.backbone_lr_scale"),
    ({"backbone_lr_scale": 2}, "strategy.backbone_lr_scale"),
    ({"probe": 2}, "strategy.probe"),
])
def test_bad_parameters_name_the_field(pm, params, field):
    import thawkit

    with pytest.raises(thawkit.ConfigError, match=field.replace(".", r"\.")):
        thawkit.adapt(small(), "lp-ft", num_classes=3, pm=pm, **params)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def test_metrics_show_the_switch_and_the_backbone_lr(tmp_path, data, pm):
    from thawkit.plugins.train import train

    d = recipe_dict(data, tmp_path / "run", strategy={"name": "lp-ft", "probe_epochs": 1,
                                                      "backbone_lr_scale": 0.25},
                    schedule={"name": "constant", "warmup_epochs": 0}, train={"epochs": 2})
    lines: list[str] = []
    assert train(load(d, pm), log=lines.append).status == "finished"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["phase_label"]) for r in rows] == [(0, "probe: head"),
                                                             (1, "fine-tune: all")]
    assert rows[0]["trainable_params"] < rows[1]["trainable_params"]
    lrs = rows[1]["lrs"]
    assert lrs["head"] == 0.01 and lrs["block1"] == pytest.approx(0.0025)
    epochs = [x for x in lines if x.startswith("epoch ")]
    assert "phase 0 (probe: head) " in epochs[0] and "phase 1 (fine-tune: all) " in epochs[1]
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert [p["label"] for p in plan["phases"]] == ["probe: head", "fine-tune: all"]


@pytest.mark.parametrize("stop_after", [1, 2])
def test_resume_across_the_switch_is_bit_identical(tmp_path, data, pm, stop_after):
    """Probe epochs 0-1 (on cached features: augment off), fine-tuning from epoch 2; stopped in
    the probe or right at the switch, the resumed run ends bit-identical to one straight run."""
    sections = {"strategy": {"name": "lp-ft", "probe_epochs": 2}, "train": {"epochs": 3},
                "data": {"augment": False}, "backbone": {"kwargs": {"width": 4, "dropout": 0.3}}}
    a, b, first = straight_and_resumed(tmp_path, data, pm, stop_after=stop_after, **sections)
    assert first.epochs_done == stop_after
    assert [r["phase"] for r in metrics(b)] == [0, 0, 1]
    plan = json.loads((a / "plan.json").read_text())
    assert plan["cache"][0]["on"] and not plan["cache"][1]["on"]  # the probe really was cached
    assert_same_run(a, b)

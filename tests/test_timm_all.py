"""Every timm architecture: loads (meta device), describes, and takes a new head.

For each of ``timm.list_models()`` (1371 architectures with timm 1.0.31): the
layout validates (every parameter in exactly one block) with at least two
blocks and a head; every parameter's lr scale and weight decay under layer decay equal
``timm.optim.param_groups_layer_decay``'s; and after ``replace_head`` the classifier(s) that
``get_classifier()`` returns have ``N`` outputs and stay on the meta device.
Models that timm builds without a classifier (``num_classes=0``) must refuse
to be described for training with the hint to pass ``num_classes``, and
``replace_head`` must give them a head directly.

The names are checked in four chunks, each collecting its failures into one
report. Architectures that genuinely cannot take a head are listed below with
their reason and the error they must raise: if one starts to work, or fails
otherwise, the test fails so the list stays true.

About 4 to 5 minutes on 2 CPU cores (meta-device builds dominate).
"""
from __future__ import annotations

import time

import pytest
import thawkit
import timm
from thawkit.api import describe_layout, replace_head
from thawkit.errors import LayoutError
from thawkit.param_groups import OptimizerSettings, build_groups
from thawkit.plugins.timm.layout import final_classifiers, out_features
from timm.optim import param_groups_layer_decay

pytestmark = pytest.mark.slow

N = 7
CHUNKS = 4
ENCODER = ("encoder-only vision tower of a vision-language model: no get_classifier or "
           "reset_classifier, forward returns tokens and timm's forward_head raises "
           "'does not support classification'; the classification variant of the family works")
#: name -> (reason, text the error must contain)
EXPECTED_FAILURES = {
    "deepseek_vit_412m_enc": (ENCODER, "encoder without a classification head"),
    "gemma4_vit_167m_enc": (ENCODER, "encoder without a classification head"),
    "gemma4_vit_570m_enc": (ENCODER, "encoder without a classification head"),
    "qwen3_vit_88m_enc": (ENCODER, "encoder without a classification head"),
    "qwen3_vit_306m_enc": (ENCODER, "encoder without a classification head"),
    "qwen3_vit_416m_enc": (ENCODER, "encoder without a classification head"),
    "mobilenetv5_300m_enc": (ENCODER, "encoder without a classification head"),
}



def check(name: str, pm) -> str:
    """Load, describe and re-head one architecture; returns the device it was built on."""
    device = "meta"
    try:
        model = thawkit.load_backbone(f"timm:{name}", pm=pm, device="meta")
    except Exception:  # noqa: BLE001 - a builder that cannot run on meta: use the CPU
        device = "cpu"
        model = thawkit.load_backbone(f"timm:{name}", pm=pm)
    if not final_classifiers(model) and callable(getattr(model, "reset_classifier", None)):
        # built with num_classes=0: describing it for training asks for num_classes, and
        # replace_head gives it a head directly
        with pytest.raises(LayoutError, match="num_classes=0"):
            describe_layout(model, pm=pm)
    else:
        layout = describe_layout(model, pm=pm)
        assert len(layout.blocks) >= 2, f"{len(layout.blocks)} blocks"
        assert layout.head.params
    model, layout = replace_head(model, N, pm=pm)
    assert len(layout.blocks) >= 2, f"{len(layout.blocks)} blocks"
    finals = final_classifiers(model)
    outs = [out_features(model.get_submodule(p)) for p in finals]
    assert finals and outs == [N] * len(finals), f"new classifiers {finals} have {outs} outputs"
    assert set(layout.classifiers) == set(finals), f"layout {layout.classifiers} vs {finals}"
    if device == "meta":
        assert all(p.is_meta for p in model.parameters()), "new head left the meta device"
    check_layer_decay(model, layout, pm)
    return device


def check_layer_decay(model, layout, pm) -> None:
    """Every parameter's lr scale and weight decay equal timm's param_groups_layer_decay."""
    specs = build_groups(model, layout, [n for n, _ in model.named_parameters()],
                         OptimizerSettings(lr=1.0, weight_decay=0.05, layer_decay=0.75), pm)
    ours = {n: (g.lr, g.weight_decay) for g in specs for n in g.params}
    listed = list(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else []
    by_id = {id(p): n for n, p in model.named_parameters()}
    for group in param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=listed,
                                          layer_decay=0.75):
        for p in group["params"]:
            name = by_id[id(p)]
            assert ours[name] == pytest.approx((group["lr_scale"], group["weight_decay"])), \
                f"layer decay of {name}: thawkit {ours[name]}, " \
                f"timm {group['lr_scale'], group['weight_decay']}"


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_timm_architecture(chunk):
    pm = thawkit.get_plugin_manager(entrypoints=False)
    names = timm.list_models()[chunk::CHUNKS]
    start = time.perf_counter()
    failures, unexpected, devices = [], [], {}
    for name in names:
        expected = EXPECTED_FAILURES.get(name)
        try:
            devices[name] = check(name, pm)
        except Exception as exc:  # noqa: BLE001 - every failure goes into the report
            message = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            if expected is None or expected[1] not in message:
                failures.append(f"{name}: {message}")
            continue
        if expected is not None:
            unexpected.append(name)
    elapsed = time.perf_counter() - start
    ok = len(devices)
    print(f"\ntimm chunk {chunk}: {ok}/{len(names)} architectures load, describe and take a "
          f"{N}-class head ({sum(d == 'cpu' for d in devices.values())} on the CPU) in {elapsed:.0f} s")
    report = failures + [f"{n}: listed as an expected failure but works now" for n in unexpected]
    assert not report, f"{len(report)} timm architectures regressed:\n" + "\n".join(report)


def test_expected_failures_are_timm_models():
    assert set(EXPECTED_FAILURES) <= set(timm.list_models())

"""A model written to timm's conventions outside timm is treated as a timm model: its layout
comes from ``group_matcher``, its head is replaced through ``reset_classifier``, layer decay
follows ``group_matcher(coarse=False)`` and ``no_weight_decay`` names skip weight decay."""
from __future__ import annotations

import thawkit
import torch
from thawkit.api import describe_layout
from torch import nn


class Conventional(nn.Module):
    """timm's conventions, defined here (its module path is not ``timm.``)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.pos = nn.Parameter(torch.zeros(1, 8, 1, 1))
        self.stages = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8),
                                                    nn.GELU()) for _ in range(3)])
        self.norm = nn.GroupNorm(1, 8)
        self.head = nn.Linear(8, num_classes)
        self.resets = 0

    def group_matcher(self, coarse: bool = False):
        return {"stem": r"^patch|^pos",
                "blocks": r"^stages\.(\d+)"}

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes: int):
        self.resets += 1
        self.num_classes = num_classes
        self.head = nn.Linear(8, num_classes)

    def no_weight_decay(self):
        return {"pos"}

    def forward(self, x):
        x = self.norm(self.stages(self.patch(x) + self.pos))
        return self.head(x.mean((2, 3)))


class NoMatcher(Conventional):
    """The same model without ``group_matcher``: not timm-like, so core's generic layout."""

    group_matcher = None  # type: ignore[assignment]


def test_layout_comes_from_group_matcher(pm):
    layout = describe_layout(Conventional(), pm=pm)
    assert layout.source == "timm group_matcher"
    assert [b.name for b in layout.blocks] == ["stages.0", "stages.1", "stages.2"]
    assert sorted(layout.stem.params) == ["patch.bias", "patch.weight", "pos"]
    assert sorted(layout.neck.params) == ["norm.bias", "norm.weight"]
    assert layout.head.params == ["head.weight", "head.bias"]
    # control: recognition is by what the model provides, not by the class's module
    assert describe_layout(NoMatcher(), pm=pm).source != "timm group_matcher"


def test_adapt_and_optimizer_follow_timm_conventions(pm):
    torch.manual_seed(0)
    model = Conventional()
    adapted = thawkit.adapt(model, "gradual", num_classes=4, every=1, pm=pm)
    assert model.resets == 1 and adapted.model.num_classes == 4
    assert adapted.model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    assert [ph.label for ph in adapted.phases][:2] == ["head, neck", "stages.2"]
    opt = adapted.optimizer("adamw", lr=1.0, weight_decay=0.05, layer_decay=0.5)
    groups = {g["name"]: g for g in opt.param_groups}
    # layers from group_matcher(coarse=False): stem 0, stages 1-3, head 4 (timm's numbering)
    assert groups["head"]["lr"] == 1.0
    assert groups["stages.2"]["lr"] == 0.5 and groups["stages.0"]["lr"] == 0.125
    assert groups["stem"]["lr"] == 0.0625
    pos = next(r for r in adapted.plan.rows if r.name == "pos")
    assert pos.weight_decay == 0.0  # a 4-d parameter: only no_weight_decay() keeps it out of decay
    assert next(r for r in adapted.plan.rows if r.name == "patch.weight").weight_decay == 0.05

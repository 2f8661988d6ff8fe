"""The python:MODULE:CALLABLE source: a user's own factory, described by the generic layout."""
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

import thawkit
from thawkit.errors import ConfigError, WeightsError


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        def build(width=8, num_classes=4):
            return nn.Sequential(
                nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

        def not_a_model():
            return 42
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_nets"
    sys.modules.pop("my_nets", None)


def test_factory_gets_options_and_generic_layout(factory_module, pm):
    model = thawkit.load_backbone(f"python:{factory_module}:build", pm=pm, width=6)
    assert model[0].out_channels == 6
    layout = thawkit.describe_layout(model, pm=pm)
    assert layout.source == "generic" and layout.classifiers == ["9"]
    assert len(layout.blocks) >= 2 and layout.stem is not None
    adapted = thawkit.adapt(model, "last-block", num_classes=3, pm=pm)
    assert adapted.model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def test_factory_on_meta(factory_module, pm):
    model = thawkit.load_backbone(f"python:{factory_module}:build", pm=pm, device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_local_weights_round_trip_and_head_dropped(factory_module, pm, tmp_path):
    torch.manual_seed(0)
    source = thawkit.load_backbone(f"python:{factory_module}:build", pm=pm, num_classes=10)
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    same = thawkit.load_backbone(f"python:{factory_module}:build", pm=pm, num_classes=10, weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), source.state_dict().values()))
    with pytest.warns(UserWarning, match="head has 10 classes, the model 4"):
        other = thawkit.load_backbone(f"python:{factory_module}:build", pm=pm, weights=str(path))
    assert torch.equal(other[0].weight, source[0].weight)
    assert other[9].out_features == 4
    with pytest.raises(WeightsError, match="w.safetensors.*shape mismatches"):
        thawkit.load_backbone(f"python:{factory_module}:build", pm=pm, width=5, weights=str(path))


@pytest.mark.parametrize("spec,match", [
    ("python:my_nets", "python:MODULE:CALLABLE"),
    ("python:no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
    ("python:my_nets:missing", "has no callable 'missing'"),
    ("python:my_nets:not_a_model", "returned int, not an nn.Module"),
])
def test_bad_specs(factory_module, pm, spec, match):
    with pytest.raises(ConfigError, match=match):
        thawkit.load_backbone(spec, pm=pm)

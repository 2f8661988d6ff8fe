"""The torchvision plugin: source, layouts and heads of all 80 classifiers, weights, data configs.

Nothing here downloads: models are built with ``weights=None`` (or on the meta
device, where published weights only shape the architecture), and weight files
are written by the tests themselves.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
import torchvision
from torch import nn

import thawkit
from thawkit.api import describe_layout, replace_head
from thawkit.errors import ConfigError, UnknownNameError, WeightsError
from thawkit.plugins.torchvision import layouts as tvl
from thawkit.plugins.fallbacks import layout_from_prefixes

ALL_MODELS = sorted(torchvision.models.list_models(module=torchvision.models))
N = 7



@pytest.fixture(scope="module")
def mpm():
    return thawkit.get_plugin_manager(entrypoints=False)


def load(pm, name, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return thawkit.load_backbone(f"torchvision:{name}", pm=pm, **options)


def outputs(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


# ------------------------------------------------------------------ source
def test_eighty_models_listed(mpm):
    source = mpm.sources.get("torchvision")
    assert len(source.list_models()) == 80
    assert source.list_models("resnet*") == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    assert source.list_models("nothing*") == []
    assert "torchvision" in source.description


def test_unknown_model_suggests_the_close_name(mpm):
    with pytest.raises(UnknownNameError) as err:
        load(mpm, "resnet5O")
    assert "resnet50" in err.value.suggestions
    assert "resnet50" in str(err.value) and "torchvision" in str(err.value)


def test_unknown_weights_list_the_available_ones(mpm):
    with pytest.raises(ConfigError, match="IMAGENET1K_V1.*IMAGENET1K_V2"):
        load(mpm, "resnet50", weights="IMAGENET1K_V9", device="meta")
    with pytest.raises(ConfigError, match="not weights of 'resnet18'"):
        load(mpm, "resnet18", weights="VGG16_Weights.IMAGENET1K_V1", device="meta")
    with pytest.raises(ConfigError, match="not weights of 'resnet18'"):
        load(mpm, "resnet18", weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1, device="meta")


def test_builder_kwargs_are_passed_and_bad_ones_are_config_errors(mpm):
    m = load(mpm, "resnet18", num_classes=10, device="meta")
    assert m.fc.out_features == 10 and m.fc.weight.is_meta
    assert m._thawkit_spec.name == "resnet18"
    with pytest.raises(ConfigError, match="rejected"):
        load(mpm, "resnet18", no_such_option=1, device="meta")


def test_plugin_module_does_not_import_torch():
    code = ("import sys, thawkit.plugins.torchvision, thawkit.plugins.torchvision.layouts, "
            "thawkit.plugins.torchvision.data; print('torch' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------- layouts, all 80 models
@pytest.mark.parametrize("name", ALL_MODELS)
def test_layout_and_head_replacement(mpm, name):
    model = load(mpm, name, device="meta")
    assert all(p.is_meta for p in model.parameters())
    layout = describe_layout(model, pm=mpm)  # validates: every parameter in exactly one block
    assert layout.source == "torchvision"
    assert layout.stem is not None and layout.stem.params
    assert len(layout.blocks) >= 2 and all(b.params for b in layout.blocks)
    assert layout.head.params and layout.classifiers
    for path in layout.classifiers + layout.aux:
        assert f"{path}.weight" in layout.head.params

    adapted, new = replace_head(model, N, pm=mpm, keep_aux=True)
    assert adapted is model
    new.validate(model)
    assert new.classifiers == layout.classifiers and new.aux == layout.aux
    for path in new.classifiers + new.aux:
        clf = model.get_submodule(path)
        assert outputs(clf) == N
        assert all(p.is_meta for p in clf.parameters())  # meta stays meta
    assert [b.name for b in new.blocks] == [b.name for b in layout.blocks]


EXPECTED_BLOCKS = {
    "alexnet": 4, "vgg11": 4, "vgg19_bn": 4, "convnext_tiny": 7, "densenet121": 4,
    "efficientnet_b0": 8, "efficientnet_v2_s": 7, "efficientnet_v2_m": 8, "googlenet": 9,
    "inception_v3": 11, "maxvit_t": 4, "mnasnet0_5": 7, "mobilenet_v2": 18,
    "mobilenet_v3_small": 12, "mobilenet_v3_large": 16, "regnet_y_400mf": 4, "resnet18": 4,
    "shufflenet_v2_x0_5": 4, "squeezenet1_0": 8, "squeezenet1_1": 8, "swin_t": 7, "swin_v2_t": 7,
    "vit_b_16": 12, "vit_l_16": 24, "vit_h_14": 32,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_BLOCKS))
def test_block_counts_follow_the_reference(mpm, name):
    layout = describe_layout(load(mpm, name, device="meta"), pm=mpm)
    assert len(layout.blocks) == EXPECTED_BLOCKS[name]


def test_layout_details(mpm):
    def d(name):
        return describe_layout(load(mpm, name, device="meta"), pm=mpm)

    vit = d("vit_b_16")
    assert {"class_token", "encoder.pos_embedding", "conv_proj.weight"} <= set(vit.stem.params)
    assert "encoder.ln.weight" in vit.blocks[-1].params
    assert vit.classifiers == ["heads.head"] and vit.neck is None
    swin = d("swin_t")
    assert "norm.weight" in swin.blocks[-1].params and swin.classifiers == ["head"]
    dense = d("densenet121")
    assert dense.stem.params == ["features.conv0.weight", "features.norm0.weight", "features.norm0.bias"]
    assert "features.norm5.weight" in dense.blocks[-1].params
    assert any(p.startswith("features.transition1.") for p in dense.blocks[0].params)
    vgg = d("vgg16")
    assert vgg.classifiers == ["classifier.6"]
    assert vgg.neck.params == ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight",
                               "classifier.3.bias"]
    assert vgg.stem.params == ["features.0.weight", "features.0.bias", "features.2.weight",
                               "features.2.bias"]
    alex = d("alexnet")
    assert [b.name for b in alex.blocks] == ["features.3", "features.6", "features.8", "features.10"]
    assert d("convnext_tiny").neck.params == ["classifier.0.weight", "classifier.0.bias"]
    maxvit = d("maxvit_t")
    assert maxvit.classifiers == ["classifier.5"]
    assert maxvit.neck.params == ["classifier.2.weight", "classifier.2.bias", "classifier.3.weight",
                                  "classifier.3.bias"]
    assert d("mobilenet_v3_small").neck.params == ["classifier.0.weight", "classifier.0.bias"]
    assert d("efficientnet_b0").neck is None
    mnas = d("mnasnet0_5")
    assert mnas.blocks[-1].modules == ["layers.14", "layers.15"]
    assert d("squeezenet1_0").classifiers == ["classifier.1"]
    g = d("googlenet")
    assert g.stem.modules == ["conv1", "conv2", "conv3"]
    assert g.classifiers == ["fc"] and g.aux == ["aux1.fc2", "aux2.fc2"]
    assert any(p.startswith("aux1.fc1") for p in g.head.params)
    inc = d("inception_v3")
    assert inc.classifiers == ["fc"] and inc.aux == ["AuxLogits.fc"]
    assert next(b.name for b in inc.blocks) == "Mixed_5b" and len(inc.stem.modules) == 5
    assert d("resnet50").feeds == "avgpool"


def test_user_built_models_are_recognised_by_class(mpm):
    from torchvision.models.resnet import BasicBlock, ResNet

    tiny = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3)  # no spec: not loaded through thawkit
    layout = describe_layout(tiny, pm=mpm)
    assert layout.source == "torchvision" and [b.name for b in layout.blocks] == [
        "layer1", "layer2", "layer3", "layer4"]
    with torch.device("meta"):
        q = torchvision.models.quantization.resnet18(quantize=False)
    assert describe_layout(q, pm=mpm).source == "torchvision"

    class WithExtra(ResNet):  # a subclass adding parameters we cannot place: left to others
        def __init__(self):
            super().__init__(BasicBlock, [1, 1, 1, 1])
            self.extra = nn.Parameter(torch.zeros(3))

    assert tvl.describe(WithExtra()) is None
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    assert mpm.hook.thawkit_describe_layout(model=other, spec=None).source == "generic"


def test_custom_head_sequential_keeps_its_hidden_layers(mpm):
    m = torchvision.models.resnet18()
    m.fc = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 1000))
    layout = describe_layout(m, pm=mpm)
    assert layout.classifiers == ["fc.2"] and layout.neck.params == ["fc.0.weight", "fc.0.bias"]
    _, new = replace_head(m, N, pm=mpm)
    assert m.fc[0].out_features == 64 and m.fc[2].out_features == N and new.classifiers == ["fc.2"]


def test_vit_representation_layer_is_the_neck(mpm):
    m = load(mpm, "vit_b_32", representation_size=16, device="meta")
    layout = describe_layout(m, pm=mpm)
    assert layout.neck.params == ["heads.pre_logits.weight", "heads.pre_logits.bias"]
    assert layout.classifiers == ["heads.head"]


def test_dropout_wraps_the_classifier_and_replacing_again_does_not_nest(mpm):
    m = load(mpm, "resnet18")
    m, layout = replace_head(m, N, dropout=0.3, pm=mpm)
    assert isinstance(m.fc, nn.Sequential) and isinstance(m.fc[0], nn.Dropout) and m.fc[0].p == 0.3
    assert layout.classifiers == ["fc.1"] and layout.head.params == ["fc.1.weight", "fc.1.bias"]
    m, layout = replace_head(m, 4, dropout=0.1, pm=mpm)
    assert isinstance(m.fc[1], nn.Linear) and m.fc[1].out_features == 4 and m.fc[0].p == 0.1
    m, layout = replace_head(m, 5, pm=mpm)
    assert isinstance(m.fc, nn.Linear) and m.fc.out_features == 5
    # efficientnet's own classifier Sequential(Dropout, Linear) keeps its dropout
    e = load(mpm, "efficientnet_b0", device="meta")
    e, layout = replace_head(e, N, pm=mpm)
    assert isinstance(e.classifier[0], nn.Dropout) and e.classifier[1].out_features == N
    e, layout = replace_head(e, N, dropout=0.5, pm=mpm)
    assert layout.classifiers == ["classifier.1.1"] and isinstance(e.classifier[0], nn.Dropout)


def test_head_keeps_dtype_bias_and_squeezenet_details(mpm):
    m = load(mpm, "maxvit_t", device="meta")
    replace_head(m, N, pm=mpm)
    assert m.classifier[5].bias is None and m.classifier[5].weight.is_meta
    s = load(mpm, "squeezenet1_1").to(torch.float64)
    replace_head(s, N, pm=mpm)
    conv = s.classifier[1]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.weight.dtype == torch.float64
    assert isinstance(s.classifier[2], nn.ReLU) and isinstance(s.classifier[3], nn.AdaptiveAvgPool2d)
    assert s.num_classes == N


# ------------------------------------------------- real forward passes (CPU)
FORWARD = [  # one small model per family: (name, builder kwargs, image size)
    ("alexnet", {}, 64),
    ("vgg11", {}, 32),
    ("convnext_tiny", {}, 32),
    ("densenet121", {}, 32),
    ("efficientnet_b0", {}, 32),
    ("efficientnet_v2_s", {}, 32),
    ("maxvit_t", {}, 224),
    ("mnasnet0_5", {}, 32),
    ("mobilenet_v2", {}, 32),
    ("mobilenet_v3_small", {}, 32),
    ("regnet_y_400mf", {}, 32),
    ("resnet18", {}, 32),
    ("resnext50_32x4d", {}, 32),
    ("shufflenet_v2_x0_5", {}, 32),
    ("squeezenet1_0", {}, 48),
    ("swin_t", {}, 64),
    ("swin_v2_t", {}, 64),
    ("vit_b_16", {"image_size": 32}, 32),
    ("googlenet", {}, 64),
    ("inception_v3", {}, 96),
]


@pytest.mark.parametrize("name,kwargs,size", FORWARD, ids=[f[0] for f in FORWARD])
def test_forward_after_head_replacement(mpm, name, kwargs, size):
    torch.manual_seed(0)
    model = load(mpm, name, **kwargs)
    model, layout = replace_head(model, N, dropout=0.1, pm=mpm)  # aux heads removed
    x = torch.randn(2, 3, size, size)
    model.train()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, N)
    out.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in layout.head.params)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, N)


def test_googlenet_keep_aux(mpm):
    m = load(mpm, "googlenet")
    m, layout = replace_head(m, N, keep_aux=True, pm=mpm)
    assert layout.aux == ["aux1.fc2", "aux2.fc2"]
    m.train()
    out = m(torch.randn(2, 3, 64, 64))
    assert [t.shape for t in out] == [(2, N)] * 3  # logits, aux2, aux1
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, 64)).shape == (2, N)
    m, layout = replace_head(m, N, keep_aux=False, pm=mpm)
    assert m.aux1 is None and m.aux2 is None and m.aux_logits is False and layout.aux == []
    assert not any(p.startswith("aux") for p in layout.head.params)
    m.train()
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, N)


def test_inception_keep_aux(mpm):
    m = load(mpm, "inception_v3")
    m, layout = replace_head(m, N, keep_aux=True, pm=mpm)
    assert layout.aux == ["AuxLogits.fc"] and m.AuxLogits.fc.out_features == N
    m.train()
    out = m(torch.randn(2, 3, 299, 299))
    assert out.logits.shape == (2, N) and out.aux_logits.shape == (2, N)
    m, layout = replace_head(m, N, keep_aux=False, pm=mpm)
    assert m.AuxLogits is None and m.aux_logits is False and layout.aux == []


# ---------------------------------------------------------- local weights
@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(1)
    m = torchvision.models.resnet18(weights=None)
    return {k: v.clone() for k, v in m.state_dict().items()}


def _equal(model, state):
    own = model.state_dict()
    assert set(own) == set(state)
    return all(torch.equal(own[k], state[k]) for k in state)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_round_trip(mpm, tmp_path, resnet18_state, suffix):
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in resnet18_state.items()}, str(path))
    else:
        torch.save(resnet18_state, path)
    m = load(mpm, "resnet18", weights=str(path))
    assert _equal(m, resnet18_state)
    m2 = load(mpm, "resnet18", weights=path)  # a Path works too
    assert _equal(m2, resnet18_state)


def test_local_weights_with_other_class_count_drop_the_head(mpm, tmp_path, resnet18_state):
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": resnet18_state}, path)
    with pytest.warns(UserWarning, match="head weights dropped"):
        m = load(mpm, "resnet18", weights=str(path), num_classes=10)
    assert m.fc.out_features == 10
    own = m.state_dict()
    assert all(torch.equal(own[k], v) for k, v in resnet18_state.items() if not k.startswith("fc."))


def test_wrong_architecture_file_names_file_and_keys(mpm, tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(WeightsError) as err:
        load(mpm, "resnet18", weights=str(path))
    msg = str(err.value)
    assert str(path) in msg and "unexpected keys" in msg and "layer1.2." in msg


def test_missing_and_corrupt_files(mpm, tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load(mpm, "resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        load(mpm, "resnet18", weights=str(tmp_path / "nope.pth"), device="meta")
    good = tmp_path / "whole.pth"
    torch.save(torchvision.models.resnet18().state_dict(), good)
    bad = tmp_path / "bad.pth"  # a checkpoint cut short (interrupted copy)
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="bad.pth"):
        load(mpm, "resnet18", weights=str(bad))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + os.urandom(64))
    with pytest.raises(WeightsError, match="bad.safetensors"):
        load(mpm, "resnet18", weights=str(bad_st))


def test_text_file_as_weights_is_a_weights_error(mpm, tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("this is not a checkpoint\n" * 4)
    with pytest.raises(WeightsError, match="notes.pth"):
        load(mpm, "resnet18", weights=str(bad))


class Payload:
    """Unpickling this runs code: it must never happen."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


class Carried:
    def __init__(self):
        self.note = "a custom object next to the tensors"


def test_files_that_carry_code_are_refused(mpm, tmp_path, resnet18_state):
    marker = str(tmp_path / "pwned")
    plain = tmp_path / "payload.pth"
    with open(plain, "wb") as f:
        pickle.dump({"fc.weight": Payload(marker)}, f, protocol=2)
    with pytest.raises(WeightsError, match="refusing"):
        load(mpm, "resnet18", weights=str(plain))
    assert not os.path.exists(marker)

    zipped = tmp_path / "object.pt"
    torch.save({"state_dict": resnet18_state, "extra": Carried()}, zipped)
    with pytest.raises(WeightsError, match="refusing"):
        load(mpm, "resnet18", weights=str(zipped))


def test_published_weights_from_the_hub_cache_with_num_classes(mpm, tmp_path, resnet18_state):
    """weights='DEFAULT' goes through torchvision's loader; a file in the cache means no download."""
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        os.makedirs(tmp_path / "hub" / "checkpoints")
        torch.save(resnet18_state, tmp_path / "hub" / "checkpoints" / os.path.basename(w.url))
        m = load(mpm, "resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")
        assert _equal(m, resnet18_state)
        m = load(mpm, "resnet18", weights="DEFAULT", num_classes=10)
    finally:
        torch.hub.set_dir(old)
    assert m.fc.out_features == 10
    own = m.state_dict()
    assert all(torch.equal(own[k], v) for k, v in resnet18_state.items() if not k.startswith("fc."))


def test_meta_with_published_weights_builds_their_architecture(mpm):
    v = load(mpm, "vit_h_14", weights="DEFAULT", device="meta")  # SWAG at 518 px, no download
    assert v.image_size == 518 and tuple(v.encoder.pos_embedding.shape) == (1, 1370, 1280)
    g = load(mpm, "googlenet", weights="IMAGENET1K_V1", device="meta")
    assert g.transform_input is True and g.aux1 is None and g.aux_logits is False
    g = load(mpm, "googlenet", weights="DEFAULT", device="meta", aux_logits=True)
    assert g.aux1 is not None
    i = load(mpm, "inception_v3", weights="DEFAULT", device="meta", num_classes=5)
    assert i.transform_input is True and i.fc.out_features == 5 and i.AuxLogits.fc.out_features == 5
    with pytest.raises(ConfigError, match="image_size"):
        load(mpm, "vit_b_16", weights="IMAGENET1K_V1", image_size=32, device="meta")


def test_regnet_builds_on_meta_like_on_cpu(mpm):
    from torchvision.models.regnet import BlockParams

    before = BlockParams.__dict__["from_init_params"]
    meta = load(mpm, "regnet_y_400mf", device="meta")
    assert all(p.is_meta for p in meta.parameters())
    cpu = torchvision.models.regnet_y_400mf()
    assert [(n, p.shape) for n, p in meta.named_parameters()] == \
        [(n, p.shape) for n, p in cpu.named_parameters()]
    assert BlockParams.__dict__["from_init_params"] is before


# ----------------------------------------------------------- weight decay
def _no_wd(pm, model):
    return sorted({n for r in pm.hook.thawkit_no_weight_decay(model=model) if r for n in r})


def test_no_weight_decay(mpm):
    assert _no_wd(mpm, load(mpm, "vit_b_16", device="meta")) == ["class_token", "encoder.pos_embedding"]
    swin = load(mpm, "swin_t", device="meta")
    names = _no_wd(mpm, swin)
    assert names and all(n.endswith("relative_position_bias_table") for n in names)
    assert len(names) == sum(1 for n, _ in swin.named_parameters() if "relative_position_bias_table" in n)
    v2 = _no_wd(mpm, load(mpm, "swin_v2_t", device="meta"))
    assert v2 and all(n.endswith(".logit_scale") for n in v2)
    mx = _no_wd(mpm, load(mpm, "maxvit_t", device="meta"))
    assert mx and all(n.endswith("relative_position_bias_table") for n in mx)
    assert _no_wd(mpm, load(mpm, "resnet18", device="meta")) == []


# ------------------------------------------------------------ data config
def test_data_config_follows_the_weights(mpm):
    r50 = thawkit.data_config(load(mpm, "resnet50", device="meta"), pm=mpm)
    assert r50.input_size == (3, 224, 224) and r50.eval_resize == 232
    assert r50.mean == (0.485, 0.456, 0.406) and r50.interpolation == "bilinear"
    assert "IMAGENET1K_V2" in r50.origin and "without weights" in r50.origin
    v1 = thawkit.data_config(load(mpm, "resnet50", weights="IMAGENET1K_V1", device="meta"), pm=mpm)
    assert v1.eval_resize == 256 and v1.origin.startswith("torchvision ResNet50_Weights.IMAGENET1K_V1")
    inc = thawkit.data_config(load(mpm, "inception_v3", device="meta"), pm=mpm)
    assert inc.image_size == 299 and inc.eval_resize == 342
    eff = thawkit.data_config(load(mpm, "efficientnet_b3", device="meta"), pm=mpm)
    assert eff.image_size == 300 and eff.interpolation == "bicubic"
    # vit_h_14's DEFAULT is SWAG at 518 px, but vit_h_14() takes 224 px
    assert thawkit.data_config(load(mpm, "vit_h_14", device="meta"), pm=mpm).image_size == 224
    assert thawkit.data_config(load(mpm, "vit_h_14", weights="DEFAULT", device="meta"),
                               pm=mpm).image_size == 518
    # the spec survives head replacement
    m, _ = replace_head(load(mpm, "swin_v2_t", device="meta"), N, pm=mpm)
    assert thawkit.data_config(m, pm=mpm).image_size == 256


def test_data_config_of_hand_built_models(mpm):
    with torch.device("meta"):
        inc = torchvision.models.inception_v3(init_weights=False)
        r50 = torchvision.models.resnet50(num_classes=3)
    cfg = thawkit.data_config(inc, pm=mpm)
    assert cfg.image_size == 299 and "recognised as inception_v3" in cfg.origin
    cfg = thawkit.data_config(r50, pm=mpm)
    assert cfg.eval_resize == 232 and "resnet50" in cfg.origin
    from torchvision.models.densenet import DenseNet
    with torch.device("meta"):
        small = DenseNet(growth_rate=8, block_config=(1, 1, 1, 1), num_init_features=8)
    assert "densenet" in thawkit.data_config(small, pm=mpm).origin  # all densenets agree


def test_a_later_plugin_overrides_the_torchvision_layout():
    pm = thawkit.get_plugin_manager(entrypoints=False)
    model = load(pm, "resnet18", device="meta")

    class Coarse:
        @thawkit.hookimpl
        def thawkit_describe_layout(model, spec):
            return layout_from_prefixes(
                model, stem=["conv1", "bn1"], blocks=[("low", ["layer1", "layer2"]),
                                                       ("high", ["layer3", "layer4"])],
                head=["fc"], classifiers=["fc"], source="coarse")

    pm.register(Coarse)
    layout = describe_layout(model, pm=pm)
    assert layout.source == "coarse" and [b.name for b in layout.blocks] == ["low", "high"]


def test_architecture_options_of_published_weights_rebuild_the_same_network(mpm, tmp_path):
    """googlenet with published weights turns on transform_input; a rebuild without them
    (predict/export load a run's own weights into weights=None) must repeat it."""
    import torchvision

    from thawkit.plugins.weights import arch_options

    w = torchvision.models.GoogLeNet_Weights.DEFAULT
    torch.manual_seed(0)
    published = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        os.makedirs(tmp_path / "hub" / "checkpoints")
        torch.save(published.state_dict(), tmp_path / "hub" / "checkpoints" / os.path.basename(w.url))
        trained = load(mpm, "googlenet", weights="DEFAULT")
    finally:
        torch.hub.set_dir(old)
    assert arch_options(trained) == {"transform_input": True, "aux_logits": False}
    assert arch_options(load(mpm, "googlenet", weights=None, init_weights=True)) == {}
    rebuilt = load(mpm, "googlenet", weights=None, init_weights=True, **arch_options(trained))
    rebuilt.load_state_dict(trained.state_dict())
    naive = load(mpm, "googlenet", weights=None, init_weights=True, aux_logits=False)
    naive.load_state_dict(trained.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = trained.eval()(x)
        assert torch.equal(rebuilt.eval()(x), expected)
        # the bug this guards against: without the option the rebuilt network sees other inputs
        # (a randomly initialised googlenet's logits barely depend on them, so compare the inputs)
        assert not torch.equal(naive._transform_input(x), trained._transform_input(x))
    assert rebuilt.transform_input and not naive.transform_input

"""The timm plugin: source, layouts and heads per head type, local weights, layer decay, optimizers.

Nothing here downloads: models are built with ``pretrained=False`` (at small
image sizes where the architecture allows) and weight files are written by
the tests themselves. The sweep over every timm architecture is in
``test_timm_all.py``.
"""
from __future__ import annotations

import fnmatch
import warnings

import pytest
import thawkit
import timm
import torch
from safetensors.torch import save_file
from thawkit.api import data_config, describe_layout, replace_head
from thawkit.errors import ConfigError, LayoutError, UnknownNameError, WeightsError
from thawkit.plugins import timm as timm_plugin
from thawkit.plugins.timm.layout import final_classifiers
from torch import nn

N = 5



@pytest.fixture(scope="module")
def mpm():
    return thawkit.get_plugin_manager(entrypoints=False)


def load(pm, name, **options):
    return thawkit.load_backbone(f"timm:{name}", pm=pm, **options)


def outputs(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


# ------------------------------------------------------------------ source
def test_source_lists_architectures(mpm):
    source = mpm.sources.get("timm")
    assert len(source.list_models()) == len(timm.list_models())
    assert "resnet18" in source.list_models("resnet*")
    assert all(n.startswith("convnext") for n in source.list_models("convnext*"))
    assert "timm" in source.description


def test_unknown_model_suggests_close_names(mpm):
    with pytest.raises(UnknownNameError) as err:
        load(mpm, "resnet1B")
    assert "resnet18" in err.value.suggestions
    assert "timm:resnet1B" in str(err.value)


def test_pretrained_tags(mpm):
    model = load(mpm, "resnet18.a1_in1k", device="meta")
    assert model.pretrained_cfg["tag"] == "a1_in1k"
    with pytest.raises(UnknownNameError) as err:
        load(mpm, "resnet18.a1_in1kk", device="meta")
    assert "resnet18.a1_in1k" in err.value.suggestions


def test_bad_options_are_config_errors(mpm):
    with pytest.raises(ConfigError, match="pretrained"):
        load(mpm, "test_vit", pretrained="yes")
    with pytest.raises(ConfigError, match="either"):
        load(mpm, "test_vit", pretrained=True, weights="w.pth")
    with pytest.raises(ConfigError, match="meta"):
        load(mpm, "test_vit", pretrained=True, device="meta")
    with pytest.raises(ConfigError, match="bogus"):
        load(mpm, "test_vit", device="meta", bogus=1)


def test_builder_options_reach_create_model(mpm):
    model = load(mpm, "test_vit", num_classes=3, img_size=64, in_chans=1)
    assert model.get_classifier().out_features == 3
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)
    meta = load(mpm, "resnet50", device="meta")
    assert all(p.is_meta for p in meta.parameters())


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "efficientnet_b0", "test_nfnet"])
def test_meta_build_matches_a_real_build(mpm, name):
    def summary(model):
        return [(k, tuple(v.shape), v.dtype, v.requires_grad)
                for k, v in model.state_dict(keep_vars=True).items()]

    meta = load(mpm, name, device="meta")
    assert all(t.is_meta for t in meta.state_dict().values())
    assert summary(meta) == summary(timm.create_model(name))


# ---------------------------------------------------- layouts and new heads
# one (small) model per kind of head that get_classifier() returns
HEAD_TYPES = {
    "linear": ("test_vit", {"img_size": 32}, 32),
    "conv2d": ("dla46_c", {}, 32),
    "norm-mlp-head": ("test_convnext", {}, 32),
    "tuple-distilled": ("deit_tiny_distilled_patch16_224", {"img_size": 32}, 32),
    "tuple-norm-linear": ("levit_128s", {"img_size": 32}, 32),
    "module-list": ("crossvit_tiny_240", {"img_size": 120}, 120),
    "mlp-head": ("caformer_s18", {}, 32),
    "classifier-head": ("sequencer2d_s", {"layers": [1, 1, 1, 1]}, 32),
    "repvit-classifier": ("repvit_m0_9", {}, 32),
    "linear-layer": ("cpubone_nano", {}, 32),
    "no-group-matcher": ("pit_ti_distilled_224", {"img_size": 32}, 32),
    "coarse-matcher-raises": ("rdnet_tiny", {}, 32),
}


@pytest.mark.parametrize("kind", sorted(HEAD_TYPES))
def test_head_types_describe_replace_and_run(mpm, kind):
    name, options, size = HEAD_TYPES[kind]
    torch.manual_seed(0)
    model = load(mpm, name, **options)
    layout = describe_layout(model, pm=mpm)
    assert len(layout.blocks) >= 2 and layout.head.params
    assert layout.source.startswith("timm")
    assert len({b.name for b in layout.all_blocks}) == len(layout.all_blocks)
    model, layout = replace_head(model, N, pm=mpm)
    assert [outputs(model.get_submodule(p)) for p in layout.classifiers] == [N] * len(layout.classifiers)
    x = torch.randn(2, 3, size, size)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, N)
    model.train()
    out = model(x)
    assert out.shape == (2, N)
    out.sum().backward()
    assert all(model.get_parameter(p).grad is not None for p in layout.head.params)


def test_composite_heads_put_the_final_layer_in_the_head_and_the_rest_in_the_neck(mpm):
    layout = describe_layout(load(mpm, "convnext_atto", device="meta"), pm=mpm)
    assert layout.head.params == ["head.fc.weight", "head.fc.bias"]
    assert layout.neck.params == ["head.norm.weight", "head.norm.bias"]
    assert [b.name for b in layout.blocks] == ["stages.0", "stages.1", "stages.2", "stages.3"]
    layout = describe_layout(load(mpm, "caformer_s18", device="meta"), pm=mpm)
    assert layout.classifiers == ["head.fc.fc2"]
    assert {"head.fc.fc1.weight", "head.norm.weight"} <= set(layout.neck.params)
    layout = describe_layout(load(mpm, "levit_128s", device="meta"), pm=mpm)
    assert layout.classifiers == ["head.linear", "head_dist.linear"]


def test_matcher_layouts_follow_timm_groups(mpm):
    layout = describe_layout(load(mpm, "vit_tiny_patch16_224", device="meta"), pm=mpm)
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= set(layout.stem.params)
    assert [b.name for b in layout.blocks] == [f"blocks.{i}" for i in range(12)]
    assert "norm.weight" in layout.blocks[-1].params  # timm merges the final norm into the last block
    layout = describe_layout(load(mpm, "resnet18", device="meta"), pm=mpm)
    assert layout.stem.params == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert [b.name for b in layout.blocks] == ["layer1", "layer2", "layer3", "layer4"]
    assert layout.neck is None and layout.classifiers == ["fc"]


def test_model_without_classifier_needs_num_classes(mpm):
    model = load(mpm, "vit_small_patch14_dinov2", device="meta")
    with pytest.raises(LayoutError, match="num_classes=0"):
        describe_layout(model, pm=mpm)
    model, layout = replace_head(model, N, pm=mpm)  # a head is created for the headless model
    assert outputs(model.get_submodule(layout.classifiers[0])) == N
    assert layout.head.params and len(layout.blocks) >= 2


def test_headless_model_adapts_with_num_classes(pm):
    model = thawkit.load_backbone("timm:test_vit", pm=pm, num_classes=0)
    adapted = thawkit.adapt(model, "last-block", num_classes=N, pm=pm)
    assert adapted.model(torch.randn(2, 3, 160, 160)).shape == (2, N)
    assert set(adapted.layout.head.params) <= adapted.trainable


def test_encoders_describe_but_refuse_a_head(mpm):
    model = load(mpm, "qwen3_vit_88m_enc", device="meta")
    assert len(describe_layout(model, pm=mpm).blocks) >= 2
    with pytest.raises(LayoutError, match="encoder"):
        replace_head(model, N, pm=mpm)


def test_new_head_keeps_device_dtype_and_mode(mpm):
    model = load(mpm, "test_vit", img_size=64).double().eval()
    model, layout = replace_head(model, N, pm=mpm)
    head = model.get_submodule(layout.classifiers[0])
    assert head.weight.dtype == torch.float64 and not head.training
    assert model(torch.randn(2, 3, 64, 64, dtype=torch.float64)).shape == (2, N)
    meta = load(mpm, "test_vit", device="meta")
    meta, layout = replace_head(meta, N, pm=mpm)
    assert all(p.is_meta for p in meta.parameters())


def test_dropout_uses_timm_head_dropout_or_wraps(mpm):
    vit, layout = replace_head(load(mpm, "test_vit", img_size=64), N, dropout=0.3, pm=mpm)
    assert vit.head_drop.p == 0.3 and layout.classifiers == ["head"]
    convnext, layout = replace_head(load(mpm, "test_convnext"), N, dropout=0.3, pm=mpm)
    assert convnext.head.drop.p == 0.3 and layout.classifiers == ["head.fc"]
    resnet, layout = replace_head(load(mpm, "test_resnet"), N, dropout=0.3, pm=mpm)
    assert resnet.drop_rate == 0.3 and layout.classifiers == ["fc"]
    cpu, layout = replace_head(load(mpm, "cpubone_nano"), N, dropout=0.3, pm=mpm)
    wrapped = cpu.get_submodule(layout.classifiers[0].rsplit(".", 1)[0])
    assert isinstance(wrapped, nn.Sequential) and wrapped[0].p == 0.3
    assert cpu(torch.randn(2, 3, 64, 64)).shape == (2, N)


# ------------------------------------------------------------ local weights
@pytest.fixture(scope="module")
def vit_files(tmp_path_factory):
    torch.manual_seed(1)
    src = timm.create_model("test_vit", num_classes=1000)
    folder = tmp_path_factory.mktemp("weights")
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    torch.save(state, folder / "vit.pth")
    save_file(state, str(folder / "vit.safetensors"))
    torch.save(timm.create_model("test_resnet").state_dict(), folder / "resnet.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("head.")}, folder / "headless.pth")
    return folder, state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_round_trip(mpm, vit_files, suffix):
    folder, state = vit_files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load(mpm, "test_vit", weights=folder / f"vit{suffix}", num_classes=1000)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_weights_onto_the_meta_device(mpm, vit_files):
    folder, state = vit_files
    model = load(mpm, "test_vit", weights=folder / "vit.safetensors", num_classes=1000, device="meta")
    assert not any(p.is_meta for p in model.parameters())
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])


def test_other_class_count_drops_the_head_with_a_warning(mpm, vit_files):
    folder, state = vit_files
    with pytest.warns(UserWarning, match="1000 classes"):
        model = load(mpm, "test_vit", weights=folder / "vit.pth", num_classes=10)
    loaded = model.state_dict()
    assert loaded["head.weight"].shape == (10, 64)
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("head."))


def test_checkpoint_without_head_keeps_a_fresh_head(mpm, vit_files):
    folder, state = vit_files
    with pytest.warns(UserWarning, match="no classifier"):
        model = load(mpm, "test_vit", weights=folder / "headless.pth", num_classes=10)
    assert torch.equal(model.state_dict()["norm.weight"], state["norm.weight"])


def test_in_chans_adapts_the_first_conv(mpm, vit_files):
    folder, state = vit_files
    model = load(mpm, "test_vit", weights=folder / "vit.pth", num_classes=1000, in_chans=1)
    expected = state["patch_embed.proj.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(model.patch_embed.proj.weight, expected)


def test_wrong_architecture_names_the_file_and_keys(mpm, vit_files):
    folder, _ = vit_files
    with pytest.raises(WeightsError) as err:
        load(mpm, "test_vit", weights=folder / "resnet.pth")
    message = str(err.value)
    assert "resnet.pth" in message
    assert "missing keys" in message and "cls_token" in message
    assert "unexpected keys" in message and "conv1." in message


def test_missing_file_is_a_weights_error(mpm, tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load(mpm, "test_vit", weights=tmp_path / "nope.pth")


# -------------------------------------------------------------- layer decay
def _timm_scales(model, **kw):
    scales, decay = {}, {}
    for group in timm.optim.param_groups_layer_decay(model, **kw):
        for p in group["params"]:
            scales[id(p)] = group["lr_scale"]
            decay[id(p)] = group["weight_decay"]
    return scales, decay


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "resnet18", "convnext_atto", "efficientnet_b0"])
@pytest.mark.parametrize("decay,min_scale", [(0.75, 0.0), (0.5, 0.1)])
def test_layer_scales_equal_timm(mpm, name, decay, min_scale):
    model = load(mpm, name, device="meta")
    layout = describe_layout(model, pm=mpm)
    ours = mpm.hook.thawkit_layer_scales(model=model, layout=layout, layer_decay=decay, min_scale=min_scale)
    no_wd = list(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else []
    theirs, wd = _timm_scales(model, weight_decay=0.05, no_weight_decay_list=no_wd,
                              layer_decay=decay, min_scale=min_scale)
    params = dict(model.named_parameters())
    assert set(ours) == set(params)
    assert len(set(ours.values())) > 2
    for pname, p in params.items():
        assert ours[pname] == pytest.approx(theirs[id(p)]), pname
        rule = p.ndim <= 1 or any(fnmatch.fnmatch(pname, pat) for pat in no_wd)
        assert (wd[id(p)] == 0.0) == rule, pname


def test_layer_scales_cover_frozen_params_and_models_without_matcher(mpm):
    model = load(mpm, "vit_tiny_patch16_224", device="meta")
    layout = describe_layout(model, pm=mpm)
    for p in model.blocks[:3].parameters():
        p.requires_grad_(False)
    scales = mpm.hook.thawkit_layer_scales(model=model, layout=layout, layer_decay=0.75, min_scale=0.0)
    assert scales["blocks.0.attn.qkv.weight"] == pytest.approx(0.75 ** 12)
    assert scales["head.weight"] == 1.0
    pit = load(mpm, "pit_ti_224", device="meta")
    scales = mpm.hook.thawkit_layer_scales(model=pit, layout=describe_layout(pit, pm=mpm),
                                           layer_decay=0.75, min_scale=0.0)
    theirs, _ = _timm_scales(pit, layer_decay=0.75)
    assert all(scales[n] == pytest.approx(theirs[id(p)]) for n, p in pit.named_parameters())


def test_no_weight_decay_names_come_from_the_model(mpm):
    model = load(mpm, "vit_tiny_patch16_224", device="meta")
    names = {n for r in mpm.hook.thawkit_no_weight_decay(model=model) if r for n in r}
    assert {"pos_embed", "cls_token"} <= names


# -------------------------------------------------------------- data config
def test_data_config_from_pretrained_cfg(mpm):
    config = data_config(load(mpm, "vit_tiny_patch16_224", device="meta"), pm=mpm)
    assert config.input_size == (3, 224, 224)
    assert config.mean == pytest.approx((0.5, 0.5, 0.5)) and config.std == pytest.approx((0.5, 0.5, 0.5))
    assert config.interpolation == "bicubic" and config.crop_pct == pytest.approx(0.9)
    assert config.origin == "timm pretrained_cfg"
    assert data_config(load(mpm, "resnet18", device="meta"), pm=mpm).mean == pytest.approx(
        (0.485, 0.456, 0.406))
    assert data_config(nn.Linear(2, 2), pm=mpm).origin.startswith("default")


def test_data_config_of_a_model_built_at_another_size_is_the_built_size(mpm):
    """Found by the conformance kit: the pretrained_cfg's 224 px, which the model refuses."""
    model = load(mpm, "vit_tiny_patch16_224", img_size=32, num_classes=N)
    config = data_config(model, pm=mpm)
    assert config.input_size == (3, 32, 32) and config.origin.endswith("as built")
    assert model.eval()(torch.zeros(1, *config.input_size)).shape == (1, N)
    dynamic = load(mpm, "vit_tiny_patch16_224", img_size=32, dynamic_img_size=True, device="meta")
    assert data_config(dynamic, pm=mpm).input_size == (3, 224, 224)  # takes any size: as published


# --------------------------------------------------------------- optimizers
def test_timm_optimizers_are_registered_without_torch_names(mpm):
    names = set(mpm.optimizers.names())
    ours = set(timm_plugin.timm_optimizer_names())
    assert {"lamb", "lion", "adan", "sgdp", "madgrad"} <= ours <= names
    torch_names = {n.lower() for n in dir(torch.optim)}
    assert not ours & torch_names
    assert not any(n.startswith(("bnb", "fused")) for n in ours) and "adahessian" not in ours
    assert mpm.optimizers.entries["lamb"].plugin == "thawkit.timm"


@pytest.mark.parametrize("name", ["lamb", "lion"])
def test_timm_optimizers_build_and_step(mpm, name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    groups = [{"params": [model[0].weight, model[2].weight], "lr": 1e-2, "weight_decay": 0.05},
              {"params": [model[0].bias, model[2].bias], "lr": 1e-2, "weight_decay": 0.0}]
    optimizer = mpm.optimizers.get(name)(groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    before = model[0].weight.detach().clone()
    model(torch.randn(3, 4)).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model[0].weight)


def test_adapt_a_timm_model_with_a_timm_optimizer_and_layer_decay(mpm):
    model = load(mpm, "test_vit", img_size=32)
    adapted = thawkit.adapt(model, "full", num_classes=N, pm=mpm)
    optimizer = adapted.optimizer("lamb", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    lrs = {g["lr"] for g in optimizer.param_groups}
    assert max(lrs) == pytest.approx(1e-3) and len(lrs) > 2
    adapted.model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    with pytest.raises(ConfigError, match="momentum"):
        adapted.optimizer("lamb", lr=1e-3, momentum=0.9)


def test_plugin_module_imports_neither_torch_nor_timm():
    import subprocess
    import sys

    code = ("import sys; import thawkit.plugins.timm; "
            "print('timm' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_final_classifiers_of_a_tuple_head(mpm):
    model = load(mpm, "deit_tiny_distilled_patch16_224", device="meta")
    assert final_classifiers(model) == ["head", "head_dist"]

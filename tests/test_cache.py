"""Feature caching is exact: for every family thawkit splits, training on cached features of the
frozen prefix equals training the whole model (same seed, same batches), head-only and last-block;
and the cache is refused, with the reason, wherever it could differ.

Models are width-reduced variants at 32 px with 3 classes, so each case takes well under a second.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

import thawkit
from thawkit.plugins.split import frozen_prefix
from thawkit.plugins.train.features import FeatureCache

N, SIZE, CLASSES = 12, 32, 3


def _vgg():
    model = tvm.VGG(tvm.vgg.make_layers([8, "M", 16, "M", 512, "M"], batch_norm=True), num_classes=3,
                    init_weights=True, dropout=0.0)
    # the stock classifier has 100M parameters: the same structure, narrower
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(0.0),
                                     nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(0.0), nn.Linear(32, 3))
    return model


def _efficientnet(v2: bool = False):
    from torchvision.models.efficientnet import FusedMBConvConfig, MBConvConfig

    if v2:
        setting = [FusedMBConvConfig(1, 3, 1, 8, 8, 1), FusedMBConvConfig(2, 3, 2, 8, 16, 1),
                   MBConvConfig(2, 3, 2, 16, 16, 1)]
        return tvm.EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.0, num_classes=3,
                                last_channel=64)
    setting = [MBConvConfig(1, 3, 1, 8, 8, 1), MBConvConfig(2, 3, 2, 8, 16, 1),
               MBConvConfig(2, 5, 2, 16, 24, 1)]
    return tvm.EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.0, num_classes=3)


def _regnet():
    from torchvision.models.regnet import BlockParams

    params = BlockParams.from_init_params(depth=3, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return tvm.RegNet(params, num_classes=3, stem_width=8)


def _timm(name: str, **kw):
    import timm

    return lambda: timm.create_model(name, pretrained=False, num_classes=3, **kw)


TORCHVISION = {
    "resnet": lambda: tvm.resnet18(num_classes=3),
    "resnext": lambda: tvm.ResNet(tvm.resnet.Bottleneck, [1, 1, 1, 1], num_classes=3, groups=2,
                                  width_per_group=8),
    "wide_resnet": lambda: tvm.ResNet(tvm.resnet.Bottleneck, [1, 1, 1, 1], num_classes=3,
                                      width_per_group=128),
    "vgg": _vgg,
    "convnext": lambda: tvm.ConvNeXt([tvm.convnext.CNBlockConfig(8, 16, 1),
                                      tvm.convnext.CNBlockConfig(16, None, 1)], num_classes=3),
    "efficientnet": _efficientnet,
    "efficientnet_v2": lambda: _efficientnet(v2=True),
    "mobilenet_v2": lambda: tvm.mobilenet_v2(num_classes=3, width_mult=0.25),
    "mobilenet_v3": lambda: tvm.mobilenet_v3_small(num_classes=3, width_mult=0.25),
    "regnet": _regnet,
    "vit": lambda: tvm.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2,
                                         hidden_dim=16, mlp_dim=32, num_classes=3),
    "swin": lambda: tvm.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                        window_size=[2, 2], stochastic_depth_prob=0.0, num_classes=3),
    "maxvit": lambda: tvm.MaxVit(input_size=(SIZE, SIZE), stem_channels=8, partition_size=2,
                                 block_channels=[8, 16], block_layers=[1, 1], head_dim=4,
                                 stochastic_depth_prob=0.0, num_classes=3),
    "densenet": lambda: tvm.DenseNet(growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8,
                                     num_classes=3),
    "mnasnet": lambda: tvm.mnasnet0_5(num_classes=3),
    "shufflenet": lambda: tvm.shufflenet_v2_x0_5(num_classes=3),
    "squeezenet": lambda: tvm.squeezenet1_1(num_classes=3),
}
TIMM = {
    "timm_vit": _timm("vit_tiny_patch16_224", img_size=SIZE, depth=3),
    "timm_vit_head_dropout": _timm("vit_tiny_patch16_224", img_size=SIZE, depth=2, drop_rate=0.3),
    "timm_resnet": _timm("resnet10t"),
    "timm_resnet_head_dropout": _timm("resnet10t", drop_rate=0.3),
    "timm_convnext": _timm("convnext_atto"),
    "timm_efficientnet": _timm("efficientnet_b0", drop_rate=0.2),
    "timm_mobilenetv3": _timm("mobilenetv3_small_050"),
    "timm_regnet": _timm("regnetx_002"),
    "timm_swin": _timm("swin_tiny_patch4_window7_224", img_size=SIZE, window_size=2, depths=(1, 1),
                       num_heads=(1, 2), embed_dim=16, drop_path_rate=0.0),
}
FAMILIES = {**TORCHVISION, **TIMM}


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    sampler = BatchSampler(RandomSampler(range(N), generator=torch.Generator().manual_seed(1)), 4,
                           drop_last=False)
    return x, y, [list(b) for _ in range(2) for b in sampler]  # two epochs


def train(build, strategy: str, cached: bool, pm=None, epoch: int = 0, **params):
    """A few SGD steps on the same batches, in the phase of ``epoch``; the state and eval logits
    afterwards."""
    torch.manual_seed(0)
    adapted = thawkit.adapt(build(), strategy, pm=pm, **params)
    adapted.on_epoch_start(epoch)
    model = adapted.model
    # SGD, not Adam: Adam scales float noise in a gradient that is zero in exact arithmetic (a key
    # bias in attention, a bias before a train-mode BatchNorm) up to full-size steps
    optimizer = adapted.optimizer("sgd", lr=0.05, momentum=0.9, weight_decay=0.05)
    x, y, batches = data()
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    if cached:
        frozen = frozen_prefix(adapted)
        assert frozen, frozen.reason
        cache = FeatureCache(frozen.split.prefix, DataLoader(TensorDataset(x, y), batch_size=5))
        forward, batches_in = frozen.split.rest, cache.batches(batches)
    else:
        forward, batches_in = model, ((x[b], y[b]) for b in batches)
    torch.manual_seed(1)  # dropout in the rest draws the same masks in both runs
    model.train()
    for xb, yb in batches_in:
        loss = F.cross_entropy(forward(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for name, value in frozen_before.items():
        assert torch.equal(value, dict(model.named_parameters())[name]), f"frozen {name} moved"
    model.eval()
    with torch.no_grad():
        return {k: v.clone() for k, v in model.state_dict().items()}, model(x)


def assert_same_training(build, strategy: str, **params) -> None:
    state_a, logits_a = train(build, strategy, cached=False, **params)
    state_b, logits_b = train(build, strategy, cached=True, **params)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_b[key], state_a[key], rtol=1e-4, atol=1e-5, msg=key)
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ equality
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_head_only_cached_equals_uncached(family):
    assert_same_training(FAMILIES[family], "head-only")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_last_block_cached_equals_uncached(family):
    assert_same_training(FAMILIES[family], "last-block", blocks=1)


@pytest.mark.parametrize("family", ["resnet", "vit", "timm_vit"])
def test_every_boundary_of_a_gradual_run_is_exact(family):
    """Each phase of a gradual run cuts at its own, lower, boundary; each trains exactly."""
    adapted = thawkit.adapt(FAMILIES[family](), "gradual")
    blocks = []
    for phase in adapted.phases[:-1]:  # the last phase trains the stem: nothing is frozen
        blocks.append(frozen_prefix(adapted, adapted.phase_at(phase.epoch)).block)
        assert_same_training(FAMILIES[family], "gradual", epoch=phase.epoch)
    assert blocks[0] == "head" and len(set(blocks)) == len(blocks) == len(adapted.phases) - 1
    assert not frozen_prefix(adapted, len(adapted.phases) - 1)


def test_a_wrong_split_is_caught(pm):
    """The equality check can fail: a split whose prefix skips a ReLU passes every static check
    (frozen, norms fixed, no dropout), and training on it differs."""
    class WrongSplit:
        @thawkit.hookimpl
        def thawkit_split_model(self, model, layout, block):
            m = model
            prefix = nn.Sequential(m.conv1, m.bn1, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4,
                                   m.avgpool, nn.Flatten(1))
            return thawkit.Split(prefix, nn.Sequential(m.fc), block)

    pm.register(WrongSplit(), name="wrong")
    assert frozen_prefix(thawkit.adapt(FAMILIES["resnet"](), "head-only", pm=pm))
    with pytest.raises(AssertionError):
        assert_same_training(FAMILIES["resnet"], "head-only", pm=pm)


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("build, params, reason", [
    (lambda: tvm.resnet18(num_classes=3), {"norm": "affine"}, "norm: affine trains"),
    (lambda: tvm.resnet18(num_classes=3), {"norm": "train"}, "norm: train updates the running "
                                                              "statistics of"),
    (lambda: tvm.vgg11(num_classes=3), {}, "(Dropout p=0.5) in the frozen part is active"),
    (lambda: tvm.efficientnet_b0(num_classes=3), {}, "(StochasticDepth p="),
    (_timm("vit_tiny_patch16_224", img_size=SIZE, drop_path_rate=0.1), {}, "(DropPath drop_prob="),
    (lambda: tvm.googlenet(num_classes=3, aux_logits=False, init_weights=False), {},
     "no plugin splits GoogLeNet below block 'head'"),
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), {},
     "no plugin splits Sequential"),
])
def test_no_cache_where_it_could_differ(build, params, reason):
    with torch.device("meta"):
        model = build()
    frozen = frozen_prefix(thawkit.adapt(model, "head-only", **params))
    assert not frozen and frozen.split is None
    assert reason in frozen.reason


DROPOUT_IN_BLOCKS = {
    "timm_vit_drop_path": _timm("vit_tiny_patch16_224", img_size=SIZE, depth=2, drop_path_rate=0.3,
                                proj_drop_rate=0.2, attn_drop_rate=0.2, drop_rate=0.3, pos_drop_rate=0.2,
                                patch_drop_rate=0.25),
    "vit_dropout": lambda: tvm.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3, dropout=0.2,
                                                 attention_dropout=0.2),
    "efficientnet_stochastic_depth": lambda: tvm.EfficientNet(
        [tvm.efficientnet.MBConvConfig(1, 3, 1, 8, 8, 1), tvm.efficientnet.MBConvConfig(2, 3, 2, 8, 16, 2)],
        dropout=0.2, stochastic_depth_prob=0.5, num_classes=3),
}


@pytest.mark.parametrize("strategy, params", [("head-only", {}), ("last-block", {"blocks": 1}),
                                              ("gradual", {"epoch": 1})])
@pytest.mark.parametrize("family", sorted(DROPOUT_IN_BLOCKS))
def test_frozen_dropout_off_makes_the_cache_exact(family, strategy, params):
    """Dropout and drop-path in frozen blocks refuse the cache; with the strategy's
    ``frozen_dropout: off`` they are off there, and training on cached features equals training
    the whole model (the head's own dropout stays on, in the rest)."""
    build = DROPOUT_IN_BLOCKS[family]
    refused = frozen_prefix(thawkit.adapt(build(), strategy, **{k: v for k, v in params.items()
                                                                   if k != "epoch"}))
    assert not refused and "set strategy frozen_dropout: off" in refused.reason
    assert_same_training(build, strategy, frozen_dropout="off", **params)


def test_dropout_outside_every_block_still_refuses_the_cache(pm):
    """A dropout that lies in no block (a parameter-free top-level module the layout does not
    list) follows the model's mode under frozen_dropout: off too: the cache names it."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.drop = nn.Conv2d(3, 4, 3), nn.Dropout(0.3)
            self.block, self.fc = nn.Conv2d(4, 4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.block(self.drop(self.stem(x))).mean((2, 3)))

    class SplitNet:
        @thawkit.hookimpl
        def thawkit_split_model(self, model, layout, block):
            return thawkit.Split(nn.Sequential(model.stem, model.drop, model.block), model.fc, block) \
                if block == "head" else None

    pm.register(SplitNet(), name="split-net")
    adapted = thawkit.adapt(Net(), "head-only", frozen_dropout="off", pm=pm)
    assert "drop" not in adapted.inference_modules() and "block" in adapted.inference_modules()
    frozen = frozen_prefix(adapted)
    assert not frozen and frozen.reason.startswith("drop (Dropout p=0.3) in the frozen part")
    assert "it lies in no frozen block, so frozen_dropout: off leaves it on" in frozen.reason


def test_no_cache_when_the_first_block_trains():
    adapted = thawkit.adapt(tvm.resnet18(num_classes=3), "full")
    frozen = frozen_prefix(adapted)
    assert not frozen and "block 'stem', the first, trains" in frozen.reason


def test_dropout_before_the_classifier_stays_in_the_rest():
    adapted = thawkit.adapt(tvm.efficientnet_b0(num_classes=3, stochastic_depth_prob=0.0), "head-only",
                            num_classes=3, dropout=0.3)
    rest = frozen_prefix(adapted).split.rest
    assert [type(m).__name__ for m in rest] == ["Dropout", "Sequential"]  # stock dropout, ours + fc


# ------------------------------------------------------------- FeatureCache
def test_feature_cache_refuses_a_shuffled_loader():
    x, y, _ = data()
    with pytest.raises(thawkit.ConfigError, match="shuffle=False"):
        FeatureCache(nn.Identity(), DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True))


def test_feature_cache_goes_to_a_file_beyond_its_memory(tmp_path):
    x, y, batches = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    prefix = nn.Conv2d(3, 2, 3)
    in_ram = FeatureCache(prefix, loader)
    with pytest.raises(thawkit.ConfigError, match="pass directory="):
        FeatureCache(prefix, loader, memory=100)
    on_disk = FeatureCache(prefix, loader, memory=100, directory=tmp_path)
    assert in_ram.path is None and on_disk.path is not None and on_disk.path.parent == tmp_path
    for (a, la), (b, lb) in zip(in_ram.batches(batches), on_disk.batches(batches)):
        assert torch.equal(a, b) and torch.equal(la, lb)
    half = FeatureCache(prefix, loader, dtype="float16")
    assert half.nbytes == in_ram.nbytes // 2
    torch.testing.assert_close(half.take([0, 1])[0], in_ram.take([0, 1])[0], rtol=1e-3, atol=1e-3)
    on_disk.close()
    assert list(tmp_path.iterdir()) == []


def test_feature_cache_saved_and_opened_memory_mapped(tmp_path):
    x, y, batches = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    prefix = nn.Conv2d(3, 2, 3)
    for dtype, memory in (("float32", None), ("float16", None), ("float32", 100)):
        built = FeatureCache(prefix, loader, dtype=dtype, memory=memory, directory=tmp_path / "tmp")
        built.save(tmp_path / dtype, "train")
        opened = FeatureCache.open(tmp_path / dtype, "train")
        assert opened.path == tmp_path / dtype / "train.npy" and len(opened) == len(built)
        assert opened.shape == built.shape and opened.nbytes == built.nbytes
        for (a, la), (b, lb) in zip(built.batches(batches), opened.batches(batches)):
            assert torch.equal(a, b) and torch.equal(la, lb)
        opened.close()
        built.close()
        assert sorted(p.name for p in (tmp_path / dtype).iterdir()) == ["train-labels.npy", "train.npy"]
    npy = tmp_path / "float32" / "train.npy"
    npy.write_bytes(npy.read_bytes()[:-4])
    with pytest.raises(ValueError):
        FeatureCache.open(tmp_path / "float32", "train")

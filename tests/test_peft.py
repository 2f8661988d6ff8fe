"""Adapters through PEFT (``lora``, ``loha``, ``lokr``): targets per model family, a frozen base,
the plan, parameter groups, merge, PEFT's format, train/resume/export from the CLI."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import thawkit

peft = pytest.importorskip("peft")

from test_train import load, make_data, recipe_dict  # noqa: E402
from thawkit.plugins.adapters import adapter_params, merge_adapters  # noqa: E402


def resnet18():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def timm_vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             depth=3, embed_dim=32, num_heads=2, num_classes=10)


def timm_convnext():
    import timm

    torch.manual_seed(0)
    return timm.create_model("convnext_atto", pretrained=False, num_classes=10, dims=(8, 16, 24, 32),
                             depths=(1, 1, 1, 1), conv_mlp=False)


def tv_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                             mlp_dim=32, num_classes=10)


def layers(model, kind, under=()):
    """Paths of the plain model's ``kind`` layers under the prefixes ``under`` (what targets mean)."""
    return {p for p, m in model.named_modules() if isinstance(m, kind)
            and (not under or any(p.startswith(u + ".") for u in under))
            and not (isinstance(m, nn.Conv2d) and m.groups > 1)}


def adapted_layers(model, strategy="lora", **params):
    return set(adapter_params(thawkit.adapt(model, strategy, num_classes=3, **params).model))


# ------------------------------------------------------------------ targets through the layout
def test_resnet_conv_targets_per_block_choice():
    plain = resnet18()
    assert adapted_layers(resnet18(), rank=2) == layers(plain, nn.Conv2d, [f"layer{i}" for i in range(1, 5)])
    assert adapted_layers(resnet18(), rank=2, targets="conv", blocks=1) == \
        layers(plain, nn.Conv2d, ["layer4"])
    assert adapted_layers(resnet18(), "loha", rank=2, blocks=["layer1", "layer3"]) == \
        layers(plain, nn.Conv2d, ["layer1", "layer3"])
    with pytest.raises(thawkit.ConfigError, match=r"'attention' matches no layer of ResNet in blocks "
                       r"layer4; they have conv \(5\)"):
        thawkit.adapt(resnet18(), "lora", num_classes=3, targets="attention", blocks=1)


def test_timm_vit_attention_mlp_all_linear():
    plain = timm_vit()
    last = ["blocks.2"]
    attention = {p for p in layers(plain, nn.Linear, last) if ".attn." in p}
    mlp = {p for p in layers(plain, nn.Linear, last) if ".mlp." in p}
    assert len(attention) == 2 and len(mlp) == 2    # qkv, proj; fc1, fc2
    assert adapted_layers(timm_vit(), targets="attention", blocks=1) == attention
    assert adapted_layers(timm_vit(), "lokr", targets="mlp", blocks=1) == mlp
    assert adapted_layers(timm_vit(), targets="all-linear", blocks=1) == attention | mlp
    assert adapted_layers(timm_vit(), rank=2) == {p for p in layers(plain, nn.Linear, ["blocks"])
                                                  if ".attn." in p}
    with pytest.raises(thawkit.ConfigError, match="'conv' matches no layer of VisionTransformer"):
        thawkit.adapt(timm_vit(), "lora", num_classes=3, targets="conv")


def test_convnext_and_torchvision_vit():
    plain = timm_convnext()
    assert adapted_layers(timm_convnext(), targets="mlp", blocks=1) == layers(plain, nn.Linear, ["stages.3"])
    # the depthwise convolutions are left out (PEFT cannot merge LoRA on grouped convolutions)
    assert adapted_layers(timm_convnext(), targets="conv", blocks=1) == layers(plain, nn.Conv2d, ["stages.3"])
    assert not any(".conv_dw" in p for p in adapted_layers(timm_convnext(), targets="conv"))
    # torchvision's ViT: nn.MultiheadAttention uses its out_proj's weight without calling it, so
    # an adapter there would never act; all-linear leaves it out, attention names why
    plain = tv_vit()
    assert adapted_layers(tv_vit(), targets="all-linear", blocks=1) == \
        {p for p in layers(plain, nn.Linear, ["encoder.layers.encoder_layer_1"]) if ".mlp." in p}
    with pytest.raises(thawkit.ConfigError, match=r"'attention' matches no layer of VisionTransformer "
                       r"in blocks encoder_layer_1; they have mlp \(2\) \(1 attention layers such as "
                       r"encoder.layers.encoder_layer_1.self_attention.out_proj are not called"):
        thawkit.adapt(tv_vit(), "lora", num_classes=3, targets="attention", blocks=1)


def test_bad_parameters_are_refused_naming_the_field():
    for bad, field in [({"rank": 0}, "strategy.rank"), ({"targets": "qkv"}, "strategy.targets"),
                       ({"blocks": 0}, "strategy.blocks"), ({"dropout": 1.0}, "strategy.dropout")]:
        with pytest.raises(thawkit.ConfigError, match=field.replace(".", r"\.")):
            thawkit.strategy_instance("lora", bad, pm=thawkit.get_plugin_manager(entrypoints=False))
    with pytest.raises(thawkit.ConfigError, match="strategy.blocks: 9 is more than the 4 blocks"):
        thawkit.adapt(resnet18(), "lora", num_classes=3, blocks=9)
    with pytest.raises(thawkit.UnknownNameError, match="layer9"):
        thawkit.adapt(resnet18(), "lora", num_classes=3, blocks=["layer9"])
    adapted = thawkit.adapt(resnet18(), "lora", num_classes=3, blocks=1)
    again = thawkit.adapt(adapted.model, "lora", blocks=1)       # the same adapters: kept as they are
    assert adapter_params(again.model) == adapter_params(adapted.model)
    with pytest.raises(thawkit.ConfigError, match="already has PEFT adapters"):
        thawkit.adapt(adapted.model, "loha")


def test_without_peft_the_error_names_the_extra(monkeypatch):
    import importlib.util

    from thawkit.plugins import adapters

    real = importlib.util.find_spec
    monkeypatch.setattr(adapters.importlib.util, "find_spec",
                        lambda name, *a: None if name == "peft" else real(name, *a))
    pm = thawkit.get_plugin_manager(entrypoints=False)
    assert {"lora", "loha", "lokr"} <= set(pm.strategies.names())
    assert "pip install 'thawkit[peft]'" in pm.strategies.get("lora").summary()
    with pytest.raises(thawkit.ConfigError, match=r"strategy 'lora' .*PEFT.*pip install 'thawkit\[peft\]'"):
        thawkit.adapt(resnet18(), "lora", num_classes=3)


# ------------------------------------------------------------------ training, groups, plan
@pytest.mark.parametrize("build, block", [(resnet18, "layer4"), (tv_vit, "encoder_layer_1")],
                         ids=["resnet18-batchnorm", "torchvision-vit-multiheadattention"])
def test_frozen_base_stays_bit_identical_head_and_adapters_train(build, block):
    """Every adapter moves (none sits on a layer the forward bypasses), nothing else does."""
    adapted = thawkit.adapt(build(), "lora", num_classes=3, rank=2, blocks=1, dropout=0.1,
                            targets="all-linear" if block != "layer4" else "auto")
    model = adapted.model
    names = {n for names in adapter_params(model).values() for n in names}
    head = set(adapted.layout.head.params)
    assert adapted.trainable == names | head
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = adapted.optimizer("adamw", lr=0.05)
    model.train()
    torch.manual_seed(1)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == names | head      # BatchNorm statistics and every base weight: bit-identical
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"head", "head.no_decay", f"{block}.lora.no_decay"}
    assert groups[f"{block}.lora.no_decay"]["weight_decay"] == 0.0
    assert {id(p) for p in groups[f"{block}.lora.no_decay"]["params"]} == \
        {id(p) for n, p in model.named_parameters() if n in names}


def test_adapter_weight_decay_and_norm_policy_groups():
    adapted = thawkit.adapt(timm_vit(), "lora", num_classes=3, targets="all-linear", blocks=1,
                            norm="affine", adapter_weight_decay=True)
    model = adapted.model
    groups = {g["name"]: g for g in adapted.param_groups("adamw", weight_decay=0.1)}
    by_id = {id(p): n for n, p in model.named_parameters()}

    def names(group):
        return {by_id[id(p)] for p in groups[group]["params"]}

    lora = {n for names_ in adapter_params(model).values() for n in names_}
    assert names("blocks.2.lora") == lora and groups["blocks.2.lora"]["weight_decay"] == 0.1
    # the norm policy applies to the frozen base: under affine, its norms' affine parameters
    # train, in the blocks' own no-decay groups, apart from the adapters
    norms = adapted.trainable - lora - set(adapted.layout.head.params)
    assert norms and all(".norm" in n or n.startswith("norm") for n in norms)
    block_of = adapted.layout.block_of()
    assert names("blocks.2.no_decay") == {n for n in norms if block_of[n] == "blocks.2"}


def test_plan_lists_every_adapter_with_its_parameters():
    adapted = thawkit.adapt(timm_vit(), "loha", num_classes=3, targets="all-linear", blocks=2, rank=2)
    plan = adapted.plan
    rows = plan.to_dict()["adapters"]
    params = dict(adapted.model.named_parameters())
    per_module = adapter_params(adapted.model)
    assert [r["module"] for r in rows] == list(per_module) and len(rows) == 8
    for r in rows:
        assert r["params"] == sum(params[n].numel() for n in per_module[r["module"]]) > 0
        assert r["kind"] == "loha Linear"
    total = plan.to_dict()["adapter_params"]
    assert total == sum(r["params"] for r in rows)
    assert plan.trainable == total + sum(params[n].numel() for n in adapted.layout.head.params)
    text = str(plan)
    assert f"8 loha adapters (rank 2, alpha 16), {total:,} parameters:" in text
    assert all(r["module"] in text for r in rows)


# ------------------------------------------------------------------ merge
@pytest.mark.parametrize("build, strategy, params", [
    (resnet18, "lora", {"blocks": 1}),
    (timm_vit, "lokr", {"targets": "all-linear"}),
    (tv_vit, "lora", {"targets": "all-linear"}),       # nn.MultiheadAttention
], ids=["resnet18-lora-conv", "timm-vit-lokr", "tv-vit-lora-mha"])
def test_merge_gives_the_plain_architecture_and_the_same_logits(build, strategy, params):
    adapted = thawkit.adapt(build(), strategy, num_classes=3, rank=2, **params)
    model = adapted.model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():            # adapters start as the identity: give them weights
        base_only = model.eval()(x)
        for names in adapter_params(model).values():
            for n in names:
                model.get_parameter(n).normal_(0, 0.1)
    with torch.no_grad():
        expected = model(x)
    assert not torch.allclose(base_only, expected, atol=1e-4)     # the adapters matter
    merged = merge_adapters(copy.deepcopy(model))
    plain, _ = thawkit.replace_head(build(), 3)
    assert set(merged.state_dict()) == set(plain.state_dict())
    plain.load_state_dict(merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ thawkit train, resume, export
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


LORA = {"strategy": {"name": "lora", "rank": 2, "blocks": 2, "dropout": 0.2}, "train": {"epochs": 2},
        "optimizer": {"lr": 0.05}}


def test_train_resume_predict_and_both_exports(tmp_path, data, capsys):
    from test_resume import assert_same_run
    from thawkit.plugins.cli import main
    from thawkit.plugins.train import resume, train
    from thawkit.plugins.train.inference import load_run_model, predict

    from safetensors.torch import save_file
    from thawkit.plugins.train.demo_model import small_cnn

    pm = thawkit.get_plugin_manager(entrypoints=False)
    base_file = tmp_path / "base.safetensors"        # the "pretrained" base
    torch.manual_seed(5)
    save_file(small_cnn(width=4).state_dict(), str(base_file))
    sections = {**LORA, "backbone": {"weights": str(base_file)}}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train(load(recipe_dict(data, straight, **sections), pm), log=print).status == "finished"
    assert train(load(recipe_dict(data, stopped, **sections), pm), log=print,
                 stop_after=1).status == "stopped"
    assert resume(stopped, pm=pm, log=print).status == "finished"
    assert_same_run(straight, stopped)
    run = load_run_model(straight, pm=pm)
    assert adapter_params(run.model)                  # rebuilt with the adapters, weights loaded
    image = next((data / "val" / "cat").iterdir())
    assert predict(straight, [str(image)], pm=pm)[0][1]

    # --merge: plain weights for the plain architecture, the adapter model's logits
    assert main(["export", str(straight), str(tmp_path / "merged.safetensors"), "--merge"]) == 0
    config = json.loads((tmp_path / "merged.json").read_text())
    plain = thawkit.load_backbone(config["spec"], weights=str(tmp_path / "merged.safetensors"),
                                  **config["load_options"]).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), run.model(x), rtol=1e-4, atol=1e-5)

    # without: PEFT's format plus the head, which PEFT loads onto the base model
    assert main(["export", str(straight), str(tmp_path / "peft")]) == 0
    assert "PEFT" in capsys.readouterr().out
    out = tmp_path / "peft"
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    from thawkit.plugins.train.adapter_export import load_adapter_export
    from thawkit.plugins.weights import read_weights

    rebuilt, adapter_config = load_adapter_export(out)
    assert adapter_config["base_load_options"]["weights"] == str(base_file)
    base, _ = thawkit.replace_head(thawkit.load_backbone(config["spec"], weights=str(base_file), width=4), 3)
    base.load_state_dict(read_weights(out / "head.safetensors"), strict=False)
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), run.model(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded(x), run.model(x), rtol=1e-5, atol=1e-6)

    # errors: one file without --merge, --merge on a run without adapters
    with pytest.raises(thawkit.ConfigError, match="export to a directory"):
        from thawkit.plugins.train.inference import export_run
        export_run(straight, tmp_path / "x.safetensors", pm=pm)
    capsys.readouterr()
    assert main(["export", str(straight), str(tmp_path / "wise"), "--wise", "0.5"]) == 2
    assert "trains adapters (lora): its base weights never moved" in capsys.readouterr().err
    assert not (tmp_path / "wise").exists()
    head_only = tmp_path / "head-only"
    train(load(recipe_dict(data, head_only), pm), log=print)
    with pytest.raises(thawkit.ConfigError, match="adds no adapters; export it without --merge"):
        export_run(head_only, tmp_path / "y.safetensors", merge=True, pm=pm)


def test_plan_command_lists_adapters_on_the_meta_device(tmp_path, capsys):
    from thawkit.plugins.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("backbone: {source: torchvision, name: resnet18}\nhead: {num_classes: 3}\n"
                      "strategy: {name: lora, rank: 4, blocks: 1}\n")
    assert main(["plan", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "5 lora adapters (rank 4, alpha 16)" in out and "layer4.0.downsample.0" in out
    assert main(["plan", str(recipe), "--set", "strategy.targets=mlp"]) == 2
    assert "'mlp' matches no layer of torchvision:resnet18" in capsys.readouterr().err


def test_feature_cache_below_the_adapters_equals_the_uncached_run(tmp_path, data):
    from test_train_cache import assert_close_runs, run

    pm = thawkit.get_plugin_manager(entrypoints=False)
    sections = {"strategy": {"name": "lora", "rank": 2, "blocks": 1}, "optimizer": {"lr": 0.05}}
    cached, lines = run(tmp_path, data, pm, "cached", train={"epochs": 2}, **sections)
    plain, _ = run(tmp_path, data, pm, "plain", train={"epochs": 2, "cache": "off"}, **sections)
    assert "; cache on for epochs 1-2: features below 'block3'" in lines[0]
    assert_close_runs(plain, cached)

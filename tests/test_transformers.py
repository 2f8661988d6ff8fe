"""The transformers plugin: source, layouts of every covered family, heads, strategies, layer decay.

All models are tiny and random, built from configs (tests/hf_tiny.py); nothing is downloaded.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("transformers")

import thawkit  # noqa: E402
import torch  # noqa: E402

from hf_tiny import BY_ID, FAMILIES, build, inputs, quiet  # noqa: E402

IDS = [f[0] for f in FAMILIES]

#: block names each family's layout must have, input to output
BLOCKS = {
    "bert": ["stem", "encoder.layer.0", "encoder.layer.1", "neck", "head"],
    "roberta": ["stem", "encoder.layer.0", "encoder.layer.1", "head"],
    "deberta-v2": ["stem", "encoder.layer.0", "encoder.layer.1", "head"],
    "electra": ["stem", "encoder.layer.0", "encoder.layer.1", "head"],
    "distilbert": ["stem", "transformer.layer.0", "transformer.layer.1", "head"],
    "vit": ["stem", "layers.0", "layers.1", "neck", "head"],
    "wav2vec2-ctc": ["stem", "encoder.layers.0", "encoder.layers.1", "head"],
    "wav2vec2-stable": ["stem", "encoder.layers.0", "encoder.layers.1", "neck", "head"],
    "hubert": ["stem", "encoder.layers.0", "encoder.layers.1", "head"],
    "whisper-encoder": ["stem", "encoder.layers.0", "encoder.layers.1", "neck", "head"],
    "whisper": ["stem", "encoder.layers.0", "encoder.layers.1", "decoder.input", "decoder.layers.0",
                "decoder.layers.1", "neck", "head"],
    "llama": ["layers.0", "layers.1", "neck", "head"],
    "mistral": ["stem", "layers.0", "layers.1", "neck", "head"],
    "qwen2": ["stem", "layers.0", "layers.1", "neck", "head"],
    "gpt2": ["stem", "h.0", "h.1", "neck", "head"],
}
#: (family, parameter, block): placements that a naive rule gets wrong
PLACED = [
    ("bert", "bert.pooler.dense.weight", "neck"),
    ("deberta-v2", "deberta.encoder.rel_embeddings.weight", "stem"),
    ("deberta-v2", "deberta.encoder.LayerNorm.weight", "stem"),
    ("deberta-v2", "pooler.dense.weight", "head"),
    ("electra", "electra.embeddings_project.weight", "stem"),
    ("distilbert", "pre_classifier.weight", "head"),
    ("wav2vec2-ctc", "wav2vec2.feature_extractor.conv_layers.0.conv.weight", "stem"),
    ("wav2vec2-ctc", "wav2vec2.feature_projection.projection.weight", "stem"),
    ("wav2vec2-ctc", "wav2vec2.encoder.layer_norm.weight", "stem"),      # applied before the layers
    ("wav2vec2-stable", "wav2vec2.encoder.layer_norm.weight", "neck"),   # applied after them
    ("hubert", "projector.weight", "head"),
    ("whisper", "model.encoder.layer_norm.weight", "decoder.input"),
    ("whisper", "model.decoder.embed_tokens.weight", "head"),            # tied to proj_out
    ("llama", "model.embed_tokens.weight", "head"),                      # tied to lm_head
    ("qwen2", "model.embed_tokens.weight", "stem"),                      # not tied
    ("qwen2", "lm_head.weight", "head"),
    ("gpt2", "transformer.wte.weight", "head"),
    ("gpt2", "transformer.wpe.weight", "stem"),
    ("mistral", "score.weight", "head"),
]
CLASSIFIERS = {"bert": "classifier", "roberta": "classifier.out_proj", "deberta-v2": "classifier",
               "electra": "classifier.out_proj", "distilbert": "classifier", "vit": "classifier",
               "hubert": "classifier", "wav2vec2-stable": "classifier", "whisper-encoder": "classifier",
               "mistral": "score"}


@pytest.fixture(scope="module")
def models():
    quiet()
    return {f: build(f) for f in IDS}


@pytest.mark.parametrize("family", IDS)
def test_layout_of_each_family(models, family):
    model = models[family]
    layout = thawkit.describe_layout(model)  # validates: every parameter in exactly one block
    assert layout.source == "transformers"
    assert [b.name for b in layout.all_blocks] == BLOCKS[family]
    layers = [b for b in layout.blocks if b.name != "decoder.input"]
    assert all(len(b.params) == len(layers[0].params) for b in layers if b.name.startswith(
        layers[0].name.split(".")[0]))
    model.eval()
    with torch.no_grad():
        model(**inputs(family))  # the tiny configs really build working models


@pytest.mark.parametrize("family, param, block", PLACED)
def test_layout_places_parameters_where_the_forward_uses_them(models, family, param, block):
    assert thawkit.describe_layout(models[family]).block_of()[param] == block


def test_layout_notes_say_what_a_tied_head_is_and_name_both_stacks(models):
    notes = thawkit.describe_layout(models["llama"]).notes
    assert notes == ["head: lm_head is tied to model.embed_tokens: that embedding is the head's weight and "
                     "trains whenever the head trains"]
    whisper = thawkit.describe_layout(models["whisper"]).notes
    assert "2 stacks of layers: encoder.layers (2), decoder.layers (2)" in whisper
    adapted = thawkit.adapt(models["gpt2"], "head-only")
    assert "lm_head is tied to transformer.wte" in str(adapted.plan)
    assert thawkit.describe_layout(models["qwen2"]).notes == []


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "vit", "wav2vec2-stable", "qwen2", "mistral"])
def test_layout_meets_the_plugin_contract(family):
    """The conformance kit's layout checks (pure, deterministic, meta device, classifier paths).
    Tied models are left out: the kit's meta copy (``.to("meta")``) unties their weights."""
    from thawkit.plugins import transformers as plugin
    from thawkit.plugins.testing import check_layout_plugin, check_source
    from thawkit.plugins.transformers.source import TransformersSource

    check_layout_plugin(plugin, lambda: build(family))
    if family == "bert":
        check_source(TransformersSource(), names=["bert", "gpt2"], name="transformers", max_cpu_params=0)


def test_a_model_without_a_stack_of_layers_is_refused_naming_what_was_found():
    quiet()
    model = thawkit.load_backbone("transformers:mamba", task="causal-lm", hidden_size=16, num_hidden_layers=2,
                                  vocab_size=99, state_size=4)
    with pytest.raises(thawkit.LayoutError, match=r"MambaForCausalLM has no stack of attention layers.*"
                       r"ModuleLists found: backbone.layers \(2 x MambaBlock\)"):
        thawkit.describe_layout(model)


@pytest.mark.parametrize("family", sorted(CLASSIFIERS))
def test_num_classes_replaces_the_classifier_and_the_config(family):
    model = build(family)
    adapted = thawkit.adapt(model, "head-only", num_classes=5)
    path = CLASSIFIERS[family]
    assert adapted.layout.classifiers == [path]
    assert adapted.model.get_submodule(path).out_features == 5
    config = adapted.model.config
    assert config.num_labels == 5 and sorted(config.id2label) == [0, 1, 2, 3, 4]
    assert config.label2id == {v: k for k, v in config.id2label.items()}
    labels = torch.tensor([4, 0])
    out = adapted.model.eval()(**inputs(family), labels=labels)  # the loss reshapes with num_labels
    assert out.logits.shape == (2, 5)
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, labels).item())


@pytest.mark.parametrize("family, kind", [("llama", "causal-lm"), ("wav2vec2-ctc", "ctc"),
                                          ("gpt2", "causal-lm")])
def test_num_classes_on_a_vocabulary_head_is_refused_and_without_it_the_head_stays(family, kind):
    model = build(family)
    with pytest.raises(thawkit.ConfigError, match=f"head.num_classes: .* is a {kind} model, whose head does "
                       "not predict classes; its head is kept"):
        thawkit.adapt(model, "head-only", num_classes=3)
    before = model.lm_head.weight.clone()
    adapted = thawkit.adapt(model, "head-only")
    assert torch.equal(adapted.model.lm_head.weight, before)
    if family == "llama":  # the tie survives adapting: one tensor, trained as the head
        assert adapted.model.lm_head.weight is adapted.model.model.embed_tokens.weight
        assert adapted.trainable == {"model.embed_tokens.weight"}


def test_a_bare_base_model_has_no_head_and_num_classes_says_which_task_to_load():
    model = thawkit.load_backbone("transformers:bert", task="base", **BY_ID["bert"][3])
    layout = thawkit.describe_layout(model, require_head=False)
    assert layout.head.params == []
    assert layout.notes[0].startswith("head: none: a base model without a task head")
    with pytest.raises(thawkit.ConfigError, match="built without a task head: load it with "
                       "task=sequence-classification"):
        thawkit.adapt(model, "head-only", num_classes=2)


# ------------------------------------------------------------------ source
def test_source_loads_a_save_pretrained_directory_with_and_without_its_weights(tmp_path):
    model = build("bert")
    model.save_pretrained(tmp_path / "m")
    loaded = thawkit.load_backbone(f"transformers:{tmp_path / 'm'}", pretrained=True)
    assert type(loaded).__name__ == "BertForSequenceClassification"  # the saved architecture
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    fresh = thawkit.load_backbone(f"transformers:{tmp_path / 'm'}", task="base", num_hidden_layers=1)
    assert type(fresh).__name__ == "BertModel" and fresh.config.num_hidden_layers == 1
    assert not torch.equal(fresh.embeddings.word_embeddings.weight,
                           model.bert.embeddings.word_embeddings.weight)
    meta = thawkit.load_backbone(f"transformers:{tmp_path / 'm'}", pretrained=True, device="meta")
    assert next(meta.parameters()).is_meta


def test_source_loads_a_local_weights_file(tmp_path):
    from safetensors.torch import save_file

    model = build("bert")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    again = build("bert", weights=str(tmp_path / "w.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_source_errors_say_what_is_wrong(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(thawkit.ConfigError, match=r"directory '.*empty' has no config.json; give a directory "
                       "written by save_pretrained"):
        thawkit.load_backbone(f"transformers:{tmp_path / 'empty'}")
    with pytest.raises(thawkit.ConfigError, match=r"bert \(model type 'bert'\) has no ctc head; its tasks "
                       r"are sequence-classification, causal-lm, base"):
        thawkit.load_backbone("transformers:bert", task="ctc")
    with pytest.raises(thawkit.UnknownNameError, match="thawkit never downloads.*did you mean 'bert'"):
        thawkit.load_backbone("transformers:bertt")
    with pytest.raises(thawkit.UnknownNameError, match="transformers task 'classification'"):
        thawkit.load_backbone("transformers:bert", task="classification")
    with pytest.raises(thawkit.ConfigError, match="is a model type, which has no weights"):
        thawkit.load_backbone("transformers:bert", pretrained=True)
    with pytest.raises(thawkit.ConfigError, match="rejected kwargs"):
        thawkit.load_backbone("transformers:bert", hidden_size=30, num_attention_heads=4)


def test_a_hub_name_is_read_from_the_local_cache_only(tmp_path, monkeypatch):
    """A name in the cache loads offline; one that is not gets the never-downloads error."""
    import huggingface_hub

    model = build("bert")
    model.save_pretrained(tmp_path / "snap")
    from thawkit.plugins.transformers import source

    def cached(repo, filename):
        return str(tmp_path / "snap" / filename) if repo == "acme/tiny-bert" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cached)
    assert source.cached_config("acme/tiny-bert").endswith("config.json")
    with pytest.raises(thawkit.UnknownNameError, match="local cache.*never downloads"):
        thawkit.load_backbone("transformers:acme/other-bert")


# ------------------------------------------------------------------ strategies
def _names(model, pred):
    return {n for n, p in model.named_parameters() if pred(n, p)}


STRATEGIES = [("head-only", {}), ("last-block", {"blocks": 1}), ("gradual", {"every": 1}), ("full", {}),
              ("pattern", {"include": [r"\.0\."]}), ("bitfit", {}), ("norm-only", {}),
              ("lp-ft", {"probe_epochs": 1})]


@pytest.mark.parametrize("family", ["bert", "wav2vec2-ctc", "llama", "whisper", "deberta-v2", "vit"])
@pytest.mark.parametrize("strategy, params", STRATEGIES, ids=[s for s, _ in STRATEGIES])
def test_every_strategy_trains_the_expected_set(models, family, strategy, params):
    model = models[family]
    layout = thawkit.describe_layout(model)
    adapted = thawkit.adapt(model, strategy, **params)
    head = set(layout.head.params)
    top = head | set(layout.neck.params if layout.neck else [])
    every = _names(model, lambda n, p: True)
    expected = {
        "head-only": head,
        "last-block": top | set(layout.blocks[-1].params),
        "gradual": top,
        "full": every,
        "pattern": head | {n for n in every if ".0." in n},
        "bitfit": head | {n for n in every if n.endswith(".bias")},
        "lp-ft": head,
    }.get(strategy)
    if strategy == "norm-only":
        norms = {f"{p}.{n}" for p, m in thawkit.norm_modules(model).items()
                 for n, _ in m.named_parameters(recurse=False)}
        expected = head | norms
        assert norms, "the tiny model has norm layers"
    assert adapted.trainable == expected
    assert _names(adapted.model, lambda n, p: p.requires_grad) == expected
    if strategy == "gradual":  # one more block per epoch, from the top down to the stem
        adapted.on_epoch_start(len(layout.thaw_order) - 1)
        assert adapted.trainable == every


def test_layer_decay_puts_the_embeddings_below_the_first_layer():
    """ELECTRA-style LLRD on 2 layers: head 1, layer 1 d, layer 0 d^2, embeddings d^3 (by hand)."""
    model = build("electra")
    adapted = thawkit.adapt(model, "full", num_classes=3)
    groups = adapted.param_groups("adamw", lr=1.0, layer_decay=0.5, weight_decay=0.01)
    lr_of = {n: g["lr"] for g in groups for p in g["params"] for n, q in model.named_parameters() if q is p}
    expected = {"electra.embeddings.word_embeddings.weight": 0.125,
                "electra.embeddings_project.weight": 0.125,
                "electra.encoder.layer.0.attention.self.query.weight": 0.25,
                "electra.encoder.layer.1.output.dense.weight": 0.5,
                "classifier.dense.weight": 1.0, "classifier.out_proj.bias": 1.0}
    assert {n: lr_of[n] for n in expected} == expected
    decay_of = {n: g["weight_decay"] for g in groups for p in g["params"]
                for n, q in model.named_parameters() if q is p}
    assert decay_of["electra.encoder.layer.0.attention.output.LayerNorm.weight"] == 0.0
    assert decay_of["electra.encoder.layer.0.attention.self.query.bias"] == 0.0
    assert decay_of["electra.embeddings.LayerNorm.weight"] == 0.0
    assert decay_of["electra.encoder.layer.0.attention.self.query.weight"] == 0.01


def test_layer_decay_spans_both_stacks_of_whisper(models):
    adapted = thawkit.adapt(models["whisper"], "full")
    groups = adapted.param_groups("adamw", lr=1.0, layer_decay=0.5)
    by_block = {g["name"].split(".no_decay")[0]: g["lr"] for g in groups}
    assert by_block["decoder.layers.1"] == 0.5 and by_block["decoder.input"] == 0.5 ** 3
    assert by_block["encoder.layers.0"] == 0.5 ** 5 and by_block["stem"] == 0.5 ** 6


@pytest.mark.parametrize("family, targets, expect", [
    ("bert", "attention", "bert.encoder.layer.3.attention.self.query"),
    ("llama", "mlp", "model.layers.1.mlp.gate_proj"),
    ("wav2vec2-ctc", "attention", "wav2vec2.encoder.layers.1.attention.q_proj")])
def test_lora_targets_the_last_layers_and_trains_under_ten_percent(family, targets, expect):
    pytest.importorskip("peft")
    model = build(family, **({"num_hidden_layers": 4} if family == "bert" else {}))
    kwargs = {"num_classes": 3} if family == "bert" else {}
    adapted = thawkit.adapt(model, "lora", rank=2, targets=targets, blocks=1, **kwargs)
    lora = [n for n in adapted.trainable if "lora_" in n]
    assert lora and all(".1." in n or ".3." in n for n in lora)
    assert any(n.startswith(expect + ".lora_A") for n in lora)
    head = set(adapted.layout.head.params)
    assert head <= adapted.trainable
    if family == "bert":
        total = sum(p.numel() for p in adapted.model.parameters())
        trained = sum(p.numel() for n, p in adapted.model.named_parameters() if n in adapted.trainable)
        assert trained / total < 0.10
    for kind in ("loha", "lokr"):
        other = thawkit.adapt(build(family, **({"num_hidden_layers": 4} if family == "bert" else {})), kind,
                              rank=2, targets=targets, blocks=1)
        added = other.trainable - set(other.layout.head.params)
        assert added and all(n.startswith(expect.rsplit(".", 1)[0].rsplit(".", 2)[0]) for n in added)
        assert any(n.startswith(f"{expect}.{'hada' if kind == 'loha' else 'lokr'}_") for n in added)


def test_lora_adapts_gpt2s_conv1d_projections_and_loha_says_it_cannot():
    pytest.importorskip("peft")
    adapted = thawkit.adapt(build("gpt2"), "lora", rank=2, targets="attention", blocks=1)
    assert {n.rsplit(".lora_", 1)[0] for n in adapted.trainable if ".lora_" in n} == {
        "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"}
    assert adapted.model(**inputs("gpt2")).logits.shape == (2, 12, 99)
    with pytest.raises(thawkit.ConfigError, match=r"PEFT's loha does not adapt transformers' Conv1D layers "
                       r"\(transformer.h.1.attn.c_attn, .*use strategy 'lora'"):
        thawkit.adapt(build("gpt2"), "loha", rank=2, targets="attention", blocks=1)


# ------------------------------------------------------------------ command line and imports
def _thawkit(capsys, *args):
    """The command line in this process: (exit code, stdout, stderr)."""
    from thawkit.plugins.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_describe_shows_the_blocks_of_a_directory_and_of_a_model_type(tmp_path, capsys):
    build("gpt2").save_pretrained(tmp_path / "gpt")
    capsys.readouterr()
    code, out, err = _thawkit(capsys, "describe", f"transformers:{tmp_path / 'gpt'}")
    assert code == 0, err
    assert "h.1" in out and "lm_head is tied to transformer.wte" in out
    code, out, err = _thawkit(capsys, "describe", "transformers:bert", "--json")  # bert-base, on meta
    data = json.loads(out)
    assert [b["name"] for b in data["layout"]["blocks"]][1:3] == ["encoder.layer.0", "encoder.layer.1"]
    assert len(data["layout"]["blocks"]) == 15  # stem, 12 layers, pooler (neck), head
    code, out, err = _thawkit(capsys, "describe", f"transformers:{tmp_path}")
    assert code == 2 and "has no config.json" in err and "Traceback" not in err


def test_plan_shows_the_blocks_of_a_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("backbone: {source: transformers, name: bert, kwargs: {task: sequence-classification, "
                      "hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, "
                      "intermediate_size: 37}}\n"
                      "head: {num_classes: 3}\nstrategy: {name: gradual, every: 1}\n"
                      "optimizer: {name: adamw, lr: 0.001, layer_decay: 0.5}\n")
    code, out, err = _thawkit(capsys, "plan", str(recipe))
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert {"stem", "encoder.layer.0", "encoder.layer.1", "neck", "head"} <= set(rows)


def test_a_torchvision_run_and_help_never_import_transformers():
    code = ("import sys, thawkit; pm = thawkit.get_plugin_manager(); m = thawkit.load_backbone("
            "'torchvision:resnet18', pm=pm); a = thawkit.adapt(m, 'gradual', num_classes=3, pm=pm); "
            "a.optimizer('adamw', layer_decay=0.5); print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    out = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['thawkit', '--help']\n"
                          "from thawkit.plugins.cli import main\ntry: main()\nexcept SystemExit: pass\n"
                          "print('transformers' in sys.modules)"], capture_output=True, text=True)
    assert out.stdout.strip().endswith("False"), out.stderr


@pytest.mark.parametrize("spec", ["timm:resnet18", "transformers:bert"])
@pytest.mark.parametrize("options, message", [
    ({"pretrained": "yes"}, "pretrained must be true or false, got 'yes'"),
    ({"pretrained": True, "weights": "w.safetensors"}, "give either pretrained=True or weights=FILE"),
])
def test_sources_check_their_weight_options_alike(spec, options, message):
    with pytest.raises(thawkit.ConfigError, match=re.escape(f"backbone '{spec}': {message}")):
        thawkit.load_backbone(spec, **options)

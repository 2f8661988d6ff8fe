"""The conformance kit (``thawkit.plugins.testing``) on the transformers plugin: its models run on
the inputs they take (``thawkit_example_input``: token ids, waveforms, log-mel features), so the
kit checks text and audio heads and a language model whose head is tied to its input
embeddings, and catches a plugin that gets them wrong. Tiny random models, built offline."""
from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("transformers")

import thawkit  # noqa: E402
from thawkit import Block  # noqa: E402
import torch  # noqa: E402
from thawkit.plugins import transformers as hf_plugin  # noqa: E402
from thawkit.plugins.testing import (  # noqa: E402
    ContractError,
    ModelCase,
    check_head_plugin,
    check_layout_plugin,
    check_plugin,
    check_strategy,
)

from hf_tiny import FAMILIES, build  # noqa: E402

TIED = "llama (tied)"


def cases(pm, lm_classes: int | None = 3) -> list[ModelCase]:
    """``lm_classes=None``: the language model keeps its head (a new one is refused)."""
    return [ModelCase("bert", lambda: build("bert", pm)),
            ModelCase("wav2vec2", lambda: build("wav2vec2-stable", pm)),
            ModelCase(TIED, lambda: build("llama", pm), num_classes=lm_classes)]


def findings(report, subject: str) -> dict[str, tuple[str, str]]:
    return {f.check: (f.status, f.detail) for f in report.findings if f.subject.endswith(subject)}


@pytest.mark.slow
def test_check_plugin_passes_on_text_audio_and_a_tied_language_model(pm):
    report = check_plugin(hf_plugin, pm=pm, models=cases(pm), raises=False)
    assert report.passed, str(report)
    bert, audio, tied = (findings(report, f"on {name}") for name in ("bert", "wav2vec2", TIED))
    for found in (bert, audio):  # the new heads ran on token ids and on a waveform
        assert found["outputs 3 scores"] == ("pass", "") and found["outputs 7 scores"] == ("pass", "")
    assert tied["classifiers, aux and feeds are module paths"] == ("pass", "")
    assert tied["works on the meta device"] == ("pass", "")  # the tie kept on the meta copy
    status, why = tied["thawkit_replace_head"]  # a causal LM keeps its head, and says so
    assert status == "skip" and "causal-lm model, whose head does not predict classes" in why


def test_strategies_train_text_audio_and_tied_models_with_frozen_parts_bit_identical(pm):
    """Every phase of gradual, and head-only, trained on the models' own inputs: nothing frozen
    moves. On the tied model the head is the input embedding too, and it trains."""
    for name in ("gradual", "head-only"):
        check_strategy(pm.strategies.get(name), cases(pm, lm_classes=None), pm=pm, steps=1)


def test_a_text_head_that_only_renames_its_classes_fails_the_head_check(pm):
    class ConfigOnlyHead:
        """Sets num_labels but leaves BERT's classifier as it was (2 outputs)."""

        @thawkit.hookimpl
        def thawkit_replace_head(self, model, layout, num_classes, dropout, keep_aux):
            model.config.num_labels = num_classes
            model.classifier = torch.nn.Sequential(torch.nn.Dropout(dropout), model.classifier)
            return model

    bert = ModelCase("bert", lambda: build("bert", pm))
    with pytest.raises(ContractError) as failed:
        check_head_plugin(ConfigOnlyHead(), bert, pm=pm)
    message = str(failed.value)
    assert "on bert: outputs 3 scores" in message
    assert "the output has shape (2, 2) for a batch of 2" in message
    assert "on bert: outputs 7 scores" in message and "raised" not in message


def test_a_tied_head_laid_out_in_the_stem_fails_the_layout_check(pm):
    class StemTie:
        """The transformers layout, with the embedding shared by lm_head moved to the stem."""

        @thawkit.hookimpl
        def thawkit_describe_layout(self, model, spec):
            from thawkit.plugins.transformers.layout import describe

            layout = describe(model)
            assert layout.stem is None and "model.embed_tokens.weight" in layout.head.params
            tied = ["model.embed_tokens.weight"]
            head = [p for p in layout.head.params if p not in tied]
            return dataclasses.replace(layout, stem=Block("stem", "stem", tied, ["model.embed_tokens"]),
                                       head=dataclasses.replace(layout.head, params=head))

    with pytest.raises(ContractError) as failed:
        check_layout_plugin(StemTie(), ModelCase(TIED, lambda: build("llama", pm)), pm=pm)
    assert ("classifier 'lm_head' has parameters outside the head: lm_head.weight (listed as "
            "model.embed_tokens.weight)") in str(failed.value)


@pytest.mark.parametrize("family", [f[0] for f in FAMILIES])
def test_thawkit_example_input_of_every_family_runs_the_model(pm, family):
    model = build(family, pm).eval()
    x = pm.hook.thawkit_example_input(model=model, spec=thawkit.spec_of(model), batch=3)
    assert isinstance(x, dict) and all(v.shape[0] == 3 for v in x.values())
    with torch.no_grad():
        assert model(**x).logits.shape[0] == 3
    assert pm.hook.thawkit_example_input(model=torch.nn.Linear(2, 2), spec=None, batch=3) is None

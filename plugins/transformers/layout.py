"""Layouts of transformers models from their own structure, without a table per model.

* **Blocks**: the stacks of layers: plain ``nn.ModuleList`` containers whose elements are all of
  one class and each hold an attention module (``BertLayer``, ``LlamaDecoderLayer``,
  ``Wav2Vec2EncoderLayer``...). One stack is the usual case; an encoder-decoder (Whisper) has
  two, laid out encoder first, with the parameters between them (the encoder's final norm, the
  decoder's embeddings) as a block ``<decoder>.input``.
* **Stem**: every parameter the model registers before the first stack (embeddings, a speech
  model's feature encoder, feature projection and positional convolution).
* **Neck**: the base model's parameters after the last stack (a final norm, BERT's pooler).
* **Head**: the model's own top-level modules registered after the base model (``classifier``,
  ``score``, ``lm_head``, ``projector``, ``pre_classifier``). When the output embeddings are
  tied to the input embeddings (causal LMs, Whisper), the shared weight is the head's: it
  trains whenever the head trains, and the layout's notes say so.

Two model-specific facts, both from the models' configs or code: wav2vec2-style encoders with
``do_stable_layer_norm`` apply their ``layer_norm`` after the layers (neck, though registered
before them), and DeBERTa's relative position embeddings (``rel_embeddings`` and the norm over
them), registered after the layers, feed every layer (stem).
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from thawkit import Block, Layout, LayoutError

if TYPE_CHECKING:
    from torch import nn

#: after-stack modules that feed every layer (relative position tables), by model type
_SHARED_POSITIONS = {"deberta-v2": ("rel_embeddings", "LayerNorm"), "deberta": ("rel_embeddings",)}


def is_transformers(model: Any) -> bool:
    """A transformers ``PreTrainedModel`` (checked without importing transformers)."""
    tf = sys.modules.get("transformers")
    return tf is not None and isinstance(model, tf.PreTrainedModel)


def _has_attention(module: nn.Module) -> bool:
    return any("attention" in type(m).__name__.lower() for m in module.modules())


def stacks(model: nn.Module) -> list[str]:
    """Paths of the model's layer stacks, in registration order (see the module docstring)."""
    from torch import nn

    found: list[str] = []
    for path, module in model.named_modules():
        if type(module) is not nn.ModuleList or not len(module):
            continue
        if any(path.startswith(p + ".") for p in found):
            continue
        kinds = {type(m) for m in module}
        if len(kinds) == 1 and all(any(True for _ in m.parameters()) and _has_attention(m) for m in module):
            found.append(path)
    return found


def _lists(model: nn.Module) -> str:
    from torch import nn

    seen = [f"{p} ({len(m)} x {type(m[0]).__name__})" for p, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and len(m)]
    return ", ".join(seen[:6]) or "none"


def is_bare(model: nn.Module) -> bool:
    """A base model without a task head (``BertModel``, ``LlamaModel``: what ``AutoModel`` builds)."""
    import transformers

    try:
        return transformers.AutoModel._model_mapping[type(model.config)] is type(model)
    except (KeyError, AttributeError):
        return False


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _tied_head(model: nn.Module, params: dict[str, Any]) -> tuple[str | None, str | None]:
    """(output embedding module path, name of its weight as the model lists it) when that weight
    is shared with another module (the input embeddings); else (path, None)."""
    try:
        out = model.get_output_embeddings()
    except (NotImplementedError, AttributeError):
        return None, None
    if out is None or getattr(out, "weight", None) is None:
        return None, None
    path = next((p for p, m in model.named_modules() if m is out), None)
    name = next((n for n, p in params.items() if p is out.weight), None)
    if path is None or name is None or _under(name, path):
        return path, None
    return path, name


def describe(model: nn.Module) -> Layout:
    """The layout of a transformers model (see the module docstring); :class:`LayoutError` when
    it has no stack of layers."""
    found = stacks(model)
    cls = type(model).__name__
    if not found:
        raise LayoutError(
            f"transformers layout: {cls} has no stack of attention layers that thawkit can lay out "
            f"(ModuleLists found: {_lists(model)}); write a plugin implementing "
            "thawkit_describe_layout for it")
    params = dict(model.named_parameters())
    names = list(params)
    base_prefix = getattr(model, "base_model_prefix", "")
    if not base_prefix or getattr(model, base_prefix, None) is None:
        base_prefix = ""
    bare = is_bare(model)

    def short(path: str) -> str:
        return path[len(base_prefix) + 1:] if base_prefix and path.startswith(base_prefix + ".") else path

    # the head: top-level modules after the last child that holds a stack
    children = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    holder = max(children.index(p.split(".")[0]) for p in found)
    head_modules = [] if bare else children[holder + 1:]
    out_path, tied = _tied_head(model, params)
    head = [n for n in names if any(_under(n, m) for m in head_modules)]
    notes = ["head: none: a base model without a task head; load it with task=... (sequence-classification, "
             "causal-lm, ctc, ...) for one"] if bare else []
    if tied is not None and head_modules:
        head.insert(0, tied)
        notes.append(f"head: {out_path} is tied to {tied.rsplit('.', 1)[0]}: that embedding is the head's "
                     "weight and trains whenever the head trains")
    if not head and head_modules == [] and not bare:
        raise LayoutError(f"transformers layout: {cls} has no module after its layers to use as the "
                          f"head (top-level modules: {', '.join(children)})")
    # layer blocks, and what lies before, between and after the stacks (registration order)
    layer_of: dict[str, str] = {}
    layers: dict[str, list[Block]] = {}
    for path in found:
        for i in range(len(model.get_submodule(path))):
            layer = f"{path}.{i}"
            own = [n for n in names if _under(n, layer)]
            layers.setdefault(path, []).append(Block(short(layer), "block", own, [layer]))
            layer_of.update(dict.fromkeys(own, short(layer)))
    first_in = [min(names.index(n) for n in names if _under(n, p)) for p in found]
    last_in = [max(names.index(n) for n in names if _under(n, p)) for p in found]
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    stable = bool(getattr(getattr(model, "config", None), "do_stable_layer_norm", False))
    stem, neck = [], []
    between: dict[int, list[str]] = {}
    for index, name in enumerate(names):
        if name in layer_of or name in head:
            continue
        module_path = name.rsplit(".", 1)[0]
        sibling_of = next((p for p in found if module_path.rsplit(".", 1)[0] == p.rsplit(".", 1)[0]), None)
        leaf = module_path.rsplit(".", 1)[-1]
        if sibling_of is not None and leaf in _SHARED_POSITIONS.get(model_type, ()):
            stem.append(name)
        elif sibling_of is not None and stable and "norm" in leaf.lower() and index < first_in[0]:
            neck.append(name)
        elif index < first_in[0]:
            stem.append(name)
        elif index > last_in[-1]:
            neck.append(name)
        else:
            k = next(k for k in range(1, len(found)) if last_in[k - 1] < index < first_in[k])
            between.setdefault(k, []).append(name)
    ordered: list[Block] = []
    for k, path in enumerate(found):
        if between.get(k):
            parent = short(path).rsplit(".", 1)[0]
            ordered.append(Block(f"{parent}.input", "block", between[k], sorted(
                {n.rsplit(".", 1)[0] for n in between[k]})))
        ordered += layers[path]
    if len(found) > 1:
        notes.append(f"{len(found)} stacks of layers: " + ", ".join(
            f"{short(p)} ({len(model.get_submodule(p))})" for p in found))
    classifiers = _classifiers(model, head_modules, out_path if tied is not None else None)
    layout = Layout(
        stem=Block("stem", "stem", stem, sorted({n.rsplit(".", 1)[0] for n in stem})) if stem else None,
        blocks=ordered,
        neck=Block("neck", "neck", neck, sorted({n.rsplit(".", 1)[0] for n in neck})) if neck else None,
        head=Block("head", "head", head, head_modules or []),
        classifiers=classifiers,
        source="transformers",
        notes=notes,
    )
    return layout


def _classifiers(model: nn.Module, head_modules: list[str], tied_path: str | None) -> list[str]:
    """The Linear layer(s) producing the logits: those with ``num_labels`` outputs in the head
    modules, else the last Linear there (an LM or CTC head)."""
    from torch import nn

    if tied_path is not None:  # its weight is listed under the embedding's name, which the head holds
        return [tied_path]
    linears = [(p, m) for top in head_modules for p, m in model.get_submodule(top).named_modules(prefix=top)
               if isinstance(m, nn.Linear)]
    n = getattr(getattr(model, "config", None), "num_labels", None)
    hits = [p for p, m in linears if m.out_features == n]
    if hits and (len(hits) == 1 or not linears):
        return hits[-1:]
    return [linears[-1][0]] if linears else []

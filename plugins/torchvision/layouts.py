"""Layouts and head replacement for every torchvision classification family.

Models are recognised by class (``type(model).__mro__``), never by the name they
were loaded under, so a model the user built with ``torchvision.models.resnet50()``
or ``ResNet(Bottleneck, [1, 1, 1, 1])`` is described the same way. Nothing here
imports torch or torchvision at import time.

Conventions (see ``shared/reference/models.md``):

* the final norm that follows the last block (densenet ``norm5``, swin ``norm``,
  vit ``encoder.ln``) joins the last block;
* the *neck* is the pretrained, pre-logits part of the classifier (hidden Linear
  layers of alexnet/vgg/mobilenet_v3, convnext's LayerNorm2d, maxvit's
  LayerNorm + Linear, vit ``heads.pre_logits``) - it is not replaced;
* the *head* is the final classifier plus the auxiliary heads (googlenet
  ``aux1``/``aux2``, inception ``AuxLogits``); ``layout.classifiers`` names the
  final classifier's Linear (or squeezenet's 1x1 Conv2d) and ``layout.aux`` the
  aux classifiers' Linear layers (``aux1.fc2``, ``aux2.fc2``, ``AuxLogits.fc``).

A classifier replaced with ``dropout > 0`` becomes ``Sequential(Dropout, Linear)``
at the same path; describing or replacing again sees through that wrapper.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from thawkit import Layout

#: torchvision class name -> family key. Subclasses (quantizable variants, user
#: subclasses) are recognised through the MRO.
FAMILIES: dict[str, str] = {
    "AlexNet": "alexnet",
    "VGG": "vgg",
    "ConvNeXt": "convnext",
    "DenseNet": "densenet",
    "EfficientNet": "efficientnet",
    "GoogLeNet": "googlenet",
    "Inception3": "inception",
    "MaxVit": "maxvit",
    "MNASNet": "mnasnet",
    "MobileNetV2": "mobilenet_v2",
    "MobileNetV3": "mobilenet_v3",
    "RegNet": "regnet",
    "ResNet": "resnet",
    "ShuffleNetV2": "shufflenet",
    "SqueezeNet": "squeezenet",
    "SwinTransformer": "swin",
    "VisionTransformer": "vit",
}

#: family key -> fnmatch patterns of the builder names in ``torchvision.models``.
FAMILY_MODELS: dict[str, tuple[str, ...]] = {
    "alexnet": ("alexnet",),
    "vgg": ("vgg*",),
    "convnext": ("convnext_*",),
    "densenet": ("densenet*",),
    "efficientnet": ("efficientnet_*",),
    "googlenet": ("googlenet",),
    "inception": ("inception_v3",),
    "maxvit": ("maxvit_*",),
    "mnasnet": ("mnasnet*",),
    "mobilenet_v2": ("mobilenet_v2",),
    "mobilenet_v3": ("mobilenet_v3_*",),
    "regnet": ("regnet_*",),
    "resnet": ("resnet*", "resnext*", "wide_resnet*"),
    "shufflenet": ("shufflenet_v2_*",),
    "squeezenet": ("squeezenet*",),
    "swin": ("swin_*",),
    "vit": ("vit_*",),
}


def family_of(model: nn.Module) -> tuple[str, bool] | None:
    """``(family, exact)`` for a torchvision classification model, else ``None``.

    ``exact`` is True when the model's own class is torchvision's (not a subclass
    defined elsewhere).
    """
    own = type(model)
    for cls in own.__mro__:
        if cls.__module__.startswith("torchvision.models") and cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__], own.__module__.startswith("torchvision.models")
    return None


# --------------------------------------------------------------------- helpers
def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_classifier(module: nn.Module) -> bool:
    from torch import nn

    return isinstance(module, nn.Linear) or (
        isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1))


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _leaf(model: nn.Module, path: str) -> str | None:
    """Path of the classifier Linear/1x1-conv at or under ``path`` (the last with parameters)."""
    mod = _get(model, path)
    while mod is not None and not _is_classifier(mod):
        kids = [(n, c) for n, c in mod.named_children() if _has_params(c)]
        if not kids:
            return None
        name, mod = kids[-1]
        path = f"{path}.{name}"
    return path if mod is not None else None


def _is_wrapper(module: nn.Module) -> bool:
    """``Sequential(Dropout, Linear)`` as built by ``new_classifier(..., dropout>0)``."""
    from torch import nn

    return (isinstance(module, nn.Sequential) and len(module) == 2
            and isinstance(module[0], nn.Dropout) and _is_classifier(module[1]))


def _children(model: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    """``(full_path, module)`` of the children of ``path`` that hold parameters, in order."""
    parent = model.get_submodule(path) if path else model
    prefix = f"{path}." if path else ""
    return [(prefix + n, c) for n, c in parent.named_children() if _has_params(c)]


@dataclass
class Classifier:
    """Where a classifier lives: ``target`` is the path replaced, ``leaf`` the Linear/conv."""

    target: str
    leaf: str


def _classifier_at(model: nn.Module, path: str, container: bool) -> Classifier | None:
    """Locate the classifier.

    ``container=False``: ``path`` is the classifier itself (``fc``), possibly our
    dropout wrapper or a user's Sequential. ``container=True``: ``path`` is a
    Sequential whose last child with parameters is the classifier (``classifier``).
    """
    mod = _get(model, path)
    if mod is None:
        return None
    target = path
    if container and not _is_classifier(mod):
        kids = _children(model, path)
        if not kids:
            return None
        target = kids[-1][0]
    tmod = model.get_submodule(target)
    leaf = _leaf(model, target)
    if leaf is None:
        return None
    if not (_is_classifier(tmod) or _is_wrapper(tmod)):
        target = leaf  # a user's own Sequential head: replace only its last layer
    return Classifier(target, leaf)


@dataclass
class FamilyLayout:
    """Prefixes of one family's layout before they become a :class:`Layout`."""

    stem: list[str]
    blocks: list[tuple[str, list[str]]]
    classifier: Classifier
    neck: list[str] = field(default_factory=list)
    head_extra: list[str] = field(default_factory=list)  # aux modules, whole
    aux: list[Classifier] = field(default_factory=list)
    feeds: str | None = None


# ----------------------------------------------------------------- families
def _seq_features(model, first_block: int = 1, path: str = "features") -> tuple[list[str], list]:
    kids = _children(model, path)
    stem = [p for p, _ in kids[:first_block]]
    blocks = [(p, [p]) for p, _ in kids[first_block:]]
    return stem, blocks


def _alexnet(model):
    from torch import nn

    convs = [p for p, m in _children(model, "features") if isinstance(m, nn.Conv2d)]
    return {"stem": convs[:1], "blocks": [(p, [p]) for p in convs[1:]],
                "head": ("classifier", True), "feeds": "classifier.5"}


def _vgg(model):
    from torch import nn

    feats = model.get_submodule("features")
    stages: list[list[str]] = [[]]
    for name, mod in feats.named_children():
        if _has_params(mod):
            stages[-1].append(f"features.{name}")
        if isinstance(mod, nn.MaxPool2d):
            stages.append([])
    stages = [s for s in stages if s]
    return {"stem": stages[0], "blocks": [(f"stage{i}", s) for i, s in enumerate(stages[1:], 1)],
                "head": ("classifier", True), "feeds": "classifier.5"}


def _convnext(model):
    stem, blocks = _seq_features(model)
    return {"stem": stem, "blocks": blocks, "head": ("classifier", True), "feeds": "classifier.1"}


def _densenet(model):
    kids = _children(model, "features")
    stem, blocks = [], []
    for path, _ in kids:
        short = path.rsplit(".", 1)[-1]
        if short.startswith("denseblock"):
            blocks.append((short, [path]))
        elif blocks:
            blocks[-1][1].append(path)  # transition_i, and norm5 after the last block
        else:
            stem.append(path)
    return {"stem": stem, "blocks": blocks, "head": ("classifier", False), "feeds": None}


def _efficientnet(model):
    stem, blocks = _seq_features(model)
    return {"stem": stem, "blocks": blocks, "head": ("classifier", True), "feeds": "classifier.0"}


def _googlenet(model):
    stem = [p for p in ("conv1", "conv2", "conv3") if _get(model, p) is not None]
    blocks = [(p, [p]) for p, _ in _children(model, "") if p.startswith("inception")]
    aux = [a for a in ("aux1", "aux2") if _get(model, a) is not None]
    return {"stem": stem, "blocks": blocks, "head": ("fc", False),
            "aux": [(a, f"{a}.fc2") for a in aux], "feeds": "dropout"}


def _inception(model):
    kids = [p for p, _ in _children(model, "")]
    stem = [p for p in kids if p.startswith("Conv2d_")]
    blocks = [(p, [p]) for p in kids if p.startswith("Mixed_")]
    aux = [("AuxLogits", "AuxLogits.fc")] if _get(model, "AuxLogits") is not None else []
    return {"stem": stem, "blocks": blocks, "head": ("fc", False), "aux": aux, "feeds": "dropout"}


def _maxvit(model):
    return {"stem": ["stem"], "blocks": [(p, [p]) for p, _ in _children(model, "blocks")],
                "head": ("classifier", True), "feeds": "classifier.4"}


def _mnasnet(model):
    from torch import nn

    kids = _children(model, "layers")
    stacks = [i for i, (_, m) in enumerate(kids) if isinstance(m, nn.Sequential)]
    if not stacks:  # not the stock layout: one block per child
        return {"stem": [kids[0][0]], "blocks": [(p, [p]) for p, _ in kids[1:]],
                    "head": ("classifier", True), "feeds": "classifier.0"}
    first, last = stacks[0], stacks[-1]
    blocks = [(p, [p]) for p, _ in kids[first:last + 1]]
    tail = [p for p, _ in kids[last + 1:]]
    if tail:  # the final 1x1 conv + BN
        blocks.append((tail[0], tail))
    return {"stem": [p for p, _ in kids[:first]], "blocks": blocks,
                "head": ("classifier", True), "feeds": "classifier.0"}


def _mobilenet_v2(model):
    stem, blocks = _seq_features(model)
    return {"stem": stem, "blocks": blocks, "head": ("classifier", True), "feeds": "classifier.0"}


def _mobilenet_v3(model):
    stem, blocks = _seq_features(model)
    return {"stem": stem, "blocks": blocks, "head": ("classifier", True), "feeds": "classifier.2"}


def _regnet(model):
    return {"stem": ["stem"], "blocks": [(p, [p]) for p, _ in _children(model, "trunk_output")],
                "head": ("fc", False), "feeds": "avgpool"}


def _resnet(model):
    return {"stem": ["conv1", "bn1"], "blocks": [(p, [p]) for p, _ in _children(model, "")
                                               if p.startswith("layer")],
                "head": ("fc", False), "feeds": "avgpool"}


def _shufflenet(model):
    kids = [p for p, _ in _children(model, "") if p != "fc"]
    return {"stem": kids[:1], "blocks": [(p, [p]) for p in kids[1:]], "head": ("fc", False),
            "feeds": None}


def _squeezenet(model):
    kids = _children(model, "features")
    fires = [i for i, (_, m) in enumerate(kids) if type(m).__name__ == "Fire"]
    first = fires[0] if fires else 1
    return {"stem": [p for p, _ in kids[:first]], "blocks": [(p, [p]) for p, _ in kids[first:]],
                "head": ("classifier", True), "feeds": "classifier.0"}


def _swin(model):
    stem, blocks = _seq_features(model)
    if _get(model, "norm") is not None and blocks:
        blocks[-1][1].append("norm")
    return {"stem": stem, "blocks": blocks, "head": ("head", False), "feeds": "flatten"}


def _vit(model):
    # encoder.dropout acts on the embedded patches before the first layer: the stem's part
    stem = ["conv_proj", "class_token", "encoder.pos_embedding", "encoder.dropout"]
    blocks = [(p.rsplit(".", 1)[-1], [p]) for p, _ in _children(model, "encoder.layers")]
    if blocks:
        blocks[-1][1].append("encoder.ln")
    return {"stem": stem, "blocks": blocks, "head": ("heads", True), "feeds": None}


_BUILDERS = {
    "alexnet": _alexnet, "vgg": _vgg, "convnext": _convnext, "densenet": _densenet,
    "efficientnet": _efficientnet, "googlenet": _googlenet, "inception": _inception,
    "maxvit": _maxvit, "mnasnet": _mnasnet, "mobilenet_v2": _mobilenet_v2,
    "mobilenet_v3": _mobilenet_v3, "regnet": _regnet, "resnet": _resnet,
    "shufflenet": _shufflenet, "squeezenet": _squeezenet, "swin": _swin, "vit": _vit,
}


def family_layout(model: nn.Module, family: str) -> FamilyLayout | None:
    """The prefixes of ``model``'s layout, or ``None`` when its classifier cannot be found."""
    raw = _BUILDERS[family](model)
    path, container = raw["head"]
    clf = _classifier_at(model, path, container)
    if clf is None:
        return None
    # the classifier's container (vgg's classifier Sequential) or a user's own head
    # Sequential in place of ``fc``: its other layers are the neck
    neck = [path] if container or clf.target != path else []
    aux, extra = [], []
    for module, aux_path in raw.get("aux", []):
        a = _classifier_at(model, aux_path, False)
        extra.append(module)
        if a is not None:
            aux.append(a)
    return FamilyLayout(stem=raw["stem"], blocks=raw["blocks"], classifier=clf, neck=neck,
                        head_extra=extra, aux=aux, feeds=raw.get("feeds"))


def describe(model: nn.Module) -> Layout | None:
    """The layout of a torchvision classification model, or ``None`` if it is not one."""
    from thawkit import layout_from_prefixes

    fam = family_of(model)
    if fam is None:
        return None
    family, exact = fam
    spec = family_layout(model, family)
    if spec is None:
        return None
    layout = layout_from_prefixes(
        model,
        stem=spec.stem,
        blocks=spec.blocks,
        neck=spec.neck or None,
        head=[spec.classifier.leaf] + spec.head_extra,
        classifiers=[spec.classifier.leaf],
        aux=[a.leaf for a in spec.aux],
        feeds=spec.feeds if spec.feeds and _get(model, spec.feeds) is not None else None,
        source="torchvision",
    )
    if layout.neck is not None and not layout.neck.params:
        layout.neck = None
    if not exact:  # a user's subclass may add parameters we do not know: let others try
        from thawkit import LayoutError

        try:
            layout.validate(model)
        except LayoutError:
            return None
    return layout


def replace_head(model: nn.Module, num_classes: int, dropout: float = 0.0,
                 keep_aux: bool = False) -> nn.Module | None:
    """Replace the classifier (and aux classifiers, or remove them) of a torchvision model.

    The new classifier is built like the old one (Linear, or squeezenet's 1x1 Conv2d;
    maxvit's bias-free Linear stays bias-free) on its device and dtype, preceded by a
    Dropout when ``dropout > 0``. Aux classifiers are replaced without extra dropout
    (they apply their own). Returns ``None`` for models that are not torchvision's.
    """
    from thawkit import new_classifier, set_submodule

    fam = family_of(model)
    if fam is None:
        return None
    family = fam[0]
    spec = family_layout(model, family)
    if spec is None:
        return None
    targets = [(spec.classifier, dropout)]
    if family in ("googlenet", "inception"):
        if keep_aux:
            targets += [(a, 0.0) for a in spec.aux]
        else:
            remove_aux(model)
    for clf, p in targets:
        new = new_classifier(model.get_submodule(clf.leaf), num_classes, p)
        set_submodule(model, clf.target, new)
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes
    return model


def remove_aux(model: nn.Module) -> None:
    """Drop googlenet's / inception's auxiliary heads so train-mode forward returns a tensor."""
    family = (family_of(model) or ("", False))[0]
    if family == "googlenet":
        model.aux1 = None
        model.aux2 = None
        model.aux_logits = False
    elif family == "inception":
        model.AuxLogits = None
        model.aux_logits = False


def head_prefixes(model: nn.Module) -> list[str]:
    """Module paths whose keys may be dropped when a checkpoint has another class count."""
    fam = family_of(model)
    if fam is None:
        return []
    spec = family_layout(model, fam[0])
    if spec is None:
        return []
    return [spec.classifier.leaf] + [a.leaf for a in spec.aux]


def no_weight_decay(model: nn.Module) -> list[str] | None:
    """Position embeddings, class token, relative position tables and swin-v2 logit scales."""
    fam = family_of(model)
    if fam is None:
        return None
    family = fam[0]
    names = [n for n, _ in model.named_parameters()]
    if family == "vit":
        return [n for n in names if n in ("class_token", "encoder.pos_embedding")]
    if family in ("swin", "maxvit"):
        return [n for n in names if n.endswith(("relative_position_bias_table", ".logit_scale"))]
    return None

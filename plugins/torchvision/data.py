"""Data configs of torchvision models, from their weights' ``transforms()`` metadata.

``w.transforms()`` only builds an ``ImageClassification`` preset (crop size, resize
size, mean, std, interpolation); nothing is downloaded.

* Loaded with published weights: that enum's transforms.
* Loaded without weights or from a local file: the model's ``DEFAULT`` weights'
  transforms (the file most likely holds those weights fine-tuned, and they give
  e.g. 299 px for inception_v3).
* Built by hand (no spec): the model is matched to a builder by its parameter
  shapes (ignoring the classifier), else to its family when all of the family agree.

A torchvision ViT only accepts ``model.image_size``; when the chosen weights crop to
another size (vit_h_14's DEFAULT is SWAG at 518 px, but ``vit_h_14()`` is 224), the
model's weights with that crop size are used instead.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from . import layouts as tvl

if TYPE_CHECKING:
    from torch import nn

    from thawkit import BackboneSpec, DataConfig


def _qual(w: Any) -> str:
    return f"{type(w).__name__}.{w.name}"


def _transforms(w: Any) -> dict[str, Any] | None:
    t = w.transforms()
    crop, resize = getattr(t, "crop_size", None), getattr(t, "resize_size", None)
    if not crop or not resize:
        return None
    interp = getattr(t, "interpolation", None)
    return {"crop": int(crop[0]), "resize": int(resize[0]), "mean": tuple(float(x) for x in t.mean),
            "std": tuple(float(x) for x in t.std),
            "interpolation": str(getattr(interp, "value", interp or "bilinear")).lower()}


def _config(tf: dict[str, Any], origin: str) -> DataConfig:
    from thawkit import DataConfig

    return DataConfig(input_size=(3, tf["crop"], tf["crop"]), mean=tf["mean"], std=tf["std"],
                      interpolation=tf["interpolation"], crop_pct=tf["crop"] / tf["resize"],
                      resize_size=tf["resize"], origin=origin)


def _fit_image_size(model: nn.Module, name: str | None, w: Any, tf: dict[str, Any],
                    origin: str) -> tuple[dict[str, Any], str]:
    """A ViT takes exactly ``model.image_size``: pick weights with that crop, or rescale."""
    size = getattr(model, "image_size", None)
    if tvl.family_of(model)[0] != "vit" or not isinstance(size, int) or tf["crop"] == size:
        return tf, origin
    if name is not None:
        import torchvision.models as tvm

        for other in tvm.get_model_weights(name):
            otf = _transforms(other)
            if otf is not None and otf["crop"] == size:
                return otf, (f"torchvision {_qual(other)} transforms (the model takes {size} px, "
                             f"{_qual(w)} is for {tf['crop']} px)")
    tf = dict(tf, crop=size, resize=max(size, round(size * tf["resize"] / tf["crop"])))
    return tf, f"{origin}, resized to the model's image_size {size}"


@functools.cache
def _signature_of(name: str) -> frozenset:
    import warnings

    from . import build

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(name, "meta")
    return _signature(model)


def _signature(model: nn.Module) -> frozenset:
    """Parameter names and shapes outside the classifier and aux heads."""
    skip = tvl.head_prefixes(model) + ["aux1", "aux2", "AuxLogits"]
    return frozenset((n, tuple(p.shape)) for n, p in model.named_parameters()
                     if not any(n == s or n.startswith(s + ".") for s in skip))


def _candidates(family: str) -> list[str]:
    import fnmatch

    from . import classification_models

    return [n for n in classification_models()
            if any(fnmatch.fnmatchcase(n, pat) for pat in tvl.FAMILY_MODELS[family])]


def infer_name(model: nn.Module) -> str | None:
    """The builder whose architecture ``model`` has (classifier aside), if exactly one fits."""
    fam = tvl.family_of(model)
    if fam is None:
        return None
    own = _signature(model)
    hits = [n for n in _candidates(fam[0]) if _signature_of(n) == own]
    return hits[0] if len(hits) == 1 else None


def data_config(model: nn.Module, spec: BackboneSpec | None) -> DataConfig | None:
    import torchvision.models as tvm

    from . import classification_models, resolve_weights

    fam = tvl.family_of(model)
    if fam is None:
        return None
    family = fam[0]
    name = spec.name if spec is not None and spec.source == "torchvision" else None
    if name is not None and name not in classification_models():
        name = None
    if name is not None:
        from thawkit import ConfigError

        try:
            kind, w = resolve_weights(name, spec.options.get("weights"))
        except ConfigError:  # an option the loader would have refused: use DEFAULT
            kind, w = "none", None
        if kind == "enum":
            origin = f"torchvision {_qual(w)} transforms"
        else:
            default = tvm.get_model_weights(name).DEFAULT
            how = (f"weights from {str(w)!r}" if kind == "file" else "built without weights")
            origin = (f"torchvision {name} DEFAULT weights ({_qual(default)}) transforms; "
                      f"model {how}")
            w = default
    else:
        name = infer_name(model)
        if name is None:
            return _family_config(model, family)
        w = tvm.get_model_weights(name).DEFAULT
        origin = (f"torchvision {name} DEFAULT weights ({_qual(w)}) transforms; "
                  f"model recognised as {name}")
    tf = _transforms(w)
    if tf is None:
        return None
    tf, origin = _fit_image_size(model, name, w, tf, origin)
    return _config(tf, origin)


def _family_config(model: nn.Module, family: str) -> DataConfig | None:
    """A hand-built variant: the family's transforms when every family member agrees."""
    import torchvision.models as tvm

    names = _candidates(family)
    tfs = [_transforms(tvm.get_model_weights(n).DEFAULT) for n in names]
    if tfs and all(t is not None and t == tfs[0] for t in tfs):
        tf = tfs[0]
        origin = f"torchvision {family} DEFAULT weights transforms (shared by {', '.join(names)})"
        tf, origin = _fit_image_size(model, None, None, tf, origin)
        return _config(tf, origin)
    size = getattr(model, "image_size", None)
    if family == "vit" and isinstance(size, int):
        from thawkit import DataConfig

        return DataConfig(input_size=(3, size, size), origin=f"torchvision ViT image_size {size}, "
                          "ImageNet statistics")
    return None

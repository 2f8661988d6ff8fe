"""The models the kit checks plugins on: :class:`ModelCase`, and small default ones.

The defaults cover the shapes a strategy meets: a BatchNorm CNN (the generic layout),
a LayerNorm network with a neck (pre-logits layers), and torchvision's ResNet-18 (a
plugin's layout) at 32 px. Each builds in milliseconds and trains a step on the CPU.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import torch
    from torch import nn

    from thawkit import ThawkitPluginManager


@dataclass
class ModelCase:
    """A model to check on: ``build()`` returns a fresh one each call.

    ``input_size`` (without the batch dimension) lets the kit run it forward on random
    tensors of that size; ``None`` asks the plugins (``thawkit_example_input``: token ids, a
    waveform...), else takes images of ``thawkit.data_config``'s size (``infer=False``: the
    model is not run, as for a model built on the meta device). ``num_classes``: the new
    head's classes, or ``None`` to keep the model's own head (its head is then not replaced).
    """

    name: str
    build: Callable[[], nn.Module]
    input_size: tuple[int, ...] | None = None
    num_classes: int | None = 3
    infer: bool = True

    def input(self, model: nn.Module, pm: ThawkitPluginManager, batch: int = 2) -> Any:
        """A batch for :func:`call`: the same values every time (seeded), torch's global
        random state left as it was."""
        import thawkit
        import torch

        if self.input_size is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                answer = pm.hook.thawkit_example_input(model=model, spec=thawkit.spec_of(model),
                                                       batch=batch)
            if answer is not None:
                return answer
        size = self.input_size or tuple(thawkit.data_config(model, pm=pm).input_size)
        return torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))


def call(model: nn.Module, x: Any) -> Any:
    """``model`` on a batch of :meth:`ModelCase.input`: ``model(**x)`` for a mapping of inputs
    (keyword arguments), else ``model(x)``."""
    return model(**x) if isinstance(x, Mapping) else model(x)


ModelLike = Union[ModelCase, str, "nn.Module", Callable[[], "nn.Module"]]


def as_case(model: ModelLike, pm: ThawkitPluginManager | None = None) -> ModelCase:
    """A :class:`ModelCase` from a case, a ``"source:name"`` spec, a module (copied for each
    use) or a function building one."""
    import thawkit
    from torch import nn

    if isinstance(model, ModelCase):
        return model
    if isinstance(model, str):
        return ModelCase(model, lambda: thawkit.load_backbone(model, pm=pm))
    if isinstance(model, nn.Module):
        return ModelCase(type(model).__name__, lambda: copy.deepcopy(model))
    if callable(model):
        return ModelCase(getattr(model, "__name__", repr(model)), model)
    raise TypeError(f"a model to check is a ModelCase, a 'source:name' spec, an nn.Module or a "
                    f"function returning one, not {model!r}")


def tiny_cnn() -> nn.Module:
    """stem, three conv blocks with BatchNorm, a linear head: the generic layout."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU())

    class TinyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = block(3, 8)
            self.layer1, self.layer2, self.layer3 = block(8, 8), block(8, 16), block(16, 16)
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.layer3(self.layer2(self.layer1(self.stem(x))))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    return TinyCNN()


def tiny_neck() -> nn.Module:
    """Linear blocks with LayerNorm and a classifier ``Sequential(Linear, GELU, Linear)``,
    whose first layer is the neck."""
    import torch
    from torch import nn

    class TinyNeck(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(12, 16)
            self.layer1 = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.GELU())
            self.layer2 = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.GELU())
            self.classifier = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.layer2(self.layer1(self.stem(x))))

    torch.manual_seed(0)
    return TinyNeck()


def resnet18() -> nn.Module:
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def default_models() -> list[ModelCase]:
    """The models every strategy is checked on unless told otherwise."""
    return [ModelCase("tiny-cnn", tiny_cnn, (3, 16, 16)), ModelCase("tiny-neck", tiny_neck, (12,)),
            ModelCase("torchvision:resnet18", resnet18, (3, 32, 32))]


def to_meta(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device in which shared (tied) parameters stay shared.

    ``model.to("meta")`` would untie them: it makes a new parameter for each module holding
    one, so a language model's output layer would no longer be its input embedding.
    """
    import torch

    meta = copy.deepcopy(model)  # keeps the sharing
    moved: dict[int, torch.nn.Parameter] = {}
    for module in meta.modules():
        for key, param in list(module.named_parameters(recurse=False)):
            if id(param) not in moved:
                moved[id(param)] = torch.nn.Parameter(param.detach().to("meta"), param.requires_grad)
            setattr(module, key, moved[id(param)])
        for key, buffer in list(module.named_buffers(recurse=False)):
            setattr(module, key, buffer.to("meta"))
    return meta


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Every parameter and buffer, cloned, with ``requires_grad`` and the training flags."""
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
            "grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "training": {n: m.training for n, m in model.named_modules()}}


def changed(before: dict[str, Any], model: nn.Module) -> list[str]:
    """What differs from ``before``: values, ``requires_grad``, training flags, names."""
    after = snapshot(model)
    out = []
    for kind in ("params", "buffers"):
        if list(before[kind]) != list(after[kind]):
            out.append(f"{kind} added or removed")
            continue
        out += [n for n, t in before[kind].items()
                if t.device.type != "meta" and not same(t, after[kind][n])]
    out += [f"{n}.requires_grad" for n, g in before["grad"].items() if after["grad"].get(n) != g]
    out += [f"{n or 'model'}.training" for n, t in before["training"].items()
            if after["training"].get(n) != t]
    return out


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return a.is_meta or b.is_meta or bool(torch.equal(a, b))  # meta tensors hold no values


def first_tensor(output: Any) -> torch.Tensor:
    """The logits of a forward's output (a tensor, or the first tensor of a tuple or dict)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    items: Sequence[Any] = list(output.values()) if isinstance(output, dict) else list(output)
    return next(first_tensor(o) for o in items if isinstance(o, (torch.Tensor, tuple, list, dict)))

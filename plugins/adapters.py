"""Adapters as strategies, through PEFT: ``lora``, ``loha`` and ``lokr`` (the extra ``thawkit[peft]``).

The strategy adds PEFT's adapter layers to the chosen layers of the frozen model
(:meth:`Strategy.prepare`, through ``peft.inject_adapter_in_model``), then trains the adapters
and the new head; everything else stays frozen under the norm policy. Layers are chosen through
the model's layout: ``targets`` (``attention``, ``mlp``, ``all-linear``, ``conv`` or ``auto``)
within ``blocks`` (the last N blocks, or block names). thawkit owns the head: it is a plain
layer of the model, trained and saved with it (PEFT's ``modules_to_save`` is not used).

After injection the adapters are ordinary parameters of the model (``layer4.0.conv1.lora_A.
default.weight``; the base weight becomes ``layer4.0.conv1.base_layer.weight``), so
checkpoints, resume and predict work as for any strategy: the recipe's strategy injects the
same adapters before the weights are loaded. :func:`merge_adapters` folds them into the base
layers (PEFT's merge), leaving the plain architecture's layer names; :func:`save_adapters`
writes them in PEFT's format.

Only layers the forward pass calls get adapters (:func:`called_layers`). PEFT's LoRA for a
whole ``nn.MultiheadAttention`` is not used: it adds the update to the frozen weights and
subtracts it at every forward, and the float rounding changes them (frozen means bit-identical).
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from thawkit import ConfigError, Phase, Strategy, StrategyParams, hookimpl, spec_of

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

EXTRA = "pip install 'thawkit[peft]'"
ADAPTER = "default"                    # PEFT's adapter name: thawkit adds one adapter per model
_MARK = "_thawkit_adapters"            # set on an injected model: strategy, params, weight decay
_ATTENTION = ("attn", "attention")
_MLP = ("mlp", "ffn", "feed_forward", "feedforward")

Targets = Literal["auto", "attention", "mlp", "all-linear", "conv"]


def peft_installed() -> bool:
    return importlib.util.find_spec("peft") is not None


def _peft(strategy: str) -> Any:
    if not peft_installed():
        raise ConfigError(f"strategy {strategy!r} adds adapters through PEFT, which is not "
                          f"installed: {EXTRA}")
    import peft

    return peft


class AdapterParams(StrategyParams):
    rank: int = Field(8, ge=1, description="Rank of each adapter.")
    alpha: float = Field(16.0, gt=0, description="Scaling: adapters are scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout inside the adapters while training "
                           "(lora: on the adapter's input; loha, lokr: on its rank dimension).")
    targets: Targets = Field("auto", description="Which layers of the chosen blocks get adapters: "
                             "attention, mlp, all-linear, conv, or auto (attention if there is "
                             "any, else all-linear, else conv).")
    blocks: int | list[str] | None = Field(None, description="The last N blocks, or block names "
                                           "(`thawkit describe`); default: every block.")
    adapter_weight_decay: bool = Field(False, description="Weight-decay the adapters' weights "
                                       "(default: no weight decay on adapters).")

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: int | list[str] | None) -> int | list[str] | None:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"the number of blocks must be at least 1, got {v}")
        if isinstance(v, list) and not v:
            raise ValueError("name at least one block, or leave blocks out for every block")
        return v


# ------------------------------------------------------------------ choosing layers
def model_name(model: nn.Module) -> str:
    spec = spec_of(model)
    return str(spec) if spec is not None else type(model).__name__


def chosen_blocks(layout: Any, blocks: int | list[str] | None) -> list[Any]:
    """The layout's blocks that get adapters: the last N of ``layout.blocks``, or those named."""
    if blocks is None:
        return list(layout.blocks)
    if isinstance(blocks, int):
        if blocks > len(layout.blocks):
            raise ConfigError(f"strategy.blocks: {blocks} is more than the {len(layout.blocks)} blocks "
                              f"of this model ({', '.join(b.name for b in layout.blocks)})")
        return list(layout.blocks[-blocks:])
    out = []
    for name in blocks:
        block = layout.block(name)
        if block.role == "head":
            raise ConfigError("strategy.blocks: the head trains whole; name backbone blocks")
        out.append(block)
    return out


def _role(path: str) -> str:
    """``attention`` or ``mlp``: the deepest part of the path that names one, else ``mlp``."""
    for part in reversed(path.lower().split(".")):
        if any(k in part for k in _ATTENTION):
            return "attention"
        if any(k in part for k in _MLP):
            return "mlp"
    return "mlp"


def _is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections): a linear layer with its weight transposed,
    which PEFT adapts like a Linear."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers.")


def candidate_layers(model: nn.Module, layout: Any, blocks: list[Any]) -> dict[str, list[str]]:
    """Module paths per target kind within ``blocks``: ``attention`` (linear layers under an
    attention module), ``mlp`` (the other linear layers) and ``conv`` (2-D convolutions without
    groups)."""
    from torch import nn

    block_of = layout.block_of()
    names = {b.name for b in blocks}
    out: dict[str, list[str]] = {"attention": [], "mlp": [], "conv": []}
    mha = [p for p, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for path, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if not own or block_of.get(f"{path}.{own[0]}" if path else own[0]) not in names:
            continue
        if isinstance(module, nn.Linear) or _is_hf_conv1d(module):
            in_mha = any(path.startswith(p + ".") for p in mha)
            out["attention" if in_mha or _role(path) == "attention" else "mlp"].append(path)
        elif isinstance(module, nn.Conv2d) and module.groups == 1:
            out["conv"].append(path)
    return out


def called_layers(model: nn.Module, paths: list[str]) -> set[str] | None:
    """Which of ``paths`` the model's forward calls, from one forward pass in eval mode on zeros
    of the input size the model expects (on the meta device for a meta model); ``None`` when that
    forward fails. A layer whose weight the forward uses directly (``nn.MultiheadAttention``'s
    ``out_proj``, torchvision's Swin attention) is not called, and an adapter there would not act."""
    import torch

    from thawkit import data_config

    called: set[str] = set()
    handles = [model.get_submodule(p).register_forward_pre_hook(
        lambda m, args, p=p: called.add(p)) for p in paths]
    modes = {m: m.training for m in model.modules()}
    first = next(model.parameters())
    try:
        x = torch.zeros(1, *data_config(model).input_size, device=first.device, dtype=first.dtype)
        model.eval()
        with torch.no_grad():
            model(x)
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return called


def resolve_targets(model: nn.Module, layout: Any, params: AdapterParams) -> list[str]:
    """The full module names that get adapters (PEFT's ``target_modules``)."""
    blocks = chosen_blocks(layout, params.blocks)
    found = candidate_layers(model, layout, blocks)
    called = called_layers(model, [p for paths in found.values() for p in paths])
    bypassed = {k: [p for p in v if p not in called] for k, v in found.items()} if called is not None \
        else dict.fromkeys(found, [])
    found = {k: [p for p in v if p not in bypassed[k]] for k, v in found.items()}
    found["all-linear"] = found["attention"] + found["mlp"]
    bypassed["all-linear"] = bypassed["attention"] + bypassed["mlp"]
    choice = params.targets
    if choice == "auto":
        choice = next((k for k in ("attention", "all-linear", "conv") if found[k]), "attention")
    targets = found[choice]
    if not targets:
        have = ", ".join(f"{k} ({len(v)})" for k, v in found.items() if v and k != "all-linear")
        skipped = bypassed[choice]
        raise ConfigError(
            f"strategy.targets: {params.targets!r} matches no layer of {model_name(model)} in "
            f"blocks {', '.join(b.name for b in blocks)}; "
            + (f"they have {have}" if have else "they have no linear or convolution layers")
            + (f" ({len(skipped)} {choice} layers such as {skipped[0]} are not called by the "
               "forward pass, which uses their weights directly, as nn.MultiheadAttention does: "
               "an adapter there would not act)" if skipped else "")
            + "; choose another targets or blocks")
    return sorted(targets)


# ------------------------------------------------------------------ the adapters of a model
def adapter_layers(model: nn.Module) -> dict[str, Any]:
    """Module path -> PEFT adapter layer (``BaseTunerLayer``), for every adapter in ``model``."""
    if not peft_installed() or not any(hasattr(m, "base_layer") for m in model.modules()):
        return {}
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {p: m for p, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def adapter_params(model: nn.Module) -> dict[str, list[str]]:
    """Module path -> the names of its adapter's own parameters (not the base layer's)."""
    out = {}
    for path, layer in adapter_layers(model).items():
        own = [f"{path}.{n}" for n, _ in layer.named_parameters()
               if n.split(".")[0] in layer.adapter_layer_names]
        if own:
            out[path] = own
    return out


def _adapter_names() -> set[str]:
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    return {n for cls in (LoraLayer, LoHaLayer, LoKrLayer) for n in cls.adapter_layer_names}


def is_adapter_param(name: str) -> bool:
    """Whether ``name`` is a parameter of a PEFT adapter (``...lora_A.default.weight``)."""
    return bool(set(name.split(".")) & _adapter_names())


# ------------------------------------------------------------------ the strategies
class AdapterStrategy(Strategy):
    """Common part of the PEFT adapter strategies; subclasses build PEFT's config."""

    Params = AdapterParams
    params: AdapterParams

    def __init__(self, params: StrategyParams | None = None) -> None:
        _peft(self.name)
        super().__init__(params)

    #: PEFT's config class, and its names for alpha and dropout
    config: tuple[str, str, str] = ("LoHaConfig", "alpha", "rank_dropout")

    def peft_config(self, targets: list[str]) -> Any:
        import peft

        cls, alpha, dropout = self.config
        p = self.params
        return getattr(peft, cls)(r=p.rank, target_modules=targets,
                                  **{alpha: p.alpha, dropout: p.dropout})

    def _mark(self) -> dict[str, Any]:
        return {"strategy": self.name, "params": self.params.model_dump(mode="json")}

    def prepare(self, model: nn.Module, layout: Any) -> nn.Module | None:
        peft = _peft(self.name)
        mark = getattr(model, _MARK, None)
        if mark == self._mark():
            return None                # already has exactly these adapters
        if mark is not None or adapter_layers(model):
            raise ConfigError(f"strategy {self.name!r}: {model_name(model)} already has PEFT "
                              "adapters; adapt a model without them")
        targets = resolve_targets(model, layout, self.params)
        conv1d = [t for t in targets if _is_hf_conv1d(model.get_submodule(t))]
        if conv1d and self.name != "lora":
            raise ConfigError(f"strategy {self.name!r}: PEFT's {self.name} does not adapt transformers' "
                              f"Conv1D layers ({', '.join(conv1d[:3])}, GPT-2's projections); use "
                              "strategy 'lora'")
        peft.inject_adapter_in_model(self.peft_config(targets), model, adapter_name=ADAPTER)
        setattr(model, _MARK, self._mark())
        return model

    def phases(self, layout, model):
        adapters = [p for names in adapter_params(model).values() for p in names]
        if not adapters:
            raise ConfigError(f"strategy {self.name!r}: {model_name(model)} has no adapters; "
                              "thawkit.adapt() adds them (Strategy.prepare)")
        return [Phase(0, [*adapters, *layout.head.params], f"{self.name} adapters + head")]

    def describe(self, model):
        named = model.named_parameters()
        numel = {n: p.numel() for n, p in named}
        rows, layers = [], adapter_layers(model)
        for path, names in adapter_params(model).items():
            base = layers[path].get_base_layer()
            rows.append({"module": path, "kind": f"{self.name} {type(base).__name__}",
                         "params": sum(numel[n] for n in names)})
        total = sum(r["params"] for r in rows)
        p = self.params
        lines = [f"{len(rows)} {self.name} adapters (rank {p.rank}, alpha {p.alpha:g}), "
                 f"{total:,} parameters:"]
        width = max((len(r["module"]) for r in rows), default=0)
        kind = max((len(r["kind"]) for r in rows), default=0)
        lines += [f"  {r['module']:<{width}}  {r['kind']:<{kind}}  {r['params']:>9,}" for r in rows]
        return lines, {"adapters": rows, "adapter_params": total}

    def group_of(self, param: str) -> str | None:
        return self.name if is_adapter_param(param) else None


class LoRA(AdapterStrategy):
    name = "lora"
    description = "LoRA adapters (PEFT) on the chosen layers, plus the head; the base stays frozen."
    config = ("LoraConfig", "lora_alpha", "lora_dropout")


class LoHa(AdapterStrategy):
    name = "loha"
    description = ("LoHa adapters (PEFT, Hadamard product of low-rank pairs) on the chosen layers, "
                   "plus the head.")


class LoKr(AdapterStrategy):
    name = "lokr"
    description = "LoKr adapters (PEFT, Kronecker product) on the chosen layers, plus the head."
    config = ("LoKrConfig", "alpha", "rank_dropout")


STRATEGIES = (LoRA, LoHa, LoKr)


# ------------------------------------------------------------------ merge and save
def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer (PEFT's merge) and put the base layer back in its
    place, in place: the model then has the plain architecture's layers and parameter names, and
    gives the same outputs (within float rounding). Returns ``model``."""
    layers = adapter_layers(model)
    # outermost adapter layers only: an inner one (LoRA's nn.MultiheadAttention holds one on its
    # out_proj) is merged by the outer one's unload
    outer = [p for p in layers if not any(p.startswith(q + ".") for q in layers)]
    for path in outer:
        layer = layers[path]
        if hasattr(layer, "unload_and_optionally_merge_module"):
            plain = layer.unload_and_optionally_merge_module(merge=True, safe_merge=True,
                                                             adapter_names=None)
        else:
            layer.merge(safe_merge=True)
            plain = layer.get_base_layer()
        parent, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, plain)
    for attr in (_MARK, "peft_config"):
        if attr in vars(model):
            delattr(model, attr)
    return model


def save_adapters(model: nn.Module, directory: str | Path, *, base_model: str | None = None) -> list[Path]:
    """Write the adapters in PEFT's format: ``adapter_model.safetensors`` and
    ``adapter_config.json`` in ``directory`` (``peft.PeftModel.from_pretrained(base, directory)``
    loads them onto the base model). The head is not part of it. Returns the files written."""
    from pathlib import Path

    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config = getattr(model, "peft_config", {}).get(ADAPTER)
    if config is None or not adapter_layers(model):
        raise ConfigError(f"{model_name(model)} has no PEFT adapters to save")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    weights = directory / "adapter_model.safetensors"
    save_file({f"base_model.model.{k}": v.detach().contiguous().cpu() for k, v in state.items()},
              str(weights), metadata={"format": "pt"})
    config.base_model_name_or_path = base_model
    config.inference_mode = True
    config.save_pretrained(str(directory))
    return [weights, directory / "adapter_config.json"]


@hookimpl
def thawkit_register_strategies(register):
    for cls in STRATEGIES:
        if not peft_installed():
            cls = type(cls.__name__, (cls,), {"description": f"{cls.description} Needs: {EXTRA}"})
        register(cls)


@hookimpl
def thawkit_no_weight_decay(model):
    mark = getattr(model, _MARK, None)
    if mark is None or mark["params"].get("adapter_weight_decay"):
        return None
    return [n for names in adapter_params(model).values() for n in names]

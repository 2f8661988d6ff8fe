"""A complete third-party plugin: a tiny model zoo that implements every thawkit hook.

Each ``# [hook]`` region below is the example of that hook in the hook reference,
docs/hooks.md (a test keeps the two identical). Run it to see the hooks work together::

    python examples/tiny_zoo.py

or load it into the command line: ``thawkit -p examples/tiny_zoo.py strategies``.
Packaged, it would declare ``[project.entry-points.thawkit] tinyzoo = "tiny_zoo"``.
"""
import fnmatch
import math
import sys
import tomllib
from dataclasses import dataclass

import torch
from pydantic import BaseModel, Field
from torch import nn
from torch.utils.data import TensorDataset

import thawkit
from thawkit import ForwardStep, layout_from_prefixes, split_sequential
from thawkit.plugins.split import frozen_prefix
from thawkit.plugins.train.readers import Reader, Splits, keyed_loaders
from thawkit.plugins.train.schedules import schedule_registry


class TinyNet(nn.Module):
    """stem -> stages -> global average pool -> head (dropout, linear)."""

    def __init__(self, width: int = 16, depth: int = 4, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, width, 32, 32))
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
            for _ in range(depth))
        self.head = nn.Sequential(nn.Dropout(0.0), nn.Linear(width, num_classes))

    def forward(self, x):
        x = self.stem(x) + self.pos_embed
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean((2, 3)))


# [thawkit_register_sources]
class TinyZoo:
    description = "tiny convolutional nets for 64 px images"
    widths = {"tiny16": 16, "tiny32": 32}

    def load(self, name, options):
        if name not in self.widths:
            raise thawkit.UnknownNameError("model", name, self.widths, where="tinyzoo")
        options = dict(options)
        options.pop("weights", None)  # a real zoo would load them here
        with torch.device(options.pop("device", "cpu")):
            return TinyNet(self.widths[name], **options)

    def list_models(self, pattern=None):
        return [m for m in self.widths if pattern is None or fnmatch.fnmatch(m, pattern)]


@thawkit.hookimpl
def thawkit_register_sources(register):
    register("tinyzoo", TinyZoo())
# [end]


# [thawkit_describe_layout]
@thawkit.hookimpl
def thawkit_describe_layout(model, spec):
    if isinstance(model, TinyNet):  # the generic layout would see one block, "stages"
        return layout_from_prefixes(
            model, stem=["stem", "pos_embed"],
            blocks=[(f"stage{i}", [f"stages.{i}"]) for i in range(len(model.stages))],
            head=["head"], classifiers=["head.1"], source="tinyzoo")
# [end]


# [thawkit_replace_head]
@thawkit.hookimpl
def thawkit_replace_head(model, layout, num_classes, dropout, keep_aux):
    if isinstance(model, TinyNet):  # zero-initialised: training starts from uniform logits
        old = model.head[1].weight  # the new head goes where the backbone is (meta included)
        linear = nn.Linear(old.shape[1], num_classes, device=old.device, dtype=old.dtype)
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
        model.head = nn.Sequential(nn.Dropout(dropout), linear)
        return model
# [end]


# [thawkit_data_config]
@thawkit.hookimpl
def thawkit_data_config(model, spec):
    if spec is not None and spec.source == "tinyzoo":
        return thawkit.DataConfig(input_size=(3, 64, 64), mean=(0.5, 0.5, 0.5),
                                  std=(0.5, 0.5, 0.5), crop_pct=1.0, origin="tinyzoo")
# [end]


# [thawkit_example_input]
@thawkit.hookimpl
def thawkit_example_input(model, spec, batch):
    if isinstance(model, TinyNet):  # pos_embed fixes the input: 64 px, whatever the data config
        return torch.randn(batch, 3, 64, 64)
# [end]


# [thawkit_no_weight_decay]
@thawkit.hookimpl
def thawkit_no_weight_decay(model):
    if isinstance(model, TinyNet):
        return ["pos_embed"]  # 4-D, so it would be decayed like a weight otherwise
# [end]


# [thawkit_layer_scales]
@thawkit.hookimpl
def thawkit_layer_scales(model, layout, layer_decay, min_scale):
    if isinstance(model, TinyNet):  # two stages per layer: the stem sits with the first pair
        layers = (len(layout.blocks) + 1) // 2
        depth = {"stem": layers, "head": 0}
        depth.update({b.name: layers - i // 2 for i, b in enumerate(layout.blocks)})
        return {p: max(min_scale, layer_decay ** depth[block])
                for p, block in layout.block_of().items()}
# [end]


# [thawkit_split_model]
@thawkit.hookimpl
def thawkit_split_model(model, layout, block):
    if isinstance(model, TinyNet):  # its forward pass, step by step: the cut goes between two
        steps = [ForwardStep(lambda x: model.stem(x) + model.pos_embed, model.stem,
                                     model.pos_embed),
                 *model.stages, ForwardStep(lambda x: x.mean((2, 3))), *model.head]
        return split_sequential(model, layout, block, steps)
# [end]


# [thawkit_register_strategies]
class TopFractionParams(thawkit.StrategyParams):
    fraction: float = Field(0.5, gt=0, le=1, description="Share of the blocks that train.")


class TopFraction(thawkit.Strategy):
    name = "top-fraction"
    description = "The top `fraction` of the blocks (rounded up), the neck and the head train."
    Params = TopFractionParams

    def phases(self, layout, model):
        n = math.ceil(self.params.fraction * len(layout.blocks))
        units = layout.thaw_order[: n + 1]  # neck+head first, then blocks from the top
        return [thawkit.Phase(0, [p for unit in units for b in unit for p in b.params])]


@thawkit.hookimpl
def thawkit_register_strategies(register):
    register(TopFraction)
# [end]


# [thawkit_register_optimizers]
def sgd_nesterov(param_groups, momentum=0.9, **kwargs):
    return torch.optim.SGD(param_groups, momentum=momentum, nesterov=True, **kwargs)


@thawkit.hookimpl
def thawkit_register_optimizers(register):
    register("sgd-nesterov", sgd_nesterov)
# [end]


# [thawkit_register_schedules]
class ExponentialParams(BaseModel, extra="forbid"):
    gamma: float = Field(0.999, gt=0, le=1, description="lr factor per step")


def exponential(optimizer, *, epochs, steps_per_epoch, warmup_epochs=0.0, gamma=0.999):
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)


exponential.Params = ExponentialParams
exponential.interval = "step"


@thawkit.hookimpl
def thawkit_register_schedules(register):
    register("exponential", exponential)
# [end]


# [thawkit_register_loggers]
class ZooLog:
    """A logger: a line per epoch in the run directory's zoo.log (built on rank 0 only)."""

    def __init__(self, run, every=1):
        self.path, self.every = run.run_dir / "zoo.log", every

    @thawkit.hookimpl
    def thawkit_epoch_end(self, run, epoch, metrics):
        if epoch % self.every == 0:
            with open(self.path, "a", encoding="utf-8") as log:
                log.write(f"epoch {epoch}: val top-1 {metrics['val_top1']:.3f}\n")


@thawkit.hookimpl
def thawkit_register_loggers(register):
    register("zoo-log", ZooLog)  # a recipe chooses it: train.loggers: [{name: zoo-log, every: 2}]
# [end]


# [thawkit_register_readers]
@dataclass
class TensorPreprocess:
    """What a run keeps in data.json about its inputs: their shape."""

    shape: list[int]
    reader: str = "tensors"

    def to_dict(self):
        return {"shape": self.shape, "reader": self.reader}


class TensorFileReader(Reader):
    """data.reader: tensors: data.train and data.val are torch.save() files of
    {"x": N x 3 x H x W floats, "y": N class indices, "classes": names}."""

    inputs = "tensor files (3 x H x W each)"
    cache_off = "the zoo's tensors are already small; the cache is for image folders"

    def read(self, recipe, split):
        path = getattr(recipe.data, split)
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, TypeError) as exc:
            raise thawkit.ConfigError(f"data.{split}: {path!r} is no tensor file ({exc})") from None

    def scan(self, recipe):
        train, val = self.read(recipe, "train"), self.read(recipe, "val")
        return Splits(TensorDataset(train["x"], train["y"]), TensorDataset(val["x"], val["y"]),
                      list(train["classes"]))

    def preprocess(self, recipe, model):
        return TensorPreprocess(list(self.read(recipe, "train")["x"].shape[1:]))

    def preprocess_from_dict(self, recipe, saved):
        return TensorPreprocess(saved["shape"])

    def loaders(self, recipe, splits, prep, *, seed, pin_memory):
        return keyed_loaders(recipe, splits.train, splits.val, splits.classes, seed=seed,
                             pin_memory=pin_memory)

    def predict_inputs(self, items, prep, recipe):
        return torch.stack([torch.load(item, weights_only=True) for item in items])

    def example(self, prep, recipe):
        return torch.randn(2, *prep.shape, generator=torch.Generator().manual_seed(0))


@thawkit.hookimpl
def thawkit_register_readers(register):
    register("tensors", TensorFileReader())  # a recipe chooses it: data.reader: tensors
# [end]


# [thawkit_run_start]
def zoo_run(run):
    """The events below speak only about runs of the zoo's own models."""
    return run.recipe.backbone.source == "tinyzoo"


@thawkit.hookimpl
def thawkit_run_start(run):
    if zoo_run(run):
        start = "resuming" if run.resumed else "starting"
        run.log(f"tinyzoo: {start} at epoch {run.epochs_done + 1} of {run.epochs}")
# [end]


# [thawkit_phase_change]
@thawkit.hookimpl
def thawkit_phase_change(run, phase, epoch):
    if zoo_run(run):
        run.log(f"tinyzoo: epoch {epoch} starts phase {phase}, "
                f"{len(run.adapted.trainable)} trainable tensors")
# [end]


# [thawkit_epoch_end]
@thawkit.hookimpl
def thawkit_epoch_end(run, epoch, metrics):
    # the metrics are the same on every process, so under torchrun all of them decide alike
    if zoo_run(run) and metrics["train_loss"] < 1e-3:
        run.request_stop(f"train loss {metrics['train_loss']:.1e}: nothing left to learn")
# [end]


# [thawkit_checkpoint_saved]
@thawkit.hookimpl
def thawkit_checkpoint_saved(run, path, epoch):
    if zoo_run(run) and run.is_main:  # rank 0 wrote it; a copy would be made from there
        run.log(f"tinyzoo: {path.name} holds {epoch} epoch(s)")
# [end]


# [thawkit_run_end]
@thawkit.hookimpl
def thawkit_run_end(run, status):
    if zoo_run(run):
        run.log(f"tinyzoo: run {status} after {run.epochs_done} epoch(s)")
# [end]


# [thawkit_run_failed]
@thawkit.hookimpl
def thawkit_run_failed(run, error):
    if zoo_run(run):
        run.log(f"tinyzoo: the run failed ({type(error).__name__})")
# [end]


# [thawkit_add_hookspecs]
class TinyZooHooks:
    """A hook the tiny zoo offers other plugins: more widths for its models."""

    @thawkit.hookspec
    def thawkit_tinyzoo_widths(self, register) -> None:
        """Add tiny-zoo models: call ``register(name, width)``; all implementations are called."""


@thawkit.hookimpl
def thawkit_add_hookspecs(pm):
    pm.add_hookspecs(TinyZooHooks)
# [end]


@thawkit.hookimpl
def thawkit_tinyzoo_widths(register):
    register("tiny8", 8)


# [thawkit_register_commands]
def list_zoo(args):
    widths = args.pm.registry("thawkit_tinyzoo_widths", "tiny-zoo model")
    for name in widths.names():
        print(f"{name}: width {widths.get(name)}")
    return 0


@thawkit.hookimpl
def thawkit_register_commands(subparsers):
    p = subparsers.add_parser("tinyzoo", help="list the extra tiny-zoo widths")
    p.set_defaults(func=list_zoo)
# [end]


# [thawkit_recipe_sections]
class LabelsSection(BaseModel, extra="forbid"):
    classes: list[str] = Field(default_factory=list, description="class names, in label order")


@thawkit.hookimpl
def thawkit_recipe_sections(register):
    register("labels", LabelsSection)
# [end]


# [thawkit_read_recipe]
def toml_value(text):
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text  # --set backbone.name=tiny8: a bare word is a string


@thawkit.hookimpl
def thawkit_read_recipe(path, overrides):
    if path.suffix != ".toml":
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise thawkit.ConfigError(f"{path}: not a readable TOML recipe: {exc}") from None
    for item in overrides:  # --set key.path=value, the value in TOML syntax
        key, sep, text = item.partition("=")
        if not sep:
            raise thawkit.ConfigError(f"--set {item!r}: expected key.path=value")
        *sections, field = key.split(".")
        node = data
        for name in sections:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise thawkit.ConfigError(f"--set {item!r}: {name} is not a section")
        node[field] = toml_value(text)
    return data
# [end]


# [thawkit_infer_num_classes]
@thawkit.hookimpl
def thawkit_infer_num_classes(recipe, where):
    classes = recipe.section("labels").classes
    return len(classes) or None
# [end]


# [thawkit_adapted]
@thawkit.hookimpl
def thawkit_adapted(adapted):
    if isinstance(adapted.model, TinyNet):
        print(f"tinyzoo: {adapted.plan.summary()}")
# [end]


if __name__ == "__main__":
    thawkit.register(sys.modules[__name__], name="tinyzoo")
    model = thawkit.load_backbone("tinyzoo:tiny16")
    print(thawkit.data_config(model))
    adapted = thawkit.adapt(model, "top-fraction", num_classes=5, fraction=0.5, dropout=0.1)
    optimizer = adapted.optimizer("sgd-nesterov", lr=0.05, weight_decay=1e-4, layer_decay=0.5)
    schedule = schedule_registry(thawkit.default_plugin_manager()).get("exponential")
    scheduler = schedule(optimizer, epochs=1, steps_per_epoch=2, gamma=0.9)
    for _ in range(2):
        loss = nn.functional.cross_entropy(adapted.model(torch.randn(4, 3, 64, 64)),
                                           torch.randint(0, 5, (4,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    print(adapted.plan)
    print("frozen prefix:", frozen_prefix(adapted).reason)  # computed once when it is cached

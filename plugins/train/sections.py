"""The recipe sections the training plugin adds: ``data``, ``train`` and ``schedule``."""
from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from thawkit import ConfigError, format_validation_error, quote

from . import extras
from .schedules import schedule_registry

if TYPE_CHECKING:
    from collections.abc import Iterable

    from thawkit import Registry, ThawkitPluginManager

# torch is imported where a value needs it: recipes are validated against these sections torch-free.


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: The largest ``data.image_size`` (pixels per side) a recipe may ask for.
MAX_IMAGE_SIZE = 4096
Channel = Annotated[float, Field(allow_inf_nan=False)]
Spread = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ScheduleSection(BaseModel):
    """The learning-rate schedule: a registered name, warmup, and the schedule's own parameters."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str = Field("constant", description="constant, cosine, step, onecycle, plateau, ...")
    warmup_epochs: float = Field(0.0, ge=0)

    @property
    def params(self) -> dict[str, Any]:
        """The schedule's own parameters (everything beside ``name`` and ``warmup_epochs``)."""
        return dict(self.model_extra or {})

    def resolve(self, pm: ThawkitPluginManager, where: str) -> None:
        """Check the name against the registered schedules and the parameters against its model."""
        factory = schedule_registry(pm).get(self.name, where=f"{where}: schedule.name")
        params_model = getattr(factory, "Params", None)
        if params_model is None:
            return
        try:
            params_model.model_validate(self.params)
        except ValidationError as exc:
            text = format_validation_error(exc, where=where, prefix=("schedule",), model=params_model)
            own = ", ".join(type(self).model_fields)
            raise ConfigError(text.replace("allowed fields: ", f"allowed fields: {own}, ")) from None


class DataSection(_Section):
    """The data reader, its files or directories, preprocessing and batching."""

    reader: str = Field("images", description="A registered data reader: images (ImageFolder "
                        "directories), text (CSV or JSON Lines), audio (a folder per class), or a "
                        "plugin's.")
    train: str | None = Field(None, description="ImageFolder directory of training images (reader "
                              "images), a CSV/JSONL file (text), a folder per class (audio).")
    val: str | None = Field(None, description="Validation data, in the same form as data.train.")
    text_column: str = Field("text", min_length=1, description="reader text: the column of texts.")
    label_column: str = Field("label", min_length=1, description="reader text: the column of labels.")
    max_length: int = Field(128, gt=0, description="reader text: tokens per text at most (truncated); "
                            "batches are padded to their longest text.")
    image_size: int | None = Field(None, gt=0, le=MAX_IMAGE_SIZE,
                                   description="Override the backbone's input size (pixels per side).")
    mean: tuple[Channel, Channel, Channel] | None = None
    std: tuple[Spread, Spread, Spread] | None = Field(None, description="Per channel, each > 0.")
    augment: bool = Field(True, description="Random resized crop and flip when training.")
    batch_size: int = Field(32, gt=0)
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes.")


class LoggerChoice(BaseModel):
    """One entry of ``train.loggers`` with options: ``{name: mlflow, experiment: digits}``."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str = Field(description="A registered logger: jsonl, tensorboard, mlflow, or a plugin's.")

    @property
    def params(self) -> dict[str, Any]:
        """The logger's own options (everything beside ``name``)."""
        return dict(self.model_extra or {})

    @classmethod
    def of(cls, item: str | LoggerChoice) -> LoggerChoice:
        """An entry as written, a bare name or a mapping, as a :class:`LoggerChoice`."""
        return cls(name=item) if isinstance(item, str) else item


class TrainSection(_Section):
    """Epochs, seed, device, precision and the run directory."""

    epochs: int = Field(10, gt=0)
    seed: int = Field(0, ge=0, lt=2**63)
    deterministic: bool = False
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, mps.")
    amp: bool | None = Field(None, description="Mixed precision; default: on for CUDA.")
    output: str = Field("runs/exp", description="Run directory.")

    @field_validator("output")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip() or "\0" in value:
            raise ValueError("name a run directory, e.g. runs/exp (not empty, which would write "
                             "the run into the working directory, and without NUL characters)")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        import torch

        try:
            if value != "auto":
                torch.device(value)
        except (RuntimeError, ValueError):
            raise ValueError(f"{quote(value)} is not a device; use auto, cpu, cuda, cuda:N or "
                             "mps") from None
        return value
    grad_clip: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    sync_bn: bool = Field(
        False, description="Under torchrun on CUDA: BatchNorm layers that train normalise with "
        "the statistics of the global batch (SyncBatchNorm); off: each process's own part.")
    cache: Literal["auto", "off"] = Field(
        "auto", description="auto: compute the frozen part's features once per phase where that is "
        "exact and pays (see thawkit.plugins.train.cache); off: never.")
    cache_memory: int | Literal["auto"] = Field(
        "auto", description="RAM the cached features may take: bytes, or a size such as 2GB or "
        "512MiB; beyond it they go to a memory-mapped file in the run directory. auto: a quarter "
        "of the memory available when the run starts.")
    cache_dtype: Literal["float32", "float16"] = Field(
        "float32", description="Storage of cached features; float16 halves the memory but is no "
        "longer bit-exact.")

    wise_alphas: list[float] = Field(
        default_factory=list, description="WiSE-FT: after the last epoch, report val accuracy of "
        "the backbone interpolated with its starting weights at each alpha (0: start, 1: "
        "fine-tuned); written to run.json. Empty: no sweep.")

    loggers: list[str | LoggerChoice] = Field(
        default_factory=list, description="Loggers of the run's metrics besides metrics.jsonl "
        "(always written): tensorboard, mlflow, or a plugin's; a name, or a mapping with name and "
        "the logger's options.")

    def resolve(self, pm: ThawkitPluginManager, where: str) -> None:
        """Check ``loggers`` against the registered ones, their options and their packages."""
        check_loggers(self.loggers, pm, where)

    @field_validator("wise_alphas")
    @classmethod
    def _alphas(cls, value: list[float]) -> list[float]:
        bad = [a for a in value if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"every alpha must be from 0 to 1, got {', '.join(map(repr, bad))}")
        return value

    @field_validator("cache_memory", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: Any) -> int | str:
    """``"auto"``, or a number of bytes from an integer or a size such as ``2GB`` / ``512 MiB``."""
    if value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = re.fullmatch(r"\s*(\d{1,20}(?:\.\d{0,20})?)\s*([a-zA-Z]*)\s*", value) \
        if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"expected auto, a number of bytes or a size such as 2GB or 512MiB, got "
                         f"{quote(value)}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def logger_registry(pm: ThawkitPluginManager) -> Registry:
    """Logger factories by name, from every plugin's ``thawkit_register_loggers``."""
    return pm.registry("thawkit_register_loggers", "logger")


def active_loggers(train: TrainSection) -> list[LoggerChoice]:
    """The loggers of a run: ``jsonl`` first (always), then those ``train.loggers`` names."""
    chosen = [LoggerChoice.of(item) for item in train.loggers]
    return [LoggerChoice(name="jsonl"), *(c for c in chosen if c.name != "jsonl")]


def check_loggers(items: Iterable[Any], pm: ThawkitPluginManager, where: str) -> None:
    """Every name registered, listed once, its options valid and its packages installed."""
    registry = logger_registry(pm)
    seen: set[str] = set()
    for index, item in enumerate(items):
        choice, field = LoggerChoice.of(item), f"train.loggers.{index}"
        factory = registry.get(choice.name, where=f"{where}: {field}")
        if choice.name in seen:
            raise ConfigError(f"{where}: {field}: logger {choice.name!r} is listed twice")
        seen.add(choice.name)
        params_model = getattr(factory, "Params", None)
        if params_model is not None:
            try:
                params_model.model_validate(choice.params)
            except ValidationError as exc:
                raise ConfigError(format_validation_error(
                    exc, where=where, prefix=("train", "loggers", index), model=params_model)) from None
        else:  # no model: the factory's own keyword arguments are its options
            signature = inspect.signature(factory)
            try:
                signature.bind(None, **choice.params)
            except TypeError as exc:
                options = ", ".join(list(signature.parameters)[1:]) or "none"
                raise ConfigError(f"{where}: {field}: logger {choice.name!r} does not take these "
                                  f"options ({exc}); its options: {options}") from None
        requires: dict[str, str] = getattr(factory, "requires", {})
        missing = [module for module in requires if not extras.available(module)]
        if missing:
            raise ConfigError(
                f"{where}: {field}: logger {choice.name!r} needs {', '.join(missing)}, which "
                f"{'is' if len(missing) == 1 else 'are'} not installed; install "
                f"{' '.join(requires[m] for m in missing)} (pip install "
                f"{' '.join(repr(requires[m]) for m in missing)}), or leave it out of train.loggers")

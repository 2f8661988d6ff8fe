"""The recipe sections the training plugin adds: ``data``, ``train`` and ``schedule``."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from thawkit import ConfigError, format_validation_error, quote

if TYPE_CHECKING:
    from thawkit import ThawkitPluginManager


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
        from .schedules import schedule_registry

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
    """ImageFolder directories, preprocessing and batching."""

    train: str | None = Field(None, description="ImageFolder directory of training images.")
    val: str | None = Field(None, description="ImageFolder directory of validation images.")
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
        from .loggers import check_loggers

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

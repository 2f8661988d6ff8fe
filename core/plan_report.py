"""The plan: for every parameter, its block, phase, group, lr, weight decay, trainable flag
and norm mode, and the dropout policy, computed before any training. Prints as a table,
exports to JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ParamRow:
    name: str
    block: str
    shape: list[int]
    numel: int
    phase: int | None          # first phase in which it trains; None: never
    trainable: bool            # in the current phase
    group: str | None
    lr: float | None
    weight_decay: float | None
    norm: str | None           # norm layers: frozen / affine / train / trainable


@dataclass
class BlockRow:
    name: str
    role: str
    numel: int
    trainable_per_phase: list[int]
    lrs: list[float]
    weight_decays: list[float]
    norm: str | None


@dataclass
class PhaseRow:
    index: int
    epoch: int
    label: str
    trainable: int             # number of trainable parameters (elements)


@dataclass
class Plan:
    strategy: str
    params: dict[str, Any]
    norm: str
    optimizer: dict[str, Any] | None
    phase: int
    phases: list[PhaseRow]
    blocks: list[BlockRow]
    rows: list[ParamRow] = field(repr=False)
    notes: list[str] = field(default_factory=list)           # the strategy's lines below the table
    details: dict[str, Any] = field(default_factory=dict)    # the strategy's data, in to_dict()
    frozen_dropout: str = "keep"

    # ------------------------------------------------------------ checks
    def check(self, all_names: list[str]) -> Plan:
        """Every parameter of the model appears exactly once."""
        names = [r.name for r in self.rows]
        if sorted(names) != sorted(all_names) or len(set(names)) != len(names):
            raise AssertionError("plan does not assign every parameter exactly once")
        return self

    @property
    def total(self) -> int:
        return sum(r.numel for r in self.rows)

    @property
    def trainable(self) -> int:
        return sum(r.numel for r in self.rows if r.trainable)

    def param(self, name: str) -> ParamRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    # ------------------------------------------------------------ export
    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "params": self.params, "norm": self.norm,
            "frozen_dropout": self.frozen_dropout,
            "optimizer": self.optimizer, "phase": self.phase,
            "total_params": self.total, "trainable_params": self.trainable,
            "phases": [asdict(p) for p in self.phases],
            "blocks": [asdict(b) for b in self.blocks],
            "parameters": [asdict(r) for r in self.rows], **self.details,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        pct = 100.0 * self.trainable / max(self.total, 1)
        return (f"{self.strategy}: {self.trainable:,} of {self.total:,} parameters trainable "
                f"({pct:.1f}%), phase {self.phase + 1} of {len(self.phases)}")

    def __str__(self) -> str:
        return self.table()

    def table(self) -> str:
        opts = ", ".join(f"{k}={_short(v)}" for k, v in self.params.items()
                         if k not in ("norm", "frozen_dropout") and v is not None)
        head = f"strategy {self.strategy}" + (f" ({opts})" if opts else "") + f", norm={self.norm}"
        if self.frozen_dropout != "keep":  # the default is left out, as in the strategy's own options
            head += f", frozen_dropout={self.frozen_dropout}"
        if self.optimizer:
            o = self.optimizer
            head += f"; optimizer {o['name']} lr={o['lr']:g} weight_decay={o['weight_decay']:g}"
            if o.get("layer_decay") is not None:
                head += f" layer_decay={o['layer_decay']:g}"
        phase_cols = [f"e{p.epoch + 1}" if len(self.phases) > 1 else "train" for p in self.phases]
        cols = ["block", "role", "params"] + phase_cols + ["lr", "wd", "norm"]
        rows = []
        for b in self.blocks:
            cells = [b.name, b.role, f"{b.numel:,}"]
            for n in b.trainable_per_phase:
                cells.append("all" if n == b.numel and n else ("-" if n == 0 else f"{n:,}"))
            cells.append(_span(b.lrs, "{:.2e}"))
            cells.append(_span(b.weight_decays, "{:g}"))
            cells.append(b.norm or "")
            rows.append(cells)
        per_phase = [f"{p.trainable:,}" for p in self.phases]
        rows.append(["total", "", f"{self.total:,}", *per_phase, "", "", ""])
        widths = [max(len(str(r[i])) for r in [cols, *rows]) for i in range(len(cols))]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = [head, fmt.format(*cols), fmt.format(*["-" * w for w in widths])]
        lines += [fmt.format(*r) for r in rows]
        if self.frozen_dropout == "off":
            lines.append("frozen_dropout=off: a block shown '-' in a phase runs without dropout or "
                         "drop-path in it")
        lines += self.notes
        return "\n".join(line.rstrip() for line in lines)


def _span(values: list[float], spec: str) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return spec.format(lo) if lo == hi else f"{spec.format(lo)}..{spec.format(hi)}"


def _short(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return f"[{len(value)} entries]"
    return str(value)

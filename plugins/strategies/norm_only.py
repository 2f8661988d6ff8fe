"""``norm-only``: the affine parameters of normalisation layers and the head train."""
from __future__ import annotations

from thawkit import Phase, Strategy, hookimpl, norm_modules


class NormOnly(Strategy):
    name = "norm-only"
    description = "Normalisation layers' affine parameters (and statistics) and the head train."

    def phases(self, layout, model):
        names = {f"{path}.{n}" if path else n
                 for path, m in norm_modules(model).items() for n, _ in m.named_parameters(recurse=False)}
        return [Phase(0, names | set(layout.head.params), "norms + head")]


@hookimpl
def thawkit_register_strategies(register):
    register(NormOnly)

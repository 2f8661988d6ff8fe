"""A custom freezing strategy as a plugin: registered at runtime, then picked by name."""
import thawkit
from torch import nn


class EveryOtherBlock(thawkit.Strategy):
    name = "every-other"
    description = "Train every other block, counting down from the last one, and the head."

    def phases(self, layout, model):
        return [thawkit.Phase(0, layout.params_of(layout.blocks[::-2] + [layout.head]))]


@thawkit.hookimpl
def thawkit_register_strategies(register):
    register(EveryOtherBlock)


if __name__ == "__main__":
    import sys

    thawkit.register(sys.modules[__name__])  # or: thawkit -p examples/custom_strategy.py ...
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 2))
    adapted = thawkit.adapt(model, "every-other", num_classes=3)
    optimizer = adapted.optimizer("sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)
    print(adapted.plan)

"""A custom freezing strategy with a parameter, as a plugin: registered at runtime, then
picked by name."""
import thawkit
from pydantic import Field
from torch import nn


class EveryOtherParams(thawkit.StrategyParams):  # `norm` comes from StrategyParams
    skip_last: bool = Field(False, description="Start one block lower: the last block stays frozen.")


class EveryOtherBlock(thawkit.Strategy):
    name = "every-other"
    description = "Train every other block, counting down from the last one, and the head."
    Params = EveryOtherParams  # validated before phases() runs: self.params.skip_last

    def phases(self, layout, model):
        # Layout members a strategy reads: stem, blocks (input to output), neck (or None),
        # head, thaw_order, block(name), params_of(blocks) -> parameter names
        chosen = layout.blocks[::-1][int(self.params.skip_last)::2]
        return [thawkit.Phase(0, layout.params_of([*chosen, layout.head]), label="every other")]


@thawkit.hookimpl
def thawkit_register_strategies(register):
    register(EveryOtherBlock)


if __name__ == "__main__":
    thawkit.register(__file__)  # a .py path or a module name; or: thawkit -p examples/custom_strategy.py ...
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 2))
    adapted = thawkit.adapt(model, "every-other", num_classes=3, skip_last=True)
    optimizer = adapted.optimizer("sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)
    print(adapted.plan)

"""Evidence before any training: LogME of the pooled features at each block boundary (how well
the pretrained features already fit the new labels there) and Auto-RGN's relative gradient norms
per block (which blocks want to move), both from a few images of the training split."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thawkit import Recipe


def _loader(recipe: Recipe, model: Any, folder: str, limit: int, seed: int) -> Any:
    import torch
    from thawkit import data_config
    from thawkit.plugins.train.data import FolderDataset, Preprocess, scan_folder
    from torch.utils.data import DataLoader

    prep = Preprocess.resolve(data_config(model, pm=recipe.plugin_manager), recipe.data)
    samples = scan_folder(folder, "data.train", check_headers=False).samples
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [samples[i] for i in sorted(order[:limit])]
    return DataLoader(FolderDataset(chosen, prep.eval_transform()), batch_size=recipe.data.batch_size)


def pooled(x: Any) -> Any:
    """Features as one vector per image: spatial maps and token sequences averaged."""
    if x.ndim == 4:
        return x.mean(dim=(2, 3))
    if x.ndim == 3:
        return x.mean(dim=1)
    return x.reshape(x.shape[0], -1)


def logme_by_boundary(recipe: Recipe, folder: str, num_classes: int, *, limit: int = 500,
                      seed: int = 0) -> list[dict[str, Any]]:
    """LogME of the features entering the head and each block (last block first): one row per
    boundary with the strategy that trains from there (``head-only``, ``last-block`` N)."""
    import torch
    from thawkit import adapt_recipe, validate_recipe

    from .logme import logme

    data = recipe.model_dump(mode="json")
    data["strategy"] = {"name": "head-only"}
    adapted = adapt_recipe(validate_recipe(data, where="search", pm=recipe.plugin_manager),
                           num_classes=num_classes)
    model, layout = adapted.model.eval(), adapted.layout
    loader = _loader(recipe, model, folder, limit, seed)
    boundaries = [("head", "head-only")] + [(b.name, f"last-block blocks={i + 1}")
                                           for i, b in enumerate(reversed(layout.blocks))]
    rows = []
    for block, strategy in boundaries:
        split = recipe.plugin_manager.hook.thawkit_split_model(model=model, layout=layout, block=block)
        if split is None:
            rows.append({"block": block, "strategy": strategy, "logme": None,
                         "reason": f"no plugin splits the model below {block!r}"})
            continue
        feats, labels = [], []
        with torch.no_grad():
            for x, y in loader:
                feats.append(pooled(split.prefix(x)).float())
                labels.append(y)
        f = torch.cat(feats)
        rows.append({"block": block, "strategy": strategy, "dims": int(f.shape[1]),
                     "logme": round(logme(f, torch.cat(labels)), 4)})
    return rows


def rgn_by_block(recipe: Recipe, folder: str, num_classes: int, *, batches: int = 5,
                 seed: int = 0) -> dict[str, float]:
    """Auto-RGN's relative gradient norms per block from ``batches`` batches of ``folder``."""
    import itertools

    from thawkit import adapt_recipe, validate_recipe
    from thawkit.plugins.strategies.auto_rgn import relative_gradient_norms

    data = recipe.model_dump(mode="json")
    data["strategy"] = {"name": "full"}
    torch_seed(seed)
    adapted = adapt_recipe(validate_recipe(data, where="search", pm=recipe.plugin_manager),
                           num_classes=num_classes)
    model = adapted.model.train()
    loader = _loader(recipe, model, folder, batches * recipe.data.batch_size, seed)
    return relative_gradient_norms(model, adapted.layout, itertools.islice(loader, batches))


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)

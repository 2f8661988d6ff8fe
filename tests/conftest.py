import os

import pytest

os.environ.setdefault("THAWKIT_PLUGINS", "")  # tests never pick up plugins installed on the machine


@pytest.fixture
def pm():
    """A fresh plugin manager with the built-ins only."""
    import thawkit

    return thawkit.get_plugin_manager(entrypoints=False)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny CPU models run faster (and identically) on one intra-op thread, above all on a
    busy 2-core machine, where torch's default threads made small forwards 10-50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

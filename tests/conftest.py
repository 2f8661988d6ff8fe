import os

import pytest

os.environ.setdefault("THAWKIT_PLUGINS", "")  # tests never pick up plugins installed on the machine


@pytest.fixture
def pm():
    """A fresh plugin manager with the built-ins only."""
    import thawkit

    return thawkit.get_plugin_manager(entrypoints=False)

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["LORALAB_NO_PROGRESS"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def registry():
    from loralab import NODE_CLASS_MAPPINGS

    return NODE_CLASS_MAPPINGS


@pytest.fixture(scope="session")
def tiny():
    """The embedded tiny pipeline on the CPU in fp32 (shared: nodes never mutate it)."""
    from loralab.core.pipeline import load_pipeline

    return load_pipeline("embedded: tiny-sd", dtype="fp32", device="cpu")


@pytest.fixture(autouse=True)
def headless_host():
    """Each test starts from a default headless host (core/host.py) and leaves none behind."""
    from loralab.core import host

    host._active = None
    yield host
    host._active = None


@pytest.fixture
def output_dir(tmp_path):
    from loralab.core import runtime

    runtime.configure(tmp_path / "output")
    return tmp_path / "output"


def pytest_configure(config):
    # tests/ holds helper modules (ldm_layout) imported by name under --import-mode=importlib.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items):
    # pyproject's `slow` marker: the heavier versions run with LORALAB_SLOW=1; CI runs their smaller twins.
    if os.environ.get("LORALAB_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set LORALAB_SLOW=1 to run (CI runs the smaller version)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

"""Test session setup: run from the repo root, and the service fixtures (MLflow server, Slurm cluster)."""
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(REPO)  # recipes and data paths in the tests are relative to the repo root

# Service fixtures live in tests/plugins/ (each starts a real service once per session, on demand).
pytest_plugins = [f"tests.plugins.{name[:-3]}" for name in sorted(os.listdir(os.path.join(REPO, "tests", "plugins")))
                  if name.endswith(".py") and name != "__init__.py"]


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`-n 2 --dist loadgroup`, setup.cfg) every test on the Slurm cluster goes to one worker,
    so the session starts one cluster; the other worker meanwhile runs the rest."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))

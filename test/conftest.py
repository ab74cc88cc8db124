"""Shared test fixtures: the ../shared folder and ROS availability."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# the test process publishes camera images to the nodes it starts: the shipped Fast DDS profile
# (32 MiB shared-memory segments), as the node and `concerto replay --live` use it; Fast DDS
# reads it once per process, so set it before any test creates a participant
from concerto_ros.ros.dds import use_large_data_profile  # noqa: E402

use_large_data_profile()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repository; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: the shared data/golden folder is only beside the development checkout")
    return SHARED


@pytest.fixture(scope="session")
def slambook_dir(shared_dir: Path) -> Path:
    """The real 5-frame Kinect recording ``../shared/data/rgbd_slambook``."""
    p = shared_dir / "data" / "rgbd_slambook"
    if not p.is_dir():
        pytest.skip(f"{p} not found")
    return p


#: intrinsics of rgbd_slambook (its README): fx, fy, cx, cy in pixels
SLAMBOOK_INTRINSICS = (518.0, 519.0, 325.5, 253.5)


@pytest.fixture
def ros_domain(monkeypatch) -> str:
    """A ROS domain of its own (and localhost-only discovery) for a test and the nodes it
    starts, so parallel test runs on one machine do not see each other."""
    domain = str(40 + (os.getpid() % 50))
    monkeypatch.setenv("ROS_DOMAIN_ID", domain)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return domain


def seeded_config(overrides: dict | None = None):
    """The shipped config with the SEEDED RANDOM models (``model.bundle: ""``) instead of the
    embedded default bundle, plus ``overrides``: for tests that check the pipeline's
    mechanics against the random 192-d ``tiny`` encoder and 9-class head."""
    from concerto_ros.config import default_config_path, load_config

    return load_config(default_config_path(), {"model.bundle": "", **(overrides or {})})

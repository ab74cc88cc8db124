"""Fast DDS transport settings for camera-sized messages (``config/fastdds_large_data.xml``).

Fast DDS, ROS 2's default middleware (``rmw_fastrtps_cpp``), moves data between processes
of one machine through a shared-memory segment per participant, 512 KiB unless configured.
A 640x480 RGB image (900 KiB) or depth image (600 KiB) then goes out as 64 KiB fragments
through the publisher's segment, and fragments are lost when it runs out of room before a
busy subscriber has read them; a best-effort reader loses the image, a reliable one waits for
the repair (after the writer's next heartbeat), holding the later images back. Measured
with ``benchmarks/soak.py`` (10 Hz RGB-D into ``perception_node`` on 2 cores): image
transport delay p99 220-435 ms, then queueing delay p99 400-900 ms after about six minutes,
and 79-80 % of the frames integrated; with the profile's 32 MiB segment 2-4 ms, 17-143 ms and
100 % (README, "Reliability figures").

:func:`use_large_data_profile` points ``FASTDDS_DEFAULT_PROFILES_FILE`` at that profile for the
current process, before ``rclpy.init()``. ``perception_node``, the lifecycle node, ``concerto
replay --live`` and the benchmarks call it. The segment that matters is the *sender's*, so the
camera driver needs the profile too (``export FASTDDS_DEFAULT_PROFILES_FILE=...``, as the start-up
line of the node says).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

__all__ = ["PROFILE_ENV", "OPT_ENV", "large_data_profile_path", "use_large_data_profile", "keep_fastdds_defaults"]

#: Fast DDS reads its default XML profiles from the file this variable names
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
#: ``none`` keeps Fast DDS's own defaults; a path uses that profile file instead of ours
OPT_ENV = "CONCERTO_DDS_PROFILE"
#: the middleware implementations that read Fast DDS XML profiles
_FASTDDS_RMWS = ("", "rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")


def large_data_profile_path() -> Path | None:
    """``config/fastdds_large_data.xml`` of the source tree or the installed package, or
    ``None`` when it cannot be found."""
    from concerto_ros.config import default_config_path

    try:
        path = default_config_path().with_name("fastdds_large_data.xml")
    except FileNotFoundError:
        return None
    return path if path.is_file() else None


def use_large_data_profile(environ: MutableMapping[str, str] | None = None) -> tuple[str | None, str]:
    """Make Fast DDS load the large-data profile in this process (call before ``rclpy.init()``).

    Args:
        environ: the environment to read and change (default ``os.environ``, which the
            middleware reads when the first participant is created).

    Returns:
        ``(profile, note)``: the profile file now in effect (``None`` when Fast DDS keeps its
        defaults) and one line for the log that says why: a profile of the user's
        (``FASTDDS_DEFAULT_PROFILES_FILE`` already set) is kept; ``CONCERTO_DDS_PROFILE=none``
        opts out and ``CONCERTO_DDS_PROFILE=FILE`` picks another file; another middleware
        (``RMW_IMPLEMENTATION``) is left alone.

    Raises:
        FileNotFoundError: ``CONCERTO_DDS_PROFILE`` names a file that does not exist.
    """
    env = os.environ if environ is None else environ
    rmw = env.get("RMW_IMPLEMENTATION", "").strip()
    if rmw not in _FASTDDS_RMWS:
        return None, f"middleware {rmw}: no Fast DDS profile set"
    if env.get(PROFILE_ENV):
        return env[PROFILE_ENV], f"Fast DDS profile {env[PROFILE_ENV]} (from {PROFILE_ENV})"
    choice = env.get(OPT_ENV, "").strip()
    if choice.lower() == "none":
        return None, (f"Fast DDS defaults ({OPT_ENV}=none): 512 KiB shared-memory segments, which delay or lose "
                      "camera images on a busy machine")
    if choice:
        path = Path(choice).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{OPT_ENV}={choice}: no such file")
        env[PROFILE_ENV] = str(path.resolve())
        return env[PROFILE_ENV], f"Fast DDS profile {env[PROFILE_ENV]} (from {OPT_ENV})"
    path = large_data_profile_path()
    if path is None:
        return None, "config/fastdds_large_data.xml not found: Fast DDS defaults"
    env[PROFILE_ENV] = str(path.resolve())
    return env[PROFILE_ENV], (f"Fast DDS profile {env[PROFILE_ENV]} (32 MiB shared-memory segments for camera "
                              f"images; give the camera driver the same: export {PROFILE_ENV}={env[PROFILE_ENV]})")


def keep_fastdds_defaults(environ: MutableMapping[str, str] | None = None) -> None:
    """Opt this process, and the processes it starts afterwards, out of any Fast DDS profile
    (``CONCERTO_DDS_PROFILE=none``, ``FASTDDS_DEFAULT_PROFILES_FILE`` removed): the
    benchmarks' ``--no-dds-profile``, to measure Fast DDS's defaults. Call before
    :func:`use_large_data_profile` and ``rclpy.init()``."""
    env = os.environ if environ is None else environ
    env.pop(PROFILE_ENV, None)
    env[OPT_ENV] = "none"

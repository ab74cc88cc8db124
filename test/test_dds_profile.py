"""The shipped Fast DDS profile (config/fastdds_large_data.xml) and how processes pick it up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from concerto_ros.ros.dds import (OPT_ENV, PROFILE_ENV, keep_fastdds_defaults, large_data_profile_path,
                                  use_large_data_profile)

NS = {"d": "http://www.eprosima.com"}
SHIPPED = Path(__file__).resolve().parents[1] / "config" / "fastdds_large_data.xml"


def test_the_profile_is_found_and_set_when_nothing_else_is():
    assert large_data_profile_path() == SHIPPED
    env = {}
    profile, note = use_large_data_profile(env)
    assert profile == env[PROFILE_ENV] == str(SHIPPED)
    assert f"export {PROFILE_ENV}={SHIPPED}" in note  # the camera driver needs it too


def test_a_users_profile_an_opt_out_and_another_middleware_are_respected(tmp_path):
    own = tmp_path / "site.xml"
    own.write_text("<dds/>")
    env = {PROFILE_ENV: str(own)}
    assert use_large_data_profile(env)[0] == str(own) and env == {PROFILE_ENV: str(own)}

    env = {OPT_ENV: "none"}
    profile, note = use_large_data_profile(env)
    assert profile is None and PROFILE_ENV not in env and "512 KiB" in note

    env = {OPT_ENV: str(own)}
    assert use_large_data_profile(env)[0] == str(own.resolve()) == env[PROFILE_ENV]
    with pytest.raises(FileNotFoundError, match="no such file"):
        use_large_data_profile({OPT_ENV: str(tmp_path / "missing.xml")})

    env = {PROFILE_ENV: str(SHIPPED)}  # --no-dds-profile of the benchmarks, also over an inherited profile
    keep_fastdds_defaults(env)
    assert env == {OPT_ENV: "none"} and use_large_data_profile(env)[0] is None

    env = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert use_large_data_profile(env)[0] is None and PROFILE_ENV not in env
    assert use_large_data_profile({"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"})[0] == str(SHIPPED)


def test_the_default_participant_profile_has_large_shared_memory_segments_and_udp():
    root = ET.parse(SHIPPED).getroot()
    transports = {t.findtext("d:transport_id", namespaces=NS): t
                  for t in root.iterfind("d:profiles/d:transport_descriptors/d:transport_descriptor", NS)}
    participant = root.find("d:profiles/d:participant[@is_default_profile='true']", NS)
    used = [e.text for e in participant.iterfind("d:rtps/d:userTransports/d:transport_id", NS)]
    assert participant.findtext("d:rtps/d:useBuiltinTransports", namespaces=NS) == "false"
    kinds = {transports[t].findtext("d:type", namespaces=NS): transports[t] for t in used}
    assert set(kinds) == {"SHM", "UDPv4"}
    # a 1280x720 RGB image (2.7 MB) and its depth (1.8 MB) many times over
    assert int(kinds["SHM"].findtext("d:segment_size", namespaces=NS)) == 32 * 2**20
    assert int(kinds["SHM"].findtext("d:port_queue_capacity", namespaces=NS)) == 1024


_PROBE = """
import json, os, time
import rclpy
from std_msgs.msg import String
before = set(os.listdir("/dev/shm"))
rclpy.init()
node = rclpy.create_node("dds_profile_probe")
node.create_publisher(String, "/dds_profile_probe", 1)
time.sleep(0.5)
new = [f for f in set(os.listdir("/dev/shm")) - before if f.startswith("fastdds_") and not f.startswith("fastdds_port")
       and not f.endswith("_el")]
print(json.dumps(sorted(os.path.getsize(os.path.join("/dev/shm", f)) for f in new)))
node.destroy_node()
rclpy.shutdown()
"""


@pytest.mark.parametrize("opt, expect_mib", [("", 32), ("none", 0.5)])
def test_fast_dds_loads_the_profile_into_a_real_participant(ros_domain, opt, expect_mib):
    """Fast DDS accepts the XML: the largest shared-memory segment the process creates in
    /dev/shm has the profile's size (Fast DDS's 512 KiB with the opt-out). The process also
    creates one segment of the default size (with and without the profile)."""
    pytest.importorskip("rclpy")
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    env = {k: v for k, v in os.environ.items() if k not in (PROFILE_ENV, OPT_ENV)}
    if opt:
        env[OPT_ENV] = opt
    code = "from concerto_ros.ros.dds import use_large_data_profile; use_large_data_profile()\n" + _PROBE
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    sizes = json.loads(out.stdout.strip().splitlines()[-1])
    assert sizes, f"no Fast DDS segment appeared in /dev/shm: {out.stderr[-1000:]}"
    # the segment holds the configured bytes plus Fast DDS's bookkeeping (a few per cent)
    assert expect_mib * 2**20 <= max(sizes) <= expect_mib * 2**20 * 1.1, sizes

"""The ROS 2 package files: package.xml, setup.py data files, launch file, parameters."""

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from concerto_ros.config import SPECS

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_format_3_ament_python_with_runtime_deps():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "concerto_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "sensor_msgs_py", "message_filters", "cv_bridge", "tf2_ros_py",
            "concerto_ros_interfaces", "python3-numpy", "python3-opencv", "python3-transforms3d"} <= deps
    iface = ET.parse(ROOT / "concerto_ros_interfaces" / "package.xml").getroot()
    assert iface.find("export/build_type").text == "ament_cmake"
    assert iface.findtext("member_of_group") == "rosidl_interface_packages"
    assert (ROOT / "resource" / "concerto_ros").is_file()


def test_query_service_definition_has_request_and_response_fields():
    text = (ROOT / "concerto_ros_interfaces" / "srv" / "QueryText.srv").read_text()
    request, response = text.split("\n---\n")
    fields = lambda part: {ln.split()[1] for ln in part.splitlines() if ln.strip() and not ln.startswith("#")}  # noqa: E731
    assert fields(request) == {"text", "negative_texts", "threshold", "top_k", "scope"}
    assert {"success", "message", "relevance", "best_points", "best_scores", "centroid", "regions"} <= fields(response)


def test_generated_query_service_imports():
    srv = pytest.importorskip("concerto_ros_interfaces.srv", reason="interfaces not built (scripts/setup.sh)")
    req = srv.QueryText.Request(text="red chair", top_k=5)
    assert req.text == "red chair" and req.top_k == 5
    assert hasattr(srv.QueryText.Response(), "relevance")


def test_launch_file_declares_its_arguments_and_uses_the_config():
    src = (ROOT / "launch" / "perception.launch.py").read_text()
    tree = ast.parse(src)
    declared = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
                and getattr(c.func, "id", "") == "DeclareLaunchArgument"}
    assert {"config", "profile", "namespace", "use_sim_time"} <= declared
    assert "perception.yaml" in src and 'executable="perception_node"' in src
    assert "perception_cpu.yaml" in src  # the live CPU overlay (profile:=auto|cpu)


def test_setup_py_installs_launch_config_and_console_scripts():
    src = (ROOT / "setup.py").read_text()
    for needle in ("resource/", "package.xml", "launch/*.launch.py", "config/*.yaml", "config/*.xml",
                   "concerto = concerto_ros.cli:main", "perception_node = concerto_ros.ros.node:main"):
        assert needle in src, needle
    assert "script_dir=$base/lib/concerto_ros" in (ROOT / "setup.cfg").read_text()


def test_parameter_descriptors_carry_description_range_and_read_only():
    pytest.importorskip("rclpy")
    from concerto_ros.ros.params import RUNTIME_PARAMETERS, descriptor

    d = descriptor(SPECS["window.voxel_size"])
    assert "metres" in d.description and d.read_only
    assert d.floating_point_range[0].from_value == 0.005 and d.floating_point_range[0].to_value == 1.0
    d = descriptor(SPECS["window.num_frames"])
    assert d.integer_range[0].from_value == 1 and d.integer_range[0].to_value == 64
    assert not descriptor(SPECS["publish.features"]).read_only
    assert "sensor_data" in descriptor(SPECS["qos.input"]).description
    assert RUNTIME_PARAMETERS <= set(SPECS)


@pytest.mark.parametrize("sub", ["demo", "convert", "replay", "encode"])
def test_every_subcommand_has_help_with_units(sub):
    out = subprocess.run([sys.executable, "-m", "concerto_ros.cli", sub, "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "usage: concerto " + sub in out
    if sub in ("replay", "demo"):
        assert "metres" in out or "pixels" in out

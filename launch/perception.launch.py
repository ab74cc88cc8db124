"""Start concerto_ros's perception node with a parameters file.

    ros2 launch concerto_ros perception.launch.py
    ros2 launch concerto_ros perception.launch.py config:=/path/to/site.yaml namespace:=robot1 use_sim_time:=true
    ros2 launch concerto_ros perception.launch.py bundle:=/path/to/bundle.pt
    ros2 launch concerto_ros perception.launch.py profile:=none   # a CUDA GPU: the full window

Arguments:
    config        parameters YAML (default: the package's config/perception.yaml)
    profile       auto, cpu or none: cpu layers config/perception_cpu.yaml over config (the live
                  CPU budget: every 2nd pixel, the encoders on the 30k window voxels nearest the
                  camera, one torch thread, Cross4D in bf16 where the CPU has it; measured to integrate every frame of a 30 Hz
                  640x480 stream on 2 cores); auto does so when the model runs on the CPU
                  (model.device cpu, or auto without CUDA); none never (default: auto)
    bundle        model bundle file, 'default' (the embedded one), or 'none' (the YAML's separate
                  model settings: seeded random models unless checkpoints are set); sets
                  model.bundle over the YAML (default: empty, the YAML's model.bundle is kept,
                  which is 'default' in the shipped config/perception.yaml)
    namespace     namespace of the node and its topics (default: none)
    use_sim_time  take time from /clock, e.g. while replaying a bag with --clock (default: false)
    rviz          also start RViz 2 with config/perception.rviz: the map and window clouds coloured
                  by label, the query relevance cloud and markers (default: false)
    log_level     logger level of the node (default: info)

Environment:
    FASTDDS_DEFAULT_PROFILES_FILE  when unset, the node points it at the package's
                  config/fastdds_large_data.xml (32 MiB Fast DDS shared-memory segments: camera images
                  larger than Fast DDS's 512 KiB segment were delayed by repairs or lost). Export it
                  for the camera driver as well: the segment that matters is the publisher's.
    CONCERTO_DDS_PROFILE  'none' keeps Fast DDS's defaults; a file path uses that profile instead
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def _runs_on_cpu(config: str) -> bool:
    """Whether the node's model runs on the CPU with the parameters file ``config``."""
    from concerto_ros.config import load_config

    device = load_config(config).model.device
    if device == "cpu":
        return True
    if device != "auto":
        return False
    import torch

    return not torch.cuda.is_available()


def _parameter_files(context, share: str) -> list[str]:
    """``config``, then the CPU overlay when ``profile`` asks for it."""
    config = LaunchConfiguration("config").perform(context)
    profile = LaunchConfiguration("profile").perform(context).strip().lower()
    if profile not in ("auto", "cpu", "none"):
        raise ValueError(f"profile must be auto, cpu or none, got {profile!r}")
    cpu = profile == "cpu" or (profile == "auto" and _runs_on_cpu(config))
    return [config, os.path.join(share, "config", "perception_cpu.yaml")] if cpu else [config]


def _perception_node(context):
    """The node; ``model.bundle`` is passed only when the ``bundle`` argument is non-empty, so
    that an empty argument keeps the parameters file's value."""
    share = get_package_share_directory("concerto_ros")
    use_sim_time = LaunchConfiguration("use_sim_time")
    overrides = {"use_sim_time": ParameterValue(use_sim_time, value_type=bool)}
    bundle = LaunchConfiguration("bundle").perform(context).strip()
    if bundle:
        overrides["model.bundle"] = "" if bundle == "none" else bundle
    return [Node(
        package="concerto_ros",
        executable="perception_node",
        name="perception_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[*_parameter_files(context, share), overrides],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("concerto_ros")
    default_config = os.path.join(share, "config", "perception.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="Parameters YAML of the perception node."),
        DeclareLaunchArgument("profile", default_value="auto",
                              description="auto, cpu or none: layer config/perception_cpu.yaml (the live CPU "
                                          "budget) over config; auto when the model runs on the CPU."),
        DeclareLaunchArgument("bundle", default_value="",
                              description="Model bundle file, 'default' or 'none' (sets model.bundle; empty keeps the "
                                          "YAML's value)."),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its topics."),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Use /clock (bag replay with --clock)."),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="Logger level: debug, info, warn, error."),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="Also start RViz 2 with config/perception.rviz."),
        OpaqueFunction(function=_perception_node),
        Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
             arguments=["-d", os.path.join(share, "config", "perception.rviz")],
             parameters=[{"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])

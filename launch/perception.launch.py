"""Start concerto_ros's perception node with a parameters file.

    ros2 launch concerto_ros perception.launch.py
    ros2 launch concerto_ros perception.launch.py config:=/path/to/site.yaml namespace:=robot1 use_sim_time:=true
    ros2 launch concerto_ros perception.launch.py bundle:=/path/to/bundle.pt

Arguments:
    config        parameters YAML (default: the package's config/perception.yaml)
    bundle        model bundle file, 'default' (the embedded one), or 'none' (the YAML's separate
                  model settings: seeded random models unless checkpoints are set); sets
                  model.bundle over the YAML (default: empty, the YAML's model.bundle is kept,
                  which is 'default' in the shipped config/perception.yaml)
    namespace     namespace of the node and its topics (default: none)
    use_sim_time  take time from /clock, e.g. while replaying a bag with --clock (default: false)
    rviz          also start RViz 2 with config/perception.rviz: the map and window clouds coloured
                  by label, the query relevance cloud and markers (default: false)
    log_level     logger level of the node (default: info)
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def _perception_node(context):
    """The node; ``model.bundle`` is passed only when the ``bundle`` argument is non-empty, so
    that an empty argument keeps the parameters file's value."""
    config = LaunchConfiguration("config")
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
        parameters=[config, overrides],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("concerto_ros")
    default_config = os.path.join(share, "config", "perception.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="Parameters YAML of the perception node."),
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

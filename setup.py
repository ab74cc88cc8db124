"""ament_python build of concerto_ros (also installable with pip for the venv set-up)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "concerto_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/labels", glob("config/labels/*.yaml")),
    ],
    package_data={PACKAGE: ["config/*.yaml", "assets/*.pt"]},
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="concerto_ros developers",
    maintainer_email="dev@concerto-ros.invalid",
    description="ROS 2 perception with the Concerto and Cross4D point-cloud encoders.",
    license="Apache-2.0",
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            "concerto = concerto_ros.cli:main",
            "perception_node = concerto_ros.ros.node:main",
            "perception_lifecycle_node = concerto_ros.ros.lifecycle:main",
        ],
    },
)

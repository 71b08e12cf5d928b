"""ament_python package; also a plain pip package (ROS runtime from the PyPI ros-* wheels)."""

from glob import glob

from setuptools import find_packages, setup

package_name = "ukpgan_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "benchmarks"]),
    package_data={package_name: ["weights/*.safetensors", "weights/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
    ],
    # Python dependencies are pinned in requirements.txt (torch must be the 2.13.0 CPU/CUDA build
    # the machine provides); ROS dependencies are in package.xml.
    install_requires=["setuptools"],
    extras_require={"bench": ["small_gicp==1.0.1", "kiss-icp==1.3.0"]},
    zip_safe=False,
    maintainer="ukpgan_ros developers",
    maintainer_email="dev@ukpgan-ros.invalid",
    description="UKPGAN learned 3D keypoints and rigid registration for ROS 2 depth streams",
    license="MIT",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "detector = ukpgan_ros.ros.detector_node:main",
            "depth_player = ukpgan_ros.ros.player_node:main",
            "ukpgan = ukpgan_ros.cli:main",
        ],
    },
)

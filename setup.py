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
    # Compatible ranges; requirements.txt pins the tested versions (the lock). A bare torch
    # requirement lets pip pick its default build, which on Linux is the CUDA one (several GB):
    # install the torch build you want first (e.g. the CPU wheel), and this range keeps it.
    # The ROS 2 runtime comes from a ROS install (package.xml) or the [ros] extra's PyPI wheels;
    # every command but `ukpgan demo` and the nodes runs without it.
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.26",
        "scipy>=1.11",
        "torch>=2.1",
        "open3d>=0.18",
        "matplotlib>=3.7",
        "safetensors>=0.4",
        "tqdm>=4.64",
        "threadpoolctl>=3.1",
        "numba>=0.59",  # the compiled kernels (voxel grid, SHOT, normals, RANSAC)
        "rosbags>=0.11,<0.12",
        "gtsam>=4.3,<4.4",  # keyframe pose graphs (loop closure, map merging)
    ],
    extras_require={
        # ROS 2 Kilted's rclpy and message packages as PyPI wheels ([fastrtps]: the RMW library).
        "ros": [
            "ros-rclpy[fastrtps]~=9.1",
            "ros-builtin-interfaces~=2.3",
            "ros-std-msgs~=5.5",
            "ros-sensor-msgs~=5.5",
            "ros-geometry-msgs~=5.5",
            "ros-visualization-msgs~=5.5",
            "ros-diagnostic-msgs~=5.5",
            "ros-lifecycle-msgs~=2.3",
            "ros-std-srvs~=5.5",
            "ros-nav-msgs~=5.5",
        ],
        # The registration peers benchmarks/ compares against, at the versions measured.
        "bench": ["small_gicp==1.0.1", "kiss-icp==1.3.0", "kiss-matcher==1.0.2"],
        "test": ["pytest>=8", "PyYAML>=6.0", "pillow>=9", "hypothesis>=6.100"],
    },
    zip_safe=False,
    maintainer="ukpgan_ros developers",
    maintainer_email="dev@ukpgan-ros.invalid",
    description="UKPGAN learned 3D keypoints and rigid registration for ROS 2 depth streams",
    license="MIT",
    entry_points={
        "console_scripts": [
            "detector = ukpgan_ros.ros.detector_node:main",
            "depth_player = ukpgan_ros.ros.player_node:main",
            "ukpgan = ukpgan_ros.cli:main",
        ],
    },
)

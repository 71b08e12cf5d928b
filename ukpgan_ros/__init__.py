"""ukpgan_ros: learned 3D keypoints (UKPGAN) and rigid registration for depth streams.

The numeric core (everything outside ``ukpgan_ros.ros``) imports no ROS module, so it
runs, tests and trains without a ROS graph.
"""

__version__ = "0.1.0"

"""ROS-facing helpers: message builders and nodes (these modules may import ROS packages)."""

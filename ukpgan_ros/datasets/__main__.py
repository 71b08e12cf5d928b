"""``python -m ukpgan_ros.datasets``: the synthetic LiDAR's figures (scan size and casting time per
motion, and the mean point error of its scans raw and deskewed); see
:func:`ukpgan_ros.datasets.synthetic_lidar.lidar_figures`."""

from ukpgan_ros.datasets.synthetic_lidar import lidar_figures

raise SystemExit(lidar_figures())

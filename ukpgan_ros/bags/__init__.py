"""Bags without ROS: ``ukpgan record`` turns a depth sequence into a bag, ``ukpgan bag`` runs the
pipeline over a bag and writes its results next to the input topics.

- :mod:`ukpgan_ros.bags.messages`: messages as rosbags dataclasses (the rosbags back end of
  :mod:`ukpgan_ros.outputs`);
- :mod:`ukpgan_ros.bags.writer`: :class:`~ukpgan_ros.bags.writer.BagWriter` (MCAP, chunk CRCs
  filled, nothing left behind on an error);
- :mod:`ukpgan_ros.bags.record`: ``ukpgan record``;
- :mod:`ukpgan_ros.bags.process`: ``ukpgan bag``.

The reader is :mod:`ukpgan_ros.datasets.bag` (a bag as a depth sequence), which checks MCAP
files chunk by chunk (:mod:`ukpgan_ros.datasets.mcap`) before it trusts them.

Messages are built and serialised with rosbags' type system (ROS 2 Kilted definitions; the
types used here hash the same from Humble to Kilted), so nothing here imports ROS. Output is a
ROS 2 bag in MCAP storage: a single ``.mcap`` file when the name ends in ``.mcap``, else a rosbag2
folder (``metadata.yaml`` + the MCAP file). Both play with ``ros2 bag play`` and read back with
rosbags or :class:`ukpgan_ros.datasets.bag.BagSequence`.
"""

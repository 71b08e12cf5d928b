"""UKPGAN (You et al., CVPR 2022): networks, losses, procedural training shapes, training loop.

The detector only needs ``networks.Encoder`` and ``checkpoint``; training pieces import lazily.
"""

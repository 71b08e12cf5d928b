"""UKPGAN (You et al., CVPR 2022): networks, losses, procedural training shapes, training loop.

Detection needs only ``networks.Encoder``, ``features`` (SHOT at the model's radius) and
``checkpoint``; ``dataset``/``train`` are for training and are never imported by the detector.
"""

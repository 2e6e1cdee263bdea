"""Placeholder until issue 4 ([learn]) lands: the tutorial's loss functions."""

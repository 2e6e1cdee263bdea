"""Placeholder until issue 3 ([chain]) lands: batched linear-chain kernels."""

"""Adapters that plug the Pallas kernels into `workbench.attention.attention`."""

from workbench.attention.dispatch import AttentionImpl

IMPLS: list[AttentionImpl] = []

"""Samplers: diffusion decoding (SUNDAE and masked). AR decoding lives in workbench.models.decoding."""

from workbench.models.decoding import ARSamplingConfig, generate
from workbench.sampling.diffusion import DiffusionOutput, DiffusionSamplingConfig, diffusion_sample

__all__ = ["ARSamplingConfig", "DiffusionOutput", "DiffusionSamplingConfig", "diffusion_sample", "generate"]

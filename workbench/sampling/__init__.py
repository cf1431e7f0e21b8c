"""Samplers: KV-cached AR decoding (`ar`) and diffusion decoding over any registered
diffusion process (`diffusion`). Both reach the model only through its denoiser interface."""

from workbench.sampling.ar import ARSamplingConfig, Generation, generate
from workbench.sampling.diffusion import DiffusionOutput, DiffusionSamplingConfig, diffusion_sample

__all__ = ["ARSamplingConfig", "DiffusionOutput", "DiffusionSamplingConfig", "Generation", "diffusion_sample",
           "generate"]

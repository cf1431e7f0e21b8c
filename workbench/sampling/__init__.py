"""Samplers: KV-cached AR decoding (`ar`), full-canvas diffusion decoding over any registered
diffusion process (`diffusion`) and block diffusion with an exact KV cache (`block`). All
reach the model only through its denoiser interface; diffusion and block decoding share the
processes' decoding policies (`workbench.processes.policies`) and one config of what every
diffusion sampler has (`config.SamplerConfig`)."""

from workbench.sampling.ar import ARSamplingConfig, Generation, generate
from workbench.sampling.block import BlockOutput, BlockSamplingConfig, block_sample
from workbench.sampling.config import SamplerConfig
from workbench.sampling.diffusion import (DiffusionOutput, DiffusionSamplingConfig, diffusion_sample, length_report,
                                          rerank_scores)

__all__ = ["ARSamplingConfig", "BlockOutput", "BlockSamplingConfig", "DiffusionOutput", "DiffusionSamplingConfig",
           "Generation", "SamplerConfig", "block_sample", "diffusion_sample", "generate", "length_report", "rerank_scores"]

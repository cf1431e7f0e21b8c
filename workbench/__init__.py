"""workbench: a JAX research workbench for text diffusion language models (AR2Diff)."""

__version__ = "0.1.0"

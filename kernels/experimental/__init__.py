"""Kernels not yet measured on hardware: selectable by name, never chosen by impl="auto".

`hopper` (Pallas Mosaic GPU for sm_90: TMA, wgmma, warp specialisation) has only been
lowered for an H100 and replayed in plain JAX on CPU (`hopper_emulate`); it leaves this
folder, and joins impl="auto", once `python -m workbench.benchmarks.hopper_check` has
passed on an H100/H200 (see kernels/NOTES.md).
"""

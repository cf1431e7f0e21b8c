"""CPU kernels written in C++ as XLA FFI custom calls (`jax.ffi`), imported as `workbench.kernels.cpu`.

The C++ sources in this folder are compiled by `make cpu-kernels` (part of `make env`) into one
shared library, `build/kernels/libworkbench_cpu.so` (git-ignored), loaded on first use.
"""

from workbench.kernels.cpu.gguf_matmul import BLOCK_BYTES, dequantize_blocks, gguf_matmul
from workbench.kernels.cpu.int8_matmul import int8_matmul
from workbench.kernels.cpu.library import BUILD_COMMAND, LIBRARY_PATH, KernelLibraryMissing, has_avx512, load_library

__all__ = ["int8_matmul", "gguf_matmul", "dequantize_blocks", "BLOCK_BYTES", "BUILD_COMMAND", "LIBRARY_PATH",
           "KernelLibraryMissing", "has_avx512", "load_library"]

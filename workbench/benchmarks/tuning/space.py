"""What the block-size sweep tries: its steps, their candidate values, and its config.

Each of the kernels' three pallas_calls (forward, dq, dk/dv) is tuned in steps: its tiles,
then (GPU only) its Triton launch settings on the best tiles. A step sets some fields of the
kernel's block sizes (`GpuBlockSizes`, `TpuBlockSizes`) to one candidate value at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from workbench.benchmarks import kernels as bench_kernels
from workbench.benchmarks.kernels import BenchConfig
from workbench.kernels.common import SUPPORTED_HEAD_DIMS
from workbench.kernels.flash_gpu import GpuBlockSizes, default_num_warps
from workbench.kernels.flash_tpu import TpuBlockSizes

KERNELS = ("gpu", "tpu")
DEFAULT_MASKS = ("causal", "prefix_lm")
MAX_DEFAULT_CONFIGS = 80  # timed configs in a default sweep (GPU: 76, roughly 4-7 min on an H100, estimated)
TOLERANCE = {"bfloat16": 2e-2, "float32": 1e-4}  # relative error vs the float32 reference


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    pass_name: str  # the pallas_call it tunes: "fwd", "dq" or "dkv"
    fields: tuple[str, ...]  # the block-size fields it sets, in candidate-value order

    @property
    def timed(self) -> str:
        """The forward call is timed alone; dq and dk/dv run only in the backward."""
        return "fwd" if self.pass_name == "fwd" else "fwd+bwd"


STEPS = {step.name: step for step in (
    Step("fwd_tiles", "fwd", ("block_q", "block_k")),
    Step("fwd_launch", "fwd", ("num_warps", "num_stages")),
    Step("dq_tiles", "dq", ("block_q_dq", "block_k_dq")),
    Step("dq_launch", "dq", ("num_warps_dq", "num_stages_dq")),
    Step("dkv_tiles", "dkv", ("block_q_dkv", "block_k_dkv")),
    Step("dkv_launch", "dkv", ("num_warps_dkv", "num_stages_dkv")),
)}  # in sweep order: each launch step runs on its pass's best tiles
KERNEL_STEPS = {"gpu": tuple(STEPS), "tpu": ("fwd_tiles", "dq_tiles", "dkv_tiles")}  # Mosaic: no warps

# Candidate values per step, (kernel, interpret) -> step -> value tuples in the step's field
# order. The base block sizes' values are prepended when missing; they are each step's baseline.
# Launch values follow the Triton tutorial (forward: 3 stages; backward: 4 warps, 5 stages) and
# JAX's Triton kernel (4 warps when a backward tile is smaller than 128 x 128).
CANDIDATES: dict[tuple[str, bool], dict[str, tuple[tuple, ...]]] = {
    ("gpu", False): {
        "fwd_tiles": ((128, 128), (64, 64), (64, 128)),
        "fwd_launch": ((4, 3), (8, 3)),
        "dq_tiles": ((128, 64), (64, 64)),
        "dq_launch": ((4, 3), (4, 5)),
        "dkv_tiles": ((64, 128), (64, 64)),
        "dkv_launch": ((4, 3), (4, 5)),
    },
    ("tpu", False): {
        "fwd_tiles": ((256, 256), (512, 512), (256, 512)),
        "dq_tiles": ((256, 256), (512, 512)),
        "dkv_tiles": ((256, 256), (512, 512)),
    },
    # Interpret mode on the tiny CPU shape (T=64): two candidates per step, for CI.
    ("gpu", True): {"fwd_tiles": ((32, 32),), "fwd_launch": ((8, 3),), "dq_tiles": ((32, 64),),
                    "dq_launch": ((8, 3),), "dkv_tiles": ((64, 32),), "dkv_launch": ((8, 3),)},
    ("tpu", True): {"fwd_tiles": ((32, 32),), "dq_tiles": ((32, 64),), "dkv_tiles": ((64, 32),)},
}


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """One sweep: which kernel, at which benchmark shape, over which candidates."""

    kernel: str  # "gpu" (flash_attention_gpu) or "tpu" (flash_attention_tpu)
    interpret: bool
    bench: BenchConfig  # the kernel benchmark's shape, dtype, warmup/repeats, masks and seed
    candidates: dict[str, tuple[tuple, ...]]  # step name -> value tuples (see CANDIDATES)
    rel_tol: Optional[float] = None  # None: TOLERANCE[bench.dtype]

    def __post_init__(self):
        bench = self.bench
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel={self.kernel!r}: expected one of {KERNELS}")
        # BenchConfig checks its masks and timing; these are the kernels' own limits.
        if any(d not in SUPPORTED_HEAD_DIMS for d in bench.head_dims):
            raise ValueError(f"head_dims={bench.head_dims!r}: the kernels support {SUPPORTED_HEAD_DIMS}")
        if bench.dtype not in TOLERANCE:
            raise ValueError(f"dtype={bench.dtype!r}: expected one of {tuple(TOLERANCE)}")
        if bench.impls is not None:
            raise ValueError(f"bench.impls={bench.impls!r}: the sweep times one kernel, chosen by "
                             f"kernel=; expected None")
        if self.rel_tol is not None and not self.rel_tol > 0:
            raise ValueError(f"rel_tol={self.rel_tol}: expected a positive relative error bound")
        steps = KERNEL_STEPS[self.kernel]
        for step_name, values in self.candidates.items():
            if step_name not in steps:
                raise ValueError(f"candidates for step {step_name!r}: the {self.kernel} kernel's steps "
                                 f"are {steps}")
            for value in values:
                if len(value) != len(STEPS[step_name].fields):
                    raise ValueError(f"candidate {value!r} for step {step_name!r}: expected values for "
                                     f"{STEPS[step_name].fields}")
                block_sizes(self, SUPPORTED_HEAD_DIMS[0], step_name, value)  # raises on bad values

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.bench.dtype] if self.rel_tol is None else self.rel_tol

    @property
    def steps(self) -> tuple[str, ...]:
        """The steps with candidates, in sweep order."""
        return tuple(s for s in STEPS if s in self.candidates)

    def with_bench(self, **changes) -> TuneConfig:
        """A copy with some benchmark fields (shape, timing, masks, seed) changed."""
        return dataclasses.replace(self, bench=dataclasses.replace(self.bench, **changes))


def default_config(platform: str, kernel: Optional[str] = None,
                   masks: Sequence[str] = DEFAULT_MASKS) -> TuneConfig:
    """The kernel benchmark's shape for `platform`; interpret mode on CPU."""
    kernel = kernel or ("tpu" if platform == "tpu" else "gpu")
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: expected one of {KERNELS}")
    interpret = platform == "cpu"
    bench = dataclasses.replace(bench_kernels.default_config(platform), masks=tuple(masks))
    return TuneConfig(kernel=kernel, interpret=interpret, bench=bench, candidates=CANDIDATES[(kernel, interpret)])


def base_block_sizes(kernel: str, head_dim: int):
    """The kernel's defaults, with GPU warps spelled out (None means `default_num_warps`) so
    each launch step's baseline is an explicit candidate."""
    if kernel == "gpu":
        warps = default_num_warps(head_dim)
        return GpuBlockSizes(num_warps=warps, num_warps_dq=warps, num_warps_dkv=warps)
    return TpuBlockSizes()


def block_sizes(config: TuneConfig, head_dim: int, step_name: str, value: tuple, base=None):
    """`base` (default: the kernel's defaults) with `step_name`'s fields set to `value`."""
    base = base_block_sizes(config.kernel, head_dim) if base is None else base
    blocks = dataclasses.replace(base, **dict(zip(STEPS[step_name].fields, value)))
    if isinstance(blocks, TpuBlockSizes):
        blocks.check(config.interpret)
    return blocks


def step_values(blocks, step_name: str) -> tuple:
    return tuple(getattr(blocks, field) for field in STEPS[step_name].fields)


def row_values(row: dict) -> tuple:
    """A result row's candidate values in its step's field order (saved JSON sorts the keys)."""
    return tuple(row["values"][field] for field in STEPS[row["step"]].fields)


def step_candidates(config: TuneConfig, head_dim: int, step_name: str, base=None) -> list[tuple]:
    """The baseline (base's values) first, then the configured candidates, without repeats."""
    if step_name not in config.candidates:
        return []
    base = base_block_sizes(config.kernel, head_dim) if base is None else base
    values = [step_values(base, step_name)]
    values += [tuple(v) for v in config.candidates[step_name] if tuple(v) not in values]
    return values


def count_timed_configs(config: TuneConfig) -> int:
    per_mask = sum(len(step_candidates(config, d, s)) for d in config.bench.head_dims for s in config.steps)
    return per_mask * len(config.bench.masks)

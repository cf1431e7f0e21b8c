"""What every diffusion sampler has, validated once.

A sampler is composed of objects: the diffusion process (`workbench.processes`, built here
once from the config's ids and the model's vocabulary; it owns its schedule), the decoding
policy (a `Policy` object carrying its own parameters; None: the process's default) and this
config's shared numbers. `DiffusionSamplingConfig` (full canvas) and `BlockSamplingConfig`
(blocks with a KV cache) add only their own fields. The ids come from the tokenizer in one
way: `for_tokenizer` (`workbench.data.special.diffusion_ids`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from workbench.processes import DiffusionProcess, Policy, get_process, policy_names, process_names


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    process: str = "uniform"  # a diffusion process name (workbench.processes: "uniform", "absorbing", ...)
    policy: Optional[Policy] = None  # a decoding policy object (workbench.processes.policies); None: the process's
    num_steps: int = 10  # denoising steps per canvas: the whole target, or one block (a budget) in block decoding
    num_samples: int = 1  # samples per example; the one with the lowest mean -log p is kept
    temperature: float = 0.0  # 0: argmax
    eos_id: Optional[int] = 1  # block decoding stops an example at its first EOS (None: never)
    pad_id: int = 0  # what fills the canvas after EOS; `score_excludes_padding` leaves it out
    special_ids: tuple[int, ...] = (0, 1, 2)  # never drawn for a random canvas or as noise
    mask_id: int = 3  # the absorbing token

    def __post_init__(self):
        for name in ("num_steps", "num_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected an int >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0: argmax)")
        if self.process not in process_names():
            raise ValueError(f"process={self.process!r}; expected one of {list(process_names())}")
        if self.policy is not None and not isinstance(self.policy, Policy):
            raise ValueError(f"policy={self.policy!r}: expected a Policy object or None (the process's default); "
                             f"build one by name with get_policy(name, ...) from {list(policy_names())}, "
                             f"e.g. Threshold(threshold=0.9)")

    @classmethod
    def for_tokenizer(cls, tokenizer, *, model_vocab_size: Optional[int] = None, **options):
        """The config with the tokenizer's never-drawn, mask, EOS and padding ids for its process
        (and the rows of a padded embedding past the tokenizer, given `model_vocab_size`);
        `options` set the other fields (and win over the tokenizer's ids)."""
        from workbench.data.special import diffusion_ids

        process = options.get("process", next(f.default for f in dataclasses.fields(cls) if f.name == "process"))
        return cls(**{**diffusion_ids(tokenizer, process, model_vocab_size), **options})

    def make_process(self, vocab_size: int) -> DiffusionProcess:
        """The process this config names, over the model's `vocab_size`."""
        return get_process(self.process, vocab_size, self.special_ids, self.mask_id)

    def decoding_policy(self, process: DiffusionProcess) -> Policy:
        """The policy `process.step` takes: the config's, else the process's default."""
        return process.default_policy if self.policy is None else self.policy

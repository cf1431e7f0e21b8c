"""Model configs: one frozen dataclass, named presets, and a closed-form parameter count.

Shapes of the paper-sized presets follow T5.1.1 (the paper leaves layer sizes unstated;
these reproduce its parameter counts with a tied 256K vocabulary: ~280M / ~570M / ~1.7B
for decoder-only models).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import jax

from workbench.models.architectures import ARCHITECTURES, ATTENTION_KINDS, Architecture, get_architecture

AttentionKind = Literal["causal", "prefix_lm", "bidirectional", "prefix_diffusion", "block_causal"]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1-style rotary frequency scaling (`rope_type: llama3` in Hugging Face configs):
    long wavelengths are divided by `factor`, short ones kept, the band between interpolated."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_len: int

    def __post_init__(self):
        if self.factor <= 0 or self.original_max_len <= 0 or not 0 < self.low_freq_factor < self.high_freq_factor:
            raise ValueError(
                f"rope scaling {self} needs factor > 0, original_max_len > 0 and "
                f"0 < low_freq_factor < high_freq_factor"
            )


# The projections an adapter can target, by their Hugging Face (and PEFT) names.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters (LoRA) on a frozen base: each targeted projection W becomes
    W + (alpha / rank) * A @ B with A [in, rank] (small random) and B [rank, out] (zeros), so a
    fresh adapter gives the base model's outputs bitwise. Only the adapter, the embedding rows
    of `trainable_rows` (e.g. a new mask token's) and, with `train_norms`, the RMSNorm scales
    train; every other weight is frozen (`workbench.models.lora.Frozen`, not an `nnx.Param`)."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = LORA_TARGETS
    trainable_rows: tuple[int, ...] = ()  # token ids whose embedding rows train (a delta on the frozen row)
    train_norms: bool = False

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRAConfig.rank={self.rank!r}: expected a positive int (e.g. 8)")
        if not self.alpha > 0:
            raise ValueError(f"LoRAConfig.alpha={self.alpha!r}: expected a positive number (the scale is alpha/rank)")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"LoRAConfig.targets={self.targets!r}: expected a non-empty subset of {LORA_TARGETS}")
        if len(set(self.trainable_rows)) != len(self.trainable_rows) or any(i < 0 for i in self.trainable_rows):
            raise ValueError(f"LoRAConfig.trainable_rows={self.trainable_rows!r}: expected distinct token ids >= 0")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A Transformer of the AR2Diff family.

    `attention` is the self-attention mask of the decoder stack (the encoder of an
    encoder-decoder model is always bidirectional). Changing it is how an AR model
    becomes a diffusion model on the same parameters (AR2Diff).
    """

    vocab_size: int
    d_model: int = 512
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: Optional[int] = None  # None: same as num_heads (multi-head attention)
    d_ff: int = 1408  # hidden width of the gated MLP
    arch: str = "decoder"  # a key of workbench.models.architectures.ARCHITECTURES
    num_encoder_layers: Optional[int] = None  # encoder_decoder only; None: num_layers
    max_len: int = 1024
    attention: AttentionKind = "causal"
    block_size: Optional[int] = None  # tokens per block; block_causal attention only (block diffusion)
    tie_embeddings: bool = True
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    dtype: str = "bfloat16"  # compute dtype; parameters are always float32
    remat: bool = False  # rematerialise each layer in the backward pass
    attention_impl: str = "auto"  # see workbench.attention.attention
    # Imported architectures (workbench.pretrained); the defaults are the workbench's own models.
    head_dim_override: Optional[int] = None  # None: d_model / num_heads (Qwen3 sets its own)
    qkv_bias: bool = False  # biases on the query/key/value projections (Qwen2/2.5)
    qk_norm: bool = False  # RMSNorm over each query/key head before rotary (Qwen3)
    rope_scaling: Optional[RopeScaling] = None  # Llama 3.1-style frequency scaling
    scale_logits: bool = True  # logits * d_model**-0.5 (workbench models); False for imported ones
    # Diffusion denoiser: the logit at position i predicts token i+1 (DiffuLLaMA, Dream), so a
    # pretrained AR head keeps its meaning; False is the paper's form (position i predicts token i).
    shift_targets: bool = False
    # Adapters on a frozen base (`workbench.models.lora.with_lora`); None: every weight trains.
    lora: Optional[LoRAConfig] = None

    def __post_init__(self):
        if self.vocab_size <= 0:
            raise ValueError(f"vocab_size={self.vocab_size} must be positive; take it from the tokenizer")
        if self.head_dim_override is not None and self.head_dim_override <= 0:
            raise ValueError(f"head_dim_override={self.head_dim_override} must be positive (or None)")
        if self.head_dim_override is None and self.d_model % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} does not divide d_model={self.d_model}; "
                f"choose num_heads among the divisors of d_model (head_dim = d_model / num_heads)"
            )
        if self.kv_heads <= 0 or self.num_heads % self.kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} "
                f"(grouped-query attention shares each key/value head among a group of query heads)"
            )
        arch = self.arch_spec
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention={self.attention!r}; expected one of {ATTENTION_KINDS}")
        if self.attention == "block_causal":
            if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size < 1:
                raise ValueError(f"attention='block_causal' needs block_size, a positive int (tokens per block); "
                                 f"got {self.block_size!r}")
        elif self.block_size is not None:
            raise ValueError(f"block_size={self.block_size!r} is only used by attention='block_causal', not "
                             f"{self.attention!r}; set block_size=None or attention='block_causal'")
        if self.attention not in arch.attention_kinds:
            others = [a for a, spec in ARCHITECTURES.items() if self.attention in spec.attention_kinds]
            raise ValueError(
                f"arch={self.arch!r} with attention={self.attention!r}: its decoder takes {arch.attention_kinds}; "
                f"use arch={others[0]!r} for {self.attention!r}, or one of those kinds"
            )
        if self.shift_targets and not arch.decoder_only:
            raise ValueError(
                "shift_targets=True is for decoder-only models (each target is read from the position before it, "
                "which an encoder-decoder's first target lacks); use arch='decoder' or shift_targets=False"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.lora is not None:
            if not arch.decoder_only:
                raise ValueError("lora is implemented for decoder-only models (arch='decoder'); got arch="
                                 f"{self.arch!r}")
            bad = [i for i in self.lora.trainable_rows if i >= self.vocab_size]
            if bad:
                raise ValueError(f"lora.trainable_rows {bad} are outside the vocabulary (vocab_size={self.vocab_size})")
        if self.dtype not in ("bfloat16", "float32", "float16"):
            raise ValueError(f"dtype={self.dtype!r}; expected 'bfloat16', 'float32' or 'float16'")

    @property
    def arch_spec(self) -> Architecture:
        return get_architecture(self.arch)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads if self.head_dim_override is None else self.head_dim_override

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def encoder_layers(self) -> int:
        return self.num_layers if self.num_encoder_layers is None else self.num_encoder_layers

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# name -> shape (vocab_size comes from the tokenizer unless the preset is paper-sized)
PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=64, num_layers=2, num_heads=4, d_ff=192, max_len=256),
    "small": dict(d_model=384, num_layers=8, num_heads=6, d_ff=1536, max_len=512),
    "base": dict(d_model=768, num_layers=12, num_heads=12, d_ff=2048, max_len=1024),
    "paper_base": dict(d_model=768, num_layers=12, num_heads=12, d_ff=2048, max_len=1024, vocab_size=256_000),
    "paper_large": dict(d_model=1024, num_layers=24, num_heads=16, d_ff=2816, max_len=1024, vocab_size=256_000),
    "paper_xl": dict(d_model=2048, num_layers=24, num_heads=32, d_ff=5120, max_len=1024, vocab_size=256_000),
}


def default_compute_dtype() -> str:
    """float32 on CPU, where XLA has no fast bf16 matmuls (bf16 ran 2-8x slower here), else bfloat16."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def get_preset(name: str, vocab_size: Optional[int] = None, **overrides) -> ModelConfig:
    """A preset by name; `vocab_size` (from the tokenizer) overrides the preset's own."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    fields = dict(PRESETS[name])
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    if "vocab_size" not in fields:
        raise ValueError(f"preset {name!r} needs vocab_size: pass tokenizer.vocab_size")
    fields.update(overrides)
    return ModelConfig(**fields)


def param_count(config: ModelConfig) -> dict[str, int]:
    """Closed-form parameter count by part, and the total."""
    d, hd = config.d_model, config.head_dim
    attn = d * config.num_heads * hd * 2 + d * config.kv_heads * hd * 2  # q, o and k, v
    attn += (config.num_heads + 2 * config.kv_heads) * hd if config.qkv_bias else 0
    attn += 2 * hd if config.qk_norm else 0
    mlp = 3 * d * config.d_ff  # gate, up, down
    block = attn + mlp + 2 * d  # two RMSNorm scales
    embed = config.vocab_size * d * (1 if config.tie_embeddings else 2)
    counts = {"embedding": embed}
    for stack in config.arch_spec.stacks:
        cross = attn + d if stack.cross_attention else 0  # cross-attention and its norm
        counts[stack.name] = getattr(config, stack.depth_field) * (block + cross) + d
    counts["total"] = sum(counts.values())
    return counts


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Forward+backward FLOPs per trained token (6N plus attention), for MFU estimates."""
    n = param_count(config)["total"] - config.vocab_size * config.d_model * (0 if config.tie_embeddings else 1)
    layers = sum(getattr(config, stack.depth_field) for stack in config.arch_spec.stacks)
    attention = 12 * layers * config.d_model * seq_len  # QK^T and PV, fwd+bwd, dense upper bound
    return 6.0 * n + attention

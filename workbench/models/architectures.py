"""The workbench's own architectures, one entry each: what config validation, `param_count`
and the decoder-only guards need to know about them.

Adding one: its model class in models/transformer.py (listed in `MODEL_CLASSES` there) and an
`Architecture` here; nothing else branches on `ModelConfig.arch`.
"""

from __future__ import annotations

import dataclasses

# Every self-attention mask kind of a decoder stack (ModelConfig.attention).
ATTENTION_KINDS = ("causal", "prefix_lm", "bidirectional", "prefix_diffusion", "block_causal")


@dataclasses.dataclass(frozen=True)
class Stack:
    """One stack of Transformer blocks, ending in a final RMSNorm."""

    name: str  # its entry in `param_count`
    depth_field: str  # the ModelConfig attribute that gives its number of blocks
    cross_attention: bool = False  # each block also attends to the encoder's output


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str  # the value of ModelConfig.arch
    stacks: tuple[Stack, ...]
    attention_kinds: tuple[str, ...]  # the decoder self-attention kinds it takes
    # One stack over one [inputs | targets] row: what shift_targets, adapters, Hugging Face
    # export, drafting and block decoding need.
    decoder_only: bool
    ar_attention: str  # the self-attention an AR loss trains it under (the paper's Table 1)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("decoder", (Stack("decoder", "num_layers"),), ATTENTION_KINDS, decoder_only=True,
                     ar_attention="prefix_lm"),
        # The encoder already sees the inputs, so the decoder takes causal (AR) or bidirectional (diffusion).
        Architecture("encoder_decoder",
                     (Stack("encoder", "encoder_layers"), Stack("decoder", "num_layers", cross_attention=True)),
                     ("causal", "bidirectional"), decoder_only=False, ar_attention="causal"),
    )
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"arch={name!r}; expected one of {sorted(ARCHITECTURES)} (a new architecture needs "
                         f"an entry in workbench.models.architectures.ARCHITECTURES)")
    return ARCHITECTURES[name]

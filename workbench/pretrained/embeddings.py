"""Grow a model's vocabulary (e.g. a mask token for masked diffusion on an imported vocabulary)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from workbench.models.transformer import DecoderOnly, EncoderDecoder, build_model


def _grow(table_VxD: jax.Array, num_rows: int) -> jax.Array:
    # The mean row: a neutral start that keeps the new token's logit near the average one.
    mean = jnp.mean(table_VxD, axis=0, keepdims=True)
    return jnp.concatenate([table_VxD, jnp.repeat(mean, num_rows, axis=0)], axis=0)


def append_embedding_rows(model: DecoderOnly | EncoderDecoder, num_rows: int = 1) -> DecoderOnly | EncoderDecoder:
    """A new model with `num_rows` more vocabulary ids (ids V .. V+num_rows-1), each initialised
    to the mean of the existing embedding rows (and of the untied output head's rows). Every
    other parameter is bitwise unchanged; `model` itself is left as it is."""
    if num_rows < 1:
        raise ValueError(f"num_rows={num_rows} must be >= 1 (the number of new token ids)")
    config = model.config.replace(vocab_size=model.config.vocab_size + num_rows)
    new = nnx.eval_shape(lambda: build_model(config, 0))
    graphdef, state = nnx.split(model)
    nnx.update(new, jax.tree.map(lambda x: x, state))  # copies; the embedder is replaced below
    new.embedder.embedding.set_value(_grow(model.embedder.embedding[...], num_rows))
    if model.embedder.lm_head is not None:
        new.embedder.lm_head.set_value(_grow(model.embedder.lm_head[...], num_rows))
    return new

"""The tokenizer's special ids reach losses, samplers and the trajectory view once
(`workbench.data.special`: never_sampled / loss_ids / ar_ids / diffusion_ids)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.data.hf_tokenizer import HFTokenizer
from workbench.data.special import MaskToken, ar_ids, diffusion_ids, never_sampled
from workbench.objectives.losses import LossConfig
from workbench.processes import get_process
from workbench.sampling.ar import ARSamplingConfig
from workbench.sampling.block import BlockSamplingConfig
from workbench.sampling.diffusion import DiffusionSamplingConfig
from workbench.viz.trajectory import token_label

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def tok():
    return HFTokenizer.from_gguf(GOLDEN / "tokenizer_tiny_llama-bpe.gguf")  # 400 ids, control 0..4


def test_uniform_noise_never_draws_specials_or_padded_rows(tok):
    model_vocab = 448  # an embedding padded past the tokenizer's 400 ids
    config = LossConfig.for_tokenizer(tok, "uniform", model_vocab_size=model_vocab)
    process = get_process("uniform", model_vocab, config.special_ids, config.mask_id)
    clean = jnp.full((64, 256), 100, jnp.int32)
    noisy = np.asarray(process.corrupt(jax.random.key(0), clean, jnp.ones(clean.shape)).noisy)
    drawn = set(np.unique(noisy[noisy != 100]).tolist())
    assert len(drawn) > 300  # the noise really spans the vocabulary
    assert max(drawn) < tok.vocab_size and not drawn & set(tok.specials.control)
    canvas = np.asarray(process.initial_canvas(jax.random.split(jax.random.key(1), 64), 256))
    assert canvas.max() < tok.vocab_size and not set(canvas.ravel().tolist()) & set(tok.specials.control)


def test_ids_come_from_the_tokenizer(tok):
    masked = tok.with_mask_token(MaskToken())
    loss = LossConfig.for_tokenizer(masked, "absorbing", unroll=False)
    assert (loss.mask_id, loss.pad_id, loss.unroll) == (400, tok.specials.pad, False)
    assert set(loss.special_ids) == {0, 1, 2, 3, 4, 400}
    assert LossConfig.for_tokenizer(tok, "ar").pad_id == tok.specials.pad
    ar = ARSamplingConfig(**ar_ids(tok))
    assert (ar.eos_id, ar.pad_id) == (tok.specials.eos, tok.specials.pad)
    sampling = DiffusionSamplingConfig.for_tokenizer(masked, process="absorbing", num_steps=3)
    assert sampling.mask_id == 400 and 400 in sampling.special_ids and sampling.num_steps == 3
    assert (sampling.eos_id, sampling.pad_id) == (tok.specials.eos, tok.specials.pad)
    block = BlockSamplingConfig.for_tokenizer(masked, eos_id=None)  # the block sampler's default: absorbing
    assert block.mask_id == 400 and block.eos_id is None
    assert never_sampled(tok, 402) == (*tok.specials.reserved, 400, 401)


def test_absorbing_without_a_mask_token_is_a_named_error(tok):
    with pytest.raises(ValueError, match="no mask token"):
        LossConfig.for_tokenizer(tok, "absorbing")
    assert "mask_id" not in diffusion_ids(tok, "uniform")  # uniform noise never reads it
    with pytest.raises(ValueError, match="smaller than the tokenizer's 400 ids"):
        never_sampled(tok, 300)


def test_token_labels_of_a_byte_level_vocabulary(tok):
    ids = [i for i in tok.encode(" hello\n") if i != tok.specials.bos]
    labels = [token_label(tok, i) for i in ids]
    assert "".join(labels).replace("␣", " ").replace("↵", "\n") == " hello\n"
    assert all("Ġ" not in label and "Ċ" not in label for label in labels)
    assert token_label(tok, tok.specials.eos) == "⏎eos"

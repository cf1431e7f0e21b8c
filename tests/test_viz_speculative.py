"""The kept-drafts view (`workbench.viz.speculative`): statuses against hand-built outputs, and
against a real speculative decode, where the view must agree with what the sampler itself
recorded per output token (`kept`) and rebuild its output from the committed cells."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from workbench.models.config import LoRAConfig, get_preset
from workbench.models.lora import with_lora
from workbench.models.transformer import build_model
from workbench.sampling.speculative import SpeculativeConfig, speculative_generate
from workbench.viz.speculative import (AR_TOKEN, DISCARDED, KEPT, REJECTED, speculative_figure, speculative_grid,
                                       speculative_table)


class _Out(NamedTuple):  # the fields of SpeculativeOutput the view reads
    tokens: np.ndarray
    iterations: np.ndarray
    drafts: np.ndarray
    committed: np.ndarray


def _hand_output(limit=8):
    # b = 3; iteration 1 keeps both drafts, 2 rejects its first, 3 keeps one and rejects the next
    drafts = np.zeros((1, limit, 3), np.int32)
    drafts[0, :3] = [[10, 11, 12], [13, 14, 15], [16, 17, 18]]
    committed = np.zeros((1, limit), np.int32)
    committed[0, :3] = [3, 1, 2]
    return _Out(np.zeros((1, limit), np.int32), np.asarray([3]), drafts, committed)


def test_statuses_by_hand():
    tokens, status = speculative_grid(_hand_output())
    np.testing.assert_array_equal(tokens, [[10, 11, 12], [13, 14, 15], [16, 17, 18]])
    np.testing.assert_array_equal(status, [[AR_TOKEN, KEPT, KEPT],
                                           [AR_TOKEN, REJECTED, DISCARDED],
                                           [AR_TOKEN, KEPT, REJECTED]])
    table = speculative_table(_hand_output(), label=lambda t: f"t{t}")
    assert table.loc[2].tolist() == ["t13", "xt14", "-t15", 1]
    assert table.loc[3].tolist() == ["t16", "+t17", "xt18", 2]


def test_a_block_cut_by_the_budget_shows_only_what_it_committed():
    # 6 tokens of budget: 3 + 1 + 2; the last block's third position was never judged
    tokens, status = speculative_grid(_hand_output(limit=6))
    np.testing.assert_array_equal(status[-1], [AR_TOKEN, KEPT, -1])
    figure = speculative_figure(_hand_output(limit=6), label=str)
    assert figure.data[0].text[-1] == ["16", "17", ""]


def test_a_row_outside_the_batch_is_refused():
    with pytest.raises(IndexError, match="example=1 is outside the batch of 1"):
        speculative_grid(_hand_output(), 1)


def test_view_agrees_with_the_sampler_on_a_real_decode():
    vocab, mask = 17, 16
    base = build_model(get_preset("tiny", vocab_size=vocab, dtype="float32", max_len=64, tie_embeddings=False), 0)
    drafter = with_lora(base, LoRAConfig(rank=4, trainable_rows=(mask,)))
    rng = np.random.default_rng(0)
    prompts = rng.integers(4, 16, size=(6, 5)).astype(np.int32)
    lengths = np.asarray([5, 4, 3, 5, 2, 1], np.int32)
    config = SpeculativeConfig(block_size=4, max_new_tokens=20, verify=True, eos_id=None, pad_id=0, mask_id=mask)
    out = speculative_generate(drafter, prompts, lengths, config)
    statuses = []
    for row in range(len(prompts)):
        tokens, status = speculative_grid(out, row)
        committed = status != -1
        committed &= (status == AR_TOKEN) | (status == KEPT)
        np.testing.assert_array_equal(tokens[committed], np.asarray(out.tokens)[row])  # row-major = output order
        np.testing.assert_array_equal(status[committed] == KEPT, np.asarray(out.kept)[row])
        statuses.append(status)
    seen = np.concatenate([s.ravel() for s in statuses])
    assert {AR_TOKEN, KEPT, REJECTED} <= set(seen.tolist())  # the case has both verdicts

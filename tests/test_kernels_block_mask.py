"""The tile ranges in kernels/block_mask.py are exact: checked against the dense mask.

Every tile inside the computed range has a visible element, every tile outside has
none, and the "full" sub-range holds exactly the tiles with no hidden element (ranges
are computed for all tiles at once: the functions broadcast). The
kernels skip whatever lies outside the range, so a wrong range is a wrong result (too
narrow) or wasted work (too wide); both fail here.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from workbench.attention.mask import AttentionMask
from workbench.kernels import block_mask


@st.composite
def _cases(draw):
    q_len = draw(st.integers(1, 70))
    kv_len = draw(st.integers(1, 70))
    return dict(
        q_len=q_len,
        kv_len=kv_len,
        block_q=draw(st.sampled_from([8, 16, 32])),
        block_k=draw(st.sampled_from([8, 16, 32])),
        causal=draw(st.booleans()),
        prefix=draw(st.sampled_from([0, kv_len, q_len]) | st.integers(0, 80)),
        length=draw(st.sampled_from([0, kv_len]) | st.integers(0, kv_len)),
        offset=draw(st.sampled_from([0]) | st.integers(0, 40)),
    )


def _dense(c, rows: int, cols: int) -> np.ndarray:
    """[rows, cols] visibility for one example; keys at or beyond kv_len are padding."""
    mask = AttentionMask(causal=c["causal"], prefix_len=np.array([c["prefix"]], np.int32),
                         kv_lengths=np.array([min(c["length"], c["kv_len"])], np.int32),
                         q_offset=np.array([c["offset"]], np.int32))
    return np.asarray(mask.dense(1, rows, cols))[0]


@given(_cases())
def test_kv_block_range_is_exact(c):
    bq, bk = c["block_q"], c["block_k"]
    num_q, num_k = -(-c["q_len"] // bq), -(-c["kv_len"] // bk)
    dense = _dense(c, c["q_len"], num_k * bk)
    full_per_block, visible_per_block = (np.asarray(x) for x in block_mask.kv_block_range(
        np.arange(num_q, dtype=np.int32), block_q=bq, block_k=bk, q_len=c["q_len"],
        prefix=c["prefix"], kv_len=min(c["length"], c["kv_len"]), q_offset=c["offset"],
        causal=c["causal"], segmented=False))
    for q_block, num_full, num_visible in zip(range(num_q), full_per_block, visible_per_block):
        rows = dense[q_block * bq:(q_block + 1) * bq]
        tiles = [rows[:, j * bk:(j + 1) * bk] for j in range(num_k)]
        assert [t.any() for t in tiles] == [j < num_visible for j in range(num_k)], (q_block, c)
        assert [t.all() for t in tiles] == [j < num_full for j in range(num_k)], (q_block, c)


@given(_cases())
def test_q_block_range_is_exact(c):
    bq, bk = c["block_q"], c["block_k"]
    num_q, num_k = -(-c["q_len"] // bq), -(-c["kv_len"] // bk)
    dense = _dense(c, num_q * bq, num_k * bk)  # padding query rows are processed too
    visible_per_block, full_per_block = (np.asarray(x) for x in block_mask.q_block_range(
        np.arange(num_k, dtype=np.int32), block_q=bq, block_k=bk, num_q_blocks=num_q,
        prefix=c["prefix"], kv_len=min(c["length"], c["kv_len"]), q_offset=c["offset"],
        causal=c["causal"], segmented=False))
    for kv_block, first_visible, first_full in zip(range(num_k), visible_per_block, full_per_block):
        cols = dense[:, kv_block * bk:(kv_block + 1) * bk]
        tiles = [cols[i * bq:(i + 1) * bq] for i in range(num_q)]
        assert [t.any() for t in tiles] == [i >= first_visible for i in range(num_q)], (kv_block, c)
        assert [t.all() for t in tiles] == [i >= first_full for i in range(num_q)], (kv_block, c)


def test_segments_leave_no_tile_unmasked():
    num_full, num_visible = block_mask.kv_block_range(
        3, block_q=16, block_k=16, q_len=64, prefix=0, kv_len=64, q_offset=0, causal=False,
        segmented=True)
    assert (int(num_full), int(num_visible)) == (0, 4)
    first_visible, first_full = block_mask.q_block_range(
        0, block_q=16, block_k=16, num_q_blocks=4, prefix=0, kv_len=64, q_offset=0, causal=True,
        segmented=True)
    assert (int(first_visible), int(first_full)) == (0, 4)

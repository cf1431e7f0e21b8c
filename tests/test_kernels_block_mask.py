"""The tile ranges in kernels/block_mask.py are exact: checked against the dense mask.

Every tile inside the computed range has a visible element, every tile outside has
none, and the "full" sub-range holds exactly the tiles with no hidden element (ranges
are computed for all tiles at once: the functions broadcast). The
kernels skip whatever lies outside the range, so a wrong range is a wrong result (too
narrow) or wasted work (too wide); both fail here. Segment spans are checked the same
way: never too narrow for any ids, exact for packed sequences. The cases cover causal,
bidirectional and block-causal rules (block sizes that do not divide the tiles), prefixes,
key padding and query offsets of either sign.
"""

from __future__ import annotations

import numpy as np
import pytest
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
        **_rule(draw),
        prefix=draw(st.sampled_from([0, kv_len, q_len]) | st.integers(0, 80)),
        length=draw(st.sampled_from([0, kv_len]) | st.integers(0, kv_len)),
        offset=draw(st.sampled_from([0]) | st.integers(-40, 40)),
    )


def _rule(draw) -> dict:
    """causal, bidirectional, or block-causal with a block size that need not divide a tile."""
    rule = draw(st.sampled_from(["causal", "bidirectional", "block_causal"]))
    block_size = draw(st.sampled_from([1, 8, 16]) | st.integers(1, 40)) if rule == "block_causal" else None
    return dict(causal=rule == "causal", block_size=block_size)


def _rule_args(c) -> dict:
    return dict(causal=c["causal"], block_size=c["block_size"])


def _dense(c, rows: int, cols: int) -> np.ndarray:
    """[rows, cols] visibility for one example; keys at or beyond kv_len are padding."""
    mask = AttentionMask(causal=c["causal"], block_size=c["block_size"],
                         prefix_len=np.array([c["prefix"]], np.int32),
                         kv_lengths=np.array([min(c["length"], c["kv_len"])], np.int32),
                         q_offset=np.array([c["offset"]], np.int32))
    return np.asarray(mask.dense(1, rows, cols))[0]


@given(_cases())
def test_element_mask_is_the_dense_mask(c):
    q_pos = c["offset"] + np.arange(c["q_len"], dtype=np.int32)[:, None]
    k_pos = np.arange(c["kv_len"], dtype=np.int32)[None, :]
    elements = block_mask.element_mask(q_pos, k_pos, c["prefix"], min(c["length"], c["kv_len"]), **_rule_args(c))
    np.testing.assert_array_equal(np.asarray(elements), _dense(c, c["q_len"], c["kv_len"]))


@given(_cases())
def test_kv_block_range_is_exact(c):
    bq, bk = c["block_q"], c["block_k"]
    num_q, num_k = -(-c["q_len"] // bq), -(-c["kv_len"] // bk)
    dense = _dense(c, c["q_len"], num_k * bk)
    full_per_block, visible_per_block = (np.asarray(x) for x in block_mask.kv_block_range(
        np.arange(num_q, dtype=np.int32), block_q=bq, block_k=bk, q_len=c["q_len"],
        prefix=c["prefix"], kv_len=min(c["length"], c["kv_len"]), q_offset=c["offset"],
        segmented=False, **_rule_args(c)))
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
        segmented=False, **_rule_args(c)))
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


# -- segment spans ------------------------------------------------------------------------

def _spans(row_ids, col_ids, block_rows, block_cols, row_len, col_len):
    first, end = block_mask.segment_tile_spans(
        np.asarray(row_ids, np.int32), np.asarray(col_ids, np.int32), block_rows=block_rows,
        block_cols=block_cols, row_len=row_len, col_len=col_len)
    return [list(zip(f.tolist(), e.tolist())) for f, e in zip(np.asarray(first), np.asarray(end))]


def test_segment_spans_of_packed_sequences():
    q_ids = [[0] * 4 + [1] * 4 + [2] * 4]  # q tiles of 4: one segment each
    kv_ids = [[0, 0, 1, 1, 1, 1, 2, 2]]  # kv tiles of 2: segments 0 | 1 | 1 | 2
    assert _spans(q_ids, kv_ids, 4, 2, 12, 8) == [[(0, 1), (1, 3), (3, 4)]]
    # Keys 6, 7 are padding (kv length 6): kv tile 3 holds no key, q tile 2 sees nothing.
    assert _spans(q_ids, kv_ids, 4, 2, 12, [6]) == [[(0, 1), (1, 3), (0, 0)]]
    # Query rows 8.. are padding: the padding tile is empty, padding ids do not count.
    assert _spans(q_ids, kv_ids, 4, 2, 8, 8) == [[(0, 1), (1, 3), (0, 0)]]
    # Per kv tile, the q tiles (the dk/dv direction), with per-example kv lengths.
    assert _spans(kv_ids, q_ids, 2, 4, [6], 12) == [[(0, 1), (1, 2), (1, 2), (0, 0)]]


def test_segment_spans_are_conservative_for_unsorted_ids():
    q_ids = [[2, 0, 2, 0], [5, 5, 5, 5]]  # two examples; tiles of 2
    kv_ids = [[1, 1, 3, 3], [9, 9, 5, 5]]
    # Example 0: q ids span [0, 2] in both tiles, which overlaps kv tile 0's [1, 1] although
    # no id is shared (the element mask hides it) and excludes kv tile 1's [3, 3].
    assert _spans(q_ids, kv_ids, 2, 2, 4, 4) == [[(0, 1), (0, 1)], [(1, 2), (1, 2)]]


def test_segment_spans_reject_lengths_off_the_tiles():
    with pytest.raises(ValueError, match="multiple of the tile"):
        block_mask.segment_tile_spans(np.zeros((1, 10), np.int32), np.zeros((1, 8), np.int32),
                                      block_rows=4, block_cols=4, row_len=10, col_len=8)


@st.composite
def _segment_cases(draw):
    block_rows, block_cols = draw(st.sampled_from([4, 8, 16])), draw(st.sampled_from([4, 8, 16]))
    num_rows, num_cols = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    rows, cols = num_rows * block_rows, num_cols * block_cols
    ids = lambda n, sort: draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)  # noqa: E731
                               .map(lambda x: sorted(x) if sort else x))
    packed = draw(st.booleans())
    row_len, col_len = draw(st.integers(0, rows)), draw(st.integers(0, cols))
    if packed:  # one packing on both sides (self-attention), cut at the two lengths
        shared = ids(max(rows, cols), True)
        row_ids, col_ids = shared[:rows], shared[:cols]
    else:
        row_ids, col_ids = ids(rows, False), ids(cols, False)
    return dict(packed=packed, block_rows=block_rows, block_cols=block_cols, row_len=row_len,
                col_len=col_len, row_ids=np.array([row_ids]), col_ids=np.array([col_ids]))


@given(_segment_cases(), st.integers(-3, 9))
def test_segment_spans_bound_every_shared_id(c, garbage):
    """Every tile pair sharing an id lies inside the span (the kernels may skip the rest);
    for packed sequences, every tile inside the span shares one (nothing is wasted); and
    ids past the lengths (padding) never change the spans."""
    br, bc, row_len, col_len = c["block_rows"], c["block_cols"], c["row_len"], c["col_len"]
    row_ids, col_ids = c["row_ids"], c["col_ids"]
    (spans,) = _spans(row_ids, col_ids, br, bc, row_len, col_len)
    shares = (row_ids[0][:, None] == col_ids[0][None, :])
    shares[row_len:] = False
    shares[:, col_len:] = False
    for r, (first, end) in enumerate(spans):
        assert 0 <= first <= end <= col_ids.shape[1] // bc
        tile_shares = [shares[r * br:(r + 1) * br, j * bc:(j + 1) * bc].any()
                       for j in range(col_ids.shape[1] // bc)]
        for j, shared in enumerate(tile_shares):
            if shared:
                assert first <= j < end, (r, j, spans, c)
            elif c["packed"]:
                assert not first <= j < end, (r, j, spans, c)
    row_junk, col_junk = row_ids.copy(), col_ids.copy()
    row_junk[:, row_len:], col_junk[:, col_len:] = garbage, garbage
    assert _spans(row_junk, col_junk, br, bc, row_len, col_len) == [spans]

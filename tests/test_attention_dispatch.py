"""Fail-closed dispatch, mask kinds by name, the block-causal rule, and the import layering.

No kernel runs here (support checks and dense masks only), so the file takes seconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from workbench.attention import MASK_FEATURES, MASK_KINDS, AttentionMask, attention, mask_for_kind
from workbench.attention import dispatch, kernel_adapters
from workbench.kernels.experimental import hopper
from workbench.kernels.flash_gpu import flash_attention_gpu
from workbench.kernels.flash_tpu import flash_attention_tpu

CHECKOUT = Path(__file__).resolve().parents[1]

# The platform on which each registered impl runs, to show that only the mask declines it.
HOME_PLATFORM = {"xla": "cpu", "cudnn": "gpu", "pallas_gpu": "gpu", "pallas_tpu": "tpu",
                 "pallas_gpu_interpret": "cpu", "pallas_tpu_interpret": "cpu", "pallas_mosaic_gpu": "gpu"}


@struct.dataclass
class _SlidingWindowMask(AttentionMask):
    """A mask feature no implementation but the reference knows: keys within `window` of the query."""

    window: int = struct.field(pytree_node=False, default=3)

    @property
    def features(self) -> frozenset[str]:
        return super().features | {"sliding_window"}

    def dense(self, batch: int, q_len: int, kv_len: int):
        rows = jnp.arange(q_len)[:, None]
        cols = jnp.arange(kv_len)[None, :]
        return super().dense(batch, q_len, kv_len) & (rows - cols < self.window)[None]


@pytest.fixture
def on_a_hopper(monkeypatch):
    """Pretend the local GPU is an H100, so the Hopper adapter's own device check passes."""
    monkeypatch.setattr(hopper, "local_gpu_is_hopper", lambda: (True, "NVIDIA H100 (pretend)"))


def _qkv(dtype=jnp.bfloat16, q_len=16, kv_len=16):
    q = jnp.ones((1, q_len, 2, 64), dtype)
    kv = jnp.ones((1, kv_len, 2, 64), dtype)
    return q, kv, kv


def test_every_impl_is_registered_with_a_home_platform():
    assert set(dispatch.available_impls()) == set(HOME_PLATFORM)
    assert {impl.name for impl in kernel_adapters.IMPLS} <= set(HOME_PLATFORM)


def test_a_new_mask_feature_is_declined_by_every_impl_but_the_reference(on_a_hopper, monkeypatch):
    q, k, v = _qkv()
    known = AttentionMask.causal_mask()
    new = _SlidingWindowMask(causal=True, window=3)
    assert new.features == {"causal", "sliding_window"}
    for name, platform in HOME_PLATFORM.items():
        impl = dispatch.get_impl(name)
        assert impl.reason_not(q, k, v, known, platform) is None, name  # the known mask: accepted
        reason = impl.reason_not(q, k, v, new, platform)
        if name == "xla":
            assert reason is None
            continue
        assert reason is not None and "sliding_window" in reason and name in reason, (name, reason)
        monkeypatch.setattr(dispatch, "current_platform", lambda: platform)
        with pytest.raises(ValueError, match=rf"{name}.*sliding_window"):
            attention(q, k, v, new, impl=name)
    monkeypatch.undo()
    for platform in ("cpu", "gpu", "tpu"):
        assert dispatch.choose_impl(q, k, v, new, platform) == "xla"
        assert dispatch.supporting_impls(q, k, v, new, platform) == ["xla"]
    # impl="auto" falls through to the reference, which computes the new mask (through `dense`).
    x = jax.random.normal(jax.random.key(0), (1, 6, 1, 64), jnp.float32)
    scores = np.einsum("qd,kd->qk", x[0, :, 0], x[0, :, 0]) / 8.0
    window = (np.arange(6)[:, None] - np.arange(6)[None, :] < 3) & (np.arange(6)[None, :] <= np.arange(6)[:, None])
    weights = np.where(window, np.exp(scores - scores.max(axis=1, keepdims=True)), 0.0)
    want = (weights / weights.sum(axis=1, keepdims=True)) @ np.asarray(x[0, :, 0])
    np.testing.assert_allclose(attention(x, x, x, _SlidingWindowMask(causal=True))[0, :, 0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", [flash_attention_gpu, flash_attention_tpu, hopper.flash_attention_hopper])
def test_kernels_called_directly_refuse_a_new_mask_feature(kernel):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="sliding_window"):
        kernel(q, k, v, _SlidingWindowMask(causal=True), **({} if kernel is hopper.flash_attention_hopper
                                                             else {"interpret": True}))


def test_block_causal_is_declined_by_cudnn_and_hopper_and_taken_by_the_pallas_kernels(on_a_hopper):
    q, k, v = _qkv()
    mask = mask_for_kind("block_causal", block_size=4, prefix_len=[3])
    for name, platform in HOME_PLATFORM.items():
        reason = dispatch.get_impl(name).reason_not(q, k, v, mask, platform)
        if name in ("cudnn", "pallas_mosaic_gpu"):
            assert reason is not None and "block_causal" in reason, name
        else:
            assert reason is None, (name, reason)
    assert dispatch.choose_impl(q, k, v, mask, "gpu") == "pallas_gpu"
    assert dispatch.choose_impl(q, k, v, mask, "tpu") == "pallas_tpu"
    with pytest.raises(ValueError, match="block_causal"):
        hopper.flash_attention_hopper(q, k, v, mask)


def test_impls_declare_features_from_the_known_set():
    for impl in kernel_adapters.IMPLS:
        assert impl.supports <= MASK_FEATURES, impl.name
    with pytest.raises(TypeError, match="frozenset"):
        dispatch.AttentionImpl("bad", lambda *a, **k: None, lambda *a: None, {"causal"})


# -- the block-causal rule, written out by hand ---------------------------------------------

# prefix 2, blocks of 3 after it: keys 0-1 are the prefix, blocks are {2,3,4} and {5,6,7}.
BLOCK_CAUSAL_8x8 = np.array([
    [1, 1, 0, 0, 0, 0, 0, 0],  # queries in the prefix see only the prefix
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 0, 0, 0],  # block 0 sees the prefix and all of block 0
    [1, 1, 1, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 1],  # block 1 sees everything before it and all of block 1
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
], bool)


def test_block_causal_dense_mask_by_hand():
    mask = mask_for_kind("block_causal", block_size=3, prefix_len=[2])
    np.testing.assert_array_equal(mask.dense(1, 8, 8)[0], BLOCK_CAUSAL_8x8)
    # Positions are absolute: queries at 3, 4 (q_offset 3) are rows 3, 4; at -1, 0 they are
    # before the prefix and see only it. Key padding cuts columns.
    offset = mask_for_kind("block_causal", block_size=3, prefix_len=[2], q_offset=[3], kv_lengths=[6])
    np.testing.assert_array_equal(offset.dense(1, 2, 8)[0], BLOCK_CAUSAL_8x8[3:5] & (np.arange(8) < 6))
    negative = mask_for_kind("block_causal", block_size=3, prefix_len=[2], q_offset=[-1])
    np.testing.assert_array_equal(negative.dense(1, 2, 8)[0], BLOCK_CAUSAL_8x8[[0, 0]])
    # Without a prefix, blocks count from position 0.
    no_prefix = mask_for_kind("block_causal", block_size=3).dense(1, 6, 6)[0]
    np.testing.assert_array_equal(no_prefix, np.arange(6)[None, :] // 3 <= np.arange(6)[:, None] // 3)


def test_block_causal_with_segments():
    ids = jnp.array([[0, 0, 0, 0, 1, 1, 1, 1]])
    mask = mask_for_kind("block_causal", block_size=3, prefix_len=[2], q_segment_ids=ids, kv_segment_ids=ids)
    same_segment = np.asarray(ids[0][:, None] == ids[0][None, :])
    np.testing.assert_array_equal(mask.dense(1, 8, 8)[0], BLOCK_CAUSAL_8x8 & same_segment)


# -- mask kinds by name ---------------------------------------------------------------------

def test_mask_for_kind_builds_each_kind():
    prefix = jnp.array([3, 0])
    expected = {
        "causal": AttentionMask.causal_mask(),
        "prefix_lm": AttentionMask.prefix_lm(prefix),
        "bidirectional": AttentionMask.bidirectional(),
        "prefix_diffusion": AttentionMask.prefix_diffusion(prefix),
        "block_causal": AttentionMask.block_causal(4, prefix_len=prefix),
    }
    assert set(expected) == set(MASK_KINDS)
    for kind, want in expected.items():
        got = mask_for_kind(kind, prefix_len=[3, 0], block_size=4 if kind == "block_causal" else None,
                            kv_lengths=[6, 5])
        assert got.kind == kind
        np.testing.assert_array_equal(got.dense(2, 6, 6), want.replace(kv_lengths=jnp.array([6, 5])).dense(2, 6, 6))
        assert got.prefix_len is None or got.prefix_len.dtype == jnp.int32


def test_features_name_what_a_mask_uses():
    ids = jnp.zeros((1, 4), jnp.int32)
    assert AttentionMask.bidirectional().features == frozenset()
    assert mask_for_kind("prefix_lm", prefix_len=[1], kv_lengths=[4], q_offset=[0]).features == {
        "causal", "prefix", "key_padding", "q_offset"}
    assert mask_for_kind("block_causal", block_size=2, q_segment_ids=ids, kv_segment_ids=ids).features == {
        "block_causal", "segments"}


@pytest.mark.parametrize("call,message", [
    (lambda: mask_for_kind("sliding"), "unknown mask kind 'sliding'"),
    (lambda: mask_for_kind("block_causal"), "needs block_size"),
    (lambda: mask_for_kind("causal", block_size=4), "only used by mask kind 'block_causal'"),
    (lambda: mask_for_kind("prefix_lm"), "needs prefix_len"),
    (lambda: AttentionMask(causal=True, block_size=4), "causal=True, block_size=4"),
    (lambda: AttentionMask.block_causal(0), "block_size=0"),
    (lambda: AttentionMask.block_causal(-2), "block_size=-2"),
    (lambda: AttentionMask.block_causal(True), "block_size=True"),
    (lambda: AttentionMask.block_causal(2.0), "block_size=2.0"),
])
def test_bad_masks_are_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# -- imports run one way: models -> attention -> kernels --------------------------------------

def _runtime_imports(path: Path) -> set[str]:
    """Modules a file imports outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree)
               if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
               for node in ast.walk(block)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder,allowed", [
    ("kernels", ("workbench.kernels",)),
    ("workbench/attention", ("workbench.attention", "workbench.kernels", "workbench.distributed")),
])
def test_imports_run_one_way(folder, allowed):
    for path in sorted((CHECKOUT / folder).rglob("*.py")):
        for name in _runtime_imports(path):
            if name.startswith("workbench"):
                assert name.startswith(allowed), f"{path.relative_to(CHECKOUT)} imports {name}"

"""The block drafter's training side (`workbench.objectives.drafting`) against independent references:
the draft-stream mask against a double loop written from its docstring's rule, the training logits
against what the drafter computes at decoding time (a base-model KV cache of the committed text, then
the noisy block with the adapter on), the loss against numpy, and the noise's invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, strategies as st

from workbench.attention import AttentionMask, attention, mask_for_kind
from workbench.attention.dispatch import _REGISTRY
from workbench.models.config import LoRAConfig, get_preset
from workbench.models.lora import adapter_gate, with_lora
from workbench.models.transformer import build_model, with_attention
from workbench.objectives import drafting
from workbench.objectives.batch import seq2seq_batch
from workbench.objectives.drafting import DraftConfig, draft_forward, draft_loss, draft_noise
from workbench.objectives.losses import LossConfig, loss_fn

V = 16
MASK = 3


# -- the draft-stream mask ---------------------------------------------------------------------------------

def _loop_mask(batch, q_len, kv_len, b, prefix, offset, lengths):
    """The rule of mask.py's docstring, one (query, key) at a time: keys are [context | own stream]; a
    query in block k (blocks of b from prefix_len) sees context keys causally and strictly before its
    block (all causal context keys when the query sits inside the prefix) and its own block's stream keys."""
    context = kv_len - q_len
    out = np.zeros((batch, q_len, kv_len), bool)
    for e in range(batch):
        for i in range(q_len):
            q = offset[e] + i
            for j in range(kv_len):
                if j < context:
                    p = j
                    if q < prefix[e]:
                        ok = p <= q
                    else:
                        ok = p <= q and (p - prefix[e]) // b < (q - prefix[e]) // b
                else:
                    p = offset[e] + (j - context)
                    ok = q >= prefix[e] and p >= prefix[e] and (p - prefix[e]) // b == (q - prefix[e]) // b
                if lengths is not None:
                    ok = ok and p < lengths[e]
                out[e, i, j] = ok
    return out


@given(data=st.data(), batch=st.integers(1, 3), q_len=st.integers(1, 7), context=st.integers(0, 9),
       b=st.integers(1, 4), use_lengths=st.booleans())
def test_draft_dense_matches_the_docstring_rule(data, batch, q_len, context, b, use_lengths):
    kv_len = context + q_len
    prefix = [data.draw(st.integers(0, context + 2)) for _ in range(batch)]
    offset = [data.draw(st.integers(-2, context + 2)) for _ in range(batch)]
    lengths = [data.draw(st.integers(0, kv_len + 3)) for _ in range(batch)] if use_lengths else None
    mask = AttentionMask.draft_stream(b, prefix_len=prefix, q_offset=offset, kv_lengths=lengths)
    assert mask.kind == "draft_stream" and "draft_stream" in mask.features
    got = np.asarray(mask.dense(batch, q_len, kv_len))
    np.testing.assert_array_equal(got, _loop_mask(batch, q_len, kv_len, b, prefix, offset, lengths))


def test_draft_stream_needs_context_keys_and_refuses_mixing():
    mask = AttentionMask.draft_stream(2, prefix_len=[1], q_offset=[1])
    with pytest.raises(ValueError, match="4 keys for 5 queries"):
        mask.dense(1, 5, 4)
    with pytest.raises(ValueError, match="draft_block=0"):
        AttentionMask(causal=False, draft_block=0)
    with pytest.raises(ValueError, match="draft-stream"):
        AttentionMask(causal=True, draft_block=2)
    with pytest.raises(ValueError, match="draft-stream"):
        AttentionMask(causal=False, draft_block=2, block_size=2)


def test_dispatch_refuses_the_draft_stream_for_kernels():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 4, 2, 64)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 10, 2, 64)), jnp.float32)
    mask = AttentionMask.draft_stream(2, prefix_len=[2], q_offset=[2], kv_lengths=[8])
    kernels = [name for name in _REGISTRY if name != "xla"]
    assert kernels
    for name in kernels:
        with pytest.raises(ValueError, match="draft_stream"):
            attention(q, k, k, mask, impl=name)
    # the dense reference computes it, and "auto" picks it
    dense = np.asarray(mask.dense(1, 4, 10))[:, None]  # [B, 1, Tq, Tk]
    scores = np.einsum("bqhd,bkhd->bhqk", np.asarray(q), np.asarray(k)) / 8.0
    scores = np.where(dense, scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    want = np.einsum("bhqk,bkhd->bqhd", w, np.asarray(k))
    for impl in ("auto", "xla"):
        np.testing.assert_allclose(np.asarray(attention(q, k, k, mask, impl=impl)), want, atol=1e-5)


# -- tiny models --------------------------------------------------------------------------------------------

def _perturb(model, seed, scale=0.3):
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(tree, leaves))


@pytest.fixture(scope="module")
def models():
    base = build_model(get_preset("tiny", vocab_size=V, dtype="float32"), 0)
    drafter = with_lora(base, LoRAConfig(rank=4, trainable_rows=(MASK,)))
    _perturb(drafter, 1)
    return base, drafter


def _batch(prompts, targets, input_len, target_len, pad_targets=True, example_ids=None):
    return seq2seq_batch(prompts, targets, input_len=input_len, target_len=target_len, pad_id=0,
                         example_ids=example_ids, pad_targets=pad_targets)


def _reference_student(base, drafter, row, start, noisy_block):
    """Decoding time (`speculative._draft`): the committed text row[:start] through the base into a KV
    cache, then the noisy block with the adapter on over [cache | its own block]. Logits [n, V]."""
    n = len(noisy_block)
    cache = base.init_cache(1, start + n)
    pos = jnp.arange(start, dtype=jnp.int32)[None]
    _, cache = base.forward_cached(jnp.asarray(row[:start], jnp.int32)[None], pos,
                                   mask_for_kind("causal", q_offset=jnp.zeros((1,), jnp.int32)), cache)
    block_pos = start + jnp.arange(n, dtype=jnp.int32)[None]
    mask = mask_for_kind("bidirectional", kv_lengths=jnp.asarray([start + n]), q_offset=jnp.asarray([start]))
    with adapter_gate(True):
        logits, _ = drafter.forward_cached(jnp.asarray(noisy_block, jnp.int32)[None], block_pos, mask, cache)
    return np.asarray(logits[0])


@pytest.mark.parametrize("b,target_len", [(4, 8), (3, 7)])
def test_training_logits_equal_decoding_logits(models, b, target_len):
    base, drafter = models
    rng = np.random.default_rng(b)
    input_len = 5
    prompts = [list(rng.integers(4, V, size=n)) for n in (1, 3, 5)]
    targets = [list(rng.integers(4, V, size=target_len)) for _ in prompts]
    batch = _batch(prompts, targets, input_len, target_len)
    masked = rng.random((len(prompts), target_len)) < 0.6
    masked[:, ::b] = False
    noisy = np.where(masked, MASK, np.asarray(batch.targets))
    teacher, student = jax.jit(lambda n: draft_forward(drafter, batch, n, b))(jnp.asarray(noisy))
    teacher, student = np.asarray(teacher), np.asarray(student)
    base_logits = np.asarray(base(jnp.asarray(batch.tokens)))
    # the adapter matters here (else the comparison below could not tell the passes apart)
    assert np.abs(student - teacher).max() > 0.1
    for e, prompt in enumerate(prompts):
        p = len(prompt)
        row = np.asarray(batch.tokens[e])
        np.testing.assert_allclose(teacher[e], base_logits[e, p - 1: p - 1 + target_len], atol=1e-5)
        for k in range(-(-target_len // b)):
            start = p + k * b
            n = min(b, target_len - k * b)
            ref = _reference_student(base, drafter, row, start, noisy[e, k * b: k * b + n])
            np.testing.assert_allclose(student[e, k * b], teacher[e, k * b], atol=0)  # the AR model's token
            for i in range(1, n):
                np.testing.assert_allclose(student[e, k * b + i], ref[i - 1], atol=1e-5,
                                           err_msg=f"example {e} block {k} offset {i}")


# -- the loss by hand -----------------------------------------------------------------------------------------

def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("objective", ["distill", "ce", "distill+ce"])
def test_draft_loss_by_hand(models, objective):
    _, drafter = models
    b, target_len = 4, 8
    rng = np.random.default_rng(7)
    prompts = [list(rng.integers(4, V, size=n)) for n in (2, 4, 1)]
    targets = [list(rng.integers(4, V, size=n)) for n in (8, 5, 3)]
    batch = _batch(prompts, targets, 4, target_len, pad_targets=False, example_ids=[11, 12, 13])
    config = LossConfig(kind="draft", draft=DraftConfig(block_size=b, objective=objective, all_masked=0.3),
                        mask_id=MASK)
    key = jax.random.key(3)
    loss, metrics = loss_fn(drafter, batch, key, config)
    masked = np.asarray(draft_noise(key, jnp.asarray(batch.example_ids), target_len, config.draft))
    noisy = np.where(masked, MASK, np.asarray(batch.targets))
    teacher, student = (np.asarray(x, np.float64) for x in draft_forward(drafter, batch, jnp.asarray(noisy), b))
    keep = [i for i in range(V) if i != MASK]  # the distributions are over the AR vocabulary
    log_t, log_s = _log_softmax(teacher[..., keep]), _log_softmax(student[..., keep])
    kl = (np.exp(log_t) * (log_t - log_s)).sum(-1)
    tgt = np.asarray(batch.targets)
    col = np.searchsorted(keep, tgt)
    ce = -np.take_along_axis(log_s, col[..., None], -1)[..., 0]
    real = np.arange(target_len)[None] < np.asarray([8, 5, 3])[:, None]
    w = (masked & real).astype(np.float64)
    assert 0 < w.sum() < real.sum()
    per = {"distill": kl, "ce": ce, "distill+ce": kl + ce}[objective]
    want = (per * w).sum() / w.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(loss) > 0


def test_mask_column_never_counts_and_distill_is_flat_at_the_teacher(models, monkeypatch):
    _, drafter = models
    b, target_len = 4, 8
    rng = np.random.default_rng(9)
    prompts = [[5, 6], [7]]
    targets = [list(rng.integers(4, V, size=target_len)) for _ in prompts]
    batch = _batch(prompts, targets, 2, target_len)
    config = LossConfig(kind="draft", draft=DraftConfig(block_size=b, objective="distill", all_masked=1.0),
                        mask_id=MASK)
    key = jax.random.key(0)
    t = jnp.asarray(rng.normal(size=(2, target_len, V)), jnp.float32)
    s = jnp.asarray(rng.normal(size=(2, target_len, V)), jnp.float32)

    def loss_with(teacher, student, cfg=config):
        monkeypatch.setattr(drafting, "draft_forward", lambda *a: (teacher, student))
        return draft_loss(drafter, batch, key, cfg)[0]

    base_loss = float(loss_with(t, s))
    assert base_loss > 0
    for objective in ("distill", "ce", "distill+ce"):
        cfg = LossConfig(kind="draft", draft=DraftConfig(block_size=b, objective=objective, all_masked=1.0),
                         mask_id=MASK)
        a = float(loss_with(t, s, cfg))
        bumped = float(loss_with(t.at[..., MASK].add(50.0), s.at[..., MASK].add(-50.0), cfg))
        np.testing.assert_allclose(bumped, a, rtol=1e-6)
    # KL(teacher || student): zero, and flat, where the student equals the teacher
    assert abs(float(loss_with(t, t))) < 1e-6

    def as_fn(student):
        monkeypatch.setattr(drafting, "draft_forward", lambda *a: (t, student))
        return draft_loss(drafter, batch, key, config)[0]

    grad = jax.grad(as_fn)(t)
    assert float(jnp.abs(grad).max()) < 1e-6
    assert float(jnp.abs(jax.grad(as_fn)(s)).max()) > 1e-3


def test_draft_loss_gradient_reaches_the_adapter_only(models):
    _, drafter = models
    batch = _batch([[5, 6, 7]], [[8, 9, 10, 11, 12, 13]], 3, 6)
    config = LossConfig(kind="draft", draft=DraftConfig(block_size=3, all_masked=1.0), mask_id=MASK)
    graphdef, params, rest = nnx.split(drafter, nnx.Param, ...)

    def f(p):
        return loss_fn(nnx.merge(graphdef, p, rest), batch, jax.random.key(0), config)[0]

    grads = jax.grad(f)(params)
    norms = {jax.tree_util.keystr(path): float(jnp.abs(g).max())
             for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    assert any("lora_b" in name and v > 0 for name, v in norms.items())
    assert any("row_delta" in name and v > 0 for name, v in norms.items())


def test_refused_configs_name_the_value(models):
    base, drafter = models
    with pytest.raises(ValueError, match="block_size=1"):
        DraftConfig(block_size=1)
    with pytest.raises(ValueError, match="'kl'"):
        DraftConfig(objective="kl")
    with pytest.raises(ValueError, match="all_masked=1.5"):
        DraftConfig(all_masked=1.5)
    with pytest.raises(ValueError, match="draft"):
        LossConfig(kind="draft")
    batch = _batch([[5, 6]], [[7, 8, 9, 10]], 2, 4)
    config = LossConfig(kind="draft", draft=DraftConfig(block_size=2), mask_id=MASK)
    with pytest.raises(ValueError, match="adapters"):
        loss_fn(base, batch, jax.random.key(0), config)
    with pytest.raises(ValueError, match="attention='bidirectional'"):
        loss_fn(with_attention(drafter, "bidirectional"), batch, jax.random.key(0), config)
    packed = batch.replace(segment_ids=np.ones_like(batch.tokens))
    with pytest.raises(ValueError, match="segment_ids"):
        loss_fn(drafter, packed, jax.random.key(0), config)


# -- the noise -------------------------------------------------------------------------------------------------

@given(b=st.integers(2, 5), num_targets=st.integers(1, 13), all_masked=st.sampled_from([0.0, 0.5, 1.0]),
       seed=st.integers(0, 3))
def test_draft_noise_invariants(b, num_targets, all_masked, seed):
    config = DraftConfig(block_size=b, all_masked=all_masked)
    key = jax.random.key(seed)
    ids = jnp.asarray([4, 9, 2, 30, 7], jnp.int32)
    masked = np.asarray(draft_noise(key, ids, num_targets, config))
    assert masked.shape == (5, num_targets) and masked.dtype == bool
    first = np.arange(num_targets) % b == 0
    assert not masked[:, first].any()  # the AR model gives a block's first token
    if all_masked == 1.0:
        np.testing.assert_array_equal(masked, np.broadcast_to(~first, masked.shape))
    # per-example keys: the same id gives the same mask in any batch, at any row
    for perm in ([30, 4], [2], [7, 9, 4, 4]):
        sub = np.asarray(draft_noise(key, jnp.asarray(perm, jnp.int32), num_targets, config))
        for row, example_id in enumerate(perm):
            np.testing.assert_array_equal(sub[row], masked[list(np.asarray(ids)).index(example_id)])


def test_draft_noise_rates():
    """all_masked=0: every draftable token is masked with rate t ~ U(0, 1) per block, so about half of
    them overall; different example ids give different masks."""
    config = DraftConfig(block_size=4, all_masked=0.0)
    masked = np.asarray(draft_noise(jax.random.key(0), jnp.arange(400, dtype=jnp.int32), 40, config))
    share = masked[:, np.arange(40) % 4 != 0].mean()
    assert 0.45 < share < 0.55
    assert len({row.tobytes() for row in masked}) > 390
    full = np.asarray(draft_noise(jax.random.key(0), jnp.arange(400, dtype=jnp.int32), 40,
                                  DraftConfig(block_size=4, all_masked=0.5)))
    blocks = full.reshape(400, 10, 4)[:, :, 1:].all(-1).mean()
    assert 0.5 < blocks < 0.75  # 0.5 all masked, plus the blocks the rate masks entirely (E = 1/4 * 0.5)


def test_study_cli_builds_the_recipe_it_is_given(monkeypatch, tmp_path):
    from workbench import drafter_study

    seen = {}
    monkeypatch.setattr(drafter_study, "run_recipe", lambda recipe, run_dir, **kw: seen.update(recipe=recipe, dir=run_dir))
    drafter_study.main(["run", "--name", "more_data", "--root", str(tmp_path), "--train-prompts", "4000",
                        "--block-size", "2", "--steps", "7", "--objective", "ce"])
    recipe = seen["recipe"]
    assert (recipe.train_prompts, recipe.block_size, recipe.steps, recipe.objective) == (4000, 2, 7, "ce")
    assert seen["dir"] == tmp_path / "more_data"


def test_study_curve_and_figure_from_a_run_directory(tmp_path):
    """`curve` turns a run's log into points (training minutes from the log windows' rates, target tokens from
    the steps and the mean answer length); `figure` draws every evaluated run under the root."""
    import json

    from workbench import drafter_study

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    recipe = {"batch_size": 2, "train_prompt_tokens": 6, "answer_len": 4}
    (run / "run_info.json").write_text(json.dumps({"recipe": recipe, "data": {"drafter": {"train": {
        "training_answer_tokens": 30, "training_rows": 10}}}}))
    records = [{"step": 10, "tokens_per_s": 20.0},  # 10 steps x 2 rows x 10 tokens at 20/s = 10 s
               {"step": 10, "eval_agreement@32": 0.25, "eval_tokens_per_iteration": 2.0},
               {"step": 20, "tokens_per_s": 5.0},  # the window holds the evaluation: the previous rate counts
               {"step": 20, "eval_agreement@32": 0.5, "eval_tokens_per_iteration": 2.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    points = drafter_study.curve(run)
    assert [(p["step"], p["train_minutes"], p["target_tokens"]) for p in points] == [(10, round(10 / 60, 2), 60),
                                                                                     (20, round(20 / 60, 2), 120)]
    assert [p["agreement@32"] for p in points] == [0.25, 0.5]
    out = tmp_path / "curve.html"
    drafter_study.main(["figure", "--root", str(tmp_path / "runs"), "--to", str(out)])
    assert out.exists() and "r1" in out.read_text()


def test_frontier_refuses_an_adapter_without_a_drafter_recipe(models, tmp_path):
    from workbench import drafter_study
    from workbench.pretrained.peft import save_adapter

    _, drafter = models
    folder = save_adapter(drafter, tmp_path / "plain_adapter", base_name="tiny", extra={"step": 3})
    with pytest.raises(ValueError, match="records no drafter recipe.*drafter_study export"):
        drafter_study.restore_adapter(folder, tmp_path / "cache")

"""Draft-and-verify decoding (`workbench.sampling.speculative`) against independent references:
greedy output equals the base model's own AR greedy output (`sampling.ar.generate` on the model
without adapters); lossy decoding (`verify=False`) equals a from-scratch Python loop that recomputes
the base model's cache for every block (so a stale or adapter-written cache would show); with
temperature the first two tokens follow the AR model's exact distribution (chi-square)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from workbench.attention import mask_for_kind
from workbench.models.config import LoRAConfig, get_preset
from workbench.models.lora import adapter_gate, with_lora
from workbench.models.transformer import build_model, with_attention
from workbench.sampling.ar import ARSamplingConfig, generate
from workbench.sampling.speculative import SpeculativeConfig, speculative_generate

V = 17
MASK = 16  # an added row, as a drafter's mask token is; prompts and data use 4 .. 15
NO_EOS = 10_000  # an id no model emits


def _perturb(model, seed, scale):
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                                for x, k in zip(leaves, keys)]))


def _models(vocab, mask_id, scale, seed=0):
    # untied head: a random tied model only repeats its last token
    base = build_model(get_preset("tiny", vocab_size=vocab, dtype="float32", max_len=64, tie_embeddings=False), seed)
    drafter = with_lora(base, LoRAConfig(rank=4, trainable_rows=(mask_id,)))
    _perturb(drafter, seed + 1, scale)
    return base, drafter


def _prompts(n, width, seed):
    rng = np.random.default_rng(seed)
    lengths = np.asarray([1 + i % width for i in range(n)], np.int32)
    prompts = np.zeros((n, width), np.int32)
    for i, length in enumerate(lengths):
        prompts[i, :length] = rng.integers(4, 16, size=length)
    return prompts, lengths


def _greedy_reference(base, prompts, lengths, max_new, eos, mask_id=MASK):
    """AR greedy over the AR vocabulary (the mask row excluded), one full causal forward of the whole
    batch per new token, no cache: (tokens [B, max_new] padded with 0 after EOS, lengths [B])."""
    n, width = prompts.shape
    rows = np.zeros((n, width + max_new), np.int32)
    rows[:, :width] = prompts
    forward = jax.jit(lambda tokens: base(tokens))
    out = np.zeros((n, max_new), np.int32)
    done = np.zeros(n, bool)
    count = np.zeros(n, np.int32)
    for t in range(max_new):
        logits = np.asarray(forward(jnp.asarray(rows)), np.float64)
        logits[..., mask_id] = -np.inf
        token = logits[np.arange(n), lengths + t - 1].argmax(-1)
        rows[np.arange(n), lengths + t] = token
        out[:, t] = np.where(done, 0, token)
        count += ~done
        done |= token == eos
    return out, count


@pytest.fixture(scope="module")
def models():
    """A base model and a drafter trained briefly (optax, the distill loss) on the base model's own
    greedy continuations, so that its drafts are often, not always, right."""
    import optax

    from workbench.objectives.batch import seq2seq_batch
    from workbench.objectives.drafting import DraftConfig
    from workbench.objectives.losses import LossConfig, loss_fn

    base, drafter = _models(V, MASK, 0.0)
    prompts, lengths = _prompts(256, 8, 100)
    cont, _ = _greedy_reference(base, prompts, lengths, 16, NO_EOS)
    batch = seq2seq_batch([list(prompts[i, :lengths[i]]) for i in range(256)], [list(c) for c in cont],
                          input_len=8, target_len=16, pad_id=0)
    config = LossConfig(kind="draft", draft=DraftConfig(block_size=4, objective="distill", all_masked=0.7),
                        mask_id=MASK)
    optimizer = nnx.Optimizer(drafter, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch, key):
        loss, grads = nnx.value_and_grad(lambda m: loss_fn(m, batch, key, config)[0])(model)
        optimizer.update(model, grads)
        return loss

    first = None
    for i in range(120):
        idx = np.random.default_rng(i).choice(256, 32, replace=False)
        loss = float(step(drafter, optimizer, jax.tree.map(lambda x: x[idx], batch), jax.random.key(i)))
        first = loss if first is None else first
    assert loss < 0.5 * first
    return base, drafter


def _argmax_without_mask(logits, mask_id=MASK):
    logits = np.array(logits, np.float64)
    logits[..., mask_id] = -np.inf
    return int(np.argmax(logits))


# -- greedy: exactly the AR model ---------------------------------------------------------------------------

def test_greedy_equals_ar_greedy(models):
    """60 prompts of 1..12 tokens. EOS is picked as a token the AR model emits mid-sequence, so some rows
    stop inside a drafted block; acceptance counts are strictly between 0 and the maximum (so the
    comparison is not vacuous: drafts are kept, and rejected, rows accept different lengths)."""
    base, drafter = models
    prompts, lengths = _prompts(60, 12, 0)
    max_new = 20
    free, _ = _greedy_reference(base, prompts, lengths, max_new, NO_EOS)
    # the token whose first occurrence is most often past the first generated token
    firsts = {t: sum(1 for row in free if t in row[1:] and t not in row[:1]) for t in range(4, 16)}
    eos = max(firsts, key=firsts.get)
    assert 5 <= firsts[eos] < 60
    want, want_lengths = _greedy_reference(base, prompts, lengths, max_new, eos)
    # and sampling.ar.generate, on the rows where the AR model never prefers the mask row
    ar = generate(base, prompts, lengths, ARSamplingConfig(max_new_tokens=max_new, eos_id=eos))
    plain = ~np.any(np.asarray(ar.tokens) == MASK, axis=1)
    assert plain.sum() >= 40
    np.testing.assert_array_equal(np.asarray(ar.tokens)[plain], want[plain])
    for b in (4, 3):
        out = speculative_generate(drafter, prompts, lengths,
                                   SpeculativeConfig(block_size=b, max_new_tokens=max_new, eos_id=eos, mask_id=MASK))
        np.testing.assert_array_equal(np.asarray(out.tokens), want, err_msg=f"block_size={b}")
        np.testing.assert_array_equal(np.asarray(out.lengths), want_lengths)
        accepted, drafted = np.asarray(out.accepted_at), np.asarray(out.drafted_at)
        assert 0 < accepted.sum() < drafted.sum()
        assert accepted[0] < drafted[0]  # drafts rejected at their first token
        assert accepted[-1] > 0  # whole blocks kept
        kept = np.asarray(out.kept)
        assert len(set(kept.sum(1))) > 2  # rows accept different lengths
        assert np.all(np.asarray(out.iterations) <= np.asarray(out.lengths))
        assert np.all(~kept[np.arange(max_new)[None] >= np.asarray(out.lengths)[:, None]])
        # EOS inside a block: a kept draft that is the EOS, after which nothing is written
        stopped = np.nonzero(np.asarray(out.lengths) < max_new)[0]
        assert len(stopped) >= 5
        assert any(kept[r, out.lengths[r] - 1] for r in stopped)
        assert all(np.asarray(out.tokens)[r, out.lengths[r] - 1] == eos for r in stopped)


def test_greedy_multi_step_drafts_equal_ar_greedy(models):
    base, drafter = models
    prompts, lengths = _prompts(16, 7, 1)
    want, _ = _greedy_reference(base, prompts, lengths, 13, NO_EOS)
    out = speculative_generate(drafter, prompts, lengths,
                               SpeculativeConfig(block_size=5, draft_steps=2, max_new_tokens=13, eos_id=None,
                                                 mask_id=MASK))
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    np.testing.assert_array_equal(np.asarray(out.lengths), 13)
    assert 0 < int(out.accepted_at.sum()) < int(out.drafted_at.sum())


def test_greedy_with_an_adapter_that_is_always_wrong_or_always_right(models):
    """A drafter whose adapter is huge drafts garbage: most drafts rejected, still the AR output."""
    base, _ = models
    _, bad = _models(V, MASK, 3.0)
    prompts, lengths = _prompts(12, 5, 2)
    want, _ = _greedy_reference(base, prompts, lengths, 9, NO_EOS)
    out = speculative_generate(bad, prompts, lengths, SpeculativeConfig(block_size=3, max_new_tokens=9, eos_id=None,
                                                                        mask_id=MASK))
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    assert int(out.accepted_at.sum()) < int(out.drafted_at.sum())


# -- lossy block decoding (verify=False) against a from-scratch loop ------------------------------------------

def _reference_lossy(base, drafter, prompt, b, max_new):
    """Greedy block decoding by the drafter, every draft kept; the base model's cache of the committed
    text is recomputed from scratch for every block (no cache carried between blocks). Rows are padded
    to a fixed width W (causal: what follows the committed text changes none of its keys and values)."""
    width = len(prompt) + max_new + b

    @jax.jit
    def block_logits(row, start):
        cache = base.init_cache(1, width)
        _, cache = base.forward_cached(row[None], jnp.arange(width, dtype=jnp.int32)[None],
                                       mask_for_kind("causal", q_offset=jnp.zeros((1,), jnp.int32)), cache)
        canvas = jax.lax.dynamic_slice(row, (start,), (b,))
        with adapter_gate(True):
            logits, _ = drafter.forward_cached(
                canvas[None], start + jnp.arange(b, dtype=jnp.int32)[None],
                mask_for_kind("bidirectional", kv_lengths=(start + b)[None], q_offset=start[None]), cache)
        return logits[0]

    full = jax.jit(lambda row: base(row[None])[0])
    row = np.zeros(width, np.int32)
    row[:len(prompt)] = prompt
    start = len(prompt)
    out = []
    t0 = _argmax_without_mask(full(jnp.asarray(row))[start - 1])
    while len(out) < max_new:
        row[start:start + b] = [t0] + [MASK] * (b - 1)
        logits = block_logits(jnp.asarray(row), jnp.int32(start))
        block = [t0] + [_argmax_without_mask(logits[i - 1]) for i in range(1, b)]
        row[start:start + b] = block
        out += block
        start += b
        t0 = _argmax_without_mask(full(jnp.asarray(row))[start - 1])
    return out[:max_new]


def test_lossy_decoding_equals_a_recomputed_reference(models):
    base, drafter = models
    b, max_new = 4, 10
    prompts, lengths = _prompts(6, 6, 3)
    out = speculative_generate(drafter, prompts, lengths, SpeculativeConfig(block_size=b, verify=False,
                                                                            max_new_tokens=max_new, eos_id=None,
                                                                            mask_id=MASK))
    tokens = np.asarray(out.tokens)
    np.testing.assert_array_equal(np.asarray(out.lengths), max_new)
    differs_from_ar = 0
    ar, _ = _greedy_reference(base, prompts, lengths, max_new, NO_EOS)
    for r in range(len(prompts)):
        prompt = list(prompts[r, :lengths[r]])
        assert list(tokens[r]) == _reference_lossy(base, drafter, prompt, b, max_new), f"row {r}"
        # each block's first token is the AR model's next token given the drafted text before it
        full = np.asarray(base(jnp.asarray([prompt + list(tokens[r])], jnp.int32))[0])
        for j in range(0, max_new, b):
            assert tokens[r, j] == _argmax_without_mask(full[len(prompt) + j - 1]), (r, j)
        np.testing.assert_array_equal(np.asarray(out.kept)[r], np.arange(max_new) % b != 0)
        differs_from_ar += int(np.any(tokens[r] != ar[r]))
    assert differs_from_ar > 0  # lossy: the drafts are not all the AR model's


# -- temperature: the AR model's distribution -------------------------------------------------------------------

def _exact_pairs(base, prompt, temperature, vocab, mask_id):
    """P(t1, t2) = p(t1 | prompt) p(t2 | prompt, t1) by enumeration, the mask token excluded."""
    def dist(seq):
        logits = np.asarray(base(jnp.asarray([seq], jnp.int32))[0, -1], np.float64) / temperature
        logits[mask_id] = -np.inf
        p = np.exp(logits - logits.max())
        return p / p.sum()

    p1 = dist(prompt)
    table = np.zeros((vocab, vocab))
    for t1 in range(vocab):
        if t1 != mask_id:
            table[t1] = p1[t1] * dist(prompt + [t1])
    return table


def _chi2_pvalue(counts, expected):
    """Pearson's chi-square with the cells of expected count < 5 pooled into one."""
    counts, expected = counts.ravel(), expected.ravel()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    return stats.chi2.sf(stat, len(exp) - 1)


def test_temperature_pairs_follow_the_ar_distribution():
    """The first two generated tokens of 4000 example ids (one batch; each id its own random stream)
    against the exact AR distribution over the 6 x 6 pairs (V = 6 plus the mask row). The test rejects
    at p < 1e-3: a correct sampler fails it with probability 0.1% for a random seed; the seed is fixed,
    so the outcome is deterministic. The same test on lossy decoding (drafts kept unverified, drawn from
    the drafter) must reject, which shows the drafter differs from the AR model enough to be caught."""
    vocab, mask_id, temperature, n = 7, 6, 1.0, 4000
    base, drafter = _models(vocab, mask_id, 0.5, seed=4)
    prompt = [2, 5, 1]
    exact = _exact_pairs(base, prompt, temperature, vocab, mask_id)
    prompts = np.tile(np.asarray([prompt], np.int32), (n, 1))
    lengths = np.full((n,), len(prompt), np.int32)
    ids = np.arange(n, dtype=np.int32) * 7 + 3
    pvalues = {}
    for verify in (True, False):
        config = SpeculativeConfig(block_size=3, max_new_tokens=2, temperature=temperature, eos_id=None,
                                   mask_id=mask_id, verify=verify)
        out = speculative_generate(drafter, prompts, lengths, config, rng=jax.random.key(11), example_ids_B=ids)
        tokens = np.asarray(out.tokens)
        assert not np.any(tokens == mask_id)
        counts = np.zeros((vocab, vocab))
        np.add.at(counts, (tokens[:, 0], tokens[:, 1]), 1)
        pvalues[verify] = _chi2_pvalue(counts, exact * n)
        if verify:
            accepted = int(out.accepted_at[0])
            assert 0.2 * n < accepted < 0.95 * n, accepted  # drafts both kept and replaced from the residual
    assert pvalues[True] > 1e-3, pvalues
    assert pvalues[False] < 1e-3, pvalues


# -- batch invariance ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_an_example_decodes_the_same_alone_and_in_a_batch(models, temperature):
    _, drafter = models
    prompts, lengths = _prompts(6, 6, 5)
    ids = np.asarray([40, 2, 17, 5, 33, 8], np.int32)
    config = SpeculativeConfig(block_size=3, max_new_tokens=8, temperature=temperature, eos_id=None, mask_id=MASK)
    together = speculative_generate(drafter, prompts, lengths, config, rng=jax.random.key(1), example_ids_B=ids)
    for r in (0, 3, 5):
        alone = speculative_generate(drafter, prompts[r:r + 1], lengths[r:r + 1], config, rng=jax.random.key(1),
                                     example_ids_B=ids[r:r + 1])
        np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(together.tokens)[r])
        np.testing.assert_array_equal(np.asarray(alone.kept)[0], np.asarray(together.kept)[r])
    # a row's example id, not its place in the batch, seeds it
    flipped = speculative_generate(drafter, prompts[::-1], lengths[::-1], config, rng=jax.random.key(1),
                                   example_ids_B=ids[::-1])
    np.testing.assert_array_equal(np.asarray(flipped.tokens)[::-1], np.asarray(together.tokens))


# -- refused configs -------------------------------------------------------------------------------------------

def test_bad_configs_are_refused_by_name(models):
    base, drafter = models
    with pytest.raises(ValueError, match="block_size=1"):
        SpeculativeConfig(block_size=1)
    with pytest.raises(ValueError, match="draft_steps=0"):
        SpeculativeConfig(block_size=4, draft_steps=0)
    with pytest.raises(ValueError, match="draft_steps=4"):
        SpeculativeConfig(block_size=4, draft_steps=4)
    with pytest.raises(ValueError, match="draft_steps=2"):
        SpeculativeConfig(block_size=4, draft_steps=2, temperature=0.7)
    with pytest.raises(ValueError, match="temperature=-1"):
        SpeculativeConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        SpeculativeConfig(max_new_tokens=0)
    prompts, lengths = np.asarray([[5, 6, 7]], np.int32), np.asarray([3], np.int32)
    config = SpeculativeConfig(block_size=4, max_new_tokens=8, mask_id=MASK)
    with pytest.raises(ValueError, match="prompt_lengths >= 1"):
        speculative_generate(drafter, prompts, np.asarray([0], np.int32), config)
    with pytest.raises(ValueError, match="prompt_lengths=4"):
        speculative_generate(drafter, prompts, np.asarray([4], np.int32), config)
    with pytest.raises(ValueError, match="adapters"):
        speculative_generate(base, prompts, lengths, config)
    with pytest.raises(ValueError, match="prefix_diffusion"):
        speculative_generate(with_attention(drafter, "prefix_diffusion"), prompts, lengths, config)
    with pytest.raises(ValueError, match="max_len=64"):
        speculative_generate(drafter, prompts, lengths, SpeculativeConfig(block_size=4, max_new_tokens=58,
                                                                          mask_id=MASK))
    speculative_generate(drafter, prompts, lengths, SpeculativeConfig(block_size=4, max_new_tokens=57, mask_id=MASK))
    with pytest.raises(ValueError, match="mask_id=17"):
        speculative_generate(drafter, prompts, lengths, SpeculativeConfig(block_size=4, max_new_tokens=8, mask_id=V))


def test_frontier_rows_decode_with_their_own_setting(models):
    """`drafter_study.frontier` on a hand-built setup: each (block size, draft steps) row keeps the AR
    model's greedy output exactly when verifying, costs what its setting must cost when lossy (a prompt
    pass, then draft_steps + 1 passes per block of b tokens), and scores the lossy output of that
    very setting (recomputed here by a direct call)."""
    from types import SimpleNamespace

    from workbench.drafter_study import DrafterRecipe, DrafterSetup, frontier
    from workbench.models.transformer import with_config

    base, drafter = models
    drafter = with_config(drafter, max_len=128)  # the study pads prompts to a width of 64
    count, new = 10, 12
    prompts, lengths = _prompts(40, 6, 7)
    want, _ = _greedy_reference(base, prompts, lengths, new, NO_EOS)
    keep = np.flatnonzero((want != 0).all(1))[:count]  # the study's references never hold the padding id
    assert len(keep) == count
    prompts, lengths, want = prompts[keep], lengths[keep], want[keep]
    inputs = [[int(t) for t in prompts[i, : lengths[i]]] for i in range(count)]
    references = [[int(t) for t in row] for row in want]
    tokenizer = SimpleNamespace(specials=SimpleNamespace(eos=NO_EOS, pad=0, mask=MASK))
    setup_ = DrafterSetup(DrafterRecipe(block_size=4, answer_len=new), base, drafter, tokenizer, MASK, ([], []),
                          [SimpleNamespace(task="plain")] * count, (inputs, references), {})
    settings = ((2, 1), (4, 1), (8, 7))
    rows = frontier(setup_, drafter, settings, count=count, batch_size=count)  # one batch: the direct calls reuse its compilations
    assert [(r["block_size"], r["draft_steps"]) for r in rows] == list(settings)
    seen = set()
    for row in rows:
        b, steps = row["block_size"], row["draft_steps"]
        assert row["verified_equals_ar"] == 1.0
        assert "masked_agreement" not in row
        assert row["passes_per_token"] == pytest.approx((1 + -(-new // b) * (steps + 1)) / new)
        assert 1.0 <= row["tokens_per_iteration"] <= b
        padded = np.zeros((count, 64), np.int32)
        padded[:, : prompts.shape[1]] = prompts
        lossy = np.asarray(speculative_generate(drafter, padded, lengths, SpeculativeConfig(
            block_size=b, draft_steps=steps, verify=False, max_new_tokens=new, eos_id=NO_EOS, mask_id=MASK)).tokens)
        agreement = []
        for out, ref in zip(lossy, references):
            cut = list(out[: int(np.argmax(out == 0))]) if (out == 0).any() else list(out)
            agreement.append(sum(a == r for a, r in zip(cut, ref)) / max(len(cut), len(ref)))
        assert row["agreement@32"] == pytest.approx(np.mean(agreement))
        seen.add(round(row["agreement@32"], 6))
    assert len(seen) > 1  # the settings decode differently: each row really used its own
    exact, everything = frontier(setup_, drafter, ((4, 1),), count=count, batch_size=count, leniencies=(1.0, 0.0))
    assert (exact["leniency"], everything["leniency"]) == (1.0, 0.0)
    assert exact["verified_agreement@32"] == 1.0 and everything["verified_equals_ar"] < 1.0
    assert everything["verified_agreement@32"] == everything["agreement@32"]  # leniency 0 keeps every draft


def test_lenient_verification_keeps_what_its_rule_keeps(models):
    """`leniency` < 1: each iteration keeps the longest drafted prefix whose tokens the AR model gives at
    least `leniency` times its top token's probability (recomputed here from a full causal forward of the
    committed text and the drafted block); 1 is the exact greedy decoder, 0 keeps every draft as
    verify=False does."""
    base, drafter = models
    b, max_new = 4, 12
    prompts, lengths = _prompts(6, 6, 11)
    config = lambda **kw: SpeculativeConfig(block_size=b, max_new_tokens=max_new, eos_id=None, mask_id=MASK, **kw)
    exact = speculative_generate(drafter, prompts, lengths, config())
    ar, _ = _greedy_reference(base, prompts, lengths, max_new, NO_EOS)
    np.testing.assert_array_equal(np.asarray(exact.tokens), ar)
    lossy = speculative_generate(drafter, prompts, lengths, config(verify=False))
    everything = speculative_generate(drafter, prompts, lengths, config(leniency=0.0))
    np.testing.assert_array_equal(np.asarray(everything.tokens), np.asarray(lossy.tokens))

    leniency = 0.3
    out = speculative_generate(drafter, prompts, lengths, config(leniency=leniency))
    tokens, drafts, committed = np.asarray(out.tokens), np.asarray(out.drafts), np.asarray(out.committed)
    checked = lenient_only = 0
    for r in range(len(prompts)):
        prompt, done = list(prompts[r, : lengths[r]]), 0
        for it in range(int(np.asarray(out.iterations)[r])):
            block = list(drafts[r, it])
            logits = np.asarray(base(jnp.asarray([prompt + list(tokens[r, :done]) + block], jnp.int32))[0],
                                np.float64)
            logits[:, MASK] = -np.inf
            log_p = logits - logits.max(-1, keepdims=True)
            log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
            kept, margins = 0, []
            for i in range(1, b):  # draft token i is judged at the position before it
                row = log_p[len(prompt) + done + i - 1]
                margin = row[block[i]] - (row.max() + np.log(leniency))
                margins.append(margin)
                if margin < 0:
                    break
                kept += 1
                lenient_only += int(block[i] != int(np.argmax(row)))
            assert list(tokens[r, done : done + committed[r, it]]) == block[: committed[r, it]], (r, it)
            if min(abs(m) for m in margins) >= 1e-4:  # else too close to the threshold to judge across two forwards
                assert committed[r, it] == min(1 + kept, max_new - done), (r, it)
                checked += 1
            done += int(committed[r, it])
    assert checked >= 10 and lenient_only > 0  # the rule was exercised, including drafts AR would not pick


def test_leniency_is_refused_outside_greedy_verification():
    with pytest.raises(ValueError, match="leniency=1.5"):
        SpeculativeConfig(leniency=1.5)
    with pytest.raises(ValueError, match="leniency=0.5 applies to greedy verification only.*temperature=0.7"):
        SpeculativeConfig(leniency=0.5, temperature=0.7)
    with pytest.raises(ValueError, match="leniency=0.5 applies.*verify=False"):
        SpeculativeConfig(leniency=0.5, verify=False)

"""Decoding policies: each commit rule checked by hand on small logits, and through both processes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.models import ModelConfig, build_model
from workbench.objectives.batch import seq2seq_batch
from workbench.processes import LinearSchedule, ResampleAll, Threshold, get_policy, get_process, policy_names
from workbench.sampling.diffusion import DiffusionSamplingConfig, diffusion_sample, length_report, rerank_scores

# Four positions over four tokens. By hand (natural log):
#   pos 0: p(argmax)=.52 (highest), margin .05, entropy .748
#   pos 1: p=.50, margin .30 (widest), entropy 1.221
#   pos 2: p=.51, margin .022, entropy .707 (lowest)
#   pos 3: uniform: p=.25, margin 0, entropy 1.386
PROBS = np.array([[[0.52, 0.47, 0.005, 0.005], [0.50, 0.10, 0.20, 0.20], [0.51, 0.488, 0.001, 0.001],
                   [0.25, 0.25, 0.25, 0.25]]], np.float32)
LOGITS = jnp.log(jnp.asarray(PROBS))
DRAW = jnp.zeros((1, 4), jnp.int32)  # the argmax of every row
P = jnp.asarray(PROBS[..., 0])
KEYS = jax.random.split(jax.random.key(0), 1)
ALL_OPEN = jnp.ones((1, 4), bool)
SCHEDULE = LinearSchedule()


def select(name, step, num_steps, open_=ALL_OPEN, threshold=0.9, keys=KEYS):
    policy = get_policy(name, threshold=threshold)
    return np.asarray(policy.select(jnp.int32(step), num_steps, LOGITS, DRAW, P, open_, keys, SCHEDULE))[0].tolist()


@pytest.mark.parametrize("name, expected", [("low_confidence", 0), ("margin", 1), ("entropy", 2)])
def test_ranking_policies_commit_their_own_best_position(name, expected):
    # step 0 of 4 over 4 positions: the schedule commits ceil(4 * 1/4) = 1
    assert select(name, 0, 4) == [i == expected for i in range(4)]


def test_committed_positions_count_towards_the_schedule():
    # step 1 of 4: 2 committed in all; pos 0 already is, so one more: the best open p is pos 2 (.51)
    open_ = jnp.asarray([[False, True, True, True]])
    assert select("low_confidence", 1, 4, open_) == [False, False, True, False]
    # the last step commits every open position
    assert select("margin", 3, 4, open_) == [False, True, True, True]


def test_threshold_commits_every_sure_position_and_at_least_one():
    assert select("threshold", 0, 4, threshold=0.5) == [True, False, True, False]  # .52 and .51 exceed .5
    assert select("threshold", 0, 4, threshold=0.9) == [True, False, False, False]  # none: the best one
    open_ = jnp.asarray([[False, True, True, True]])
    assert select("threshold", 0, 4, open_, threshold=0.9) == [False, False, True, False]
    assert select("threshold", 3, 4, open_, threshold=0.9) == [False, True, True, True]  # budget's last step
    with pytest.raises(ValueError, match="threshold=1.5"):
        Threshold(threshold=1.5)
    assert get_policy("threshold", threshold=0.5) == Threshold(0.5) and get_policy("margin", threshold=0.5).name == "margin"
    with pytest.raises(ValueError, match="'treshold'.*threshold"):
        get_policy("threshold", treshold=0.5)


def test_random_order_ignores_the_logits_and_follows_the_key():
    picks = {tuple(select("random", 1, 4, keys=jax.random.split(jax.random.key(s), 1))) for s in range(12)}
    assert all(sum(p) == 2 for p in picks) and len(picks) > 1
    policy = get_policy("random")
    flipped = policy.select(jnp.int32(1), 4, -LOGITS, DRAW, 1 - P, ALL_OPEN, KEYS, SCHEDULE)
    assert np.asarray(flipped)[0].tolist() == select("random", 1, 4)


def test_keep_policies():
    assert select("resample_all", 0, 4) == [True] * 4
    # step 0 of 2 keeps ceil(4/2) = 2 lowest-entropy positions: pos 2 (.707) and pos 0 (.748)
    assert select("renoise_entropy", 0, 2) == [True, False, True, False]


def test_uniform_step_under_each_family():
    process = get_process("uniform", 4, special_ids=(), mask_id=3)
    canvas = jnp.asarray([[3, 3, 3, 3]], jnp.int32)
    none = jnp.zeros((1, 4), bool)
    new, committed, p = process.step(jnp.int32(0), 2, canvas, none, LOGITS, KEYS, 0.0, ResampleAll())
    assert new.tolist() == [[0, 0, 0, 0]] and not committed.any()
    np.testing.assert_allclose(np.asarray(p), PROBS[..., 0], rtol=1e-6)
    # a commit policy freezes what it committed: position 0 keeps its old token; step 1 of 4
    # commits 2 in all, so one more: the widest margin, position 1
    frozen = jnp.asarray([[True, False, False, False]])
    new, committed, _ = process.step(jnp.int32(1), 4, canvas, frozen, LOGITS, KEYS, 0.0, get_policy("margin"))
    assert new.tolist() == [[3, 0, 0, 0]] and committed.tolist() == [[True, True, False, False]]
    # renoise_entropy keeps the draw at positions 0 and 2 and re-noises 1 and 3 (never with special ids)
    process = get_process("uniform", 4, special_ids=(0,), mask_id=3)
    new, committed, _ = process.step(jnp.int32(0), 2, canvas, none, LOGITS, KEYS, 0.0, get_policy("renoise_entropy"))
    new = np.asarray(new)[0]
    assert new[0] == 0 and new[2] == 0 and new[1] != 0 and new[3] != 0 and not committed.any()


def test_absorbing_step_reveals_what_the_policy_picks_and_refuses_renoising():
    process = get_process("absorbing", 5, special_ids=(), mask_id=4)
    logits = jnp.concatenate([LOGITS, jnp.zeros((1, 4, 1))], axis=-1)  # the mask column is never drawn
    canvas = jnp.full((1, 4), 4, jnp.int32)
    none = jnp.zeros((1, 4), bool)
    new, committed, _ = process.step(jnp.int32(0), 4, canvas, none, logits, KEYS, 0.0, get_policy("margin"))
    assert new.tolist() == [[4, 0, 4, 4]] and committed.tolist() == [[False, True, False, False]]
    with pytest.raises(ValueError, match="renoise_entropy"):
        process.step(jnp.int32(0), 4, canvas, none, logits, KEYS, 0.0, get_policy("renoise_entropy"))


V = 40


def _model():
    config = ModelConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=2, d_ff=64, max_len=32, dtype="float32",
                         attention="bidirectional")
    return build_model(config, 0)


def _batch():
    return seq2seq_batch([[5, 6, 7], [8, 9]], [[], []], input_len=4, target_len=6, pad_id=0,
                         example_ids=[0, 1], pad_targets=True)


@pytest.mark.parametrize("process, policy", [("absorbing", p) for p in ("random", "margin", "entropy", "threshold")]
                         + [("uniform", p) for p in ("low_confidence", "threshold", "renoise_entropy")])
def test_every_policy_decodes_a_full_canvas(process, policy):
    cfg = DiffusionSamplingConfig(num_samples=2, num_steps=3, temperature=0.5, process=process,
                                  policy=get_policy(policy))
    out = diffusion_sample(_model(), _batch(), cfg, jax.random.key(1))
    traj = np.asarray(out.trajectory)
    if process == "absorbing":
        assert not np.any(traj[:, :, -1] == cfg.mask_id)
    if policy in ("low_confidence", "threshold"):  # committed positions never change again
        changed = np.asarray(out.changed)
        first = np.argmax(changed, axis=2)  # the first step that wrote each position
        later = np.arange(changed.shape[2])[None, None, :, None] > first[:, :, None, :]
        assert not np.any(changed & later)


def test_unknown_policy_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="'greedy'.*resample_all"):
        get_policy("greedy")
    with pytest.raises(ValueError, match="policy='threshold'.*Policy object.*get_policy"):
        DiffusionSamplingConfig(policy="threshold")
    assert "threshold" in policy_names()


def test_rerank_score_can_exclude_padding():
    probs = jnp.asarray([[0.5, 0.5, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9]])
    tokens = jnp.asarray([[7, 1, 0, 0], [0, 0, 0, 0]])
    plain = np.asarray(rerank_scores(probs, tokens, DiffusionSamplingConfig()))
    text = np.asarray(rerank_scores(probs, tokens, DiffusionSamplingConfig(score_excludes_padding=True)))
    np.testing.assert_allclose(plain, [-(2 * np.log(0.5) + 2 * np.log(0.9)) / 4, -np.log(0.9)], rtol=1e-6)
    np.testing.assert_allclose(text[0], -np.log(0.5), rtol=1e-6)
    assert text[1] == np.inf  # all padding never wins


def test_length_report():
    report = length_report(np.array([[7, 8, 1, 0], [7, 7, 7, 7], [1, 0, 0, 0], [5, 0, 0, 0]]), eos_id=1, pad_id=0)
    assert report["eos_position"].tolist() == [2, -1, 0, -1]
    assert report["text_length"].tolist() == [2, 4, 0, 1]
    np.testing.assert_allclose(report["padding_fraction"], [0.25, 0.0, 0.75, 0.75])

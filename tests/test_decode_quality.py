"""The block vs full-canvas quality benchmark: its task data, budgets and one tiny end-to-end run."""

import json

import pytest

from workbench.benchmarks import decode_quality
from workbench.benchmarks.decode_quality import EOS, DecodeQualityConfig, run_decode_quality, task_pairs

TINY = DecodeQualityConfig(symbols=6, min_len=2, max_len=5, train_pairs=40, test_pairs=3, d_model=16, num_layers=1,
                           num_heads=2, d_ff=32, ar_steps=2, adapt_steps=1, batch_size=4, block_size=4,
                           steps_per_token=(0.5,))


@pytest.mark.parametrize("task", ["reverse", "sort"])
def test_task_pairs_are_the_task_with_eos_and_test_prompts_are_unseen(task):
    config = DecodeQualityConfig(task=task, train_pairs=200, test_pairs=20, symbols=5, min_len=3, max_len=6)
    inputs, targets, test_inputs, references = task_pairs(config)
    for prompt, target in zip(inputs, targets):
        assert 3 <= len(prompt) <= 6 and all(4 <= t < 9 for t in prompt)
        assert target == (list(prompt)[::-1] if task == "reverse" else sorted(prompt)) + [EOS]
    for prompt, reference in zip(test_inputs, references):
        assert list(reference) == (list(prompt)[::-1] if task == "reverse" else sorted(prompt))
    assert not set(test_inputs) & set(inputs) and len(set(test_inputs)) == 20
    again, other_seed = task_pairs(config), task_pairs(DecodeQualityConfig(**{**config.__dict__, "seed": 1}))
    assert decode_quality.pairs_hash(again) == decode_quality.pairs_hash((inputs, targets, test_inputs, references))
    assert decode_quality.pairs_hash(other_seed) != decode_quality.pairs_hash(again)


def test_budgets_match_forward_passes_per_canvas_token():
    config = DecodeQualityConfig(max_len=16, block_size=4)
    assert config.canvas_len == 20  # 16 + EOS, rounded up to whole blocks
    assert config.budget_steps(0.25) == (5, 1) and config.budget_steps(1.0) == (20, 4)
    assert DecodeQualityConfig(max_len=16, block_size=8).canvas_len == 24


@pytest.mark.parametrize("bad, match", [
    (dict(task="copy"), "task='copy'"),
    (dict(min_len=5, max_len=4), "min_len"),
    (dict(steps_per_token=(0.0,)), "steps_per_token"),
    (dict(block_size=2, steps_per_token=(0.25, 1.0)), r"\[0.25\] give blocks of 2 tokens less than one step"),
])  # fmt: skip
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        DecodeQualityConfig(**bad)


def test_too_few_unseen_prompts_is_an_error():
    with pytest.raises(ValueError, match="unseen prompts"):
        task_pairs(DecodeQualityConfig(symbols=2, min_len=1, max_len=1, train_pairs=50, test_pairs=5))


def test_end_to_end_trains_converts_and_scores_every_row(tmp_path):
    table = run_decode_quality(TINY, tmp_path, progress=False)
    assert list(table["method"]) == ["ar", "diffusion", "diffusion", "block", "block"]
    assert table["exact_match"].between(0, 1).all() and table["token_accuracy"].between(0, 1).all()
    canvas_steps, block_steps = TINY.budget_steps(0.5)  # canvas 8 tokens: 4 steps; blocks of 4: 2 steps each
    assert (canvas_steps, block_steps) == (4, 2)
    cached = table[(table["method"] == "diffusion") & (table["prefix_cache"] == True)]  # noqa: E712
    assert cached["forward_passes"].item() == canvas_steps + 1  # the prompt pass, then the steps
    low_confidence = table[(table["method"] == "block") & (table["policy"] == "low_confidence")]
    assert low_confidence["forward_passes"].item() == 1 + 2 * block_steps  # prompt, 2 blocks x steps
    saved = json.loads((tmp_path / "decode_quality.json").read_text())
    assert set(saved["final_train_loss"]) == {"ar", "diffusion", "block"}
    assert len(saved["rows"]) == 5 and saved["config"]["block_size"] == 4
    info = json.loads((tmp_path / "decode_quality_runs" / "block" / "run_info.json").read_text())
    assert "block_causal" in json.dumps(info)

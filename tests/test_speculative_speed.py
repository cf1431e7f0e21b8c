"""The speculative speed benchmark's table logic on a tiny random model (no SmolLM2): ratios to the
AR row of the same run, the break-even arithmetic by hand, the equality column, the JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench.benchmarks import speculative_speed as ss
from workbench.models.config import get_preset
from workbench.models.transformer import build_model
from workbench.pretrained.embeddings import append_embedding_rows

V = 64


@pytest.fixture(scope="module")
def tiny():
    # untied head: a random tied model only repeats its last token
    ar_model = build_model(get_preset("tiny", vocab_size=V, dtype="float32", max_len=128, tie_embeddings=False), 0)
    drafter = ss.zero_adapter(append_embedding_rows(ar_model, 1), V)
    prompts = ss.random_prompt_ids(4, V, seed=1, lengths=(3, 12))
    return ar_model, drafter, prompts


def test_break_even_by_hand():
    costs = pd.DataFrame({"batch_size": [1, 1, 1, 8, 8], "positions": [1, 4, 8, 1, 4],
                          "seconds": [0.02, 0.03, 0.05, 0.04, 0.12]})
    costs["cost_vs_1"] = [1.0, 1.5, 2.5, 1.0, 3.0]
    table = ss.break_even(costs, target=1.5).set_index(["batch_size", "block_size"])
    assert list(table.index) == [(1, 4), (1, 8), (8, 4)]
    # b = 4 at batch 1: draft + verify = 2 x 1.5 = 3 AR steps; 1.5x needs 4.5 tokens per iteration
    row = table.loc[(1, 4)]
    assert row["iteration_cost_vs_ar_step"] == pytest.approx(3.0)
    assert row["tokens_per_iteration_break_even"] == pytest.approx(3.0)
    assert row["acceptance_break_even"] == pytest.approx((3.0 - 1) / 3)
    assert row["tokens_per_iteration_for_1.5x"] == pytest.approx(4.5)
    assert row["acceptance_for_1.5x"] == pytest.approx((4.5 - 1) / 3)  # > 1: out of reach at b = 4
    assert table.loc[(1, 8), "tokens_per_iteration_for_1.5x"] == pytest.approx(7.5)
    assert table.loc[(1, 8), "acceptance_for_1.5x"] == pytest.approx(6.5 / 7)
    assert table.loc[(8, 4), "tokens_per_iteration_break_even"] == pytest.approx(6.0)
    # a pass cheaper than half an AR step needs no acceptance at all (shown as 0, not negative)
    cheap = costs.assign(cost_vs_1=[1.0, 0.4, 2.5, 1.0, 3.0])
    assert ss.break_even(cheap, 1.0).iloc[0]["acceptance_break_even"] == 0.0


def test_ratios_are_to_the_ar_row_of_the_same_batch_and_length():
    table = pd.DataFrame({"method": ["ar", "speculative", "ar", "lossy"], "batch_size": [1, 1, 8, 8],
                          "length": [32, 32, 32, 32], "seconds": [2.0, 1.0, 4.0, 8.0],
                          "tokens_per_s": [16.0, 32.0, 64.0, 30.0]})
    out = ss.with_ratios(table)
    assert out["time_vs_ar"].tolist() == [1.0, 0.5, 1.0, 2.0]
    assert out["speedup_vs_ar"].tolist() == [1.0, 2.0, 1.0, 0.5]
    assert out["tokens_per_s_vs_ar"].tolist() == pytest.approx([1.0, 2.0, 1.0, 30 / 64])


def test_run_writes_rows_pass_costs_and_json(tiny, tmp_path):
    ar_model, drafter, prompts = tiny
    config = ss.SpeculativeSpeedConfig(batch_sizes=(1, 4), lengths=(6,), block_size=3, repeats=1, batch1_prompts=2,
                                       pass_positions=(1, 2, 4), pass_batches=(1, 4), context=10, pass_repeats=1,
                                       stop_at_eos=False)
    result = ss.run(config, ar_model, drafter, prompts, ss.Ids(eos=None, pad=0, mask=V), drafter_source="zero",
                    model_name="tiny", out_dir=tmp_path, progress=False)
    rows = result["rows"]
    assert rows[["method", "batch_size"]].values.tolist() == [[m, b] for b in (1, 4) for m in ss.METHODS]
    assert (rows["prompts"].tolist() == [2, 2, 2, 4, 4, 4])
    # the verified decode equals AR for every example; without EOS every row makes all 6 tokens
    spec = rows[rows["method"] == "speculative"]
    assert spec["equals_ar"].tolist() == [1.0, 1.0]
    assert (rows["new_tokens"] == 6).all()
    ar = rows[rows["method"] == "ar"]
    assert (ar["time_vs_ar"] == 1.0).all() and ar["equals_ar"].isna().all()
    for _, row in rows.iterrows():
        same = rows[(rows["method"] == "ar") & (rows["batch_size"] == row["batch_size"])].iloc[0]
        assert row["time_vs_ar"] == pytest.approx(row["seconds"] / same["seconds"])
        assert row["tokens_per_s"] == pytest.approx(row["prompts"] * row["new_tokens"] / row["seconds"])
    lossy = rows[rows["method"] == "lossy"]
    assert lossy["agreement_with_ar"].between(0, 1).all()
    # lossy keeps every draft: b tokens per iteration, 2 passes per b tokens (+ the prompt pass)
    assert lossy["accept_at_1"].tolist() == [1.0, 1.0] and lossy["accept_at_2"].tolist() == [1.0, 1.0]
    assert lossy["tokens_per_iteration"].tolist() == pytest.approx([3.0, 3.0])
    assert lossy["passes_per_token"].tolist() == pytest.approx([(1 + 2 * 2) / 6] * 2)
    assert spec["tokens_per_iteration"].between(1, 3).all()
    assert ((spec["accept_at_1"] >= spec["accept_at_2"]) & spec["accept_at_1"].between(0, 1)).all()
    costs = result["pass_cost"]
    assert costs[["batch_size", "positions"]].values.tolist() == [[b, n] for b in (1, 4) for n in (1, 2, 4)]
    assert (costs[costs["positions"] == 1]["cost_vs_1"] == 1.0).all() and (costs["seconds"] > 0).all()
    assert result["break_even"]["block_size"].tolist() == [2, 4, 2, 4]
    saved = json.loads((tmp_path / "speculative_speed.json").read_text())
    assert len(saved["rows"]) == 6 and len(saved["pass_cost"]) == 6 and len(saved["break_even"]) == 4
    assert len(saved["load_average"]["before"]) == 3 and saved["drafter"] == "zero"
    assert saved["config"]["block_size"] == 3
    assert "equals_ar" in ss.format_tables(result) and "acceptance_for_1.5x" in ss.format_tables(result)


def test_lenient_rows_at_leniency_zero_keep_every_draft(tiny):
    ar_model, drafter, prompts = tiny
    config = ss.SpeculativeSpeedConfig(batch_sizes=(1,), lengths=(6,), block_size=3, repeats=1, batch1_prompts=2,
                                       pass_positions=(1,), pass_batches=(1,), context=10, pass_repeats=1,
                                       stop_at_eos=False, leniency=0.0)
    rows = ss.run(config, ar_model, drafter, prompts, ss.Ids(eos=None, pad=0, mask=V), drafter_source="zero",
                  model_name="tiny", progress=False)["rows"]
    assert rows["method"].tolist() == ["ar", "lossy", "speculative", "lenient"]
    lossy, lenient = rows.iloc[1], rows.iloc[3]
    assert lenient["leniency"] == 0.0 and lenient["tokens_per_iteration"] == pytest.approx(3.0)
    assert lenient["agreement_with_ar"] == lossy["agreement_with_ar"]
    assert lenient["equals_ar"] == lossy["exact_with_ar"]


def test_equality_column_catches_a_different_output(tiny, monkeypatch):
    """The equality check compares with AR's output: a verifier that disagrees shows below 1.0."""
    ar_model, drafter, prompts = tiny
    real = ss.speculative_generate

    def corrupted(model, prompts_BxP, lengths_B, config, *args, **kwargs):
        out = real(model, prompts_BxP, lengths_B, config, *args, **kwargs)
        if not config.verify:
            return out
        tokens = np.asarray(out.tokens).copy()
        tokens[0, 0] = (tokens[0, 0] + 1 - 4) % (V - 4) + 4  # first example's first token changed
        return out._replace(tokens=tokens)

    monkeypatch.setattr(ss, "speculative_generate", corrupted)
    config = ss.SpeculativeSpeedConfig(batch_sizes=(4,), lengths=(5,), block_size=3, repeats=1, stop_at_eos=False)
    rows = ss.decode_rows(config, ar_model, drafter, prompts, ss.Ids(eos=None, pad=0, mask=V), progress=False)
    assert rows[rows["method"] == "speculative"]["equals_ar"].item() == pytest.approx(0.75)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="block_size"):
        ss.SpeculativeSpeedConfig(block_size=1)
    with pytest.raises(ValueError, match="must include 1"):
        ss.SpeculativeSpeedConfig(pass_positions=(2, 4))
    with pytest.raises(ValueError, match="batch 8 needs 8 prompts"):
        ar = build_model(get_preset("tiny", vocab_size=V, dtype="float32", max_len=64), 0)
        ss.decode_rows(ss.SpeculativeSpeedConfig(batch_sizes=(8,), lengths=(4,)), ar, ar, [[5, 6]],
                       ss.Ids(None, 0, V - 1), progress=False)

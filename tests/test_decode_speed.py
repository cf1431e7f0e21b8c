"""The decode-speed benchmark at a tiny size: every case timed, the table, JSON and figure consistent."""

import json

import numpy as np
import pytest

from workbench.benchmarks import decode_speed
from workbench.benchmarks.decode_speed import DecodeSpeedConfig, run_decode_speed, speed_figure

TINY = DecodeSpeedConfig(lengths=(4, 8), num_steps=(2,), num_samples=(1, 2), repeats=2, warmup=1, prompt_len=4,
                         vocab_size=512)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return run_decode_speed(TINY, out_dir=out, progress=False), out


def test_every_case_is_timed(table):
    frame, _ = table
    assert list(frame["label"]) == ["AR (KV cache)", "diffusion 2 steps x 1 sample", "diffusion 2 steps x 2 samples"] * 2
    assert list(frame["length"]) == [4, 4, 4, 8, 8, 8]
    assert (frame["status"] == "ok").all()
    assert (frame["seconds"] > 0).all() and (frame["seconds_min"] <= frame["seconds"]).all()
    assert (frame["seconds"] <= frame["seconds_max"]).all()
    np.testing.assert_allclose(frame["ms_per_token"], 1e3 * frame["seconds"] / frame["length"])
    diffusion = frame[frame["method"] == "diffusion"]
    np.testing.assert_allclose(diffusion["ms_per_step"], 1e3 * diffusion["seconds"] / 2)
    for _, row in diffusion.iterrows():
        ar = frame[(frame["method"] == "ar") & (frame["length"] == row["length"])]["seconds"].item()
        assert row["speedup_vs_ar"] == pytest.approx(ar / row["seconds"])
    assert frame[frame["method"] == "ar"]["speedup_vs_ar"].isna().all()


def test_prefix_diffusion_times_the_prompt_cache_on_and_off():
    config = DecodeSpeedConfig(lengths=(4,), num_steps=(2,), num_samples=(1,), repeats=2, warmup=1, prompt_len=8,
                               vocab_size=512, diffusion_attention="prefix_diffusion")
    frame = run_decode_speed(config, progress=False)
    assert list(frame["label"]) == ["AR (KV cache)", "diffusion 2 steps x 1 sample (prefix cache)",
                                    "diffusion 2 steps x 1 sample (full recomputation)"]
    assert list(frame["prefix_cache"]) == [None, True, False]
    cached, full = frame["seconds"].iloc[1], frame["seconds"].iloc[2]
    assert frame["speedup_vs_full"].iloc[1] == pytest.approx(full / cached)
    assert np.isnan(frame["speedup_vs_full"].iloc[[0, 2]]).all()


def test_json_records_config_model_and_rows(table):
    frame, out = table
    payload = json.loads((out / "decode_speed.json").read_text())
    assert payload["config"]["lengths"] == [4, 8]
    assert payload["model"]["max_len"] >= 4 + 8 and payload["model"]["dtype"] == "float32"  # CPU default
    assert payload["model"]["params"] > 0 and payload["device"]["platform"] == "cpu"
    assert [r["label"] for r in payload["rows"]] == list(frame["label"])


def test_figure_plots_time_and_speedup_per_curve(table):
    frame, _ = table
    fig = speed_figure(frame)
    names = [t.name for t in fig.data]
    assert names.count("AR (KV cache)") == 1  # AR has no speed-up curve
    assert names.count("diffusion 2 steps x 2 samples") == 2
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


def test_ar_decodes_exactly_length_tokens(monkeypatch):
    seen = []
    original = decode_speed.generate

    def spy(model, prompts, lengths, config, rng):
        out = original(model, prompts, lengths, config, rng)
        seen.append(int(out.num_steps))
        return out

    monkeypatch.setattr(decode_speed, "generate", spy)
    run_decode_speed(DecodeSpeedConfig(lengths=(6,), num_steps=(1,), num_samples=(1,), repeats=1, warmup=1,
                                       prompt_len=3, vocab_size=512), progress=False)
    assert seen and set(seen) == {6}  # no early EOS: the AR loop runs the full length


def test_slow_curves_stop_at_max_case_seconds():
    config = DecodeSpeedConfig(lengths=(4, 8), num_steps=(1,), num_samples=(1,), repeats=1, warmup=1, prompt_len=3,
                               vocab_size=512, max_case_seconds=0.0)
    frame = run_decode_speed(config, progress=False)
    skipped = "skipped (slower than max_case_seconds)"
    assert list(frame["status"]) == ["ok", "ok", skipped, skipped]  # every curve stops after its first case
    assert frame[frame["status"] == skipped]["seconds"].isna().all()


def test_model_of_the_caller_is_used_with_its_weights():
    from workbench.models import build_model, get_preset

    model = build_model(get_preset("tiny", vocab_size=300, max_len=32, attention="bidirectional"), 3)
    timed = decode_speed.benchmark_model(DecodeSpeedConfig(lengths=(40,), prompt_len=8), model)
    assert timed.config.max_len == 48 and timed.config.vocab_size == 300 and timed.config.dtype == "float32"
    np.testing.assert_array_equal(np.asarray(timed.embedder.embedding[...]), np.asarray(model.embedder.embedding[...]))


@pytest.mark.parametrize("bad, match", [
    (dict(lengths=()), "lengths"),
    (dict(num_steps=(0,)), "num_steps"),
    (dict(repeats=0), "repeats"),
    (dict(diffusion_attention="causal"), "diffusion_attention"),
])  # fmt: skip
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        DecodeSpeedConfig(**bad)


def test_command_line_writes_json_and_html(tmp_path, capsys):
    code = decode_speed.main(["--out", str(tmp_path), "--lengths", "4", "--num-steps", "1", "--num-samples", "1",
                              "--repeats", "1", "--prompt-len", "3"])
    assert code == 0
    assert (tmp_path / "decode_speed.json").is_file() and (tmp_path / "decode_speed.html").is_file()
    assert "AR (KV cache)" in capsys.readouterr().out


def test_block_diffusion_rows_report_passes_and_ratio_to_ar():
    config = DecodeSpeedConfig(lengths=(8,), num_steps=(4,), num_samples=(1,), repeats=1, warmup=1, prompt_len=4,
                               vocab_size=512, block_sizes=(4, 3), block_policies=("low_confidence", "threshold"),
                               threshold=0.0, diffusion_attention="prefix_diffusion")
    frame = run_decode_speed(config, progress=False)
    block = frame[frame["method"] == "block"]
    assert list(block["block_size"]) == [4, 4, 3, 3] and list(block["policy"]) == ["low_confidence", "threshold"] * 2
    ok = block[block["status"] == "ok"]
    assert len(ok) == 2 and block[block["block_size"] == 3]["status"].str.startswith("skipped").all()
    # low_confidence spends its budget: prompt pass + 2 blocks x 4 steps (each commit rides on the next
    # block's first step); a threshold of 0 commits a whole block in one step: prompt + 2 x 1
    assert list(ok["forward_passes"]) == [9, 3]
    np.testing.assert_allclose(ok["nfe_per_token"], ok["forward_passes"] / 8)
    ar = frame[frame["method"] == "ar"]
    assert ar["forward_passes"].item() == 9
    np.testing.assert_allclose(ok["speedup_vs_ar"], ar["seconds"].item() / ok["seconds"])
    np.testing.assert_allclose(frame["tokens_per_s"], frame["batch_size"] * 8 / frame["seconds"])
    assert block["speedup_vs_full"].isna().all()  # the cache-on/off ratio belongs to full-canvas rows only


def test_block_decode_example_commits_every_position_once_per_block():
    from workbench.benchmarks.decode_speed import DecodeSpeedConfig, block_decode_example

    config = DecodeSpeedConfig(preset="tiny", lengths=(8,), num_steps=(2,), prompt_len=4, vocab_size=64)
    out = block_decode_example(config, block_size=4, policy="low_confidence", length=8)
    steps = np.asarray(out.commit_step)[0].reshape(2, 4)
    assert steps.shape == (2, 4) and (steps >= 0).all() and (steps < 4).all()  # b=4 steps per block by default
    # low_confidence commits one position per step (4 steps for 4 positions): each step once per block
    assert all(sorted(row) == [0, 1, 2, 3] for row in steps.tolist())
    assert int(out.blocks_run) == 2


def test_trained_models_rows_are_scored_on_their_own_outputs_of_the_eval_prompts():
    """With one model per method and an EvalSet, each row decodes the eval prompts with its own
    model and is scored against the references: references made from independent AR and block
    decodes of those prompts score 1.0 on their own row, and one changed reference costs 1/3."""
    import jax
    import jax.numpy as jnp

    from workbench.models import build_model, get_preset
    from workbench.models.transformer import with_config
    from workbench.objectives.batch import seq2seq_batch
    from workbench.sampling.ar import ARSamplingConfig, generate
    from workbench.sampling.block import BlockSamplingConfig, block_sample

    ar_model = build_model(get_preset("tiny", vocab_size=64, max_len=16, attention="prefix_lm"), 1)
    block_model = build_model(get_preset("tiny", vocab_size=64, max_len=16, attention="block_causal", block_size=4), 2)
    prompts = [[5, 6, 7], [8, 9, 10, 11], [12, 13]]
    config = DecodeSpeedConfig(lengths=(8,), num_steps=(2,), num_samples=(1,), repeats=1, warmup=1, prompt_len=4,
                               batch_size=3, block_sizes=(4,), block_policies=("low_confidence",), process="absorbing",
                               temperature=0.0)
    padded = np.zeros((3, 4), np.int32)
    for row, p in zip(padded, prompts):
        row[: len(p)] = p
    lengths = np.array([3, 4, 2], np.int32)
    timed_ar = decode_speed.benchmark_model(config, ar_model)
    ar_out = np.asarray(generate(with_config(timed_ar, attention="prefix_lm"), padded, lengths,
                                 ARSamplingConfig(max_new_tokens=8, eos_id=-1), jax.random.key(0)).tokens)
    batch = jax.tree.map(jnp.asarray, seq2seq_batch(prompts, [[]] * 3, input_len=4, target_len=8, pad_id=0))
    timed_block = decode_speed.benchmark_model(config, block_model)
    block_out = np.asarray(block_sample(timed_block, batch, BlockSamplingConfig(num_steps=4, eos_id=None),
                                        jax.random.key(0)).tokens)

    def cut(row):
        stop = np.isin(row, (0, 1))
        return tuple(int(t) for t in row[: int(np.argmax(stop)) if stop.any() else len(row)])

    def scored(references):
        eval_set = decode_speed.EvalSet(prompts=tuple(map(tuple, prompts)), references=references, eos_id=1)
        frame = run_decode_speed(config, {"ar": ar_model, "diffusion": block_model, "block": block_model},
                                 progress=False, eval_set=eval_set)
        return frame.set_index("method")

    ar_refs, block_refs = [cut(r) for r in ar_out], [cut(r) for r in block_out]
    assert scored(tuple(ar_refs)).loc["ar", "exact_match"] == 1.0
    changed = scored((ar_refs[0] + (63,), *ar_refs[1:])).loc["ar"]
    assert changed["exact_match"] == pytest.approx(2 / 3) and changed["token_accuracy"] < 1.0
    frame = scored(tuple(block_refs))
    assert frame.loc["block", "exact_match"] == 1.0 and frame.loc["block", "token_accuracy"] == 1.0
    assert 0.0 <= frame.loc["diffusion", "exact_match"] <= 1.0


def test_eval_set_and_models_are_checked():
    from workbench.models import build_model, get_preset

    model = build_model(get_preset("tiny", vocab_size=64, max_len=16, attention="prefix_lm"), 1)
    config = DecodeSpeedConfig(lengths=(4,), num_steps=(1,), num_samples=(1,), prompt_len=3, batch_size=2)
    with pytest.raises(ValueError, match="missing: \\['diffusion'\\]"):
        run_decode_speed(config, {"ar": model}, progress=False)
    with pytest.raises(ValueError, match="batch_size=2 but the EvalSet has 1 prompts"):
        run_decode_speed(config, model, progress=False, eval_set=decode_speed.EvalSet(((5,),), ((6,),)))
    with pytest.raises(ValueError, match="more than prompt_len=3"):
        run_decode_speed(config, model, progress=False, eval_set=decode_speed.EvalSet(((5,) * 4, (5,)), ((6,), (6,))))
    with pytest.raises(ValueError, match="as many references as prompts"):
        decode_speed.EvalSet(((5,),), ())


def test_summary_and_figure_page_for_a_notebook(table, tmp_path):
    frame, _ = table
    summary = decode_speed.speed_summary(frame)
    assert summary["backend"] == "cpu" and summary["device"] and len(summary["rows"]) == len(frame)
    assert summary["max_speedup_vs_ar"] == pytest.approx(frame["speedup_vs_ar"].max())
    speed_figure(frame, html=tmp_path / "speed.html")
    assert "Plotly.newPlot" in (tmp_path / "speed.html").read_text()  # plotly.js inlined: it works offline

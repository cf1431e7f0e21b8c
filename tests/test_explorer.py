"""Trajectory figures and the widget explorer, without a browser: callbacks change the figure's data."""

from pathlib import Path

import jax
import numpy as np
import pytest

from workbench import study
from workbench.models import build_model
from workbench.objectives.batch import seq2seq_batch
from workbench.sampling.diffusion import DiffusionSamplingConfig, diffusion_sample
from workbench.viz import animation, figure_at, trajectory_from_output, write_html
from workbench.viz.explorer import DenoisingExplorer, ModelDecoder, decode_trajectories
from workbench.viz.trajectory import (
    HEATMAP,
    REWRITTEN,
    display_piece,
    heatmap_values,
    step_marker_index,
    write_trajectories_html,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
INPUT_LEN, TARGET_LEN = 16, 12
SAMPLING = DiffusionSamplingConfig(num_samples=3, num_steps=4)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return study.tokenizer_for(tmp_path_factory.mktemp("tok"), "tiny", data_dir=DATA if DATA.exists() else None)


@pytest.fixture(scope="module")
def model(tokenizer):
    config = study.model_config("tiny", tokenizer, attention="bidirectional", dtype="float32")
    return build_model(config, 0)


@pytest.fixture(scope="module")
def decoder(model, tokenizer):
    return ModelDecoder(model, tokenizer, SAMPLING, input_len=INPUT_LEN, target_len=TARGET_LEN, seed=0)


@pytest.fixture(scope="module")
def trajectory(decoder):
    return decoder("def add(a, b):", "    return a + b", 0)


def test_trajectory_from_output_shapes_and_quality(model, tokenizer):
    prompts = ["def add(a, b):", "import os"]
    batch = seq2seq_batch([tokenizer.encode(p) for p in prompts], [[], []], input_len=INPUT_LEN, target_len=TARGET_LEN,
                          pad_id=tokenizer.pad_id, example_ids=[0, 1])
    config = DiffusionSamplingConfig(num_samples=3, num_steps=4, special_ids=tokenizer.special_ids,
                                     mask_id=tokenizer.mask_id)
    output = diffusion_sample(model, batch, config, jax.random.key(0))
    traj = trajectory_from_output(output, tokenizer, 1, prompt=prompts[1], reference="x = 1")
    assert traj.tokens.shape == (3, 5, TARGET_LEN) and traj.probs.shape == (3, 4, TARGET_LEN)
    assert len(traj.pieces) == 3 and len(traj.pieces[0]) == 5 and len(traj.pieces[0][0]) == TARGET_LEN
    np.testing.assert_array_equal(traj.tokens, np.asarray(output.trajectory)[1])
    assert traj.chosen == int(output.chosen[1])
    assert traj.texts[traj.chosen][-1] == tokenizer.decode(np.asarray(output.tokens)[1])
    # quality: fraction of positions equal to the reference canvas (ids, EOS, then padding)
    ids = tokenizer.encode("x = 1", add_eos=True)
    canvas = np.zeros(TARGET_LEN, np.int64)
    canvas[: len(ids)] = ids
    np.testing.assert_allclose(traj.quality, (traj.tokens == canvas).mean(-1))
    with pytest.raises(IndexError, match="example=2 is outside the batch of 2"):
        trajectory_from_output(output, tokenizer, 2)


def test_trajectory_is_cut_to_the_steps_run(model, tokenizer):
    batch = seq2seq_batch([tokenizer.encode("x")], [[]], input_len=INPUT_LEN, target_len=TARGET_LEN,
                          pad_id=tokenizer.pad_id)
    config = DiffusionSamplingConfig(num_samples=2, num_steps=30, temperature=0.0, early_exit=True,
                                     special_ids=tokenizer.special_ids, mask_id=tokenizer.mask_id)
    output = diffusion_sample(model, batch, config, jax.random.key(1))
    steps = int(output.steps_run)
    assert steps < 30  # argmax decoding of a fixed model settles
    traj = trajectory_from_output(output, tokenizer)
    assert traj.num_steps == steps and traj.tokens.shape[1] == steps + 1


def test_figure_at_blanks_later_steps_and_boxes_rewritten_cells(trajectory):
    fig = figure_at(trajectory, sample=0, step=2)
    z = np.asarray(fig.data[HEATMAP].z, dtype=float)
    assert z.shape == (TARGET_LEN, trajectory.num_steps + 1)
    assert np.isnan(z[:, 0]).all() and np.isnan(z[:, 3:]).all() and not np.isnan(z[:, 1:3]).any()
    np.testing.assert_allclose(z[:, 1:3], trajectory.probs[0, :2].T, rtol=1e-6)
    assert len(fig.data[REWRITTEN].x) == int(trajectory.changed[0, :2].sum())
    assert "step 2/4" in fig.layout.title.text
    labels = np.asarray(fig.data[HEATMAP].text, dtype=object)
    assert list(labels[:, 1]) == list(trajectory.pieces[0][1]) and set(labels[:, 4]) == {""}
    with pytest.raises(IndexError, match="step=9"):
        figure_at(trajectory, step=9)


def test_animation_has_a_frame_per_step_and_a_slider(trajectory, tmp_path):
    fig = animation(trajectory)
    steps = trajectory.num_steps + 1
    assert len(fig.frames) == steps
    assert [s["label"] for s in fig.layout.sliders[0]["steps"]] == [str(k) for k in range(steps)]
    assert list(fig.frames[1].traces) == [HEATMAP, REWRITTEN, step_marker_index(trajectory)]
    assert np.isnan(np.asarray(fig.frames[1].data[0].z, dtype=float)[:, 2:]).all()
    page = write_html(fig, tmp_path / "t.html").read_text()
    assert "Plotly.newPlot" in page and len(page) > 3e6 and "src=\"https://cdn" not in page  # works offline
    both = write_trajectories_html([trajectory, trajectory], tmp_path / "two.html").read_text()
    assert both.count("Plotly.newPlot") == 2


def test_display_piece_makes_whitespace_visible():
    assert display_piece("▁return") == "␣return"
    assert display_piece("<pad>") == "·" and display_piece("<0x0A>") == "↵"


def test_heatmap_values_reject_bad_sample(trajectory):
    with pytest.raises(IndexError, match="sample=7"):
        heatmap_values(trajectory, 7, 0)


class CountingDecoder:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, prompt, reference, example_id):
        self.calls.append(prompt)
        return self.inner(prompt, reference, example_id)


@pytest.fixture
def explorer(decoder):
    pytest.importorskip("ipywidgets")
    counting = CountingDecoder(decoder)
    view = DenoisingExplorer(counting, ["def add(a, b):", "import os", "class A:"], ["    return a + b", None, None])
    view.decoder = counting
    return view


def z_of(explorer):
    return np.asarray(explorer.figure.data[HEATMAP].z, dtype=float)


def test_step_slider_updates_the_heatmap(explorer):
    last = explorer.step.value
    assert last == explorer.current.num_steps
    before = z_of(explorer)
    explorer.step.value = 1
    after = z_of(explorer)
    assert not np.array_equal(before, after, equal_nan=True)
    assert np.isnan(after[:, 2:]).all() and not np.isnan(after[:, 1]).any()
    assert "step 1/" in explorer.figure.layout.title.text
    explorer.step.value = last
    np.testing.assert_array_equal(z_of(explorer), before)


def test_sample_picker_shows_another_sample(explorer):
    traj = explorer.current
    other = (traj.chosen + 1) % traj.num_samples
    explorer.sample.value = other
    np.testing.assert_allclose(z_of(explorer)[:, 1:], traj.probs[other].T, rtol=1e-6)
    assert f"sample {other} " in explorer.figure.layout.title.text


def test_prompt_picker_decodes_once_and_resets_the_view(explorer):
    assert explorer.decoder.calls == ["def add(a, b):"]
    explorer.step.value = 0
    explorer.prompt.value = 1
    traj = explorer.current
    assert explorer.decoder.calls == ["def add(a, b):", "import os"]
    assert explorer.step.value == traj.num_steps and explorer.sample.value == traj.chosen
    assert "prompt: import os" in explorer.figure.layout.title.text
    np.testing.assert_allclose(z_of(explorer)[:, 1:], traj.probs[traj.chosen].T, rtol=1e-6)
    explorer.prompt.value = 0
    explorer.prompt.value = 1
    assert len(explorer.decoder.calls) == 2  # cached


def test_new_prompt_is_decoded_and_selected(explorer):
    explorer.new_prompt.value = "while True:"
    explorer.denoise.click()
    assert explorer.prompts[-1] == "while True:" and explorer.prompt.value == 3
    assert len(explorer.prompt.options) == 4
    assert "prompt: while True:" in explorer.figure.layout.title.text
    assert "denoised prompt 3" in explorer.status.value


def test_too_long_prompt_is_reported_not_raised(explorer):
    explorer.new_prompt.value = "x = 1\n" * 40
    explorer.denoise.click()
    assert "input_len=16" in explorer.status.value and len(explorer.prompts) == 3
    explorer.new_prompt.value = ""
    explorer.denoise.click()
    assert "empty" in explorer.status.value


def test_explorer_needs_matching_references(decoder):
    pytest.importorskip("ipywidgets")
    with pytest.raises(ValueError, match="2 prompts but 1 references"):
        DenoisingExplorer(decoder, ["a", "b"], [None])


def test_decode_trajectories_in_one_batch_equal_one_prompt_at_a_time(model, tokenizer, decoder):
    examples = [("def add(a, b):", "    return a + b"), ("import os", None)]
    batched = decode_trajectories(model, tokenizer, examples, SAMPLING, input_len=INPUT_LEN, target_len=TARGET_LEN)
    for i, (prompt, reference) in enumerate(examples):
        alone = decoder(prompt, reference, i)
        np.testing.assert_array_equal(batched[i].tokens, alone.tokens)
        assert batched[i].texts == alone.texts and batched[i].chosen == alone.chosen

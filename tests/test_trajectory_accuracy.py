"""The trajectory's accuracy against the reference, on text positions and padding apart."""

import numpy as np

from workbench.data.special import SpecialIds
from workbench.sampling.diffusion import DiffusionOutput
from workbench.viz import trajectory
from workbench.viz.trajectory import final_accuracy, trajectory_from_output


class DigitTokenizer:
    """Ids are digits; 0 is padding, 1 is EOS."""

    pad_id = 0
    specials = SpecialIds(pad=0, eos=1)

    def encode(self, text, add_eos=False):
        return [int(c) for c in text] + ([1] if add_eos else [])

    def decode(self, ids, stop_at_eos=True, stop_at_pad=True):
        return "".join(str(int(i)) for i in ids if int(i) > 1)

    def id_to_piece(self, i):
        return str(i)


def output_of(samples):
    traj = np.asarray(samples)[None, :, None, :].repeat(2, axis=2)  # [1, S, initial + 1 step, T]
    s, t = traj.shape[1], traj.shape[-1]
    return DiffusionOutput(tokens=traj[:, 0, -1], chosen=np.array([0]), scores=np.zeros((1, s)), trajectory=traj,
                           probs=np.ones((1, s, 1, t)), changed=np.zeros((1, s, 1, t), bool), steps_run=np.array(1))


def test_an_all_padding_sample_scores_zero_on_text_though_high_overall():
    # reference "57" -> canvas [5, 7, EOS, pad x 5]; sample 0 is all padding, sample 1 is right
    out = output_of([[0] * 8, [5, 7, 1, 0, 0, 0, 0, 0]])
    traj = trajectory_from_output(out, DigitTokenizer(), 0, reference="57")
    np.testing.assert_allclose(traj.quality[:, -1], [5 / 8, 1.0])
    np.testing.assert_allclose(traj.quality_text[:, -1], [0.0, 1.0])
    np.testing.assert_allclose(traj.quality_padding[:, -1], [1.0, 1.0])
    assert final_accuracy(traj) == {"final_accuracy": 5 / 8, "final_accuracy_text": 0.0,
                                    "final_accuracy_padding": 1.0}


def test_a_reference_filling_the_canvas_has_no_padding_accuracy():
    traj = trajectory_from_output(output_of([[5, 7, 1]]), DigitTokenizer(), 0, reference="57")
    assert np.isnan(traj.quality_padding).all() and final_accuracy(traj)["final_accuracy_padding"] is None
    assert final_accuracy(trajectory_from_output(output_of([[5, 7, 1]]), DigitTokenizer(), 0))["final_accuracy"] is None


def test_records_of_a_trajectory_and_of_a_page_of_them():
    out = output_of([[0] * 8, [5, 7, 1, 0, 0, 0, 0, 0]])
    traj = trajectory_from_output(out, DigitTokenizer(), 0, prompt="1" * 300, reference="57")
    record = trajectory.record(traj)
    assert record["prompt"] == "1" * 200 and record["chosen_sample"] == 0 and record["steps"] == 1
    assert record["final_accuracy"] == 5 / 8 and record["final_accuracy_text"] == 0.0
    assert record["rewritten_per_step"] == [0.0] and record["final_text"] == "" and record["chosen_score"] == 0.0
    assert trajectory.page_record([traj, traj], "page.html") == {"html": "page.html", "examples": 2,
                                                                 "final_accuracy": [5 / 8, 5 / 8]}

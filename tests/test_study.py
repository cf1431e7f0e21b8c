"""The study's grids as calls: cells and their attention, refused before any data is read."""

from types import SimpleNamespace

import pytest

from workbench import study
from workbench.study import stages
from workbench.data.special import SpecialIds

TOKENIZER = SimpleNamespace(vocab_size=100, special_ids=(0, 1, 2, 3), mask_id=3, pad_id=0,
                            specials=SpecialIds(pad=0, eos=1, unk=2, mask=3))


@pytest.fixture(autouse=True)
def no_data(monkeypatch):
    """Any attempt to read a dataset fails the test: the grid is checked before data."""
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset was read")

    monkeypatch.setattr(stages, "load_dataset", refuse)


def test_grid_cells_take_the_attention_their_loss_trains():
    cells = study.pretraining_grid(TOKENIZER, "tiny", ["decoder", "encoder_decoder"], ["prefix_lm", "span_corruption"],
                                   ["ar", "uniform", "absorbing"])
    assert len(cells) == 12 and len({c.name for c in cells}) == 12
    attention = {(c.arch, c.loss): c.config.attention for c in cells}
    assert attention == {("decoder", "ar"): "prefix_lm", ("encoder_decoder", "ar"): "causal",
                         ("decoder", "uniform"): "bidirectional", ("encoder_decoder", "uniform"): "bidirectional",
                         ("decoder", "absorbing"): "bidirectional", ("encoder_decoder", "absorbing"): "bidirectional"}
    assert all(c.config.arch == c.arch and c.config.vocab_size == 100 for c in cells)


@pytest.mark.parametrize("args,match", [
    ((["decoder"], ["prefix_lm"], ["diffusion"]), "loss kind 'diffusion'"),
    ((["decoder"], ["causal"], ["ar"]), "objective 'causal'"),
    ((["encoder"], ["prefix_lm"], ["ar"]), "arch='encoder'"),
])
def test_a_bad_cell_is_refused_before_any_data_is_read(args, match):
    with pytest.raises(ValueError, match=match):
        study.pretraining_grid(TOKENIZER, "tiny", *args)


def test_compare_methods_refuses_unknown_methods_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"'AR2Diff_10'.*choose among \['AR', 'Diffusion', 'AR2Diff'\]"):
        study.compare_methods(tmp_path, TOKENIZER, ["AR", "AR2Diff_10"], preset="tiny", task="python_functions",
                              pretrain_config=None, finetune_config=None, eval_config=None, input_len=8,
                              target_len=8, batch_size=2)
    assert not any(tmp_path.iterdir())


def test_loss_configs_carry_the_tokenizer_ids():
    loss = study.loss_config(TOKENIZER, "absorbing")
    assert (loss.kind, loss.mask_id, loss.special_ids) == ("absorbing", 3, (0, 1, 2, 3))
    assert study.loss_config(TOKENIZER, "ar").kind == "ar"


def test_tokenizer_home_is_the_given_folder_the_run_s_parent_or_the_default(tmp_path):
    assert study.tokenizer_home(None, None, tmp_path / "out") == tmp_path / "out"
    assert study.tokenizer_home(tmp_path / "a" / "run", tmp_path / "tok", tmp_path) == tmp_path / "tok"
    (tmp_path / "a" / "tokenizer").mkdir(parents=True)
    assert study.tokenizer_home(tmp_path / "a" / "run", None, tmp_path) == (tmp_path / "a").resolve()
    with pytest.raises(FileNotFoundError, match="no tokenizer/ in .*pass tokenizer_dir="):
        study.tokenizer_home(tmp_path / "b" / "run", None, tmp_path)

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


def test_short_run_is_the_notebooks_training_preset():
    config = study.short_run(0, 1e-2, seed=3, log_every=1, warmup_steps=0)
    assert (config.steps, config.seed, config.log_every, config.checkpoint_every) == (0, 3, 1, 1)
    assert not config.progress and not config.tensorboard and config.loss.kind == "ar"
    assert (config.optimizer.learning_rate, config.optimizer.schedule, config.optimizer.warmup_steps) == (
        1e-2, "constant", 0)
    loss = study.loss_config(TOKENIZER, "uniform")
    assert study.short_run(20, 1e-3, loss=loss) == study.with_loss(study.short_run(20, 1e-3), loss)
    assert study.short_run(20, 1e-3).checkpoint_every == 20


def test_pretrain_numbers_come_from_the_run_directory(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "loss": 4.5}\n{"step": 5, "eval_loss": 4.75}\n')
    model = SimpleNamespace(config=SimpleNamespace(vocab_size=100))
    result = stages.PretrainResult(SimpleNamespace(run_dir=tmp_path, step=5, model=model), None, 4.25)
    assert result.numbers() == {"steps": 5, "final_loss": 4.5, "held_out_loss": 4.75, "unigram_entropy": 4.25,
                                "vocab_size": 100}

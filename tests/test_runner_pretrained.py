"""The evaluation runner on an imported model: AR baseline through the chat template (the
prompts the sampler sees are the templated ones) and diffusion decoding with the imported
vocabulary's ids (mask as a new row), scored with the same metrics."""

from pathlib import Path

import numpy as np
import pytest

from workbench.data.hf_tokenizer import HFTokenizer
from workbench.evaluation import runner
from workbench.evaluation.runner import EvalConfig, predict, score_outputs
from workbench.models import build_model, get_preset
from workbench.pretrained import load_pretrained, save_pretrained
from workbench.pretrained_study import prepare_for_diffusion
from workbench.sampling.ar import ARSamplingConfig
from workbench.sampling.diffusion import DiffusionSamplingConfig

GOLDEN = Path(__file__).parent / "golden"
TEMPLATE = ("{% for m in messages %}<|begin_of_text|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
RECORDS = [{"id": str(i), "inputs": f"def f{i}(x):", "targets": "return x"} for i in range(3)]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tokenizer = HFTokenizer.from_gguf(GOLDEN / "tokenizer_tiny_llama-bpe.gguf")
    tokenizer.chat_template = TEMPLATE
    config = get_preset("tiny", vocab_size=tokenizer.vocab_size, num_kv_heads=2, scale_logits=False, dtype="float32")
    folder = save_pretrained(build_model(config, 1), tmp_path_factory.mktemp("m") / "m", tokenizer=tokenizer)
    return load_pretrained(folder, max_len=128)


def test_ar_baseline_reads_the_chat_templated_prompt(imported, monkeypatch):
    seen = []
    real = runner.generate

    def spy(model, prompts, lengths, config, rng, example_ids):
        seen.extend(np.asarray(prompts)[i, :n].tolist() for i, n in enumerate(np.asarray(lengths)))
        return real(model, prompts, lengths, config, rng, example_ids)

    monkeypatch.setattr(runner, "generate", spy)
    tok = imported.tokenizer
    assert tok.chat_template == TEMPLATE  # saved with the model and read back
    config = EvalConfig(task="python_functions", input_len=40, target_len=6, batch_size=2, chat_template=True,
                        ar=ARSamplingConfig(temperature=0.0))
    outputs, report = predict(imported.model, tok, RECORDS, config, progress=False)
    assert seen == [tok.encode_chat([{"role": "user", "content": r["inputs"]}]) for r in RECORDS]
    assert seen[0] != tok.encode(RECORDS[0]["inputs"])
    assert report["inputs_too_long_skipped"] == 0 and all(len(o) == 1 for o in outputs)
    assert set(score_outputs("python_functions", RECORDS, outputs)) >= {"chrf", "exact_match"}


def test_diffusion_decoding_of_an_imported_model(imported):
    diffusion = prepare_for_diffusion(imported, process="absorbing", attention="prefix_diffusion")
    config = EvalConfig(task="python_functions", method="diffusion", input_len=16, target_len=6, batch_size=3,
                        diffusion=DiffusionSamplingConfig(process="absorbing", num_steps=3, num_samples=2))
    outputs, _ = predict(diffusion.model, diffusion.tokenizer, RECORDS, config, progress=False)
    assert all(len(o) == 1 and "<|mask|>" not in o[0] for o in outputs)
    with pytest.raises(ValueError, match="no mask token"):  # the un-prepared vocabulary has none
        predict(imported.model, imported.tokenizer, RECORDS, config, progress=False)


def test_chat_template_without_one_is_a_named_error(imported):
    plain = HFTokenizer.from_gguf(GOLDEN / "tokenizer_tiny_llama-bpe.gguf")
    plain.chat_template = None  # a base model's tokenizer
    config = EvalConfig(task="python_functions", input_len=40, target_len=6, chat_template=True)
    with pytest.raises(ValueError, match="chat template"):
        predict(imported.model, plain, RECORDS, config, progress=False)

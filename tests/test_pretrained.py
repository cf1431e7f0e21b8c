"""The embedded SmolLM2-135M-Instruct GGUF against Hugging Face transformers (golden files
written by tests/golden/make_pretrained_golden.py): logits, top-5, greedy continuation."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from workbench.sampling.ar import ARSamplingConfig, generate
from workbench.pretrained import DEFAULT_MODEL, load_pretrained
from workbench.pretrained.gguf_reader import permute_rows
from workbench.pretrained.hub import embedded_path

GOLDEN = json.loads((Path(__file__).parent / "golden" / "pretrained_smollm2.json").read_text())
TOL = 1e-3  # absolute, float32 logits
TIE = 2 * TOL  # reference logits closer than this may swap ranks without either side being wrong
_forward = nnx.jit(lambda model, ids: model(ids))  # one compilation for every model of this shape


@pytest.fixture(scope="module")
def smollm2():
    return load_pretrained(DEFAULT_MODEL, dtype="float32")


def _batch():
    prompts = GOLDEN["prompts"]
    width = max(len(p["ids"]) for p in prompts)
    ids = np.zeros((len(prompts), width), np.int32)
    for row, p in enumerate(prompts):
        ids[row, : len(p["ids"])] = p["ids"]
    return jnp.asarray(ids), jnp.asarray([len(p["ids"]) for p in prompts], jnp.int32)


@pytest.fixture(scope="module")
def logits(smollm2):
    ids, _ = _batch()  # right padding: causal positions before it are unaffected
    return np.asarray(_forward(smollm2.model, ids))


def test_config_and_metadata_of_the_embedded_default(smollm2):
    c = smollm2.config
    assert (c.num_layers, c.d_model, c.num_heads, c.kv_heads, c.head_dim, c.d_ff) == (30, 576, 9, 3, 64, 1536)
    assert (c.vocab_size, c.max_len, c.rope_theta, c.norm_eps) == (49152, 8192, 100_000.0, 1e-5)
    assert c.tie_embeddings and not c.scale_logits and c.attention == "causal"
    src = smollm2.source
    assert src.kind == "embedded" and src.license == "apache-2.0" and src.path == str(embedded_path(DEFAULT_MODEL))
    assert src.token_ids["bos"] == 1 and src.token_ids["eos"] == 2
    assert "<|im_start|>" in src.chat_template and src.tokenizer_file == src.path
    tok = smollm2.tokenizer  # built from the same GGUF
    assert (tok.vocab_size, tok.specials.bos, tok.specials.eos) == (49152, 1, 2) and tok.chat_template == src.chat_template
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(smollm2.model, nnx.Param)))


def test_logits_match_transformers_within_1e3(logits):
    for row, p in enumerate(GOLDEN["prompts"]):
        ours = logits[row, : len(p["ids"])]
        ref_ids, ref = np.asarray(p["topk_ids"]), np.asarray(p["topk_logits"], np.float32)
        at_ref_ids = np.take_along_axis(ours, ref_ids, axis=-1)
        err = np.abs(at_ref_ids - ref).max()
        assert err < TOL, f"prompt {p['name']!r}: max |logit - reference| = {err:.2e} over the reference top-{GOLDEN['top_k']}"


def test_argmax_and_top5_match_transformers(logits):
    exact_positions = 0
    for row, p in enumerate(GOLDEN["prompts"]):
        ours = logits[row, : len(p["ids"])]
        ref_ids, ref = np.asarray(p["topk_ids"]), np.asarray(p["topk_logits"], np.float32)
        our_top5 = np.argsort(-ours, axis=-1, kind="stable")[:, :5]
        for pos in range(len(p["ids"])):
            gaps = -np.diff(ref[pos, :6])
            if np.all(gaps > TIE):  # no near-tie among the reference's top 6: order must agree
                assert list(our_top5[pos]) == list(ref_ids[pos, :5]), (p["name"], pos)
                exact_positions += 1
            else:  # a near-tie: each of our top-5 must be a reference top-k id within TIE of that rank
                for rank, token in enumerate(our_top5[pos]):
                    assert token in ref_ids[pos], (p["name"], pos, rank)
                    assert abs(ref[pos, list(ref_ids[pos]).index(token)] - ref[pos, rank]) <= TIE
            assert our_top5[pos, 0] == ref_ids[pos, 0] or ref[pos, 0] - ref[pos, 1] <= TIE, (p["name"], pos)
    assert exact_positions >= 0.8 * sum(len(p["ids"]) for p in GOLDEN["prompts"])


def test_kv_cached_greedy_continuation_equals_transformers(smollm2):
    ids, lengths = _batch()
    steps = max(len(p["greedy"]) for p in GOLDEN["prompts"])
    out = generate(smollm2.model, ids, lengths, ARSamplingConfig(max_new_tokens=steps, eos_id=GOLDEN["eos_id"]))
    tokens = np.asarray(out.tokens)
    for row, p in enumerate(GOLDEN["prompts"]):
        assert min(p["greedy_margins"]) > 10 * TOL  # the reference's choices are not near-ties
        assert tokens[row, : len(p["greedy"])].tolist() == p["greedy"], p["name"]


def test_golden_logits_detect_llama_cpp_query_key_layout(smollm2, logits):
    """Loaded without undoing llama.cpp's Q/K row permutation, the model runs but is wrong:
    the golden comparison must see it (this is what the un-permute in gguf_reader fixes)."""
    cfg = smollm2.config
    wrong = nnx.clone(smollm2.model)  # the fixture's model stays right
    for block in wrong.blocks:
        for proj, heads in ((block.attn.q, cfg.num_heads), (block.attn.k, cfg.kv_heads)):
            hf_layout = np.asarray(proj.kernel[...]).T
            proj.kernel.set_value(jnp.asarray(permute_rows(hf_layout, heads).T))
    ids, _ = _batch()
    wrong_logits = np.asarray(_forward(wrong, ids))
    p = GOLDEN["prompts"][0]
    ref_ids, ref = np.asarray(p["topk_ids"]), np.asarray(p["topk_logits"])
    err = np.abs(np.take_along_axis(wrong_logits[0, : len(p["ids"])], ref_ids, axis=-1) - ref).max()
    assert err > 100 * TOL

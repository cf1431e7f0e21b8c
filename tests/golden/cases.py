"""Fixed-seed outputs of every training objective and sampler, for before/after comparisons.

`cases()` maps a case name to a dict of numpy arrays: loss values, metrics and the
gradient of the loss for every objective on both architectures (tiny preset, float32),
and the full output of diffusion sampling (both processes, with and without the prefix
cache, early exit) and of KV-cached AR generation. `record_processes.py` writes them to
`processes.npz`; `tests/test_golden.py` recomputes them and demands equality.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from workbench.models import build_model, get_preset
from workbench.objectives.batch import seq2seq_batch
from workbench.objectives.losses import LossConfig, loss_fn
from workbench.objectives.pretraining import lm_batch
from workbench.sampling import ARSamplingConfig, DiffusionSamplingConfig, diffusion_sample, generate

V = 48
SPECIAL = (0, 1, 2, 3)


def model(arch: str, attention: str):
    return build_model(get_preset("tiny", vocab_size=V, dtype="float32", max_len=64, arch=arch,
                                  attention=attention, tie_embeddings=False), 7)


def pairs_batch(n=4, seed=0, input_len=7, target_len=6, pad_targets=True):
    rng = np.random.default_rng(seed)
    inputs = [list(rng.integers(4, V, size=int(rng.integers(1, input_len + 1)))) for _ in range(n)]
    targets = [list(rng.integers(4, V, size=int(rng.integers(1, target_len)))) + [1] for _ in range(n)]
    return seq2seq_batch(inputs, targets, input_len=input_len, target_len=target_len, pad_id=0,
                         example_ids=list(range(30, 30 + n)), pad_targets=pad_targets)


def packed_batch():
    """Seven short sequences packed first-fit into rows of 16: segment ids, and positions that
    restart in every sequence (the AR loss must not predict across a boundary). The trainer's
    sources never pack (LMSource streams windows with no padding); this keeps the models'
    segment-id path (`Batch.segment_ids`) recorded."""
    rng = np.random.default_rng(3)
    seqs = [list(rng.integers(4, V, size=int(rng.integers(2, 9)))) + [1] for _ in range(7)]
    rows: list[list] = []
    for seq in seqs:
        row = next((r for r in rows if sum(map(len, r)) + len(seq) <= 16), None)
        if row is None:
            rows.append(row := [])
        row.append(seq)
    tokens, segments, positions = (np.zeros((len(rows), 16), np.int32) for _ in range(3))
    for r, row in enumerate(rows):
        n = sum(map(len, row))
        tokens[r, :n] = np.concatenate(row)
        segments[r, :n] = np.repeat(np.arange(1, len(row) + 1), [len(s) for s in row])
        positions[r, :n] = np.concatenate([np.arange(len(s)) for s in row])
    return lm_batch(tokens, np.zeros(len(rows), np.int32), np.arange(len(rows)), 0).replace(
        target_mask=segments > 0, segment_ids=segments, positions=positions)


# name -> (arch, attention, loss config, batch builder)
LOSS_CASES = {
    "ar_decoder_prefix_lm": ("decoder", "prefix_lm", LossConfig(kind="ar"), lambda: pairs_batch(pad_targets=False)),
    "ar_decoder_packed": ("decoder", "causal", LossConfig(kind="ar"), packed_batch),
    "ar_encdec": ("encoder_decoder", "causal", LossConfig(kind="ar"), lambda: pairs_batch(pad_targets=False)),
}
for _arch, _attention in (("decoder", "bidirectional"), ("decoder", "prefix_diffusion"),
                          ("encoder_decoder", "bidirectional")):
    _tag = f"{_arch}_{_attention}"
    LOSS_CASES[f"sundae_{_tag}"] = (_arch, _attention, LossConfig(kind="uniform", special_ids=SPECIAL), pairs_batch)
    LOSS_CASES[f"masked_{_tag}"] = (_arch, _attention, LossConfig(kind="absorbing", special_ids=SPECIAL,
                                                                   mask_id=3), pairs_batch)

LOSS_CASES["sundae_t07_decoder_bidirectional"] = ("decoder", "bidirectional", LossConfig(
    kind="uniform", special_ids=SPECIAL, unroll_temperature=0.7), pairs_batch)
LOSS_CASES["sundae_l1_decoder_bidirectional"] = ("decoder", "bidirectional", LossConfig(kind="uniform", unroll=False),
                                                 pairs_batch)

# name -> (arch, attention, sampling config); case names keep the tags they were recorded under
_PROCESS = {"sundae": "uniform", "masked": "absorbing"}
SAMPLE_CASES = {}
for _arch, _attention in (("decoder", "bidirectional"), ("decoder", "prefix_diffusion"),
                          ("encoder_decoder", "bidirectional")):
    for _method in ("sundae", "masked"):
        SAMPLE_CASES[f"{_method}_t07_{_arch}_{_attention}"] = (_arch, _attention, DiffusionSamplingConfig(
            process=_PROCESS[_method], num_samples=3, num_steps=5, temperature=0.7, special_ids=SPECIAL, mask_id=3))
    if _attention == "prefix_diffusion":
        for _method in ("sundae", "masked"):
            SAMPLE_CASES[f"{_method}_nocache_{_arch}_{_attention}"] = (
                _arch, _attention, DiffusionSamplingConfig(process=_PROCESS[_method], num_samples=3, num_steps=5,
                                                           temperature=0.7, prefix_cache=False, mask_id=3))

for _method in ("sundae", "masked"):  # argmax with early exit (stops before num_steps)
    SAMPLE_CASES[f"{_method}_exit_decoder_bidirectional"] = ("decoder", "bidirectional", DiffusionSamplingConfig(
        process=_PROCESS[_method], num_samples=3, num_steps=12, temperature=0.0, early_exit=True, mask_id=3))

# name -> (arch, attention, AR sampling config)
_GREEDY = ARSamplingConfig(max_new_tokens=9)
_TOPK_TOPP = ARSamplingConfig(max_new_tokens=9, temperature=0.9, top_k=12, top_p=0.9)
GENERATE_CASES = {
    "decoder_prefix_lm_greedy": ("decoder", "prefix_lm", _GREEDY),
    "decoder_causal_topk_topp": ("decoder", "causal", _TOPK_TOPP),
    "encoder_decoder_causal_greedy": ("encoder_decoder", "causal", _GREEDY),
    "encoder_decoder_causal_topk_topp": ("encoder_decoder", "causal", _TOPK_TOPP),
}


def loss_case(arch, attention, config, make_batch) -> dict[str, np.ndarray]:
    net = model(arch, attention)
    batch = jax.tree.map(np.asarray, make_batch())

    def f(m):
        return loss_fn(m, batch, jax.random.key(11), config)

    (loss, metrics), grads = nnx.value_and_grad(f, has_aux=True)(net)
    out = {"loss": np.asarray(loss)}
    out.update({f"metric/{k}": np.asarray(v) for k, v in metrics.record().items()})
    # Each gradient leaf as (sum, sum of |g|, a fixed random projection): any changed bit moves them.
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
    for path, leaf in leaves:
        g = np.asarray(leaf, np.float32).ravel()
        w = np.random.default_rng(g.size).standard_normal(g.size).astype(np.float32)
        out[f"grad/{jax.tree_util.keystr(path)}"] = np.array([g.sum(), np.abs(g).sum(), g @ w], np.float32)
    return out


def sample_case(arch, attention, config) -> dict[str, np.ndarray]:
    out = diffusion_sample(model(arch, attention), pairs_batch(n=3, seed=1), config, jax.random.key(5))
    return {field: np.asarray(value) for field, value in out._asdict().items()}


def generate_case(arch, attention, config) -> dict[str, np.ndarray]:
    batch = pairs_batch(n=3, seed=2, pad_targets=False)
    out = generate(model(arch, attention), batch.inputs, batch.input_lengths, config, jax.random.key(9),
                   np.array([4, 8, 15], np.int32))
    return {field: np.asarray(value) for field, value in out._asdict().items()}


def cases() -> dict[str, dict[str, np.ndarray]]:
    result = {}
    for name, args in LOSS_CASES.items():
        result[f"loss/{name}"] = loss_case(*args)
    for name, args in SAMPLE_CASES.items():
        result[f"sample/{name}"] = sample_case(*args)
    for name, args in GENERATE_CASES.items():
        result[f"generate/{name}"] = generate_case(*args)
    return result


def machine_signature() -> dict:
    """What decides XLA's CPU float results beyond the code: jax/jaxlib versions and the CPU's
    model and instruction-set flags (vector width changes reduction order)."""
    import hashlib
    import platform

    cpu, flags = platform.processor() or "unknown", ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu in ("unknown", ""):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "cpu": cpu,
            "cpu_flags_sha256": hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16]}


def flatten(all_cases: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"{case}::{key}": value for case, values in all_cases.items() for key, value in values.items()}

"""The whole model lowers for an H100 and a TPU with the Pallas kernels inside, checked on CPU.

tests/test_kernels_lowering.py lowers the kernels alone; this lowers what a GPU or TPU
session will run: the gradient of the AR and diffusion losses, KV-cached AR decoding
(prefill + per-token steps with query offsets) and diffusion decoding with and without
the prompt cache, in bf16 with grouped-query attention, with `attention_impl` naming the
accelerator's kernel. It catches integration errors (dtypes, layouts, masks the kernel
declines) before hardware time is spent; it cannot check the final compile.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import AbstractDevice, AbstractMesh

from workbench.attention import dispatch
from workbench.models import ModelConfig, build_model
from workbench.sampling.ar import ARSamplingConfig
from workbench.sampling.ar import _generate as _generate_ar
from workbench.objectives.batch import seq2seq_batch
from workbench.objectives.losses import LossConfig, loss_fn
from workbench.sampling.diffusion import DiffusionSamplingConfig, _sample

TARGETS = {  # platform -> (kernel impl, abstract device, lowering platform, kernel call marker)
    "gpu": ("pallas_gpu", AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", platform="gpu", num_cores=132),
            "cuda", "__gpu$xla.gpu.triton"),
    "tpu": ("pallas_tpu", AbstractDevice(device_kind="TPU v5 lite", platform="tpu", num_cores=1),
            "tpu", "tpu_custom_call"),
}
SPECIAL_IDS = (0, 1, 2, 3)


def _config(platform: str, attention: str) -> ModelConfig:
    return ModelConfig(vocab_size=512, d_model=256, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=512,
                       max_len=256, attention=attention, dtype="bfloat16", attention_impl=TARGETS[platform][0])


def _batch(targets):
    return jax.tree.map(jnp.asarray, seq2seq_batch([[5, 6, 7], [8] * 90, [9] * 40, [10]], targets, input_len=100,
                                                   target_len=60, pad_id=0, pad_targets=True))


def _lower(platform: str, traced_fn, *args) -> str:
    _, device, lowering, _ = TARGETS[platform]
    with jax.sharding.use_abstract_mesh(AbstractMesh((), (), abstract_device=device)):
        return traced_fn.trace(*args).lower(lowering_platforms=(lowering,)).as_text()


def _loss_grad(platform: str, attention: str, loss: LossConfig) -> str:
    model = build_model(_config(platform, attention), 0)
    graphdef, state = nnx.split(model)

    def grads(state, batch, rng):
        return nnx.grad(lambda m: loss_fn(m, batch, rng, loss)[0])(nnx.merge(graphdef, state))

    return _lower(platform, jax.jit(grads), state, _batch([[11, 12]] * 4), jax.random.key(0))


def _generate(platform: str) -> str:
    model = build_model(_config(platform, "prefix_lm"), 0)
    config = ARSamplingConfig(max_new_tokens=40, eos_id=1, pad_id=0)
    prompts, lengths = jnp.zeros((4, 100), jnp.int32), jnp.array([10, 100, 50, 3], jnp.int32)
    return _lower(platform, _generate_ar, model, prompts, lengths, jax.random.key(0), jnp.arange(4), config)


def _diffusion_decode(platform: str, attention: str) -> str:
    model = build_model(_config(platform, attention), 0)
    config = DiffusionSamplingConfig(num_samples=2, num_steps=3, special_ids=SPECIAL_IDS)
    return _lower(platform, _sample, model, _batch([[]] * 4), jax.random.key(0), config, 60)


CASES = {
    "ar_loss_prefix_lm": lambda p: _loss_grad(p, "prefix_lm", LossConfig(kind="ar")),
    "ar_loss_causal": lambda p: _loss_grad(p, "causal", LossConfig(kind="ar")),
    "diffusion_loss_bidirectional": lambda p: _loss_grad(
        p, "bidirectional", LossConfig(kind="uniform", special_ids=SPECIAL_IDS)),
    "kv_cached_generate": _generate,
    "diffusion_decode_prefix_cache": lambda p: _diffusion_decode(p, "prefix_diffusion"),
    "diffusion_decode_bidirectional": lambda p: _diffusion_decode(p, "bidirectional"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("platform", sorted(TARGETS))
def test_model_paths_lower_with_the_kernel(platform, case, monkeypatch):
    monkeypatch.setattr(dispatch, "current_platform", lambda: platform)
    text = CASES[case](platform)
    assert TARGETS[platform][3] in text, f"no {TARGETS[platform][0]} kernel call in the lowered {case}"


def test_an_accelerator_kernel_is_refused_on_cpu():
    """Without the platform patch the same model says which impls can run here."""
    model = build_model(dataclasses.replace(_config("gpu", "prefix_lm"), dtype="float32"), 0)
    with pytest.raises(ValueError, match=r"'pallas_gpu' cannot handle .* on cpu: runs on platform 'gpu'"):
        model(jnp.zeros((1, 8), jnp.int32), prefix_len=jnp.array([3]))

"""The MFU denominator: a matmul peak measured on random operands in the compute dtype, times the
number of devices the step runs on."""
import jax
import jax.numpy as jnp

from cwpo_jax import sharding
from cwpo_jax.train import flops, metrics


def test_peak_is_measured_in_the_requested_dtype(monkeypatch):
    seen = []
    real_normal = jax.random.normal

    def recording_normal(key, shape, dtype):
        seen.append((shape, jnp.dtype(dtype)))
        return real_normal(key, shape, dtype)

    monkeypatch.setattr(metrics.jax.random, "normal", recording_normal)
    assert metrics.measure_matmul_peak(size=64, dtype=jnp.bfloat16, repeats=2) > 0
    assert seen == [((64, 64), jnp.dtype(jnp.bfloat16))]
    metrics.measure_matmul_peak(dtype=jnp.float32, repeats=1)
    assert seen[-1] == ((2048, 2048), jnp.dtype(jnp.float32))  # the CPU default size


def test_mesh_peak_counts_every_device_and_the_compute_dtype(monkeypatch):
    asked = []

    def fake_peak(size=None, dtype=jnp.float32, repeats=5):
        asked.append(jnp.dtype(dtype))
        return 1e9 if jnp.dtype(dtype) == jnp.float32 else 3e9

    monkeypatch.setattr(flops, "measure_matmul_peak", fake_peak)
    flops.device_peak_flops.cache_clear()
    try:
        one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
        four = sharding.make_mesh(2, 2, 1, devices=jax.devices()[:4])
        assert flops.mesh_peak_flops(one, "float32") == 1e9
        assert flops.mesh_peak_flops(four, "float32") == 4e9
        assert flops.mesh_peak_flops(four, "bfloat16") == 12e9
        assert asked == [jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)]  # measured once each
    finally:
        flops.device_peak_flops.cache_clear()

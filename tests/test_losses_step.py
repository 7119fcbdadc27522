"""Every loss and loss option through the alignment step's task (tasks.preference_task) on a
tiny Llama with confidence weights and a padding row: the loss the step minimises, its
gradient, and the log-prob parts that ld_alpha and WPO read, in both pair layouts."""
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cwpo_jax import losses, models
from cwpo_jax.train import tasks
from cwpo_jax.train.feeder import add_valid
from tests.engine.test_packed_pairs import both_layouts, jitted, random_pairs

FIXTURES = os.path.join(os.path.dirname(__file__), "models", "fixtures")
BETA, SMOOTHING = 1.0, 0.1

# The loss at log-ratio 0 (the policy is the reference), per pair: e = 0.1 smoothing.
AT_REFERENCE = {
    "dpo": math.log(2), "sigmoid": math.log(2), "cdpo": math.log(2), "rdpo": math.log(2),
    "robust": math.log(2), "hinge": 1.0, "ipo": (1 / (2 * BETA)) ** 2,
    "sigmoid_norm": math.log(2), "nca_pair": 2 * math.log(2), "bco_pair": 2 * math.log(2),
    "sppo_hard": 2 * (0.5 / BETA) ** 2, "aot": math.log(2), "aot_unpaired": math.log(2),
    "apo_zero": 1.0, "apo_down": 1.0, "discopop": 0.5 * math.log(2) + 0.5,
    # KL((1/2, 1/2) || (1 - e, e))
    "exo_pair": 0.5 * math.log(0.5 / (1 - SMOOTHING)) + 0.5 * math.log(0.5 / SMOOTHING),
}


@pytest.fixture(scope="module")
def setup():
    model = models.from_pretrained(os.path.join(FIXTURES, "llama"))
    pairs = random_pairs(7, model.config.vocab_size, seed=3)
    weights = np.random.default_rng(0).uniform(0.1, 0.9, 7).astype(np.float32)
    # five pairs in a batch of six: the last row is padding (valid 0)
    plain, packed = (add_valid(b) for b in both_layouts(pairs, [0, 2, 3, 5, 6], batch_size=6,
                                                         weights=weights))
    assert list(packed["valid"]) == [1, 1, 1, 1, 1, 0]
    return model, plain, packed


def step_fn(model, pair_loss, **kw):
    """fn(batch, *args) -> (loss, metrics, gradient norm) of the step's task at the model's
    parameters, one compiled program; pair_loss(*args) gives the task's pair loss."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p, b, *args):
        task = functools.partial(tasks.preference_task, pair_loss=pair_loss(*args), beta=BETA,
                                 **kw)
        numerator, denominator, metrics = task(nnx.merge(graphdef, p, rest), b)
        return numerator / denominator, metrics

    run = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))

    def fn(batch, *args):
        (loss, metrics), grads = run(params, batch, *args)
        norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))
        return float(loss), metrics, norm

    return fn


def loss_and_grads(model, batch, pair_loss, **kw):
    """(loss, metrics, gradient norm) of the step's task with pair_loss."""
    return step_fn(model, lambda: pair_loss, **kw)(batch)


@pytest.fixture(scope="module")
def every_loss_step(setup):
    """The step with any loss of LOSS_NAMES, chosen by index (lax.switch): one compilation
    serves every loss."""
    model, _, _ = setup
    fns = [losses.pair_loss_fn(n, beta=BETA, label_smoothing=SMOOTHING)
           for n in losses.LOSS_NAMES]

    def pair_loss(index):
        def fn(pc, pr, rc, rr, nc, nr, *, valid=None, raw_policy_chosen=None):
            branches = [lambda *a, f=f: f(*a[:6], valid=a[6], raw_policy_chosen=a[7])
                        for f in fns]
            return jax.lax.switch(index, branches, pc, pr, rc, rr, nc, nr, valid,
                                  pc if raw_policy_chosen is None else raw_policy_chosen)
        return fn

    return step_fn(model, pair_loss, chunk_size=4)


def with_reference(model, batch, *, chunk_size=4, ld_alpha=1.0):
    """The batch with ref_logps from the model itself: the policy starts as its reference."""
    ref, _ = jitted(tasks.pair_logprobs, model, chunk_size=chunk_size, ld_alpha=ld_alpha)(batch)
    return {**batch, "ref_logps": np.asarray(ref)}


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_every_loss_through_the_step_with_confidence_weights(setup, every_loss_step, name):
    """align.loss=NAME in the step: at the reference, the loss is the per-pair loss at
    log-ratio 0 times the mean confidence weight of the valid rows (CW-PO's mean(C * l));
    the gradient is finite and moves the policy. Batch-level losses run with weights 1."""
    model, _, packed = setup
    batch = with_reference(model, packed)
    if name in losses.BATCH_LOSSES:
        batch["weights"] = np.ones_like(batch["weights"])
    fn = losses.pair_loss_fn(name, beta=BETA, label_smoothing=SMOOTHING)
    loss, metrics, norm = every_loss_step(batch, losses.LOSS_NAMES.index(name))
    valid = np.asarray(batch["valid"], np.float64)
    mean_weight = (np.asarray(batch["weights"]) * valid).sum() / valid.sum()
    if name in AT_REFERENCE:
        assert loss == pytest.approx(AT_REFERENCE[name] * mean_weight, rel=1e-5)
    else:  # sft, simpo: read the policy's log-probs, recomputed here
        logp, n = jitted(tasks.pair_logprobs, model, chunk_size=4)(batch)
        half = len(logp) // 2
        per_pair = fn(logp[:half], logp[half:], logp[:half], logp[half:], n[:half], n[half:])
        want = losses.weighted_mean(per_pair, batch["weights"], valid=batch["valid"])
        assert loss == pytest.approx(float(want), rel=1e-5)
    assert math.isfinite(norm) and norm > 0
    assert float(metrics["weights/mean"]) == pytest.approx(mean_weight, rel=1e-6)


@pytest.mark.parametrize("layout", ["plain", "packed"])
def test_ld_and_wpo_parts_are_the_same_in_every_layout_and_chunking(setup, layout):
    """pair_logprob_parts' shared-length and WPO sums: chunked (the shared count carried over
    chunks) equals unchunked, against numpy sums of the per-token log-probs."""
    model, plain, packed = setup
    batch = plain if layout == "plain" else packed
    parts = {c: jitted(tasks.pair_logprob_parts, model, chunk_size=c, shared=True,
                       wpo=True)(batch) for c in (0, 3)}
    for key in ("logp", "tokens", "shared", "wpo"):
        np.testing.assert_allclose(np.asarray(parts[3][key]), np.asarray(parts[0][key]),
                                   rtol=2e-5, atol=2e-4)
    n = np.asarray(parts[0]["tokens"])
    half = len(n) // 2
    shared = np.tile(np.minimum(n[:half], n[half:]), 2)
    # rows whose response is the shorter one (or equal) are entirely shared
    whole = n <= shared
    np.testing.assert_allclose(np.asarray(parts[0]["shared"])[whole],
                               np.asarray(parts[0]["logp"])[whole], rtol=1e-6)
    assert (np.asarray(parts[0]["wpo"]) >= np.asarray(parts[0]["logp"]) - 1e-4).all()


def test_options_through_the_step_agree_across_layouts(setup):
    """A mixture with ld_alpha, WPO and an f-divergence: the packed and the plain layout give
    the same loss and gradient norm; WPO's weights reach the metrics and change the loss by
    their documented product (pair loss * WPO weight, then * confidence)."""
    model, plain, packed = setup
    fn = losses.pair_loss_fn("sigmoid,sft", loss_weights=(1.0, 0.5), beta=BETA,
                             f_divergence="js_divergence")
    out = {}
    for layout, batch in (("plain", plain), ("packed", packed)):
        batch = with_reference(model, batch, ld_alpha=0.5)
        out[layout] = loss_and_grads(model, batch, fn, chunk_size=4, ld_alpha=0.5, wpo=True)
    (loss_p, _, norm_p), (loss_k, metrics, norm_k) = out["plain"], out["packed"]
    assert loss_k == pytest.approx(loss_p, rel=1e-4)
    assert norm_k == pytest.approx(norm_p, rel=1e-3)
    assert 0 < float(metrics["weights/wpo"]) < 1  # exp of mean log p - log sum p^2 < 0 here
    batch = with_reference(model, packed, ld_alpha=0.5)
    unweighted, _, _ = loss_and_grads(model, batch, fn, chunk_size=4, ld_alpha=0.5)
    assert loss_k != pytest.approx(unweighted, rel=1e-3)


def sharded_steps(mesh, pair_loss, *, aot: bool, **kw):
    """Two accumulated train steps of ToyLM (2 micro-batches, one padding pair in each) on
    `mesh`: the logged losses and the final parameters."""
    from cwpo_jax import sharding
    from cwpo_jax.train import optim, steps
    from cwpo_jax.train.state import init_train_state, split_model
    from tests.engine.toy import ToyLM, pair_batch

    parts = split_model(ToyLM(rngs=nnx.Rngs(0)))
    optimizer, schedule = optim.make_optimizer(learning_rate=1e-2, total_steps=10)
    state, frozen, state_sh, frozen_sh = init_train_state(parts, optimizer, mesh)
    task = functools.partial(tasks.preference_task, pair_loss=pair_loss, beta=0.5, chunk_size=5,
                             **kw)
    step = steps.jit_train_step(steps.make_train_step(parts.graphdef, task, optimizer,
                                                      schedule=schedule), mesh, state_sh, frozen_sh)
    history = []
    for i in range(2):
        batches = [pair_batch(10 * i + j) for j in range(2)]
        for b in batches:
            b["valid"][-1] = 0.0
            if aot:
                b["weights"][:] = 1.0
        stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
        state, metrics = step(state, frozen, sharding.shard_batch(stacked, mesh, leading=1))
        history.append(float(metrics["loss"]))
    return history, jax.tree.leaves(state.params)


@pytest.mark.parametrize("spec", ["aot", "sigmoid,sft,apo_zero"])
def test_batch_losses_and_options_equal_sharded_and_unsharded(spec):
    """Data-sharded over 8 devices, the step gives the single-device losses and parameters:
    aot sorts each whole micro-batch across the devices, padding rows left out; the
    ld_alpha / WPO mixture's per-pair terms are sharded like DPO's."""
    from cwpo_jax import sharding

    aot = spec == "aot"
    fn = losses.pair_loss_fn(spec, beta=0.5, label_smoothing=0.1)
    kw = {} if aot else {"ld_alpha": 0.5, "wpo": True}
    one = sharded_steps(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]), fn, aot=aot, **kw)
    eight = sharded_steps(sharding.make_mesh(8, 1, 1), fn, aot=aot, **kw)
    np.testing.assert_allclose(eight[0], one[0], rtol=2e-5, atol=1e-6)
    for got, want in zip(eight[1], one[1]):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=1e-6)

"""Losses against independent float64 numpy implementations of their formulas."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwpo_jax import losses


# ---------------------------------------------------------------- float64 numpy references


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_margin(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def np_dpo(pc, pr, rc, rr, beta):
    return -np_log_sigmoid(beta * np_margin(pc, pr, rc, rr))


def np_cdpo(pc, pr, rc, rr, beta, e):
    h = beta * np_margin(pc, pr, rc, rr)
    return -(1 - e) * np_log_sigmoid(h) - e * np_log_sigmoid(-h)


def np_rdpo(pc, pr, rc, rr, beta, e):
    forward = np_dpo(pc, pr, rc, rr, beta)
    backward = np_dpo(pr, pc, rr, rc, beta)  # the loss with the labels flipped
    return ((1 - e) * forward - e * backward) / (1 - 2 * e)


def np_ipo(pc, pr, rc, rr, beta, nc, nr):
    h = (pc - rc) / np.maximum(nc, 1) - (pr - rr) / np.maximum(nr, 1)
    return (h - 1 / (2 * beta)) ** 2


def np_hinge(pc, pr, rc, rr, beta):
    return np.maximum(0.0, 1 - beta * np_margin(pc, pr, rc, rr))


def np_simpo(pc, pr, beta, gamma, nc, nr):
    return -np_log_sigmoid(beta * (pc / np.maximum(nc, 1) - pr / np.maximum(nr, 1)) - gamma)


def np_sigmoid(x):
    return np.exp(np_log_sigmoid(x))


def np_ratios(pc, pr, rc, rr):
    return pc - rc, pr - rr


def np_exo(pc, pr, rc, rr, beta, e):
    # KL(q || p) of q = (sigmoid(z), sigmoid(-z)) against p = (1 - e, e)
    z = beta * np_margin(pc, pr, rc, rr)
    q = np.stack([np_sigmoid(z), np_sigmoid(-z)])
    p = np.array([1 - e, e])[:, None]
    return (q * (np.log(q) - np.log(p))).sum(0)


def np_nca(pc, pr, rc, rr, beta):
    c, r = (beta * x for x in np_ratios(pc, pr, rc, rr))
    return -np_log_sigmoid(c) - 0.5 * np_log_sigmoid(-c) - 0.5 * np_log_sigmoid(-r)


def np_bco(pc, pr, rc, rr, beta):
    c, r = (beta * x for x in np_ratios(pc, pr, rc, rr))
    return -np_log_sigmoid(c) - np_log_sigmoid(-r)


def np_sppo(pc, pr, rc, rr, beta):
    c, r = np_ratios(pc, pr, rc, rr)
    return (c - 1 / (2 * beta)) ** 2 + (r + 1 / (2 * beta)) ** 2


def np_apo_zero(pc, pr, rc, rr, beta):
    c, r = np_ratios(pc, pr, rc, rr)
    return 1 - np_sigmoid(beta * c) + np_sigmoid(beta * r)


def np_apo_down(pc, pr, rc, rr, beta):
    c, r = np_ratios(pc, pr, rc, rr)
    return np_sigmoid(beta * c) + 1 - np_sigmoid(beta * (c - r))


def np_discopop(pc, pr, rc, rr, beta, tau):
    z = beta * np_margin(pc, pr, rc, rr)
    m = np_sigmoid(z / tau)
    return (1 - m) * -np_log_sigmoid(z) + m * np.exp(-z)


def np_sigmoid_norm(pc, pr, rc, rr, beta, nc, nr):
    h = (pc - rc) / np.maximum(nc, 1) - (pr - rr) / np.maximum(nr, 1)
    return -np_log_sigmoid(beta * h)


def np_aot_sum(policy_margin, ref_margin, beta, e):
    """Sum over ranks of AOT's smoothed loss of the sorted margins."""
    z = beta * (np.sort(policy_margin) - np.sort(ref_margin))
    return (-(1 - e) * np_log_sigmoid(z) - e * np_log_sigmoid(-z)).sum()


def np_sequence_logprobs(logits, targets, mask):
    logits = logits.astype(np.float64)
    out = np.zeros(logits.shape[0])
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if mask[b, t]:
                row = logits[b, t]
                log_z = row.max() + math.log(np.exp(row - row.max()).sum())
                out[b] += row[targets[b, t]] - log_z
    return out, mask.sum(-1).astype(np.float64)


# ---------------------------------------------------------------- fixtures


def random_logps(seed, n=16, scale=30.0):
    rng = np.random.default_rng(seed)
    pc, pr, rc, rr = (-np.abs(rng.normal(0, scale, n)) for _ in range(4))
    nc = rng.integers(0, 40, n).astype(np.float64)  # includes empty responses
    nr = rng.integers(0, 40, n).astype(np.float64)
    return pc, pr, rc, rr, nc, nr


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


CASES = [
    ("dpo", lambda a: losses.dpo_loss(*a[:4], beta=0.3), lambda a: np_dpo(*a[:4], 0.3)),
    (
        "cdpo",
        lambda a: losses.cdpo_loss(*a[:4], beta=0.5, label_smoothing=0.1),
        lambda a: np_cdpo(*a[:4], 0.5, 0.1),
    ),
    (
        "rdpo",
        lambda a: losses.rdpo_loss(*a[:4], beta=0.5, label_smoothing=0.2),
        lambda a: np_rdpo(*a[:4], 0.5, 0.2),
    ),
    (
        "ipo",
        lambda a: losses.ipo_loss(*a[:4], beta=0.5, chosen_tokens=a[4], rejected_tokens=a[5]),
        lambda a: np_ipo(*a[:4], 0.5, a[4], a[5]),
    ),
    ("hinge", lambda a: losses.hinge_loss(*a[:4], beta=0.1), lambda a: np_hinge(*a[:4], 0.1)),
    (
        "simpo",
        lambda a: losses.simpo_loss(
            a[0], a[1], beta=2.0, gamma=0.5, chosen_tokens=a[4], rejected_tokens=a[5]
        ),
        lambda a: np_simpo(a[0], a[1], 2.0, 0.5, a[4], a[5]),
    ),
    (
        "exo_pair",
        lambda a: losses.exo_pair_loss(*a[:4], beta=0.05, label_smoothing=0.01),
        lambda a: np_exo(*a[:4], 0.05, 0.01),
    ),
    ("nca_pair", lambda a: losses.nca_pair_loss(*a[:4], beta=0.1), lambda a: np_nca(*a[:4], 0.1)),
    ("bco_pair", lambda a: losses.bco_pair_loss(*a[:4], beta=0.1), lambda a: np_bco(*a[:4], 0.1)),
    (
        "sppo_hard",
        lambda a: losses.sppo_hard_loss(*a[:4], beta=0.5),
        lambda a: np_sppo(*a[:4], 0.5),
    ),
    (
        "apo_zero",
        lambda a: losses.apo_zero_loss(*a[:4], beta=0.05),
        lambda a: np_apo_zero(*a[:4], 0.05),
    ),
    (
        "apo_down",
        lambda a: losses.apo_down_loss(*a[:4], beta=0.05),
        lambda a: np_apo_down(*a[:4], 0.05),
    ),
    (
        "discopop",
        lambda a: losses.discopop_loss(*a[:4], beta=0.02, discopop_tau=0.3),
        lambda a: np_discopop(*a[:4], 0.02, 0.3),
    ),
    (
        "sft",
        lambda a: losses.sft_loss(a[0], chosen_tokens=a[4]),
        lambda a: -a[0] / np.maximum(a[4], 1),
    ),
    (
        "sigmoid_norm",
        lambda a: losses.sigmoid_norm_loss(*a[:4], beta=2.0, chosen_tokens=a[4],
                                           rejected_tokens=a[5]),
        lambda a: np_sigmoid_norm(*a[:4], 2.0, a[4], a[5]),
    ),
    (
        "dpo_forward_kl",  # f'(t) = 1 - 1/t at t = pi / ref
        lambda a: losses.dpo_loss(*(x / 30 for x in a[:4]), beta=0.5, f_divergence="forward_kl"),
        lambda a: -np_log_sigmoid(0.5 * (np.exp(-(a[1] - a[3]) / 30)
                                         - np.exp(-(a[0] - a[2]) / 30))),
    ),
    (
        "hinge_js",  # f'(t) = log(2t / (1 + t))
        lambda a: losses.hinge_loss(*a[:4], beta=0.2, f_divergence="js_divergence"),
        lambda a: np.maximum(0.0, 1 - 0.2 * (
            np.log(2 / (1 + np.exp(-(a[0] - a[2])))) - np.log(2 / (1 + np.exp(-(a[1] - a[3])))))),
    ),
    (
        "ipo_alpha",  # f'(t) = (t^(a-1) - 1) / (a - 1), a = 0.3
        lambda a: losses.ipo_loss(*a[:4], beta=0.5, chosen_tokens=a[4], rejected_tokens=a[5],
                                  f_divergence="alpha_divergence", f_alpha_coef=0.3),
        lambda a: ((np.expm1(-0.7 * (a[0] - a[2])) / -0.7) / np.maximum(a[4], 1)
                   - (np.expm1(-0.7 * (a[1] - a[3])) / -0.7) / np.maximum(a[5], 1)
                   - 1 / (2 * 0.5)) ** 2,
    ),
    (
        "bt",
        lambda a: losses.bradley_terry_loss(a[0] / 10, a[1] / 10, margin=0.25),
        lambda a: -np_log_sigmoid(a[0] / 10 - a[1] / 10 - 0.25),
    ),
]


@pytest.mark.parametrize("name,ours,ref", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_float64_reference(x64, name, ours, ref, seed):
    args = random_logps(seed)
    got = np.asarray(ours(tuple(jnp.asarray(a) for a in args)))
    assert got.dtype == np.float64 and got.shape == (16,)
    np.testing.assert_allclose(got, ref(args), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,ours,ref", CASES, ids=[c[0] for c in CASES])
def test_loss_float32_close_to_float64_reference(name, ours, ref):
    args = random_logps(7, scale=3.0)
    got = np.asarray(ours(tuple(jnp.asarray(a, jnp.float32) for a in args)))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref(args), rtol=1e-5, atol=1e-5)


def test_dpo_at_zero_log_ratio_is_ln2():
    z = jnp.zeros(4)
    np.testing.assert_allclose(losses.dpo_loss(z - 5, z - 9, z - 5, z - 9, beta=0.7), math.log(2))
    np.testing.assert_array_equal(losses.dpo_loss(z, z, z, z, beta=0.1), np.float32(math.log(2)))


def test_beta_enters_once():
    pc, pr, rc, rr, *_ = random_logps(3, scale=2.0)
    a = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    b = losses.dpo_loss(pc / 4, pr / 4, rc / 4, rr / 4, beta=2.0)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    c = losses.dpo_loss(pc, pr, rc, rr, beta=1.0)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("fn", [losses.cdpo_loss, losses.rdpo_loss])
def test_smoothing_zero_is_dpo(fn):
    pc, pr, rc, rr, *_ = random_logps(4, scale=2.0)
    np.testing.assert_allclose(
        fn(pc, pr, rc, rr, beta=0.5, label_smoothing=0.0),
        losses.dpo_loss(pc, pr, rc, rr, beta=0.5),
        rtol=1e-6,
    )


def test_ipo_empty_response_is_finite():
    z = jnp.zeros(2)
    out = losses.ipo_loss(z - 1, z, z, z, beta=0.5, chosen_tokens=z, rejected_tokens=z)
    assert np.all(np.isfinite(out))


def test_pair_loss_fn_calls_the_table_entry():
    pc, pr, rc, rr, nc, nr = (jnp.asarray(x, jnp.float32) for x in random_logps(7, n=5,
                                                                               scale=2.0))
    valid = jnp.ones_like(pc)
    expected = {
        "exo_pair": losses.exo_pair_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1),
        "nca_pair": losses.nca_pair_loss(pc, pr, rc, rr, beta=0.5),
        "bco_pair": losses.bco_pair_loss(pc, pr, rc, rr, beta=0.5),
        "sppo_hard": losses.sppo_hard_loss(pc, pr, rc, rr, beta=0.5),
        "aot": losses.aot_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1, valid=valid),
        "aot_unpaired": losses.aot_unpaired_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1),
        "apo_zero": losses.apo_zero_loss(pc, pr, rc, rr, beta=0.5),
        "apo_down": losses.apo_down_loss(pc, pr, rc, rr, beta=0.5),
        "discopop": losses.discopop_loss(pc, pr, rc, rr, beta=0.5, discopop_tau=0.05),
        "sft": losses.sft_loss(pc, chosen_tokens=nc),
        "sigmoid_norm": losses.sigmoid_norm_loss(pc, pr, rc, rr, beta=0.5, chosen_tokens=nc,
                                                 rejected_tokens=nr),
        "dpo": losses.dpo_loss(pc, pr, rc, rr, beta=0.5),
        "cdpo": losses.cdpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1),
        "rdpo": losses.rdpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1),
        "ipo": losses.ipo_loss(pc, pr, rc, rr, beta=0.5, chosen_tokens=nc, rejected_tokens=nr),
        "hinge": losses.hinge_loss(pc, pr, rc, rr, beta=0.5),
        "simpo": losses.simpo_loss(pc, pr, beta=0.5, gamma=0.3, chosen_tokens=nc,
                                   rejected_tokens=nr),
    }
    assert set(expected) == set(losses.PAIR_LOSSES)
    for name, want in expected.items():
        fn = losses.pair_loss_fn(name, beta=0.5, label_smoothing=0.1, gamma=0.3)
        np.testing.assert_array_equal(fn(pc, pr, rc, rr, nc, nr, valid=valid), want,
                                      err_msg=name)
    for trl_name, ours in losses.LOSS_ALIASES.items():  # TRL's names are ours
        np.testing.assert_array_equal(
            losses.pair_loss_fn(trl_name, beta=0.5, label_smoothing=0.1)(pc, pr, rc, rr, nc, nr),
            expected[ours])
    mixture = losses.pair_loss_fn("sigmoid, sft,robust", loss_weights=(0.8, 1.0, 0.2), beta=0.5,
                                  label_smoothing=0.1)(pc, pr, rc, rr, nc, nr)
    np.testing.assert_allclose(
        mixture, 0.8 * expected["dpo"] + expected["sft"] + 0.2 * expected["rdpo"], rtol=1e-6)
    raw = pc - 1.0  # sft reads the raw chosen log-prob where the step passes one (ld_alpha)
    np.testing.assert_array_equal(
        losses.pair_loss_fn("sft", beta=0.5)(pc, pr, rc, rr, nc, nr, raw_policy_chosen=raw),
        losses.sft_loss(raw, chosen_tokens=nc))
    with pytest.raises(ValueError, match="unknown preference loss 'kto'"):
        losses.pair_loss_fn("kto", beta=0.5)


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "dpo,sigmoid"}, "names a loss twice"),
    ({"name": "dpo,"}, "must be one or more names"),
    ({"name": "dpo,sft", "loss_weights": (1.0,)}, "one weight per loss"),
    ({"name": "exo_pair"}, "exo_pair needs label_smoothing > 0"),
    ({"name": "bco_pair", "f_divergence": "js_divergence"}, "needs losses among"),
    ({"name": "dpo", "f_divergence": "tv"}, "unknown f_divergence 'tv'"),
    ({"name": "discopop", "discopop_tau": 0.0}, "discopop_tau must be > 0"),
])
def test_pair_loss_fn_refuses_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        losses.pair_loss_fn(kwargs.pop("name"), beta=0.5, **kwargs)


@pytest.mark.parametrize("name", sorted(losses.BATCH_LOSSES))
def test_batch_losses_sort_only_valid_rows(x64, name):
    """AOT sorts the batch: its row sum is the float64 sorted-margin loss of the valid rows;
    padding rows (valid 0, here with extreme log-probs) neither enter the sort nor count."""
    pc, pr, rc, rr, *_ = random_logps(11, n=9, scale=3.0)
    valid = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1], float)
    pc[valid == 0], rr[valid == 0] = 1e3, -1e3
    fn = getattr(losses, f"{name}_loss")
    got = np.asarray(fn(pc, pr, rc, rr, beta=0.4, label_smoothing=0.1, valid=valid))
    keep = valid > 0
    if name == "aot":
        margins = (pc - pr)[keep], (rc - rr)[keep]
    else:
        margins = (pc - rc)[keep], (pr - rr)[keep]
    assert (got[~keep] == 0).all()
    np.testing.assert_allclose(got.sum(), np_aot_sum(*margins, 0.4, 0.1), rtol=1e-12)
    # without padding it is one per rank; a permutation of the rows permutes nothing
    full = np.asarray(fn(pc[keep], pr[keep], rc[keep], rr[keep], beta=0.4, label_smoothing=0.1))
    perm = np.random.default_rng(0).permutation(keep.sum())
    again = np.asarray(fn(pc[keep][perm], pr[keep][perm], rc[keep][perm], rr[keep][perm],
                          beta=0.4, label_smoothing=0.1))
    np.testing.assert_allclose(np.sort(full), np.sort(got[keep]), rtol=1e-12)
    np.testing.assert_allclose(again, full, rtol=1e-12)


def test_length_desensitised_and_wpo_weights(x64):
    """LD-DPO: tokens past the pair's shared length count ld_alpha times; WPO: exp of the mean
    aligned log-prob of each response, multiplied, with no gradient."""
    rng = np.random.default_rng(5)
    token_logp = -rng.uniform(0.1, 2.0, (4, 6))
    mask = np.array([[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0],
                     [1, 1, 1, 1, 0, 0]], float)
    shared = np.array([3, 2, 3, 2], float)  # pairs (0, 2), (1, 3): min lengths 2 and 4 -> 3, 2
    lss = -rng.uniform(0.5, 3.0, (4, 6))
    parts = losses.logprob_parts(token_logp, mask, shared_tokens=shared, token_log_sum_sq=lss)
    for b in range(4):
        toks = token_logp[b][mask[b] > 0]
        assert parts["shared"][b] == pytest.approx(toks[:int(shared[b])].sum(), rel=1e-12)
        assert parts["logp"][b] == pytest.approx(toks.sum(), rel=1e-12)
        assert parts["wpo"][b] == pytest.approx(((token_logp - lss)[b] * mask[b]).sum())
    ld = losses.length_desensitised(parts["logp"], parts["shared"], 0.25)
    np.testing.assert_allclose(ld, parts["shared"] + 0.25 * (parts["logp"] - parts["shared"]))
    np.testing.assert_allclose(losses.length_desensitised(parts["logp"], parts["shared"], 1.0),
                               parts["logp"])
    n = mask.sum(-1)
    w = losses.wpo_weights(parts["wpo"][:2], parts["wpo"][2:], n[:2], n[2:])
    np.testing.assert_allclose(w, np.exp(parts["wpo"][:2] / n[:2] + parts["wpo"][2:] / n[2:]))
    grad = jax.grad(lambda a: jnp.sum(losses.wpo_weights(a, a, n[:2], n[:2])))(parts["wpo"][:2])
    assert (np.asarray(grad) == 0).all()


@pytest.mark.parametrize("name", losses.PAIR_LOSSES)
@pytest.mark.parametrize("magnitude", [1e4, -1e4])
def test_extreme_logps_stay_finite(name, magnitude):
    fn = losses.pair_loss_fn(name, beta=0.5, label_smoothing=0.1, gamma=0.3)
    big = jnp.full((3,), magnitude, jnp.float32)
    small = jnp.full((3,), -magnitude, jnp.float32)
    n = jnp.array([1.0, 5.0, 0.0])

    def total(pc):
        return jnp.sum(fn(pc, small, small, big, n, n))

    value, grad = jax.value_and_grad(total)(big)
    assert np.isfinite(value) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", losses.PAIR_LOSSES)
def test_bf16_inputs_give_float32(name):
    fn = losses.pair_loss_fn(name, beta=0.5, label_smoothing=0.1)
    a = [jnp.asarray(x, jnp.bfloat16) for x in random_logps(5, scale=2.0)]
    assert fn(*a).dtype == jnp.float32
    logits = jnp.ones((2, 3, 5), jnp.bfloat16)
    logp, n = losses.sequence_logprobs(logits, jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3)))
    assert logp.dtype == jnp.float32 and n.dtype == jnp.float32


@pytest.mark.parametrize("name", losses.PAIR_LOSSES)
def test_jit_vmap_grad(name):
    fn = losses.pair_loss_fn(name, beta=0.5, label_smoothing=0.1, gamma=0.2)
    args = [jnp.asarray(x, jnp.float32) for x in random_logps(6, n=8, scale=2.0)]
    eager = fn(*args)
    np.testing.assert_allclose(jax.jit(fn)(*args), eager, rtol=1e-6)
    # vmap over an extra leading axis of stacked batches equals the per-batch calls
    stacked = [jnp.stack([x, x[::-1]]) for x in args]
    batched = jax.vmap(fn)(*stacked)
    np.testing.assert_allclose(batched[1], fn(*[x[::-1] for x in args]), rtol=1e-6)
    grad = jax.grad(lambda pc: jnp.sum(fn(pc, *args[1:])))(args[0])
    assert grad.shape == (8,) and np.all(np.isfinite(grad))


def test_dpo_gradient_matches_analytic():
    pc, pr, rc, rr, *_ = (jnp.asarray(x, jnp.float32) for x in random_logps(8, scale=1.0))
    beta = 0.5
    grad = jax.grad(lambda x: jnp.sum(losses.dpo_loss(x, pr, rc, rr, beta=beta)))(pc)
    h = np.asarray((pc - rc) - (pr - rr), np.float64)
    expected = -beta * (1 - 1 / (1 + np.exp(-beta * h)))  # d/dh -log sigmoid(beta h)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- weighted reduction


def test_weighted_mean_formulas():
    v = jnp.array([1.0, 2.0, 3.0, 4.0])
    w = jnp.array([0.5, 0.0, 1.0, 0.25])
    np.testing.assert_allclose(losses.weighted_mean(v, w), (0.5 + 3 + 1) / 4)
    np.testing.assert_allclose(losses.weighted_mean(v, w, normalize=True), (0.5 + 3 + 1) / 1.75)
    valid = jnp.array([1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(losses.weighted_mean(v, w, valid=valid), (0.5 + 3) / 3)


def test_weighted_mean_all_zero_weights_is_safe():
    v = jnp.array([1.0, 2.0])
    w = jnp.zeros(2)
    value, grad = jax.value_and_grad(lambda x: losses.weighted_mean(x, w, normalize=True))(v)
    assert value == 0.0 and np.all(grad == 0.0)


@pytest.mark.parametrize("normalize", [False, True])
def test_zero_weight_gives_zero_gradient_and_gradients_scale_with_weight(normalize):
    pc, pr, rc, rr, *_ = (jnp.asarray(x, jnp.float32) for x in random_logps(9, n=4, scale=2.0))

    def objective(x, w):
        return losses.weighted_mean(losses.dpo_loss(x, pr, rc, rr, beta=0.5), w, normalize=False)

    w = jnp.array([0.0, 0.3, 0.6, 1.0])
    g = jax.grad(objective)(pc, w)
    assert g[0] == 0.0
    g_ones = jax.grad(objective)(pc, jnp.ones(4))
    np.testing.assert_allclose(g[1:], w[1:] * g_ones[1:], rtol=1e-6)
    if normalize:  # with normalisation a zero-weight pair still contributes nothing
        gn = jax.grad(lambda x: losses.weighted_mean(
            losses.dpo_loss(x, pr, rc, rr, beta=0.5), w, normalize=True))(pc)
        assert gn[0] == 0.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-50, 50), min_size=1, max_size=12),
    st.floats(0.0, 1.0),
)
def test_weighted_mean_property(values, weight):
    v = np.asarray(values, np.float32)
    w = np.full_like(v, weight)
    np.testing.assert_allclose(losses.weighted_mean(v, w), weight * v.mean(), rtol=1e-5, atol=1e-4)
    if weight > 1e-30:  # smaller weights underflow in float32 (flushed like all-zero weights)
        np.testing.assert_allclose(
            losses.weighted_mean(v, w, normalize=True), v.mean(), rtol=1e-4, atol=1e-4
        )


# ---------------------------------------------------------------- metrics


def test_preference_metrics():
    pc = jnp.array([-1.0, -2.0, -3.0])
    pr = jnp.array([-2.0, -1.0, -3.0])
    z = jnp.zeros(3)
    m = losses.preference_metrics(pc, pr, z, z, beta=2.0, weights=jnp.array([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(m["rewards/chosen"], 2 * (-6 / 3))
    np.testing.assert_allclose(m["rewards/rejected"], 2 * (-6 / 3))
    np.testing.assert_allclose(m["rewards/margins"], 0.0)
    np.testing.assert_allclose(m["rewards/accuracies"], 1 / 3)  # ties are not correct
    np.testing.assert_allclose(m["rewards/weighted_accuracies"], 1 / 2)
    masked = losses.preference_metrics(pc, pr, z, z, beta=2.0, valid=jnp.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(masked["rewards/accuracies"], 1.0)
    np.testing.assert_allclose(masked["rewards/chosen"], -2.0)


def test_preference_metrics_logps_and_weights():
    pc = jnp.array([-1.0, -2.0, -3.0, -9.0])
    pr = jnp.array([-2.0, -1.0, -3.0, -9.0])
    z = jnp.zeros(4)
    valid = jnp.array([1.0, 1.0, 1.0, 0.0])  # the last row is padding
    m = losses.preference_metrics(pc, pr, z, z, beta=2.0, weights=jnp.array([1.0, 0.0, 1.0, 5.0]),
                                  valid=valid)
    np.testing.assert_allclose(m["logps/chosen"], -2.0)
    np.testing.assert_allclose(m["logps/rejected"], -2.0)
    np.testing.assert_allclose(m["weights/mean"], 2 / 3)
    np.testing.assert_allclose(m["weights/effective"], 2**2 / (3 * 2))  # (sum w)^2 / (n sum w^2)
    equal = losses.preference_metrics(pc, pr, z, z, beta=2.0, weights=jnp.full(4, 0.3))
    np.testing.assert_allclose(equal["weights/effective"], 1.0, rtol=1e-6)
    one = losses.preference_metrics(pc, pr, z, z, beta=2.0, weights=jnp.array([0, 0, 2.0, 0]))
    np.testing.assert_allclose(one["weights/effective"], 1 / 4)
    none = losses.preference_metrics(pc, pr, z, z, beta=2.0, weights=jnp.zeros(4))
    assert float(none["weights/effective"]) == 0.0


# ---------------------------------------------------------------- sequence log-probs


def random_lm_batch(seed, b=3, t=7, v=11, d=5):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, t, d)).astype(np.float32)
    head = rng.normal(size=(d, v)).astype(np.float32)
    targets = rng.integers(0, v, (b, t)).astype(np.int32)
    mask = (rng.random((b, t)) > 0.3).astype(np.float32)
    targets[mask == 0] = -100  # ignored positions may hold any value
    return hidden, head, targets, mask


def test_sequence_logprobs_matches_float64_reference():
    hidden, head, targets, mask = random_lm_batch(0)
    logits = hidden @ head * 4
    got, n = losses.sequence_logprobs(logits, targets, mask)
    want, want_n = np_sequence_logprobs(logits, targets, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(n, want_n)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 64])  # 64: one chunk, no remat
def test_chunked_equals_plain_values_and_gradients(chunk_size):
    hidden, head, targets, mask = random_lm_batch(1)

    def plain(h, w):
        return losses.sequence_logprobs(jnp.einsum("btd,dv->btv", h, w), targets, mask)[0]

    def chunked(h, w):
        return losses.chunked_sequence_logprobs(h, w, targets, mask, chunk_size=chunk_size)[0]

    np.testing.assert_allclose(chunked(hidden, head), plain(hidden, head), rtol=1e-5, atol=1e-5)
    weights = jnp.arange(3.0) + 1
    g_plain = jax.grad(lambda h, w: jnp.sum(weights * plain(h, w)), argnums=(0, 1))(hidden, head)
    g_chunk = jax.jit(
        jax.grad(lambda h, w: jnp.sum(weights * chunked(h, w)), argnums=(0, 1))
    )(hidden, head)
    for a, b in zip(g_chunk, g_plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_rejects_wrong_head_orientation():
    hidden, head, targets, mask = random_lm_batch(2)
    with pytest.raises(ValueError, match=r"\[D, V\]"):
        losses.chunked_sequence_logprobs(hidden, head.T, targets, mask, chunk_size=2)


def test_chunked_uses_less_peak_memory():
    b, t, d, v = 4, 256, 64, 8192
    hidden = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    head = jax.ShapeDtypeStruct((d, v), jnp.float32)
    targets = jax.ShapeDtypeStruct((b, t), jnp.int32)
    mask = jax.ShapeDtypeStruct((b, t), jnp.float32)

    def plain(h, w, tg, m):
        return jnp.sum(losses.sequence_logprobs(h @ w, tg, m)[0])

    def chunked(h, w, tg, m):
        return jnp.sum(losses.chunked_sequence_logprobs(h, w, tg, m, chunk_size=32)[0])

    def temp_bytes(fn):
        compiled = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(hidden, head, targets, mask).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    full_logits_bytes = b * t * v * 4
    plain_bytes, chunked_bytes = temp_bytes(plain), temp_bytes(chunked)
    assert plain_bytes >= full_logits_bytes
    assert chunked_bytes < plain_bytes / 4, (plain_bytes, chunked_bytes)

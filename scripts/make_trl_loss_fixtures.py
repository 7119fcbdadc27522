"""Run TRL 1.16's own DPO loss code on fixed random per-token log-probs; write the fixture.

Needs torch (CPU) and trl (`pip install -r requirements-trl.txt`); cwpo_jax and its tests never
import either. TRL computes every loss_type and option inside DPOTrainer._compute_loss, after a
model forward: this script calls that method unchanged on a stand-in trainer whose "model" and
"reference model" return fixed per-token log-probs (and the other outputs the method logs), so
what runs is TRL's loss code itself. Per case it records the loss and its gradient w.r.t. the
policy's per-token log-probs.

Writes tests/fixtures/trl_losses.npz:
  completion_mask [2B, T]   TRL's layout: chosen rows [:B] over rejected rows [B:], column 0 the
                            prompt (never a completion token), then the completion, then padding
  policy, ref, log_sum_sq   [2B, T-1] per-token log-probs of the shifted positions (0 off the
                            completion) and WPO's log sum_v p_v^2
  cases                     JSON list of {"name", "loss_type", "loss_weights", "beta",
                            "label_smoothing", "f_divergence_type", "f_alpha_divergence_coef",
                            "discopop_tau", "ld_alpha", "use_weighting", "dtype"}
  loss_<i>, grad_<i>        case i's loss (scalar) and d loss / d policy [2B, T-1]
Cases run in float64, except alpha_divergence (TRL clamps its exponent by a float32/16 table).

Usage: python scripts/make_trl_loss_fixtures.py
"""
from __future__ import annotations

import json
import os
import types
from collections import defaultdict

import numpy as np
import torch
import trl
from trl.trainer.dpo_trainer import DPOTrainer

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "trl_losses.npz")
PAIRS, LENGTH = 8, 12

F_LOSSES = ["sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop"]


def case(name, loss_type, **options):
    base = {"loss_weights": None, "beta": 0.3, "label_smoothing": 0.0,
            "f_divergence_type": "reverse_kl", "f_alpha_divergence_coef": 0.5,
            "discopop_tau": 0.05, "ld_alpha": None, "use_weighting": False}
    if any(t in ("exo_pair", "robust", "aot", "aot_unpaired") for t in loss_type):
        base["label_smoothing"] = 0.1
    base.update(options)
    return {"name": name, "loss_type": list(loss_type), **base}


def cases() -> list[dict]:
    out = [case(t, [t]) for t in ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust",
                                  "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero",
                                  "apo_down", "discopop", "sft", "sigmoid_norm"]]
    out += [case("aot_no_smoothing", ["aot"], label_smoothing=0.0),
            case("robust_0.3", ["robust"], label_smoothing=0.3),
            case("discopop_tau_0.5", ["discopop"], discopop_tau=0.5, beta=1.0)]
    for div, coef in [("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.5),
                      ("alpha_divergence", 1.5), ("alpha_divergence", 1.0)]:
        for t in F_LOSSES + ["sft"]:
            out.append(case(f"{t}_{div}_{coef}", [t], f_divergence_type=div,
                            f_alpha_divergence_coef=coef))
    out += [
        case("mpo", ["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0]),
        case("rpo", ["sigmoid", "sft"], loss_weights=[1.0, 0.5]),
        case("sigmoid_ipo", ["sigmoid", "ipo"]),
        case("sigmoid_aot", ["sigmoid", "aot"], loss_weights=[0.5, 2.0]),
    ]
    for t in ["sigmoid", "ipo", "sppo_hard", "aot", "sft"]:
        out.append(case(f"{t}_ld_0.5", [t], ld_alpha=0.5))
    out += [case("sigmoid_ld_0", ["sigmoid"], ld_alpha=0.0),
            case("rpo_ld_0.3", ["sigmoid", "sft"], ld_alpha=0.3)]
    # TRL 1.16 fails on use_weighting with sft (an in-place product on its expanded batch loss)
    # and with hinge (the same product on the relu output its backward pass needs), so the WPO
    # cases leave those two out.
    for t in ["sigmoid", "ipo", "apo_zero", "nca_pair"]:
        out.append(case(f"{t}_wpo", [t], use_weighting=True))
    out += [case("mix_wpo", ["sigmoid", "ipo"], loss_weights=[1.0, 0.5], use_weighting=True),
            case("js_ld_wpo", ["sigmoid"], f_divergence_type="js_divergence", ld_alpha=0.5,
                 use_weighting=True)]
    return out


def inputs(seed: int = 0):
    """Fixed random completion masks and per-token log-probs (TRL's row layout)."""
    rng = np.random.default_rng(seed)
    rows = 2 * PAIRS
    mask = np.zeros((rows, LENGTH), np.int64)
    prompt = rng.integers(1, 4, rows)
    for r in range(rows):
        n = rng.integers(1, LENGTH - prompt[r] + 1)
        mask[r, prompt[r]:prompt[r] + n] = 1
    shift = mask[:, 1:].astype(np.float64)
    ref = -rng.uniform(0.2, 2.5, shift.shape) * shift
    policy = (ref + rng.normal(0.0, 0.35, shift.shape)) * shift
    log_sum_sq = -rng.uniform(0.3, 3.0, shift.shape)
    return mask, policy, ref, log_sum_sq


def trl_loss(c: dict, mask, policy, ref, log_sum_sq):
    """Loss and d loss / d policy from DPOTrainer._compute_loss on a stand-in trainer."""
    dtype = torch.float32 if c["f_divergence_type"] == "alpha_divergence" else torch.float64
    shift = torch.tensor(mask[:, 1:])
    leaf = torch.tensor(policy, dtype=dtype, requires_grad=True)
    rows = mask.shape[0]
    zeros = torch.zeros(shift.shape, dtype=dtype)

    def outputs(per_token):
        return types.SimpleNamespace(
            log_probs=per_token, entropy=zeros, mean_logits=zeros,
            is_top1=torch.zeros(shift.shape, dtype=torch.bool),
            log_sum_sq_probs=torch.tensor(log_sum_sq, dtype=dtype))

    class Model:
        training = True
        is_gradient_checkpointing = False

        def __init__(self, per_token):
            self.per_token = per_token

        def __call__(self, **kwargs):
            return outputs(self.per_token * shift)

    policy_model = Model(leaf)
    accelerator = types.SimpleNamespace(device=torch.device("cpu"),
                                        gather_for_metrics=lambda x: x, gather=lambda x: x)
    trainer = types.SimpleNamespace(
        model=policy_model, ref_model=Model(torch.tensor(ref, dtype=dtype)),
        accelerator=accelerator, aux_loss_enabled=False, precompute_ref_logps=False,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None,
                                   discopop_tau=c["discopop_tau"]),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1, beta=c["beta"], loss_types=c["loss_type"],
        loss_weights=c["loss_weights"] or [1.0] * len(c["loss_type"]), ld_alpha=c["ld_alpha"],
        f_divergence_type=c["f_divergence_type"],
        f_alpha_divergence_coef=c["f_alpha_divergence_coef"],
        label_smoothing=c["label_smoothing"], use_weighting=c["use_weighting"])
    batch = {"input_ids": torch.ones((rows, mask.shape[1]), dtype=torch.long),
             "attention_mask": torch.ones((rows, mask.shape[1]), dtype=torch.long),
             "completion_mask": torch.tensor(mask)}
    loss = DPOTrainer._compute_loss(trainer, policy_model, batch, return_outputs=False)
    loss.backward()
    return float(loss.detach()), leaf.grad.double().numpy(), str(dtype).removeprefix("torch.")


def main() -> None:
    assert trl.__version__ == "1.16.0", f"the fixture is of TRL 1.16.0, found {trl.__version__}"
    mask, policy, ref, log_sum_sq = inputs()
    arrays = {"completion_mask": mask.astype(np.int8), "policy": policy, "ref": ref,
              "log_sum_sq": log_sum_sq}
    all_cases = cases()
    for i, c in enumerate(all_cases):
        loss, grad, dtype = trl_loss(c, mask, policy, ref, log_sum_sq)
        c["dtype"] = dtype
        if not (np.isfinite(loss) and np.isfinite(grad).all()):
            raise SystemExit(f"case {c['name']}: TRL gave a non-finite loss or gradient")
        arrays[f"loss_{i}"], arrays[f"grad_{i}"] = np.float64(loss), grad
        print(f"{c['name']:<32} {loss:+.6f}")
    arrays["cases"] = np.array(json.dumps(all_cases))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"{len(all_cases)} cases -> {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks the idiomatic PyTorch step (benches/torch_step.py, what `delo bench train --torch`
times) against the golden reference (scripts/fixtures/delo_reference.py) on the tiny fixture.

For tests/data/delo-tiny (rho 1) and tests/data/delo-tiny-rho2 (rho 2), with the fixture's
model (tests/data/vilt-tiny), inputs, initial parameters and hyper-parameters (config.json):
  * the golden reference run now, and the golden outputs stored in expected.safetensors (what
    the engine's golden tests compare with): logits, proxy logits, the four loss terms, the
    gradient of every trainable tensor;
  * rho 1 also: the loss before each of 5 AdamW steps and every parameter after them.
Prints one line per quantity (max |difference|, tolerance) and exits non-zero if any exceeds its
tolerance. CI machines have no torch, so this runs by hand (with torch installed):
    PYTHON benches/check_torch_step.py > benches/results/torch-step-check.txt
and its output is committed there.
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts", "fixtures"))

import delo_reference as R  # noqa: E402
import torch_step as S  # noqa: E402

# f32 throughout; the two steps sum in different orders (fused GEMMs, SDPA, one bmm per layer).
ATOL, RTOL = 2e-5, 1e-4


class Checker:
    def __init__(self):
        self.failed = []

    def close(self, what, got, want):
        got, want = got.detach().double(), want.detach().double()
        assert got.shape == want.shape, (what, got.shape, want.shape)
        diff = float((got - want).abs().max()) if got.numel() else 0.0
        tol = ATOL + RTOL * float(want.abs().max()) if want.numel() else ATOL
        ok = diff <= tol
        if not ok:
            self.failed.append(what)
        print(f"{'ok  ' if ok else 'FAIL'} {what:58s} max|diff| {diff:.2e}  tol {tol:.2e}")


def fixture(name):
    d = os.path.join(ROOT, "tests", "data", name)
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    cfg = R.DeloConfig(E=c["E"], r=c["r"], rho=c["rho"], alpha=c["alpha"], lambda_cfs=c["lambda_cfs"],
                       lambda_align=c["lambda_align"], lambda_con=c["lambda_con"],
                       targets=tuple(c["targets"]), n_classes=c["n_classes"],
                       con_proxy=c["con_proxy"], cross_modal_guide=c["cross_modal_guide"])
    inputs = load_file(os.path.join(ROOT, c["inputs"]))
    return (c, cfg, inputs, load_file(os.path.join(d, "params.safetensors")),
            load_file(os.path.join(d, "expected.safetensors")))


def check(chk, name, vilt):
    c, cfg, inputs, init, exp = fixture(name)
    tag = f"[{name}]"
    missing, labels = inputs["missing"], inputs["labels"]

    # Golden reference, run now.
    params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    x0, mask, T = R.embed(vilt, inputs)
    gold = R.delo_step_loss(vilt, params, x0, mask, T, missing, labels, cfg)
    gold["loss"].backward()

    # The idiomatic step, one forward + backward (the optimiser comes below).
    model = S.DeloVilt(vilt, cfg)
    model.load_flat(init)
    complete = (missing == R.COMPLETE).nonzero().squeeze(1)
    ix0, imask = model.embed(inputs)
    logits, _, _ = model(ix0, imask, T, missing)
    proxy_logits, _, _ = model(ix0[complete], imask[complete], T, missing[complete], proxy=cfg.con_proxy)
    terms = S.step_loss(model, model, ix0, imask, T, missing, labels, complete)
    terms[0].backward()

    chk.close(f"{tag} logits vs stored golden", logits, exp["logits"])
    chk.close(f"{tag} logits vs golden now", logits, gold["logits"])
    chk.close(f"{tag} proxy logits vs stored golden", proxy_logits, exp["proxy_logits"])
    for term, key in zip(terms, ("loss", "loss_c", "loss_align", "loss_con")):
        chk.close(f"{tag} {key} vs stored golden", term.reshape(1), exp[key])
        chk.close(f"{tag} {key} vs golden now", term, gold[key])
    grads = model.flat(lambda p: p.grad)
    for k in init:
        chk.close(f"{tag} grad {k} vs stored golden", grads[k], exp["grad." + k])
        chk.close(f"{tag} grad {k} vs golden now", grads[k], params[k].grad)

    if "losses_5_steps" in exp:
        model = S.DeloVilt(vilt, cfg)
        model.load_flat(init)
        opt = S.make_optimizer(model, lr=c["lr"], betas=tuple(c["betas"]), eps=c["eps"],
                               weight_decay=c["weight_decay"])
        losses = [S.train_step(model, model, opt, inputs, missing, labels, torch.device("cpu"))[0].item()
                  for _ in range(c["steps"])]
        chk.close(f"{tag} loss before each of {c['steps']} AdamW steps", torch.tensor(losses),
                  exp["losses_5_steps"])
        after = model.flat()
        for k in init:
            chk.close(f"{tag} {k} after {c['steps']} AdamW steps", after[k], exp["params_after_5." + k])


def main():
    torch.manual_seed(0)
    vilt = R.load_vilt(os.path.join(ROOT, "tests", "data", "vilt-tiny"))
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}; tolerance atol {ATOL} + rtol {RTOL} x max|want|")
    chk = Checker()
    for name in ("delo-tiny", "delo-tiny-rho2"):
        check(chk, name, vilt)
    if chk.failed:
        print(f"FAILED: {len(chk.failed)} quantities differ")
        sys.exit(1)
    print("PASSED: the idiomatic step equals the golden reference (losses, gradients, AdamW steps)")


if __name__ == "__main__":
    main()

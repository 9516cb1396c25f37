#!/usr/bin/env python3
"""Times the idiomatic PyTorch DeLo training step (benches/torch_step.py): what `delo bench train
--torch` compares the engine with, in the same run.

Frozen HF ViltModel with random weights on the given ViltConfig, variant `delo`, gate `st`,
targets q,k,v, main forward + L_con proxy forward on the complete samples, backward, AdamW
(torch.optim.AdamW, default implementation). Timed eager and with torch.compile (the model's
forward compiled; on CUDA with mode="reduce-overhead", i.e. CUDA graphs; the losses and the
optimiser stay eager, as they would in a real PyTorch trainer). The step's correctness against
the golden reference (scripts/fixtures/delo_reference.py) is checked by
benches/check_torch_step.py.

Usage:
  python torch_train.py --config CONFIG.json [--batch 4] [--text-len 40] [--image-size 384]
      [--experts 16] [--rank 4] [--device cpu|cuda] [--steps 3] [--rounds 2]
      [--compile-budget 240] [--no-compile] [--serve]

Without --serve it runs --rounds rounds and prints one JSON object. With --serve (how `delo bench
train --torch` drives it, so that its rounds alternate with the engine's in one run and the
compile happens once) it prints a JSON "ready" line, then answers every "round" line on stdin
with one JSON line, until EOF.

Every step starts from host (CPU) inputs, copied to the device inside the timed step like the
engine's host batches. On CUDA the step runs under bf16 autocast (the standard PyTorch mixed
precision; the engine keeps its frozen linears in bf16 and the adapters in f32) and ends with
torch.cuda.synchronize(). Each figure is the best step time of `--steps` steps after one warm-up.
"""

import argparse
import json
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Found next to this file (as `delo bench train` writes them) or in the repository layout.
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "scripts", "fixtures"))

import torch  # noqa: E402
from transformers import ViltConfig, ViltModel  # noqa: E402

import torch_step as S  # noqa: E402


def synthetic_batch(cfg, batch, text_len, image_size, gen):
    """The engine's synthetic batch (src/bench/train.rs): samples i % 4 in {0, 1} complete,
    2 text missing ([CLS][SEP]), 3 image missing (white image, all ones); the same text lengths."""
    missing = torch.tensor([(0, 0, 1, 2)[i % 4] for i in range(batch)], dtype=torch.int64)
    ids = torch.zeros(batch, text_len, dtype=torch.int64)
    am = torch.zeros(batch, text_len, dtype=torch.int64)
    for i in range(batch):
        n = 2 if missing[i] == 1 else text_len - (i % 4) * (text_len // 8)
        ids[i, :n] = torch.randint(1000, cfg.vocab_size, (n,), generator=gen)
        ids[i, 0], ids[i, n - 1] = 101, 102
        am[i, :n] = 1
    pv = torch.rand(batch, 3, image_size, image_size, generator=gen) * 2 - 1
    pv[missing == 2] = 1.0
    pm = torch.ones(batch, image_size, image_size, dtype=torch.int64)
    inputs = {"input_ids": ids, "attention_mask": am, "token_type_ids": torch.zeros_like(ids),
              "pixel_values": pv, "pixel_mask": pm}
    labels = torch.randint(0, 101, (batch,), generator=gen)
    return inputs, missing, labels


class Bench:
    def __init__(self, a):
        with open(a.config) as f:
            raw = json.load(f)
        vcfg = ViltConfig(**{k: v for k, v in raw.items()
                             if k not in ("architectures", "transformers_version")})
        self.device = torch.device(a.device)
        torch.manual_seed(0)
        cfg = S.DeloConfig(E=a.experts, r=a.rank, n_classes=101)
        self.model = S.DeloVilt(ViltModel(vcfg), cfg).to(self.device)
        self.forward = self.model
        gen = torch.Generator().manual_seed(0)
        self.inputs, self.missing, self.labels = synthetic_batch(
            vcfg, a.batch, a.text_len, a.image_size, gen)
        self.opt = S.make_optimizer(self.model, lr=1e-4)
        self.a = a
        self.compiled = None
        self.compile_note = "disabled (--no-compile)" if a.no_compile else None

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def step(self):
        loss = S.train_step(self.model, self.forward, self.opt, self.inputs, self.missing,
                            self.labels, self.device)[0]
        loss.item()  # the trainer reads the loss every step (NaN check), as the engine does
        self.sync()

    def best(self, steps):
        self.step()  # warm-up
        best = float("inf")
        for _ in range(steps):
            t = time.perf_counter()
            self.step()
            best = min(best, time.perf_counter() - t)
        return best

    def compile_once(self):
        """Compiles on first use under a wall-clock budget (inductor on 2 CPU cores can take many
        minutes at ViLT-B size); a failure or an overrun makes compile 'unavailable'."""
        if self.compile_note is not None:
            return self.compiled is not None
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self.forward = torch.compile(self.model, mode=mode)

        def overrun(*_):
            raise TimeoutError(f"compile exceeded the {self.a.compile_budget}s budget")

        old = signal.signal(signal.SIGALRM, overrun)
        signal.alarm(self.a.compile_budget)
        t = time.perf_counter()
        try:
            self.step()  # traces and compiles the main and the proxy forward (and their backward)
            self.step()
            took = time.perf_counter() - t
            # Dynamo may swallow the alarm and fall back to eager for part of the graph, so
            # the budget is also checked after the fact.
            if took > self.a.compile_budget:
                raise TimeoutError("over budget")
            self.compiled = self.forward
            self.compile_note = f"compiled in {took:.0f}s"
        except Exception as e:  # noqa: BLE001 - any compiler failure means "unavailable"
            # The alarm often surfaces wrapped in an InductorError from a compile worker.
            if time.perf_counter() - t >= self.a.compile_budget:
                self.compile_note = f"unavailable: not compiled within the {self.a.compile_budget}s budget"
            else:
                msg = (str(e).splitlines() or [""])[0][:200]
                self.compile_note = f"unavailable: {type(e).__name__}: {msg}"
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
            self.forward = self.model
        return self.compiled is not None

    def round(self):
        self.forward = self.model
        res = {"eager_s": self.best(self.a.steps), "compile_s": None}
        if self.compile_once():
            self.forward = self.compiled
            try:
                res["compile_s"] = self.best(self.a.steps)
            finally:
                self.forward = self.model
        res["compile_note"] = self.compile_note
        return res

    def info(self):
        return {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "device": (torch.cuda.get_device_name() if self.device.type == "cuda"
                           else f"cpu, torch kernels {torch.backends.cpu.get_cpu_capability()}")}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text-len", type=int, default=40)
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compile-budget", type=int, default=240)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--serve", action="store_true")
    a = p.parse_args()
    b = Bench(a)
    if a.serve:
        print(json.dumps({"ready": True, **b.info()}), flush=True)
        for line in sys.stdin:
            if line.strip() == "round":
                print(json.dumps(b.round()), flush=True)
        return
    rounds = [b.round() for _ in range(a.rounds)]
    best = lambda k: min((r[k] for r in rounds if r[k] is not None), default=None)  # noqa: E731
    print(json.dumps({**b.info(), "eager_s": best("eager_s"), "compile_s": best("compile_s"),
                      "compile_note": b.compile_note, "rounds": rounds}))


if __name__ == "__main__":
    main()

"""Times Hugging Face's ViltModel forward on the CPU, the reference of `delo bench forward`.

Usage: python torch_forward.py THREADS BATCH TEXT_LEN IMAGE_SIZE CONFIG_JSON
  CONFIG_JSON is the engine's ViltConfig as Hugging Face config.json text, so both sides build
  a model of the same dimensions. The model is randomly initialised (the weights do not change
  the work), in eval mode, under torch.no_grad(), with torch.set_num_threads(THREADS).

Protocol (one JSON object per line on stdout): once the model is built and warmed up it prints
  {"torch": version, "transformers": version, "threads": n, "attn": implementation}
then, for each line REPS read from stdin, it runs REPS forwards and prints {"best_s": seconds}
(the best of them). It exits at end of input. Building ViltModel-B/32 takes seconds, so the
process stays up and the engine can alternate with it forward by forward: on a shared machine
both then see the same load.

HF picks image patches with torch.multinomial even in eval; as in every script that compares
with the engine, scripts/fixtures/patch_order.py replaces it by arange(n) (arange(n) % len with
replacement), the engine's deterministic order (docs/vilt.md#patch-selection). The replacement also
costs less than sampling, so it does not handicap PyTorch.
"""

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Found next to this file (as `delo bench forward` writes them) or in the repository layout.
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "scripts", "fixtures"))

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import ViltConfig, ViltModel  # noqa: E402

from patch_order import deterministic_patches  # noqa: E402


def main():
    threads, batch, text_len, image_size = (int(v) for v in sys.argv[1:5])
    config = ViltConfig.from_dict(json.loads(sys.argv[5]))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ViltModel(config, add_pooling_layer=True).eval()

    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(104, config.vocab_size, (batch, text_len), generator=gen)
    attention_mask = torch.ones(batch, text_len, dtype=torch.int64)
    pixel_values = torch.rand(batch, 3, image_size, image_size, generator=gen) * 2 - 1
    pixel_mask = torch.ones(batch, image_size, image_size, dtype=torch.int64)

    def forward():
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
        )

    def reply(obj):
        print(json.dumps(obj), flush=True)

    with deterministic_patches(), torch.no_grad():
        forward()  # warm-up: thread pool start, oneDNN primitive caches, page faults
        reply(
            {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
                "attn": getattr(model.config, "_attn_implementation", None) or "eager",
            }
        )
        for line in sys.stdin:
            best = float("inf")
            for _ in range(int(line)):
                t = time.perf_counter()
                forward()
                best = min(best, time.perf_counter() - t)
            reply({"best_s": best})


if __name__ == "__main__":
    main()

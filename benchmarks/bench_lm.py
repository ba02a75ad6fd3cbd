"""LoRA gradient projection vs a LoRA training step, on the tiny LM (and SmolLM2-135M if given).

Times, on the same examples: (a) a LoRA training step (forward + backward + Adam), (b) the fast
pass — one forward and one backward with hooks, the per-example LoRA gradients formed from the
hooked factors (``Σ_t δ_t a_tᵀ``, cheap because every LoRA matrix has a rank-sized side), then a
dense Gaussian projection (``LoRAGradientProjector`` with a ``DenseProjector``, the path the
pipeline takes for dense and SVD projectors), (c) the fully factored Kronecker sketch (the
gradient never formed), (d) torch.func vmap per-example gradients + the same dense projection;
reports tokens/s (unpadded tokens of every candidate row). Fidelity: Pearson correlation between
projected and exact inner products over random example pairs. The last line is one JSON object;
its ``fast_*`` keys are (b), ``kronecker_*`` keys (c).

    python benchmarks/bench_lm.py                      # tiny config, ~1 min on 1 thread
    python benchmarks/bench_lm.py --smollm2 DIR        # also SmolLM2-135M from DIR/*.gguf
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from raytag.grads import DenseProjector, KroneckerProjector
from raytag.lm.config import VENDORED_TASKS
from raytag.lm.grads import (LoRAGradientProjector, exact_projected_lora_gradients, layer_energy,
                             lora_layer_shapes)
from raytag.lm.scoring import margins
from raytag.lm.stages import reference_slots
from raytag.lm.tasks import load_text_tasks
from raytag.lm.tokenize import CharTokenizer, HFTokenizer, encode_examples
from raytag.lm.train import load_trainable, pretrain_base, trainable_state
from raytag.models.lm import add_lora, load_smollm2, tiny_llama

TASKS = ["sports_understanding", "navigate", "strategyqa", "implicatures", "social_support", "winowhy"]


def examples(per_task: int):
    tasks = load_text_tasks(VENDORED_TASKS, TASKS)
    inputs = [x for t in tasks for x in t.inputs[:per_task]]
    choices = [c for t in tasks for c in t.choices[:per_task]]
    target = np.concatenate([t.target_index[:per_task] for t in tasks])
    return inputs, choices, reference_slots(choices, target)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def measure(model, encoded, d: int, batch: int, repeats: int, fidelity_examples: int, seed: int) -> dict:
    device = next(model.parameters()).device
    rows = np.arange(batch)
    data = encoded.batch(rows).to(device)
    tokens = encoded.num_tokens(rows)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def train_step():
        loss = torch.nn.functional.softplus(-margins(model, data)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    shapes = lora_layer_shapes(model)
    D = sum(o * i for o, i, _ in shapes)
    identity = LoRAGradientProjector(model, KroneckerProjector.identity(shapes))
    fit = [identity.flat_gradients(encoded.batch(np.arange(s, min(s + batch, fidelity_examples))).to(device))[0]
           for s in range(0, fidelity_examples, batch)]
    exact = torch.cat(fit)
    kron = KroneckerProjector.random(shapes, d, seed=seed, layer_weights=layer_energy(fit, shapes))
    kronecker = LoRAGradientProjector(model, kron)
    dense = DenseProjector(D, d, kind="gaussian", seed=seed)
    fast = LoRAGradientProjector(model, dense)
    before = trainable_state(model)
    train_s = timed(train_step, repeats)
    load_trainable(model, before)  # the timed Adam steps moved the LoRA weights the exact gradients were taken at
    fast_s = timed(lambda: fast(data), repeats)
    kronecker_s = timed(lambda: kronecker(data), repeats)
    vmap_s = timed(lambda: exact_projected_lora_gradients(model, data, dense, chunk=batch), max(1, repeats // 2))

    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(exact), size=(2, 4000))
    keep = i != j
    i, j = i[keep], j[keep]
    exact = exact.cpu().double()
    truth = (exact @ exact.T)[i, j].numpy()  # inner products via the Gram matrix: gathering 4,000 row
    # pairs of D-dim gradients would hold 2 x 4,000 x D floats (15 GB for SmolLM2's D = 460,800)
    pieces = [encoded.batch(np.arange(s, min(s + batch, fidelity_examples))).to(device) for s in range(0, fidelity_examples, batch)]
    fast_grads = torch.cat([fast(p).grads.cpu() for p in pieces])
    kronecker_grads = torch.cat([kronecker(p).grads.cpu() for p in pieces])
    dense_grads = dense.project(exact.float())

    def fidelity(g):
        g = g.double()
        return float(np.corrcoef((g @ g.T)[i, j].numpy(), truth)[0, 1])

    return {"D": D, "d": d, "batch_examples": batch, "batch_tokens": tokens,
            "train_tokens_per_s": tokens / train_s, "fast_tokens_per_s": tokens / fast_s,
            "kronecker_tokens_per_s": tokens / kronecker_s, "vmap_dense_tokens_per_s": tokens / vmap_s,
            "fast_vs_train_ratio": fast_s / train_s, "kronecker_vs_train_ratio": kronecker_s / train_s,
            "vmap_vs_train_ratio": vmap_s / train_s, "fidelity_fast": fidelity(fast_grads),
            "fidelity_kronecker": fidelity(kronecker_grads),
            "fidelity_dense_gaussian": fidelity(dense_grads), "fidelity_pairs": int(len(i))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="examples per timed batch")
    parser.add_argument("--per-task", type=int, default=40, help="examples per task (fidelity sample)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--smollm2", default=None, help="folder or file of SmolLM2-135M-Instruct GGUF")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    inputs, choices, reference = examples(args.per_task)
    fidelity_examples = len(inputs)

    tokenizer = CharTokenizer.fit(inputs + [c for cs in choices for c in cs])
    encoded = encode_examples(tokenizer, inputs, choices, reference, args.max_length)
    model = add_lora(tiny_llama(tokenizer.vocab_size, args.hidden, 2, 4, args.max_length), rank=args.rank,
                     alpha=2.0 * args.rank, init_scale=0.02)
    pretrain_base(model, encoded, np.arange(len(inputs)), steps=50, lr=1e-2, batch_size=16, seed=0)
    results = {"tiny": measure(model, encoded, args.d, args.batch, args.repeats, fidelity_examples, seed=0)}
    print("tiny", json.dumps(results["tiny"]))
    if args.smollm2:
        base, hf = load_smollm2(args.smollm2)
        model = add_lora(base, rank=args.rank, alpha=2.0 * args.rank, init_scale=0.02).to(args.device)
        encoded = encode_examples(HFTokenizer(hf), inputs, choices, reference, args.max_length)
        results["smollm2"] = measure(model, encoded, args.d, args.batch, args.repeats,
                                     min(fidelity_examples, 4 * args.batch), seed=0)
        print("smollm2", json.dumps(results["smollm2"]))
    headline = results.get("smollm2", results["tiny"])
    print(json.dumps({**{k: headline[k] for k in ("train_tokens_per_s", "fast_tokens_per_s", "fast_vs_train_ratio",
                                                  "fidelity_fast", "fidelity_dense_gaussian", "kronecker_vs_train_ratio",
                                                  "fidelity_kronecker", "d")},
                      "model": "smollm2" if "smollm2" in results else "tiny", "results": results}))


if __name__ == "__main__":
    main()

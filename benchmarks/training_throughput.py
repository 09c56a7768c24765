"""Training throughput per variant on this CPU: faces per second through one optimiser step of each recipe
phase (forward, loss, backward, step; random crops at the variant's input size), fp32 and bf16 autocast
side by side, rounds interleaved. Prints one row per variant and phase.

    python benchmarks/training_throughput.py [--batch 8] [--rounds 3] [--threads 2] [--variants b4-mobile ...]
"""

from __future__ import annotations

import argparse
import time

import torch

from deepfake_serving.training import build
from deepfake_serving.variants import create_model, get_variant, list_variants


def step(model, variant, optimizer, x, y, loss_fn, bf16: bool) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        p_fake = variant.fake_probability(model(x)).float()
    loss_fn(p_fake, y, None).backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| variant | phase (trains) | input | fp32 faces/s | bf16 autocast faces/s | ratio |\n|---|---|---|---|---|---|")
    for name in args.variants or list_variants():
        variant = get_variant(name)
        if variant.recipe is None:
            continue
        model = build.trainable(create_model(name))
        size = variant.preprocessing.input_size
        x = torch.randn(args.batch, 3, size, size)
        y = torch.randint(0, 2, (args.batch,)).float()
        loss_fn = build.loss_for(variant.recipe, 0.5)
        for phase in variant.recipe.phases:
            optimizer = build.optimizer_for(variant.recipe, build.apply_phase(model, variant, phase))
            build.set_train_mode(model, variant, phase)
            for bf16 in (False, True):
                step(model, variant, optimizer, x, y, loss_fn, bf16)  # warm-up
            seconds: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.rounds):
                for bf16 in (False, True):
                    started = time.perf_counter()
                    step(model, variant, optimizer, x, y, loss_fn, bf16)
                    seconds[bf16].append(time.perf_counter() - started)
            fp32, bf16 = (args.batch / min(seconds[k]) for k in (False, True))
            print(f"| {name} | {phase.trains} | {size} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

"""Fixed Hadamard head against a dense linear head: trainable parameters and inference time, same process.

At 1024 features x 1000 classes (Hoffer et al. 2018's ImageNet-like setting), times the forward pass
in eval mode under ``torch.inference_mode`` for the linear head, the Hadamard head through its
matrix product and through the fast Walsh-Hadamard transform; prints each relative to linear.

    python benchmarks/heads.py [--batch 256] [--repeats 50] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from autonorm_plugins.hadamard_head import HadamardHead
from torch import nn


def median_ms(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median wall-clock time of one forward pass, in milliseconds (after warm-up)."""
    times = []
    with torch.inference_mode():
        for i in range(repeats + 5):
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            module(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= 5:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.features, device=args.device)
    heads = {
        "linear": nn.Linear(args.features, args.classes),
        "hadamard (matmul)": HadamardHead(args.features, args.classes, fast=False),
        "hadamard (fwht)": HadamardHead(args.features, args.classes, fast=True),
    }
    base_params = base_ms = None
    print(f"{args.features} features x {args.classes} classes, batch {args.batch}, {args.device}")
    print(f"{'head':<20} {'params':>10} {'ratio':>8} {'ms':>8} {'ratio':>8}")
    for name, head in heads.items():
        head = head.to(args.device).eval()
        params = sum(p.numel() for p in head.parameters() if p.requires_grad)
        ms = median_ms(head, x, args.repeats)
        base_params, base_ms = base_params or params, base_ms or ms
        print(f"{name:<20} {params:>10} {params / base_params:>8.4f} {ms:>8.3f} {ms / base_ms:>8.2f}")


if __name__ == "__main__":
    main()

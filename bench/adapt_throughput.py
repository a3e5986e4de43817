"""Members adapted per second: the batched engine against the naive per-member loop.

Same model, same support sets, same process. Also the engine's achieved GFLOP/s against
a dense matmul peak measured in the same run. The last line printed is
`ratio_vs_naive=<x> peak_fraction=<y>`, for the engine's fastest mode.

    python bench/adapt_throughput.py            # full run
    python bench/adapt_throughput.py --quick    # under a minute on 2 CPU cores

Imports only torch, numpy and limaml's model core, so it runs on a GPU machine without
the streaming stack.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from limaml.adaptation import AdaptationEngine, MemberSupport, SupportBatch
from limaml.model import LiMAML
from limaml.model_config import ModelConfig
from limaml.reference import naive_adapt

FIELD_CARDINALITIES = (8, 3, 22, 11)  # MovieLens-like: age band, gender, occupation, zip region
N_ITEMS, ITEM_FEATURES, CONTEXT = 2000, 21, 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(device: torch.device, repeats: int) -> float:
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats, device) / 1e9


def engine_flops_per_member(config: ModelConfig, support: int, steps: int) -> float:
    """Multiply-add FLOPs the engine performs for one member (element-wise work excluded)."""
    meta = 2 * (config.meta_input_dim * config.meta_hidden + config.meta_hidden * config.meta_dim)
    item = 2 * (config.taste_factors + config.item_feature_dim) * config.meta_dim  # item vector, once
    per_step = (
        meta + 2 * meta  # meta block forward, its input and weight gradients
        + 2 * (2 * config.meta_dim)  # member bias forward and backward
        + support * 2 * (2 * config.meta_dim)  # dot products with the item vectors, both directions
    )
    if config.global_hidden:  # the optional MLP path
        first = config.global_hidden[0]
        widths = (*config.global_hidden, 1)
        head = sum(2 * a * b for a, b in zip(widths, widths[1:]))  # per example, one direction
        item += 2 * (config.item_embedding_dim + config.item_feature_dim + config.context_dim) * first
        per_step += 2 * (2 * config.meta_dim * first) + support * 2 * head
    return support * item + steps * per_step + meta


def random_members(count: int, support: int, rng: np.random.Generator) -> list[MemberSupport]:
    return [
        MemberSupport(
            features=np.array([rng.integers(1, c) for c in FIELD_CARDINALITIES], dtype=np.int64),
            items=rng.integers(1, N_ITEMS, support),
            labels=rng.integers(0, 2, support).astype(np.float32),
            context=rng.random((support, CONTEXT), dtype=np.float32),
        )
        for _ in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller run, under a minute")
    parser.add_argument("--members", type=int, default=4096, help="members per engine batch")
    parser.add_argument("--naive-members", type=int, default=300, help="members the naive loop adapts")
    parser.add_argument("--support", type=int, default=64, help="support examples per member")
    parser.add_argument("--steps", type=int, default=5, help="inner steps")
    parser.add_argument("--meta-dim", type=int, default=32, help="meta embedding size")
    parser.add_argument("--global-hidden", type=int, nargs="*", default=[],
                        help="widths of the global block's optional MLP path (none by default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile mode")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        args.members, args.naive_members, args.repeats = 2048, 100, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = ModelConfig(n_items=N_ITEMS, item_feature_dim=ITEM_FEATURES, context_dim=CONTEXT,
                         member_field_cardinalities=FIELD_CARDINALITIES, meta_dim=args.meta_dim,
                         global_hidden=tuple(args.global_hidden), inner_steps=args.steps)
    members = random_members(args.members, args.support, rng)
    naive_subset = members[:args.naive_members]

    model = LiMAML(config).to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    naive_adapt(model, naive_subset[0])  # warm-up
    # Median per member: a stall of the shared machine does not count against the baseline.
    naive_rate = 1.0 / statistics.median(
        median_seconds(lambda m=m: naive_adapt(model, m), 1, device) for m in naive_subset)
    naive_out = np.stack([naive_adapt(model, m) for m in naive_subset[:20]])

    batch = SupportBatch.from_members(members, CONTEXT, device)
    flops = engine_flops_per_member(config, args.support, args.steps)
    peak = matmul_peak_gflops(device, args.repeats)
    modes = {"eager": False} if args.no_compile else {"eager": False, "compiled": True}
    results: dict[str, dict[str, float]] = {}
    for mode, compiled in modes.items():
        engine = AdaptationEngine(model, device, compile=compiled, support_capacity=args.support)
        start = time.perf_counter()
        out = engine.adapt_batch(batch)  # warm-up (and compilation)
        warmup_s = time.perf_counter() - start
        max_diff = float(np.abs(out[:20].numpy() - naive_out).max())
        seconds = median_seconds(lambda: engine.adapt_batch(batch), args.repeats, device)
        rate = args.members / seconds
        results[mode] = {"members_per_s": rate, "gflops": flops * rate / 1e9,
                         "ratio_vs_naive": rate / naive_rate, "peak_fraction": flops * rate / 1e9 / peak,
                         "warmup_s": warmup_s, "max_abs_diff_vs_naive": max_diff}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device.type} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"support {args.support}, inner steps {args.steps}, meta_dim {args.meta_dim}, "
          f"global_hidden {config.global_hidden}, {args.members} members per batch")
    print(f"engine FLOPs per member: {flops / 1e6:.2f} MFLOP; matmul peak: {peak:.1f} GFLOP/s")
    print(f"naive per-member loop: {naive_rate:10.1f} members/s")
    for mode, r in results.items():
        print(f"engine {mode:9s}: {r['members_per_s']:10.1f} members/s  {r['gflops']:7.1f} GFLOP/s  "
              f"x{r['ratio_vs_naive']:.1f} vs naive  {100 * r['peak_fraction']:.1f}% of peak  "
              f"(warm-up {r['warmup_s']:.1f} s, max |diff| vs naive {r['max_abs_diff_vs_naive']:.1e})")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "naive_members_per_s": naive_rate,
                                         "peak_gflops": peak, "modes": results}, indent=2))
    best = max(results.values(), key=lambda r: r["members_per_s"])
    print(f"ratio_vs_naive={best['ratio_vs_naive']:.2f} peak_fraction={best['peak_fraction']:.3f}")


if __name__ == "__main__":
    main()

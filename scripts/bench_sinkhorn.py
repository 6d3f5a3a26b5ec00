"""Time and memory of the Sinkhorn layer: implicit versus unrolled backward.

Each configuration runs in a fresh subprocess, so its peak memory (resident set on CPU, allocator
peak on CUDA) is its own. Writes ``sinkhorn_sweep.csv``, ``sinkhorn_time.png`` and
``sinkhorn_memory.png`` to ``--out`` and prints a table; ``--targets`` also checks the
reference targets (README, "Sinkhorn layer").

    python scripts/bench_sinkhorn.py --batch 16 --out bench_results
    python scripts/bench_sinkhorn.py --targets-only
    python scripts/bench_sinkhorn.py --vs-anchor        # side by side with deep-declarative-networks
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def bpnpnet_like_costs(
    B: int, m: int, n: int, dtype: torch.dtype, device: str, seed: int = 0
) -> torch.Tensor:
    """Distances between unit 128-d features where each 3D feature is a noisy copy of one 2D feature:
    true pairs cost about 0.8, the others about 1.4, as in a partly trained BPnPNet."""
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(B, m, 128, generator=g), dim=-1)
    idx = torch.randint(0, m, (B, n), generator=g)
    h = torch.nn.functional.normalize(
        f.gather(1, idx[..., None].expand(B, n, 128)) + torch.randn(B, n, 128, generator=g) * 0.6, dim=-1
    )
    return torch.cdist(f, h).clamp(max=5.0).to(device=device, dtype=dtype)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(cfg: dict) -> dict:
    """Forward and backward of one configuration in this process."""
    from bpnp.nodes import sinkhorn

    torch.set_num_threads(cfg.get("threads") or torch.get_num_threads())
    dev, dtype = cfg["device"], getattr(torch, cfg["dtype"])
    M0 = bpnpnet_like_costs(cfg["B"], cfg["m"], cfg["m"], dtype, dev)
    V = torch.randn(M0.shape, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    base_rss = _rss_mb()
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fwd, bwd = [], []
    # One warm-up call (discarded) when repeating, so the figures are medians of warm runs.
    warmup = 1 if cfg["repeats"] > 1 else 0
    for _ in range(warmup + cfg["repeats"]):
        M = M0.clone().requires_grad_()
        sync()
        t0 = time.perf_counter()
        P = sinkhorn(M, gamma=cfg["gamma"], max_iter=cfg["iters"], tol=0.0, backward=cfg["mode"])
        sync()
        t1 = time.perf_counter()
        P.backward(V)
        sync()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
        del P, M
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = dict(
        cfg,
        forward_s=statistics.median(fwd[warmup:]),
        backward_s=statistics.median(bwd[warmup:]),
        peak_rss_mb=peak_rss,
        peak_over_inputs_mb=peak_rss - base_rss,
    )
    if dev.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def spawn(cfg: dict) -> dict:
    """Run ``cfg`` in a fresh interpreter and return its result row."""
    proc = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return dict(cfg, error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def unroll_estimate_gb(B: int, m: int, iters: int, dtype: str) -> float:
    """Autograd keeps about six (B, m, m) tensors per log-domain iteration (measured on small sizes)."""
    return 6 * iters * B * m * m * (8 if dtype == "float64" else 4) / 2**30


def sweep(args) -> list[dict]:
    rows = []
    for m in args.sizes:
        for iters in args.iters:
            for mode in ("implicit", "unroll"):
                cfg = dict(
                    B=args.batch,
                    m=m,
                    iters=iters,
                    mode=mode,
                    gamma=args.gamma,
                    dtype=args.dtype,
                    device=args.device,
                    repeats=1 if m >= 1000 else 3,
                )
                est = unroll_estimate_gb(args.batch, m, iters, args.dtype)
                if mode == "unroll" and est > args.unroll_limit_gb:
                    row = dict(cfg, skipped=f"estimated {est:.0f} GB > --unroll-limit-gb")
                else:
                    row = spawn(cfg)
                rows.append(row)
                print(_fmt(row), flush=True)
    return rows


def _fmt(r: dict) -> str:
    head = f"{r['mode']:>8} m={r['m']:>5} iters={r['iters']:>4} B={r['B']:>3}"
    if "skipped" in r or "error" in r:
        return f"{head}  {r.get('skipped') or r.get('error')}"
    return (
        f"{head}  forward {r['forward_s']:8.3f} s  backward {r['backward_s']:8.3f} s  "
        f"peak {r['peak_rss_mb']:8.0f} MB (+{r['peak_over_inputs_mb']:.0f} over inputs)"
    )


def gradient_accuracy(B: int, m: int, dtype: torch.dtype) -> float:
    """Relative error of the fast backward against the exact one (Cholesky in float64 on the same plan)."""
    from bpnp.nodes import sinkhorn
    from bpnp.nodes.sinkhorn.backward import sinkhorn_vjp

    M = bpnpnet_like_costs(B, m, m, dtype, "cpu").requires_grad_()
    V = torch.randn(M.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    P = sinkhorn(M, gamma=10.0, max_iter=100, tol=0.0)
    (g,) = torch.autograd.grad(P, M, V)
    exact = sinkhorn_vjp(P.detach().double(), V.double(), 10.0, direct_max=10**9)[0]
    return float((g.double() - exact).norm() / exact.norm())


def targets(args) -> None:
    """The reference targets on this machine (README lists the reference figures)."""
    base = dict(gamma=10.0, dtype="float32", device=args.device, mode="implicit", repeats=3)
    checks = []
    for m, fwd_max, bwd_max in [(1000, 1.65, 0.35), (2000, None, 2.0)]:
        r = spawn(dict(base, B=16, m=m, iters=100, repeats=1 if m == 2000 else 3))
        print(_fmt(r))
        if fwd_max:
            checks.append(
                (
                    f"forward 16x{m}^2, 100 it",
                    f"{r['forward_s']:.3f} s",
                    f"<= {fwd_max} s",
                    r["forward_s"] <= fwd_max,
                )
            )
        checks.append(
            (f"backward 16x{m}^2", f"{r['backward_s']:.3f} s", f"<= {bwd_max} s", r["backward_s"] <= bwd_max)
        )
    mem = [spawn(dict(base, B=16, m=1000, iters=it, repeats=1)) for it in (10, 300)]
    grow = mem[1]["peak_rss_mb"] / mem[0]["peak_rss_mb"] - 1
    checks.append(
        (
            "implicit peak memory 10 -> 300 it",
            f"{mem[0]['peak_rss_mb']:.0f} -> {mem[1]['peak_rss_mb']:.0f} MB",
            "within 5 %",
            abs(grow) <= 0.05,
        )
    )
    r32 = spawn(dict(base, B=32, m=1000, iters=100, repeats=1))
    checks.append(
        (
            "B=32 1000^2 100 it fwd+bwd peak",
            f"{r32['peak_rss_mb']:.0f} MB",
            "<= 3072 MB",
            r32["peak_rss_mb"] <= 3072,
        )
    )
    for dtype, tol in [(torch.float32, 1e-6), (torch.float64, 1e-8)]:
        for m in (1000,):
            err = gradient_accuracy(4, m, dtype)
            checks.append(
                (f"gradient error {str(dtype)[6:]} m={m}", f"{err:.1e}", f"<= {tol:.0e}", err <= tol)
            )
    print("\n| check | measured | target | met |\n| --- | --- | --- | --- |")
    for name, got, want, ok in checks:
        print(f"| {name} | {got} | {want} | {'yes' if ok else 'NO'} |")


def anchor_forward(M: torch.Tensor, gamma: float, iters: int) -> torch.Tensor:
    """The deep-declarative-networks library's forward with a fixed iteration count: multiplicative
    row and column scaling of ``exp(-gamma (M - row min))`` to uniform marginals, in place."""
    P = torch.exp(-gamma * (M - M.amin(2, keepdim=True)))
    for _ in range(iters):
        P /= P.sum(2, keepdim=True) * M.shape[1]
        P /= P.sum(1, keepdim=True) * M.shape[2]
    return P


def anchor_block_backward(P: torch.Tensor, V: torch.Tensor, gamma: float) -> torch.Tensor:
    """``dL/dM`` by the library's ``block_inverse`` method, written from its formulas: the first row
    constraint is dropped to fix the gauge, the (m-1)^2 Schur complement
    ``diag(r') - P' diag(1/c) P'^T`` is Cholesky-factored and solved against the (m-1) x n block
    ``P' / c``, and the column block follows; three m^2 n products per sample."""
    B, m, n = P.shape
    G = -gamma * P * V
    r, c = P.sum(2), P.sum(1)
    Pc = P[:, 1:] / c[:, None, :]
    L = torch.linalg.cholesky(torch.diag_embed(r[:, 1:]) - Pc @ P[:, 1:].transpose(1, 2))
    X = torch.cholesky_solve(Pc, L)  # S^-1 P' / c, (B, m-1, n)
    T = torch.diag_embed(1.0 / c) + X.transpose(1, 2) @ Pc
    g1, g2 = G[:, 1:].sum(2), G.sum(1)
    v1 = torch.cholesky_solve(g1[:, :, None], L)[..., 0] - (X @ g2[:, :, None])[..., 0]
    v2 = (g2[:, None, :] @ T)[:, 0] - (g1[:, None, :] @ X)[:, 0]
    G[:, 1:] -= v1[:, :, None] * P[:, 1:]
    G -= v2[:, None, :] * P
    return G


def versus_anchor(args) -> None:
    """Ours and the deep-declarative-networks anchor side by side in one process, on the same costs:
    the median of ``--repeats`` timed runs after one warm-up."""
    from bpnp.nodes import sinkhorn

    B, m, iters, gamma = args.batch, args.anchor_size, args.anchor_iters, args.gamma
    dtype = getattr(torch, args.dtype)
    M0 = bpnpnet_like_costs(B, m, m, dtype, args.device)
    V = torch.randn(M0.shape, generator=torch.Generator().manual_seed(1)).to(args.device, dtype)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn, *a, **kw):
        sync()
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        sync()
        return out, time.perf_counter() - t0

    times = {k: [] for k in ("fwd", "bwd", "anchor_fwd", "anchor_bwd")}
    for rep in range(1 + args.repeats):
        M = M0.clone().requires_grad_()
        P, t_fwd = timed(sinkhorn, M, gamma=gamma, max_iter=iters, tol=0.0)
        _, t_bwd = timed(P.backward, V)
        P_anchor, t_afwd = timed(anchor_forward, M0, gamma, iters)
        G_anchor, t_abwd = timed(anchor_block_backward, P.detach(), V, gamma)
        if rep:
            for k, t in zip(times, (t_fwd, t_bwd, t_afwd, t_abwd), strict=True):
                times[k].append(t)
        print(
            f"run {rep}{' (warm-up)' if not rep else ''}: forward {t_fwd:.3f} / {t_afwd:.3f} s, "
            f"backward {t_bwd:.3f} / {t_abwd:.3f} s (ours / anchor)",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    plan_diff = float((P.detach() - P_anchor).abs().sum() / P_anchor.abs().sum())
    grad_diff = float((M.grad - G_anchor).norm() / G_anchor.norm())
    print(
        f"\n{B} x {m}^2, {args.dtype}, gamma {gamma}, {iters} iterations, {args.device}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} runs after one warm-up\n"
    )
    print("| | ours | deep-declarative-networks | speed-up (anchor / ours) |\n| --- | --- | --- | --- |")
    fwd_speedup = med["anchor_fwd"] / med["fwd"]
    print(f"| forward | {med['fwd']:.3f} s | {med['anchor_fwd']:.3f} s | {fwd_speedup:.2f}x |")
    print(
        f"| backward | {med['bwd']:.3f} s | {med['anchor_bwd']:.3f} s (block inverse) | "
        f"{med['anchor_bwd'] / med['bwd']:.1f}x |"
    )
    print(f"\nsame plan to {plan_diff:.1e} (relative L1); same gradient to {grad_diff:.1e} (relative L2)")


def plots(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "forward_s" in r]
    for key, fname, ylabel in [
        ("time", "sinkhorn_time.png", "seconds"),
        ("memory", "sinkhorn_memory.png", "peak RSS (MB)"),
    ]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for mode, style in (("implicit", "-"), ("unroll", "--")):
            for iters in sorted({r["iters"] for r in ok}):
                sel = sorted(
                    (r for r in ok if r["mode"] == mode and r["iters"] == iters), key=lambda r: r["m"]
                )
                if not sel:
                    continue
                xs = [r["m"] for r in sel]
                if key == "time":
                    axes[0].plot(
                        xs, [r["forward_s"] for r in sel], style, marker="o", label=f"{mode} {iters} it"
                    )
                    axes[1].plot(
                        xs, [r["backward_s"] for r in sel], style, marker="o", label=f"{mode} {iters} it"
                    )
                else:
                    axes[0].plot(
                        xs, [r["peak_rss_mb"] for r in sel], style, marker="o", label=f"{mode} {iters} it"
                    )
                    axes[1].plot(
                        xs,
                        [r["peak_over_inputs_mb"] for r in sel],
                        style,
                        marker="o",
                        label=f"{mode} {iters} it",
                    )
        titles = (
            ("forward", "backward") if key == "time" else ("peak resident memory", "peak over the inputs")
        )
        for ax, title in zip(axes, titles, strict=True):
            ax.set(xscale="log", yscale="log", xlabel="m = n", ylabel=ylabel, title=title)
            ax.grid(True, which="both", alpha=0.3)
        axes[1].legend(fontsize=7, ncol=2)
        fig.suptitle(f"Sinkhorn layer, B={ok[0]['B']}, {ok[0]['dtype']}, {ok[0]['device']}" if ok else "")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000, 2000])
    p.add_argument("--iters", type=int, nargs="+", default=[10, 30, 100, 300])
    p.add_argument("--gamma", type=float, default=10.0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--unroll-limit-gb", type=float, default=12.0, help="skip unrolled runs estimated above this"
    )
    p.add_argument("--out", type=Path, default=Path("bench_results"))
    p.add_argument("--targets", action="store_true", help="also check the reference targets")
    p.add_argument("--targets-only", action="store_true")
    p.add_argument(
        "--vs-anchor",
        action="store_true",
        help="only time forward and backward side by side with the deep-declarative-networks method",
    )
    p.add_argument("--anchor-size", type=int, default=1000)
    p.add_argument("--anchor-iters", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    if args.vs_anchor:
        versus_anchor(args)
        return
    if not args.targets_only:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = sweep(args)
        keys = sorted({k for r in rows for k in r})
        with open(args.out / "sinkhorn_sweep.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        plots(rows, args.out)
        print(f"wrote {args.out}/sinkhorn_sweep.csv, sinkhorn_time.png, sinkhorn_memory.png")
    if args.targets or args.targets_only:
        targets(args)


if __name__ == "__main__":
    main()

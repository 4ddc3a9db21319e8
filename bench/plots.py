"""The report's PNG plots (matplotlib, no display needed). Each function draws one figure from
the rows and writes it; small figures at 100 dpi keep each file well under 200 KB."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt  # noqa: E402

from bench.rows import GENERATE, PEER_OF, TARGET_ONLY, TIME_PARTS, Row  # noqa: E402
from specdec.method import Method  # noqa: E402

OURS, PEERS = "tab:blue", "tab:gray"
METHOD_COLORS = {Method.DRAFT: "tab:blue", Method.NGRAM: "tab:orange", Method.TURBO: "tab:green"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tokens_per_s(rows: list[Row], path: Path) -> Path:
    """One bar per row shown in the headline, this project's and the peers'."""
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    labels = [label(r) for r in rows]
    ax.barh(labels, [r.tokens_per_s for r in rows], color=[PEERS if r.peer else OURS for r in rows])
    for i, r in enumerate(rows):
        ax.text(r.tokens_per_s, i, f" {r.tokens_per_s:.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s (greedy, batch 1; gray: transformers in-process)")
    ax.set_xlim(0, max(r.tokens_per_s for r in rows) * 1.15)
    return _save(fig, path)


def label(r: Row) -> str:
    return f"{r.mode} k={r.k}" if r.k and "auto" not in r.mode else r.mode


def speedup_vs_k(rows: list[Row], path: Path) -> Path:
    """Measured speedup over target-only (both gRPC) per method and k, beside the Leviathan et al.
    bound from each row's measured alpha and c; the peers' speedup over generate() dotted."""
    base = {False: _tps(rows, TARGET_ONLY), True: _tps(rows, GENERATE)}
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, color in METHOD_COLORS.items():
        pts = sorted((r.k, r.tokens_per_s / base[False], r.bound) for r in rows
                     if r.mode == method and not r.peer)
        if not pts:
            continue
        ks, measured, bounds = zip(*pts)
        ax.plot(ks, measured, "o-", color=color, label=f"{method} (measured)")
        ax.plot(ks, bounds, "^--", color=color, alpha=0.6, label=f"{method} (bound)")
        peer = sorted((r.k, r.tokens_per_s / base[True]) for r in rows if r.mode == PEER_OF.get(method))
        if peer:
            ax.plot(*zip(*peer), "s:", color=color, alpha=0.6, label=f"{PEER_OF[method]} vs generate()")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("k (drafts per round)")
    ax.set_ylabel("speedup over target-only")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _tps(rows: list[Row], mode: str) -> float:
    return next(r.tokens_per_s for r in rows if r.mode == mode)


def acceptance(rows: list[Row], path: Path) -> Path:
    """P(draft i accepted | a draft i was verified) for each method at its largest fixed k."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method, color in METHOD_COLORS.items():
        mine = [r for r in rows if r.mode == method and not r.peer]
        if mine:
            r = max(mine, key=lambda r: r.k)
            pos = range(1, len(r.acceptance_by_position) + 1)
            ax.plot(pos, r.acceptance_by_position, "o-", color=color, label=f"{method} k={r.k}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("draft position")
    ax.set_ylabel("acceptance")
    ax.legend(fontsize=8)
    return _save(fig, path)


def concurrency(table: dict[str, dict[int, float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for mode, style in (("on", "o-"), ("off", "s--")):
        ns = sorted(table[mode])
        ax.plot(ns, [table[mode][n] for n in ns], style, label=f"batching {mode}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table["on"]), [str(n) for n in sorted(table["on"])])
    ax.set_xlabel("concurrent sessions (draft model)")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return _save(fig, path)


def round_time(rows: list[Row], path: Path) -> Path:
    """Stacked ms per round: in the proposer service, in the verifier service, on the wire, in the client."""
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    labels = [label(r) for r in rows]
    left = [0.0] * len(rows)
    for part in TIME_PARTS:
        widths = [r.round_ms.get(part, 0.0) for r in rows]
        ax.barh(labels, widths, left=left, label=part)
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("ms per round (one target forward)")
    ax.legend(fontsize=8, ncol=4, loc="lower right")
    return _save(fig, path)

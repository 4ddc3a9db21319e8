"""--compare-target-only: the same prompts decoded target-only (k = 0) on the same services after
the speculative run, and what speculation bought. A pure function over the two runs' records."""

from __future__ import annotations

from specdec.generation import GenerationRecord
from specdec.metrics import batch_metrics


def format_comparison(speculative: list[GenerationRecord], target_only: list[GenerationRecord],
                      greedy: bool) -> str:
    """Wall time of each run (first start to last end) and the speedup; greedy runs must produce
    identical tokens (lossless), sampled ones only the same distribution."""
    s, t = batch_metrics(speculative), batch_metrics(target_only)
    wall_s, wall_t = s.generated_tokens / s.e2e_throughput, t.generated_tokens / t.e2e_throughput
    same = [r.tokens for r in speculative] == [r.tokens for r in target_only]
    if greedy:
        verdict = "yes, token for token" if same else "NO: a bug, please report it"
    else:
        verdict = "not compared: sampling keeps the target's distribution, not its tokens"
    return "\n".join([
        f"Target-only vs speculative, the same {len(speculative)} prompt(s) on the same services:",
        f"  target-only: {t.generated_tokens} tokens in {wall_t:.2f} s ({t.e2e_throughput:.1f} tokens/s)",
        f"  speculative: {s.generated_tokens} tokens in {wall_s:.2f} s ({s.e2e_throughput:.1f} tokens/s, "
        f"{s.mean_accepted_tokens:.2f} tokens per target step)",
        f"  speedup: {wall_t / wall_s:.2f}x",
        f"  identical outputs: {verdict}",
    ])

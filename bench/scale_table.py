"""bench.scale's report as one compact markdown table: a row per figure, eager and compiled
side by side (start-up: the compiled first start / second start). A pure function of the JSON."""

from __future__ import annotations

MODES = ("eager", "compiled")


def _n(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _row(label: str, eager: str, compiled: str) -> str:
    return f"| {label} | {eager} | {compiled} |"


def _modes(label: str, by_mode: dict[str, float], fmt: str = ".2f", suffix: str = "") -> str:
    return _row(label, *(_n(by_mode[m], fmt) + suffix for m in MODES))


def figures_table(report: dict) -> str:
    f, setup = report["figures"], report["setup"]
    lines = [f"`{setup['command']}`: {setup['family']} x {setup['layers']} layers"
             f"{' (shrunk)' if setup['shrink'] else ''}, {setup['device']}/{setup['dtype']} "
             f"(--dtype {setup['requested_dtype']}), "
             f"{setup['prompts']} prompts x {setup['max_new_tokens']} tokens, compiled pass: "
             f"--compile {setup['compile']}; services {setup['verifier_threads']} thread(s) each, "
             f"transformers generate() {setup['transformers_threads']}, its prefill as many as the verifier", "",
             _row("figure", "eager", "compiled"), "|---|---:|---:|"]
    for name, times in f["startup_s"].items():
        for line in ("ready", "compiled"):
            lines.append(_row(f"{name} start-up to {line}, s (compiled: first / second start)",
                              _n(times["eager"][line], ".1f"),
                              f"{_n(times['first'][line], '.1f')} / {_n(times['second'][line], '.1f')}"))
    for name, rss in f["peak_rss_mb"].items():
        lines.append(_row(f"{name} peak RSS, MiB (compiled: serving; first start)", f"{rss['eager']:.0f}",
                          f"{rss['compiled']:.0f}; {rss['compiled_first_start']:.0f}"))
        lines.append(_row(f"{name} peak RSS compiled / eager", "",
                          f"{f['peak_rss_compiled_over_eager'][name]:.2f}x"))
    tps = f["tokens_per_s"]
    hf = f"{tps['transformers_generate']:.1f}"
    lines += [_modes("target-only tokens/s (gRPC)", tps["target_only"], ".1f"),
              _row("transformers generate() tokens/s", hf, hf),
              _modes("target-only / transformers generate()", f["target_only_over_transformers"], suffix="x"),
              _modes(f"draft == target, k = {setup['k']}, tokens/s (gRPC)", tps["speculative"], ".1f"),
              _modes("speculative / target-only", f["speculative_over_target_only"], suffix="x"),
              _modes("tokens per target step", f["tokens_per_target_step"]),
              _modes("decode ms per token, batch 1 (gRPC)", f["step_ms"]),
              _row(f"floor ms ({f['bandwidth_gb_s']:.1f} GB/s)", *[f"{f['floor_ms']:.2f}"] * 2),
              _modes("step / floor", f["step_over_floor"], suffix="x"),
              _row("engine step / floor (in-process, eager)", f"{f['engine_step_over_floor']:.2f}x", ""),
              _modes(f"TTFT s, {setup['long_prompt_tokens']}-token prompt (gRPC)", f["ttft_s"], ".3f"),
              _row("transformers prefill s", *[f"{f['transformers_prefill_s']:.3f}"] * 2),
              _modes("TTFT / transformers prefill", f["ttft_over_transformers_prefill"], suffix="x")]
    same = report["identical_tokens"]
    lines.append(_row("same tokens: target-only = transformers; speculative = target-only",
                      *("; ".join("yes" if v else "NO" for v in same[m].values()) for m in MODES)))
    return "\n".join(lines)

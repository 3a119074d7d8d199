"""Write the tables of docs/benchmarks.md (below its `<!-- table -->` marker) from benchmarks/results/*.json."""

import json
from pathlib import Path

HERE = Path(__file__).parent


def peak(r: dict) -> str:
    """The step's FLOP/s against the matmul peak of the dtype it computes in, and against bf16's where measured.
    Results made before matmul_peak_fraction_own_dtype divided by the machine's best peak only."""
    if "matmul_peak_fraction_own_dtype" in r:
        own = r["matmul_peak_gflops_bf16"] if r["dtype"] == "bf16" else r["matmul_peak_gflops_fp32"]
        text = f"{r['matmul_peak_fraction_own_dtype']:.0%} of {r['dtype']} {own:.0f} GFLOP/s"
        return text + (f" ({r['matmul_peak_fraction_bf16']:.0%} of bf16 {r['matmul_peak_gflops_bf16']:.0f})"
                       if r.get("matmul_peak_gflops_bf16") and r["dtype"] != "bf16" else "")
    text = f"{r['matmul_peak_fraction']:.0%} of {max(r['matmul_peak_gflops_fp32'], r['matmul_peak_gflops_bf16'] or 0):.0f} GFLOP/s"
    return text + (f" ({r['matmul_peak_fraction_bf16']:.0%} of bf16 {r['matmul_peak_gflops_bf16']:.0f})"
                   if r.get("matmul_peak_gflops_bf16") else "")


def malloc(r: dict) -> str:
    """", jemalloc" for a run on a preloaded allocator (both tools); nothing for glibc's own or older runs."""
    name = r.get("allocator", "glibc malloc")
    return "" if name.startswith("glibc") else f", {name.split()[0]}"


end_to_end, per_step, generation, serving, ablations, cost = [], [], [], [], [], None
for path in sorted((HERE / "results").glob("*.json")):
    r = json.loads(path.read_text())
    if "ablation" in r:
        n = r["negalign"]
        ablations.append(f"| {r['ablation']} | {r['dtype']}, batch {r['batch']}{malloc(r)} | {' '.join(r['negalign_overrides']) or 'defaults'} | "
                         f"{n['mean_seconds_per_step']:.2f} | {n['peak_rss_gb']:.2f} | "
                         f"{r['work_per_step']['laid_out']:.0f} | `{r['command']}` |")
    elif r.get("benchmark", "").startswith("D2O step cost"):
        cost = r
    elif r.get("benchmark", "").startswith("generation"):
        generation.append(
            f"| {r['benchmark'][12:]}"
            f"{' under the ' + r['sampling_context'] + ' context' if r.get('sampling_context') else ''} | "
            f"{r['prompts']} x K = {r['k']} x {r['max_new_tokens']} | "
            f"{r['negalign_tokens_per_s']} (batch {r['negalign_batch_size']}) | {r['batched_generate']['tokens_per_s']} | "
            f"{r['plain_loop']['tokens_per_s']} | **{r['ratio_vs_batched_generate']}x** | **{r['ratio_vs_plain_loop']}x** | "
            f"`{r['command']}` |")
    elif r.get("benchmark", "").startswith("serving"):
        check = r["server_run"]["model_check"]
        serving.append(
            f"| {r['server']['served_model']}{' under the ' + r['sampling_context'] + ' context' if r.get('sampling_context') else ''} | "
            f"{r['prompts']} x K = {r['k']} x {r['max_new_tokens']}, temperature {r['temperature']:g} | "
            f"{r['server_tokens_per_s']} | {r['negalign_tokens_per_s']} (batch {r['negalign_batch_size']}) | "
            f"**{r['ratio_server_over_negalign']}x** | {r['wall_clock_s']['server']:.0f} vs {r['wall_clock_s']['negalign']:.0f} | "
            f"{check['agreeing']}/{check['tokens']} | {r['torch_cpu_capability']}, {r['torch_threads']} threads | "
            f"`{r['command']}` |")
    elif "competitor_results" in r:  # end to end against TRL's defaults and its fastest settings
        ours, theirs = r["negalign"], r["competitor_results"]
        seconds = " / ".join(f"{theirs[s]['end_to_end_seconds']:.0f}" for s in ("defaults", "fast") if s in theirs)
        rates = " / ".join(f"{r['ratios_by_setting'][s]['tokens_per_s_ratio']}x" for s in ("defaults", "fast") if s in theirs)
        end_to_end.append(
            f"| {r['comparison']} | {r['competitor']} | {r['dtype']}, batch {r['batch']}, {r['steps']} steps over "
            f"{r['rows']} rows, max length {r['max_length']}{malloc(r)} | {ours['end_to_end_seconds']:.0f} vs {seconds} | "
            f"**{r['end_to_end_ratio']}x** | {ours['mean_seconds_per_step']:.2f} vs "
            f"{r['competitor_results'][r['faster_competitor_setting']]['mean_seconds_per_step']:.2f} s/step: "
            f"**{r['tokens_per_s_ratio']}x** ({rates}) | {r['peak_rss_ratio']}x ({ours['peak_rss_gb']:.2f} vs "
            f"{theirs[r['faster_competitor_setting']]['peak_rss_gb']:.2f} GB) | {peak(r)} | `{r['command']}` |")
    elif "competitor_result" in r:  # the earlier per-step comparisons (TRL defaults only)
        ours, theirs = r["negalign"], r["competitor_result"]
        setting = f"{r['dtype']}, {r['lora']}, batch {r['batch']}, " + (", ".join(r.get("negalign_overrides") or []) or "defaults")
        per_step.append(f"| {r['comparison']} | {r['competitor']} | {setting} | {r['negalign_tokens_per_s']} vs "
                        f"{r['competitor_tokens_per_s']} completion tok/s ({ours['mean_seconds_per_step']:.2f} vs "
                        f"{theirs['mean_seconds_per_step']:.1f} s/step) | **{r['tokens_per_s_ratio']}x** | "
                        f"{r['peak_rss_ratio']}x ({ours['peak_rss_gb']:.2f} vs {theirs['peak_rss_gb']:.2f} GB) | {peak(r)} | "
                        f"`{r['command']}` |")

def section(intro: str, columns: list[str], rows: list[str]) -> str:
    return (f"{intro}\n\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n" + "\n".join(rows))


table = section("End to end (data file to saved weights) against TRL run twice, with its defaults and with its fastest "
                "documented settings; ratios against the faster of the two (by end-to-end time), the steady-state "
                "ratio against each setting in brackets (defaults / fast):",
                ["comparison", "competitor (faster setting)", "work", "end-to-end s (negalign vs TRL defaults / fast)",
                 "end-to-end speed-up", "steady state", "peak RSS ratio", "step FLOP/s vs matmul peak", "command"],
                end_to_end)
table += "\n\n" + section("Generation (generated tokens/s, EOS included; one run per row, each implementation on the "
                          "same prompts one after the other):",
                          ["workload", "prompts x K x new tokens", "negalign", "batched generate (static cache)",
                           "plain loop", "vs batched", "vs plain", "command"], generation)
if serving:
    table += "\n\n" + section("Through a server (benchmarks/serving.py; generated tokens/s, EOS included; the server's "
                              "run, model check and start included in its wall-clock, then negalign's own engine on the "
                              "fp32 weights, one after the other):",
                              ["served model", "prompts x K x new tokens", "server", "negalign", "server / negalign",
                               "wall-clock s (server vs negalign)", "model check", "torch CPU, threads", "command"],
                              serving)
if cost:
    rows = [f"| K = {c['k']}{' (prompts not shared)' if c['unshared'] else ''} | {c['length']} | "
            f"{c['laid_out_tokens_per_step']:.0f} | {c['seconds_per_step']:.2f} | {c['peak_rss_gb']:.2f} |"
            for c in cost["by_k"] + [c for c in cost["by_length"] if c not in cost["by_k"]]]
    table += "\n\n" + section(
        f"D2O step cost (batch {cost['batch']}, prompts at most {cost['prompt_tokens_at_most']} tokens, LoRA r16, "
        f"fp32; `{cost['command']}`; plot: d2o_cost.png). K = 8 over K = 2 step time: "
        f"**{cost['k8_over_k2_step_time']}x**; K = 8 without prompt sharing over with: "
        f"**{cost['k8_unshared_over_shared_step_time']}x**.",
        ["setting", "completion tokens", "laid-out tokens/step", "s/step (median)", "peak RSS GB"], rows)
table += "\n\n" + section("Earlier per-step comparisons (TRL defaults only, first step excluded, reference pass not "
                          "counted; measured on an AVX-512 host):",
                          ["comparison", "competitor", "setting", "throughput (negalign vs competitor)", "speed ratio",
                           "peak RSS ratio", "step FLOP/s vs matmul peak", "command"], per_step)
table += "\n\n" + section("Ablations (negalign alone, same rows; laid-out tokens = tokens through the decoder per "
                          "step):", ["comparison", "setting", "overrides", "s/step (mean)", "peak RSS GB",
                                     "laid-out tokens/step", "command"], ablations)
doc = HERE.parent / "docs" / "benchmarks.md"
doc.write_text(doc.read_text().split("<!-- table -->")[0] + "<!-- table -->\n" + table + "\n")
print(table)

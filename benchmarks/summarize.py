"""Write docs/benchmarks.md: one table row per recorded result in benchmarks/results/*.json."""

import json
from pathlib import Path

HERE = Path(__file__).parent
rows, ablations = [], []
for path in sorted((HERE / "results").glob("*.json")):
    r = json.loads(path.read_text())
    if "ablation" in r:
        n = r["negalign"]
        ablations.append(f"| {r['ablation']} | {r['dtype']}, batch {r['batch']} | {' '.join(r['negalign_overrides']) or 'defaults'} | "
                         f"{n['mean_seconds_per_step']:.2f} | {n['peak_rss_gb']:.2f} | "
                         f"{r['work_per_step']['laid_out']:.0f} | `{r['command']}` |")
        continue
    if "competitor" not in r:  # a measurement, not a comparison (bf16_logps.json)
        continue
    if r.get("benchmark") == "self-sampling throughput":
        rows.append(f"| sampling | {r['competitor']} | - | {r['negalign_tokens_per_s']} vs {r['competitor_tokens_per_s']} "
                    f"generated tok/s | **{r['tokens_per_s_ratio']}x** | - | - | `{r['command']}` |")
        continue
    ours, theirs = r["negalign"], r["competitor_result"]
    setting = f"{r['dtype']}, {r['lora']}, batch {r['batch']}, " + (", ".join(r.get("negalign_overrides") or []) or "defaults")
    rows.append(f"| {r['comparison']} | {r['competitor']} | {setting} | {r['negalign_tokens_per_s']} vs "
                f"{r['competitor_tokens_per_s']} completion tok/s ({ours['mean_seconds_per_step']:.2f} vs "
                f"{theirs['mean_seconds_per_step']:.1f} s/step) | **{r['tokens_per_s_ratio']}x** | "
                f"{r['peak_rss_ratio']}x ({ours['peak_rss_gb']:.2f} vs {theirs['peak_rss_gb']:.2f} GB) | "
                f"{r['matmul_peak_fraction']:.0%} of {max(r['matmul_peak_gflops_fp32'], r['matmul_peak_gflops_bf16']):.0f}"
                f" GFLOP/s ({r['matmul_peak_fraction_bf16']:.0%} of bf16 {r['matmul_peak_gflops_bf16']:.0f}) | "
                f"`{r['command']}` |")
table = ("| comparison | competitor | setting | throughput (negalign vs competitor) | speed ratio | peak RSS ratio | "
         "step FLOP/s vs matmul peak | command |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
table += ("\n\nAblations (negalign alone, same rows; laid-out tokens = tokens through the decoder per step):\n\n"
          "| comparison | setting | overrides | s/step (mean) | peak RSS GB | laid-out tokens/step | command |\n"
          "|---|---|---|---|---|---|---|\n" + "\n".join(ablations))
doc = HERE.parent / "docs" / "benchmarks.md"
doc.write_text(doc.read_text().split("<!-- table -->")[0] + "<!-- table -->\n" + table + "\n")
print(table)

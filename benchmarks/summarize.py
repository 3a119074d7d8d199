"""Write docs/benchmarks.md: one table row per recorded result in benchmarks/results/*.json."""

import json
from pathlib import Path

HERE = Path(__file__).parent
rows = []
for path in sorted((HERE / "results").glob("*.json")):
    r = json.loads(path.read_text())
    if r.get("benchmark") == "self-sampling throughput":
        rows.append(f"| sampling | {r['competitor']} | {r['negalign_tokens_per_s']} vs {r['competitor_tokens_per_s']} "
                    f"generated tok/s | **{r['tokens_per_s_ratio']}x** | - | - | `{r['command']}` |")
    else:
        rows.append(f"| {r['comparison']} | {r['competitor']} | {r['negalign_tokens_per_s']} vs "
                    f"{r['competitor_tokens_per_s']} completion tok/s ({r['negalign']['seconds_per_step']:.1f} vs "
                    f"{r['competitor_result']['seconds_per_step']:.1f} s/step) | **{r['tokens_per_s_ratio']}x** | "
                    f"{r['peak_rss_ratio']}x ({r['negalign']['peak_rss_gb']:.1f} vs "
                    f"{r['competitor_result']['peak_rss_gb']:.1f} GB) | {r['matmul_peak_fraction']:.0%} of "
                    f"{r['matmul_peak_gflops']:.0f} GFLOP/s | `{r['command']}` |")
table = ("| comparison | competitor | throughput (negalign vs competitor) | speed ratio | peak RSS ratio | "
         "matmul peak fraction | command |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows))
text = (Path(HERE.parent / "docs" / "benchmarks.md").read_text().split("<!-- table -->")[0] + "<!-- table -->\n" + table + "\n")
(HERE.parent / "docs" / "benchmarks.md").write_text(text)
print(table)

"""Turn one bench/scale.sh results directory into summary.md (and summary.json).

  python bench/scale_report.py bench/results/scale-<stamp>

Reads r<round>-<small|large><1|2>-<refresh|me>.txt (wrk output, parsed by bench/report.py)
and blocks.jsonl (the purge and the server log per block). Per round each database is
measured twice (small, large, large, small): its figure for the round is the mean of its
two blocks, so that a steady drift of the machine's load cancels out; the ratio of the
round is large / small, and the reported ratio the median over rounds.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import parse_wrk

ENDPOINTS = [("refresh", "refresh_token grant (rotation)"), ("me", "GET /users/me (bearer)")]
LATENCY_GOAL = 1.2      # large / small, p50 and p99: at most
THROUGHPUT_GOAL = 0.85  # large / small, req/s: at least
METRICS = ("rps", "p50_ms", "p99_ms")


def load(results: Path) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    runs = {}
    for path in sorted(results.glob("r*-*.txt")):
        match = re.fullmatch(r"r(\d+)-(small|large)([12])-(refresh|me)\.txt", path.name)
        if match:
            rnd, db, nth, endpoint = match.groups()
            runs[(endpoint, db, int(rnd), int(nth))] = parse_wrk(path.read_text(errors="replace"))
    return runs


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    results = Path(sys.argv[1])
    runs = load(results)
    blocks = [json.loads(line) for line in (results / "blocks.jsonl").read_text().splitlines()
              if line.strip()]
    rounds = sorted({key[2] for key in runs})
    lines: list[str] = []
    meta = (results / "meta.txt").read_text() if (results / "meta.txt").exists() else ""
    lines += ["# Scale (issue 11): large database / small database, ABBA", "", "```",
              meta.strip(), "```", ""]
    grow = results / "grow.txt"
    if grow.exists():
        lines += ["Large database:", "", "```", grow.read_text().strip(), "```", ""]

    summary: dict[str, Any] = {"endpoints": {}, "blocks": blocks}
    failures = 0
    lines += ["## Per measurement", "",
              "| endpoint | round | db | req/s | p50 ms | p99 ms | non-200 / errors |",
              "|---|---:|---|---:|---:|---:|---:|"]
    for endpoint, label in ENDPOINTS:
        for (ep, db, rnd, nth), run in sorted(runs.items(), key=lambda kv: (kv[0][2], kv[0][3],
                                                                            kv[0][1])):
            if ep != endpoint:
                continue
            errors = run.get("errors", "wrk failed") if "rps" in run else "wrk failed"
            if errors != 0:
                failures += 1
            first = f" (first: {run['first_err'][:80]})" if run.get("first_err") else ""
            lines.append(f"| {label} | {rnd} | {db} {nth} | {fmt(run.get('rps'), 0)} | "
                         f"{fmt(run.get('p50_ms'), 2)} | {fmt(run.get('p99_ms'), 2)} | "
                         f"{errors}{first} |")
    lines.append("")

    lines += ["## Large / small", "",
              "| endpoint | small req/s | large req/s | req/s ratio (goal >= 0.85) | "
              "small p50 / p99 ms | large p50 / p99 ms | p50 ratio | p99 ratio (goal <= 1.2) "
              "| per round (req/s, p50, p99) | met |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for endpoint, label in ENDPOINTS:
        per_round: list[dict[str, float]] = []
        figures: dict[str, dict[str, list[float]]] = {"small": {}, "large": {}}
        for rnd in rounds:
            means: dict[str, dict[str, float]] = {}
            for db in ("small", "large"):
                pair = [runs.get((endpoint, db, rnd, nth), {}) for nth in (1, 2)]
                pair = [run for run in pair if run.get("rps")]
                if not pair:
                    break
                means[db] = {m: statistics.mean(run[m] for run in pair) for m in METRICS}
                for m in METRICS:
                    figures[db].setdefault(m, []).append(means[db][m])
            if len(means) == 2:
                per_round.append({m: means["large"][m] / means["small"][m] for m in METRICS})
        if not per_round:
            continue
        ratio = {m: statistics.median(r[m] for r in per_round) for m in METRICS}
        med = {db: {m: statistics.median(v) for m, v in figures[db].items()} for db in figures}
        met = (ratio["rps"] >= THROUGHPUT_GOAL and ratio["p50_ms"] <= LATENCY_GOAL
               and ratio["p99_ms"] <= LATENCY_GOAL)
        rounds_text = "; ".join(f"{r['rps']:.2f}, {r['p50_ms']:.2f}, {r['p99_ms']:.2f}"
                                for r in per_round)
        lines.append(
            f"| {label} | {fmt(med['small']['rps'], 0)} | {fmt(med['large']['rps'], 0)} | "
            f"**{ratio['rps']:.2f}x** | {fmt(med['small']['p50_ms'], 2)} / "
            f"{fmt(med['small']['p99_ms'], 2)} | {fmt(med['large']['p50_ms'], 2)} / "
            f"{fmt(med['large']['p99_ms'], 2)} | **{ratio['p50_ms']:.2f}x** | "
            f"**{ratio['p99_ms']:.2f}x** | {rounds_text} | {'yes' if met else '**no**'} |")
        summary["endpoints"][endpoint] = {"ratio": ratio, "per_round": per_round,
                                          "median": med, "met": met}
    lines.append("")

    lines += ["## The purge alongside", "",
              "| block | purge | seconds | sessions deleted | refresh tokens deleted | "
              "server log errors |", "|---|---|---:|---:|---:|---:|"]
    for b in blocks:
        lines.append(f"| {b['tag']} | {b['purge']} | {fmt(b['purge_seconds'])} | "
                     f"{b['deleted_sessions']:,} | {b['deleted_tokens']:,} | "
                     f"{b['server_log_errors']} |")
    large = [b for b in blocks if b["db"] == "large"]
    lines += ["", f"The purge deleted {sum(b['deleted_sessions'] for b in large):,} sessions "
              f"and {sum(b['deleted_tokens'] for b in large):,} refresh tokens during the "
              f"large blocks; it was still deleting at the end of "
              f"{sum(1 for b in large if b['purge'].startswith('running'))} of "
              f"{len(large)} of them.", ""]
    failures += sum(b["server_log_errors"] for b in blocks)
    lines.append("Every response was a 200 and the server logged no error." if failures == 0
                 else f"**{failures} measurement(s) or block(s) had failures: see above.**")
    summary["failures"] = failures
    text = "\n".join(lines) + "\n"
    (results / "summary.md").write_text(text)
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()

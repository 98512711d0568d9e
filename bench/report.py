"""Turn one bench/run.sh results directory into a table with ratios and target checks.

  python bench/report.py bench/results/<timestamp>

Reads <round>-<name>.txt (wrk output) and <round>-argon2.json; writes summary.md and
summary.json next to them and prints the table. With several rounds every figure is the
median over rounds, and every ratio the median of the per-round ratios (each round
measures the yardstick and provider back to back). The other signing algorithms
(client-credentials-<alg>, refresh-<alg>; run.sh's ALGS) get rows of their own and a
table per algorithm beside RS256 (the unsuffixed rows).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROWS = [
    # name, label
    ("yard-hello", "yardstick GET /hello (bare endpoint)"),
    ("yard-sign", "yardstick POST /sign (RS256 sign only)"),
    ("yard-rotate", "yardstick POST /rotate (minimal rotation)"),
    ("jwks", "provider GET /.well-known/jwks.json"),
    ("client-credentials", "provider client_credentials grant"),
    ("refresh", "provider refresh_token grant (rotation)"),
    ("password", "provider password grant (argon2id)"),
    ("client-credentials-es256", "provider client_credentials grant, ES256"),
    ("refresh-es256", "provider refresh_token grant (rotation), ES256"),
    ("client-credentials-eddsa", "provider client_credentials grant, EdDSA"),
    ("refresh-eddsa", "provider refresh_token grant (rotation), EdDSA"),
    ("client-credentials-ps256", "provider client_credentials grant, PS256"),
    ("refresh-ps256", "provider refresh_token grant (rotation), PS256"),
    ("nop-jwks", "node-oidc-provider GET /jwks (peer)"),
    ("nop-client-credentials", "node-oidc-provider client_credentials grant (peer)"),
    ("nop-refresh", "node-oidc-provider refresh_token grant (peer)"),
]
# provider row, baseline row, target ratio
TARGETS = [
    # Against the yardstick (issue 11's goals; the JWKS's is the floor of earlier issues).
    ("jwks", "yard-hello", 1.2),
    ("client-credentials", "yard-sign", 0.8),
    ("refresh", "yard-rotate", 0.8),
    ("password", "argon2", 0.9),
    # Against the peer (issue 11's goals); rows without peer figures are left out.
    ("jwks", "nop-jwks", 1.1),
    ("client-credentials", "nop-client-credentials", 1.15),
    ("refresh", "nop-refresh", 1.4),
]
# The signing algorithms run.sh can measure beside RS256 (ALGS), by their rows' suffix.
OTHER_ALGS = {"es256": "ES256", "eddsa": "EdDSA", "ps256": "PS256"}
# Rows that are left out of the table when they were not measured (PEER=0, ALGS="").
OPTIONAL_PREFIXES = ("nop-",)
OPTIONAL_SUFFIXES = tuple(f"-{tag}" for tag in OTHER_ALGS)
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}
# Issue 11: p99 at most this many times p50, for every endpoint at 32 connections.
TAIL_LIMIT = 4.0


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_wrk(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": True}
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not match:
        return {"ok": False, "error": "no Requests/sec line (wrk failed?)"}
    out["rps"] = float(match.group(1))
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        out[f"p{pct}_ms"] = to_ms(found.group(1)) if found else None
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+),", text)
    if match:
        out["requests"] = int(match.group(1))
        out["seconds"] = to_ms(match.group(2) + match.group(3)) / 1000
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(g) for g in sock.groups()) if sock else 0
    bad = lost = 0
    first_err = None
    for m in re.finditer(r"thread \S+ ok=(\S+) bad=(\S+) queue_empty=(\S+) first_err=(.*)", text):
        bad += int(m.group(2)) if m.group(2).isdigit() else 0
        lost += int(m.group(3)) if m.group(3).isdigit() else 0
        if m.group(4) != "nil" and first_err is None:
            first_err = m.group(4)[:300]
    out["lua_bad"] = bad
    out["queue_empty"] = lost
    if first_err:
        out["first_err"] = first_err
    cpu = {k: json.loads(v) for k, v in re.findall(r"^# cpu (before|after): (\{.*\})$", text, re.M)}
    if {"before", "after"} <= cpu.keys() and out.get("requests"):
        for part in ("server", "db"):
            before, after = cpu["before"][part], cpu["after"][part]
            spent = sum(max(0.0, v - before.get(pid, 0.0)) for pid, v in after.items())
            out[f"{part}_cpu_ms"] = 1000 * spent / out["requests"]
        # Backends that ended during the run (pool overflow connections) took their CPU
        # figure with them: the db figure is then a lower bound.
        out["db_backends_lost"] = len(set(cpu["before"]["db"]) - set(cpu["after"]["db"]))
        out["cpu_ms"] = out["server_cpu_ms"] + out["db_cpu_ms"]
    out["errors"] = out["non_2xx"] + out["socket_errors"] + bad
    out["ok"] = out["errors"] == 0 and lost == 0
    return out


def load(results: Path) -> tuple[dict[str, dict[int, dict[str, Any]]], list[int]]:
    data: dict[str, dict[int, dict[str, Any]]] = {}
    rounds: set[int] = set()
    for path in sorted(results.glob("r*-*.txt")):
        match = re.fullmatch(r"r(\d+)-(.+)\.txt", path.name)
        if not match or match.group(2).startswith("warm"):
            continue
        rnd, name = int(match.group(1)), match.group(2)
        rounds.add(rnd)
        data.setdefault(name, {})[rnd] = parse_wrk(path.read_text(errors="replace"))
    for path in sorted(results.glob("r*-argon2.json")):
        rnd = int(path.name[1:path.name.index("-")])
        rounds.add(rnd)
        raw = json.loads(path.read_text())
        data.setdefault("argon2", {})[rnd] = {"ok": True, "rps": raw["rate"], "raw": raw,
                                              "cpu_ms": raw.get("cpu_ms"),
                                              "server_cpu_ms": raw.get("cpu_ms")}
    return data, sorted(rounds)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def optional(name: str) -> bool:
    return name.startswith(OPTIONAL_PREFIXES) or name.endswith(OPTIONAL_SUFFIXES)


def per_round_ratios(data: dict[str, dict[int, dict[str, Any]]], rounds: list[int],
                     name: str, base: str, key: str) -> list[float]:
    """name / base of ``key`` in every round that measured both."""
    ratios = []
    for rnd in rounds:
        a = data.get(name, {}).get(rnd, {}).get(key)
        b = data.get(base, {}).get(rnd, {}).get(key)
        if a is not None and b:
            ratios.append(a / b)
    return ratios


def algorithms(data: dict[str, dict[int, dict[str, Any]]], rounds: list[int],
               rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """client_credentials and refresh per signing algorithm: RS256 (the unsuffixed rows)
    and each measured one of OTHER_ALGS, with its ratio to RS256 (per round, then the
    median): req/s, and the CPU-cost ratio (RS256 CPU per request / this one's)."""
    by_name = {row["name"]: row for row in rows}
    out = []
    for tag, alg in [("", "RS256"), *OTHER_ALGS.items()]:
        suffix = f"-{tag}" if tag else ""
        if tag and not any(data.get(f"{grant}{suffix}") for grant in ("client-credentials",
                                                                      "refresh")):
            continue  # not measured in this run
        entry: dict[str, Any] = {"alg": alg}
        for grant in ("client-credentials", "refresh"):
            name = grant + suffix
            row = by_name.get(name, {})
            ratios = per_round_ratios(data, rounds, name, grant, "rps")
            costs = [1 / r for r in per_round_ratios(data, rounds, name, grant, "cpu_ms") if r]
            entry[grant] = {
                "row": name, "rps": row.get("rps"), "server_cpu_ms": row.get("server_cpu_ms"),
                "db_cpu_ms": row.get("db_cpu_ms"),
                "ratio": median(ratios), "per_round": [round(r, 3) for r in ratios],
                "cpu_ratio": median(costs),
            }
        out.append(entry)
    return out


def summarise(results: Path) -> dict[str, Any]:
    data, rounds = load(results)
    rows = []
    argon2_row = ("argon2", "raw argon2id verify, 2 threads (m=19456 KiB, t=2, p=1)")
    for name, label in [*ROWS, argon2_row]:
        per = data.get(name, {})
        good = [r for r in per.values() if "rps" in r]
        rows.append({
            "name": name, "label": label,
            "rps": median([r["rps"] for r in good]),
            "p50_ms": median([r["p50_ms"] for r in good if r.get("p50_ms") is not None]),
            "p99_ms": median([r["p99_ms"] for r in good if r.get("p99_ms") is not None]),
            "server_cpu_ms": median([r["server_cpu_ms"] for r in good if "server_cpu_ms" in r]),
            "db_cpu_ms": median([r["db_cpu_ms"] for r in good if "db_cpu_ms" in r]),
            "errors": sum(r.get("errors", 0) for r in per.values()),
            "queue_empty": sum(r.get("queue_empty", 0) for r in per.values()),
            "first_err": next((r["first_err"] for r in per.values() if "first_err" in r), None),
            "all_ok": bool(per) and all(r.get("ok") for r in per.values()),
            "per_round": {str(k): v.get("rps") for k, v in sorted(per.items())},
        })
    targets = []
    for name, base, goal in TARGETS:
        if base.startswith("nop-") and not data.get(base):
            continue  # the peer was skipped
        ratios = per_round_ratios(data, rounds, name, base, "rps")
        ratio = median(ratios)
        # The same comparison in CPU per request (server + its PostgreSQL backends):
        # baseline cost / provider cost. Steadier than req/s when others load the machine.
        costs = []
        for rnd in rounds:
            a = data.get(name, {}).get(rnd, {}).get("cpu_ms")
            b = data.get(base, {}).get(rnd, {}).get("cpu_ms")
            if a and b:
                costs.append(b / a)
        targets.append({"provider": name, "baseline": base, "target": goal,
                        "ratio": ratio, "per_round": [round(r, 3) for r in ratios],
                        "cpu_ratio": median(costs), "met": ratio is not None and ratio >= goal})
    meta_path = results / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return {"results": str(results), "rounds": rounds, "meta": meta, "rows": rows,
            "targets": targets, "algorithms": algorithms(data, rounds, rows)}


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| endpoint | req/s | p50 ms | p99 ms | non-200 | CPU ms/req server + db |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in summary["rows"]:
        if optional(row["name"]) and row["rps"] is None:
            continue  # the peer or that algorithm was skipped
        if row["name"] == "argon2":
            lines.append(f"| {row['label']} | {fmt(row['rps'], 1)} verifies/s | | | | "
                         f"{fmt(row['server_cpu_ms'], 2)} per verify |")
            continue
        errors = str(row["errors"]) + ("" if row["all_ok"] else " (!)")
        lines.append(f"| {row['label']} | {fmt(row['rps'])} | {fmt(row['p50_ms'], 2)} | "
                     f"{fmt(row['p99_ms'], 2)} | {errors} | "
                     f"{fmt(row['server_cpu_ms'], 2)} + {fmt(row['db_cpu_ms'], 2)} |")
    # Provider's own endpoints on the default configuration (RS256), as the goal says.
    tails = [(row["label"], row["p99_ms"] / row["p50_ms"]) for row in summary["rows"]
             if row["name"] != "argon2" and not row["name"].startswith(("yard-", "nop-"))
             and not row["name"].endswith(OPTIONAL_SUFFIXES)
             and row.get("p50_ms") and row.get("p99_ms")]
    if tails:
        worst = max(tails, key=lambda tail: tail[1])
        over = [label for label, ratio in tails if ratio > TAIL_LIMIT]
        lines += ["", f"provider p99 / p50 (goal <= {TAIL_LIMIT:g}x): worst {worst[1]:.1f}x "
                  f"({worst[0]}); "
                  + (f"**over the goal: {', '.join(over)}**" if over else "every row within")]
    lines += ["", "| target | req/s ratio (median) | per round | goal | met | CPU-cost ratio |",
              "|---|---:|---|---:|---|---:|"]
    for t in summary["targets"]:
        cpu_ratio = "" if t["cpu_ratio"] is None else f"{t['cpu_ratio']:.2f}x"
        lines.append(
            f"| {t['provider']} / {t['baseline']} | {fmt(t['ratio'], 2)}x | "
            f"{', '.join(f'{r:.2f}' for r in t['per_round'])} | >= {t['target']}x | "
            f"{'yes' if t['met'] else '**no**'} | {cpu_ratio} |")
    algs = summary.get("algorithms", [])
    if len(algs) > 1:
        lines += ["", "Per signing algorithm (ratios to RS256: per round, then the median; "
                  "CPU ms/req server + db; CPU-cost ratio = RS256 CPU per request / this one's):",
                  "",
                  "| algorithm | client_credentials req/s | CPU ms/req | / RS256 (per round) "
                  "| CPU-cost | refresh req/s | CPU ms/req | / RS256 (per round) | CPU-cost |",
                  "|---|---:|---:|---|---:|---:|---:|---|---:|"]
        for entry in algs:
            cells = [entry["alg"]]
            for grant in ("client-credentials", "refresh"):
                g = entry[grant]
                rounds = ", ".join(f"{r:.2f}" for r in g["per_round"])
                cpu_ratio = "" if g["cpu_ratio"] is None else f"{g['cpu_ratio']:.2f}x"
                versus = f"{fmt(g['ratio'], 2)}x ({rounds})"
                if entry["alg"] == "RS256":
                    versus = cpu_ratio = ""  # the baseline itself
                cells += [fmt(g["rps"]),
                          f"{fmt(g['server_cpu_ms'], 2)} + {fmt(g['db_cpu_ms'], 2)}",
                          versus, cpu_ratio]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    summary = summarise(results)
    text = markdown(summary)
    (results / "summary.md").write_text(text)
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    for row in summary["rows"]:
        if optional(row["name"]) and row["rps"] is None:
            continue
        if not row["all_ok"] and row["name"] != "argon2":
            print(f"WARNING: {row['name']}: {row['errors']} non-200/errors, "
                  f"{row['queue_empty']} requests reused a token (queue empty); "
                  f"first error: {row['first_err']}")


if __name__ == "__main__":
    main()

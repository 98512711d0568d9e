"""A/B of two source trees of provider, served in turn, in the bench's own regime.

  python bench/ab.py --a /path/to/old --b /path/to/new [--pairs 6] [--seconds 8]
                     [--endpoints jwks,cc,refresh] [--out results.json]

Both trees run as ``provider serve --workers 2`` on one seeded database (bench/seed.py
setup), with wrk ``-t2 -c32`` on the same two cores, as every row of run.sh is measured.
Trials go in ABBA order, so that a machine drifting during the run weighs on both sides
alike. Per trial and endpoint: requests a second, the workers' CPU per request (utime +
stime of the server's process tree), and the whole machine's busy CPU per request (every
core, from /proc/stat: the server, wrk and the kernel's network work on both ends), which
is what a change in how answers are written moves when the server's own CPU does not.
The refresh grant rotates tokens issued for it (bench/seed.py tokens) before each wrk run,
its warm-up included, so no run presents a token another run rotated.

Servers bind 127.0.0.1, live under ``timeout``, and are stopped by their PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cpu import cpu_seconds, tree  # noqa: E402

SHARED = Path(os.environ.get("SHARED_BENCH", HERE.parent.parent / "shared" / "bench"))
PORT = 8097


def machine_busy() -> tuple[float, float]:
    """(busy, total) seconds of every core so far, from /proc/stat's first line."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / ticks, sum(fields[:8]) / ticks


def source_tree(path: str) -> str:
    """An absolute tree holding the provider package: anything else would silently
    import the installed one, and the A/B would measure one tree twice."""
    tree_path = Path(path).resolve()
    if not (tree_path / "provider" / "__init__.py").is_file():
        raise SystemExit(f"{path}: no provider package there")
    return str(tree_path)


def serve(tree_path: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    venv = Path(sys.executable).parent
    with open(cwd / "server.log", "ab") as log:
        process = subprocess.Popen(
            ["timeout", "--kill-after=10", "600", str(venv / "provider"), "serve",
             "--host", "127.0.0.1", "--port", str(PORT), "--workers", "2"],
            env={**env, "PYTHONPATH": tree_path}, cwd=cwd, stdout=subprocess.DEVNULL,
            stderr=log, start_new_session=True)
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/.well-known/jwks.json",
                                        timeout=2):
                return process
        except OSError:
            if process.poll() is not None:
                log = cwd / "server.log"
                raise SystemExit(f"server from {tree_path} died; see {log}") from None
            time.sleep(0.25)
    stop(process)
    raise SystemExit(f"server from {tree_path} not ready")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wrk(url: str, seconds: float, script: str | None, env: dict[str, str]) -> int:
    args = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--timeout", "10s"]
    if script:
        args += ["-s", str(SHARED / script)]
    out = subprocess.run([*args, url], env=env, capture_output=True, text=True,
                         check=True).stdout
    match = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses|Socket errors", out)
    if not match or errors:
        raise SystemExit(f"wrk: no count, or failed answers:\n{out}")
    return int(match.group(1))


Tokens = Callable[[str], dict[str, str]]


def no_tokens(_name: str) -> dict[str, str]:
    return {}


def refresh_tokens(db_url: str, work: Path, count: int) -> Tokens:
    """Fresh refresh tokens for one wrk run: the env that names their file."""
    def issue(name: str) -> dict[str, str]:
        path = work / f"rt-{name}.txt"
        subprocess.run([sys.executable, str(HERE / "seed.py"), "tokens", "--db-url", db_url,
                        "--config", str(work / "bench.json"), "--count", str(count),
                        "--out", str(path)], cwd=work, check=True, stdout=subprocess.DEVNULL)
        return {"RT_FILE": str(path)}
    return issue


def trial(process: subprocess.Popen[bytes], url: str, seconds: float, script: str | None,
          env: dict[str, str], tokens: Tokens = no_tokens) -> dict[str, float]:
    wrk(url, 2, script, {**env, **tokens("warm")})  # warm-up, not counted
    env = {**env, **tokens("measured")}
    pids = tree(process.pid)
    server_before = sum(cpu_seconds(p) for p in pids)
    busy_before, total_before = machine_busy()
    started = time.perf_counter()
    count = wrk(url, seconds, script, env)
    elapsed = time.perf_counter() - started
    busy_after, total_after = machine_busy()
    server_after = sum(cpu_seconds(p) for p in tree(process.pid))
    return {"rps": count / elapsed,
            "server_us": 1e6 * (server_after - server_before) / count,
            "machine_us": 1e6 * (busy_after - busy_before) / count,
            "machine_busy": (busy_after - busy_before) / (total_after - total_before)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="source tree A (the old one)")
    parser.add_argument("--b", required=True, help="source tree B (the new one)")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--endpoints", default="jwks,cc", help="of jwks, cc, refresh")
    parser.add_argument("--refresh-tokens", type=int, default=5000,
                        help="refresh tokens issued for each wrk run of the refresh grant")
    parser.add_argument("--db-url", default="postgresql://postgres@127.0.0.1:5432/provider_ab_bench")
    parser.add_argument("--work", default="/tmp/provider-ab")
    parser.add_argument("--out")
    args = parser.parse_args()

    trees = {"A": source_tree(args.a), "B": source_tree(args.b)}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(HERE / "seed.py"), "setup", "--db-url", args.db_url,
                    "--keys-dir", str(work / "keys"), "--out", str(work / "bench.json")],
                   cwd=work, check=True, stdout=subprocess.DEVNULL)
    config = json.loads((work / "bench.json").read_text())
    # As run.sh: the caller's PROVIDER_* settings stay out of the servers.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PROVIDER_")},
           "DATABASE_URL": args.db_url, "PROVIDER_KEYS_DIR": str(work / "keys"),
           "PROVIDER_ISSUER": f"http://127.0.0.1:{PORT}",
           "FORM_BODY": config["client_credentials_form"], "BASIC_AUTH": config["basic_auth"]}
    base = f"http://127.0.0.1:{PORT}"
    endpoints = {"jwks": (f"{base}/.well-known/jwks.json", None),
                 "cc": (f"{base}/oauth/token", "post_form.lua"),
                 "refresh": (f"{base}/oauth/token", "refresh_rotate.lua")}
    tokens = {"refresh": refresh_tokens(args.db_url, work, args.refresh_tokens)}
    chosen = [e for e in args.endpoints.split(",") if e]
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        e: {"A": [], "B": []} for e in chosen}
    order = [side for pair in range(args.pairs) for side in (("A", "B") if pair % 2 == 0
                                                             else ("B", "A"))]
    for number, side in enumerate(order, 1):
        process = serve(trees[side], env, work)
        try:
            for endpoint in chosen:
                url, script = endpoints[endpoint]
                figures = trial(process, url, args.seconds, script, env,
                                tokens.get(endpoint, no_tokens))
                results[endpoint][side].append(figures)
                print(f"{number:2d} {side} {endpoint:7s} {figures['rps']:9.0f} req/s  "
                      f"server {figures['server_us']:6.1f} µs  machine "
                      f"{figures['machine_us']:6.1f} µs/req  busy {figures['machine_busy']:.2f}",
                      flush=True)
        finally:
            stop(process)
    print()
    for endpoint in chosen:
        for key in ("rps", "server_us", "machine_us"):
            a = statistics.median(t[key] for t in results[endpoint]["A"])
            b = statistics.median(t[key] for t in results[endpoint]["B"])
            print(f"{endpoint:7s} {key:10s} A {a:9.1f}  B {b:9.1f}  B/A {b / a:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Raw argon2id verify rate at the configured parameters: the ceiling of the password grant.

  python bench/argon2_rate.py [--seconds 10] [--threads 2] [--json OUT]

The parameters come from provider's Settings (PROVIDER_ARGON2_* or the production
defaults m=19456 KiB, t=2, p=1); the verifier is pwdlib's Argon2Hasher, the one the
provider uses. argon2-cffi releases the GIL, so N threads use N cores; the run stops
after --seconds (each thread finishes the verification it is in).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from pwdlib.hashers.argon2 import Argon2Hasher

from provider.settings import Settings

PASSWORD = "bench-Quiet-Harbor-Lantern-42"  # not a secret: a throwaway bench user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()

    settings = Settings()
    hasher = Argon2Hasher(memory_cost=settings.argon2_memory_cost,
                          time_cost=settings.argon2_time_cost,
                          parallelism=settings.argon2_parallelism)
    stored = hasher.hash(PASSWORD)
    assert hasher.verify(PASSWORD, stored)

    counts = [0] * args.threads
    start = threading.Barrier(args.threads + 1)
    deadline = 0.0

    def work(i: int) -> None:
        start.wait()
        while time.perf_counter() < deadline:
            hasher.verify(PASSWORD, stored)
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    cpu_began = time.process_time()
    deadline = began + args.seconds
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    total = sum(counts)
    result = {
        "parameters": {"memory_cost_kib": settings.argon2_memory_cost,
                       "time_cost": settings.argon2_time_cost,
                       "parallelism": settings.argon2_parallelism},
        "hash_prefix": stored[: stored.rindex("$", 0, stored.rindex("$")) + 1],
        "threads": args.threads,
        "seconds": round(elapsed, 3),
        "verifies": total,
        "rate": round(total / elapsed, 2),
        "per_thread_ms": round(1000 * elapsed * args.threads / total, 2) if total else None,
        # CPU per verification: steadier than the rate when other work shares the cores.
        "cpu_ms": round(1000 * cpu / total, 2) if total else None,
    }
    print(f"argon2id {result['hash_prefix']} {args.threads} threads: {total} verifies in "
          f"{elapsed:.2f}s = {result['rate']:.1f}/s ({result['per_thread_ms']} ms each, "
          f"{result['cpu_ms']} ms CPU each)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

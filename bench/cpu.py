"""CPU time used by a server's process tree and by its PostgreSQL backends.

  python bench/cpu.py ROOT_PID [DATABASE_URL]

Prints one JSON object: {"server": {pid: s}, "db": {pid: s}}, the user+system CPU
seconds so far of ROOT_PID and every descendant, and of each PostgreSQL backend connected
to the URL's database (same machine; our own query's backend excluded). run.sh takes it before
and after each wrk run: CPU per request is much steadier than req/s on a shared, noisy
machine, because time spent waiting for other people's processes is not counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after its closing ')'.
    return raw[raw.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12).
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


async def backends(url: str) -> list[int]:
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    con = await asyncpg.connect(parsed.render_as_string(hide_password=False))
    try:
        rows = await con.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            parsed.database)
    finally:
        await con.close()
    return [row["pid"] for row in rows]


def main() -> None:
    root = int(sys.argv[1])
    server = {pid: cpu_seconds(pid) for pid in tree(root)}
    db = {}
    if len(sys.argv) > 2 and sys.argv[2]:
        db = {pid: cpu_seconds(pid) for pid in asyncio.run(backends(sys.argv[2]))}
    print(json.dumps({"server": server, "db": db}))


if __name__ == "__main__":
    main()

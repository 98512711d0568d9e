"""What create_app does to the process it runs in, checked in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, gc, json
from provider.app import create_app

freezes = []
freeze = gc.freeze
gc.freeze = lambda: (freezes.append(1), freeze())[1]

async def main():
    counts = [gc.get_freeze_count()]
    for _ in range(2):
        app = create_app()
        async with app.router.lifespan_context(app):
            counts.append(gc.get_freeze_count())
    print(json.dumps([len(freezes), *counts]))

asyncio.run(main())
"""


def test_the_first_app_to_start_hides_startup_objects_from_the_garbage_collector(
    keys_dir: Path, tmp_path: Path
) -> None:
    """Each full collection walked everything startup made (70-95 ms with the loop
    stopped, bench/README.md): the first app to start freezes it, once per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVIDER_")}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path}/app.db", PROVIDER_ENV="test",
               PROVIDER_KEYS_DIR=str(keys_dir), PROVIDER_ISSUER="http://127.0.0.1:8000")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    freezes, before, first, second = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == 0
    assert first > 50_000  # the modules, the app, its routes and services
    assert freezes == 1  # the second app froze nothing more
    assert second <= first  # (frozen objects still go when nothing refers to them)

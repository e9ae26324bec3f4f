"""How fast a route change reaches the delivery engine's router: a route added by the CLI (another process,
seen through the store's change version, read every second) and one added through the admin API (this
process: live when the answer arrives). A real App on free loopback ports, 5 changes each.

    .venv/bin/python bench/routes_live.py
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.admin_support import running  # noqa: E402
from tests.peers.relaybox_proc import write_config  # noqa: E402


async def main() -> None:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="routes-live-"))
    async with running(tmp) as (app, api):
        cfg = tmp / "relaybox.toml"
        write_config(str(cfg), {"smtp": {"hostname": "relay.test"},
                                "storage": {"path": app.settings.relay.storage.path}})
        cli, rest = [], []
        for i in range(5):
            p = await asyncio.create_subprocess_exec(sys.executable, "-m", "relaybox.cli", "-c", str(cfg),
                                                     "routes", "add", f"cli{i}", "--host", "127.0.0.1",
                                                     "--no-test", cwd=ROOT, stdout=asyncio.subprocess.DEVNULL)
            await p.wait()
            t = time.monotonic()
            while app.routes.router.get(f"cli{i}") is None:
                await asyncio.sleep(0.005)
            cli.append(time.monotonic() - t)
            t = time.monotonic()
            await api.call("POST", "/api/v1/routes?validate=skip",
                           json={"name": f"api{i}", "host": "127.0.0.1"})
            assert app.routes.router.get(f"api{i}") is not None
            rest.append(time.monotonic() - t)
    print(f"CLI change -> live router (after the CLI exits): median {statistics.median(cli) * 1000:.0f} ms,"
          f" max {max(cli) * 1000:.0f} ms")
    print(f"API POST -> live router when the answer arrives: median {statistics.median(rest) * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())

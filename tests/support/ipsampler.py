"""Runs as its own process (started by tests/support/cluster.py): every `interval` seconds, read over netlink which
of the given hosts have `ip` bound, and print one line per sample, `<CLOCK_MONOTONIC> <holders or ->` (holders
comma-separated). A process of its own, at a raised priority, so that the test process's threads and the
subprocesses it spawns cannot delay a sample by holding the GIL.

    python ipsampler.py INTERVAL FAMILY IP NAME=NETNS...
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from pyroute2 import IPRoute


def main() -> None:
    interval, family, ip = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    hosts = dict(arg.split("=", 1) for arg in sys.argv[4:])
    with contextlib.suppress(OSError):
        os.nice(-10)  # root only; the samples are tiny, but they must be on time
    sockets = {name: IPRoute(netns=ns) for name, ns in hosts.items()}
    try:
        while True:
            at = time.monotonic()
            holders = [
                name
                for name, ipr in sockets.items()
                if any(a.get("IFA_ADDRESS") == ip for a in ipr.get_addr(family=family))
            ]
            print(f"{at:.4f} {','.join(holders) or '-'}", flush=True)
            time.sleep(max(0.0, interval - (time.monotonic() - at)))
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        for ipr in sockets.values():
            ipr.close()


if __name__ == "__main__":
    main()

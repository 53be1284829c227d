"""The compose stack's client: asks the common IP twice a second which node answers, and prints each answer.

The demo application (examples/webapp.py) answers with its node name and the fencing epoch it was started with,
so a failover shows as a few "(no answer)" lines and then the other node with a higher epoch.
"""

from __future__ import annotations

import argparse
import time
import urllib.request
from datetime import UTC, datetime


def ask(url: str, timeout: float) -> str:
    """The application's answer, or why there was none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode("utf-8", "replace").strip())
    except OSError as exc:
        return f"(no answer: {getattr(exc, 'reason', exc)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://172.28.50.100:8080/", help="the common IP's application URL")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between two questions")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for an answer")
    args = parser.parse_args()
    while True:
        started = time.monotonic()
        answer = ask(args.url, args.timeout)
        print(f"{datetime.now(UTC):%H:%M:%S.%f}"[:-3] + f"  {args.url} -> {answer}", flush=True)
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    main()

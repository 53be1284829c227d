"""The status page in a real headless browser (Debian's chromium) on the namespace test bed: http.token taken once
from the URL and kept in a cookie, the holder shown on the same URL changing after a failover, a screenshot."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import IN_CI
from tests.support.cluster import Cluster, assert_never_two_holders, clusters, served_by
from tests.support.netns import Host, Lan, wait_for

TTL, HEARTBEAT = 4, 1
TOKEN = "browser-token-4f2a9c1e7b"


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if IN_CI:
            pytest.fail("chromium is missing: scripts/bootstrap.sh installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def browse(host: Host, url: str, screenshot: str | None = None) -> str:
    """The DOM chromium renders for `url`, run inside `host`'s namespace with a fresh profile."""
    with tempfile.TemporaryDirectory(prefix="fos-chromium-") as profile:
        argv = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--window-size=1100,760",
        ]
        argv += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        out = host.run(*argv, url, check=False, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout


def holder_shown(dom: str) -> str | None:
    m = re.search(r"<b id=\"holder\">([^<]*)</b>", dom)
    return m.group(1) if m else None


@pytest.fixture
def make_cluster(lan: Lan) -> Iterator[Callable[..., Cluster]]:
    with clusters(lan, ttl=TTL, heartbeat=HEARTBEAT) as make:
        yield make


def test_the_page_in_chromium_shows_the_new_holder_after_a_failover(make_cluster: Callable[..., Cluster]) -> None:
    chromium()
    c = make_cluster("sqlite", token=TOKEN)
    c.active_pair()
    page = f"http://{c.m2.ip}:8470/"
    assert "401" in browse(c.client, page), "without the token the page is refused"
    before = browse(c.client, f"{page}?token={TOKEN}")
    assert holder_shown(before) == "m1" and "m2 (this page)" in before
    killed = time.monotonic()
    c.kill_agent("m1", with_app=True)
    served_by(c, "m2", killed, TTL + 10)

    def page_with_m2_holding() -> str | None:
        dom = browse(c.client, f"{page}?token={TOKEN}")
        return dom if holder_shown(dom) == "m2" else None

    after = wait_for(page_with_m2_holding, 30, 0.5, "the page to show m2 holding")
    assert "fault: the holder&#x27;s lease expired" in after or "fault: the holder's lease expired" in after
    assert TOKEN not in after
    shot = os.path.join(c.work, "status-page.png")
    browse(c.client, f"{page}?token={TOKEN}", screenshot=shot)
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    if target := os.environ.get("FOS_SCREENSHOT_TO"):  # how docs/status-page.png was made
        shutil.copy(shot, target)
    assert_never_two_holders(c)
    print(f"page checked with {sys.executable}'s test bed and {chromium()}")

"""`fos doctor`'s checks, each on its pass and its fail path, and the preflight defects found by a new user
(`fos check-ip` outside the interface's subnet)."""

from __future__ import annotations

import sys
from typing import Any

import pytest

FOS = [sys.executable, "-m", "agent"]


@pytest.mark.netns
def test_check_ip_refuses_an_address_outside_the_interfaces_subnet(lan: Any) -> None:
    m1 = lan.add_host("m1")  # eth0 is on 10.213.0.0/24; nobody answers for 10.99.0.50, but the agent refuses it
    outside = m1.run(*FOS, "check-ip", "10.99.0.50", "--interface", "eth0", "--timeout", "0.3", check=False)
    assert outside.returncode == 2, outside.stdout
    assert "10.99.0.50 is not in a subnet of eth0 (its IPv4 subnets: 10.213.0.0/24)" in outside.stderr
    assert outside.stderr.count("\n") == 1 and outside.stdout == ""
    inside = m1.run(*FOS, "check-ip", "10.213.0.50", "--interface", "eth0", "--timeout", "0.3", check=False)
    assert inside.returncode == 0 and "is free" in inside.stdout

"""Runs inside the client's namespace: GET the common IP every `interval` seconds and print one line per
attempt, `<CLOCK_MONOTONIC> <answer or ->`. CLOCK_MONOTONIC is the same clock in every network namespace."""

from __future__ import annotations

import socket
import sys
import time


def ask(ip: str, port: int, timeout: float) -> str:
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.sendall(f"GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        body = data.split(b"\r\n\r\n", 1)[-1].decode().strip()
        return body.split()[0] if body else "-"
    except OSError:
        return "-"


def main() -> None:
    ip, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    while True:
        started = time.monotonic()
        answer = ask(ip, port, 0.2)
        print(f"{started:.4f} {answer}", flush=True)
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


if __name__ == "__main__":
    main()

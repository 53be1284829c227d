"""Runs inside the client's namespace: GET the common IP every `interval` seconds and print one line per
attempt, `<CLOCK_MONOTONIC> <answer or ->` (the time the attempt began). CLOCK_MONOTONIC is the same clock in every
network namespace. Attempts start on schedule in threads of their own, as users' requests would: one that hangs
(sent while nobody had the address: up to the 0.2 s timeout) does not hold back the next, so the first answer from
a new node is seen within `interval` of the address coming up. Lines may therefore come out of time order."""

from __future__ import annotations

import socket
import sys
import threading
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


PRINT = threading.Lock()


def attempt(ip: str, port: int, started: float) -> None:
    answer = ask(ip, port, 0.2)
    with PRINT:
        print(f"{started:.4f} {answer}", flush=True)


def main() -> None:
    ip, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    due = time.monotonic()
    while True:
        started = time.monotonic()
        threading.Thread(target=attempt, args=(ip, port, started), daemon=True).start()
        due = max(due + interval, started)
        time.sleep(max(0.0, due - time.monotonic()))


if __name__ == "__main__":
    main()

"""Slow-loris clients against the service: do real searches still get through, and how soon after they leave?

    python benchmarks/bench_slow_clients.py --artifacts artifacts [--clients 30] [--seconds 60]

Starts ``imgsim serve``'s application under uvicorn on 127.0.0.1 for a fitted bundle, opens
``--clients`` connections that send a search's headers (a 100 kB body declared) and then its body
at one byte a second (each one that the service lets go is opened again at once, as an attacker
would, so ``--clients`` trickle all the time), and meanwhile sends a real search (by id) every half
second for ``--seconds``, after 5 searches that warm the service up; then closes the slow
connections and sends 10 more searches. Prints the statuses and latencies of the real searches
(median, 95th percentile, worst), how often slow connections were told 408 and after how long, and
writes the figures to docs/BENCHMARKS.md. Targets (issue 29): every
real search answered 200 within 1 s throughout, and normal again within 5 searches of the close.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from benchmarks.report import machine, write_section  # noqa: E402
from helpers import serve_app  # noqa: E402
from pipeline.bundle.artifacts import Bundle  # noqa: E402
from pipeline.search.searcher import Searcher  # noqa: E402

HEADERS = (b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Content-Length: 100000\r\n\r\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    searcher = Searcher(Bundle.load(args.artifacts), batch_window_ms=5.0)
    for url in serve_app(searcher):
        port = int(url.rsplit(":", 1)[1])
        ids = searcher.catalog.ids
        with httpx.Client(timeout=30) as client:
            for number in range(5):  # the service's first searches load its kernels: not the slow clients' doing
                client.post(f"{url}/api/search", json={"id": ids[number % len(ids)], "n": 10})

        def opened() -> tuple[socket.socket, float]:
            connection = socket.create_connection(("127.0.0.1", port))
            connection.sendall(HEADERS)
            connection.setblocking(False)
            return connection, time.monotonic()

        slow = [opened() for _ in range(args.clients)]
        told: list[float] = []  # how long each slow connection that was told 408 had trickled
        started = time.monotonic()
        stop = threading.Event()

        def drip() -> None:
            while not stop.wait(1.0):
                for number, (connection, since) in enumerate(slow):
                    try:
                        answer = connection.recv(16)
                        if answer.startswith(b"HTTP/1.1 408") or not answer:
                            told.append(time.monotonic() - since)
                            connection.close()
                            slow[number] = opened()
                            continue
                    except BlockingIOError:
                        pass
                    try:
                        connection.send(b" ")
                    except OSError:
                        connection.close()
                        slow[number] = opened()

        dripping = threading.Thread(target=drip, daemon=True)
        dripping.start()
        during = []
        with httpx.Client(timeout=30) as client:
            while time.monotonic() - started < args.seconds:
                asked = time.monotonic()
                answer = client.post(f"{url}/api/search", json={"id": ids[len(during) % len(ids)], "n": 10})
                during.append((answer.status_code, time.monotonic() - asked, asked - started))
                time.sleep(max(0.0, 0.5 - (time.monotonic() - asked)))
            stop.set()
            dripping.join()
            for connection, _ in slow:
                connection.close()
            after = []
            for number in range(10):
                asked = time.monotonic()
                answer = client.post(f"{url}/api/search", json={"id": ids[number % len(ids)], "n": 10})
                after.append((answer.status_code, time.monotonic() - asked))
    report(args, during, after, told)


def report(args: argparse.Namespace, during: list, after: list, told: list[float]) -> None:
    latencies = sorted(seconds * 1000 for _, seconds, _ in during)
    statuses = {status: sum(1 for s, *_ in during if s == status) for status in sorted({s for s, *_ in during})}
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    slow_ok = sum(1 for status, seconds, _ in during if status == 200 and seconds < 1.0)
    normal_after = next((number + 1 for number, (status, seconds) in enumerate(after)
                         if status == 200 and seconds * 1000 <= 2 * statistics.median(latencies)), None)
    told_at = sorted(told)
    lines = [
        f"- {len(during)} real searches (by id, one every 0.5 s, after 5 that warm the service up) during "
        f"{args.seconds:.0f} s beside {args.clients} slow-loris connections at all times (a search's headers, then "
        f"its 100 kB body at 1 byte a second; each one let go is opened again at once)",
        f"- statuses: {', '.join(f'{status}: {count}' for status, count in statuses.items())}; answered 200 within "
        f"1 s: {slow_ok} of {len(during)}",
        f"- latency: median {statistics.median(latencies):.1f} ms, 95th percentile {p95:.1f} ms, worst "
        f"{latencies[-1]:.1f} ms",
        f"- slow connections told 408 and let go: {len(told_at)}"
        + (f", each after {told_at[0]:.1f} to {told_at[-1]:.1f} s of trickling (the grace of 10 s plus 1 s per 16 "
           f"KiB received; the drip looks once a second)" if told_at else ""),
        f"- after they closed, the searches were normal (200, within twice the median) from search "
        f"{normal_after} of 10 on; statuses {[status for status, _ in after]}",
    ]
    print("\n".join(lines))
    write_section("slow_clients", "## Slow clients (slow-loris) beside real searches\n\n"
                  f"`python benchmarks/bench_slow_clients.py --artifacts DIR --clients {args.clients} --seconds "
                  f"{args.seconds:.0f}` ({machine()}; the bundle: {Bundle.load(args.artifacts).manifest.images} "
                  "images). Targets (issue 29): every real search 200 within 1 s throughout; normal within 5 "
                  "searches of the close.\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()

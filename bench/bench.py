#!/usr/bin/env python3
"""Reproduce the README's performance numbers.

    python3 bench/bench.py                 # everything below, ~6 minutes
    python3 bench/bench.py --only core     # one part: throughput, scaling, memory, startup, core

throughput  pixel.py side by side with its peers (uvicorn + httptools + uvloop, nginx
            empty_gif, a naive http.server), run by the workspace's shared compare.py
            (../shared/bench/compare.py; it installs wrk, nginx and uvicorn for itself):
            keep-alive with the docs' track pixel, keep-alive with a dot-notation page
            pixel, and one request per connection.
memory      RSS of a pixel.py process at rest and with 1,000 idle keep-alive connections.
startup     milliseconds from starting `python3 pixel.py` to its first accepted connection,
            with this interpreter and with /usr/bin/python3 if that is another one, each
            next to the interpreter's own start-up (`python3 -c pass`).
scaling     pixel.py and the uvicorn peer at 1, 4, 10 and 50 keep-alive connections (wrk),
            to show where a thread per connection stops scaling.
core        microseconds per event for decode + validate + enrich + serialise of the docs'
            example, in this process.

Only the standard library is needed here; pixel.py itself never needs more.
"""

import argparse
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
PIXEL_PY = os.path.join(PROJECT, "pixel.py")
COMPARE = os.path.join(PROJECT, "..", "shared", "bench", "compare.py")
DOCS_QUERY = ("data=eyJ3cml0ZUtleSI6ICJZT1VSX1dSSVRFX0tFWSIsICJ1c2VySWQiOiAiMDI1cGlrYWNodTAyNSIs"
              "ICJldmVudCI6ICJFbWFpbCBPcGVuZWQiLCAicHJvcGVydGllcyI6IHsgICAic3ViamVjdCI6ICJUaGUg"
              "RWxlY3RyaWMgRGFpbHkiLCAgICJlbWFpbCI6ICJwZWVrQXRNZUBlbWFpbC5wb2tlIiB9fQ")
PAGE_TARGET = ("/v1/pixel/page?anonymousId=a7f3c2&name=Pricing&properties.url=https%3A%2F%2F"
               "example.com%2Fpricing&properties.referrer=newsletter&writeKey=k")


def throughput(rounds, duration):
    if not os.path.exists(COMPARE):
        sys.exit("throughput needs the workspace's shared compare.py at " + COMPARE)
    runs = [("keep-alive, docs' track pixel", []),
            ("keep-alive, dot-notation page pixel", ["--target", PAGE_TARGET]),
            ("one request per connection", ["--mode", "close", "--connections", "20"])]
    for title, extra in runs:
        command = [sys.executable, COMPARE, "--project", PROJECT, "--rounds", str(rounds),
                   "--duration", str(duration)] + extra
        print("\n## %s\n$ %s" % (title, " ".join(command[1:])), flush=True)
        subprocess.run(command, check=True)


def scaling(duration=4):
    venv_uvicorn = "/tmp/pixel-bench-venv/bin/uvicorn"   # made by compare.py's first run
    if not (shutil.which("wrk") and os.path.exists(venv_uvicorn)):
        sys.exit("scaling needs wrk and compare.py's uvicorn venv: run --only throughput first")
    folder = tempfile.mkdtemp(prefix="pixel-bench-")
    pixel, pixel_port = start_pixel(folder)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        uvicorn_port = probe.getsockname()[1]
    peer = subprocess.Popen([venv_uvicorn, "asgi_pixel:app", "--port", str(uvicorn_port),
                             "--no-access-log", "--log-level", "warning", "--http", "httptools",
                             "--loop", "uvloop", "--app-dir", os.path.dirname(COMPARE)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PEER_LOG=os.path.join(folder, "peer.log")))
    deadline = time.monotonic() + 20
    while True:   # uvicorn takes a moment to listen
        try:
            socket.create_connection(("127.0.0.1", uvicorn_port), 0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or peer.poll() is not None:
                sys.exit("the uvicorn peer did not start")
            time.sleep(0.05)
    target = "/v1/pixel/track?" + DOCS_QUERY
    print("\n## scaling (keep-alive, docs' track pixel, wrk -t1 -d%ds)" % duration)
    print("connections  pixel req/s  uvicorn req/s")
    try:
        for connections in (1, 4, 10, 50):
            rates = []
            for port in (pixel_port, uvicorn_port):
                out = subprocess.run(["wrk", "-t1", "-c%d" % connections, "-d%ds" % duration,
                                      "http://127.0.0.1:%d%s" % (port, target)],
                                     capture_output=True, text=True).stdout
                rates.append(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)))
            print("%11d  %11.0f  %13.0f" % (connections, rates[0], rates[1]), flush=True)
    finally:
        for process in (pixel, peer):
            process.terminate()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def start_pixel(folder):
    process = subprocess.Popen([sys.executable, PIXEL_PY, "--port", "0", "--log",
                                os.path.join(folder, "events.jsonl")],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(re.search(r":(\d+)/", process.stdout.readline()).group(1))
    return process, port


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as handle:
        return int(re.search(r"VmRSS:\s+(\d+) kB", handle.read()).group(1)) / 1024


def memory():
    folder = tempfile.mkdtemp(prefix="pixel-bench-")
    process, port = start_pixel(folder)
    try:
        time.sleep(0.5)
        at_rest = rss_mib(process.pid)
        connections = []
        for _ in range(1000):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/v1/pixel/track?" + DOCS_QUERY)
            connection.getresponse().read()
            connections.append(connection)
        time.sleep(0.5)
        loaded = rss_mib(process.pid)
        for connection in connections:
            connection.close()
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)
    print("\n## memory\nRSS at rest: %.1f MiB\nRSS with 1,000 idle keep-alive connections: "
          "%.1f MiB" % (at_rest, loaded))


def interpreters():
    """This interpreter, plus the system's python3 when it is a different one: the start-up
    target is for `python3 pixel.py`, and a VM's python3 is usually the distribution's."""
    found = [sys.executable]
    for candidate in ("/usr/bin/python3",):
        if os.path.exists(candidate) and \
                os.path.realpath(candidate) != os.path.realpath(sys.executable):
            found.append(candidate)
    return found


def startup(rounds=15):
    folder = tempfile.mkdtemp(prefix="pixel-bench-")
    print("\n## startup")
    try:
        for python in interpreters():
            version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                                     capture_output=True, text=True).stdout.strip()
            bare, times = [], []
            for number in range(rounds):
                # The interpreter alone, to the end of `python3 -c pass`: what any script
                # pays before its first line runs.
                started = time.monotonic()
                subprocess.run([python, "-c", "pass"], check=True)
                bare.append((time.monotonic() - started) * 1000)
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", 0))
                    port = probe.getsockname()[1]
                started = time.monotonic()
                process = subprocess.Popen([python, PIXEL_PY, "--port", str(port),
                                            "--log", os.path.join(folder, "e%d.jsonl" % number)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), 0.5).close()
                        break
                    except OSError:
                        if process.poll() is not None:
                            sys.exit("%s pixel.py exited at start-up" % python)
                        time.sleep(0.001)
                times.append((time.monotonic() - started) * 1000)
                process.terminate()
                process.wait()
            print("`%s pixel.py` (Python %s) accepts its first connection after %.0f ms "
                  "(median of %d; min %.0f, max %.0f); `%s -c pass` alone takes %.0f ms"
                  % (python, version, statistics.median(times), rounds, min(times), max(times),
                     python, statistics.median(bare)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def core(number=20000):
    sys.path.insert(0, PROJECT)
    import pixel
    received_at = time.time()

    def one():
        pixel.encode_line(pixel.pixel_event("track", DOCS_QUERY, received_at=received_at,
                                            ip="127.0.0.1", user_agent="Mail/1"))

    best = min(timeit.repeat(one, number=number, repeat=5)) / number * 1e6
    print("\n## core\ndecode + validate + enrich + serialise, docs' example: %.1f us per event "
          "(best of 5 x %d)" % (best, number))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["throughput", "scaling", "memory", "startup", "core"])
    parser.add_argument("--rounds", type=int, default=4, help="compare.py rounds (default 4)")
    parser.add_argument("--duration", type=int, default=8, help="seconds a wrk run (default 8)")
    args = parser.parse_args()
    print("# pixel benchmark: %d cores, Python %s, %s" % (
        os.cpu_count(), sys.version.split()[0], time.strftime("%Y-%m-%d")))
    if args.only in (None, "core"):
        core()
    if args.only in (None, "startup"):
        startup()
    if args.only in (None, "memory"):
        memory()
    if args.only in (None, "throughput"):
        throughput(args.rounds, args.duration)
    if args.only in (None, "scaling"):
        scaling()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Measure pixel.py and reproduce the README's performance numbers, from a clone of this repo.

    python3 bench/bench.py                       # every section, about 12 minutes
    python3 bench/bench.py --quick               # every section in about 10 s, to check that
                                                 # the bench still runs (numbers meaningless)
    python3 bench/bench.py --only throughput --rounds 3 --duration 8

Sections (--only picks one; repeat it for several):

core        microseconds per event for decode + validate + enrich + serialise of the docs'
            track pixel and the page pixel, in this process (best of several timeit runs).
opcodes     Python bytecodes one kept-alive GET runs, from pixel's handler waiting for it to
            its answer sent, for the docs' track pixel and the page pixel, and the functions that
            run the most (sys.settrace): unlike a time, nearly the same on every run of one
            Python version, so a change to the request path can be judged on a noisy machine.
            Time it with `core` too: a bytecode that calls C (map, a set method) can cost
            more than the several it replaces.
startup     milliseconds from starting `python3 pixel.py` to its first accepted connection,
            with this interpreter and with /usr/bin/python3 if that is another one, each next
            to the interpreter's own start-up (`python3 -c pass`).
memory      RSS of a pixel.py process at rest, with 1,000 idle keep-alive connections, and
            under SDK-like traffic: 30 keep-alive connections, a fresh messageId a request
            (which the dedupe window remembers), sampled each second for a minute.
throughput  pixel.py next to three peer servers on the same machine, load and request:
              uvicorn + httptools + uvloop   bench/peers/asgi_pixel.py, what a Python
                                             developer would write
              nginx empty_gif                bench/peers/nginx.conf, the classic pixel server
                                             (decodes nothing: a ceiling, not a rival)
              naive http.server              bench/peers/naive_pixel.py, the tutorial version
            wrk (one thread, --latency) against each server in turn, the server order
            reversed every other round; each table gives the medians over the rounds of req/s
            and p99 latency, and pixel.py's req/s divided by each peer's. Three tables:
            keep-alive with 50 connections on the docs' track pixel (?data=...), keep-alive
            with 50 connections on a dot-notation page pixel, and one request per connection
            (wrk -H "Connection: close", 20 connections).
scaling     pixel.py and the uvicorn peer at 1, 4, 10 and 50 keep-alive connections, to show
            where a thread per connection stops scaling.
tail        pixel.py and the uvicorn peer, keep-alive with 50 connections on the docs' track
            pixel: wrk's p50, p75, p90 and p99 latency, medians over the rounds, to show the
            shape of the wait and not only its 99th percentile.
forward     pixel.py alone and pixel.py --forward to a second pixel.py (pinned to the other
            CPU), keep-alive with 50 connections on the docs' track pixel, alternating each
            round: req/s, p99, the forwarder's backlog when wrk stops, and how long it then
            takes to send it all; the receiver's log must gain every line the sender wrote.
processes   one pixel.py, and two sharing one port with --reuse-port (each pinned to its
            own CPU, each with its own log), keep-alive with 50 connections and one request
            per connection with 20, alternating each round; every answer must be in a log.

Every server is started fresh for each round, listens on 127.0.0.1 only, and is stopped
when the round ends, when the bench fails, on Ctrl-C or SIGTERM; servers also get SIGTERM
from the kernel if this process is killed outright.

What it needs it installs, each time it is missing: wrk and nginx with apt-get (Debian
packages; needs root), and uvicorn, httptools and uvloop with pip into a venv at
$TMPDIR/pixel-bench-uvicorn-venv (/tmp/... without TMPDIR), which later runs reuse.
pixel.py itself needs only Python 3.

Exit status: 0 when every section ran; 1 when a tool could not be installed, a server did
not start, wrk reported socket errors or non-2xx answers, or pixel.py logged fewer events
than it answered. --quick only shortens the runs and checks the same things; it asserts
nothing about speed.
"""

import argparse
import collections
import ctypes
import http.client
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
PIXEL_PY = os.path.join(PROJECT, "pixel.py")
PEERS = os.path.join(HERE, "peers")

LOOPBACK = "127.0.0.1"

# Segment's Pixel API docs' own example (as in README.md and test_pixel.py): unpadded
# URL-safe base64 of a track call.
DOCS_DATA = ("eyJ3cml0ZUtleSI6ICJZT1VSX1dSSVRFX0tFWSIsICJ1c2VySWQiOiAiMDI1cGlrYWNodTAyNSIs"
             "ICJldmVudCI6ICJFbWFpbCBPcGVuZWQiLCAicHJvcGVydGllcyI6IHsgICAic3ViamVjdCI6ICJUaGUg"
             "RWxlY3RyaWMgRGFpbHkiLCAgICJlbWFpbCI6ICJwZWVrQXRNZUBlbWFpbC5wb2tlIiB9fQ")
DOCS_QUERY = "data=" + DOCS_DATA
TRACK_TARGET = "/v1/pixel/track?" + DOCS_QUERY
PAGE_TARGET = ("/v1/pixel/page?anonymousId=a7f3c2&name=Pricing&properties.url=https%3A%2F%2F"
               "example.com%2Fpricing&properties.referrer=newsletter&writeKey=k")

SERVER_LABELS = collections.OrderedDict([
    ("pixel", "pixel.py"),
    ("uvicorn", "uvicorn + httptools + uvloop"),
    ("nginx", "nginx `empty_gif`"),
    ("naive", "naive `http.server`"),
])

# One kind of wrk run: `label` names it in progress lines, `title` heads its table.
Mode = collections.namedtuple("Mode", "label title target connections close")
THROUGHPUT_MODES = [
    Mode("track pixel, keep-alive, 50 connections",
         "Keep-alive, 50 connections, the docs' track pixel (`?data=…`)",
         TRACK_TARGET, 50, False),
    Mode("page pixel, keep-alive, 50 connections",
         "Keep-alive, 50 connections, a dot-notation page pixel "
         "(`/v1/pixel/page?anonymousId=…&properties.url=…&writeKey=k`)",
         PAGE_TARGET, 50, False),
    Mode("track pixel, close, 20 connections",
         "One request per connection (`Connection: close`), 20 connections",
         TRACK_TARGET, 20, True),
]
SCALING_CONNECTIONS = (1, 4, 10, 50)
SECTIONS = ("core", "opcodes", "startup", "memory", "throughput", "scaling", "tail", "forward",
            "processes")
OPCODE_REQUESTS = 100   # kept-alive GETs traced a target
# What each section needs beyond Python: Debian packages (by command) and the uvicorn venv.
SECTION_COMMANDS = {"memory": ("wrk",), "throughput": ("wrk", "nginx"), "scaling": ("wrk",), "tail": ("wrk",),
                    "forward": ("wrk",), "processes": ("wrk",)}
SECTION_NEEDS_VENV = ("throughput", "scaling", "tail")

VENV = os.path.join(tempfile.gettempdir(), "pixel-bench-uvicorn-venv")
VENV_PACKAGES = ("uvicorn", "httptools", "uvloop")

START_TIMEOUT = 20      # seconds a server may take to listen (uvicorn's first start compiles)
STOP_TIMEOUT = 5        # seconds a server may take to exit after SIGTERM, then SIGKILL
WRK_TIMEOUT = "10s"     # wrk's own default (2 s) counts the naive peer's slow answers as errors
PR_SET_PDEATHSIG = 1    # from <linux/prctl.h>


class BenchError(Exception):
    """Something that stops the run: a tool that did not install, a server that did not start."""


Settings = collections.namedtuple(
    "Settings", "rounds duration startup_rounds core_number core_repeat memory_connections "
                "settle_seconds unique_seconds")


def settings_for(args):
    if args.quick:
        settings = Settings(rounds=1, duration=0.3, startup_rounds=3, core_number=2000,
                            core_repeat=3, memory_connections=1000, settle_seconds=0.2,
                            unique_seconds=2)
    else:
        settings = Settings(rounds=4, duration=8, startup_rounds=15, core_number=20000,
                            core_repeat=5, memory_connections=1000, settle_seconds=0.5,
                            unique_seconds=60)
    if args.rounds is not None:
        settings = settings._replace(rounds=args.rounds)
    if args.duration is not None:
        settings = settings._replace(duration=args.duration)
    return settings


# --------------------------------------------------------------------------------------------
# Installing the tools

def find_command(name):
    """The path of a command, looking in the sbin folders too (nginx lives in /usr/sbin)."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def run_install_step(command, timeout):
    """Run one install command quietly; on failure, raise with the end of its output."""
    print("bench: $ " + " ".join(command), flush=True)
    try:
        finished = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout,
                                  env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    except subprocess.TimeoutExpired:
        raise BenchError("%s took more than %d s" % (command[0], timeout)) from None
    if finished.returncode != 0:
        raise BenchError("%s failed (exit %d):\n%s" % (" ".join(command), finished.returncode,
                                                       finished.stdout[-2000:]))


def ensure_commands(commands):
    """apt-get install the Debian packages of the commands that are not on this machine."""
    missing = [command for command in commands if not find_command(command)]
    if not missing:
        return
    print("bench: installing %s with apt-get (Debian packages)" % ", ".join(missing), flush=True)
    if os.geteuid() != 0:
        raise BenchError("apt-get needs root; install %s yourself" % " ".join(missing))
    run_install_step(["apt-get", "update", "-q"], timeout=600)
    run_install_step(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing,
                     timeout=900)
    still_missing = [command for command in missing if not find_command(command)]
    if still_missing:
        raise BenchError("apt-get ran, but %s is still not found" % ", ".join(still_missing))


def venv_versions():
    """'uvicorn 0.x, httptools 0.y, uvloop 0.z' from the venv, or None if any is missing."""
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        return None
    script = ("import importlib.metadata, sys\n"
              "import uvicorn, httptools, uvloop\n"
              "print(', '.join(name + ' ' + importlib.metadata.version(name)"
              " for name in sys.argv[1:]))")
    finished = subprocess.run([python, "-c", script] + list(VENV_PACKAGES),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)
    return finished.stdout.strip() if finished.returncode == 0 else None


def ensure_venv():
    versions = venv_versions()
    if versions is None:
        print("bench: installing %s with pip into a venv at %s"
              % (", ".join(VENV_PACKAGES), VENV), flush=True)
        run_install_step([sys.executable, "-m", "venv", "--clear", VENV], timeout=300)
        run_install_step([os.path.join(VENV, "bin", "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check"] + list(VENV_PACKAGES), timeout=900)
        versions = venv_versions()
        if versions is None:
            raise BenchError("pip ran, but the venv at %s cannot import %s"
                             % (VENV, ", ".join(VENV_PACKAGES)))
    return versions


def tool_versions(commands):
    """One line naming the versions of wrk and nginx, for the header of the output."""
    found = []
    if "wrk" in commands:   # `wrk -v` prints "wrk 4.1.0 [epoll] Copyright ..." and exits 1
        banner = subprocess.run([find_command("wrk"), "-v"], capture_output=True, text=True,
                                timeout=10).stdout
        found.append(" ".join(banner.split()[:2]) or "wrk")
    if "nginx" in commands:   # `nginx -v` prints "nginx version: nginx/1.22.1" on stderr
        banner = subprocess.run([find_command("nginx"), "-v"], capture_output=True, text=True,
                                timeout=10).stderr
        found.append(banner.strip().rsplit(" ", 1)[-1].replace("/", " "))
    return ", ".join(found)


# --------------------------------------------------------------------------------------------
# Starting and stopping servers

running_servers = []   # every process started by start_process and not yet stopped


def _end_with_bench():
    """Runs in each server and wrk between fork and exec: if the bench dies without cleaning
    up (kill -9), the kernel sends the child SIGTERM. Linux only; elsewhere the bench's
    try/finally blocks are all there is."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):   # not Linux: no prctl
        return


def start_process(command, output_path, env=None):
    """Start a server in a session of its own, its stdout and stderr going to output_path."""
    with open(output_path, "ab") as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, env=env,
                                   cwd=os.path.dirname(output_path), start_new_session=True,
                                   preexec_fn=_end_with_bench)
    running_servers.append(process)
    return process


def stop_process(process):
    """SIGTERM to the server's whole process group (nginx has workers), SIGKILL if slow."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:   # the group has exited already
            break
        try:
            process.wait(STOP_TIMEOUT)
            break
        except subprocess.TimeoutExpired:
            continue
    if process in running_servers:
        running_servers.remove(process)


def stop_all_servers():
    for process in list(running_servers):
        stop_process(process)


def output_tail(path, characters=1500):
    with open(path, errors="replace") as output:
        return output.read()[-characters:].strip() or "(no output)"


def free_port():
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_until_listening(name, process, port, output_path, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                raise BenchError("%s exited with %d before listening:\n%s" % (
                    name, process.returncode, output_tail(output_path))) from None
            if time.monotonic() > deadline:
                raise BenchError("%s did not listen on port %d within %d s:\n%s" % (
                    name, port, timeout, output_tail(output_path))) from None
            time.sleep(0.002)   # the start-up figure is only as fine as this wait


LISTENING = re.compile(r"listening on http://\S+:(\d+)/")


def start_pixel(folder, events_path, extra=()):
    """Start pixel.py on a port of its choosing; return the process and the port it printed
    in its 'pixel ... listening on http://127.0.0.1:PORT/ ...' line."""
    output_path = os.path.join(folder, "pixel.out")
    process = start_process([sys.executable, PIXEL_PY, "--host", LOOPBACK, "--port", "0",
                             "--log", events_path] + list(extra), output_path)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with open(output_path, errors="replace") as output:
            said = LISTENING.search(output.read())
        if said:
            port = int(said.group(1))
            wait_until_listening("pixel.py", process, port, output_path)
            return process, port
        if process.poll() is not None:
            raise BenchError("pixel.py exited with %d before listening:\n%s"
                             % (process.returncode, output_tail(output_path)))
        if time.monotonic() > deadline:
            raise BenchError("pixel.py printed no 'listening on' line within %d s:\n%s"
                             % (START_TIMEOUT, output_tail(output_path)))
        time.sleep(0.02)


def start_server(name, folder):
    """Start one of SERVER_LABELS in a fresh folder inside `folder`; return (process, port,
    path of the events log it writes)."""
    server_folder = tempfile.mkdtemp(prefix=name + "-", dir=folder)
    events_path = os.path.join(server_folder, "events.jsonl")
    if name == "pixel":
        process, port = start_pixel(server_folder, events_path)
        return process, port, events_path
    port = free_port()
    peer_env = dict(os.environ, PIXEL_BENCH_PEER_LOG=events_path)
    if name == "uvicorn":
        command = [os.path.join(VENV, "bin", "python"), "-m", "uvicorn", "asgi_pixel:app",
                   "--app-dir", PEERS, "--host", LOOPBACK, "--port", str(port),
                   "--http", "httptools", "--loop", "uvloop", "--lifespan", "off",
                   "--no-access-log", "--log-level", "warning"]
    elif name == "naive":
        command = [sys.executable, os.path.join(PEERS, "naive_pixel.py"), str(port)]
    elif name == "nginx":
        with open(os.path.join(PEERS, "nginx.conf")) as template:
            config = template.read().replace("@PORT@", str(port))
        config = config.replace("@RUN_DIR@", server_folder)
        config_path = os.path.join(server_folder, "nginx.conf")
        with open(config_path, "w") as config_file:
            config_file.write(config)
        command = [find_command("nginx"), "-p", server_folder + "/", "-c", config_path,
                   "-e", os.path.join(server_folder, "error.log")]
    else:
        raise ValueError("no server called %r" % name)
    output_path = os.path.join(server_folder, name + ".out")
    process = start_process(command, output_path, env=peer_env)
    wait_until_listening(SERVER_LABELS[name], process, port, output_path)
    return process, port, events_path


def count_lines(path):
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as log:
        return sum(block.count(b"\n") for block in iter(lambda: log.read(1 << 20), b""))


# --------------------------------------------------------------------------------------------
# wrk

WrkResult = collections.namedtuple("WrkResult",
                                   "requests_per_second p99_ms requests problems percentiles")
PERCENTILES = ("50", "75", "90", "99")
LATENCY_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(output):
    """req/s, p99 in ms, requests completed and a list of problems, from wrk's report."""
    problems = []
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not rate:
        problems.append("no Requests/sec in wrk's output")
    percentiles = {share: float(value) * LATENCY_UNITS_MS[unit] for share, value, unit in
                   re.findall(r"^\s*(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)}
    completed = re.search(r"(\d+) requests in ", output)
    socket_errors = re.search(r"Socket errors: (.+)", output)
    if socket_errors:
        problems.append("socket errors: " + socket_errors.group(1).strip())
    not_ok = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if not_ok:
        problems.append(not_ok.group(1) + " non-2xx answers")
    return WrkResult(requests_per_second=float(rate.group(1)) if rate else 0.0,
                     p99_ms=percentiles.get("99", float("nan")),
                     requests=int(completed.group(1)) if completed else 0,
                     problems=problems, percentiles=percentiles)


def run_wrk(port, target, connections, duration, close=False):
    """One wrk run with one thread. wrk takes whole seconds; for a shorter run (--quick) it
    gets SIGINT at `duration`, on which it stops and reports what it measured so far."""
    wrk_seconds = math.ceil(duration)
    command = [find_command("wrk"), "-t1", "-c%d" % connections, "-d%ds" % wrk_seconds,
               "--latency", "--timeout", WRK_TIMEOUT]
    if close:
        command += ["-H", "Connection: close"]
    command.append("http://%s:%d%s" % (LOOPBACK, port, target))
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_end_with_bench)
    try:
        if duration < wrk_seconds:
            try:
                process.communicate(timeout=duration)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGINT)
        output, errors = process.communicate(timeout=wrk_seconds + 30)
    finally:
        if process.poll() is None:   # an exception above (Ctrl-C, a timeout): wrk goes too
            process.kill()
            process.wait()
    result = parse_wrk(output)
    if process.returncode != 0:
        result.problems.append("wrk exited with %d" % process.returncode)
    if errors.strip():
        result.problems.append("wrk said: " + errors.strip()[-500:])
    return result


def measure_rounds(names, runs, settings, folder):
    """For each round, start each server (order reversed every other round), do every Mode
    in `runs` against it, and stop it. Returns
    {(server, run index): [WrkResult per round]}; a pixel.py run whose event log grew by
    fewer lines than wrk counted answers gets a problem added."""
    results = collections.defaultdict(list)
    for round_number in range(settings.rounds):
        order = names if round_number % 2 == 0 else names[::-1]
        for name in order:
            process, port, events_path = start_server(name, folder)
            try:
                for index, run in enumerate(runs):
                    lines_before = count_lines(events_path)
                    result = run_wrk(port, run.target, run.connections, settings.duration,
                                     close=run.close)
                    if name == "pixel":
                        logged = count_lines(events_path) - lines_before
                        if logged < result.requests:
                            result.problems.append("pixel.py logged %d events for %d answers"
                                                   % (logged, result.requests))
                    results[name, index].append(result)
                    print("  round %d/%d  %-28s %-40s %7.0f req/s  p99 %7.2f ms%s"
                          % (round_number + 1, settings.rounds, SERVER_LABELS[name],
                             run.label, result.requests_per_second, result.p99_ms,
                             "  PROBLEM: " + "; ".join(result.problems)
                             if result.problems else ""), file=sys.stderr, flush=True)
            finally:
                stop_process(process)
    return results


def medians(results):
    return (statistics.median(result.requests_per_second for result in results),
            statistics.median(result.p99_ms for result in results))


def report_problems(results, problems):
    """Append every run's problems to `problems`, each labelled with its server, run and
    round; return the labelled lines."""
    lines = []
    for (name, index), runs in sorted(results.items()):
        for round_number, result in enumerate(runs, 1):
            for problem in result.problems:
                lines.append("%s, run %d, round %d: %s"
                             % (SERVER_LABELS[name], index + 1, round_number, problem))
    problems.extend(lines)
    return lines


# --------------------------------------------------------------------------------------------
# Sections

def core(settings, problems):
    sys.path.insert(0, PROJECT)
    import pixel
    missing = [name for name in ("pixel_event", "encode_line") if not hasattr(pixel, name)]
    if missing:
        problems.append("core: pixel.py has no %s any more; update bench/bench.py's core()"
                        % " or ".join(missing))
        print("\n## core\nskipped: " + problems[-1])
        return
    received_at = time.time()
    print("\n## core\n\ndecode + validate + enrich + serialise (best of %d × %d):\n"
          % (settings.core_repeat, settings.core_number), flush=True)
    for name, target in (("docs' track pixel", TRACK_TARGET), ("dot-notation page pixel",
                                                                PAGE_TARGET)):
        kind, _, query = target.rpartition("/")[2].partition("?")

        def one_event():
            pixel.encode_line(pixel.pixel_event(kind, query, received_at=received_at,
                                                ip="127.0.0.1", user_agent="Mail/1"))

        best = min(timeit.repeat(one_event, number=settings.core_number,
                                 repeat=settings.core_repeat)) / settings.core_number * 1e6
        print("- %s: %.1f µs per event" % (name, best), flush=True)


def opcodes(folder, problems):
    sys.path.insert(0, PROJECT)
    import pixel
    missing = [name for name in ("Pixel", "configure", "PixelServer", "GIF")
               if not hasattr(pixel, name)]
    if missing:
        problems.append("opcodes: pixel.py has no %s any more; update bench/bench.py's "
                        "opcodes()" % " or ".join(missing))
        print("\n## opcodes\nskipped: " + problems[-1])
        return
    print("\n## opcodes\n\n| request | bytecodes a request | in pixel.py | where most run |\n"
          "| --- | ---: | ---: | --- |", flush=True)
    for number, (name, target) in enumerate((("docs' track pixel", TRACK_TARGET),
                                             ("dot-notation page pixel", PAGE_TARGET))):
        made = pixel.Pixel(pixel.configure(log=os.path.join(folder, "opcodes-%d.jsonl" % number)))
        server = pixel.PixelServer(("127.0.0.1", 0), made.app)
        try:
            counts, answered = traced_requests(server, target, OPCODE_REQUESTS, pixel.GIF)
        finally:
            server.server_close()
            made.close()
        if answered != OPCODE_REQUESTS:
            problems.append("opcodes: %d of %d requests answered with the GIF"
                            % (answered, OPCODE_REQUESTS))
        total = sum(counts.values()) / OPCODE_REQUESTS
        own = sum(count for (file, _), count in counts.items() if file == "pixel.py")
        most = ", ".join("%s %.0f" % (function, count / OPCODE_REQUESTS)
                         for (_, function), count in counts.most_common(5))
        print("| %s | %.0f | %.0f | %s |" % (name, total, own / OPCODE_REQUESTS, most), flush=True)


def traced_requests(server, target, requests, gif):
    """(Counter of bytecodes by (file, function), GIF answers read) for `requests` GETs of
    `target` on one kept-alive connection, each sent once the answer before it is read,
    served by `server`'s handler on this thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    connection, address = listener.accept()
    listener.close()
    request = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % target.encode()
    answers = bytearray()

    def send_each():
        for sent in range(1, requests + 1):
            client.sendall(request)
            while answers.count(gif) < sent:
                data = client.recv(65536)
                if not data:
                    return
                answers.extend(data)
        client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send_each)
    sender.start()
    counts = collections.Counter()

    def trace(frame, event, arg):
        if event == "call":
            frame.f_trace_opcodes = True
        elif event == "opcode":
            counts[os.path.basename(frame.f_code.co_filename), frame.f_code.co_name] += 1
        return trace

    sys.settrace(trace)
    try:
        server.RequestHandlerClass(connection, address, server)   # to the client's EOF
    finally:
        sys.settrace(None)
        connection.close()
        sender.join(10)
        client.close()
    return counts, answers.count(gif)


def interpreters():
    """This interpreter, plus the system's python3 when it is a different one: the start-up
    target is for `python3 pixel.py`, and a VM's python3 is usually the distribution's."""
    found = [sys.executable]
    system_python = "/usr/bin/python3"
    if os.path.exists(system_python) and \
            os.path.realpath(system_python) != os.path.realpath(sys.executable):
        found.append(system_python)
    return found


def startup(settings, folder):
    print("\n## startup\n\n| interpreter | `python3 pixel.py` to first accepted connection | "
          "`python3 -c pass` alone |\n| --- | ---: | ---: |", flush=True)
    for python in interpreters():
        version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                                 capture_output=True, text=True, check=True,
                                 timeout=30).stdout.strip()
        bare_ms, pixel_ms = [], []
        for attempt in range(settings.startup_rounds):
            # The interpreter alone, to the end of `python3 -c pass`: what any script pays
            # before its first line runs.
            started = time.monotonic()
            subprocess.run([python, "-c", "pass"], check=True, timeout=30)
            bare_ms.append((time.monotonic() - started) * 1000)

            port = free_port()
            output_path = os.path.join(folder, "startup-%d.out" % attempt)
            started = time.monotonic()
            process = start_process([python, PIXEL_PY, "--host", LOOPBACK, "--port", str(port),
                                     "--log", os.path.join(folder, "startup-%d.jsonl" % attempt)],
                                    output_path)
            try:
                wait_until_listening("%s pixel.py" % python, process, port, output_path)
                pixel_ms.append((time.monotonic() - started) * 1000)
            finally:
                stop_process(process)
        print("| %s (%s) | %.0f ms (%.0f–%.0f) | %.0f ms |"
              % (python, version, statistics.median(pixel_ms), min(pixel_ms), max(pixel_ms),
                 statistics.median(bare_ms)), flush=True)
    print("\nmedians of %d starts; min–max in brackets" % settings.startup_rounds)


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as status:
        return int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1)) / 1024


def raise_open_file_limit(wanted):
    """Holding `wanted` sockets needs that many descriptors here and in pixel.py (which
    inherits this limit); raise the soft limit toward the hard one if it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))


def memory(settings, folder):
    count = settings.memory_connections
    raise_open_file_limit(count + 200)
    process, port = start_pixel(folder, os.path.join(folder, "memory.jsonl"))
    connections = []
    try:
        time.sleep(settings.settle_seconds)
        at_rest = rss_mib(process.pid)
        deadline = time.monotonic() + 120
        for _ in range(count):
            if time.monotonic() > deadline:
                raise BenchError("memory: opening %d connections took over 120 s" % count)
            connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
            connections.append(connection)
            try:
                connection.request("GET", TRACK_TARGET)
                answer = connection.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException) as error:
                raise BenchError("memory: request %d of %d to pixel.py failed: %r\n%s" % (
                    len(connections), count, error,
                    output_tail(os.path.join(folder, "pixel.out")))) from None
            if answer.status != 200:
                raise BenchError("memory: pixel.py answered %d" % answer.status)
        time.sleep(settings.settle_seconds)
        loaded = rss_mib(process.pid)
    finally:
        for connection in connections:
            connection.close()
        stop_process(process)
    print("\n## memory\n\nRSS at rest: %.1f MiB\nRSS with %s idle keep-alive connections: "
          "%.1f MiB" % (at_rest, format(count, ","), loaded), flush=True)
    unique_ids(settings, folder)


# A request each with a messageId no other has, as every Segment SDK sends: the dedupe
# window fills with them (issue 20 measured 91-112 MiB of RSS before it was made compact).
UNIQUE_IDS_LUA = """
local prefix = string.format("%x-%x-", os.time(), math.random(0, 2^30))
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/v1/pixel/track?writeKey=k&userId=u&event=Opened&messageId="
                    .. prefix .. counter)
end
"""


def unique_ids(settings, folder):
    folder = os.path.join(folder, "unique-ids")   # start_pixel's output file is per folder
    os.mkdir(folder)
    script = os.path.join(folder, "unique-ids.lua")
    with open(script, "w") as handle:
        handle.write(UNIQUE_IDS_LUA)
    process, port = start_pixel(folder, os.path.join(folder, "unique.jsonl"))
    samples = []
    try:
        wrk = subprocess.Popen(
            [find_command("wrk"), "-t1", "-c30", "-d%ds" % settings.unique_seconds, "-s", script,
             "http://%s:%d/" % (LOOPBACK, port)], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_end_with_bench)
        try:
            while wrk.poll() is None:
                samples.append(rss_mib(process.pid))
                time.sleep(1.0)
            output, errors = wrk.communicate(timeout=30)
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        events = count_lines(os.path.join(folder, "unique.jsonl"))
    finally:
        stop_process(process)
    if wrk.returncode != 0 or not samples:
        raise BenchError("memory: wrk with unique messageIds failed (%d): %s"
                         % (wrk.returncode, errors.strip()[-500:]))
    rate = parse_wrk(output).requests_per_second
    print("RSS under %d s of 30 keep-alive connections, a fresh messageId each request "
          "(%s req/s, %s events): %.1f MiB at the end, %.1f at the most (a sample a second)"
          % (settings.unique_seconds, format(round(rate or 0), ","), format(events, ","),
             samples[-1], max(samples)), flush=True)


def throughput(settings, folder, problems):
    names = list(SERVER_LABELS)
    print("\n## throughput\n\nwrk -t1 --latency, %g s a run, %d round(s), server order "
          "reversed every other round; medians" % (settings.duration, settings.rounds),
          flush=True)
    results = measure_rounds(names, THROUGHPUT_MODES, settings, folder)
    for index, mode in enumerate(THROUGHPUT_MODES):
        pixel_rate, _ = medians(results["pixel", index])
        print("\n%s:\n\n| server | req/s | p99 ms | pixel.py ratio |\n| --- | ---: | ---: | ---: |"
              % mode.title)
        for name in names:
            rate, p99 = medians(results[name, index])
            if name == "pixel":
                ratio = ""
            else:
                ratio = "%.2f" % (pixel_rate / rate) if rate else "n/a"
            print("| %s | %.0f | %.2f | %s |" % (SERVER_LABELS[name], rate, p99, ratio))
        pixel_runs = results["pixel", index]
        if not any(result.problems for result in pixel_runs):
            print("\npixel.py answered %d requests, and its event log grew by at least as "
                  "many lines" % sum(result.requests for result in pixel_runs))
    for line in report_problems(results, problems):
        print("PROBLEM: " + line)
    sys.stdout.flush()


def scaling(settings, folder, problems):
    names = ["pixel", "uvicorn"]
    runs = [Mode("track pixel, keep-alive, %d connection%s"
                 % (connections, "" if connections == 1 else "s"), "", TRACK_TARGET,
                 connections, False) for connections in SCALING_CONNECTIONS]
    print("\n## scaling\n\nkeep-alive, the docs' track pixel; wrk -t1 --latency, %g s a run, "
          "%d round(s), medians" % (settings.duration, settings.rounds), flush=True)
    results = measure_rounds(names, runs, settings, folder)
    print("\n| connections | pixel.py req/s | p99 ms | uvicorn req/s | p99 ms | pixel.py ratio |"
          "\n| ---: | ---: | ---: | ---: | ---: | ---: |")
    for index, connections in enumerate(SCALING_CONNECTIONS):
        pixel_rate, pixel_p99 = medians(results["pixel", index])
        uvicorn_rate, uvicorn_p99 = medians(results["uvicorn", index])
        print("| %d | %.0f | %.2f | %.0f | %.2f | %s |"
              % (connections, pixel_rate, pixel_p99, uvicorn_rate, uvicorn_p99,
                 "%.2f" % (pixel_rate / uvicorn_rate) if uvicorn_rate else "n/a"))
    for line in report_problems(results, problems):
        print("PROBLEM: " + line)
    sys.stdout.flush()


def tail(settings, folder, problems):
    names = ["pixel", "uvicorn"]
    runs = [Mode("track pixel, keep-alive, 50 connections", "", TRACK_TARGET, 50, False)]
    print("\n## tail\n\nkeep-alive, 50 connections, the docs' track pixel; wrk -t1 --latency, "
          "%g s a run, %d round(s), medians" % (settings.duration, settings.rounds), flush=True)
    results = measure_rounds(names, runs, settings, folder)
    print("\n| server | req/s | %s |\n| --- | ---: |%s"
          % (" | ".join("p%s ms" % share for share in PERCENTILES), " ---: |" * len(PERCENTILES)))
    shares = {}
    for name in names:
        shares[name] = [statistics.median(result.percentiles.get(share, float("nan"))
                                          for result in results[name, 0])
                        for share in PERCENTILES]
        print("| %s | %.0f | %s |" % (SERVER_LABELS[name], medians(results[name, 0])[0],
                                      " | ".join("%.2f" % value for value in shares[name])))
    print("| pixel.py over uvicorn | | %s |" % " | ".join(
        "%.2f" % (mine / theirs) if theirs else "n/a"
        for mine, theirs in zip(shares["pixel"], shares["uvicorn"])))
    for line in report_problems(results, problems):
        print("PROBLEM: " + line)
    sys.stdout.flush()


def forward_backlog(port):
    """The forwarder's lines_behind, from pixel.py's /health."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        connection.request("GET", "/health")
        return json.loads(connection.getresponse().read())["forward"]["lines_behind"]
    finally:
        connection.close()


def forward(settings, folder, problems):
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    receiver_cpu = ["--cpu", str(cpus[0])] if len(cpus) > 1 else []
    print("\n## forward\n\nkeep-alive, 50 connections, the docs' track pixel; pixel.py alone "
          "and with --forward to a second pixel.py%s; wrk -t1 --latency, %g s a run, %d "
          "round(s), medians" % (" on CPU %s" % receiver_cpu[1] if receiver_cpu else "",
                                 settings.duration, settings.rounds), flush=True)
    receiver_folder = tempfile.mkdtemp(prefix="receiver-", dir=folder)
    receiver_log = os.path.join(receiver_folder, "events.jsonl")
    receiver, receiver_port = start_pixel(receiver_folder, receiver_log, receiver_cpu)
    results, backlogs, drains = collections.defaultdict(list), [], []
    variants = {"alone": [], "forwarding": ["--forward", "http://%s:%d" % (LOOPBACK,
                                                                             receiver_port)]}
    try:
        for round_number in range(settings.rounds):
            order = list(variants) if round_number % 2 == 0 else list(variants)[::-1]
            for name in order:
                server_folder = tempfile.mkdtemp(prefix=name + "-", dir=folder)
                events_path = os.path.join(server_folder, "events.jsonl")
                received_before = count_lines(receiver_log)
                process, port = start_pixel(server_folder, events_path, variants[name])
                try:
                    result = run_wrk(port, TRACK_TARGET, 50, settings.duration)
                    note = ""
                    if name == "forwarding":
                        backlog, started = forward_backlog(port), time.monotonic()
                        while forward_backlog(port) and time.monotonic() - started < 300:
                            time.sleep(0.05)
                        backlogs.append(backlog)
                        drains.append(time.monotonic() - started)
                        sent = count_lines(events_path)
                        received = count_lines(receiver_log) - received_before
                        if received != sent:
                            result.problems.append("the receiver logged %d of %d lines"
                                                   % (received, sent))
                        note = "  backlog %d lines, sent in %.1f s" % (backlog, drains[-1])
                    results[name].append(result)
                    print("  round %d/%d  pixel.py %-12s %7.0f req/s  p99 %7.2f ms%s%s"
                          % (round_number + 1, settings.rounds, name,
                             result.requests_per_second, result.p99_ms, note,
                             "  PROBLEM: " + "; ".join(result.problems)
                             if result.problems else ""), file=sys.stderr, flush=True)
                finally:
                    stop_process(process)
    finally:
        stop_process(receiver)
    alone, _ = medians(results["alone"])
    print("\n| pixel.py | req/s | p99 ms | ratio to alone |\n| --- | ---: | ---: | ---: |")
    for name in variants:
        rate, p99 = medians(results[name])
        print("| %s | %.0f | %.2f | %s |" % (name, rate, p99,
                                              "%.2f" % (rate / alone) if alone else "n/a"))
    print("\nbacklog when wrk stopped: median %d lines; then sent in a median %.1f s"
          % (statistics.median(backlogs), statistics.median(drains)))
    for name, runs in results.items():
        for round_number, result in enumerate(runs, 1):
            for problem in result.problems:
                problems.append("pixel.py %s, round %d: %s" % (name, round_number, problem))
                print("PROBLEM: " + problems[-1])
    sys.stdout.flush()


def processes(settings, folder, problems):
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        print("\n## processes\n\nskipped: this machine lets us use %d CPU" % len(cpus))
        return
    modes = [("keep-alive, 50 connections", 50, False),
             ("one request per connection, 20 connections", 20, True)]
    print("\n## processes\n\nthe docs' track pixel; one pixel.py (--cpu auto), and two with "
          "--reuse-port on CPUs %d and %d; wrk -t1 --latency, %g s a run, %d round(s), "
          "medians" % (cpus[0], cpus[1], settings.duration, settings.rounds), flush=True)
    results = collections.defaultdict(list)
    for round_number in range(settings.rounds):
        order = (1, 2) if round_number % 2 == 0 else (2, 1)
        for count in order:
            started, logs = [], []
            try:
                port = None
                for number in range(count):
                    server_folder = tempfile.mkdtemp(prefix="processes-", dir=folder)
                    logs.append(os.path.join(server_folder, "events.jsonl"))
                    extra = ["--reuse-port", "--cpu", str(cpus[number])] if count > 1 else []
                    if port is not None:
                        extra += ["--port", str(port)]
                    process, listening = start_pixel(server_folder, logs[-1], extra)
                    started.append(process)
                    port = listening if port is None else port
                for index, (label, connections, close) in enumerate(modes):
                    before = sum(count_lines(log) for log in logs)
                    result = run_wrk(port, TRACK_TARGET, connections, settings.duration,
                                     close=close)
                    logged = sum(count_lines(log) for log in logs) - before
                    if logged < result.requests:
                        result.problems.append("%d events logged for %d answers"
                                               % (logged, result.requests))
                    results[count, index].append(result)
                    print("  round %d/%d  %d process(es)  %-44s %7.0f req/s  p99 %7.2f ms%s"
                          % (round_number + 1, settings.rounds, count, label,
                             result.requests_per_second, result.p99_ms,
                             "  PROBLEM: " + "; ".join(result.problems)
                             if result.problems else ""), file=sys.stderr, flush=True)
            finally:
                for process in started:
                    stop_process(process)
    print("\n| mode | 1 process req/s | p99 ms | 2 processes req/s | p99 ms | ratio |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for index, (label, _, _) in enumerate(modes):
        one, one_p99 = medians(results[1, index])
        two, two_p99 = medians(results[2, index])
        print("| %s | %.0f | %.2f | %.0f | %.2f | %s |" % (label, one, one_p99, two, two_p99,
                                                         "%.2f" % (two / one) if one else "n/a"))
    for (count, index), runs in sorted(results.items()):
        for round_number, result in enumerate(runs, 1):
            for problem in result.problems:
                problems.append("%d process(es), %s, round %d: %s"
                                % (count, modes[index][0], round_number, problem))
                print("PROBLEM: " + problems[-1])
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# main

def _exit_on_signal(signum, frame):
    print("\nbench: stopped by %s" % signal.Signals(signum).name, file=sys.stderr)
    raise SystemExit(128 + signum)   # unwinds through the finally blocks that stop servers


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="every section with tiny runs (about 10 s): checks that the bench "
                             "works, not how fast anything is")
    parser.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                        help="run only this section (%s); repeatable" % ", ".join(SECTIONS))
    parser.add_argument("--rounds", type=int,
                        help="rounds of throughput and scaling runs (default 4; 1 with --quick)")
    parser.add_argument("--duration", type=float,
                        help="seconds of each wrk run (default 8; 0.3 with --quick)")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.duration is not None and not 0 < args.duration <= 600:
        parser.error("--duration must be more than 0 and at most 600 seconds")
    return args


def main(argv=None):
    args = parse_args(argv)
    settings = settings_for(args)
    sections = [section for section in SECTIONS if not args.only or section in args.only]
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    problems = []
    started = time.monotonic()
    folder = tempfile.mkdtemp(prefix="pixel-bench-")
    try:
        commands = sorted({command for section in sections
                           for command in SECTION_COMMANDS.get(section, ())})
        ensure_commands(commands)
        venv = ensure_venv() if set(sections) & set(SECTION_NEEDS_VENV) else None
        print("# pixel benchmark: %d cores, Python %s, %s%s"
              % (os.cpu_count(), sys.version.split()[0], time.strftime("%Y-%m-%d"),
                 " (--quick: numbers are meaningless)" if args.quick else ""))
        tools = ", ".join(filter(None, [tool_versions(commands), venv]))
        if tools:
            print("# tools: " + tools)
        sys.stdout.flush()
        if "core" in sections:
            core(settings, problems)
        if "opcodes" in sections:
            opcodes(folder, problems)
        if "startup" in sections:
            startup(settings, folder)
        if "memory" in sections:
            memory(settings, folder)
        if "throughput" in sections:
            throughput(settings, folder, problems)
        if "scaling" in sections:
            scaling(settings, folder, problems)
        if "tail" in sections:
            tail(settings, folder, problems)
        if "forward" in sections:
            forward(settings, folder, problems)
        if "processes" in sections:
            processes(settings, folder, problems)
    except BenchError as error:
        problems.append(str(error))
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short; it is bounded anyway
        # (STOP_TIMEOUT per server, then SIGKILL).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stop_all_servers()
        shutil.rmtree(folder, ignore_errors=True)
    elapsed = time.monotonic() - started
    if problems:
        print("\nbench: %d problem(s), in %.1f s:" % (len(problems), elapsed), file=sys.stderr)
        for problem in problems:
            print("  " + problem.replace("\n", "\n    "), file=sys.stderr)
        return 1
    print("\nbench: every section ran, in %.1f s" % elapsed, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

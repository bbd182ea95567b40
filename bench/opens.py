#!/usr/bin/env python3
"""Measure what issue 21 added to pixel.py: labelling machine opens and `pixel.py report`.

    python3 bench/opens.py                   # every section, about three minutes
    python3 bench/opens.py --only ranges     # one section: ranges, labels, keepalive, report

ranges     a synthetic list shaped like Apple's egress-ip-ranges.csv (290,000 rows, one in
           four IPv4, prefixes /24-/32 and /45-/64 carved from a few blocks with gaps,
           non-ASCII city names, rows shuffled), loaded by a fresh python3 each round: the
           seconds load_ranges() takes and the RSS it adds (VmRSS after minus before; the
           peak, VmHWM, during the load); then one lookup (AddressRanges.find) of addresses
           inside and outside, best of five timeit runs.
labels     microseconds Labeller.label() adds to one pixel request with no ranges loaded:
           20,000 heads (seven agents mixed) each parsed, then labelled at once as a request
           is, each call timed alone; the median call less the timer's own cost (a median,
           so that another process taking the CPU mid-call does not count), over rounds.
keepalive  wrk (one thread, 50 keep-alive connections, Apple Mail's agent) against pixel.py
           before issue 21 (--before, by default where this branch left lean) and now,
           alternating the order each round: req/s, and the median of the rounds' ratios.
report     `pixel.py report --by properties.campaign` over a synthetic events log of
           --report-mb MB (200 by default: ~490-byte lines written by pixel's own encoder,
           40 campaigns, 200,000 users, one line in five from a machine), plain, with
           --daily, and gzipped; `wc -l` on the same file as the floor of reading it. Wall
           time and CPU time (user + system), each the median of the rounds: on a busy
           machine the second says what the report costs, the first what a user waited.

The machine has other users (two shared cores): every number printed is a median or a best
of --rounds runs, and the README quotes those, or ratios.
"""

import argparse
import gzip
import ipaddress
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
PIXEL_PY = os.path.join(PROJECT, "pixel.py")
sys.path.insert(0, PROJECT)

CITIES = [("GB", "GB-EN", "London"), ("US", "US-CA", "Los Angeles"), ("US", "US-NY", "New York"),
          ("DE", "DE-BE", "Berlin"), ("FR", "FR-IDF", "Paris"), ("BR", "BR-SP", "S\u00e3o Paulo"),
          ("CH", "CH-ZH", "Z\u00fcrich"), ("CA", "CA-QC", "Montr\u00e9al"), ("JP", "JP-13", "Tokyo"),
          ("AU", "AU-NSW", "Sydney"), ("IN", "IN-MH", "Mumbai"), ("ZA", "ZA-GT", "Johannesburg")]
# Blocks Apple's list draws from (Akamai, Cloudflare and Fastly egress), as (base, bits).
V4_BLOCKS = [(0xACE00000, 12), (0x681C0000, 16), (0x924B0000, 16), (0x8CF80000, 16)]
V6_BLOCKS = [(0x2a0226f7 << 96, 32), (0x2a09bac0 << 96, 29), (0x260654c0 << 96, 32),
             (0x24058100 << 96, 32)]


def apple_like_rows(rows=290000, seed=21):
    """Lines in the format of Apple's egress-ip-ranges.csv: CIDR,country,region,city, with
    consecutive aligned networks carved out of a few blocks, then shuffled."""
    generator = random.Random(seed)
    v4_rows = rows // 4
    lines = []
    for count, blocks, width, lengths in (
            (v4_rows, V4_BLOCKS, 32, [24, 26, 27, 27, 28, 28, 29, 30, 31, 31, 32, 32]),
            (rows - v4_rows, V6_BLOCKS, 128, [45, 46, 47, 48, 52, 56, 60, 62, 63] + [64] * 30)):
        per_block = count // len(blocks) + 1
        for base, bits in blocks:
            cursor = base
            for _ in range(per_block):
                if len(lines) >= (v4_rows if width == 32 else rows):
                    break
                prefix = generator.choice(lengths)
                size = 1 << (width - prefix)
                cursor = (cursor + size - 1) // size * size   # aligned
                cursor += size * generator.choice((0, 1, 1, 2, 3))   # gaps: few merge
                if width == 32:
                    text = "%d.%d.%d.%d" % tuple(cursor >> shift & 255 for shift in (24, 16, 8, 0))
                else:   # compressed, lower case, as Apple writes it
                    text = str(ipaddress.IPv6Address(cursor))
                country, region, city = generator.choice(CITIES)
                lines.append("%s/%d,%s,%s,%s," % (text, prefix, country, region, city))
                cursor += size
    generator.shuffle(lines)
    return lines


def write_apple_like(path, rows=290000, seed=21):
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\n".join(apple_like_rows(rows, seed)) + "\n")
    return path


AGENTS = [("Mozilla/5.0", "apple_mail", "apple_mpp"),
          ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com "
           "GoogleImageProxy)", "gmail", None),
          ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, "
           "like Gecko)", "apple_mail", None),
          ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.14931; Pro)",
           "outlook", None),
          ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
           "(KHTML, like Gecko) Mobile/15E148", "apple_mail", None),
          ("Barracuda Sentinel (EE)", None, "scanner")]
MACHINE_AGENTS = [agent for agent in AGENTS if agent[2]]
PEOPLE_AGENTS = [agent for agent in AGENTS if not agent[2]]


def write_event_log(path, megabytes, seed=21, users=200000, campaigns=40, days=30):
    """An events log of about `megabytes` MB, written by pixel's own encoder: opens and
    clicks of `campaigns` campaigns by `users` users over `days` days, one line in five from
    a machine."""
    import pixel
    generator = random.Random(seed)
    start = pixel.parse_time("2026-11-01T00:00:00Z")
    written, target = 0, megabytes * 1000 * 1000
    with open(path, "wb") as handle:
        while written < target:
            block = []
            for _ in range(1000):
                agent, client, machine = generator.choice(
                    MACHINE_AGENTS if generator.random() < 0.2 else PEOPLE_AGENTS)
                event = pixel.enrich("track", {
                    "writeKey": "YOUR_WRITE_KEY", "userId": "user-%06d" % generator.randrange(users),
                    "event": generator.choice(("Email Opened", "Email Opened", "Link Clicked")),
                    "properties": {"campaign": "campaign-%02d" % generator.randrange(campaigns),
                                   "subject": "The Electric Daily, issue %d" % generator.randrange(999),
                                   "sendId": "%016x" % generator.getrandbits(64)}},
                    received_at=start + generator.random() * days * 86400,
                    ip="203.0.113.%d" % generator.randrange(256), user_agent=agent)
                if client:
                    event["context"]["mailClient"] = client
                if machine:
                    event["context"]["machine"] = machine
                block.append(pixel.encode_line(event))
            data = b"".join(block)
            handle.write(data)
            written += len(data)
    return written


def median(values):
    return statistics.median(values)


LOAD_SCRIPT = """
import sys, time
sys.path.insert(0, %r)
import pixel
def rss(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))
before, peak_before = rss("VmRSS"), rss("VmHWM")
started = time.perf_counter()
ranges = pixel.load_ranges([("apple_mpp", sys.argv[1])])
print(time.perf_counter() - started, rss("VmRSS") - before, rss("VmHWM") - peak_before)
"""


def bench_ranges(folder, rounds):
    """Apple's list, synthetic: load time and RSS in fresh processes, then lookups here."""
    import pixel
    path = write_apple_like(os.path.join(folder, "egress-ip-ranges.csv"))
    loads = []
    for _ in range(rounds):
        output = subprocess.run([sys.executable, "-c", LOAD_SCRIPT % PROJECT, path],
                                capture_output=True, text=True, check=True).stdout
        loads.append([float(value) for value in output.split()])
    seconds, added, peak = (median(column) for column in zip(*loads))
    print("ranges: Apple-sized list (290,000 rows, %.1f MB): loads in %.2f s (median of %d), "
          "adds %.1f MiB RSS (peak during the load +%.1f MiB)"
          % (os.path.getsize(path) / 1e6, seconds, rounds, added / 1024, peak / 1024))
    ranges = pixel.load_ranges([("apple_mpp", path)])
    rows = [line.split(",")[0].split("/")[0] for line in open(path, encoding="utf-8")]
    inside4 = next(row for row in rows if ":" not in row)
    inside6 = next(row for row in rows if ":" in row)
    for name, address in (("IPv4 inside", inside4), ("IPv6 inside", inside6),
                          ("IPv4 outside", "8.8.8.8"), ("IPv6 outside", "2001:db8::1"),
                          ("IPv4-mapped", "::ffff:" + inside4)):
        best = min(timeit.repeat(lambda: ranges.find(address), number=100000, repeat=5))
        print("ranges: one lookup, %-12s %.2f us (best of 5 x 100,000)" % (name, best * 10))


def bench_labels(rounds):
    """The labelling of one pixel request with no ranges loaded, on heads parsed fresh."""
    import pixel
    agents = [agent for agent, _, _ in AGENTS] + [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36"]
    heads = [("GET /v1/pixel/track?writeKey=k&userId=u&event=Email%%20Opened HTTP/1.1\r\n"
              "Host: pixel.example.com\r\nUser-Agent: %s\r\nAccept: image/avif,image/webp,*/*"
              "\r\nAccept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate, br\r\n"
              "Connection: keep-alive" % agents[number % len(agents)]).encode()
             for number in range(20000)]
    labeller = pixel.Labeller()
    address_of = lambda request: request.peer   # never called: no ranges
    clock = time.perf_counter_ns
    costs = []
    for _ in range(rounds):
        labelled, empty = [], []
        for head in heads:   # each parsed, then labelled at once, as a request is
            parsed = pixel.parse_head(head)
            request = pixel.Request("GET", parsed.path, parsed.query, parsed.headers,
                                    "203.0.113.9", b"")
            context = {"ip": "203.0.113.9"}
            started = clock()
            labeller.label(context, request, address_of)
            labelled.append(clock() - started)
            started = clock()
            empty.append(clock() - started)
        costs.append((median(labelled) - median(empty)) / 1000)
    print("labels: labelling one pixel request, no ranges: %.2f us (median over %d rounds of "
          "the median of %d calls, each timed alone, less the timer's own cost; %d agents)"
          % (median(costs), rounds, len(heads), len(agents)))


def start_pixel_py(script, folder, name):
    log = os.path.join(folder, name + ".jsonl")
    process = subprocess.Popen([sys.executable, script, "--port", "0", "--log", log,
                                "--rejects", log + ".rejects"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    return process, port


def bench_keepalive(folder, rounds, seconds, base):
    """wrk, keep-alive, 50 connections, a track pixel with Apple Mail's agent, against
    pixel.py at `base` (a git revision: before issue 21) and now, alternating."""
    before = os.path.join(folder, "pixel_before.py")
    with open(before, "wb") as handle:
        handle.write(subprocess.run(["git", "-C", PROJECT, "show", base + ":pixel.py"],
                                    capture_output=True, check=True).stdout)
    target = "/v1/pixel/track?writeKey=k&userId=u&event=Email%20Opened"
    rates = {"before": [], "now": []}
    for round_number in range(rounds):
        order = ("before", "now") if round_number % 2 == 0 else ("now", "before")
        for name in order:
            process, port = start_pixel_py(before if name == "before" else PIXEL_PY, folder,
                                           "%s-%d" % (name, round_number))
            try:
                output = subprocess.run(
                    ["wrk", "-t1", "-c50", "-d%ds" % seconds, "-H", "User-Agent: " +
                     AGENTS[2][0], "http://127.0.0.1:%d%s" % (port, target)],
                    capture_output=True, text=True, check=True).stdout
                rates[name].append(float(output.split("Requests/sec:")[1].split()[0]))
            finally:
                process.terminate()
                process.wait(30)
                process.stdout.close()
    ratios = [now / before for now, before in zip(rates["now"], rates["before"])]
    print("keepalive: req/s at %s %.0f, now %.0f (medians of %d rounds of %d s); now/before "
          "%.3f (median of the rounds' ratios)" % (base[:12], median(rates["before"]),
                                                     median(rates["now"]), rounds, seconds,
                                                     median(ratios)))


def bench_report(folder, megabytes, rounds):
    """`pixel.py report` over a synthetic log, plain and gzipped, next to wc -l."""
    path = os.path.join(folder, "events.jsonl")
    size = write_event_log(path, megabytes)
    with open(path, "rb") as source, gzip.open(path + ".gz", "wb", compresslevel=1) as target:
        while True:
            block = source.read(1 << 20)
            if not block:
                break
            target.write(block)
    for name, command in (("wc -l", ["wc", "-l", path]),
                          ("report", [sys.executable, PIXEL_PY, "report", "--by",
                                      "properties.campaign", path]),
                          ("report --daily", [sys.executable, PIXEL_PY, "report", "--by",
                                              "properties.campaign", "--daily", path]),
                          ("report of .gz", [sys.executable, PIXEL_PY, "report", "--by",
                                             "properties.campaign", path + ".gz"])):
        times, cpu = [], []
        for _ in range(rounds):
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
            times.append(time.perf_counter() - started)
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime)
        print("report: %-15s %.0f MB of log in %.2f s: %.0f MB/s; %.2f s of CPU: %.0f MB/s "
              "(medians of %d)" % (name, size / 1e6, median(times), size / 1e6 / median(times),
                                   median(cpu), size / 1e6 / median(cpu), rounds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append",
                        choices=("ranges", "labels", "keepalive", "report"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--report-mb", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=5, help="of each wrk run")
    parser.add_argument("--before", metavar="REV", help="the pixel.py keepalive compares "
                        "with (default: where this branch left lean, git merge-base HEAD lean)")
    args = parser.parse_args()
    sections = args.only or ["ranges", "labels", "keepalive", "report"]
    with tempfile.TemporaryDirectory(prefix="pixel-bench-opens-") as folder:
        if "ranges" in sections:
            bench_ranges(folder, args.rounds)
        if "labels" in sections:
            bench_labels(args.rounds)
        if "keepalive" in sections:
            base = args.before or subprocess.run(
                ["git", "-C", PROJECT, "merge-base", "HEAD", "lean"], capture_output=True,
                text=True, check=True).stdout.strip()
            bench_keepalive(folder, args.rounds, args.seconds, base)
        if "report" in sections:
            bench_report(folder, args.report_mb, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""pixel: a Segment-compatible tracking-pixel server in one file, standard library only.

Usage:
    python3 pixel.py                        # http://127.0.0.1:8000/, ./events.jsonl
    python3 pixel.py --help                 # every flag, its PIXEL_* variable and default
    python3 pixel.py forward --to URL FILE  # send log files to a Segment-compatible API
    python3 pixel.py report FILE            # count the events of a log by a field
    python3 pixel.py erase --user-id U FILE # take a person out of log files (dry run)

    import pixel                            # starts nothing
    event = pixel.pixel_event("track", "writeKey=K&userId=u&event=Opened", received_at=0.0)
    application = pixel.make_wsgi_app(log="events.jsonl")   # behind any WSGI server

It answers Segment's Pixel API and HTTP Tracking API, and appends every accepted event to a
JSON-lines log, on disk before the reply goes out:

    GET  /v1/pixel/{identify,group,alias,page,screen,track}?data=<base64 JSON>
    GET  /v1/pixel/track?writeKey=K&userId=u&event=Email%20Opened&properties.subject=Hi
    POST /v1/{identify,group,alias,page,screen,track,batch,import}   (JSON, optionally gzip)
    GET  /health, /metrics

A pixel route answers 200 with a 1x1 transparent GIF, even on error; a rejected request is
written, with a named reason, to a second JSON-lines file, the rejects log.

Log format: one JSON object per line, ASCII only (non-ASCII is \\u-escaped, so no character
can split a line): the client's payload plus "type", "messageId", "receivedAt", "timestamp",
"context.ip" and "context.userAgent". With --max-bytes the live file is renamed to
<log>.<UTC stamp> before a line would take it past the size, and never renamed again.

The file reads top to bottom, each section under a "# ----" rule, calling only the ones above
it: constants; the pure core (decode, validate, enrich, encode, addresses); HTTP as plain
values; what operators see (stderr, /health, /metrics); log files; machine opens; people to
forget; the recorder and its App; the HTTP transport; WSGI; the forwarder; erasing beside a
running pixel; configuration; wiring; report; erase; the command line.

Copyright (c) 2026 the pixel authors. The MIT License; its text is in LICENSE.
SPDX-License-Identifier: MIT
"""

__version__ = "2.1.0"

__all__ = ["GIF", "REASONS", "Rejected", "decode_query", "validate", "enrich", "build_event",
           "pixel_event", "encode_line", "api_payloads", "LogWriter", "Recorder", "App",
           "PixelServer", "configure", "Pixel", "make_wsgi_app", "main"]

import argparse
import array
import base64
import bisect
import collections
import contextlib
import datetime
import email.utils
import errno
import functools
import gc
import hashlib
import hmac
import html
import http.client
import http.server
import ipaddress
import io
import itertools
import json
import math
import os
import random
import re
import select
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
import unicodedata
import urllib.parse
import weakref
import zlib

try:
    import fcntl      # Unix only: keeps a second process off a log
except ImportError:
    fcntl = None
try:
    import resource   # Unix only: raises the open-file limit
except ImportError:
    resource = None

# --------------------------------------------------------------------------------------------
# Constants

# The 43-byte transparent GIF89a that nginx's empty_gif serves too: a 1x1 screen, a two-colour
# table, a graphic control extension marking colour 0 transparent, one pixel, the trailer.
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
       b"!\xf9\x04\x01\x00\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

EVENT_TYPES = ("identify", "group", "alias", "page", "screen", "track")
BATCH_ROUTES = ("batch", "import")

# Segment's own limits: 32 KB an event, 500 KB a batch request (what the forwarder sends).
MAX_PAYLOAD_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
# What pixel takes: analytics-rust posts batches of up to 512 KiB (batcher.rs) with their
# envelope, and Ruby's, .NET's and Flutter's may pass 500 KB by that envelope.
MAX_BODY_BYTES = 576 * 1024
MAX_BATCH_ITEMS = 10000
# Our own caps. JSON nesting stays far below the recursion limit, so that json's C scanner
# never recurses deep on a small thread stack.
MAX_DEPTH = 32
MAX_PARAMS = 256
MAX_EVENT_LINE = 128 * 1024      # a 32 KB payload of astral characters escapes to ~96 KB
MAX_USER_AGENT = 1024
MAX_REJECT_RAW = 16 * 1024       # of a query or body, quoted in a rejects-log line
MAX_DECODE_ROUNDS = 4            # nested escapes undone looking for an address to truncate
MAX_REQUEST_LOG_BYTES = 16 * MAX_BATCH_BYTES   # what one request's events may add to the log
MAX_REJECTS_PER_REQUEST = 100    # item lines one request may add to the rejects log,
MAX_REJECTS_BYTES_PER_REQUEST = 64 * 1024   # ... and their bytes
MAX_WRITE_BYTES = 1024 * 1024    # the most one write() hands the kernel
MAX_PEM_BYTES = 1024 * 1024
# HTTP heads: http.client's and http.server's limits (_MAXLINE, _MAXHEADERS), and a total.
MAX_LINE = 65536
MAX_HEADERS = 100
MAX_HEAD_BYTES = 2 * MAX_LINE
MAX_PREFLIGHT_HEADERS = 32
RECV_SIZE = 65536

DEFAULT_LOG = "events.jsonl"
DEFAULT_REJECTS_NAME = "rejects.jsonl"
FORWARD_REJECTS_NAME = "forward-rejects.jsonl"   # pixel.py forward's
DEFAULT_DEDUPE_WINDOW = 65536
MAX_DEDUPE_WINDOW = 1 << 24   # 384 MiB of digests: 10**8 failed the start on memory
DEFAULT_MAX_CONNECTIONS = 1024
MIN_TIMEOUT, MAX_TIMEOUT = 0.001, 86400.0
LISTEN_BACKLOG = 1024            # socketserver's 5 drops bursts of connections
THREAD_STACK_SIZE = 512 * 1024   # 1024 threads reserve 512 MiB, not 8 GiB
WORKER_IDLE_SECONDS = 30.0       # a thread with no connection to serve exits after this
ACCEPT_PAUSE = 0.1               # seconds between accept()s that find no file descriptor
STOP_POLL = 0.1                  # seconds a SIGTERM waits, at most, for the accept loop to see it
SUPPRESS_RELOAD_WAIT = 2.0       # seconds a --suppress reload waits for requests on the old list
ERROR_INTERVAL = 10.0            # at most one stderr line per kind of trouble per interval
RELINK_ATTEMPTS = 3              # a log deleted under a write is made again this often
MOVED_GRACE = 1.0                # seconds a log renamed away is still written to
PATH_CHECK_INTERVAL = 0.1        # seconds between looks at whether a log is at its path
MAX_WARM_BYTES = 64 * 1024 * 1024   # of the log's end, read at start to refill the window
STATE_FOLDER = ".pixel"          # beside the log: checkpoints (see state_path)

# The forwarder (--forward, `pixel.py forward`).
DEFAULT_FORWARD_BATCH = 100
DEFAULT_FORWARD_TIMEOUT = 10.0
DEFAULT_FORWARD_ALERT = 300.0
FORWARD_POLL = 0.2               # seconds between looks at a log with nothing new in it
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
MAX_RETRY_AFTER = 600.0
MAX_ANSWER_BYTES = 64 * 1024     # of a receiver's answer, read and quoted
FORWARD_READ = MAX_BATCH_BYTES + MAX_EVENT_LINE   # log bytes read to build one batch
MAX_FORWARD_ITEM = MAX_PAYLOAD_BYTES - 64   # what a receiver takes, with the batch's sentAt
MAX_OPEN_LOG_FILES = 32          # files the forwarder holds open; later ones wait by name
MAX_MOVED_FILES = 1000           # live files moved by hand a checkpoint lists, unsent
HOLD_WAIT = 20.0                 # seconds a post may go on when an erase holds the forwarder
MAX_REFUSED_IN_A_ROW = 3         # events refused alone in a row before the receiver is doubted
PROBES_A_ROUND = 100             # events then sent one at a time, at most, between waits
SNIFF_LINES, SNIFF_BYTES = 8, 2 * MAX_EVENT_LINE   # looked at to tell an event log
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024   # a backfill's checkpoint lists every file sent
CHECKPOINT_SLACK = 16 * 1024     # spaces after a forwarder's: room to grow on a full disk

# Every reason a rejects-log line can name: a test checks it against the README and the code.
REASONS = (
    "no_write_key", "write_key_not_string", "invalid_write_key", "no_user_anon_id",
    "id_not_string", "event_not_defined", "event_not_string", "group_id_not_defined",
    "previous_id_not_defined", "user_id_not_defined", "name_not_string",
    "category_not_string", "properties_not_object", "traits_not_object",
    "context_not_object", "integrations_not_object", "invalid_timestamp", "invalid_base64",
    "invalid_utf8", "invalid_json", "payload_not_object", "invalid_number", "too_deep",
    "payload_too_large", "event_too_large", "invalid_key", "duplicate_key", "key_conflict",
    "too_many_params", "uri_too_long", "header_too_long", "too_many_headers",
    "headers_too_large", "invalid_type", "batch_not_array", "too_many_items",
    "body_too_large", "batch_too_large", "too_many_rejects", "origin_not_allowed",
    "length_required", "bad_header", "bad_host", "bad_framing",
    "torn_tail", "invalid_gzip", "unsupported_encoding", "forward_rejected",
    "forward_unauthorized", "forward_unreadable", "forward_truncated")

# --------------------------------------------------------------------------------------------
# The pure core: a query or a body in, events or a named rejection out. No I/O.

class Rejected(ValueError):
    """A broken rule: `reason` is a stable snake_case name, `item` the batch item at fault."""

    def __init__(self, reason, detail="", item=None):
        super().__init__("%s: %s" % (reason, detail) if detail else reason)
        self.reason, self.detail, self.item = reason, detail, item


def decode_query(query):
    """The payload a pixel's query carries: its plain parameters ("properties.subject=Hi"
    nests), with the base64 JSON object of `data=` laid over them."""
    if query.startswith("data=") and "&" not in query:   # the common pixel, fast
        return decode_data(urllib.parse.unquote(query[5:]) if "%" in query else query[5:])
    if query.count("&") >= MAX_PARAMS:
        raise Rejected("too_many_params")
    data, plain, size = None, {}, 0
    measure = len(query) > MAX_PAYLOAD_BYTES   # decoding only shortens: else it fits
    for field in query.split("&"):   # as parse_qsl(query, keep_blank_values=True) reads it
        key, _, value = field.partition("=")
        if "%" in field or "+" in field:
            try:
                key, value = _unquote(key), _unquote(value)
            except UnicodeDecodeError:
                raise Rejected("invalid_utf8", "query") from None
        if key == "data":
            if data is not None:
                raise Rejected("duplicate_key", "data")
            data = value
            # What it decodes to counts, not its base64 (4/3 as long): with a cache buster
            # beside it, a 24 KB payload was refused though one of 32 KB alone is taken.
            if measure:
                size += len(value.rstrip("=")) * 3 // 4
            continue
        if measure:
            size += len(key) + len(value)
        if "." in key or not key or key in plain:
            if field:   # "a&&b" has no empty field, as parse_qsl reads it
                _set_dotted(plain, key, value)   # nests, or names the broken rule
        else:   # the plain top-level field most parameters are
            plain[key] = value
    if size > MAX_PAYLOAD_BYTES:
        raise Rejected("payload_too_large")
    return plain if data is None else _overlay(plain, decode_data(data))


# "XX" of "%XX" to its character, for the ASCII escapes that make up nearly every query.
_ASCII_ESCAPES = {form % code: chr(code) for code in range(128) for form in ("%02X", "%02x")}


def _unquote(text):
    """urllib.parse.unquote_plus(text, errors="strict"), as parse_qsl reads a field, in half
    the time when every escape is ASCII. Raises UnicodeDecodeError."""
    if "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    first, *pieces = text.split("%")
    try:
        return first + "".join([_ASCII_ESCAPES[piece[:2]] + piece[2:] for piece in pieces])
    except KeyError:   # UTF-8, or not an escape at all: the general way
        return urllib.parse.unquote(text, errors="strict")


def _set_dotted(target, key, value):
    parts = key.split(".")
    if "" in parts or len(parts) > MAX_DEPTH:
        raise Rejected("invalid_key", key[:100])
    last, node = parts.pop(), target
    for part in parts:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise Rejected("key_conflict", key[:100])
    if last in node:
        if isinstance(node[last], dict):
            raise Rejected("key_conflict", key[:100])
        raise Rejected("duplicate_key", key[:100])
    node[last] = value


def _overlay(base, top):
    """A copy of `base` with `top` laid over it, objects in both merged the same way."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        merged[key] = _overlay(below, value) if (
            isinstance(value, dict) and isinstance(below, dict)) else value
    return merged


_MAX_DATA_CHARS = (MAX_PAYLOAD_BYTES + 2) // 3 * 4 + 2


def decode_data(data):
    """A pixel's `data=` value, base64 of a UTF-8 JSON object, as a dict."""
    if len(data) > _MAX_DATA_CHARS:
        raise Rejected("payload_too_large")
    # Senders disagree about the alphabet and the padding, and "+" often arrives as a space:
    # normalise to the standard alphabet, then decode strictly.
    text = data.rstrip("=").replace("-", "+").replace("_", "/").replace(" ", "+")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:   # binascii.Error too: bad characters, bad length, or not ASCII
        raise Rejected("invalid_base64") from None
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise Rejected("payload_too_large")
    return parse_object(raw)


def _refuse_constant(name):
    raise Rejected("invalid_number", name)


# Built once: json.loads with a keyword argument builds a decoder on every call.
_decode_json = json.JSONDecoder(parse_constant=_refuse_constant).decode

_NOT_BRACKET = re.compile(r'[^\[\]{}]+')
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _outside_strings(text):
    """JSON text without its strings, in one linear pass. Dropping escaped backslashes, then
    escaped quotes, leaves only the quotes that delimit strings. (A regular expression
    that skipped strings went quadratic on an unterminated one, with the GIL held.)"""
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    return "".join(unescaped.split('"')[::2])


def json_depth(text):
    """How deep JSON text nests, in one linear pass."""
    brackets = _NOT_BRACKET.sub("", _outside_strings(text))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def _deeper_than(text, max_depth):
    """Whether JSON text nests deeper than `max_depth`, asked before json's C scanner reads
    it (see MAX_DEPTH); cheap unless it has that many brackets."""
    return text.count("{") + text.count("[") > max_depth and json_depth(text) > max_depth


# A \uD800-\uDFFF escape, which json turns into a lone surrogate unless it pairs up.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(value):
    """`value` with each lone surrogate made U+FFFD: serde_json (so Vector) refuses one."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_surrogates(key): _replace_surrogates(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    return value


def parse_object(raw, max_depth=MAX_DEPTH):
    """UTF-8 JSON text that must hold an object nested at most `max_depth` deep."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("invalid_utf8") from None
    if _deeper_than(text, max_depth):
        raise Rejected("too_deep")
    try:
        payload = _decode_json(text)
    except Rejected:
        raise
    except ValueError:
        raise Rejected("invalid_json") from None
    if not isinstance(payload, dict):
        raise Rejected("payload_not_object")
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        payload = _replace_surrogates(payload)
    return payload


# re.ASCII: \d would match Arabic-Indic or fullwidth digits, which int() reads.
_ISO_8601 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d{1,9}))?)?"
    r"([Zz]|[+-](?:[01]\d|2[0-3])(?::?[0-5]\d)?)?)?\Z", re.ASCII)


def parse_time(value):
    """Seconds since the epoch for an ISO-8601 string; no zone means UTC. Raises ValueError."""
    match = _ISO_8601.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError("not an ISO-8601 time: %r" % (value,))
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    moment = datetime.datetime(int(year), int(month), int(day), int(hour or 0),
                               int(minute or 0), int(second or 0), tzinfo=datetime.timezone.utc)
    seconds = moment.timestamp() + float("0." + (fraction or "0")[:3])   # as Date: no rounding
    if zone and zone not in "Zz":
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:] or 0) * 60
        seconds += -offset if zone[0] == "+" else offset
    return seconds


_LAST_SECOND = 253402300800   # the end of year 9999
_second_cache = (None, "")


def format_time(seconds):
    """UTC ISO-8601 with milliseconds and Z, as Segment writes it."""
    global _second_cache
    whole, millis = divmod(int(round(seconds * 1000)), 1000)
    cached_second, text = _second_cache
    if cached_second != whole:   # strftime once a second, not once an event
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second_cache = (whole, text)
    return "%s.%03dZ" % (text, millis)


# Optional fields with a type, and the reason for one of another type.
_OBJECT_FIELDS = {"properties": "properties_not_object", "traits": "traits_not_object",
                  "context": "context_not_object", "integrations": "integrations_not_object"}
_STRING_FIELDS = {"name": "name_not_string", "category": "category_not_string"}
_TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt")


def _string_id(payload, field):
    """The field as a non-empty string, None if absent or empty; numbers become strings."""
    value = payload.get(field)
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, float) and not math.isfinite(value):   # 1e400 parses as inf
        raise Rejected("invalid_number", field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise Rejected("id_not_string", field)


def validate(kind, payload, write_keys=None):
    """A copy of `payload` with its ids made strings if it keeps Segment's rules for `kind`,
    else Rejected. `write_keys`, if given, are the accepted keys; else any non-empty one is.
    The copy is shallow: `properties` and the like are the caller's objects, as in the event."""
    if kind not in EVENT_TYPES:
        raise Rejected("invalid_type", str(kind)[:40])
    if not isinstance(payload, dict):   # a caller's JSON array, say: as the routes refuse it
        raise Rejected("payload_not_object")
    write_key = payload.get("writeKey")
    if write_key is None or write_key == "":
        raise Rejected("no_write_key")
    if not isinstance(write_key, str):
        raise Rejected("write_key_not_string")
    if write_keys and (write_key not in write_keys or   # one key as a string: not a part
                       type(write_keys) is str and write_key != write_keys):
        raise Rejected("invalid_write_key")
    event = dict(payload)
    for field in ("userId", "anonymousId", "messageId"):
        value = _string_id(payload, field)
        if value is not None:
            event[field] = value
    if event.get("userId") in (None, "") and event.get("anonymousId") in (None, ""):
        raise Rejected("no_user_anon_id")
    if kind == "track":
        if payload.get("event") in (None, ""):
            raise Rejected("event_not_defined")
        if not isinstance(payload["event"], str):
            raise Rejected("event_not_string")
    elif kind == "group":
        event["groupId"] = _string_id(payload, "groupId")
        if event["groupId"] is None:
            raise Rejected("group_id_not_defined")
    elif kind == "alias":
        event["previousId"] = _string_id(payload, "previousId")
        if event["previousId"] is None:
            raise Rejected("previous_id_not_defined")
        if event.get("userId") in (None, ""):
            raise Rejected("user_id_not_defined")
    elif kind in ("page", "screen"):
        for field, reason in _STRING_FIELDS.items():
            if payload.get(field) is not None and not isinstance(payload[field], str):
                raise Rejected(reason)
    # A null is taken, and written, as absent: event["properties"]["x"] must not meet one.
    for field, reason in _OBJECT_FIELDS.items():
        value = payload.get(field)
        if value is None:
            event.pop(field, None)
        elif not isinstance(value, dict):
            raise Rejected(reason)
    for field in _STRING_FIELDS:
        if field in payload and payload[field] is None:
            del event[field]
    for field in _TIME_FIELDS:
        if payload.get(field) is not None:
            try:
                parse_time(payload[field])
            except ValueError:   # a day or an hour out of range too
                raise Rejected("invalid_timestamp", field) from None
    return event


_message_ids = random.Random(os.urandom(32))
if hasattr(os, "register_at_fork"):   # a forked child must not repeat its parent's ids
    os.register_at_fork(after_in_child=lambda: _message_ids.seed(os.urandom(32)))


def new_message_id():
    """A random (version 4) UUID. An id needs to be unique, not secret, so its bits come
    from a Mersenne Twister seeded from os.urandom, not a system call an event as uuid4's."""
    bits = _message_ids.getrandbits(128) & ~(0xF000 << 64 | 0xC000 << 48) | \
        (0x4000 << 64 | 0x8000 << 48)
    text = "%032x" % bits
    return "%s-%s-%s-%s-%s" % (text[:8], text[8:12], text[12:16], text[16:20], text[20:])


def enrich(kind, payload, *, received_at, ip=None, user_agent=None, message_id=None,
           anonymize=False):
    """The payload plus type, messageId, receivedAt, timestamp, context.ip and
    context.userAgent, as Segment adds them. `ip=None` drops any address, the client's too;
    `anonymize` truncates a client's context.ip or drops a non-address (the caller truncates
    `ip`), and the addresses in context.userAgent (anonymized_agent). A missing timestamp is
    Segment's: receivedAt - (sentAt - originalTimestamp), which corrects the client's clock;
    else originalTimestamp; else receivedAt."""
    event = {"type": kind, **payload, "type": kind}   # the route's type, first
    if not event.get("messageId"):
        event["messageId"] = message_id or new_message_id()
    received = event["receivedAt"] = format_time(received_at)
    if event.get("timestamp") is None:
        original, sent = event.get("originalTimestamp"), event.get("sentAt")
        event["timestamp"] = received if original is None else original
        if original is not None and sent is not None:
            corrected = received_at - (parse_time(sent) - parse_time(original))
            if 0 <= round(corrected, 3) < _LAST_SECOND:   # as format_time will round it
                event["timestamp"] = format_time(corrected)
    context = dict(event.get("context") or ())
    if ip is None:
        context.pop("ip", None)
    elif anonymize and "ip" in context:
        _anonymize_context_ip(context)
    else:
        context.setdefault("ip", ip)
    if user_agent and "userAgent" not in context:
        context["userAgent"] = user_agent[:MAX_USER_AGENT]
    if anonymize and context.get("userAgent") is not None:   # the client's or the header's
        agent = context["userAgent"]
        agent = anonymized_agent(agent) if isinstance(agent, str) else anonymize_json(agent)[0]
        if agent is None:
            del context["userAgent"]
        else:
            context["userAgent"] = agent
    event["context"] = context
    return event


def build_event(kind, payload, *, received_at, write_keys=None, ip=None, user_agent=None,
                anonymize=False):
    """validate + enrich: the one path from a payload to an event, for every route."""
    return enrich(kind, validate(kind, payload, write_keys), received_at=received_at, ip=ip,
                  user_agent=user_agent, anonymize=anonymize)


def pixel_event(kind, query, *, received_at, write_keys=None, ip=None, user_agent=None):
    """decode_query + build_event: the event a pixel request records."""
    return build_event(kind, decode_query(query), received_at=received_at,
                       write_keys=write_keys, ip=ip, user_agent=user_agent)


def _make_encoder():
    """Compact ASCII JSON that refuses NaN and infinities. JSONEncoder.encode builds a C
    encoder every call; building one once through the private c_make_encoder saves ~3 us
    an event (test_pixel.LineEncoding compares the two). Where it is missing or differs, the
    documented one."""
    encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    try:   # the signature since CPython 3.11; objects from JSON cannot be cyclic
        scan = json.encoder.c_make_encoder(None, encoder.default,
                                           json.encoder.encode_basestring_ascii, None,
                                           ":", ",", False, False, False)
    except (AttributeError, TypeError):
        return encoder.encode
    return lambda document: "".join(scan(document, 0))


_encode = _make_encoder()
# For what a rejects line only quotes, where 1e400 may appear.
_encode_lenient = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
_encode_utf8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_line(event):
    """The event as one log line: compact ASCII JSON and a newline."""
    try:
        line = _encode(event)
    except ValueError:   # a float out of range, such as 1e400 parsed to inf
        raise Rejected("invalid_number") from None
    except RecursionError:   # only an object built in Python can nest this deep
        raise Rejected("too_deep") from None
    if len(line) >= MAX_EVENT_LINE:
        raise Rejected("event_too_large")
    return (line + "\n").encode("ascii")


def decode_body(body, content_encoding=None):
    """The JSON bytes of an API request body, gunzipped if it says so, capped in size."""
    coding = (content_encoding or "identity").strip().lower()
    if coding == "gzip":
        body = _gunzip(body)
    elif coding != "identity":
        raise Rejected("unsupported_encoding")
    if len(body) > MAX_BODY_BYTES:
        raise Rejected("body_too_large")
    return body


def request_log_limit(body_size):
    """The most one API request of `body_size` bytes may add to the log: uncapped, ten thousand
    two-field items write 40 times their body once each has a user agent and pixel's fields."""
    return min(MAX_REQUEST_LOG_BYTES, max(MAX_BATCH_BYTES, 16 * body_size))


def _gunzip(body):
    """Every gzip member of `body` (gzip -c a b > c makes several), each checked by its trailer,
    inflated no further than a byte past the cap: a bomb of a few KB can inflate to gigabytes."""
    parts, size = [], 0
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(body, MAX_BODY_BYTES + 1 - size)
        except zlib.error:   # not gzip, corrupt, or a CRC or length that does not match
            raise Rejected("invalid_gzip") from None
        size += len(part)
        if inflater.unconsumed_tail or size > MAX_BODY_BYTES:
            raise Rejected("body_too_large")
        if not inflater.eof:   # cut short: no trailer, so nothing was checked
            raise Rejected("invalid_gzip")
        parts.append(part)
        body = inflater.unused_data
        if not body:
            return b"".join(parts)


def request_write_key(authorization, query):
    """The writeKey a request names outside its body: its Basic auth user (Segment's and
    RudderStack's SDKs send `writeKey:`), else its query's (navigator.sendBeacon cannot send
    Authorization); None if neither. Raises Rejected for a query with two, or one not UTF-8."""
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            credential = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
        except ValueError:   # not base64, or not UTF-8
            credential = ""
        user = credential.partition(":")[0]
        if user:
            return user
    write_key = None
    for field in (query or "").split("&"):
        name, _, value = field.partition("=")
        if urllib.parse.unquote(name, errors="replace") != "writeKey":
            continue
        if write_key is not None:
            raise Rejected("duplicate_key", "writeKey")
        try:
            write_key = _unquote(value)
        except UnicodeDecodeError:
            raise Rejected("invalid_utf8", "writeKey") from None
    return write_key or None


def api_payloads(route, body, *, authorization=None, query=""):
    """An HTTP Tracking API body as (kind, payload) pairs; `route` is an event type, "batch"
    or "import". Items inherit the batch's context, integrations, sentAt and writeKey (objects
    merge); an event still without a writeKey takes request_write_key's. Raises Rejected for
    a bad body (a 400); a bad item, or one over 32 KB with what it inherits, comes back as a
    Rejected in its place, so that the rest still count."""
    batch = route in BATCH_ROUTES
    document = parse_object(body, MAX_DEPTH + 2 if batch else MAX_DEPTH)   # {"batch": [{
    fallback_key = request_write_key(authorization, query)
    if not batch:   # measured as a batch's item is: \u escapes and white space are not sent
        if len(body) > MAX_PAYLOAD_BYTES and _utf8_size(document) > MAX_PAYLOAD_BYTES:
            raise Rejected("payload_too_large")
        if fallback_key and not document.get("writeKey"):
            document["writeKey"] = fallback_key
        return [(route, document)]
    items = document.get("batch")
    if not isinstance(items, list):
        raise Rejected("batch_not_array")
    if len(items) > MAX_BATCH_ITEMS:
        raise Rejected("too_many_items")
    shared = {field: document[field] for field in ("context", "integrations", "sentAt",
                                                   "writeKey") if document.get(field)}
    if fallback_key and "writeKey" not in shared:
        shared["writeKey"] = fallback_key
    # What an item inherits counts toward its 32 KB and depth, so a large shared context is
    # not copied into thousands of items; and together they write a small multiple of the body.
    texts = [_encode_lenient(value) for value in shared.values()]
    if any(json_depth(text) > MAX_DEPTH - 1 for text in texts):   # level 2 of every event
        raise Rejected("too_deep")
    inherited = sum(map(len, texts))
    inherited_utf8 = sum(map(_utf8_size, shared.values())) if any(
        "\\u" in text for text in texts) else inherited
    limit, total, pairs = request_log_limit(len(body)), 0, []
    for item in items:
        if not isinstance(item, dict):
            pairs.append((None, Rejected("payload_not_object", item=item)))
            continue
        size = len(_encode_lenient(item)) + inherited
        total += size
        if total > limit:
            raise Rejected("batch_too_large")
        if size > MAX_PAYLOAD_BYTES and _utf8_size(item) + inherited_utf8 > MAX_PAYLOAD_BYTES:
            pairs.append((item.get("type"), Rejected("payload_too_large", item=item)))
            continue
        payload = dict(item)
        for field, value in shared.items():
            if isinstance(value, dict) and isinstance(payload.get(field), dict):
                payload[field] = _overlay(value, payload[field])
            elif payload.get(field) in (None, ""):
                payload[field] = value
        kind = payload.get("type")
        pairs.append((kind, payload if kind in EVENT_TYPES else
                      Rejected("invalid_type", item=item)))
    return pairs


def _utf8_size(document):
    """The size of `document` as compact UTF-8 JSON: how SDKs measure their 32 KB (Ruby's,
    Java's, Go's and Rust's caps), where pixel's ASCII log escapes a character to 6 or 12."""
    return len(_encode_utf8(document).encode("utf-8", "surrogatepass"))


def dedupe_key(write_key, message_id, machine=False):
    """What the dedupe window knows an event by: its writeKey and messageId, as Segment dedupes per
    source, and whether it is labelled `machine`: a scanner's or Apple's fetch of an email's pixel
    comes first, and the person's open of the same URL is no retry of it (a forwarding pixel's
    labelled events still dedupe among themselves). Of any length: the window keeps its digest."""
    return "%s%d:%s:%s" % ("m" if machine else "", len(write_key), write_key, message_id)


# Addresses, of the same pure core: which one a request came from, and how --anonymize-ip
# truncates it (enrich above calls these; these call the decoding above).

def _address(text):
    """An ip_address, IPv4-mapped IPv6 read as IPv4; None if `text` is not an address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def _trusted(peer, trusted_proxies):
    """Whether `peer` is among `trusted_proxies`: networks, and "unix", the peer of a unix
    socket, which has no address (a WSGI server bound to one gives REMOTE_ADDR "")."""
    if not peer:   # None: a WSGI server that named no peer, which nothing vouches for
        return peer == "" and "unix" in trusted_proxies
    address = _address(peer) if trusted_proxies else None
    return address is not None and any(address in network for network in trusted_proxies
                                       if network != "unix")


def client_ip(peer, forwarded_for, trusted_proxies):
    """The client's address: the peer, or with a trusted peer the right-most untrusted
    entry of X-Forwarded-For, read right to left since only the right end was written by
    proxies we trust. An IPv4-mapped IPv6 peer (a `--host ::` socket) is read as IPv4."""
    candidate = str(_address(peer) or peer) if peer.startswith("::ffff:") else peer
    for entry in reversed((forwarded_for or "").split(",")):
        address = _address(entry.strip()) if _trusted(candidate, trusted_proxies) else None
        if address is None:   # not sent by a proxy we trust, or malformed: trust no further
            break
        candidate = str(address)
    return candidate


def hint_trusted_proxy(peer, reporter):
    """Say, if `peer` is a private address (a proxy's, likely), that its X-Forwarded-For is
    ignored for want of --trusted-proxy; whether it said so."""
    address = "unix" if peer == "" else _address(peer or "")   # "": a unix socket's (WSGI)
    if address is None or address != "unix" and not (address.is_private or address.is_loopback):
        return False   # a client's own header (a corporate proxy's)
    reporter.say("requests from %s carry X-Forwarded-For, which is ignored: the client's "
                 "address is not recorded. If it is a proxy of yours, start pixel with "
                 "--trusted-proxy %s (a WSGI app: trusted_proxy=[\"%s\"])"
                 % (peer or "a unix socket", address, address))
    return True


def request_scheme(request, trusted_proxies):
    """"https" or "http": how the client reached us; a trusted proxy that ends TLS in
    front of pixel says so in X-Forwarded-Proto."""
    forwarded = request.headers.get("x-forwarded-proto", "").strip().lower()
    if forwarded in ("http", "https") and _trusted(request.peer, trusted_proxies):
        return forwarded
    return request.scheme


def anonymize_ip(text):
    """An address truncated as Matomo and Google Analytics do: IPv4 to its /24, IPv6 to its
    /48 (a 6to4 one to /40, which is the IPv4 /24); None for what is not an address."""
    address = _address(text.strip()) if text.isascii() else None
    if address is None:
        return None
    prefix = 24 if address.version == 4 else 40 if address.sixtofour is not None else 48
    return str(ipaddress.ip_network("%s/%d" % (address, prefix), strict=False).network_address)


def _anonymize_context_ip(context):
    """Truncate a client's context["ip"] by anonymize_ip, or drop a non-address (nothing to
    truncate, so nothing to keep); return whether it was dropped."""
    address = anonymize_ip(context["ip"]) if isinstance(context["ip"], str) else None
    if address is None:
        del context["ip"]
    else:
        context["ip"] = address
    return address is None


# A run of the characters addresses are written with: found in one linear pass, whatever
# stands beside it ("host.203.0.113.77", "ip:2001:db8::77").
_ADDRESS_RUN = re.compile(r"[0-9A-Fa-fxX.:]+", re.ASCII)
# A part of a run that may be a number of an address: one as inet_aton reads it (0xcb.0.113.77
# is 203.0.113.77), or one with hex letters beside it ("cafe203.0.113.77abc"), as the run
# takes them in.
_DIGIT = re.compile(r"[0-9]")


def _dotted(group):
    """`group` with each number past the third of every four or more dotted ones made 0."""
    parts, count = group.split("."), 0
    for index, part in enumerate(parts):
        count = count + 1 if _DIGIT.search(part) else 0
        if count > 3:
            parts[index] = "0"
    return ".".join(parts)


def _truncate_run(match):
    run = match.group()
    if ":" not in run and "." not in run:   # no separator: not an address
        return run
    core = run.strip(".")
    if core.startswith(":") and not core.startswith("::"):
        core = core[1:]
    if core.endswith(":") and not core.endswith("::"):
        core = core[:-1]
    address = anonymize_ip(core) if ":" in core else None
    if address is not None:
        return run.replace(core, address, 1)
    return ":".join(map(_dotted, run.split(":")[:3]))   # not an address: its first 48 bits


def anonymize_addresses(text):
    """`text` with each address in it truncated as anonymize_ip does, whatever stands
    beside it; and what could be read as one, though ipaddress refuses it, cut as far:
    dotted numbers past the third, IPv6-like groups past the third."""
    return _ADDRESS_RUN.sub(_truncate_run, text)


_UNICODE_ESCAPE = re.compile(r"[\\%]u([0-9A-Fa-f]{4})")   # JSON's \u002E, IIS's %u002E
_OTHER_DIGIT = re.compile(r"(?![0-9])\d")   # a digit of another script, which int() reads
# What IDNA (the idna codec, browsers' URL parsers) reads as a dot, or drops (RFC 3454 B.1).
_IDNA_MAPPED = dict.fromkeys((0xAD, 0x34F, 0x1806, 0x180B, 0x180C, 0x180D, 0x200B, 0x200C,
                              0x200D, 0x2060, 0xFEFF) + tuple(range(0xFE00, 0xFE10)))
_IDNA_MAPPED[0x3002] = "."   # the ideographic full stop (NFKC makes U+FF61 one)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}")


def base64_decodings(text):
    """What each run of base64 in `text`, either alphabet, decodes to (bytes): a client can
    encode any string so, not only data=."""
    for match in _BASE64_RUN.finditer(text):
        run = match.group().replace("-", "+").replace("_", "/")
        for start in range(4):   # the run may begin anywhere in a group of four
            piece = run[start:]
            if len(piece) % 4 == 1:   # a last character alone holds no whole byte
                piece = piece[:-1]
            # Its last group too, unpadded: a payload's last bytes may hold an id.
            yield base64.b64decode(piece + "=" * (-len(piece) % 4), validate=True)


def _reveal(text):
    """`text` as a reader could decode it: percent-escapes, \\u and %u escapes and HTML
    character references undone as often as they nest, fullwidth forms and other scripts'
    digits made ASCII. None if it still changes after MAX_DECODE_ROUNDS rounds, or holds a
    percent-escape that is not UTF-8 (a lenient decoder reads the overlong %C0%AE as ".")."""
    for _ in range(MAX_DECODE_ROUNDS + 1):
        try:
            decoded = urllib.parse.unquote(text, errors="strict") if "%" in text else text
        except UnicodeDecodeError:
            return None
        if "u" in decoded:
            decoded = _UNICODE_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), decoded)
        if "&" in decoded:
            decoded = html.unescape(decoded)
        if not decoded.isascii():
            decoded = _OTHER_DIGIT.sub(lambda match: str(unicodedata.decimal(match.group())),
                                       unicodedata.normalize("NFKC", decoded))
            decoded = decoded.translate(_IDNA_MAPPED)
        if decoded == text:
            return text
        text = decoded
    return None


def anonymize_text(text, limit=None):
    """Client text a line may quote under --anonymize-ip: `text` itself if no address can
    be read out of it, else its decoded form with every address truncated; None if it
    cannot be decoded far enough to tell. With a `limit`, only so many characters."""
    if len(text) < 8 and (not text or text.isalnum()):   # no address, escape, base64
        return text
    cut = limit is not None and len(text) > limit
    revealed = _reveal(text[:limit] if cut else text)
    if revealed is None:
        return None
    if cut:   # part of an address is no address, and would be quoted as it is
        revealed = revealed.rstrip("0123456789ABCDEFabcdefxX:.")
    for raw in base64_decodings(revealed):
        decoded = raw.decode("latin-1")
        if anonymize_addresses(decoded) != decoded:
            return None
    anonymized = anonymize_addresses(revealed)
    return text if anonymized == revealed and not cut else anonymized


# anonymize_text, cached for user agents: ~90 us to look through one, and most recur.
_anonymized_agent = functools.lru_cache(maxsize=1024)(anonymize_text)


def anonymized_agent(agent):
    """A user agent an event records under --anonymize-ip, an address in it truncated, or
    None if it cannot be decoded far enough to tell. An attack pass found a proxy's agent,
    "(for 203.0.113.77)", logged whole; the cache holds agents of MAX_USER_AGENT at most."""
    return (_anonymized_agent if len(agent) <= MAX_USER_AGENT else anonymize_text)(agent)


def anonymize_json(value, budget=MAX_REJECT_RAW):
    """(A copy of parsed JSON fit to quote under --anonymize-ip, whether anything was left out):
    strings and keys through anonymize_text, context.ip as enrich keeps it. Strings past `budget`
    characters become "": a body can hold 100,000 addresses, each microseconds to truncate."""
    left_out = False

    def quote(text):
        nonlocal budget, left_out
        if budget <= 0:
            return ""
        safe = anonymize_text(text, budget)
        budget -= len(text)
        left_out = left_out or safe is None
        return safe

    def walk(value):
        nonlocal budget, left_out
        budget -= 2 if isinstance(value, (str, list, dict)) else 1   # quotes, brackets
        if isinstance(value, str):
            return quote(value) or ""
        if isinstance(value, list):
            return [walk(item) for item in itertools.takewhile(lambda _: budget > 0, value)]
        if not isinstance(value, dict):
            return value
        copy = {}
        for key, item in value.items():
            if budget <= 0:   # a body of empty lists, which has no strings, too
                break
            name = quote(key)
            if name is not None:
                copy[name] = walk(item)
        context = copy.get("context")
        if isinstance(context, dict) and "ip" in context and _anonymize_context_ip(context):
            left_out = True
        return copy

    return walk(value), left_out   # nested at most MAX_DEPTH + 2: see parse_object


# Printable ASCII but what delimits or escapes a query: kept as is in a rebuilt one.
_QUERY_SAFE = "".join(chr(code) for code in range(0x21, 0x7f) if chr(code) not in "%&=+#")


def anonymize_query(query):
    """(A pixel's query fit to quote under --anonymize-ip, whether anything was left out): a
    parameter from which an address can be read (data= decoded too) is rebuilt with it
    truncated; one that does not decode, and all past MAX_REJECT_RAW characters, is left out."""
    fields, left_out, budget = [], False, MAX_REJECT_RAW
    for field in query.split("&"):
        if budget <= 0:
            break
        budget -= len(field) + 1
        name, _, value = field.partition("=")
        try:
            name, value = _unquote(name), _unquote(value)
            payload = decode_data(value) if name == "data" else None
        except (UnicodeDecodeError, Rejected):   # no telling what it holds
            left_out = True
            continue
        if name == "data":
            safe, cut = anonymize_json(payload)
            left_out = left_out or cut
            if safe != payload:
                data = base64.urlsafe_b64encode(_encode_lenient(safe).encode("ascii"))
                field = "data=" + data.decode("ascii").rstrip("=")
        else:
            safe_name = anonymize_text(name, MAX_REJECT_RAW)
            safe_value = anonymize_text(value, MAX_REJECT_RAW)
            if name == "context.ip" and safe_value is not None:   # as enrich keeps it
                safe_value = anonymize_ip(safe_value)
            if safe_name is None or safe_value is None:
                left_out = True
                continue
            if (safe_name, safe_value) != (name, value):
                # A \u escape can make a lone surrogate, which UTF-8 cannot hold: "?".
                field = "%s=%s" % (urllib.parse.quote(safe_name, _QUERY_SAFE, errors="replace"),
                                   urllib.parse.quote(safe_value, _QUERY_SAFE, errors="replace"))
        fields.append(field)
    return "&".join(fields), left_out


def anonymize_body(body):
    """anonymize_json for an API body (gunzipped), as text. One that is not JSON could hold
    an address in any encoding: it is left out whole."""
    try:
        text = body.decode("utf-8")
        if _deeper_than(text, MAX_DEPTH + 2):
            return "", True
        document = json.loads(text)
    except ValueError:   # UnicodeDecodeError too
        return "", True
    safe, left_out = anonymize_json(document)
    return _encode_lenient(safe), left_out


def user_agent(headers):
    """The User-Agent header as text. Transports hand over header bytes read as Latin-1
    (WSGI's rule too): a UTF-8 agent is read as UTF-8 again, not logged as mojibake."""
    agent = headers.get("user-agent")
    if agent and not agent.isascii():
        agent = agent.encode("latin-1", "replace").decode("utf-8", "replace")
    return agent or None


# --------------------------------------------------------------------------------------------
# HTTP as plain values: what a path is, what a request and an answer are, CORS, the settings
# documents SDKs load, and reading a request head. No I/O.

Route = collections.namedtuple("Route", "kind name methods max_body browser",
                               defaults=(False,))
Route.__doc__ = """What a path is: its `kind` ("pixel", "api", "metrics": a browser SDK's own,
"settings", "prometheus" or "health"), `name` (event type, API route or document), the
`methods` it answers (others get a 405), `max_body` (0: a body is dropped), and `browser`:
whether only browsers post there, so that an event's clock is the browser's."""

_GET_HEAD = ("GET", "HEAD")
_POST_OPTIONS = ("POST", "OPTIONS")   # OPTIONS: a browser's CORS preflight
_DOCUMENT = ("GET", "HEAD", "OPTIONS")

# The one route table, which every transport and every early answer asks. analytics.js posts
# an event to the first letter of its type, a batch to /b and its own metrics to /m.
# RudderStack's browser SDK posts a beacon's batch to /beacon/v1/batch (the writeKey in the
# query: sendBeacon cannot send Authorization), its error reports to /rsaMetrics, and loads
# its source configuration from /sourceConfig/ (HEAD ...?view=ad: is it ad-blocked?).
ROUTES = {"/health": Route("health", "health", _GET_HEAD, 0),
          "/metrics": Route("prometheus", "metrics", _GET_HEAD, 0),
          "/v1/m": Route("metrics", "m", _POST_OPTIONS, MAX_PAYLOAD_BYTES, True),
          "/rsaMetrics": Route("metrics", "rsaMetrics", _POST_OPTIONS, MAX_BODY_BYTES, True),
          "/beacon/v1/batch": Route("api", "batch", _POST_OPTIONS, MAX_BODY_BYTES, True),
          "/sourceConfig": Route("settings", "sourceConfig", _DOCUMENT, 0),
          "/sourceConfig/": Route("settings", "sourceConfig", _DOCUMENT, 0)}
ROUTES.update(("/v1/pixel/" + kind, Route("pixel", kind, _GET_HEAD, 0)) for kind in EVENT_TYPES)
ROUTES.update(("/v1/" + name, Route("api", name, _POST_OPTIONS, MAX_BODY_BYTES))
              for name in EVENT_TYPES + BATCH_ROUTES)
ROUTES.update(("/v1/" + name[0], Route("api", name, _POST_OPTIONS, MAX_BODY_BYTES, True))
              for name in EVENT_TYPES + ("batch",))

# GET /v1/projects/<writeKey>/settings: what analytics.js fetches from its CDN.
SETTINGS_PREFIX, SETTINGS_SUFFIX = "/v1/projects/", "/settings"
SETTINGS_ROUTE = Route("settings", "settings", _DOCUMENT, 0)
_WRITE_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}\Z", re.ASCII)


def route_for(path):
    """The Route for `path`, or None. An API path may end in a slash: analytics-java's
    default is /v1/import/."""
    route = ROUTES.get(path)
    if route is None and path.endswith("/"):
        route = ROUTES.get(path[:-1])
        route = route if route is not None and route.kind == "api" else None
    if route is None and path.startswith(SETTINGS_PREFIX) and path.endswith(SETTINGS_SUFFIX) \
            and _WRITE_KEY.match(path[len(SETTINGS_PREFIX):-len(SETTINGS_SUFFIX)]):
        return SETTINGS_ROUTE
    return route


Request = collections.namedtuple("Request", "method path query headers peer body prefix "
                                            "scheme", defaults=("", "http"))
Request.__doc__ = """A request as plain values: `headers` a dict with lower-case names, `peer` the
connection's address ("" a unix socket's, None if a WSGI server named none), `body` bytes, `prefix`
the path an app is mounted under (WSGI's SCRIPT_NAME), `scheme` "https" when it came over TLS."""

Answer = collections.namedtuple("Answer", "status headers body")
Answer.__doc__ = """What a transport sends: a status, (name, value) header pairs, Content-Length
among them, and the body, which goes out for every method but HEAD."""


def _answer(status, content_type, body, extra_headers=()):
    return Answer(status, (("Content-Type", content_type), ("Content-Length", str(len(body))))
                  + tuple(extra_headers), body)


def plain_answer(status, extra_headers=()):
    """A fixed text answer, the status's own phrase: never anything from the request."""
    phrase = http.server.BaseHTTPRequestHandler.responses[status][0]
    return _answer(status, "text/plain; charset=utf-8", phrase.encode() + b"\n", extra_headers)


def json_answer(status, document, extra_headers=()):
    body = json.dumps(document).encode() + b"\n"
    return _answer(status, "application/json", body, extra_headers)


def error_answer(status, error, extra_headers=()):
    return json_answer(status, {"success": False, "error": error}, extra_headers)


def add_headers(answer, headers):
    """`answer` with `headers` (pairs) added, or `answer` itself for none."""
    return answer._replace(headers=answer.headers + tuple(headers)) if headers else answer


GIF_ANSWER = _answer(200, "image/gif", GIF, (
    ("Cache-Control", "no-cache, no-store, must-revalidate"), ("Pragma", "no-cache"),
    ("Expires", "0")))
NOT_FOUND = plain_answer(404)
SUCCESS = json_answer(200, {"success": True})


def not_allowed(route):
    return plain_answer(405, (("Allow", ", ".join(route.methods)),))


# An origin as browsers send it: scheme, host (a name, or an IPv6 address in brackets), port.
# Only such a value is ever echoed back; "null" (file:, sandboxed frames) is not one.
_ORIGIN = re.compile(r"https?://(?:[\w-]+(?:\.[\w-]+)*\.?|\[[0-9A-Fa-f:.]+\])"   # docker_host
                     r"(?::\d{1,5})?\Z", re.ASCII)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")   # RFC 9110's: a method, a header name
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_ok(origin):
    """Whether `origin` is scheme://host[:port] (the scheme lower-case) as a browser may reach it:
    a host name (docker_host, a trailing dot too) or an IPv6 literal, port 1 to 65535 if any."""
    if not _ORIGIN.match(origin):
        return False
    host = origin.partition("://")[2]
    literal, bracket, port = host[1:].partition("]") if host.startswith("[") else ("", "", host)
    try:
        literal and ipaddress.IPv6Address(literal)
    except ValueError:
        return False
    port = port.partition(":")[2]
    return not port or 0 < int(port) < 65536


def origin_allowed(origin, allowed):
    """Whether --allow-origin entries `allowed` allow `origin`: none allow any; an origin
    allows itself; "*.example.com" any subdomain of example.com, on any scheme and port."""
    origin = origin.lower()
    if not allowed or origin in allowed:
        return True
    host = origin.partition("://")[2].partition(":")[0]
    # An IPv6 address ("[" before its first colon) is allowed by exact entries only.
    return not host.startswith("[") and any(
        pattern.startswith("*.") and host.endswith(pattern[1:]) for pattern in allowed)


def cors_headers(request, allowed):
    """A browser's CORS headers: () for a request with no Origin (a server, not a browser),
    None for an origin not allowed or not well-formed, else the origin echoed with
    credentials allowed, as analytics.js's `credentials: 'include'` needs."""
    origin = request.headers.get("origin")
    if not origin:
        return ()
    # "null": a sandboxed frame's or a file: page's, which only "any origin" (no
    # --allow-origin) lets in: the attack pass's 403 lost those pages' events.
    if not (origin_ok(origin) or origin == "null") or not origin_allowed(origin, allowed):
        return None
    return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
            ("Access-Control-Allow-Credentials", "true"))


def preflight(route, request, cors):
    """A CORS preflight's answer: 204 allowing the route's methods and the headers asked
    for (Authorization, X-Retry-Count), cached for two hours, Chromium's cap; a 403 with no
    CORS headers for an origin not allowed. A 204 has no Content-Length (RFC 9110 8.6)."""
    if not cors:
        return plain_answer(403)
    asked = request.headers.get("access-control-request-headers", "")
    names = [name.strip() for name in asked.split(",")[:MAX_PREFLIGHT_HEADERS]]
    allowed = ", ".join(name for name in names if _TOKEN.match(name))
    methods = ", ".join(method for method in route.methods if method != "HEAD")
    headers = cors + (("Access-Control-Allow-Methods", methods),
                      ("Access-Control-Max-Age", "7200"))
    if allowed:
        headers += (("Access-Control-Allow-Headers", allowed),)
    return Answer(204, headers, b"")


def settings_document(write_key, protocol, host, prefix):
    """The settings document analytics.js loads from its CDN (`cdnURL`), its Segment.io
    destination pointing at pixel: `host` and the `prefix` it is mounted under."""
    api_host = host.rstrip("/") + prefix.rstrip("/") + "/v1"
    return {"integrations": {"Segment.io": {
                "apiKey": write_key, "apiHost": api_host, "protocol": protocol,
                "unbundledIntegrations": [], "addBundledMetadata": True,
                "maybeBundledConfigIds": {}}},
            "plan": {"track": {"__default": {"enabled": True, "integrations": {}}},
                     "identify": {"__default": {"enabled": True}},
                     "group": {"__default": {"enabled": True}}},
            "edgeFunction": {}, "analyticsNextEnabled": True, "middlewareSettings": {},
            "enabledMiddleware": {}, "metrics": {"sampleRate": 0}, "remotePlugins": []}


def source_config(write_key):
    """The source configuration RudderStack's browser SDK loads (`configUrl`): enabled, no
    destinations and its own reports off, so that it sends events to pixel and nothing else."""
    off = {"enabled": False}
    return {"source": {"id": write_key, "name": "pixel", "writeKey": write_key,
                       "enabled": True, "destinations": [],
                       "config": {"statsCollection": {"errors": off, "metrics": off}}}}


# What HeadError may say of a head whose request line was read whole: it goes to its route.
_ROUTED_HEAD_ERRORS = ("bad_header", "bad_host", "bad_framing")


class HeadError(Exception):
    """A request head that cannot be served: the `status` to answer, a `reason` for the
    rejects log, and the `request_line` as far as it was read (bytes)."""

    def __init__(self, status, reason, request_line):
        super().__init__(reason)
        self.status, self.reason, self.request_line = status, reason, request_line


Head = collections.namedtuple("Head", "method target path query version headers body_length "
                                      "keep_alive")
Head.__doc__ = """A parsed request head. `headers` has lower-case names (repeats joined with
", "); `body_length` is the Content-Length, 0 without one, -1 for a chunked body."""

_COMMON_METHODS = frozenset(("GET", "HEAD", "POST"))
_HTTP_VERSION = re.compile(r"HTTP/(\d)\.(\d)\Z")
_SAFE_TARGET = bytes(range(0x21, 0x7f))   # printable ASCII: kept as is when re-quoting


def parse_head(head):
    """A request head (its lines without the blank one after them; CRLF or bare LF) as a
    Head, or HeadError. Limits are http.server's: lines of MAX_LINE bytes, MAX_HEADERS
    headers. Whitespace before a colon, line folding, two framings or two Content-Lengths
    are refused (RFC 9112 5.1, 5.2, 6.3): each has smuggled a request past a proxy."""
    lines = head.split(b"\n")
    request_line = lines[0].rstrip(b"\r")
    # A bare CR or a NUL is read differently by different parsers (RFC 9112 2.2). (The head
    # comes without its last line end, so a CR may end it.)
    if head.count(b"\r") != head.count(b"\r\n") + head.endswith(b"\r") or b"\0" in head:
        raise HeadError(400, "bad_header", request_line[:MAX_LINE])
    if len(request_line) > MAX_LINE:
        raise HeadError(414, "uri_too_long", request_line[:MAX_LINE])
    if len(lines) - 1 > MAX_HEADERS:
        raise HeadError(431, "too_many_headers", request_line)
    words = request_line.decode("latin-1").split(" ")
    if len(words) > 3:
        words = spaced_pixel_target(words)
    if len(words) != 3:   # two words is HTTP/0.9, which has no Host and no user agent
        raise HeadError(400, "bad_request_line", request_line)
    method, target, version = words
    if version == "HTTP/1.1" and method in _COMMON_METHODS:
        minor = "1"
    else:
        match = _HTTP_VERSION.match(version)
        if not _TOKEN.match(method) or not match or match.group(1) == "0":
            raise HeadError(400, "bad_request_line", request_line)
        if match.group(1) != "1":
            raise HeadError(505, "bad_version", request_line)
        minor = match.group(2)
    headers = {}
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if len(line) > MAX_LINE:
            raise HeadError(431, "header_too_long", request_line)
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in b" \t":
            raise HeadError(400, "bad_header", request_line)
        name = name.decode("latin-1").lower()
        value = value.strip(b" \t").decode("latin-1")
        headers[name] = headers[name] + ", " + value if name in headers else value
    connection = headers.get("connection", "").lower()
    keep_alive = "keep-alive" in connection if minor == "0" else "close" not in connection
    # HTTP/1.1 needs exactly one Host (RFC 9112 3.2): two could route differently at a proxy.
    if minor != "0" and (not headers.get("host") or "," in headers["host"]):
        raise HeadError(400, "bad_host", request_line)
    if not target.isascii():
        target = urllib.parse.quote_from_bytes(target.encode("latin-1"), _SAFE_TARGET)
    if not target.startswith("/"):
        scheme, _, rest = target.partition("://")   # the absolute form, RFC 9112 3.2.2
        if scheme.lower() not in ("http", "https") or not rest:
            raise HeadError(400, "bad_target", request_line)
    body_length = _body_length(headers, minor)
    if body_length is None:
        raise HeadError(400, "bad_framing", request_line)
    path, query = split_target(target)
    return Head(method, target, path, query, "HTTP/1." + minor, headers, body_length,
                keep_alive)


def split_target(target):
    """A request target's path, percent-decoded as a WSGI host decodes PATH_INFO, so that
    every transport routes alike, and its query as it came. The absolute form's path is
    its path (parse_head refuses one of another scheme first). A fragment, which no
    browser sends, is dropped, as WSGI hosts drop it."""
    if "#" in target:
        target = target.partition("#")[0]
    path, _, query = target.partition("?")
    if not path.startswith("/"):
        path = "/" + path.partition("://")[2].partition("/")[2]
    return urllib.parse.unquote(path, "latin-1") if "%" in path else path, query


def spaced_pixel_target(words):
    """A request line's `words` (more than three) as [method, target, version] if its target
    is a pixel URL with literal spaces in its query, as Segment's docs show one
    (.../track?userId=user_123&event=Email Opened&...); else as they came, to be refused."""
    method, version = words[0], words[-1]
    middle = [word for word in words[1:-1] if word]
    if method in _GET_HEAD and version.startswith("HTTP/1.") and middle and "?" in middle[0] \
            and middle[0].startswith("/"):
        route = route_for(split_target(middle[0])[0])
        if route is not None and route.kind == "pixel":
            return [method, " ".join(middle), version]
    return words


def _body_length(headers, minor):
    """Content-Length as an int, 0 without one, -1 chunked, None for invalid framing."""
    if "transfer-encoding" in headers:
        # Chunked alone, in HTTP/1.1 (RFC 9112 6.1): another coding, or a length beside it,
        # may frame the body otherwise at a proxy.
        return -1 if headers["transfer-encoding"].lower() == "chunked" and minor != "0" \
            and "content-length" not in headers else None
    if "content-length" not in headers:
        return 0
    # Spaces and tabs only around the digits (RFC 9110): str.strip() would take VT, FF,
    # NEL and NBSP too, which a proxy may read otherwise, and a body would be smuggled.
    lengths = set(value.strip(" \t") for value in headers["content-length"].split(","))
    if len(lengths) != 1:
        return None
    length = lengths.pop()
    # ASCII digits only: "\u00b2" passes str.isdigit() but not int().
    return int(length) if length.isascii() and length.isdigit() and len(length) < 12 else None


# --------------------------------------------------------------------------------------------
# What operators see: one-line messages on stderr, and the counts /health and /metrics show

class Reporter:
    """One-line "pixel: ..." messages on `stream` (default stderr); one with a `key` at most once
    an `interval`, lest a failing disk or a flood of bad requests bury the rest. A failed write
    (stderr on that full disk) counts in `lost`, never raises: no client loses its answer to it."""

    def __init__(self, stream=None, *, interval=ERROR_INTERVAL, clock=time.monotonic):
        self.stream = stream
        self.interval = interval
        self.lost = 0
        self._clock = clock
        self._said = {}          # key -> when it was last said
        self._lock = threading.Lock()

    def say(self, message, key=None):
        """Print `message`, unless its `key` was said within the interval; True if printed."""
        with self._lock:
            if key is not None:
                now, last = self._clock(), self._said.get(key)
                if last is not None and now - last < self.interval:
                    return False
                self._said[key] = now
            try:   # the newline in the same write: a reader never sees half a line
                write_line(self.stream or sys.stderr, "pixel: %s\n" % message)
            except (OSError, ValueError):   # a full disk or pipe, a closed pipe or stream
                self.lost += 1
                return False
        return True


def write_line(stream, line):
    """Write `line` to `stream` in one write that never blocks: a pipe whose reader stopped
    reading (a stalled journald or supervisor) would hold every thread that says something,
    and the accept loop among them. OSError(EAGAIN) when it has no room."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):   # a StringIO, a closed stream
        fd = None
    if fd is None or not hasattr(select, "poll"):
        stream.write(line)
        stream.flush()
        return
    data = line.encode("utf-8", "backslashreplace")
    if len(data) > select.PIPE_BUF:   # more could block half-written
        data = data[:select.PIPE_BUF - 4] + b"...\n"
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not poller.poll(0):
        raise OSError(errno.EAGAIN, "no room to write")
    os.write(fd, data)


def _bug(error):
    """An unexpected exception in one line, no traceback: its type, text and line."""
    trace = error.__traceback__
    while trace.tb_next:
        trace = trace.tb_next
    return "%s: %s (line %d)" % (type(error).__name__, error, trace.tb_lineno)


class Counter:
    """A thread-safe count, by label value (None when it has no label)."""

    def __init__(self):
        self.counts = collections.Counter()
        self._lock = threading.Lock()

    def add(self, key=None, amount=1):
        with self._lock:
            self.counts[key] += amount

    def update(self, keys):
        """Add one for each of `keys` (a loop, not collections.Counter.update: its ABC check
        costs more than the count, on every request)."""
        with self._lock:
            counts = self.counts
            for key in keys:
                counts[key] += 1

    def total(self):
        with self._lock:
            return sum(self.counts.values())

    def samples(self, label):
        """(suffix, labels, value) samples for Metrics.family, one a label value."""
        with self._lock:
            counts = sorted(self.counts.items(), key=lambda item: str(item[0]))
        return [("", ((label, key),), value) for key, value in counts]


class Histogram:
    """Durations (seconds) in Prometheus's cumulative buckets."""

    BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

    def __init__(self):
        self.counts = [0] * (len(self.BOUNDS) + 1)   # the last: over the last bound
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds):
        index = bisect.bisect_left(self.BOUNDS, seconds)
        with self._lock:
            self.counts[index] += 1
            self.sum += seconds

    def samples(self):
        with self._lock:
            running, total = list(itertools.accumulate(self.counts)), self.sum
        bounds = [repr(bound) for bound in self.BOUNDS] + ["+Inf"]
        buckets = [("_bucket", (("le", bound),), count) for bound, count in zip(bounds, running)]
        return buckets + [("_sum", (), total), ("_count", (), running[-1])]


class Metrics:
    """The registry each part of one pixel (the recorder, the HTTP server, the forwarder)
    registers its counts into, and that /health and /metrics render, so that no part reads
    another's fields. The callables registered are called at each render."""

    def __init__(self, clock=time.time):
        self.started = time.monotonic()
        self.started_at = clock()
        self._families = {}      # name -> (type, help, [samples, ...])
        self._health = []        # (field, read)
        self._problems = []      # calls that say why /health is degraded, or None

    def family(self, name, kind, help, samples):
        """A metric family: `samples()` gives (suffix, labels, value) triples. Families
        registered under one name (pixel_rejections_total) are summed, sample by sample."""
        self._families.setdefault(name, (kind, help, []))[2].append(samples)

    def value(self, name, kind, help, read):
        """A family of one unlabelled sample, `read()`; none while that is None (unknown)."""
        def samples():
            value = read()
            return [] if value is None else [("", (), value)]
        self.family(name, kind, help, samples)

    def health(self, field, read):
        """A field of /health's document, `read()`."""
        self._health.append((field, read))

    def problem(self, read):
        """`read()` is truthy while /health should say degraded."""
        self._problems.append(read)

    def health_document(self):
        document = {"status": "degraded" if any(read() for read in self._problems) else "ok",
                    "version": __version__,
                    "uptime": round(time.monotonic() - self.started, 3)}
        document.update((field, read()) for field, read in self._health)
        return document

    def render(self):
        """Prometheus's text exposition format 0.0.4."""
        build = (("version", __version__), ("python", sys.version.split()[0]))
        families = dict(self._families, pixel_build_info=(
            "gauge", "pixel's version and the Python it runs on.", [lambda: [("", build, 1)]]),
            process_start_time_seconds=("gauge", "When the process started (Unix time).",
                                        [lambda: [("", (), float(self.started_at))]]))
        lines = []
        for name, (kind, help, sources) in families.items():
            lines += ["# HELP %s %s" % (name, help.replace("\\", "\\\\").replace("\n", "\\n")),
                      "# TYPE %s %s" % (name, kind)]
            samples = collections.Counter()
            for source in sources:
                for suffix, labels, value in source():
                    samples[suffix, labels] += value
            for (suffix, labels), value in samples.items():
                text = ",".join('%s="%s"' % (label, str(content).replace("\\", "\\\\")
                                             .replace('"', '\\"').replace("\n", "\\n"))
                                for label, content in labels)
                lines.append("%s%s%s %s" % (name, suffix, "{%s}" % text if text else "",
                                            repr(float(value)) if isinstance(value, float)
                                            else int(value)))
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Log files: appending whole lines before the answer, rotating, and reading them back

# os.open's descriptors are close-on-exec already (PEP 446).
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT
# State and ledger files: the log folder's user may have put a link to /etc/passwd at one's
# name, and `pixel.py erase` or forward, run as root, would write through it.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# A rotated file's suffix: pixel's own .<UTC stamp>[-N] (group 1 and 2), or logrotate's
# .N and -DATE, which the forwarder follows too.
_ROTATED = re.compile(r"(?:\.(\d{8}T\d{6}\.\d{3}Z)(?:-(\d+))?|\.\d{1,6}|-\d{8,14})\Z")
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


def file_kind(mode):
    """What a file of st_mode `mode` is, in words."""
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def _not_regular(path, mode):
    return OSError(errno.EINVAL, "not a regular file (%s)" % file_kind(mode), path)


def stat_or_none(path):
    """os.stat(path), or None if nothing can be found there."""
    try:
        return os.stat(path)
    except OSError:
        return None


def open_file(path, flags=os.O_RDONLY, devices=False):
    """os.open() for a regular file (with `devices`, a character device such as /dev/full
    too); anything else is OSError(EINVAL, "not a regular file (a FIFO)"). The open cannot
    block: a FIFO would wait there for a peer before any signal could stop it, so it is
    opened O_NONBLOCK, checked, and set back. A directory or /dev/zero reads for ever."""
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | nonblocking, 0o644)
    except OSError as error:   # a FIFO with no reader opened to write: ENXIO
        status = stat_or_none(path) if error.errno in (errno.ENXIO, errno.EISDIR) else None
        if status is None:
            raise
        raise _not_regular(path, status.st_mode) from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or devices and stat.S_ISCHR(mode)):
            raise _not_regular(path, mode)
        if nonblocking:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _flock(fd, path, ours=False):
    """An exclusive flock on a log: a second pixel process writing it would rotate it under
    the first and lose lines. Where the file system has none, nothing is locked; `ours` (a
    file this process's forwarder holds, moved back to the log's name) is locked already."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if ours:
            return
        # Held shared: by a reader, let go of in a moment (erase's look at a file a rotation
        # has just made, a backfill refusing it), where failing would lose what is written.
        for _ in range(100):   # 0.5 s at most
            try:   # refused at once while a second pixel holds its exclusive flock
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                break
            time.sleep(0.005)
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
        raise OSError(errno.EBUSY, "another process writes it (it holds its flock)",
                      path) from None
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
            raise


def state_path(log_path, role):
    """Where pixel keeps its `role` state ("forward", "backfill", "erase") for the log at
    `log_path`: .pixel/<role>.<log>.json, which no glob of the log's files (events.jsonl*,
    in a shell, Go or Rust, recursive too) matches, as version 1.0's <log>.<role> did."""
    folder, name = os.path.split(os.path.abspath(log_path))
    return os.path.join(folder, STATE_FOLDER, "%s.%s.json" % (role, name))


def _root():
    return getattr(os, "geteuid", lambda: -1)() == 0


def refuse_root_link(path):
    """OSError if running as root and `path` is a symbolic link another user made: the log folder's
    user may have put it there, to /etc, for `pixel.py erase` or forward to write through."""
    if _root() and os.path.islink(path) and os.lstat(path).st_uid != 0:
        raise OSError(errno.ELOOP, "a symbolic link another user made, which pixel run as "
                      "root does not write through: name the file it links to", path)


def make_state_folder(path):
    """Make the folder of state file `path` if there is none, owned, and with the mode, of
    the log's folder: a `pixel.py forward` or erase run as root must not leave a .pixel that
    the service's user (or group) cannot write its checkpoint in. Raises OSError."""
    folder = os.path.dirname(path)
    refuse_root_link(folder)
    if os.path.isdir(folder):
        return
    os.makedirs(folder, exist_ok=True)
    owner = os.stat(os.path.dirname(folder))
    if _root() and (owner.st_uid, owner.st_gid) != (0, 0):
        # By descriptor, never by name: that user may have put a link to /etc there since.
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
        try:
            os.fchown(fd, owner.st_uid, owner.st_gid)
            os.fchmod(fd, stat.S_IMODE(owner.st_mode))
        finally:
            os.close(fd)


def adopt_legacy_state(log_path, role, reporter):
    """state_path(), its folder made, and version 1.0's <log>.<role> moved there, so that an
    upgrade goes on where the old version stopped. Raises OSError."""
    path = state_path(log_path, role)
    make_state_folder(path)
    legacy = os.path.abspath(log_path) + "." + role
    for old in (legacy, legacy + ".tmp"):   # .tmp: what a kill -9 mid-write leaves
        try:
            if not stat.S_ISREG(os.lstat(old).st_mode):
                continue   # not one of ours
        except FileNotFoundError:
            continue
        if old == legacy:   # over one already there: the old file can only be the newer
            os.replace(old, path)
            reporter.say("moved the checkpoint %s to %s, where no glob of the log's files "
                         "matches it" % (old, path))
        else:
            os.remove(old)
    return path


def cut_torn_tail(fd, path, size, reporter):
    """Cut off the last line of a log of `size` bytes open as `fd` if it has no newline (a
    kill -9 or a power cut mid-write), since the next would be glued to it: (its first
    bytes, its length), or (None, 0). OSError if it is longer than one write leaves."""
    reader = os.open(path, os.O_RDONLY)   # the writer's own descriptor may be write-only
    try:
        if not size or os.pread(reader, 1, size - 1) == b"\n":
            return None, 0
        # The line's start is at most one write back: looked for that far and a block more.
        window = max(0, size - MAX_WRITE_BYTES - RECV_SIZE)
        tail = os.pread(reader, size - window, window)
    finally:
        os.close(reader)
    start = window + tail.rfind(b"\n") + 1
    if size - start > MAX_WRITE_BYTES:
        raise OSError(errno.EINVAL, "its last %d bytes have no newline, more than one "
                                    "write leaves; is it a pixel log?" % (size - start))
    os.ftruncate(fd, start)
    reporter.say("%s ended in a torn line (%d bytes, no newline): cut it"
                 % (path, size - start))
    return tail[start - window:start - window + MAX_REJECT_RAW], size - start


def _rotation_key(match):
    """(stamp, serial) of a _ROTATED match, which sort in the order rotated; None if the
    name is not one pixel's rotation gives (logrotate's .1, -20261201), or not a match."""
    return (match.group(1), int(match.group(2) or 0)) if match and match.group(1) else None


def _rotations(path):
    """(stamp, serial, name) of each file pixel's rotation made of the log `path`, oldest first."""
    folder, base = os.path.split(path)
    keys = ((_rotation_of(base, name), name) for name in os.listdir(folder or "."))
    return sorted(key + (name,) for key, name in keys if key)


def _rotation_of(base, name):
    """_rotation_key of `name` if pixel's rotation gives it to the log named `base`, else None."""
    return _rotation_key(_ROTATED.match(name, len(base))) if name.startswith(base) else None


def pixel_rotations(path):
    """The files pixel's rotation made of the log at `path`, oldest first."""
    return [os.path.join(os.path.dirname(path), name) for _, _, name in _rotations(path)]


def rotated_files(path):
    """Every plain file rotated from the log at `path`, pixel's and logrotate's (.1,
    -20261201; not a compressed one), the last modified first."""
    folder, base = os.path.split(path)
    found = []
    for name in os.listdir(folder or "."):
        if name.startswith(base) and _ROTATED.match(name, len(base)):
            status = stat_or_none(os.path.join(folder, name))
            if status is not None:   # gone since the listing
                found.append((status.st_mtime_ns, name))
    return [os.path.join(folder, name) for _, name in sorted(found, reverse=True)]


def _stamp(now):
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + ".%03dZ" % (now % 1 * 1000)


def rotation_target(path, now):
    """The name pixel's rotation gives the log `path`: <path>.<UTC stamp>, with -1, -2 ... for two
    rotations in one millisecond, or after the clock was set back (by any amount: a name far ahead
    may have been a wrong clock's, but --keep deletes by name, and must delete the oldest): a name
    sorts after those made before. A folder pixel may not list, the clock alone names."""
    stamp, serial = _stamp(now), 0
    try:
        newest = max(_rotations(path), default=None)
    except OSError:   # a folder pixel may write in, not list
        newest = None
    if newest is not None and stamp <= newest[0]:
        stamp, serial = newest[0], newest[1] + 1
    target = "%s.%s" % (path, stamp) + ("-%d" % serial if serial else "")
    while os.path.lexists(target):
        serial += 1
        target = "%s.%s-%d" % (path, stamp, serial)
    return target


def prune_rotations(path, keep, held, reporter):
    """Delete the oldest files pixel rotated of the log at `path` past `keep`, but none
    whose identity is `held` (a forwarder has not sent it all), each said on stderr."""
    try:
        rotated = pixel_rotations(path)
    except OSError as error:   # a folder pixel may write in, not list
        return reporter.say("cannot list %s's folder (--keep %d): %s" % (
            path, keep, error.strerror or error), key="keep " + path)
    for old in rotated[:-keep]:
        try:
            status = os.stat(old)
            if (status.st_dev, status.st_ino) in held:
                reporter.say("keeping %s past --keep %d: the forwarder has not sent all of "
                             "it yet" % (old, keep), key="keep " + path)
            else:
                os.remove(old)
                reporter.say("deleted %s (--keep %d)" % (old, keep))
        except FileNotFoundError:
            pass
        except OSError as error:   # a folder of that name: not the write's failure
            reporter.say("cannot delete %s (--keep %d): %s"
                         % (old, keep, error.strerror or error), key="keep " + old)


def _chunks(lines, limit):
    """(bytes, line count) pieces of `lines` for a write() each: whole lines, at most
    `limit` bytes, unless one line is larger alone."""
    if len(lines) == 1:
        return [(lines[0], 1)]
    chunks, current, size = [], [], 0
    for line in lines:
        if current and size + len(line) > limit:
            chunks.append((b"".join(current), len(current)))
            current, size = [], 0
        current.append(line)
        size += len(line)
    chunks.append((b"".join(current), len(current)))
    return chunks


def _close_untaken(changes):
    """Close the descriptors a follower did not take from `changes` (LogWriter's); the files
    of those no rotation renamed since, [(identity, path, first 4 KiB)]: one moved by hand,
    while an erase held the follower, has no other trace (LogWriter.follow)."""
    renamed = {identity for change, _, identity, _ in changes or () if change == "renamed"}
    left = [(identity, path, os.pread(fd, 4096, 0)) for _, fd, identity, path in changes or ()
            if fd is not None and identity not in renamed]
    for fd in (change[1] for change in changes or () if change[1] is not None):
        os.close(fd)
    return left


def record_rename(changes, at, identity, name):
    """Put file `identity`'s rename, for good, to `name` at `at` in a follower's `changes`
    (a LogWriter's changes(): before the next file's "opened"). Few descriptors for a follower
    that has not taken them (it may not, for hours of an outage): past MAX_OPEN_LOG_FILES
    held before `at`, the file's is closed, to be opened by that name in its turn."""
    changes.insert(at, ("renamed", None, identity, name))
    held = [index for index, change in enumerate(changes[:at]) if change[1] is not None]
    for index in held if len(held) > MAX_OPEN_LOG_FILES else ():
        change, fd, known, _ = changes[index]
        if known == identity:
            os.close(fd)
            changes[index] = (change, None, identity, name)


def _probe_new_file(path, descriptors=1):
    """OSError if no file can be made beside `path` now, with `descriptors` for it (no inode or
    descriptor is left): a rotation looks before it renames a log it would have to put back
    (tail -F reads a file that comes back whole). The probe has no name (O_TMPFILE), so none
    is left by a kill -9; where a file system cannot, a name of its own (O_EXCL), so that
    nothing else in the folder (a FIFO, a folder, another log) is opened or removed."""
    folder, fd = os.path.dirname(path), None
    if hasattr(os, "O_TMPFILE"):
        try:
            fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600)
        except OSError as error:   # a file system without it: EOPNOTSUPP (old kernels: EISDIR)
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    if fd is None:
        probe = os.path.join(folder, ".pixel-probe.%d-%s" % (os.getpid(), os.urandom(4).hex()))
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.remove(probe)
    try:
        for _ in range(descriptors - 1):   # the forwarder's copy of the next file's
            os.close(os.dup(fd))
    finally:
        os.close(fd)


def _put_back(moved, path):
    """Whether the file renamed to `moved` is at `path` again: by a hard link, which never
    replaces a file made there meanwhile, or where links cannot be made (a tmpfs counts each
    as an inode), by a rename if nothing is there."""
    try:
        os.link(moved, path)
    except FileExistsError:
        return False
    except OSError:
        if os.path.lexists(path):
            return False
        try:
            os.rename(moved, path)
        except OSError:
            return False
        return True
    os.remove(moved)
    return True


def remove_second_name(path, identity, reporter):
    """Remove a name pixel's rotation gives (rotation_target) that the live file at `path`
    (`identity`) also has: a kill -9 between _put_back's link and its remove leaves one, and
    `cat events.jsonl*` reads each line twice, and an erase of both names (second_names)."""
    try:
        if os.lstat(path).st_nlink != 2:   # no other name, or more than a rotation leaves
            return
        rotated = pixel_rotations(path)
    except OSError:   # a folder pixel may write in, not list: a rotation there says so
        return
    for other in rotated:
        try:
            status = os.lstat(other)
            if (status.st_dev, status.st_ino) == identity:
                os.remove(other)
                reporter.say("removed %s, a second name of %s: a rotation was stopped as it put "
                             "the log back" % (other, path))
        except FileNotFoundError:   # gone since the listing
            pass
        except OSError as error:
            reporter.say("cannot remove %s, a second name of %s: %s"
                         % (other, path, error.strerror or error))


def second_names(paths):
    """{path: log} for those of `paths` that name the same file as `log`, another of them, by a
    name pixel's rotation gives (remove_second_name): erased by both, it would split in two."""
    by_file = {}
    for path in paths:
        status = stat_or_none(path)
        if status is not None and status.st_nlink == 2:   # as remove_second_name
            by_file.setdefault((status.st_dev, status.st_ino), []).append(path)
    return {name: log for names in by_file.values() for name in names for log in names
            if _is_rotation_of(name, log)}


def _is_rotation_of(name, log):
    folder, base = os.path.split(os.path.realpath(name))
    log_folder, log_base = os.path.split(os.path.realpath(log))
    return folder == log_folder and _rotation_of(log_base, base) is not None


def _room(fd, size):
    """Whether `size` more bytes fit in the regular file at `fd`: its last block's slack, and
    the blocks its file system has free (root's reserve too, for root)."""
    try:
        status, space = os.fstat(fd), os.fstatvfs(fd)
    except OSError:
        return True
    slack = status.st_blocks * 512 - status.st_size if hasattr(status, "st_blocks") else 0
    free = (space.f_bfree if _root() else space.f_bavail) * space.f_frsize
    return not stat.S_ISREG(status.st_mode) or free + max(0, slack) >= size


def _remove_if_empty(path, fd, reporter):
    """Remove `path` if it still names the empty file open at `fd` (made by a failed start)."""
    try:
        if not os.fstat(fd).st_size and os.path.samestat(os.stat(path), os.fstat(fd)):
            os.unlink(path)
    except FileNotFoundError:   # removed already, by someone else
        pass
    except OSError as error:
        reporter.say("cannot remove %s, made by a start that failed: %s"
                     % (path, error.strerror or error))


def _take_back(fd, lines):
    """Cut `lines`, a call's last, from the end of the file at `fd`: measured from the real end
    (a copytruncate may have cut under them), and only if they are there, not where another
    process appended since (echo >>). The new end, or None: they stay."""
    lead = lines[0]
    try:
        end = os.fstat(fd).st_size - sum(map(len, lines))
        reader = os.open("/proc/self/fd/%d" % fd, os.O_RDONLY)   # `fd` is write-only (Linux)
        try:
            ours = end >= 0 and os.pread(reader, min(len(lead), 4096), end) == lead[:4096]
        finally:
            os.close(reader)
        if ours:
            os.ftruncate(fd, end)
            return end
    except OSError:   # they stay, counted as written: a client that sends again dedupes them
        return None
    return None


def _whole_end(fd, ours, torn):
    """The end of the file at `fd`: shorter than `ours` (where our lines end) if cut under us
    (copytruncate); longer by the whole lines another process appended (echo >>), else the
    forwarder, which reads to it, would leave as many bytes of ours unsent; never by a torn
    tail of ours (`torn`), nor half a line, nor at all if `fd` is write-only (unread)."""
    end = os.fstat(fd).st_size
    if end <= ours or torn:
        return min(end, ours)
    try:
        return end if os.pread(fd, 1, end - 1) == b"\n" else ours
    except OSError:   # EBADF: write-only
        return ours


def why_not_rotated(error):
    """The OSError a rotation's rename met, in words. EBUSY: the log is a mount point (a file
    bind-mounted into a container), which no rename or delete can move; only the folder's
    mount lets a rotation or logrotate work."""
    if error.errno == errno.EBUSY:
        return "%s (a file mounted on its own cannot be renamed: mount its folder)" % (
            error.strerror or error)
    return error.strerror or error


WRITTEN_HERE = set()   # the paths this process's LogWriters hold: a clash here waits for nothing


def _first_open(writer):
    """A LogWriter's first open; a file this process's own flock holds is said to be so, not
    "another process" (the importer's own LogWriter beside a make_wsgi_app on its log)."""
    try:
        writer._open()
    except OSError as error:
        if error.errno == errno.EBUSY and writer.path in WRITTEN_HERE:
            raise OSError(errno.EBUSY, "this process writes it already (another LogWriter, "
                          "make_wsgi_app or pixel in it)", writer.path) from None
        raise


class LogWriter:
    """Appends whole lines to a file (O_APPEND) before the caller answers; rotates past
    `max_bytes`, keeping `keep` (as RotatingFileHandler); follows a rename or delete by others
    (as WatchedFileHandler); takes a failed write back whole (`failed`); flocks the file: one
    process owns a log. A reader of every line (the forwarder, `readable=True`) calls follow(),
    then takes files opened since from changes(); `keep` spares those in `pinned` (None: all)."""

    def __init__(self, path, *, max_bytes=0, keep=0, clock=time.time, reporter=None,
                 readable=False):
        self.path = os.path.realpath(path)   # rotating a symlink would rename the link
        self.max_bytes, self.keep, self.pinned = max_bytes, keep, frozenset()
        self.written = self.written_bytes = self.failed = self.rotations = self.failing = 0
        self.cuts = 0   # of the open file, by someone else (copytruncate): see committed()
        self.created = not os.path.lexists(self.path)   # by this start: see close()
        self._clock, self._reporter, self._lock = clock, reporter or Reporter(), threading.RLock()
        self._flags = _OPEN_FLAGS & ~os.O_WRONLY | os.O_RDWR if readable else _OPEN_FLAGS
        self._path_checked = self._failed_at = self._rotate_failed_at = float("-inf")
        self._fd = self._identity = self._changes = self.left = None   # changes(), follow()
        self.closed = False         # by close(): a write after it is refused, never reopens
        _first_open(self)           # at start an OSError is the operator's to see
        try:
            self.torn_tail, self.torn_tail_bytes = cut_torn_tail(
                self._fd, self.path, self._size, self._reporter)
        except OSError:
            self.close()
            raise
        self._size -= self.torn_tail_bytes
        remove_second_name(self.path, self._identity, self._reporter)
        WRITTEN_HERE.add(self.path)

    def follow(self, woken=None):
        """The open file's (descriptor, identity, committed end, lines written) of one instant,
        and `left`, files left while held, [(identity, path, first bytes)], till a follower saves
        (and sets it to None); descriptors of files opened from now on go to changes()."""
        with self._lock:
            fd, left = os.dup(self._fd), (self.left or []) + _close_untaken(self._changes)
            self._changes, self._woken, self.left = [], woken or threading.Event(), left
            return fd, self._identity, self._size, self.written, list(left)

    def changes(self):
        """Since the last call, in order: ("opened", fd, identity, path), the descriptor
        now the caller's (None: parked), and ("renamed", None, identity, path), for good;
        each pinned until the caller sets `pinned` (a rotation meanwhile would delete it)."""
        with self._lock:
            changes = self._changes or []
            if self._changes is not None:
                self._changes = []
                if self.pinned is not None:
                    self.pinned = self.pinned.union(change[2] for change in changes)
            return changes

    def _held(self):
        """The files the follower has not finished, or not taken yet (each has a descriptor)."""
        return (self.pinned or frozenset()).union(change[2] for change in self._changes or ())

    def committed(self):
        """(the open file's identity, where its last whole line ends, lines written) at once;
        the end follows a cut (copytruncate), and whole lines others append (_whole_end)."""
        with self._lock:
            if self._fd is not None:
                size = _whole_end(self._fd, self._size, self._torn)
                self.cuts, self._size = self.cuts + (size < self._size), size
            return self._identity, self._size, self.written

    def _open(self, rotated=False):
        """Open the path (again), or OSError: then the file open until now stays open."""
        fd = open_file(self.path, self._flags, devices=True)   # /dev/null, /dev/full too
        try:
            status = os.fstat(fd)
            identity = (status.st_dev, status.st_ino)
            if identity == self._identity and self._fd is not None:
                os.close(fd)   # the file it has open (a SIGHUP with nothing renamed)
                return
            _flock(fd, self.path, identity in self._held())
            if self._changes is not None:   # under the lock: in the order written
                self._changes.append(("opened", os.dup(fd), identity, self.path))
                self._woken.set()
        except OSError:   # in use, out of descriptors
            os.close(fd)
            raise
        if self._fd is not None:
            if self.left is not None and not rotated:   # no descriptor: an erase flocks it
                self.left.append((self._identity, self.path, os.pread(self._fd, 4096, 0)))
            os.close(self._fd)
        self._fd, self._identity, self._size = fd, identity, status.st_size
        self._torn = False          # a short write left bytes past _size not yet cut
        self._moved_at = None       # when the path was first seen naming another file

    def reopen(self):
        """Open the path afresh (SIGHUP, logrotate's convention), or OSError."""
        with self._lock:
            self._open()

    def close(self, discard=False):
        """Close; with `discard`, remove the file first if this start made it and it is empty."""
        with self._lock:
            if self._fd is not None:
                if discard and self.created:
                    _remove_if_empty(self.path, self._fd, self._reporter)
                os.close(self._fd)
                self._fd = None
            _close_untaken(self._changes)
            self._changes, self.closed = None, True
            WRITTEN_HERE.discard(self.path)

    def write(self, lines):
        """Append `lines` (bytes, each ending in a newline); how many are on disk: all, or after
        a failure none but those in a file rotated away meanwhile: sent again, each is once."""
        # The path is checked once a PATH_CHECK_INTERVAL, before the lock (a stat costs a turn
        # of the GIL); till then lines go into a renamed file. _append_linked catches a delete.
        now = self._clock()
        check = not 0 <= now - self._path_checked < PATH_CHECK_INTERVAL or self._fd is None
        status = None
        if check:
            self._path_checked = now
            status = stat_or_none(self.path)
        with self._lock:
            done, kept, first, skipped = 0, 0, None, False   # lines[kept:done]: file `first`'s
            try:
                if check:
                    self._follow_path(status)
                if self._torn:   # an earlier cut failed: never extend the file with it
                    if os.fstat(self._fd).st_size > self._size:
                        os.ftruncate(self._fd, self._size)
                    self._torn = False
                skipped = self.failing and now - self._failed_at < 1 and not _room(
                    self._fd, sum(map(len, lines)))   # a try a second, else no part line to cut
                if skipped:                            # back each request (a tail -F's flood)
                    raise OSError(errno.ENOSPC, "no space left (the file system says so)")
                first = self._identity
                for chunk, count in _chunks(lines, min(self.max_bytes or MAX_WRITE_BYTES,
                                                       MAX_WRITE_BYTES)):
                    if self.max_bytes and self._size + len(chunk) > self.max_bytes and not \
                            0 <= now - self._rotate_failed_at < 1 and self.committed()[1] and \
                            self._size + len(chunk) > self.max_bytes:   # by its real size
                        try:
                            self._rotate()
                        except OSError as error:   # a try a second; the lines go on
                            self._rotate_failed_at = now
                            self._reporter.say("cannot rotate %s: %s; writing on past "
                                               "--max-bytes" % (self.path, why_not_rotated(
                                                   error)), key="rotate " + self.path)
                    self._append_linked(chunk)
                    if self._identity != first:   # a rotation or a relink: a new file
                        first, kept = self._identity, done
                    done += count
            except OSError as error:
                end = _take_back(self._fd, lines[kept:done]) if done > kept and \
                    first == self._identity and self._fd is not None else None
                if end is not None:
                    done, self._size = kept, end
                lost = len(lines) - done
                self.written += done
                self.failed, self.failing = self.failed + lost, self.failing + lost
                self._failed_at = self._failed_at if skipped else now
                self._reporter.say("cannot write %s: %s (%d line(s) lost so far; still answering,"
                                   " will retry)" % (self.path, error.strerror or error,
                                                     self.failing), key="write " + self.path)
                return done
            self.written += done
            if self.failing:
                self._reporter.say("writing %s again after %d failed line(s)"
                                   % (self.path, self.failing))
                self.failing = 0
            return done

    def _follow_path(self, status):
        """Reopen the path if the open file is no longer at it (logrotate's create, an mv, an
        rm; `status`: the path's, from before the lock). A file renamed with nothing at its path
        is written MOVED_GRACE more: logrotate's create renames, then makes one with O_EXCL."""
        if self._fd is None:
            if self.closed:   # a request that came after the end (WsgiApp.close)
                raise OSError(errno.EBADF, "closed: this pixel was stopped")
            return self._open()
        if status is None or (status.st_dev, status.st_ino) != self._identity:
            status = stat_or_none(self.path)   # again under the lock: reopened since?
        if status is not None and (status.st_dev, status.st_ino) == self._identity:
            return
        if status is None and os.fstat(self._fd).st_nlink:
            now = self._clock()
            self._moved_at = now if self._moved_at is None else min(self._moved_at, now)
            if now - self._moved_at < MOVED_GRACE:
                return
        try:
            self._open()
        except OSError as error:
            if not os.fstat(self._fd).st_nlink:
                raise
            self._reporter.say("cannot reopen %s: %s; still writing to the file it named"
                               % (self.path, error.strerror or error), key="reopen " + self.path)

    def _append_linked(self, chunk):
        """_append, and if the file has lost its name, the chunk, which would vanish with it,
        taken out again (a shipper may still read that file) and written to a new one."""
        for _ in range(RELINK_ATTEMPTS):
            before = self._size
            self._append(chunk)
            if os.fstat(self._fd).st_nlink:
                return
            os.ftruncate(self._fd, before)
            self._size = before
            self._open()
        raise OSError(errno.ENOENT, "deleted each time it was written, %d times" % RELINK_ATTEMPTS)

    def _append(self, chunk):
        written = os.write(self._fd, chunk)
        if written != len(chunk):
            # The disk filled mid-line: cut back to the last whole line, measured from the
            # real end (after a copytruncate, a cut to _size would add zeros).
            self._size, self._torn = os.fstat(self._fd).st_size - written, True
            os.ftruncate(self._fd, self._size)
            self._torn = False
            raise OSError(errno.ENOSPC, "short write (%d of %d bytes)" % (written, len(chunk)))
        self._size, self.written_bytes = self._size + written, self.written_bytes + written

    def rotate_now(self):
        """Rotate the file now if it holds a line (an erase asks: EraseDesk); its new name, None
        if empty, or OSError. Descriptors no follower took are closed (Forwarder.hold)."""
        with self._lock:
            if self._changes is not None:   # the files left till follow() are listed
                self.left = (self.left or []) + _close_untaken(self._changes)
            self._changes = None
            self._follow_path(None)
            return self._rotate() if self._fd is not None and self.committed()[1] else None

    def _rotate(self):
        """Rename the file and open a new one: its new name, or OSError, the file still open."""
        status = stat_or_none(self.path)   # moved by hand since the last look: rotated already
        if (status is None or (status.st_dev, status.st_ino) != self._identity) and \
                os.path.isdir(os.path.dirname(self.path)):   # (else it says so, writing on)
            return self._open()
        target = rotation_target(self.path, self._clock())
        _probe_new_file(self.path, 1 + (self._changes is not None))   # before any rename
        os.rename(self.path, target)
        identity, at = self._identity, len(self._changes or ())
        try:
            self._open(rotated=True)   # or OSError (no inode or descriptor left): the file,
        finally:   # written on, is put back at its path if it can be, else kept by its new name
            if (self._identity != identity or not _put_back(target, self.path)) and \
                    self._changes is not None:   # before the new file's "opened"
                record_rename(self._changes, at, identity, target)
        self.rotations += 1
        self.prune()
        return target

    def prune(self):
        """Delete the rotated files past `keep` no follower holds (one it finished, too)."""
        with self._lock:   # (an RLock: _rotate holds it)
            if self.keep and self.pinned is not None:
                prune_rotations(self.path, self.keep, self._held(), self._reporter)


# Reading log lines back: the dedupe window's warm-up, and the forwarder. The raw bytes
# "writeKey":" can only be a key, since a quote inside a JSON string is escaped.
_WRITE_KEY_FIELD = re.compile(rb'"writeKey":"((?:[^"\\]|\\.)*)"')
_MESSAGE_ID_FIELD = re.compile(rb'"messageId":"((?:[^"\\]|\\.)*)"')


def _depth_at(prefix):
    """How many brackets are open at the end of `prefix`, the start of a JSON text."""
    outside = _outside_strings(prefix.decode("latin-1"))
    return outside.count("{") + outside.count("[") - outside.count("}") - outside.count("]")


def _top_level_string(line, field):
    """The match of `field` (a "<name>":"<value>" pattern) if a log line has exactly one, at
    its top level, with no escape in it, so that the line, costlier to parse, need not be."""
    matches = list(field.finditer(line))
    if len(matches) == 1 and line[:1] == b"{" and line[-1:] == b"}":
        value = matches[0].group(1)
        if b"\\" not in value and value.isascii() and _depth_at(line[:matches[0].start()]) == 1:
            return matches[0]
    return None


def logged_client_id(line):
    """A log line's (bytes) dedupe_key, from its writeKey, messageId and machine label, or None."""
    # A line that says "machine" anywhere is parsed: what stands where is the parse's to say.
    key_match = _top_level_string(line, _WRITE_KEY_FIELD) if b'"machine"' not in line else None
    id_match = _top_level_string(line, _MESSAGE_ID_FIELD) if key_match is not None else None
    if id_match is not None:
        return dedupe_key(key_match.group(1).decode("ascii"), id_match.group(1).decode("ascii"))
    if b'"messageId"' not in line:   # garbage, fast: the warm-up may read a lot of it
        return None
    try:
        event = json.loads(line)
        write_key, message_id = event["writeKey"], event["messageId"]
        context = event.get("context")
    except (ValueError, RecursionError, TypeError, KeyError):   # TypeError: not an object
        return None
    if isinstance(write_key, str) and write_key and isinstance(message_id, str) and message_id:
        return dedupe_key(write_key, message_id,
                          isinstance(context, dict) and bool(context.get("machine")))
    return None


def _lines_from_end(paths, max_bytes):
    """The lines of the files `paths`, each from its end, reading at most `max_bytes` in all."""
    for path in paths:
        if max_bytes <= 0:
            return
        try:
            fd = open_file(path)
        except OSError:   # rotated away or deleted since it was listed, or not a file
            continue
        try:
            end, partial = os.fstat(fd).st_size, b""
            while end > 0 and max_bytes > 0:
                size = min(MAX_WRITE_BYTES, end, max_bytes)
                end, max_bytes = end - size, max_bytes - size
                lines = (os.pread(fd, size, end) + partial).split(b"\n")
                partial = lines.pop(0) if end > 0 else b""   # may go on in the block before
                yield from reversed(lines)
        finally:
            os.close(fd)


def _log_and_rotations(path):
    """The log at `path`, then its rotated files (rotated_files), newest first: the live file
    alone in a folder pixel may write in, not list."""
    try:
        return [path] + rotated_files(path)
    except OSError:
        return [path]


def logged_client_ids(paths, count, max_bytes=MAX_WARM_BYTES):
    """The dedupe_keys of the last `count` events in the log files `paths` (the newest
    first), oldest first, reading at most `max_bytes` from their ends."""
    lines = _lines_from_end(paths, max_bytes)
    # A log of pixel's has an id a line: a cap on the lines read stops at garbage.
    ids = (logged_client_id(line) for line in itertools.islice(lines, 2 * count + 1024) if line)
    found = list(itertools.islice((key for key in ids if key is not None), count))
    lines.close()
    return found[::-1]


# --------------------------------------------------------------------------------------------
# Machine opens: what fetched a pixel, from its request alone and from the address ranges an
# operator names (--machine-ranges). A label never changes the answer or drops the event.

MAIL_CLIENTS = ("gmail", "yahoo", "outlook", "apple_mail")       # context.mailClient
MACHINES = ("apple_mpp", "gmail_prefetch", "scanner", "prefetch")   # context.machine
RANGE_LABELS = ("apple_mpp", "scanner")   # what a --machine-ranges file may be
MAX_RANGES = 1000000             # in all files together; Apple's list has about 290,000
MAX_RANGES_LINE = 4096           # bytes of a line of a ranges file

# What a User-Agent alone says, the first marker found winning: (marker, mailClient).
# Gmail's image proxy is a person opening the mail in Gmail: generic bot lists call it a
# bot, and that broke Gmail opens in Mautic (mautic#16069).
_MAIL_AGENTS = (("GoogleImageProxy", "gmail"),    # "... (via ggpht.com GoogleImageProxy)"
                ("YahooMailProxy", "yahoo"),      # "YahooMailProxy; https://..." (two URLs)
                ("Microsoft Outlook", "outlook"), ("MSOffice", "outlook"),
                ("ms-office", "outlook"), ("Outlook-iOS/", "outlook"),
                ("Outlook-Android/", "outlook"), ("MacOutlook/", "outlook"))
# Gmail's prefetch, seconds after a send, is Edge 12's agent with a second "Mozilla/5.0"
# after it, which no browser sends (GMass and Bird on Gmail's false opens; Keila matches it).
_GMAIL_PREFETCH = "Edge/12.246 Mozilla/5.0"
# Mail scanners, scripts and link previews, lower case (warmbly's markers): "bot/" and "bot;",
# since a bare "bot" is in the agents of Cubot's phones.
_SCANNER_AGENTS = ("barracuda", "mimecast", "proofpoint", "urldefense", "safelinks", "curl/",
                   "wget/", "python-requests/", "python-urllib/", "go-http-client/", "okhttp/",
                   "java/", "libwww-perl/", "facebookexternalhit/", "slackbot", "bingpreview/",
                   "bot/", "bot;")
# Apple Mail fetching for itself (Privacy Protection off) sends WebKit's agent without the
# "Safari/" a browser adds (jenssegers/agent#144).
_APPLE_DEVICES = ("Macintosh", "iPhone", "iPad")
# A browser's prefetch or prerender says so (Mautic's isRequestTrackable, warmbly).
_PREFETCH_HEADERS = ("sec-purpose", "purpose", "x-purpose", "x-moz")
_PREFETCH_WORDS = ("prefetch", "prerender", "preview")


@functools.lru_cache(maxsize=4096)
def agent_labels(agent):
    """(mailClient, machine) that a User-Agent says alone, None for what it does not say.
    Cached: nearly every open comes from a few dozen agents, each of at most MAX_USER_AGENT
    characters, so the cache holds at most 4 MiB."""
    if agent.endswith(_GMAIL_PREFETCH):
        return "gmail", "gmail_prefetch"
    for marker, mail_client in _MAIL_AGENTS:
        if marker in agent:
            return mail_client, None
    lowered = agent.lower()
    if any(marker in lowered for marker in _SCANNER_AGENTS):
        return None, "scanner"
    if "AppleWebKit/" in agent and "Safari/" not in agent and \
            any(device in agent for device in _APPLE_DEVICES):
        return "apple_mail", None
    return None, None


def fetch_labels(agent, headers, address=None, ranges=None):
    """(mailClient, machine), each a name or None, of one pixel fetch: its User-Agent, its
    `headers` (lower-case names), the client `address` pixel trusts and the operator's
    `ranges` (an AddressRanges, or None). apple_mpp needs both Apple's agent, exactly
    "Mozilla/5.0", and an address in Apple's list: the list alone is iCloud Private Relay,
    people browsing; the agent alone is any script."""
    labels = agent_labels(agent[:MAX_USER_AGENT]) if agent else (None, None)
    if ranges and address:
        wanted = RANGE_LABELS if agent == "Mozilla/5.0" else () if labels[1] else ("scanner",)
        found = ranges.find(address, wanted)
        if found == "apple_mpp":
            return "apple_mail", "apple_mpp"
        if found == "scanner":
            labels = labels[0], "scanner"
    if labels[1] is None and ("sec-purpose" in headers or "purpose" in headers or
                              "x-purpose" in headers or "x-moz" in headers):   # _PREFETCH_HEADERS
        for name in _PREFETCH_HEADERS:
            value = headers.get(name, "").lower()
            if any(word in value for word in _PREFETCH_WORDS):
                return labels[0], "prefetch"
    return labels


def address_number(text):
    """(4 or 6, the address as an int) of address text, IPv4-mapped IPv6 as IPv4, or None.
    inet_pton: ipaddress takes ten times as long."""
    try:
        if ":" not in text:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        number = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):   # not an address; ValueError: a NUL or non-ASCII
        return None
    if number >> 32 == 0xFFFF:   # ::ffff:a.b.c.d
        return 4, number & 0xFFFFFFFF
    return 6, number


_U32 = "I" if array.array("I").itemsize == 4 else "L"   # an array typecode of 32 bits
_LOW64 = (1 << 64) - 1


class AddressRanges:
    """The operator's address ranges by label (load_ranges'), immutable: disjoint ranges
    whose first and last addresses are in sorted arrays, searched with bisect (IPv6 as a
    high and a low 64-bit half). Apple's ~290,000 rows take about 6 MB."""

    def __init__(self, tables, counts):
        self._tables = tables   # label -> v4 firsts, lasts; v6 first highs, lows, last highs, lows
        self.counts = counts    # label -> lines loaded

    def find(self, address, labels=RANGE_LABELS):
        """The first of `labels` with a range holding `address` (text), or None."""
        parsed = address_number(address)
        if parsed is None:
            return None
        family, number = parsed
        holds = _holds_v4 if family == 4 else _holds_v6
        for label in labels:
            if label in self._tables and holds(self._tables[label], number):
                return label
        return None


def _holds_v4(table, number):
    firsts, lasts = table[0], table[1]
    index = bisect.bisect_right(firsts, number) - 1
    return index >= 0 and lasts[index] >= number


def _holds_v6(table, number):
    first_highs, first_lows, last_highs, last_lows = table[2:]
    high, low = number >> 64, number & _LOW64
    index = bisect.bisect_right(first_highs, high) - 1
    if index >= 0 and first_highs[index] == high:   # among the ranges starting in this /64
        start = bisect.bisect_left(first_highs, high, 0, index)
        index = bisect.bisect_right(first_lows, low, start, index + 1) - 1
    return index >= 0 and (last_highs[index] > high or
                           last_highs[index] == high and last_lows[index] >= low)


def _range_key(field):
    """(4 or 6, first address << 8 | host bits) of a CIDR (bytes), host bits set masked off
    as --trusted-proxy reads them, a bare address a /32 or /128. ValueError. It parses as
    address_number does, inlined: it runs once a line of Apple's list."""
    text, slash, length = field.decode("ascii").partition("/")
    family, width = (6, 128) if ":" in text else (4, 32)
    try:
        number = int.from_bytes(socket.inet_pton(
            socket.AF_INET6 if family == 6 else socket.AF_INET, text), "big")
    except OSError:
        raise ValueError("not an address") from None   # a NUL raises ValueError itself
    if slash and not (length.isdigit() and length.isascii() and len(length) <= 3):
        raise ValueError("not a prefix length")
    prefix = int(length) if slash else width
    if family == 6 and number >> 32 == 0xFFFF:   # IPv4-mapped: the prefix counts 96 bits
        if prefix < 96:
            raise ValueError("an IPv4-mapped prefix shorter than /96")
        family, width, prefix, number = 4, 32, prefix - 96, number & 0xFFFFFFFF
    if prefix > width:
        raise ValueError("a prefix longer than /%d" % width)
    host = width - prefix
    return family, (number >> host << host) << 8 | host


def log_lines(read, limit=MAX_EVENT_LINE, size=1 << 20):
    """The lines (bytes, without their newline) of what `read(size)` gives until b"", the
    last even without a newline. A line over `limit` bytes comes as one None as soon as it
    is that long, never held whole: a file with no newline (/dev/zero) costs one block."""
    rest, skipping = b"", False
    while True:
        block = read(size)
        if not block:
            if rest:
                yield rest
            return
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        if skipping:   # the rest of a long line, said already
            if not lines:
                rest = b""
                continue
            del lines[0]
            skipping = False
        for line in lines:
            yield line if len(line) <= limit else None
        if len(rest) > limit:
            yield None
            rest, skipping = b"", True


def read_ranges(path, into_v4, into_v6, limit):
    """Append the _range_keys of the ranges file `path` to the two lists, at most `limit`;
    return how many. A line's first field, up to a comma or a space, is a CIDR, so Apple's
    egress-ip-ranges.csv (172.224.226.0/27,GB,GB-EN,London,) and warmbly's (CIDR scope
    label) load as they are; blank lines and # comments are skipped. ValueError names the
    file and line of the first that is not a range."""
    added = 0
    with open(open_file(path), "rb") as handle:   # open_file: never a FIFO, which would block
        if handle.read(3) != b"\xef\xbb\xbf":   # a UTF-8 BOM
            handle.seek(0)
        for number, line in enumerate(log_lines(handle.read, MAX_RANGES_LINE), 1):
            if line is None:
                raise ValueError("%s line %d: longer than %d bytes"
                                 % (path, number, MAX_RANGES_LINE))
            field = line.split(b",", 1)[0].split(None, 1)
            if not field or field[0][:1] == b"#":
                continue
            try:
                family, key = _range_key(field[0])
            except ValueError as error:   # UnicodeDecodeError too
                why = "not ASCII" if isinstance(error, UnicodeError) else error
                raise ValueError("%s line %d: %r is not a CIDR (%s): each line starts with "
                                 "one, such as 172.224.226.0/27 or 2a02:26f7::/48" % (
                                     path, number, field[0].decode("ascii", "replace")[:80],
                                     why)) from None
            if added == limit:
                raise ValueError("%s line %d: more than %d ranges in all the files"
                                 % (path, number, MAX_RANGES))
            (into_v4 if family == 4 else into_v6).append(key)
            added += 1
    return added


def _merged(keys):
    """The (first, last) ranges of range `keys` (sorted here, in place, and emptied at the
    end to free them), in order, overlapping and adjacent ones joined."""
    keys.sort()
    first, last = None, -2   # no range yet: any start is past last + 1
    for key in keys:
        start = key >> 8
        if start > last + 1:
            if first is not None:
                yield first, last
            first = start
        last = max(last, start + (1 << (key & 0xFF)) - 1)
    if first is not None:
        yield first, last
    keys.clear()


def load_ranges(sources):
    """An AddressRanges of (label, path) `sources`; several files of one label are one set.
    ValueError (a file, a line, what is wrong) or OSError. While it loads it holds one int a
    line (Apple's list: about 16 MiB at the peak), then only the merged ranges' arrays."""
    keys, total = {}, 0
    for label, path in sources:
        total += read_ranges(path, *keys.setdefault(label, ([], [])), MAX_RANGES - total)
    tables, counts = {}, {}
    for label, (v4, v6) in keys.items():
        counts[label] = len(v4) + len(v6)
        tables[label] = tuple(array.array(code) for code in (_U32, _U32, "Q", "Q", "Q", "Q"))
        v4_firsts, v4_lasts, first_highs, first_lows, last_highs, last_lows = tables[label]
        for first, last in _merged(v4):
            v4_firsts.append(first)
            v4_lasts.append(last)
        for first, last in _merged(v6):
            first_highs.append(first >> 64)
            first_lows.append(first & _LOW64)
            last_highs.append(last >> 64)
            last_lows.append(last & _LOW64)
    return AddressRanges(tables, counts)


class Labeller:
    """Labels pixel fetches' events by fetch_labels, with the ranges of `sources` ((label,
    path) pairs) loaded now (ValueError or OSError) and again by reload() (SIGHUP)."""

    def __init__(self, sources=(), reporter=None):
        self.sources = tuple(sources)
        self.reporter = reporter or Reporter()
        self.ranges = load_ranges(self.sources) if self.sources else None
        self._reload_lock = threading.Lock()

    def label(self, context, request, address_of):
        """Set the labels of the fetch `request` in its event's `context`, asking
        `address_of(request)` only when there are ranges. Labels sent in the URL are
        removed: a URL is written once per send and cannot know what fetched it."""
        ranges, headers = self.ranges, request.headers
        agent = headers.get("user-agent")
        if agent and not agent.isascii():
            agent = user_agent(headers)
        mail_client, machine = fetch_labels(agent, headers,
                                            address_of(request) if ranges else None, ranges)
        if "mailClient" in context or "machine" in context:
            context.pop("mailClient", None)
            context.pop("machine", None)
        if mail_client is not None:
            context["mailClient"] = mail_client
        if machine is not None:
            context["machine"] = machine

    def reload(self):
        """Load the files again, as one set; one that fails keeps the set loaded before, and
        stderr says why. True if the new set is in use."""
        if not self.sources:
            return False
        with self._reload_lock:   # two SIGHUPs in a row load once, then again
            try:
                ranges = load_ranges(self.sources)
            except (OSError, ValueError) as error:
                self.reporter.say("cannot reload the machine ranges, so the ranges loaded "
                                  "before stay in use: %s" % _ranges_error(error))
                return False
            self.ranges = ranges
        self.reporter.say("reloaded the machine ranges (SIGHUP): %s" % ", ".join(
            "%s %d" % item for item in sorted(ranges.counts.items())))
        return True


def _ranges_error(error, unnamed="a ranges file"):
    if isinstance(error, OSError):
        return "cannot read %s: %s" % (error.filename or unnamed, error.strerror or error)
    return str(error)


def _people_error(error):
    return _ranges_error(error, "the file")


# --------------------------------------------------------------------------------------------
# People to forget: who --suppress and `pixel.py erase` name, and whether an event, a
# payload or a client's raw input names one of them. No I/O but reading a list.

MAX_PEOPLE = 1000000             # identifiers in a --suppress file
MAX_IDENTIFIER = 1024            # characters of one
MAX_RAW_VALUES = 4096            # values looked at in one raw input (its budget)
MAX_QUOTE_VALUES = 4 * MAX_RAW_VALUES   # ... in one that is written: all of a 16 KiB quote's
_ID_FIELDS = ("userId", "anonymousId", "previousId")
_EMAIL_PATHS = (("traits", "email"), ("context", "traits", "email"), ("properties", "email"))
# ... those that say whose an event is: properties.email may be whom it is about (an invite).
_OWN_EMAIL_PATHS = _EMAIL_PATHS[:2]
# What splits a client's raw input into the values it may hold: a query's and JSON's punctuation,
# and white space. A value is looked at whole first, so an id with a space in it is found too.
_RAW_SEPARATORS = re.compile(r'[\s"&=,:;{}\[\]\\]+')
# ... but for a query's fields and JSON's strings: "userId=John+Smith&", "urn:user:42".
_RAW_FIELDS = re.compile(r'["&={}\[\]\\]+')
_JOINED = re.compile(r"[\s+,:;]")   # what the first splits at and the second does not


def identifier_digest(text):
    """sha256:<hex> of an identifier as matched (trimmed; an address lower-cased): how the
    ledger names a person, and how a --suppress file may, to hold no plain ids."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _id_text(value):
    """An id field's value as the log has it (numbers become strings), trimmed."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _json_values(value, found):
    """Append the strings and numbers in parsed JSON to `found`, keys too."""
    if isinstance(value, dict):
        for key, item in value.items():
            found.append(key)
            _json_values(item, found)
    elif isinstance(value, list):
        for item in value:
            _json_values(item, found)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        found.append(value if isinstance(value, str) else str(value))


def raw_values(text, rounds=MAX_DECODE_ROUNDS, budget=MAX_RAW_VALUES):
    """The values a client's raw input (a query, a body, a line that is not JSON) may hold,
    decoded as a client could have encoded them, `rounds` layers deep: the text, its
    escapes undone (_reveal), its JSON strings, the pieces between its separators, and
    what base64 among them decodes to. At most `budget` of them, a layer at a time and each
    in order; then None if some were left unlooked at."""
    seen, pending = set(), collections.deque([(text, rounds)])
    while pending and len(seen) < budget:
        text, left = pending.popleft()
        if text in seen:
            continue
        seen.add(text)
        yield text
        if not left:
            continue
        found = [_reveal(text) or urllib.parse.unquote(text, errors="replace")]
        try:
            _json_values(json.loads(text), found)
        except (ValueError, RecursionError):
            pass
        found.extend(_RAW_SEPARATORS.split(text))
        for raw in base64_decodings(text):
            decoded = raw.decode("utf-8", "replace")
            # A client encodes text: what is mostly not (binary, or base64 read from the
            # wrong place in a run, 3 in 4 of them) is no value, and decoding it again and
            # again cost a hostile body seconds of the GIL.
            if decoded.count("\ufffd") * 16 <= len(decoded):
                found.append(decoded)
        pending.extend((value, left - 1) for value in found if value and value not in seen)
        if _JOINED.search(text):   # an id with a space, a colon, a comma: "Smith, John"
            # Each such field, a query's + read as a space, looked at whole only: decoded
            # further, its words would be looked at as ids (a base64 run's "+42+"), and its
            # pieces cost a hostile body ten times the time.
            pending.extend((piece.replace("+", " "), 0) for piece in _RAW_FIELDS.split(text)
                           if len(piece) <= MAX_IDENTIFIER and _JOINED.search(piece))
    if any(value not in seen for value, _ in pending):
        yield None


class People:
    """Whom to forget, by identifier. An entry with an @ is an email address, matched trimmed
    and lower-cased against traits.email, context.traits.email, properties.email and an id
    field that holds an address; any other is matched exactly, after trimming, against
    userId, anonymousId and previousId. Either may be written sha256:<hex> of the
    identifier (identifier_digest), so that a list need not hold plain ids."""

    def __init__(self, entries=()):
        self.ids, self.emails, self.digests = set(), set(), set()
        self.followed = None   # follow()'s People
        self._truncated = False   # truncated()'s, till one is added
        self.truncated_digests = set()   # "sha256:..." of truncated() forms a ledger names
        self.judging = collections.deque()   # requests judged by it now, for a reload to wait
        for entry in entries:
            self.add(entry)

    def __len__(self):
        return len(self.ids) + len(self.emails) + len(self.digests) + len(self.followed or ())

    def add(self, entry):
        """Add one identifier; ValueError, in words, if it is empty, too long or a bad sha256:."""
        text, self._truncated = entry.strip(), False
        if not text:
            raise ValueError("an empty identifier")
        if len(text) > MAX_IDENTIFIER:
            raise ValueError("an identifier of %d characters (at most %d)"
                             % (len(text), MAX_IDENTIFIER))
        if text[:7].lower() == "sha256:":
            digest = text[7:].lower()
            if len(digest) != 64 or digest.strip("0123456789abcdef"):
                raise ValueError("%r is not sha256: and 64 hex digits" % text[:80])
            self.digests.add(digest)
        elif "@" in text:
            self.emails.add(text.lower())
        else:
            self.ids.add(text)

    @staticmethod
    def literal(text):
        """An id as the logs hold it, as add() takes it to match that id: itself, or its digest
        where add() would read it otherwise (sha256:..., which any client may send as its id:
        --follow went round to its limit) or refuse it (over MAX_IDENTIFIER: a traceback)."""
        text = text.strip()
        if not text or text[:7].lower() == "sha256:" or len(text) > MAX_IDENTIFIER:
            return identifier_digest(text)
        return text

    def follow(self, entry):
        """Add an id that names an event with no userId only: erase --follow's, an
        anonymousId or previousId the logs link to a userId. A browser two people shared
        links both, and the other one's events with her userId are hers to keep."""
        if self.followed is None:
            self.followed = People()
        self.followed.add(entry)
        self._truncated = False

    def truncated(self):
        """The identifiers with an address in them as --anonymize-ip quotes them in a rejects
        line, truncated (erin.10.4.4.4@x.com as erin.10.4.4.0@x.com), as People, or None if
        none has one. Such a form may name another's refused line too: an erase takes it."""
        if self._truncated is False:
            pairs = ((text, anonymize_addresses(text)) for text in self.ids | self.emails)
            truncated = People([form for text, form in pairs if form != text] +
                               sorted(self.truncated_digests))
            truncated.followed = self.followed.truncated() if self.followed else None
            self._truncated = truncated or None
        return self._truncated

    def digested(self, truncated=True):
        """Every identifier as identifier_digest gives it, and its truncated() form, sorted:
        what the ledger holds, for an erase again (the followed ones apart, in
        followed.digested()). A digest has no truncated form: its id is not known."""
        truncated = truncated and self.truncated() or People()
        return sorted({identifier_digest(text) for text in
                       self.ids | self.emails | truncated.ids | truncated.emails} |
                      {"sha256:" + digest for digest in self.digests})

    def _names(self, text, email=False):
        """Whether a trimmed value names one: an `email` field's, or any value with an @,
        compared lower-cased with the addresses."""
        if not email and text in self.ids:
            return True
        lowered = text.lower() if email or "@" in text else None
        if lowered is not None and lowered in self.emails:
            return True
        if self.digests:
            for form in (lowered,) if email else (text, lowered):
                if form is not None and identifier_digest(form)[7:] in self.digests:
                    return True
        return False

    def named_in(self, payload, paths=_EMAIL_PATHS):
        """Whether an event or a payload (a dict as sent: an id may be a number) names one,
        by its id fields and the email fields at `paths`."""
        ids = [_id_text(payload.get(field)) for field in _ID_FIELDS]
        if any(self._names(text) for text in ids if text):
            return True
        if self.followed and not ids[0] and any(self.followed._names(text)
                                                 for text in ids[1:] if text):
            return True
        return self.named_by_email(payload, paths)

    def named_by_email(self, payload, paths=_EMAIL_PATHS):
        """Whether an address at one of `paths` in `payload` names one."""
        for path in paths:
            node = payload
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, str) and node.strip() and self._names(node.strip(), True):
                return True
        return False

    def named_in_raw(self, text, quoted=False, followed=True):
        """Whether a client's raw input names one: a value in it (raw_values) that is an
        identifier, whole. Never a pattern: an id is only ever compared. What is `quoted`
        (written, or erased from a log) is looked at to MAX_QUOTE_VALUES or a value a
        character, and past them taken to name one: nothing not looked at is written, nor
        kept by an erase (the densest 16 KiB measured held 7,691 values)."""
        budget = max(MAX_QUOTE_VALUES, len(text)) if quoted else MAX_RAW_VALUES
        for value in raw_values(text, budget=budget):
            if value is None:
                return quoted
            value = value.strip()
            if value and (self._names(value) or followed and self.followed and
                          self.followed._names(value)):
                return True
        return False

    def named_in_reject(self, record):
        """Whether a rejects-log line (a dict) names one: in the event it holds (a
        forwarded one), or in what it quotes of a client's input."""
        event = record.get("event")   # a forwarded event: its userId rules out followed ids
        if isinstance(event, dict) and (self.named_in(event) or self.named_in_raw(
                _encode_lenient(event), True, followed=False)):
            return True
        # A refused query or body with a userId is that person's, as an event would be.
        followed = bool(self.followed) and not _quoted_user_id(record)
        truncated = self.truncated()
        return any(isinstance(record.get(field), str) and
                   self.named_in_raw(record[field], True, followed=followed)
                   for field in ("query", "body", "line", "detail", "userAgent")) or \
            truncated is not None and truncated.named_in_reject(record)


def _quoted_user_id(record):
    """The userId of the pixel query or API body a rejects line quotes, if any, else None."""
    try:
        if isinstance(record.get("query"), str):
            payload = decode_query(record["query"])
        elif isinstance(record.get("body"), str):
            payload = parse_object(record["body"].encode("utf-8", "surrogatepass"))
        else:
            return None
    except (ValueError, RecursionError):   # Rejected, and UnicodeEncodeError, are ValueErrors
        return None
    items = payload.get("batch")
    if isinstance(items, list) and items:   # a batch is theirs if each item names one
        ids = [_id_text(item.get("userId")) if isinstance(item, dict) else None for item in items]
        return ids[0] if all(ids) else None
    return _id_text(payload.get("userId"))


# A comment after an entry: refused, as "victim1  # ticket 123" suppressed nobody (the
# attack pass), and cutting it would suppress "order" for a userId "order #123".
_INLINE_COMMENT = re.compile(r"\s#")


def read_people(path, limit=MAX_PEOPLE):
    """The People of a --suppress file: one identifier a line, UTF-8; blank lines and # lines
    skipped. ValueError names the file and line of the first bad one; OSError."""
    people = People()
    with open(open_file(path), "rb") as handle:   # not a FIFO, which would block a SIGHUP
        for number, line in enumerate(log_lines(handle.read, 4 * MAX_IDENTIFIER + 1), 1):
            try:
                if line is None:   # at 4 bytes a character (UTF-8), and a CR
                    raise ValueError("longer than %d bytes" % (4 * MAX_IDENTIFIER))
                # A BOM on any line (files joined by cat), before its comment is looked for.
                text = line.decode("utf-8").strip().lstrip("\ufeff").strip()
                if text and not text.startswith("#"):
                    if _INLINE_COMMENT.search(text):
                        raise ValueError("a # after white space: a comment goes on a line of "
                                         "its own (an id with one: write its sha256:)")
                    people.add(text)
            except ValueError as error:   # UnicodeDecodeError too
                raise ValueError("%s line %d: %s" % (
                    path, number, "not UTF-8" if isinstance(error, UnicodeError)
                    else error)) from None
            if len(people) > limit:
                raise ValueError("%s line %d: more than %d identifiers" % (path, number, limit))
    return people


# --------------------------------------------------------------------------------------------
# The recorder, what requests become in the logs, and the app, what a transport answers

class DedupeWindow:
    """The dedupe_keys of the last `size` distinct events written, oldest forgotten first,
    as 64-bit digests (hash(), keyed per process: two keys of one digest, one chance in
    2**64 / size, are one) in a ring and an open-addressing table, two arrays made once. A
    dict, resized now by one thread and now by another, left glibc's per-thread arenas
    holding some 80 MiB of freed tables under SDK traffic (measured RSS). Not thread-safe."""

    def __init__(self, size):
        self.size = size
        slots = 1 << (2 * size - 1).bit_length()   # a power of two, at most half full
        self._mask = slots - 1
        self._table = array.array("q", bytes(8 * slots))   # 0: an empty slot
        self._ring = array.array("q", bytes(8 * size))
        self._next = self._count = 0

    def _find(self, digest):
        """The slot holding `digest`, or the empty one where it would go."""
        table, mask = self._table, self._mask
        slot = digest & mask
        while table[slot] and table[slot] != digest:
            slot = (slot + 1) & mask
        return slot

    def __contains__(self, key):
        return self._table[self._find(hash(key) or 1)] != 0

    def __len__(self):
        return self._count

    def add(self, key):
        digest = hash(key) or 1   # 0 is an empty slot
        slot = self._find(digest)
        if self._table[slot]:
            return   # remembered already (a warm-up from a log that repeats one)
        if self._count == self.size:
            self._forget(self._ring[self._next])
            slot = self._find(digest)   # forgetting may have moved the empty slot
        else:
            self._count += 1
        self._table[slot] = digest
        self._ring[self._next] = digest
        self._next = (self._next + 1) % self.size

    def _forget(self, digest):
        """Empty `digest`'s slot, moving later entries of its probe run back into the hole,
        so that no lookup stops short at it (deletion without tombstones)."""
        table, mask = self._table, self._mask
        hole = slot = self._find(digest)
        while True:
            slot = (slot + 1) & mask
            entry = table[slot]
            if not entry:
                break
            home = entry & mask   # where its probe run starts: it may move back to the hole
            if (hole < slot and not hole < home <= slot) or (hole > slot and slot < home <= hole):
                table[hole] = entry
                hole = slot
        table[hole] = 0


def _client_id(payload, event):
    """The event's dedupe_key if the client sent its messageId: pixel's own never repeat."""
    if payload.get("messageId") in (None, ""):
        return None
    context = event.get("context")
    return dedupe_key(event["writeKey"], event["messageId"],
                      bool(context and context.get("machine")))


def quote_text(text, anonymize, limit=None):
    """(What a rejects line quotes of client text, whether part was left out): with
    --anonymize-ip never raw text, which could hide an address in an encoding (base64,
    percent-escapes, \\u escapes, gzip), but what pixel decoded, addresses truncated."""
    if not anonymize:
        return text[:limit], False
    quoted = anonymize_text(text, limit)
    return ("", True) if quoted is None else (quoted, False)


def quote_query(query, anonymize):
    """(What a rejects line quotes of a query, whether an address was cut, whether truncated)."""
    text, cut = anonymize_query(query) if anonymize else (query, False)
    return text[:MAX_REJECT_RAW], cut, max(len(query), len(text)) > MAX_REJECT_RAW


def reject_line(rejection, request, received_at, ip, anonymize, quoted=None, redacted=False):
    """A rejects-log line, enough to find a broken campaign and replay it: a pixel's quotes
    its query, an API request's its body (`quoted`) or the item at fault."""
    # The detail can quote a parameter's name, and the user agent is the client's too.
    detail, cut = quote_text(rejection.detail, anonymize)
    agent, cut_agent = quote_text(user_agent(request.headers) or "", anonymize, MAX_USER_AGENT)
    record = {"reason": rejection.reason}
    if detail:
        record["detail"] = detail
    record["method"] = request.method
    record["path"] = request.path[:1024]
    if quoted is not None:
        record["body"] = quoted
    else:
        record["query"], cut_query, truncated = quote_query(request.query, anonymize)
        cut = cut or cut_query
        if truncated:
            record["queryTruncated"] = True
    if redacted or cut or cut_agent:
        record["redacted"] = True
    if ip is not None:
        record["ip"] = ip
    if agent:
        record["userAgent"] = agent
    record["receivedAt"] = format_time(received_at)
    return (_encode(record) + "\n").encode("ascii")


# With --write-key, an API request refused only for these (validate()'s) is answered 401.
_KEY_REASONS = ("no_write_key", "write_key_not_string", "invalid_write_key")


def register_recorder(recorder, metrics):
    """Count `recorder` into `metrics`: its counters for /metrics, and /health's fields of them."""
    logs = (("events", recorder.events), ("rejects", recorder.rejects))
    metrics.family("pixel_events_total", "counter", "Events written to the events log, "
                   "by type.", lambda: recorder.written_by_type.samples("type"))
    metrics.family("pixel_rejections_total", "counter", "Requests, items and forwarded "
                   "events refused, by the reason in the rejects log.",
                   lambda: recorder.rejected_by_reason.samples("reason"))
    for name, attribute, help in (
            ("pixel_written_lines_total", "written", "Lines written, by log."),
            ("pixel_written_bytes_total", "written_bytes", "Bytes written, by log."),
            ("pixel_write_errors_total", "failed", "Lines that could not be written."),
            ("pixel_rotations_total", "rotations", "Rotations, by log.")):
        metrics.family(name, "counter", help, lambda attribute=attribute: [
            ("", (("log", log),), getattr(writer, attribute)) for log, writer in logs])
    for name, help, read in (
            ("pixel_deduped_events_total", "Events not written: their writeKey and messageId "
             "were written within the dedupe window.", lambda: recorder.deduped),
            ("pixel_suppressed_events_total", "Pixel requests and API items not recorded: "
             "they named a person of the --suppress list.", recorder.suppressed.total),
            ("pixel_browser_metrics_total", "Browser SDKs' own metrics and error reports "
             "(/v1/m, /rsaMetrics), counted and dropped.", recorder.browser_metrics.total)):
        metrics.value(name, "counter", help, read)
    for field, read in (("accepted", lambda: recorder.events.written),
                        ("rejected", recorder.rejected_by_reason.total),
                        ("write_errors", lambda: recorder.events.failed + recorder.rejects.failed),
                        ("browser_metrics", recorder.browser_metrics.total),
                        ("deduped", lambda: recorder.deduped),
                        ("suppressed", recorder.suppressed.total)):
        metrics.health(field, read)
    metrics.problem(lambda: recorder.events.failing > 0 or recorder.rejects.failing > 0)


_HINT_LOCK = threading.Lock()   # Recorder.true_client_ip's hint, said once


class Recorder:
    """Turns requests into log lines: events into the events log, refusals into the
    rejects log, each on disk, or counted as failed, before a method returns. It holds the
    policy that takes: the write keys, the address rules, the dedupe window, the clock."""

    def __init__(self, events, rejects, *, write_keys=(), trusted_proxies=(), record_ip=True,
                 anonymize_ip=False, dedupe_window=DEFAULT_DEDUPE_WINDOW, metrics=None,
                 clock=time.time, reporter=None, labeller=None, people=None):
        self.events, self.rejects = events, rejects
        self.labeller = labeller or Labeller()
        self.people = people   # --suppress's list, or None; replaced whole by a reload
        self.write_keys = frozenset(write_keys)
        self.trusted_proxies = tuple(proxy if proxy == "unix" else
                                     ipaddress.ip_network(proxy, strict=False)
                                     for proxy in trusted_proxies)
        self.record_ip, self.proxy_hinted = record_ip, not record_ip   # (hint: said once)
        # What the rejects log quotes of client text has its addresses truncated under
        # --no-ip too: an event then holds none, and a quote must not hold more.
        self.anonymize_ip = anonymize_ip or not record_ip
        self.recent = DedupeWindow(dedupe_window) if dedupe_window else None
        self.clock = clock
        self.reporter = reporter or Reporter()
        self.written_by_type = Counter()
        self.rejected_by_reason = Counter()   # a line may count several (too_many_rejects)
        self.browser_metrics = Counter()      # browser SDKs' own posts, counted and dropped
        self.deduped = 0
        self.suppressed = Counter()   # requests and items that named a suppressed person
        self._dedupe_lock = threading.Lock()
        register_recorder(self, metrics or Metrics(clock))

    def remember_logged(self):
        """Refill the dedupe window from the events log's end (the live file, then rotated
        ones, logrotate's too), so that a forwarder sending its last batch again after a
        crash on either side is not written twice. Returns how many ids it read."""
        if self.recent is None:
            return 0
        client_ids = logged_client_ids(_log_and_rotations(self.events.path), self.recent.size)
        with self._dedupe_lock:
            for client_id in client_ids:
                self.recent.add(client_id)
        return len(client_ids)

    def client_ip(self, request):
        """The address to record for `request`: None with --no-ip or none known."""
        ip = self.true_client_ip(request) if self.record_ip else None
        return anonymize_ip(ip) if ip and self.anonymize_ip else ip

    def true_client_ip(self, request):
        """The client's address before --no-ip or --anonymize-ip, which the machine ranges
        are matched against; None if none is known."""
        ip = request.peer
        if ip is None:   # a WSGI server named none
            return None
        if self.trusted_proxies or ip.startswith("::ffff:"):
            ip = client_ip(ip, request.headers.get("x-forwarded-for"), self.trusted_proxies)
        if not (self.trusted_proxies or self.proxy_hinted) and "x-forwarded-for" in \
                request.headers:   # behind a proxy, without --trusted-proxy: said once
            with _HINT_LOCK:   # not by each of the first requests coming together
                self.proxy_hinted = self.proxy_hinted or hint_trusted_proxy(ip, self.reporter)
        return ip or None

    def _judged(self, record):
        """record(people) with --suppress's list as it is now, whole, which a reload waits
        for (Pixel.reopen): after it says so, nothing is written by the old list."""
        people = self.people
        people.judging.append(None)
        while people is not self.people:   # replaced meanwhile, maybe unseen: the new one
            people.judging.pop()
            people = self.people
            people.judging.append(None)
        try:
            return record(people)
        finally:
            people.judging.pop()

    def record_pixel(self, kind, request, people=None):
        """Write a pixel.Request's event of `kind`, or its rejects line, before it returns."""
        if people is None and self.people is not None:   # with --suppress: one list
            return self._judged(lambda people: self.record_pixel(kind, request, people))
        received_at = self.clock()
        ip = self.client_ip(request)
        try:
            payload = decode_query(request.query)
            if people and self.suppress(people, payload):
                return
            event = build_event(kind, payload, received_at=received_at, write_keys=self.write_keys,
                                ip=ip, user_agent=user_agent(request.headers),
                                anonymize=self.anonymize_ip)
            self.labeller.label(event["context"], request, self.true_client_ip)
            line = encode_line(event)
        except Rejected as rejection:
            self.reject(rejection, request, received_at=received_at, ip=ip, people=people)
            return
        self.write_events([line], [_client_id(payload, event)], [kind])

    def write_events(self, lines, client_ids, kinds):
        """Write `lines` (events of `kinds`) but those whose `client_ids` entry (dedupe_keys;
        None for a messageId pixel made) is in the dedupe window: SDKs, browsers and
        networks repeat an event with its messageId. True once what was kept is on disk.
        A write that failed keeps none of it (LogWriter.write), but for lines in a file rotated
        away meanwhile: those are counted and in the window, so the client's retry skips them."""
        if self.recent is None or not any(client_ids):
            written = self.events.write(lines)
        else:
            with self._dedupe_lock:   # two copies arriving at once are one write
                kept, kept_kinds, ids, taken = [], [], [], set()
                for line, client_id, kind in zip(lines, client_ids, kinds):
                    if client_id is not None and (client_id in self.recent or client_id in taken):
                        self.deduped += 1
                        continue
                    kept.append(line)
                    kept_kinds.append(kind)
                    ids.append(client_id)
                    taken.add(client_id)
                written = self.events.write(kept) if kept else 0
                for client_id in ids[:written]:
                    if client_id is not None:   # pixel's own messageIds never repeat
                        self.recent.add(client_id)
            lines, kinds = kept, kept_kinds
        self.written_by_type.update(kinds[:written])
        return written == len(lines)

    def record_api(self, route, request, browser=False, people=None):
        """Write a pixel.Request's body's events; answer 200 once they are on disk, 400 for a
        body that is not one, 503 if the log could not be written (SDKs retry a 5xx), or with
        --write-key 401 when every event was refused for its key. Refused items go to the
        rejects log (MAX_REJECTS_PER_REQUEST lines, then one counting the rest). On `browser`
        routes `timestamp`, the browser's clock, becomes originalTimestamp, as in Segment."""
        if people is None and self.people is not None:   # with --suppress: one list
            return self._judged(lambda people: self.record_api(route, request, browser, people))
        received_at = self.clock()
        ip = self.client_ip(request)
        agent = user_agent(request.headers)
        body = request.body
        try:
            body = decode_body(body, request.headers.get("content-encoding"))
            pairs = api_payloads(route, body, authorization=request.headers.get("authorization"),
                                 query=request.query)
        except Rejected as rejection:   # quote the body as received, or as gunzipped
            return self._body_refused(rejection, request, received_at, ip, body, people)
        lines, client_ids, kinds, refused = [], [], [], []
        size, limit = 0, request_log_limit(len(body))
        key_reason, key_taken = None, False   # the first writeKey refused; was one taken?
        for kind, payload in pairs:
            try:
                if isinstance(payload, Rejected):   # an item that is not even an event
                    raise payload
                if people and self.suppress(people, payload):
                    key_taken = True   # answered as if recorded
                    continue
                if browser and payload.get("timestamp") is not None and \
                        payload.get("originalTimestamp") is None:
                    payload = dict(payload, originalTimestamp=payload.pop("timestamp"))
                event = build_event(kind, payload, received_at=received_at,
                                    write_keys=self.write_keys, ip=ip, user_agent=agent,
                                    anonymize=self.anonymize_ip)
                line = encode_line(event)
            except Rejected as rejection:
                refused.append((rejection, payload.item if payload is rejection else payload))
                if rejection.reason in _KEY_REASONS:
                    key_reason = key_reason or rejection.reason
                elif payload is not rejection:   # validate() checks the key first
                    key_taken = True
                continue
            size += len(line)
            if size > limit:   # with the user agent, ip and pixel's fields, once an event
                return self._body_refused(Rejected("batch_too_large"), request, received_at,
                                          ip, body, people)
            lines.append(line)
            client_ids.append(_client_id(payload, event))
            kinds.append(kind)
        written = self.write_events(lines, client_ids, kinds) if lines else True
        if refused and written:   # else the retry writes them; one that fails is counted
            self._refuse_items(refused, request, received_at, ip, people)
        if self.write_keys and key_reason and not key_taken and not lines:
            # Segment answers 200 to anything, so its users cannot tell a wrong key; pixel
            # knows its keys. No challenge to a browser: it would ask its user for a password.
            return error_answer(401, key_reason, () if request.headers.get("origin") else
                                (("WWW-Authenticate", 'Basic realm="pixel"'),))
        return SUCCESS if written else error_answer(503, "write_failed")

    def _refuse_items(self, refused, request, received_at, ip, people):
        records, reasons, size, looked = [], [], 0, 0
        for rejection, item in refused:
            if len(records) == MAX_REJECTS_PER_REQUEST or size > MAX_REJECTS_BYTES_PER_REQUEST:
                break
            looked += 1
            quoted, redacted = _encode_lenient(item)[:MAX_REJECT_RAW], False
            # --suppress looks at the item and at what is quoted, before its addresses are
            # truncated: 10,000 refused items cost as much as 100.
            if people and self.suppress(people, item if isinstance(item, dict) else None,
                                        quoted, True):
                continue
            if self.anonymize_ip:
                item, redacted = anonymize_json(item)
                quoted = _encode_lenient(item)[:MAX_REJECT_RAW]
            records.append(reject_line(rejection, request, received_at, ip, self.anonymize_ip,
                                       quoted, redacted))
            reasons.append(rejection.reason)
            size += len(records[-1])
        if looked < len(refused):
            rest = Rejected("too_many_rejects", "%d more item(s) not quoted"
                            % (len(refused) - looked))
            records.append(reject_line(rest, request, received_at, ip, self.anonymize_ip, ""))
            reasons += [rejection.reason for rejection, _ in refused[looked:]]
        self.rejected_by_reason.update(reasons)
        self.rejects.write(records)

    def _body_refused(self, rejection, request, received_at, ip, body, people):
        """A 400 for an API body as a whole, and its rejects line quoting the body."""
        if people and self.suppress(people, raw=body[:MAX_BODY_BYTES].decode("utf-8", "replace")):
            return SUCCESS
        quoted, redacted = anonymize_body(body) if self.anonymize_ip else \
            (body[:MAX_REJECT_RAW].decode("utf-8", "replace"), False)
        if not self.reject(rejection, request, received_at=received_at, ip=ip,
                           quoted=quoted[:MAX_REJECT_RAW], redacted=redacted, people=people):
            return SUCCESS
        return error_answer(400, rejection.reason)   # sent again, it would be refused again

    def reject(self, rejection, request, *, received_at=None, ip=None, quoted=None,
               redacted=False, people=None):
        """Write one rejects-log line (reject_line's); the request's time and address, if
        not given, are now and its client's. Nothing of a --suppress'ed person's (`people`,
        else the list now, which _judged holds): False."""
        if people is None and self.people is not None:
            return self._judged(lambda people: self.reject(
                rejection, request, received_at=received_at, ip=ip, quoted=quoted,
                redacted=redacted, people=people))
        if people:   # what is quoted, all of it, and a longer query as far as it goes
            quote = quote_query(request.query, self.anonymize_ip)[0] if quoted is None else quoted
            if quoted is None and quote != request.query and \
                    self.suppress(people, raw=request.query) or \
                    self.suppress(people, raw=quote, quoted=True):
                return False
        if received_at is None:
            received_at, ip = self.clock(), self.client_ip(request)
        self.rejected_by_reason.add(rejection.reason)
        self.rejects.write([reject_line(rejection, request, received_at, ip, self.anonymize_ip,
                                        quoted, redacted)])
        return True

    def suppress(self, people, payload=None, raw=None, quoted=False):
        """Whether a payload (a dict as sent) or a client's `raw` input (what a rejects line
        would quote: `quoted`) names one of `people`, the --suppress list: then it is
        counted, and nothing of it is written anywhere."""
        if not (payload is not None and people.named_in(payload) or
                raw is not None and people.named_in_raw(raw, quoted)):
            return False
        self.suppressed.add()
        return True


def record_torn_tails(recorder):
    """A rejects line for each log whose torn last line its writer cut at start-up."""
    for writer in (recorder.events, recorder.rejects):
        if writer.torn_tail is not None:
            quoted, redacted = quote_text(writer.torn_tail.decode("utf-8", "replace"),
                                          recorder.anonymize_ip)
            recorder.reject(Rejected("torn_tail", "%d byte(s) cut from %s" % (
                writer.torn_tail_bytes, writer.path)), Request("", "", "", {}, "", b""),
                quoted=quoted, redacted=redacted)


class App:
    """The Answer to a Request at a Route (route_for's), for either transport: it records
    through the Recorder, and answers /health, /metrics, the SDKs' settings and CORS itself."""

    def __init__(self, recorder, metrics, *, allow_origins=(), public_url=None,
                 metrics_token=None, serve_metrics=True):
        self.recorder = recorder
        self.metrics = metrics
        self.clock = recorder.clock
        self.allow_origins = tuple(origin.lower() for origin in allow_origins)
        self.public_url = public_url.rstrip("/") if public_url else None
        self.metrics_token = metrics_token
        self.serve_metrics = serve_metrics   # False: /metrics is a 404 (WSGI, unless asked)

    def answer(self, route, request):
        """Record `request` as `route` says (None: no such path); return the answer."""
        if route is None or route.kind == "prometheus" and not self.serve_metrics:
            return NOT_FOUND
        if request.method not in route.methods:
            return not_allowed(route)
        if route.kind == "pixel":
            if request.method == "GET":   # HEAD, which mail scanners send, records nothing
                self.recorder.record_pixel(route.name, request)
            return GIF_ANSWER
        if route.kind == "health":
            return json_answer(200, self.metrics.health_document())
        if route.kind == "prometheus":
            return self.prometheus(request)
        cors = cors_headers(request, self.allow_origins)
        if request.method == "OPTIONS":
            return preflight(route, request, cors)
        if cors is None:   # a browser on a site that is not allowed: nothing is written
            return self._origin_refused(request)
        if route.kind == "settings":
            answer = self.settings(request) if route.name == "settings" else \
                self.source_config(request)
        elif route.kind == "metrics":   # a browser SDK's own metrics: counted only
            self.recorder.browser_metrics.add()
            answer = SUCCESS
        else:
            answer = self.recorder.record_api(route.name, request, browser=route.browser)
        return add_headers(answer, cors)

    def early_answer(self, route, request, length):
        """The answer, before reading it, to a body `route` would read, of Content-Length
        `length` (-1: chunked, read up to the cap; None: a size the host cannot end); None:
        read it and ask answer()."""
        if length is None:
            return self.refuse(route, request, "length_required", 411)
        if length > route.max_body:
            return self.refuse(route, request, "body_too_large", 400)
        return None

    def refuse(self, route, request, reason, status):
        """A request refused before it could be read whole (a head over the limits, a body
        over the cap): a pixel still gets its GIF and a rejects line; the API a rejects line
        and `status` with its reason; anything else the plain `status`."""
        if route is not None and request.method in route.methods:
            if route.kind == "pixel" and request.method == "GET":
                self.recorder.reject(Rejected(reason), request)
                return GIF_ANSWER
            if route.kind in ("api", "metrics"):
                cors = cors_headers(request, self.allow_origins)
                if cors is None:
                    return self._origin_refused(request)
                self.recorder.reject(Rejected(reason), request, quoted="")
                return error_answer(status, reason, cors)
        return plain_answer(status)

    def _origin_refused(self, request):
        self.recorder.reject(Rejected("origin_not_allowed"), request, quoted="")
        return error_answer(403, "origin_not_allowed")

    def _known(self, write_key):
        return not self.recorder.write_keys or write_key in self.recorder.write_keys

    def settings(self, request):
        """analytics.js's settings document, pointing at --public-url if set (and the WSGI
        mount's prefix, unless the URL has a path), else at the Host and scheme the request
        came by (then never cached: a shared cache must not hand one visitor's Host to
        everyone). An unknown writeKey is a 404."""
        write_key = request.path[len(SETTINGS_PREFIX):-len(SETTINGS_SUFFIX)]
        if not self._known(write_key):
            return NOT_FOUND
        prefix = request.prefix
        if self.public_url:
            protocol, _, host = self.public_url.partition("://")
            prefix, cache = "" if "/" in host else prefix, ()   # a path in it: the whole way
        else:
            host = request.headers.get("host", "")
            if not origin_ok("http://" + host):
                return plain_answer(400)
            protocol = request_scheme(request, self.recorder.trusted_proxies)
            cache = (("Cache-Control", "no-store"),)
        return json_answer(200, settings_document(write_key, protocol, host, prefix), cache)

    def source_config(self, request):
        """RudderStack's source configuration, for the writeKey the request names (Basic
        auth, else the query): a 400 for none, a 404 for an unknown one, or one the
        settings path could not hold, so that what is echoed back is never markup."""
        try:
            write_key = request_write_key(request.headers.get("authorization"), request.query)
        except Rejected:
            write_key = None
        if write_key is None:
            return plain_answer(400)
        if not _WRITE_KEY.match(write_key) or not self._known(write_key):
            return NOT_FOUND
        return json_answer(200, source_config(write_key))

    def prometheus(self, request):
        """GET /metrics; with a metrics token, only for `Authorization: Bearer <token>`."""
        if self.metrics_token is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    token.strip().encode("latin-1", "replace"), self.metrics_token.encode()):
                return plain_answer(401, (("WWW-Authenticate", 'Bearer realm="pixel"'),))
        return _answer(200, "text/plain; version=0.0.4; charset=utf-8",
                       self.metrics.render().encode("utf-8"))


# --------------------------------------------------------------------------------------------
# The built-in HTTP transport: TLS, a connection's handler, its thread pool, the server

# The line that starts each in PEM: -----BEGIN PRIVATE KEY----- (or RSA, EC ... PRIVATE KEY).
_PEM_MARKS = {"certificate": b"-----BEGIN CERTIFICATE-----", "private key": b"PRIVATE KEY-----"}
_PEM_ENCRYPTED = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")


def _check_pem(path, kind):
    """ValueError, naming `path`, unless it is a readable regular file (a FIFO would block
    the open for ever) with a PEM `kind` ("certificate", "private key") pixel can load."""
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            raise ValueError("%s is not a regular file" % path)
        if status.st_size > MAX_PEM_BYTES:   # OpenSSL would read it all, on every SIGHUP
            raise ValueError("%s is %d bytes, more than a PEM %s needs (at most %d)"
                             % (path, status.st_size, kind, MAX_PEM_BYTES))
        with open(path, "rb") as handle:
            data = handle.read(MAX_PEM_BYTES)
    except OSError as error:
        raise ValueError("cannot read %s: %s" % (path, error.strerror or error)) from None
    if not data.strip():
        raise ValueError("%s is empty" % path)
    if kind == "private key" and any(mark in data for mark in _PEM_ENCRYPTED):
        raise ValueError("%s is encrypted with a passphrase, which pixel has no way to ask "
                         "for: write it out unencrypted (openssl pkey -in %s -out NEW.key) "
                         "and keep that file private" % (path, path))
    if _PEM_MARKS[kind] in data:
        return
    other = "private key" if kind == "certificate" else "certificate"
    if _PEM_MARKS[other] in data:
        raise ValueError("%s holds a %s, not a %s: are --certfile and --keyfile swapped?"
                         % (path, other, kind))
    if data[:1] == b"\x30":   # an ASN.1 SEQUENCE: the binary form
        # PKCS#12 (.p12, .pfx, what Windows exports) starts with its version, INTEGER 3.
        header = 2 + (data[1] & 0x7F if data[1:2] >= b"\x80" else 0)
        if data[header:header + 3] == b"\x02\x01\x03":
            raise ValueError("%s is a PKCS#12 bundle (.p12, .pfx), not PEM: take the chain "
                             "and the key out of it (openssl pkcs12 -in %s -nokeys -out "
                             "CHAIN.pem; openssl pkcs12 -in %s -nocerts -nodes -out KEY.pem)"
                             % (path, path, path))
        raise ValueError("%s is DER, not PEM: convert it (openssl %s -inform DER -in %s "
                         "-out NEW.pem)" % (path, "x509" if kind == "certificate" else
                                            "pkey", path))
    raise ValueError("%s is not a PEM %s: it has no -----BEGIN %s----- line"
                     % (path, kind, kind.upper()))


def load_tls(certfile, keyfile):
    """A server-side TLS context: TLS 1.2 and up, the default ciphers, ALPN http/1.1, no
    renegotiation. ValueError says which file is wrong and how, in words: OpenSSL says
    "[SSL] PEM lib" for nearly every mistake."""
    import ssl   # here: only --certfile pays for it
    _check_pem(certfile, "certificate")
    _check_pem(keyfile, "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.set_alpn_protocols(["http/1.1"])
    try:   # a password callback: an encrypted key fails rather than prompt a terminal
        context.load_cert_chain(certfile, keyfile, password=lambda: b"")
    except ssl.SSLError as error:
        # NO_CERTIFICATE_ASSIGNED: a key of another type (RSA for an ECDSA certificate).
        if error.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise ValueError("the key %s does not match the certificate %s (its first "
                             "certificate must be this server's own, as in certbot's "
                             "fullchain.pem)" % (keyfile, certfile)) from None
        try:   # which of the two does not parse?
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(certfile)
        except ssl.SSLError:
            raise ValueError("%s holds a damaged PEM certificate (OpenSSL: %s)"
                             % (certfile, error)) from None
        raise ValueError("%s holds a damaged or unsupported private key (OpenSSL: %s)"
                         % (keyfile, error)) from None
    return context


# Kernel socket timeouts, a struct timeval, on Linux and the BSDs; elsewhere settimeout().
_KERNEL_TIMEOUTS = sys.platform.startswith(("linux", "darwin", "freebsd", "openbsd", "netbsd"))


def _timeval(seconds):
    # At least 1 us: the kernel reads a zero timeval as "no timeout".
    whole = int(seconds)
    micro = int((seconds - whole) * 1e6)
    return struct.pack("@ll", whole, micro if whole or micro else 1)


class _Closed(OSError):
    """The client closed or timed out, or the server is stopping: end the connection quietly."""


class _BadBody(Exception):
    """A request body that cannot be read as framed: its `reason` for the rejects log."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# A chunk's size line: hex digits (int(x, 16) alone would take "0x1f", "1_0" and " 1f"), then
# any extensions, which are dropped.
_CHUNK_SIZE = re.compile(rb"0*([0-9A-Fa-f]{1,8})(?:[ \t]*;|\Z)")


_GIF_HEADER_LINES = "".join("%s: %s\r\n" % pair for pair in GIF_ANSWER.headers).encode()
_PLAIN_TO_TLS = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 b"Content-Length: 38\r\nConnection: close\r\n\r\n"
                 b"This port speaks HTTPS: use https://.\n")


class BufferedConnection(http.server.BaseHTTPRequestHandler):
    """A client connection read into one buffer, each request within its deadline, evictable
    (ConnectionPool) while it waits for its client, TLS if the server has it."""

    def setup(self):
        # No rfile or wfile: one buffer in, one sendall out (a split header and body write
        # costs ~40 ms with Nagle, CPython gh-108736). Timeouts are the kernel's, which Linux
        # copies with TCP_NODELAY from the listening socket: settimeout() adds a poll(), a turn
        # of the GIL, to every recv and send. TLS keeps Python's: a blocking TLS socket
        # retries a read SO_RCVTIMEO ends, for ever.
        server = self.server
        self.connection = self.request
        self._pool = server.pool
        self._deadline = time.monotonic() + server.request_timeout
        self._buffer = bytearray()
        self._served = 0
        self._recv_timeout = None
        self._kernel_timeouts = _KERNEL_TIMEOUTS and server.tls_context is None
        self.command = self.path = self.requestline = ""
        self.request_version = self.protocol_version
        self.headers = {}
        if not server.options_inherited(self.request):
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if _KERNEL_TIMEOUTS:
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                        _timeval(server.request_timeout))

    def handle(self):
        tls = self.server.tls_context
        if tls is None or self._handshake(tls):
            super().handle()

    def finish(self):
        # The server closes the TCP socket in shutdown_request; a TLS one is a duplicate.
        if self.connection is not self.request:
            self.connection.close()

    def log_message(self, format, *args):
        pass   # the event log is the record; stderr is for what operators must act on

    def _handshake(self, tls):
        """Whether a TLS handshake ended within the request deadline; a failure is counted,
        never printed, and plain HTTP is told in words."""
        raw = self.request
        self._pool.mark_idle(raw, False)   # evictable, as any connection its client holds up
        try:
            raw.settimeout(max(MIN_TIMEOUT, self._deadline - time.monotonic()))
            first = raw.recv(1, socket.MSG_PEEK)
            if first in (b"", b"\x16"):   # a TLS handshake record, or an error to come
                # Wrap a duplicate: wrap_socket detaches the socket it wraps, and the pool
                # must keep a working one to close on an eviction or a stop.
                self.connection = tls.wrap_socket(raw.dup(), server_side=True,
                                                  do_handshake_on_connect=False)
                self.connection.settimeout(max(MIN_TIMEOUT, self._deadline - time.monotonic()))
                self.connection.do_handshake()
                return True
        except (OSError, ValueError):   # ssl.SSLError, a timeout, a reset, an eviction
            first = b""
        finally:
            self._pool.mark_busy(raw)
        self.server.tls_failures.add()
        if first:   # plain HTTP
            try:
                raw.sendall(_PLAIN_TO_TLS)
            except OSError:   # gone already
                return False
            self._linger(min(time.monotonic() + 1.0, self._deadline))
        return False

    def _recv(self, timeout, between=False):
        """Append what the client sends next to the buffer, waiting at most `timeout` s.
        Meanwhile the connection may be closed to make room (ConnectionPool.submit), first
        if it is `between` requests (kept alive, or answered and closing); then also by a
        stop. Within a request, even at a chunk's end with nothing buffered, it is not."""
        if timeout != self._recv_timeout:
            if timeout <= 0:
                raise _Closed("request timeout")
            if self._kernel_timeouts:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                           _timeval(timeout))
            else:
                self.connection.settimeout(timeout)
            self._recv_timeout = timeout
        pool = self._pool
        pool.mark_idle(self.request, between)   # the TCP socket, under TLS too
        try:
            # After marking: a stop either sees this connection idle and closes it, or is
            # seen here. A client that has not sent its first request is waited for.
            if between and pool.stopping:
                raise _Closed("stopping")
            chunk = self.connection.recv(RECV_SIZE)
        finally:
            pool.mark_busy(self.request)
        if not chunk:
            raise _Closed("client closed")
        self._buffer += chunk

    def _read_head(self):
        """The next request head, without its blank line; bare LF line ends are accepted."""
        buffer = self._buffer
        if self._served:   # kept alive: waits idle, then gets a fresh deadline
            if not buffer:
                self._recv(self.server.idle_timeout, between=True)
            self._deadline = time.monotonic() + self.server.request_timeout
        start = skipped = 0
        while True:
            # RFC 9112 2.2: empty lines before a request line are ignored. They count toward
            # the head's limit, and go in one step, not a byte at a time.
            if buffer[:1] in (b"\r", b"\n"):
                blank = len(buffer) - len(buffer.lstrip(b"\r\n"))
                del buffer[:blank]
                skipped += blank
                if skipped > MAX_HEAD_BYTES:
                    raise _Closed("only empty lines")
            crlf = buffer.find(b"\n\r\n", start)
            lf = buffer.find(b"\n\n", start, crlf if crlf >= 0 else len(buffer))
            end, size = (lf, lf + 2) if lf >= 0 else (crlf, crlf + 3)
            if end >= 0 and end + skipped <= MAX_HEAD_BYTES:   # else refused below, though whole
                head = bytes(buffer[:end])
                del buffer[:size]
                return head
            if len(buffer) > MAX_LINE and buffer.find(b"\n", 0, MAX_LINE + 1) < 0:
                raise HeadError(414, "uri_too_long", bytes(buffer[:MAX_LINE]))
            if len(buffer) + skipped > MAX_HEAD_BYTES:
                raise HeadError(431, "headers_too_large", bytes(buffer[:MAX_LINE]))
            start = max(0, len(buffer) - 2)
            # Only empty lines since the last answer: still between requests (the attack pass)
            self._recv(self._deadline - time.monotonic(), between=self._served > 0 and not buffer)

    def _read_body(self, length):
        while len(self._buffer) < length:
            self._recv(self._deadline - time.monotonic())
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return body

    def _read_chunked(self, cap):
        """A chunked body (RFC 9112 7.1) decoded, its trailers dropped, or _BadBody: past
        `cap` bytes ("body_too_large"), or framed other than by strict CRLF lines
        ("bad_framing", as a proxy that reads lines otherwise may have smuggled a request
        in). Chunk lines may take MAX_LINE bytes and a 16th of `cap`: a chunk costs a turn
        of this loop, and 4 KB chunks (Java's) take 125 lines for 500 KB."""
        body, spare = bytearray(), MAX_LINE + cap // 16
        while True:
            line = self._chunk_line()
            spare -= len(line) + 2
            match = _CHUNK_SIZE.match(line)
            if match is None or spare < 0:
                raise _BadBody("bad_framing")
            size = int(match.group(1), 16)
            if not size:
                break
            if len(body) + size > cap:
                raise _BadBody("body_too_large")
            data = self._read_body(size + 2)
            if data[size:] != b"\r\n":
                raise _BadBody("bad_framing")
            body += data[:size]
        for _ in range(MAX_HEADERS + 1):   # the trailer section, up to its blank line
            line = self._chunk_line()
            spare -= len(line) + 2
            if not line:
                return bytes(body)
            if spare < 0 or b":" not in line or line[:1] in b" \t:":   # as a head's line
                break
        raise _BadBody("bad_framing")

    def _chunk_line(self):
        """The next CRLF line of a chunked body, without its CRLF; a bare CR or LF in it
        (seen as soon as it comes), a NUL, or more than MAX_LINE bytes, is _BadBody."""
        buffer, start = self._buffer, 0
        while True:
            end = buffer.find(b"\r\n", start, MAX_LINE + 2)
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[:end + 2]
                if b"\r" in line or b"\n" in line or b"\0" in line:
                    raise _BadBody("bad_framing")
                return line
            if len(buffer) > MAX_LINE + 1 or buffer.find(b"\n", start, MAX_LINE + 2) >= 0:
                raise _BadBody("bad_framing")
            start = max(0, len(buffer) - 1)
            self._recv(self._deadline - time.monotonic())

    def _linger(self, until=None):
        """Half-close, then drop what the client sends until `until` (default: in a second):
        closing with data unread resets the connection before the client reads our answer."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            until = time.monotonic() + 1.0 if until is None else until
            drained = 0
            while drained < MAX_HEAD_BYTES * 8:
                self._buffer.clear()
                self._recv(until - time.monotonic(), between=self._served > 0)
                drained += len(self._buffer)
        except OSError:   # _Closed too
            return


class PixelHandler(BufferedConnection):
    """One connection's requests, as BufferedConnection reads them: each head parsed by
    parse_head, answered by the server's App, and sent in one write. Of http.server's
    hooks, `protocol_version` ("HTTP/1.0" closes after every answer), `server_version`,
    `sys_version`, `responses`, send_error(), log_message() (quiet), handle() and
    handle_one_request() work as documented. There is no `rfile` or `wfile`, and `headers`
    is a dict with lower-case names, not an email.message.Message."""

    protocol_version = "HTTP/1.1"
    server_version = "pixel/" + __version__
    sys_version = ""
    _gif = (None, b"")   # (Date, a kept-alive GET's whole GIF answer), built once a second

    def version_string(self):
        return self.server_version + " " + self.sys_version if self.sys_version and \
            self.server_version else self.server_version or self.sys_version

    def handle_one_request(self):
        try:
            try:
                head = parse_head(self._read_head())
            except HeadError as error:
                return self._refuse(error)
            self._served += 1
            self._serve(head, time.monotonic())
        except OSError:
            # A timeout, reset or stop (_Closed), perhaps mid-body: what follows is no request.
            self.close_connection = True
        if self._pool.stopping:
            self.close_connection = True

    def _serve(self, head, started):
        self.command, self.path, self.request_version = head.method, head.target, head.version
        self.headers = head.headers
        self.close_connection = not head.keep_alive or self._pool.stopping or \
            self.protocol_version == "HTTP/1.0"
        route, app, unread = route_for(head.path), self.server.app, False
        request = Request(head.method, head.path, head.query, head.headers,
                          self.client_address[0], b"", "", self.server.scheme)
        if route is not None and route.max_body and head.method in route.methods:
            early = app.early_answer(route, request, head.body_length)
            if early is not None:   # the body is not read: the connection ends after this
                self.close_connection = True
                self._send(early, started)
                return self._linger()
            waiting = len(self._buffer) < head.body_length if head.body_length != -1 else \
                not self._buffer
            if head.version == "HTTP/1.1" and waiting and \
                    "100-continue" in head.headers.get("expect", "").lower():
                self.connection.sendall(b"%s 100 Continue\r\n\r\n"
                                        % self.protocol_version.encode())
            try:   # Segment's Android SDK sends its batches chunked
                body = self._read_chunked(route.max_body) if head.body_length == -1 else \
                    self._read_body(head.body_length)
            except _BadBody as error:   # nothing after it can be read as a request
                self.close_connection = True
                self._send(app.refuse(route, request, error.reason, 400), started)
                return self._linger()
            request = request._replace(body=body)
        elif head.body_length == -1 or head.body_length > MAX_PAYLOAD_BYTES:
            # A body nobody asked for must not be taken for the next request: a small one is
            # read and dropped, a chunked or large one ends the connection.
            self.close_connection = unread = True
        elif head.body_length:
            self._read_body(head.body_length)
        self._send(app.answer(route, request), started)
        if unread:
            self._linger()   # let the client finish sending and read our answer

    def _refuse(self, error):
        """Answer a head the reader refused, then close: what follows it was never read
        as a request. Where its request line was read whole, a pixel still gets its GIF,
        and the rejects log a line (App.refuse)."""
        words = error.request_line.decode("latin-1").split(" ")
        if len(words) > 3:   # Segment's docs' literal spaces: the query whole in the line
            words = spaced_pixel_target(words)
        target = words[1] if len(words) > 1 else ""
        path, query = split_target(target)
        self.command, self.path, self.headers = words[0], target, {}
        if error.status not in (414, 431) and error.reason not in _ROUTED_HEAD_ERRORS:
            self.send_error(error.status)   # no request line to trust: no route to ask
        else:
            self.close_connection = True
            request = Request(words[0], path, query, {}, self.client_address[0], b"")
            self._send(self.server.app.refuse(route_for(path), request, error.reason,
                                              error.status))
        self._linger()   # the rest of the head, or a body, may still be on its way

    def send_error(self, code, message=None, explain=None):
        """http.server's hook: a plain-text answer (`message` or the status's phrase, never
        HTML) that closes the connection; `explain` is ignored."""
        self.close_connection = True
        self._send(plain_answer(code) if message is None else _answer(
            code, "text/plain; charset=utf-8", message.encode("latin-1", "replace") + b"\n"))

    def _send(self, answer, started=None):
        """Send `answer` in one write, with Server, Date and Connection added, once the time
        since `started` is counted: a client that has its answer finds it in /metrics."""
        date = self.server.http_date()
        if answer is GIF_ANSWER and self.command == "GET" and not self.close_connection \
                and self.request_version == "HTTP/1.1":   # what most requests get
            if self._gif[0] is not date:
                self._gif = (date, self._reply(answer, date))
            data = self._gif[1]
        else:
            data = self._reply(answer, date)
        if started is not None:
            self.server.durations.observe(time.monotonic() - started)
        if self.connection is self.request:   # plain TCP: what fits goes now, unmarked
            try:
                sent = self.connection.send(data, _DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        elif _writable(self.request):   # TLS: room for a record, nearly always
            return self.connection.sendall(data)
        # Else its client has not read what it was sent: the connection waits for it as for
        # a request, and may be closed to make room (four that read 8 KB/s held four slots).
        # Not at once: a closed answer whose event is written is sent again (the attack pass).
        self._pool.mark_idle(self.request, SENDING)
        self.connection.sendall(data)
        self._pool.mark_busy(self.request)

    def _reply(self, answer, date):
        head = b"%s %d %s\r\nServer: %s\r\nDate: %s\r\n%s" % (
            self.protocol_version.encode(), answer.status,
            self.responses[answer.status][0].encode(), self.version_string().encode(), date,
            _GIF_HEADER_LINES if answer is GIF_ANSWER else
            "".join("%s: %s\r\n" % pair for pair in answer.headers).encode("latin-1"))
        if self.close_connection:
            head += b"Connection: close\r\n"
        elif self.request_version == "HTTP/1.0":
            head += b"Connection: keep-alive\r\n"
        return head + b"\r\n" + (b"" if self.command == "HEAD" else answer.body)


SENDING = "sending"   # ConnectionPool.mark_idle's: waiting for a client to read its answer
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)   # 0 (Windows): a send that may wait


def _writable(sock):
    """Whether `sock` has room to send now (poll: select() takes no descriptor past 1023)."""
    if not hasattr(select, "poll"):
        return bool(select.select((), (sock,), (), 0)[1])
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(0))


def _wake(sock, how=socket.SHUT_RD):
    """Half-close `sock` for reading, so its thread wakes to EOF (SHUT_RDWR: from a send
    too); False if it was closed."""
    try:
        sock.shutdown(how)
    except OSError:
        return False
    return True


class ConnectionPool:
    """Serves at most `size` connections at once, each start to end on one thread, as
    ThreadingMixIn does; a thread whose connection has ended waits up to `linger` s to be
    handed the next, since starting one costs ~150 us, about a whole request. With every slot
    taken, submit() closes the connection that has waited longest for its client (for a next
    request, as nginx reuses idle keep-alive connections, or the rest of one), else waits for
    a slot (once stopping, it serves it past `size`); new ones wait in the backlog."""

    def __init__(self, size, serve, *, reporter, linger=WORKER_IDLE_SECONDS):
        self.size = size
        self.stopping = False    # finish what was received, keep no connection alive
        self.closing = False     # ... and take no more connections
        self.exhausted = 0       # times a connection found every slot taken
        self._serve = serve      # serve(sock, client_address): one connection's whole life
        self._reporter = reporter
        self._linger = linger
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)   # a slot freed, or one went idle
        self._handed = threading.Condition(self._lock)    # a connection for a waiting thread
        self._live = set()       # connections given a slot
        self._idle = {}          # waiting for their client, oldest first: True if kept alive
        self._evicted = set()    # closed to make room, their slots not yet free
        self._handoff = collections.deque()
        self._waiting_threads = 0
        self._full = False       # submit() waits for a slot

    def __len__(self):
        return len(self._live)

    def idle(self):
        return len(self._idle)

    def submit(self, sock, client_address):
        """Serve `sock` once a slot is free; False if the pool is closing (caller closes it)."""
        with self._lock:
            if len(self._live) >= self.size:
                self.exhausted += 1
                self._reporter.say("all %d connection slots are busy; new connections wait"
                                   % self.size, key="slots")
                self._full = True
                while len(self._live) >= self.size and not self.closing and not self.stopping:
                    # One at a time: a connection going idle while the one closed to make
                    # room still holds its slot must not be closed as well.
                    if not self._evicted:
                        self._evict_one()
                    self._changed.wait(STOP_POLL)   # a signal's stop sets stopping alone
                self._full = False
            if self.closing:
                return False
            self._live.add(sock)
            if self._waiting_threads:
                self._waiting_threads -= 1
                self._handoff.append((sock, client_address))
                self._handed.notify()
                return True
        try:
            threading.Thread(target=self._run, args=(sock, client_address), daemon=True).start()
        except RuntimeError:   # can't start a new thread
            with self._lock:
                self._free(sock)
            self._reporter.say("cannot start a thread for a new connection; closed it",
                               key="threads")
            return False
        return True

    def mark_idle(self, sock, kept_alive=True):
        """`sock` waits for its client (for a next request if `kept_alive`; SENDING: to
        read its answer): it may be closed to make room, and a kept-alive one by a stop."""
        self._idle[sock] = kept_alive
        if self._full:   # set before submit() looks for one to close: no lost wake-up
            with self._lock:
                self._changed.notify_all()

    def mark_busy(self, sock):
        self._idle.pop(sock, None)

    def _evict_one(self):
        # mark_idle and mark_busy change _idle without the lock (once a request): iterate
        # over a copy, and take each socket out with pop(), which says if it was still in.
        # Between requests first, then within one, a client not reading its answers last:
        # what it was sent is lost with it (the attack pass: 11,367 answers).
        order = {True: 0, False: 1, SENDING: 2}
        for sock in sorted(list(self._idle), key=lambda sock: order.get(self._idle.get(sock), 3)):
            state = self._idle.pop(sock, None)
            if state is not None and _wake(sock, socket.SHUT_RDWR if state == SENDING
                                           else socket.SHUT_RD):
                self._evicted.add(sock)
                return   # else busy again, or closed, meanwhile

    def _free(self, sock):   # under the lock
        self._live.discard(sock)
        self._evicted.discard(sock)
        self._idle.pop(sock, None)
        self._changed.notify_all()

    def _run(self, sock, client_address):
        while True:
            self._serve(sock, client_address)   # process_request_thread: errors go to handle_error
            # Free the slot and wait for the next connection in one step, so that one that
            # arrives once the slot is free finds this thread waiting.
            with self._lock:
                self._free(sock)
                self._waiting_threads += 1
                while not self._handoff:   # woken with none left: a thread coming back took it
                    if self.closing or not self._handed.wait(self._linger):
                        break
                if not self._handoff:
                    self._waiting_threads -= 1
                    return
                sock, client_address = self._handoff.popleft()

    def stop(self):
        """Keep no connection alive: close those waiting between requests (HTTP lets a
        client send again what it sent on a kept-alive connection closed under it); others
        end after their next answer, or their first: that is somebody's request."""
        self.stopping = True
        with self._lock:   # a submit() waiting for a slot that may never come serves its
            self._changed.notify_all()   # connection all the same: it was taken
        for sock, kept_alive in list(self._idle.items()):
            if kept_alive is True and self._idle.pop(sock, None) is not None:
                _wake(sock)

    def close(self, timeout):
        """Take no more connections, and wait up to `timeout` for the live ones to end;
        those still open then are half-closed, cut, and waited for a moment more."""
        with self._lock:
            self.closing = True
            self._handed.notify_all()
            self._changed.notify_all()
        self.stop()   # again: kept-alive connections gone idle since the first stop()
        with self._lock:
            if self._changed.wait_for(lambda: not self._live, timeout):
                return True
            for sock in self._live:
                _wake(sock)
            return self._changed.wait_for(lambda: not self._live, 1.0)


class StopAsked(Exception):
    """serve_forever() ends: a signal set PixelServer.stop_asked."""


class PixelServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """The built-in HTTP transport: the listening socket, a ConnectionPool, the deadlines,
    TLS and a graceful stop. It may be bound before it is given its App (serve_app), so that
    a start that cannot have the port makes no file. The pool replaces ThreadingMixIn's
    process_request: its threads each run process_request_thread for one connection at a
    time, so handle_error and shutdown_request work as documented."""

    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, app=None, *, max_connections=DEFAULT_MAX_CONNECTIONS,
                 request_timeout=10.0, idle_timeout=15.0, handler=PixelHandler, reporter=None,
                 reuse_port=False, tls=None, listening=True):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = None
        self.reporter = reporter or Reporter()
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.reuse_port = reuse_port
        self.tls_files = tls              # (certfile, keyfile), or None for plain HTTP
        self.scheme = "https" if tls else "http"
        self.tls_context = load_tls(*tls) if tls else None
        self.tls_failures = Counter()
        self.durations = Histogram()
        self.pool = ConnectionPool(max_connections, self.process_request_thread,
                                   reporter=self.reporter)
        self._inherited = None            # whether accepted sockets inherit our options
        self._date = (0, b"")
        self._reloading = threading.Lock()
        self._drained = threading.Lock()
        self.deferred = []                # work a signal left (see service_actions)
        self.stop_asked = False           # by a signal: serve_forever() raises StopAsked
        # Bound at once (a port in use is an error now), listening when `listening`, or at
        # server_activate(): until then a connection is refused, not kept waiting.
        super().__init__(address, handler, bind_and_activate=False)
        try:
            self.server_bind()
            if listening:
                self.server_activate()
        except BaseException:
            self.server_close()
            raise
        if app is not None:
            self.serve_app(app)

    def serve_app(self, app):
        """Answer with `app`, and count this transport's part of its /health and /metrics."""
        self.app = app
        pool, metrics = self.pool, app.metrics
        metrics.health("connections", pool.__len__)
        if self.tls_context is not None:
            metrics.health("tls_handshake_failures", self.tls_failures.total)
        for name, kind, help, read in (
                ("pixel_tls_handshake_failures_total", "counter", "Connections to a TLS port "
                 "that did not end in TLS: a failed or stalled handshake, plain HTTP.",
                 self.tls_failures.total),
                ("pixel_open_connections", "gauge", "Connections being served.", pool.__len__),
                ("pixel_idle_connections", "gauge", "Connections waiting for their client.",
                 pool.idle),
                ("pixel_connection_slots", "gauge", "Connections served at once at most "
                 "(--max-connections).", lambda: pool.size),
                ("pixel_connection_slots_exhausted_total", "counter", "Times a new "
                 "connection found every slot taken.", lambda: pool.exhausted)):
            metrics.value(name, kind, help, read)
        metrics.family("pixel_request_duration_seconds", "histogram", "From a request's "
                       "whole head to its answer, ready to send.", self.durations.samples)

    def reload_tls(self):
        """Load the certificate and key again (SIGHUP: certbot's renew hook) for new
        connections; a pair that does not load keeps the old one."""
        if self.tls_files is None or not self._reloading.acquire(blocking=False):
            return   # a SIGHUP storm: one reload at a time
        try:
            self.tls_context = load_tls(*self.tls_files)
        except ValueError as error:
            self.reporter.say("cannot reload TLS: %s; still using the certificate and key "
                              "loaded before" % error)
            return
        finally:
            self._reloading.release()
        self.reporter.say("reloaded the TLS certificate %s and key %s" % self.tls_files)

    def server_bind(self):
        # Not HTTPServer's: it resolves the host's FQDN, a DNS round trip we do not need.
        if self.reuse_port:   # several processes on one port: the kernel spreads connections
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _KERNEL_TIMEOUTS:
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
                self.socket.setsockopt(socket.SOL_SOCKET, option, _timeval(self.request_timeout))

    def options_inherited(self, sock):
        """Whether accepted sockets inherit TCP_NODELAY and timeouts (Linux's do); asked once."""
        if self._inherited is None:
            self._inherited = bool(_KERNEL_TIMEOUTS and sock.getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY) and sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == _timeval(self.request_timeout))
        return self._inherited

    def http_date(self):
        """The Date header: one bytes object all second (the GIF answer is cached by identity)."""
        now = int(self.app.clock())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True).encode())
        return self._date[1]

    def service_actions(self):
        # serve_forever() calls this each poll and after each connection it takes: a stop a
        # signal asked for (shutdown() would wait for this very loop), then the work it
        # left, each on a thread of its own (a reopen waits for a writer's lock).
        if self.stop_asked:
            raise StopAsked
        while self.deferred:
            try:
                threading.Thread(target=self.deferred[0], daemon=True).start()
            except RuntimeError:   # at a thread limit: TasksMax, RLIMIT_NPROC, memory
                self.reporter.say("cannot start a thread; trying again each %g s"
                                  % STOP_POLL, key="deferred")
                return
            del self.deferred[0]

    def get_request(self):
        try:
            return self.socket.accept()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                # socketserver would try again at once, for ever: a CPU spent. The client
                # waits in the listen queue while a connection ends and frees a descriptor.
                self.reporter.say("cannot accept a connection: %s; it waits (raise the "
                                  "open-file limit, LimitNOFILE=, or lower --max-connections)"
                                  % error.strerror, key="accept")
                time.sleep(ACCEPT_PAUSE)
            raise

    def process_request(self, request, client_address):
        if not self.pool.submit(request, client_address):
            self.shutdown_request(request)

    def shutdown_request(self, request):
        # socketserver half-closes first, since a plain close() used to wait for the garbage
        # collector; no other reference is held, so close() alone sends the FIN now.
        request.close()

    def handle_error(self, request, client_address):
        # What no handler expected: one line, at most one an interval, naming the client as
        # the logs would (none with --no-ip, truncated with --anonymize-ip).
        client = self.app.recorder.client_ip(Request("", "", "", {}, client_address[0], b""))
        self.reporter.say("internal error serving %s: %s" % (
            client or "a client", _bug(sys.exc_info()[1])), key="internal error")

    def shutdown(self):
        """Stop serve_forever(), from another thread; drain() serves what it had taken."""
        self.pool.stop()
        super().shutdown()

    def stop(self, timeout=None):
        """shutdown() and drain(), from another thread than serve_forever's."""
        self.shutdown()
        self.drain(timeout)

    def drain(self, timeout=None):
        """The one stop sequence, after serve_forever() has returned: take the connections
        already in the listen queue, close the listening socket, and answer every connection
        taken, waiting at most `timeout` (by default the request timeout). Idempotent."""
        with self._drained:
            if self.socket.fileno() < 0:
                return
            self.pool.stop()
            # Accept what the kernel has queued, so that closing the listening socket does not
            # reset it. One that arrives between the last accept() and the close still is,
            # unless Linux's net.ipv4.tcp_migrate_req hands it to another --reuse-port process.
            self.socket.setblocking(False)
            while True:
                try:
                    request, client_address = self.socket.accept()
                except OSError:   # BlockingIOError: the queue is empty; or EMFILE, ECONNABORTED
                    break
                request.setblocking(True)
                self.process_request(request, client_address)
            self.server_close()
            self.pool.close(self.request_timeout if timeout is None else timeout)


# --------------------------------------------------------------------------------------------
# WSGI: the same App behind any WSGI server, or mounted in an existing application

class WsgiApp:
    """A WSGI application over an App, with the built-in server's answers and rejects lines,
    every event on disk before the answer. Any other path is a 404, so it can be mounted under
    a prefix. The client address is REMOTE_ADDR. HTTP framing, keep-alive, head limits and
    percent-decoding the path (PATH_INFO, which routes are matched on) are the server's."""

    def __init__(self, app, close=None, config=None):
        self.app = app
        self.config = config                   # what it was made with, if it is known
        self.closed = False
        self._pid = os.getpid()                # where its threads run (see _forked)
        # close(), or when the app is collected: the threads hold the files, not the app.
        self._close = weakref.finalize(self, close or (lambda: None))

    def close(self):
        """Stop the forwarder and erase's desk, and close the files, once: a request after
        this is answered 503 (a write would open the files again, and hold them)."""
        self.closed = True
        self._close()

    def __call__(self, environ, start_response):
        if self.closed:
            answer = plain_answer(503)
            start_response("503 Service Unavailable", list(answer.headers))
            return [answer.body]
        if self._pid != os.getpid():
            self._forked()
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        query = environ.get("QUERY_STRING") or ""
        if not query and "?" in environ.get("REQUEST_URI", ""):   # uWSGI drops a long one
            query = environ["REQUEST_URI"].partition("?")[2]
        if "#" in query:   # wsgiref keeps a fragment in the query; split_target drops it
            query = query.partition("#")[0]
        if not query.isascii():   # raw UTF-8 bytes, which WSGI hands over read as Latin-1
            query = urllib.parse.quote_from_bytes(query.encode("latin-1"), _SAFE_TARGET)
        headers = {name[5:].replace("_", "-").lower(): value
                   for name, value in environ.items() if name.startswith("HTTP_")}
        for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(name):
                headers[name.replace("_", "-").lower()] = environ[name]
        route = route_for(path)
        request = Request(method, path, query, headers, environ.get("REMOTE_ADDR"), b"",
                          environ.get("SCRIPT_NAME", ""),
                          "https" if environ.get("wsgi.url_scheme") == "https" else "http")
        answer = None
        if route is not None and route.max_body and method in route.methods:
            length = _body_length(headers, "1")   # the framing parse_head takes, no other
            if length is None:
                answer = self.app.refuse(route, request, "bad_framing", 400)
            else:   # a chunked body's end is known where the host says (gunicorn, mod_wsgi)
                if length == -1 and not environ.get("wsgi.input_terminated"):
                    length = None
                answer = self.app.early_answer(route, request, length)
                if answer is not None and 0 < (length or 0) <= 4 * route.max_body:
                    # Read, not left: wsgiref closes on a body unread, and the reset that
                    # sends may reach the client before the answer does.
                    self._read(environ["wsgi.input"], route, request, length)
            if answer is None:
                answer, body = self._read(environ["wsgi.input"], route, request, length)
                request = request._replace(body=body)
        if answer is None:
            answer = self.app.answer(route, request)
        start_response("%d %s" % (answer.status, http.server.BaseHTTPRequestHandler.responses[
            answer.status][0]), list(answer.headers))
        return [b""] if method == "HEAD" else [answer.body]

    def _read(self, stream, route, request, length):
        """(an answer or None, the body): `length` bytes, or a chunked body (-1) to its end,
        refused past the route's cap or where the host's decoder refuses its framing."""
        body, want = bytearray(), length if length != -1 else route.max_body + 1
        try:
            while len(body) < want:
                chunk = stream.read(want - len(body))
                if not chunk:   # the client stopped sending: record nothing
                    return (plain_answer(400) if length != -1 else None), bytes(body)
                body += chunk
        # The host's chunk decoder refused the framing: werkzeug raises OSError, gunicorn its
        # ParseException (Exception). A Content-Length body cut short: uWSGI raises OSError.
        except Exception as error:
            if length != -1 and not isinstance(error, OSError):
                raise
            return (plain_answer(400) if length != -1 else
                    self.app.refuse(route, request, "bad_framing", 400)), b""
        if length == -1 and len(body) > route.max_body:
            return self.app.refuse(route, request, "body_too_large", 400), b""
        return None, bytes(body)

    def _forked(self):
        """Say, once in each process, that this one was forked after make_wsgi_app ran
        (gunicorn --preload, uWSGI without --lazy-apps): events are written, but threads do
        not cross a fork, so the forwarder and erase's desk run in the parent only."""
        self.app.recorder.reporter.say(
            "make_wsgi_app ran in process %d, and this worker %d was forked from it (gunicorn "
            "--preload, uWSGI without --lazy-apps): forwarding and `pixel.py erase` do not "
            "work here; build the app in the worker" % (self._pid, os.getpid()))
        self._pid = os.getpid()


# --------------------------------------------------------------------------------------------
# The forwarder: the events log relayed in order, at least once, from a checkpoint, to a
# Segment-compatible HTTP Tracking API (Segment, RudderStack, Jitsu, another pixel)

_REFUSED_STATUSES = (400, 413, 422)   # the receiver will never take this batch as it is
_KEY_STATUSES = (401, 403)            # ... nor anything under this writeKey, until fixed
_NOTHING_THERE_STATUSES = (404, 405)  # ... nor anything at this URL (nor after a 3xx)


def named_secret(text, secret):
    """`text` with --forward-write-key's `secret` in it named, not shown: unlike --write-key's
    keys, which a pixel's HTML holds, it lets its holder send to the receiver, and /health
    answers anyone. A short key (a test's "k") is named only where it stands alone: named
    inside every word, it made the text unreadable, and such a key is no secret. A longer
    one is named as a receiver may quote it too: in JSON, or as the Basic credential sent."""
    if not secret:
        return text
    if len(secret) < 8:
        return re.sub(r"(?<![\w-])%s(?![\w-])" % re.escape(secret), "(--forward-write-key)", text)
    credential = base64.b64encode((secret + ":").encode("utf-8")).decode("ascii")
    for form in dict.fromkeys((secret, json.dumps(secret)[1:-1], credential, json.dumps(
            secret, ensure_ascii=False)[1:-1], credential.rstrip("="))):   # each once
        text = text.replace(form, "(--forward-write-key)")
    return text


def _gist(answer, secret=None):
    """A receiver's answer in one short line, for stderr and /health: `secret` (its
    --forward-write-key), which it may quote, named before it is cut."""
    return " ".join(named_secret(answer, secret)[:200].split())


def backoff_delay(failures, first=BACKOFF_FIRST, maximum=BACKOFF_MAX):
    """Seconds to wait after `failures` failed attempts in a row: 1, 2, 4 ... up to 60, plus
    up to half again in jitter, so that forwarders that failed together retry apart."""
    base = min(maximum, first * 2 ** min(failures - 1, 16))
    return min(maximum, base * (1 + random.random() / 2))


def retry_after(value, now):
    """Seconds a Retry-After (seconds, or an HTTP date) asks, at most MAX_RETRY_AFTER; or None."""
    value = (value or "").strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:   # "-0000": no time zone known
        return None
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


class Receiver:
    """A Segment-compatible HTTP Tracking API at `url`: batches go to <url>/v1/batch gzipped,
    with Basic auth `<writeKey>:` as Segment's SDKs send them, over one kept-alive connection
    (https verified against the system's CAs and `cafile`'s). A refusal of one of
    `configured_keys`, the operator's, pauses forwarding (stops a backfill, which `gives_up`)."""

    def __init__(self, url, *, cafile=None, timeout=DEFAULT_FORWARD_TIMEOUT,
                 configured_keys=(), backoff=(BACKOFF_FIRST, BACKOFF_MAX), gives_up=False,
                 reporter=None, clock=time.time):
        parts = urllib.parse.urlsplit(url)
        self.url, self.path = url, parts.path.rstrip("/") + "/v1/batch"
        self.endpoint = urllib.parse.urlunsplit((parts.scheme, parts.netloc, self.path, "", ""))
        self.timeout, self.configured_keys = timeout, frozenset(configured_keys)
        self.first_delay, self.max_delay = backoff   # tests shorten them
        self.gives_up, self.reporter, self.clock = gives_up, reporter or Reporter(), clock
        self.stopping = threading.Event()
        connection, options = http.client.HTTPConnection, {}
        if parts.scheme == "https":
            import ssl   # here: only a forwarder over https pays for it
            connection, options = http.client.HTTPSConnection, {
                "context": ssl.create_default_context()}
            if cafile:
                options["context"].load_verify_locations(cafile)
        self._connect = functools.partial(connection, parts.hostname, parts.port,
                                          timeout=timeout, **options)
        self.failed_attempts = 0     # posts that got no answer, or one to retry
        self.last_error = None
        self.backoff = 0.0           # the wait under way
        self.paused_key = None       # the configured writeKey a 401 or 403 stopped
        self.secret = None           # --forward-write-key, never quoted (the Forwarder's)
        self.wrong_url = None        # its last answer saying nothing is at the URL
        self.gave_up = None          # why a backfill stopped for good
        self.between = lambda: None  # called during a wait (see pause), and a post (_watch)
        self.woken = threading.Event()   # a LogQueue's: its writer opened a file (see _watch)
        self._failing = 0            # attempts failed in a row
        self._aborted, self._connection = False, None

    def deliver(self, key, body):
        """(status, answer) once the receiver answers 2xx, 400, 413 or 422, or 401 or 403
        for a key not configured; (None, None) if stop() came first, or a backfill gave up.
        Anything else is posted again: 429 after its Retry-After, the rest after backoff."""
        while not self.stopping.is_set():
            delay = fatal = None
            try:
                status, headers, answer = self.post(key, body)
            except (OSError, http.client.HTTPException) as error:
                problem = "%s: %s" % (type(error).__name__, error)
                if getattr(error, "verify_code", None) is not None:   # ssl's: no CA vouches
                    problem += " (for a private CA's certificate: %s FILE)" % (
                        "--ca" if self.gives_up else "--forward-ca")
                    fatal = "%s: %s" % (self.endpoint, problem)
            else:
                if 200 <= status < 300 or status in _REFUSED_STATUSES or \
                        status in _KEY_STATUSES and key not in self.configured_keys:
                    if self._failing:
                        self.reporter.say("forwarding to %s again, after %d failed "
                                          "attempt(s)" % (self.endpoint, self._failing))
                    self._failing, self.backoff, self.paused_key, self.wrong_url = \
                        0, 0.0, None, None
                    return status, answer
                problem = "%d %s" % (status, _gist(answer, self.secret))
                if status in _KEY_STATUSES:
                    delay = self.max_delay
                    # The operator's key named, as in /health (a short one is no secret)
                    named = key if len(key) < 8 else named_secret(key, self.secret)
                    fatal = "%s refused writeKey %s: %s; check --write-key or the receiver's " \
                        "keys" % (self.endpoint, named, problem)
                    if not self.gives_up and self.paused_key != key:
                        self.paused_key = key
                        self.reporter.say(
                            "forwarding to %s is PAUSED: it refused writeKey %s (%s). Check "
                            "--forward-write-key or the receiver's keys; nothing is dropped, "
                            "retrying every %d s" % (self.endpoint, named, problem,
                                                     self.max_delay))
                elif status in _NOTHING_THERE_STATUSES or 300 <= status < 400:
                    location = headers.get("location")   # a redirect is never followed
                    problem += "%s: nothing at this URL takes batches; check the URL" % (
                        " (to %s)" % location[:200] if location else "")
                    self.wrong_url = problem
                    fatal = "%s answered %s" % (self.endpoint, problem)
                elif status == 429:   # never at once: Retry-After: 0 would be a loop
                    delay = retry_after(headers.get("retry-after"), self.clock())
                    delay = None if delay is None else max(delay, self.first_delay)
            if fatal is not None and self.gives_up:   # a backfill: waiting will not fix it
                # (a certificate may, but not in a run from the command line)
                self.gave_up = fatal
                self.stopping.set()
            if self.stopping.is_set():   # stop()'s own cut of the post, or a backfill gave up
                break
            self._failing += 1
            self.failed_attempts += 1
            if delay is None:
                delay = backoff_delay(self._failing, self.first_delay, self.max_delay)
            self.last_error, self.backoff = problem, delay
            self.reporter.say("forwarding to %s: %s; %d failed attempt(s) in a row, next in "
                              "%.1f s" % (self.endpoint, problem, self._failing, delay),
                              key="forward")
            self.pause(delay)
        return None, None

    def pause(self, delay):
        """Wait `delay` s, or until stop(): True if stopped. `between()`, the Forwarder's, is
        called every FORWARD_POLL s and when `woken`, to save what a kill -9 must not lose."""
        deadline = time.monotonic() + delay
        while not self.stopping.is_set():
            self.between()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.woken.wait(min(left, FORWARD_POLL)):   # the writer opened a file, or a stop
                self.woken.clear()
        return self.stopping.is_set()

    def post(self, write_key, body):
        """POST one gzipped batch: (status, headers with lower-case names, the first
        MAX_ANSWER_BYTES of the answer as text). OSError or HTTPException if no whole answer
        came within `timeout`, all told (an answer dripped, or 100 Continue for ever)."""
        credential = base64.b64encode((write_key + ":").encode("utf-8")).decode("ascii")
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                   "Authorization": "Basic " + credential, "User-Agent": "pixel/" + __version__}
        self._aborted, done = False, threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(done,), daemon=True)
        watchdog.start()
        try:
            reused = self._connection is not None
            try:
                return self._post(body, headers)
            except ConnectionError:
                if not reused or self._aborted:
                    raise
            return self._post(body, headers)   # it had closed the kept-alive one: afresh
        except (OSError, http.client.HTTPException):
            if self._aborted and not self.stopping.is_set():
                raise socket.timeout("no whole answer within %g s" % self.timeout) from None
            raise
        finally:
            done.set()
            self.woken.set()
            watchdog.join()   # and so its `between`: one thread at a time saves

    def _watch(self, done):
        """A post's second thread: it cuts the post at its deadline, and meanwhile calls `between`
        each time `woken` is set (a file the writer opened is to be named in the checkpoint at
        once: a kill -9 before the post's end would lose it). Its end sets it too, after `done`."""
        deadline = time.monotonic() + self.timeout
        while self.woken.wait(max(0.0, deadline - time.monotonic())) and \
                time.monotonic() < deadline:   # (a rotation storm keeps it set)
            self.woken.clear()
            if done.is_set():
                return
            if self.stopping.is_set():   # stop() or hold(): the deadline is all that is left
                break
            try:
                self.between()
            except Exception as error:   # a bug: said, and the deadline still kept
                self.reporter.say("forwarder error: %s" % _bug(error), key="forwarder error")
        if not done.wait(max(0.0, deadline - time.monotonic())):
            self.abort()

    def _post(self, body, headers):
        if self._connection is None:
            self._connection = self._connect()
        try:
            self._connection.request("POST", self.path, body, headers)
            response = self._connection.getresponse()
            answer = response.read(MAX_ANSWER_BYTES)
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if not response.isclosed():   # an answer longer than we read: drop the rest
            self.close()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, answer.decode("utf-8", "replace")

    def abort(self):
        """Cut the post under way, from another thread (its deadline, or a stop)."""
        self._aborted = True
        sock = getattr(self._connection, "sock", None)
        if sock is not None:   # a recv or send blocked on it wakes (closed: the post is over)
            _wake(sock, socket.SHUT_RDWR)

    def stop(self):
        self.stopping.set()
        self.woken.set()   # ends a pause
        self.abort()

    def close(self):
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()


def forward_item(line, strip=False):
    """A log line (no newline) as a batch item: (its writeKey or None, the event as JSON bytes).
    With `strip` its writeKey is taken out, for the batch's to apply; else it stays, as Basic auth
    cannot carry a key with a colon. Rejected("forward_unreadable") if not a JSON object."""
    match = _top_level_string(line, _WRITE_KEY_FIELD)
    if match is not None:
        key = match.group(1).decode("ascii")
        if not strip:
            return key, line
        start, end = match.span()   # cut it out, with one of the commas beside it
        if line[end:end + 1] == b",":
            end += 1
        elif line[start - 1:start] == b",":
            start -= 1
        return key, line[:start] + line[end:]
    try:
        event = json.loads(line)
    except ValueError:   # not JSON, or not UTF-8
        raise Rejected("forward_unreadable", "not JSON") from None
    except RecursionError:
        raise Rejected("forward_unreadable", "nested too deep") from None
    if not isinstance(event, dict):
        raise Rejected("forward_unreadable", "not a JSON object")
    key = event.pop("writeKey", None) if strip else event.get("writeKey")
    try:
        item = _encode(event).encode("ascii") if strip else line
    except ValueError:   # 1e400, read back as infinity
        raise Rejected("forward_unreadable", "a number out of range") from None
    return (key if isinstance(key, str) and key else None), item


# The rejects-log reasons whose lines hold a whole event the receiver did not take, which
# `pixel.py forward` sends again when it is given the rejects log.
_SENT_AGAIN = ("forward_unauthorized", "forward_rejected")


def rejected_event(line):
    """For a rejects-log line (an object with a reason and no type): the event it holds,
    as its log line, if its reason is in _SENT_AGAIN, else b"". None for any other line."""
    if b'"reason"' not in line:   # an event's line, fast
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or "type" in record or \
            not isinstance(record.get("reason"), str):
        return None
    event = record.get("event")
    if record["reason"] not in _SENT_AGAIN or not isinstance(event, dict):
        return b""
    try:
        return _encode(event).encode("ascii")   # the line as it was logged, byte for byte
    except (ValueError, RecursionError):   # 1e400: not from pixel, which quotes it as text
        return b""


def not_an_event_log(first, whole):
    """Why a file that starts with `first` (all of it, if `whole`) is not a log `pixel.py
    forward` may send, in words. None if it is empty or one of its first SNIFF_LINES lines
    is an event (with a "type") or a rejects-log line (with a "reason"): each line of
    anything else would be posted as an event under --write-key."""
    if not first:
        return None
    lines = first.split(b"\n")
    if not whole:   # the last piece may be cut short by the read
        lines.pop()
    lines = [line for line in lines[:SNIFF_LINES] if line.strip()]
    if not lines:
        return "no newline in its first %d bytes" % len(first) if first.strip() else \
            "blank lines only"
    kinds = set()
    for line in lines:
        try:
            document = json.loads(line)
        except (ValueError, RecursionError) as error:
            kinds.add("binary" if isinstance(error, UnicodeDecodeError) or b"\0" in line
                      else "text")
            continue
        if isinstance(document, dict) and (isinstance(document.get("type"), str) or
                                           isinstance(document.get("reason"), str)):
            return None
        kinds.add("checkpoint" if isinstance(document, dict) and
                  {"device", "inode", "offset"} <= set(document) else "json")
    return next(why for kind, why in (
        ("checkpoint", "it is a pixel checkpoint"),
        ("json", 'JSON, but none of its first lines is an event, an object with a "type"'),
        ("binary", "binary data, not lines of JSON"),
        ("text", "its first lines are not JSON")) if kind in kinds)


# A checkpoint that names no file: forwarding starts at the oldest file it may send.
_NO_CHECKPOINT = {"device": -1, "inode": -1, "offset": 0, "mtime_ns": 0, "head_bytes": 0,
                  "head": ""}


def read_checkpoint(path):
    """The checkpoint at `path`, or None if there is none; OSError, or ValueError if not one."""
    try:
        fd = open_file(path)
    except FileNotFoundError:
        return None
    with open(fd, "rb") as handle:   # capped, though a backfill's list of files sent grows
        data = handle.read(MAX_CHECKPOINT_BYTES)
    try:
        document = json.loads(data)
    except RecursionError:
        raise ValueError("not a pixel checkpoint: nested too deep") from None
    fields = ("device", "inode", "offset", "mtime_ns", "head_bytes")
    if not isinstance(document, dict) or not all(
            type(document.get(field)) is int and document[field] >= -1 for field in fields) \
            or not 0 <= document["head_bytes"] <= 4096 or document["offset"] < 0:
        raise ValueError("not a pixel checkpoint")
    return document


def write_checkpoint(path, document, in_place=False):
    """Replace `path` with `document`, fsynced: a kill -9 or power cut leaves old or new. With
    `in_place` and no room for a new file, the old one is written over, in the blocks it has:
    on a full disk a forwarder must save to send, and only what it sends can --keep delete.
    (Its CHECKPOINT_SLACK holds about 150 more files moved by hand meanwhile.)"""
    temporary = path + ".tmp"
    data = (json.dumps(document, sort_keys=True) + "\n").encode("ascii")
    written = data + b" " * CHECKPOINT_SLACK if in_place else data   # JSON may end in spaces
    try:
        fd = open_file(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW |
                       getattr(os, "O_CLOEXEC", 0))   # a FIFO put there would block
        try:
            with open(fd, "wb", buffering=0) as handle:
                if handle.write(written) != len(written):
                    raise OSError(errno.ENOSPC, "short write")
                os.fsync(fd)
            os.replace(temporary, path)
        except OSError:   # no .tmp left behind to pass for state
            os.remove(temporary)
            raise
    except OSError as error:
        if not in_place or error.errno not in (errno.ENOSPC, errno.EDQUOT) or \
                not _write_over(path, data):
            raise
        return
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _write_over(path, data):
    """Write `data` over the file at `path` if the blocks it has hold it (padded with spaces,
    it keeps its size); whether it did. A kill -9 leaves old or new; a power cut in
    the write (which a full disk alone asks for) may leave neither."""
    try:
        fd = open_file(path, os.O_WRONLY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    try:
        status = os.fstat(fd)
        if len(data) > max(status.st_size, status.st_blocks * 512):
            return False
        data += b" " * (status.st_size - len(data))
        if os.pwrite(fd, data, 0) != len(data):
            raise OSError(errno.ENOSPC, "short write")
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


class GzipReader:
    """A gzip file read forward from a descriptor as GzipFile reads one (members in a row, zero
    padding after them), but where GzipFile drops what it inflated before damage (a corrupt
    byte, a cut-short end), this hands it out as zcat does, then `damage` says what stopped
    it. seek() inflates all it passes: `stopping` (an Event) cuts it with InterruptedError."""

    CHUNK = 16 * 1024   # compressed bytes read at once

    def __init__(self, fd, stopping=None):
        self.fd, self.stopping = fd, stopping
        self._rewind()

    def _rewind(self):
        self.position = 0   # inflated bytes handed out
        self.damage = None
        self._blocks = self._inflate()
        self._ready = b""   # inflated, not yet handed out
        self._last = b""    # what pread() handed out last, up to `position`

    def seek(self, offset):
        """Go to inflated byte `offset`: from the top if it lies behind, as GzipFile does."""
        if offset < self.position:
            self._rewind()
        while self.position < offset:
            if self.stopping is not None and self.stopping.is_set():
                raise InterruptedError(errno.EINTR, "stopped while inflating up to byte %d"
                                       % offset)
            if not self.read(min(offset - self.position, MAX_WRITE_BYTES)):
                break

    def pread(self, size, offset):
        """Up to `size` inflated bytes from `offset`. The forwarder reads on from a little
        before its last read ended: that read is kept, as gzip only goes back from the top."""
        kept = offset - (self.position - len(self._last))
        if 0 <= kept <= len(self._last):
            self._last = self._last[kept:]
        else:
            self._last = b""
            self.seek(offset)   # InterruptedError: a stop came first
        while len(self._last) < size:
            block = self.read(size - len(self._last))
            if not block:
                break
            self._last += block
        return self._last[:size]

    def read(self, size):
        """Up to `size` inflated bytes; b"" at the end, or at damage."""
        if not self._ready:
            self._ready = next(self._blocks, b"")
        block, self._ready = self._ready[:size], self._ready[size:]
        self.position += len(block)
        return block

    def _inflate(self):
        """The file inflated, in blocks none of them empty, to its end or its damage."""
        done, data, member, members = 0, b"", None, 0   # done: bytes read from the file
        while True:
            if not data:
                data = os.pread(self.fd, self.CHUNK, done)
                done += len(data)
            if not data:
                if member is not None:
                    self.damage = "cut short: the file ends at byte %d, inside the gzip " \
                                  "data" % done
                return
            if member is None:   # a member next, or the zeros that may pad the end
                data = data.lstrip(b"\0") if members else data
                if not data:
                    continue
                member, members = zlib.decompressobj(16 + zlib.MAX_WBITS), members + 1
            before = member.copy()
            try:
                block = member.decompress(data, MAX_WRITE_BYTES)
            except zlib.error as error:
                yield self._salvage(before, data, done - len(data), error)
                return
            data, member = (member.unused_data, None) if member.eof else \
                (member.unconsumed_tail, member)
            if block:
                yield block

    def _salvage(self, member, data, start, error):
        """What `data` (from byte `start` of the file) inflates to, fed to `member` a byte
        at a time, before the byte `error` was about; `damage` names that byte."""
        kept, index = [], 0
        while index < len(data):
            try:
                kept.append(member.decompress(data[index:index + 1]))
            except zlib.error:
                break
            index += 1
        self.damage = "corrupt gzip data, found at byte %d of the file (%s)" % (
            start + index, str(error).rpartition(": ")[2] or error)
        return b"".join(kept)


def _flock_shared(fd):
    """Take a shared flock of `fd`: False if another process holds it exclusively."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


class LogFile:
    """One file of a log being forwarded, read through a descriptor of its own (its name may
    change meanwhile) from `offset`, where its unsent lines start. One `named` for good
    (pixel's rotated names) may be parked (closed), to be found again by name or identity.
    An `archive` (a GzipReader) counts `offset` in inflated bytes."""

    def __init__(self, fd, identity, name, offset=0, archive=False, stopping=None):
        self.fd, self.identity, self.name, self.offset = fd, identity, name, offset
        self.named = self.shared = False
        self.moved = None   # a parked moved file's (head_bytes, head), as the checkpoint had
        self.parked = None   # (head_bytes, head) when the queue parked it
        self.archive = GzipReader(fd, stopping) if archive else None
        self._first = b""   # its first bytes, for head()
        self.counted = None   # lines LogQueue.count_lines() found unsent in it (count_unsent)
        self.until = None   # where it ends for this entry: moved back, a later one goes on

    @classmethod
    def open(cls, path, archive=False, stopping=None):
        """The regular file at `path` (else open_file's OSError); with `archive` None, an
        archive if its first bytes say so, whatever its name."""
        fd = open_file(path)
        try:
            status = os.fstat(fd)
            if archive is None:
                archive = os.pread(fd, 2, 0) == b"\x1f\x8b"
            return cls(fd, (status.st_dev, status.st_ino), path, archive=archive,
                       stopping=stopping)
        except BaseException:
            os.close(fd)
            raise

    def share(self):
        """Hold a shared flock while it is open (a backfill's), for `pixel.py erase` to refuse
        it: we would go on sending the copy it replaced. False if another process holds it
        exclusively (an erase, or its pixel); then a later unpark does not ask again."""
        self.shared = _flock_shared(self.fd)
        return self.shared

    def unpark(self):
        """Open a parked file again; False if it is gone."""
        if self.fd is None:
            self.fd = self._find()
        return self.fd is not None

    def holds(self, identity, fd=None, path=None):
        """Whether it is the file `identity`, open at `fd`, or else at `path`: a parked one is
        told by its head from a later file on its reused inode (one open keeps its inode)."""
        head = self.moved or self.parked
        if self.identity != identity:
            return False
        if self.fd is not None or head is None or fd is None and path is None:
            return True
        try:
            opened = os.dup(fd) if fd is not None else open_file(path)
        except OSError:   # gone since: not this parked file
            return False
        try:
            return disk_head(opened, head[0]) == head[1]
        finally:
            os.close(opened)

    def park(self):
        """Close it, its head kept (see holds), to be found again by name or identity (unpark)."""
        self.parked = self.mark()
        self.close()

    def duplicate(self):
        """A descriptor of this file, parked or not, for the caller to close; None if gone."""
        return os.dup(self.fd) if self.fd is not None else self._find()

    def _find(self):
        """A descriptor of this file, by its name, else by its identity among its log's files
        (an outside rename; one moved by hand, under any name, its head checked); None if gone."""
        folder, base = os.path.split(self.name)
        stem = _ROTATED.sub("", base, count=1)

        def names():   # the folder is listed only if the name is not it: a restart behind
            yield base  # thousands of files parked them all, and listed it for each
            yield from (name for name in os.listdir(folder)
                        if name.startswith(stem) or self.moved is not None)

        for name in names():
            status = stat_or_none(os.path.join(folder, name))   # no FIFO opened, no other file
            if status is None or (status.st_dev, status.st_ino) != self.identity:
                continue
            try:
                fd = open_file(os.path.join(folder, name))
            except OSError:   # gone, unreadable, or not a file (a FIFO would block)
                continue
            status = os.fstat(fd)
            if self.holds((status.st_dev, status.st_ino), fd):
                self.name = os.path.join(folder, name)
                if self.shared and not _flock_shared(fd):   # being erased: gone for us
                    os.close(fd)
                    break
                return fd
            os.close(fd)
        return None

    def read(self, offset, size):
        if self.archive is None:
            return os.pread(self.fd, size, offset)
        return self.archive.pread(size, offset)

    def line_end(self, offset, stopping):
        """Where the line going on at `offset` ends: past its newline, or at the file's end;
        None if `stopping` came first (a "line" may be gigabytes long)."""
        while not stopping.is_set():
            block = self.read(offset, MAX_WRITE_BYTES)
            past = block.find(b"\n") + 1   # 0: no newline in it
            if past or not block:
                return offset + past
            offset += len(block)
        return None

    def not_an_event_log(self):
        """not_an_event_log() of its first 8 KiB (where most logs show one), else SNIFF_BYTES."""
        for size in (8192, SNIFF_BYTES):
            first = self.read(0, size)
            problem = not_an_event_log(first, whole=len(first) < size)
            if problem is None or len(first) < size:
                break
        return problem

    def received_at(self, offset):
        """The receivedAt of the line at `offset`, in seconds, or None."""
        line = self.read(offset, MAX_EVENT_LINE).partition(b"\n")[0]
        try:
            return parse_time(json.loads(line).get("receivedAt"))
        except (ValueError, AttributeError, TypeError, RecursionError):
            return None

    def size(self):
        """How far it can be read: None for an archive (or a parked file)."""
        return os.fstat(self.fd).st_size if self.archive is None and self.fd is not None else None

    def status(self):
        """Its os.stat_result (a parked file's by its name), or None if it is gone."""
        return stat_or_none(self.name if self.fd is None else self.fd)

    def mtime_ns(self):
        """Its last write, in ns; 0 if it is gone."""
        return getattr(self.status(), "st_mtime_ns", 0)

    def starts_with(self, length, head):
        """Whether its first `length` bytes have the checksum `head`, parked or not."""
        fd = self.duplicate()
        try:
            return fd is not None and disk_head(fd, length) == head
        finally:
            if fd is not None:
                os.close(fd)

    def head(self, length):
        """A checksum of the first `length` (at most 4096) bytes: an inode is reused, a first
        line is not. Those read to be sent (saw; an archive's: all) are kept: a line past them
        may yet be taken back (a short write), and a head taken with it found nothing again."""
        data = self._first
        if len(data) < length:   # read once for an archive, where it costs most
            data = self.read(0, 4096)
            if self.archive is not None:
                self._first = data
        return head_of(data[:length])

    def saw(self, offset, data):
        """Keep the first 4096 bytes as they were read to be sent, for head() and replaced()."""
        if self.archive is None and offset == len(self._first) < 4096:
            self._first += data[:4096 - offset]

    def replaced(self):
        """Whether what was sent of it is not on disk now: cut shorter (copytruncate), and
        maybe written past the offset again, as the head of what was read to be sent shows."""
        length = min(self.offset, len(self._first))
        return self.archive is None and (os.fstat(self.fd).st_size < self.offset or (
            length > 0 and disk_head(self.fd, length) != self.head(length)))

    def mark(self):
        """(how many of its first bytes, up to 4096, their head()): what tells it from a
        later file on its inode, for a checkpoint's list of files moved by hand."""
        length = min(self.size() or 0, 4096)
        return length, self.head(length)

    def position(self):
        """Where it is sent up to, as a checkpoint names it (found_at, rotated_since)."""
        head_bytes = min(self.offset, 4096)
        return {"path": self.name, "device": self.identity[0], "inode": self.identity[1],
                "offset": self.offset, "head_bytes": head_bytes, "head": self.head(head_bytes),
                "mtime_ns": self.mtime_ns()}

    def fingerprint(self):
        """"device:inode:bytes:head", for a backfill's list of files sent: its bytes on disk
        sent (an archive's: all), and a checksum of their first 4096."""
        length = os.fstat(self.fd).st_size if self.archive else self.offset
        return "%d:%d:%d:%s" % (self.identity + (length, disk_head(self.fd, length)))

    def sent_before(self, sent, legacy_until):
        """How many of its bytes on disk an earlier backfill sent, by the (bytes, head) entries in
        `sent` (sent_files; None: 1.0's, by inode alone, for a file not written since
        `legacy_until`); None if none matches its size (a log's may grow) and first bytes."""
        size = os.fstat(self.fd).st_size
        for entry in sent["%d:%d" % self.identity]:
            if entry is None:
                if legacy_until is None or self.mtime_ns() <= (legacy_until + 1) * 1e9:
                    return size
                continue
            length, head = entry
            if (length == size or length < size and not self.archive) and \
                    disk_head(self.fd, length) == head:
                return length
        return None

    def say_gone(self, reporter):
        """Say it is gone before the forwarder could send it all (with its .gz, if any)."""
        gzipped = os.path.exists(self.name + ".gz")   # by cron, or logrotate's compress
        reporter.say("%s%s (inode %d) is gone before the forwarder could send it: its unsent "
                     "events are lost to the receiver%s" % (
                         "" if self.named else "a file moved by hand, last seen as ", self.name,
                         self.identity[1], "" if not gzipped else " (gzipped since: `pixel.py "
                         "forward --to URL %s.gz` sends it, from its start)" % self.name))

    def cut(self, reporter):
        """Say it was cut shorter (copytruncate), and send it again from its start."""
        reporter.say("%s was cut shorter under the forwarder (copytruncate?): what it held past "
                     "byte %d, as far as was sent, is in the copy alone (`pixel.py forward --to "
                     "URL COPY` sends the copy, from its start); forwarding it from its start"
                     % (self.name, self.offset))
        self.offset, self._first = 0, b""

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def count_unsent(log, end, lock, stopping, between):
    """The lines of LogFile `log` from its offset to `end` (None: its end), read through a
    descriptor of its own, taken under `lock` (a parked file is not opened meanwhile), with
    `between()` called before each block; 0 if it is gone, None if `stopping` came first."""
    with lock:
        fd = log.duplicate()
    if fd is None:
        return 0
    copy = LogFile(fd, log.identity, log.name, archive=log.archive is not None, stopping=stopping)
    offset, lines = log.offset, 0
    try:
        while end is None or offset < end:
            between()
            if stopping.is_set():
                return None
            block = copy.read(offset, MAX_WRITE_BYTES if end is None else
                              min(MAX_WRITE_BYTES, end - offset))
            if not block:
                break
            lines += block.count(b"\n")
            offset += len(block)
    finally:
        copy.close()
    return lines


def on_new_files(writer, look, share=0.1, clock=time.monotonic):
    """`look` (it walks the queue), for a count to call as it reads (count_unsent): run at
    once, then only when `writer` (None: a backfill's, never) has opened another file, as a
    rotation or a move by hand does, and for at most a `share` of the time: run for each
    block, or each rotation of a storm, it held a count behind thousands of files for ever."""
    last = [None, 0.0]   # the writer's file when it last ran, and when it may run again

    def maybe():
        if clock() >= last[1]:
            identity, started = writer.committed()[0], clock()
            if identity != last[0]:
                look()
                ended = clock()
                last[:] = identity, ended + max(0.02, (ended - started) * (1 - share) / share)
    return (lambda: None) if writer is None else maybe


def head_of(first):
    """The checksum that tells a file by its `first` bytes (up to 4096) in checkpoints."""
    return "%08x" % zlib.crc32(first)


def disk_head(fd, length):
    """LogFile.head() of the file open at `fd`, read from the disk now."""
    return head_of(os.pread(fd, min(length, 4096), 0))


def rotated_since(path, live, checkpoint):
    """The rotated files of the log at `path` written to since `checkpoint` was, each once,
    oldest first: by last write, then by name; the checkpoint's file whatever its last write,
    and after it those with pixel's names after its own, in name order (they sort in the
    order written whatever the clock did: rotation_target). If all have pixel's names, by
    name. Each is opened, or past MAX_OPEN_LOG_FILES parked."""
    since, sent = checkpoint["mtime_ns"], (checkpoint["device"], checkpoint["inode"])
    folder, base = os.path.split(path)
    by_identity, others = {}, []
    for name in os.listdir(folder):
        match = _ROTATED.match(name, len(base)) if name.startswith(base) else None
        if not match:
            others.append(name)
            continue
        status = stat_or_none(os.path.join(folder, name))   # None: gone since listdir
        if status is not None and (status.st_dev, status.st_ino) != live:
            key = _rotation_key(match)
            entry = (status.st_mtime_ns, key, name, (status.st_dev, status.st_ino))
            # One name a file (each name was sent), pixel's where a hard link gives it one:
            # the checkpoint's file by its first, any other by its last, so that no second
            # name puts a file unsent before the checkpoint's (the attack pass: 8 of 15 lost).
            kept = by_identity.get(entry[3])
            if kept is None or kept[1] is None or key is not None and \
                    (key < kept[1]) == (entry[3] == sent):
                by_identity[entry[3]] = entry
    found = list(by_identity.values())
    # By last write a clock set back skips files (mtime < since): the checkpoint's own file
    # is kept whatever its mtime, and pixel's names after its name are, whatever other names
    # stand beside them (the attack pass: an old logrotate .1 beside lost 4 of 9 events).
    after = next((key for _, key, _, identity in found if identity == sent), None)
    moved = moved_files(checkpoint, live)
    listed = {(position["device"], position["inode"]) for position in moved}
    found = [entry for entry in found if entry[0] >= since or entry[3] in listed or
             entry[3] == sent or after is not None and entry[1] is not None and
             entry[1] >= after]
    named = all(key is not None for _, key, _, _ in found)
    found.sort(key=lambda entry: entry[1:3] if named else entry[::2])   # name, or mtime
    if not named and after is not None:   # ... and pixel's after its file, in name order
        newer = sorted((entry for entry in found if entry[1] is not None and entry[1] > after),
                       key=lambda entry: entry[1:3])
        found = [entry for entry in found if entry[1] is None or entry[1] <= after]
        at = next(index for index, entry in enumerate(found) if entry[3] == sent) + 1
        found[at:at] = newer
    if sent != live and all(entry[3] != sent for entry in found):
        found[:0] = _moved_by_hand(folder, others, [checkpoint])
    for entry in _moved_by_hand(folder, others, moved):
        # a live file moved by hand behind the checkpoint's: where its last write puts it
        later = [index for index, other in enumerate(found) if other[0] > entry[0]]
        behind = next((index + 1 for index, other in enumerate(found) if other[3] == sent), 0)
        found.insert(max(later[0] if later else len(found), behind), entry)
    opened = []
    for _, key, name, identity in found:
        path = os.path.join(folder, name)
        if len(opened) >= MAX_OPEN_LOG_FILES:   # opened when its turn comes
            log = LogFile(None, identity, path)
            log.moved = next(((position["head_bytes"], position["head"]) for position in moved
                              if (position["device"], position["inode"]) == identity), None)
        else:
            try:
                log = LogFile.open(path)
            except OSError:   # deleted since, or not readable: none of it can be sent
                continue
            if log.identity != identity:   # replaced since the stat
                log.close()
                continue
        log.named = key is not None   # a name pixel's rotation gave
        opened.append(log)
    return opened


def _moved_by_hand(folder, names, positions):
    """[entry] for each file of `positions` (checkpoint-like documents) among `names` in `folder`,
    under a name no rotation gives (an outside mv, then a restart before it was all sent): found by
    its identity and its head, as a file that took its inode since is not it."""
    wanted = {(position["device"], position["inode"]): position for position in positions}
    found = []
    for name in names if wanted else ():
        status = stat_or_none(os.path.join(folder, name))
        position = status and wanted.pop((status.st_dev, status.st_ino), None)
        if position is not None and stat.S_ISREG(status.st_mode):
            try:
                log = LogFile.open(os.path.join(folder, name))
            except OSError:
                continue
            try:
                if found_at(log, position) is not None:
                    found.append((status.st_mtime_ns, None, name, log.identity))
            finally:
                log.close()
    return found


def moved_entries(files, reporter=None):
    """A document for each of a live log's `files` behind the first that no rotation named,
    the live one too: if moved by hand (before a restart, or during one) a restart finds
    them by identity (rotated_since). Once the first is the live one again (moved back to
    the log's name), rotated ones too: its last write is newer than theirs. Past
    MAX_MOVED_FILES, the later ones are left out, and `reporter` says so."""
    files = list(files)
    again = any(log.identity == files[0].identity for log in files[1:])
    entries, left_out = [], 0
    for log in files[1:]:
        if log.named and not again or log.fd is None and log.moved is None:
            continue
        if len(entries) == MAX_MOVED_FILES:
            left_out += 1
            continue
        length, head = log.mark() if log.fd is not None else log.moved   # parked: as found
        entries.append({"path": log.name, "device": log.identity[0],
                        "inode": log.identity[1], "head_bytes": length, "head": head})
    if left_out and reporter is not None:
        reporter.say("the checkpoint lists %d of the %d unsent files of %s that no rotation "
                     "named (moved by hand): after a kill -9 the other %d, if moved by hand, "
                     "are not forwarded (they stay on disk; `pixel.py forward` sends them)" % (
                         MAX_MOVED_FILES, len(entries) + left_out, files[0].name, left_out),
                     key="moved files")
    return entries


def moved_files(checkpoint, live=None):
    """The checkpoint's "moved" entries (LogQueue.checkpoint) that are well formed, each as
    a position at the start of its file; never the live file's, nor the checkpoint's own."""
    moved, own = checkpoint.get("moved"), (checkpoint.get("device"), checkpoint.get("inode"))
    return [dict(entry, offset=0) for entry in moved if isinstance(entry, dict) and all(
        type(entry.get(field)) is int for field in ("device", "inode", "head_bytes")) and
        0 <= entry["head_bytes"] <= 4096 and isinstance(entry.get("head"), str) and
        (entry["device"], entry["inode"]) not in (live, own)][:MAX_MOVED_FILES] \
        if isinstance(moved, list) else []


def with_files_left(checkpoint, left):
    """`checkpoint` with the files a writer left while an erase held its forwarder, `left`
    (LogWriter.follow), among those moved by hand: one moved by hand meanwhile has no name a
    rotation gives, and rotated_since() finds it by its identity and head only. One left
    empty has nothing to send, and an empty head would pass any file on its inode for it."""
    moved = checkpoint.get("moved") if isinstance(checkpoint.get("moved"), list) else []
    known = {(entry.get("device"), entry.get("inode")) for entry in moved
             if isinstance(entry, dict)}
    added = [{"path": path, "device": identity[0], "inode": identity[1],
              "head_bytes": len(first), "head": head_of(first)}
             for identity, path, first in left if first and identity not in known]
    return dict(checkpoint, moved=moved + added) if added else checkpoint


def found_at(log, checkpoint):
    """The offset in `log` where `checkpoint` stands, or None if it names another file. An
    erase replacing the file it names (erase_file) adds where it stands in the new one."""
    positions = [checkpoint]
    replaced = checkpoint.get("replaced")
    if isinstance(replaced, dict) and all(type(replaced.get(field)) is int for field in
                                          ("inode", "offset", "head_bytes")):
        positions.append(dict(replaced, device=checkpoint["device"]))
    for position in positions:
        if log.identity != (position["device"], position["inode"]) or not log.unpark():
            continue
        first = log.read(0, min(position["head_bytes"], 4096))   # read once: head() and saw()
        if head_of(first) == position.get("head"):
            log.saw(0, first)   # as sent: what replaced() compares with
            return position["offset"]
    return None


def resume_at(checkpoint, files, live_end, reporter):
    """The index in `files` (those of a live log, the live one last, its committed end
    `live_end`) to start at from `checkpoint`, that file's offset set. What it lists as
    moved by hand and `files` lack (deleted, moved away) is said to be lost; what it lists
    found ahead of its own file is put just before that (they were unsent when listed)."""
    if checkpoint is None:
        return len(files) - 1
    moved = moved_files(checkpoint, files[-1].identity)
    listed = {(entry["device"], entry["inode"]) for entry in moved}
    found = {log.identity for log in files}
    gone = [entry for entry in moved if (entry["device"], entry["inode"]) not in found]
    if gone:
        reporter.say("%d file(s) moved by hand from %s (inode %s) are gone from its folder, or "
                     "replaced: their unsent events are lost to the receiver" % (
                         len(gone), gone[0].get("path"),
                         ", ".join(str(entry["inode"]) for entry in gone[:5])))
    for index, log in enumerate(files):
        offset = found_at(log, checkpoint)
        if offset is not None:
            end = live_end if log is files[-1] else log.size()
            if offset > end:   # lost in a power cut after it was sent, or cut
                reporter.say("%s is shorter than the checkpoint says (%d < %d bytes): "
                             "forwarding from its end" % (log.name, end, offset))
            log.offset = min(offset, end)
            # Ahead of it only if its file is the live one again (moved back while pixel
            # was down): those it lists, and those written since (rotated from the file
            # live then) are unsent, sent before it. Since its last write; if it was live
            # when saved, since the save (rotated before, and moved back and reopened since).
            ahead = [other for other in files[:index] if other.identity in listed or
                     log is files[-1] and other.mtime_ns() > _written_since(checkpoint, log)]
            files[:index] = [other for other in files[:index] if other not in ahead] + ahead
            return index - len(ahead)
    if checkpoint["device"] != -1:
        reporter.say("the file the checkpoint names (%s, inode %d) is gone from its folder: "
                     "forwarding from %s, the oldest file written since; the receiver may get "
                     "events twice, and none of that file's unsent ones"
                     % (checkpoint.get("path"), checkpoint["inode"], files[0].name))
    return 0   # rotated_since gave only the files written since the checkpoint


def _written_since(checkpoint, live):
    """resume_at's: what a file's mtime must pass to be written since `checkpoint`: its
    file's last write (an older pixel's has no "live": the side of duplicates, not losses),
    or if that was the `live` log's when saved, the save. One hand-edited to say so lies."""
    try:
        saved = parse_time(checkpoint.get("updated")) * 1e9
    except ValueError:
        saved = 0
    was_live = checkpoint.get("live") is True and checkpoint.get("path") == live.name
    return max(checkpoint["mtime_ns"], saved if was_live else 0)


def sent_files(checkpoint):
    """Of a backfill checkpoint's "done" list (LogFile.fingerprint): (the entries,
    {"device:inode": [(bytes, head), or None for version 1.0's inode alone]}, and when
    version 1.0's among them were made, as text and in seconds (None, None: none))."""
    done = checkpoint.get("done")
    done = [entry for entry in done if isinstance(entry, str)] if isinstance(done, list) else []
    sent = collections.defaultdict(list)
    for entry in done:
        parts = entry.split(":")
        if len(parts) == 4 and parts[2].isdigit():
            sent[":".join(parts[:2])].append((int(parts[2]), parts[3]))
        elif len(parts) == 2:
            sent[entry].append(None)
    # Version 1.0's entries name files it sent by its last save (kept apart, as later
    # saves move "updated" on): a file written since is a new one on a reused inode.
    until = checkpoint.get("legacy_until", checkpoint.get("updated")) \
        if any(None in entries for entries in sent.values()) else None
    try:
        return done, sent, until, parse_time(until)
    except ValueError:
        return done, sent, None, None


class LogQueue:
    """The files a Forwarder sends, oldest first: a live log's (follow) or a backfill's
    (add_files). At most MAX_OPEN_LOG_FILES of them are open; the rest are parked."""

    def __init__(self, reporter, stopping, woken):
        self.files = collections.deque()   # the first is the one being sent
        self.writer = None         # the live log's LogWriter
        self.done = []             # a backfill's: LogFile.fingerprint() of each file sent
        self.legacy_until = None   # ... and when version 1.0's entries among them were made
        self._reporter, self._stopping, self._lock = reporter, stopping, threading.Lock()
        self._counting = None      # what count_lines() counts: (files, live end, written)
        self._unsent = None        # lines unsent when counted, less writer.written then,
        self._recount = False      # plus lines done then
        self._cuts = 0             # the writer's cuts when last counted
        self.moves_saved = []      # the files moved by hand the last checkpoint names
        self._sent_whole = {}      # identity: (offset, head bytes, head) of files finished
        self.woken = woken         # set by a stop, or the writer opening a file

    def follow(self, writer, checkpoint):
        """The live log of `writer` from `checkpoint` (a document; None: from the live
        file's first line), with the files rotated since it was written."""
        self.writer, self._cuts = writer, writer.cuts
        fd, identity, end, written, left = writer.follow(self.woken)
        files, start = [LogFile(fd, identity, writer.path)], None
        try:
            if checkpoint is not None:
                checkpoint = with_files_left(checkpoint, left)
                files[:0] = rotated_since(writer.path, identity, checkpoint)
            start = resume_at(checkpoint, files, end, self._reporter)
        finally:
            for log in files[:start]:   # all of them if anything raised
                log.close()
        with self._lock:
            self.files.extend(files[start:])
            self._pull()
        self._counting = (files[start:], end, written)

    def add_files(self, paths, checkpoint, erasing=None):
        """The files at `paths`, in order, to send once from `checkpoint` (a document), but
        those it lists as sent. OSError for one not a regular file, or one that `erasing(path)`
        says an erase holds; ValueError for one not an event log."""
        self.done, sent, self.legacy_until, legacy_until = sent_files(checkpoint)
        seen = set()
        for path in paths:
            if self._stopping.is_set():   # thousands of archives take a while to look at
                break
            log = LogFile.open(path, archive=None, stopping=self._stopping)
            self.files.append(log)   # closed by close(), whatever happens next
            if not log.share() and erasing is not None and erasing(os.path.realpath(path)):
                raise OSError(errno.EBUSY, "pixel.py erase is at work on it: send it when "
                              "that is done", path)
            problem = log.not_an_event_log()
            if problem is not None:
                raise ValueError("cannot forward %s: not a pixel event log (%s)" % (path, problem))
            if path.endswith(".gz") and log.archive is None:
                self._reporter.say("%s is not gzipped: sending it as it is" % path)
            before = log.sent_before(sent, legacy_until)
            if log.identity in seen or before is not None and before >= os.fstat(log.fd).st_size:
                self._reporter.say("%s: already sent, skipped" % path)
                self.files.pop().close()
                continue
            seen.add(log.identity)
            if before is not None:   # an append-only log that has grown since
                self._reporter.say("%s: sent up to byte %d before; sending what was "
                                   "written since" % (path, before))
            log.offset = before if before is not None else found_at(log, checkpoint) or 0
        self._counting = (list(self.files), None, 0)

    def _pull(self, pin=True):
        """Take the files the writer opened or renamed since, park those past
        MAX_OPEN_LOG_FILES, and (`pin`) pin them all against --keep. Under the lock."""
        if self.writer is None:
            return
        for change, fd, identity, path in self.writer.changes():
            known = [log for log in self.files if log.holds(identity, fd, path)]
            if change == "renamed":
                for log in known:
                    log.name, log.named = path, True
            elif known and (known[-1] is self.files[-1] or fd is None):
                if fd is not None:   # it reopened the file it had (a SIGHUP): nothing new
                    os.close(fd)     # (None: moved back, rotated since: read to its end)
            else:   # new; or one it had, moved back to the log's name: on from its end
                log = LogFile(fd, identity, path)
                log.named = fd is None   # parked by the writer, by its name
                if fd is None and log.unpark():   # its head, while its name is sure to be it
                    log.park()
                sent = self._sent_whole.pop(identity, None)
                if known:   # the earlier entry ends where this one starts
                    end = self._end(identity)
                    log.offset = known[-1].until = os.fstat(fd).st_size if end is None else end
                elif sent is not None and log.starts_with(*sent[1:]):   # sent already
                    log.offset = sent[0]
                self.files.append(log)
        open_files = [log for log in self.files if log.fd is not None]
        for log in open_files[1:-1]:   # never the one being read, nor the live one
            if len(open_files) <= MAX_OPEN_LOG_FILES:
                break
            if not log.named and os.fstat(log.fd).st_nlink:   # moved by hand: found again
                log.moved = log.mark()                         # by identity and head
            if log.named or log.moved is not None:   # parked (a live log has no archives)
                log.park()
                open_files.remove(log)
        if pin:
            self.writer.pinned = frozenset(log.identity for log in self.files)

    def _end(self, identity):
        """The writer's committed end of file `identity` (a short write may follow); else None."""
        current, end, _ = self.writer.committed()
        return end if current == identity else None

    def first(self, save):
        """(the file to send from, its committed end or None to read to its end, whether
        it is complete), or None if there is none. A file gone before its turn is said and
        finished (`save` as finish takes it); one cut shorter is sent from its start."""
        while True:
            with self._lock:
                self._pull()
                if not self.files:
                    return None
                log, later = self.files[0], len(self.files) > 1
                log.unpark()
            if log.fd is not None:
                break
            log.say_gone(self._reporter)
            if log.counted is not None and self._unsent is not None:   # not behind any more
                self._unsent -= log.counted
            elif self.writer is not None:   # not counted, or written since: counted again
                self._unsent, self._recount = None, True
            self.finish(log, save)
        # A cut (copytruncate), grown since or not: its head, or the writer's end saw it
        size, end = log.size(), None if later or self.writer is None else self._end(log.identity)
        if size is not None and (log.replaced() or end is not None and
                                 self.writer.cuts != self._cuts):
            log.cut(self._reporter)   # then its backlog is counted again
            self._unsent, self._recount = None, self.writer is not None
            self._cuts = self.writer.cuts if self.writer is not None else 0
        if later or self.writer is None:
            return log, log.until, True
        return log, end if end is None or size is None else min(end, size), False

    def finish(self, log, save):
        """`log` is sent to its end: `save` (the checkpoint) names the next file at once, then
        --keep deletes what it may (a full disk rotates nothing, where it would); a backfill's
        checkpoint names `log`, its fingerprint now in `done`."""
        with self._lock:
            self.files.popleft()
            if self.writer is not None and log.fd is not None:   # moved back, on from here
                self._sent_whole[log.identity] = (log.offset,) + log.mark()
                if len(self._sent_whole) > MAX_MOVED_FILES:
                    del self._sent_whole[next(iter(self._sent_whole))]
            if self.files:
                self.files[0].unpark()
            self._pull()
        if self.writer is None:
            same = "%d:%d" % log.identity   # one fingerprint a file: this one's is the last
            self.done = [entry for entry in self.done if entry != same and
                         not entry.startswith(same + ":")] + [log.fingerprint()]
            save(log)
        elif self.files and self.files[0].fd is not None and save(self.files[0]):
            self.writer.prune()
        with self._lock:   # not while backlog() reads it
            log.close()

    def count_lines(self, done, between):
        """Count the lines not yet sent, `done` (sent, refused or skipped) so far: at the
        start, and again after a file not counted was gone; writer.written keeps it current.
        `between()` is called as it reads: a first count of a large backlog takes seconds."""
        if self._recount:
            with self._lock:
                self._pull()
                current, end, written = self.writer.committed()
                if self.files and self.files[-1].identity == current:   # else at the next look
                    self._counting, self._recount = (list(self.files), end, written), False
        elif self._counting is None and self.writer is not None and len(self.files) == 1:
            current, end, written = self.writer.committed()   # all sent: none behind, whatever
            if self.files[0].identity == current and self.files[0].offset == end and \
                    self.writer.cuts == self._cuts:   # (a cut under a batch: first() counts)
                self._unsent = done - written
        if self._counting is None:
            return
        files, live_end, written = self._counting
        lines = 0
        for log in files:
            counted = count_unsent(log, live_end if log is files[-1] else log.until,
                                   self._lock, self._stopping, between)
            if counted is None:   # a stop: a backlog of terabytes takes a while
                return
            lines += counted   # the live file's lines since are writer.written's, not its
            log.counted = counted if log is not files[-1] or self.writer is None else None
        self._unsent, self._counting = lines - written + done, None

    def backlog(self, lines_done):
        """(lines, bytes, files) of a live log not yet sent, `lines_done` (sent, refused or
        skipped) since the start; lines None until counted."""
        size = 0
        with self._lock:   # so that none of them is closed meanwhile
            self._pull()
            current, live_end, _ = self.writer.committed()   # one look, not one a file
            for log in self.files:
                end = live_end if log.until is None and log.identity == current else log.until
                if end is None:   # its size (a parked file's by its name)
                    end = getattr(log.status(), "st_size", log.offset)
                size += max(0, end - log.offset)
            files = len(self.files) - 1   # the live one is not behind
        if self._unsent is None:
            return None, size, files
        return max(0, self._unsent + self.writer.written - lines_done), size, files

    def checkpoint(self, log, target, now):
        """`log` and its offset as a checkpoint, as of `now`; OSError if it cannot be looked at."""
        document = dict(log.position(), updated=format_time(now), target=target)
        if self.writer is None:
            document["done"] = self.done
        else:   # the live file: what was written since counts from the save (_written_since)
            document["live"] = bool(self.files) and log is self.files[-1]
        if self.legacy_until is not None:
            document["legacy_until"] = self.legacy_until
        with self._lock:
            moved = moved_entries(self.files, self._reporter) if self.writer is not None else []
        if moved:   # found by identity after a restart (rotated_since): no name finds them
            document["moved"] = moved
        self.moves_saved = moved
        return document

    def moves_to_save(self):
        """Whether files moved by hand were taken since the last checkpoint named them."""
        with self._lock:
            self._pull()
            return self.writer is not None and \
                moved_entries(self.files, self._reporter) != self.moves_saved

    def oldest_unsent(self):
        """The receivedAt of the first line of a live log not yet sent, or None."""
        with self._lock:
            log = self.files[0] if self.files else None
            return None if log is None or log.fd is None else log.received_at(log.offset)

    def close(self):
        with self._lock:
            self._pull(pin=False)   # the descriptors handed over since, too
            while self.files:
                self.files.popleft().close()
            if self.writer is not None:
                # Which files are sent is unknown from here: --keep deletes none (an erase
                # holds the forwarder, and replaces them) until another queue follows.
                self.writer.pinned = None


# One event of a batch: its JSON, where its line ends in the log, the line, its writeKey.
Item = collections.namedtuple("Item", "data end line key")

_BATCH_OPEN = b'{"batch":['
_BATCH_CLOSE = b'],"sentAt":"%s"}'


def read_lines(log, start, end):
    """Up to FORWARD_READ bytes of `log` from `start`, not past `end` (None: its end), and
    how many of them are whole lines (0: no newline)."""
    limit = FORWARD_READ if end is None else min(FORWARD_READ, end - start)
    data = log.read(start, limit) if limit > 0 else b""
    log.saw(start, data)
    return data, data.rfind(b"\n") + 1


def _unescaped(item):
    """A batch item (JSON bytes, escaped to ASCII as logged) as UTF-8 JSON, as SDKs send and
    receivers count it (a character escaped is 6 or 12 bytes); as it was if it cannot be."""
    try:
        return json.dumps(json.loads(item), ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")
    except (ValueError, RecursionError):   # not JSON, 1e400, a lone surrogate
        return item


def take_batch(data, offset, write_key=None, batch_events=DEFAULT_FORWARD_BATCH, alone=False):
    """A batch from `data`, log lines from byte `offset` without the last newline: (rejects-
    log lines with no event to send, skipped; the offset after them; the items; None, or if
    there are none, the first line, refused: (its end, [it], the Rejected)). One writeKey a
    batch, as Basic auth takes one, at most `batch_events` and MAX_BATCH_BYTES; with `alone`
    (a doubted receiver, probed), any keys, up to PROBES_A_ROUND. The log's order is kept."""
    skipped, start, items = 0, offset, []
    batch_size = len(_BATCH_OPEN) + len(_BATCH_CLOSE) + 40   # 40: the sentAt
    strip = write_key is not None
    for line in data.split(b"\n"):
        line_end = offset + len(line) + 1
        try:
            key, item = forward_item(line, strip)
            held = rejected_event(line) if key is None else None
            if held == b"":   # a rejects-log line with no event to send again
                if items:
                    break
                skipped, offset, start = skipped + 1, line_end, line_end
                continue
            if held is not None:   # one with an event: that event
                line = held
                key, item = forward_item(line, strip)
            key = write_key or key
            if key is None:
                raise Rejected("forward_unreadable", "no writeKey")
            if len(item) > MAX_FORWARD_ITEM:   # as logged, escaped: in UTF-8 it may fit
                item = _unescaped(item)
            if len(item) > MAX_FORWARD_ITEM:
                raise Rejected("forward_unreadable", "an event of %d bytes: Segment-"
                               "compatible receivers take at most 32 KB" % len(item))
        except Rejected as rejection:
            return skipped, start, items, None if items else (line_end, [line], rejection)
        if items and (len(items) == PROBES_A_ROUND if alone else key != items[-1].key or
                      len(items) == batch_events or batch_size + len(item) + 1 > MAX_BATCH_BYTES):
            break
        items.append(Item(item, line_end, line, key))
        batch_size += len(item) + 1
        offset = line_end
    return skipped, start, items, None


def forward_reject_line(rejection, line, received_at):
    """The rejects-log line for a log `line` the forwarder could not send: the event whole,
    for `pixel.py forward` to send again, or the line's start if it is not one."""
    record = {"reason": rejection.reason, "detail": rejection.detail}
    try:
        text = _encode(dict(record, event=json.loads(line), receivedAt=format_time(received_at)))
    except (ValueError, RecursionError):   # not JSON, 1e400, too deep: quote the line
        text = _encode(dict(record, line=line[:MAX_REJECT_RAW].decode("utf-8", "replace"),
                            receivedAt=format_time(received_at)))
    return (text + "\n").encode("ascii")


class Sender:
    """Sends a Forwarder's batches. One refused with 400, 413 or 422 is split until the events
    refused are alone, and those go to the rejects log; one refused with 401 or 403 under a
    key nobody configured goes there whole. Some receivers refuse every event (a WAF, nginx
    answering plain HTTP sent to its HTTPS port): after MAX_REFUSED_IN_A_ROW refusals in a
    row the receiver is doubted, and nothing more is written off. Each round, after a
    backoff, the first event held is sent alone again, then 1, 2, 4 ... up to PROBES_A_ROUND
    after it: if the first is taken all goes on; if a later one is, those before it are
    written off. `refuse` and `acknowledge` are the Forwarder's: False if a stop came first."""

    def __init__(self, receiver, write_key, refuse, acknowledge, reporter, clock):
        self.receiver, self.write_key, self.reporter = receiver, write_key, reporter
        self.refuse, self.acknowledge, self.clock = refuse, acknowledge, clock
        self.doubt = None     # while the receiver is doubted: [where the events not yet sent
                              # alone start, rounds, its last refusal's status and answer]
        self._in_a_row = 0    # refusals in a row, taking nothing between

    @property
    def refusing_all(self):
        """Why the receiver, not the events, seems at fault; None while it is trusted."""
        return None if self.doubt is None else "it refuses every event, each alone: %d %s" % (
            self.doubt[2], _gist(self.doubt[3], self.write_key))

    def send(self, log, items, end=None, complete=False):
        """Send `items` of `log` under the first one's key, or while the receiver is doubted
        probe (`complete`: `log` ends at `end`). False if a stop came first."""
        if self.doubt is None:
            return self._deliver(log, items)
        return self._probe(log, items[0], end, complete)

    def _post(self, items):
        body = _BATCH_OPEN + b",".join(item.data for item in items) + _BATCH_CLOSE % \
            format_time(self.clock()).encode("ascii")
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return self.receiver.deliver(items[0].key, compressor.compress(body) + compressor.flush())

    def _rejection(self, status, answer, key):
        if status in _KEY_STATUSES:   # deliver() returns these only for a key not configured
            return Rejected("forward_unauthorized", "%s refused writeKey %s: %d %s" % (
                self.receiver.endpoint, key, status, answer[:1024]))
        return Rejected("forward_rejected", "%d from %s: %s" % (
            status, self.receiver.endpoint, answer[:1024]))

    def _deliver(self, log, items):
        if self.doubt is not None:   # doubted in this batch: the rest waits for a round
            return True
        status, answer = self._post(items)
        if status is None:
            return False
        if 200 <= status < 300:
            self._in_a_row = 0
            return self.acknowledge(log, items)
        if len(items) == 1 or status in _KEY_STATUSES:
            return self._refused(log, items, status, answer)
        middle = len(items) // 2
        return self._deliver(log, items[:middle]) and self._deliver(log, items[middle:])

    def _refused(self, log, items, status, answer):
        key = items[0].key
        if status in _KEY_STATUSES:
            self.reporter.say("forwarding to %s: it refused writeKey %s (%d %s), which is not one "
                              "of %s: its events go to the rejects log as forward_unauthorized, "
                              "for `pixel.py forward` to send again once the key works" % (
                                  self.receiver.endpoint, key, status, _gist(answer),
                                  "--write-key" if self.receiver.gives_up else
                                  "--write-key or --forward-write-key"),
                              key="forward_unauthorized " + key)
        self._in_a_row += 1
        if self._in_a_row <= MAX_REFUSED_IN_A_ROW:
            rejection = self._rejection(status, answer, key)
            return all(self.refuse(log, item.end, [item.line], rejection) for item in items)
        self.doubt = [items[-1].end, 0, status, answer]
        self.reporter.say("forwarding to %s: it refused %d times in a row, taking nothing "
                          "between (%d %s): the receiver, not the events, is taken to be at "
                          "fault. Nothing more is written off; events are sent alone, with "
                          "backoff, until it takes one" % (
                              self.receiver.endpoint, self._in_a_row, status, _gist(answer)))
        return self._wait()

    def _probe(self, log, first, end, complete):
        start, rounds = self.doubt[:2]
        data, whole = read_lines(log, start, end)
        ahead = take_batch(data[:whole - 1], start, self.write_key, alone=True)[2] if whole else []
        exhausted = not ahead and complete
        for item in [first] + ahead[:min(2 ** (rounds + 1), PROBES_A_ROUND)]:
            status, answer = self._post([item])
            if status is None:
                return False
            if 200 <= status < 300 and item is first:   # it takes events again, in order
                self.reporter.say("forwarding to %s: it takes events again"
                                  % self.receiver.endpoint)
                self.doubt, self._in_a_row = None, 0
                return self.acknowledge(log, [first])
            if 200 <= status < 300:   # those before it were refused for themselves
                self.reporter.say("forwarding to %s: it took an event after refusing those "
                                  "before it, each alone: they go to the rejects log"
                                  % self.receiver.endpoint)
                return self._write_off(log, item.end - len(item.line) - 1, first.key) and \
                    self.acknowledge(log, [item])
            self.doubt[2:] = status, answer
            if item is not first:
                self.doubt[0] = item.end
        self.doubt[1] += 1
        if exhausted and self.doubt[1] > MAX_REFUSED_IN_A_ROW:
            # Nothing after them to tell the receiver's fault from theirs (the end of a
            # backfill): written off, so that the file is done.
            return self._write_off(log, self.doubt[0], first.key)
        return self._wait()

    def _write_off(self, log, end, key):
        """Trust the receiver again, and write off the events held, up to `end`."""
        rejection = self._rejection(*self.doubt[2:], key=key)
        self.doubt, self._in_a_row = None, 0
        lines = log.read(log.offset, end - log.offset).split(b"\n")[:-1]
        return self.refuse(log, end, lines, rejection)

    def _wait(self):
        delay = backoff_delay(self.doubt[1] + 1, self.receiver.first_delay,
                              self.receiver.max_delay)
        self.receiver.failed_attempts += 1
        self.receiver.last_error, self.receiver.backoff = self.refusing_all, delay
        return not self.receiver.pause(delay)


# The forwarder's /metrics: (name after pixel_forward_, type, its status() field, help).
FORWARD_METRICS = (
    ("sent_events_total", "counter", "sent", "Events the receiver took."),
    ("refused_events_total", "counter", "refused", "Events written to the rejects log instead."),
    ("failed_attempts_total", "counter", "failed_attempts", "Forwarding attempts that got no "
     "answer, or one to retry."),
    ("backlog_events", "gauge", "lines_behind", "Events not yet forwarded."),
    ("backlog_bytes", "gauge", "bytes_behind", "Bytes not yet forwarded."),
    ("backlog_files", "gauge", "files_behind", "Rotated files not yet forwarded whole."),
    ("backlog_seconds", "gauge", "backlog_seconds", "Age of the oldest event not yet forwarded."),
    ("paused", "gauge", "paused", "1 while a 401 or 403 for a configured key pauses "
     "forwarding, or the receiver is at fault."),
    ("last_success_timestamp_seconds", "gauge", "last_success_time", "When the receiver last "
     "took a batch (Unix time; 0: never)."))


def register_forwarder(forwarder, metrics):
    """Count `forwarder` into `metrics`: /health, its problems, pixel_forward_*, its rejections."""
    metrics.health("forward", forwarder.status)
    metrics.problem(lambda: forwarder.status()["degraded"])
    metrics.family("pixel_rejections_total", "counter", "",
                   lambda: forwarder.refused.samples("reason"))
    for name, kind, field, help in FORWARD_METRICS:
        metrics.value("pixel_forward_" + name, kind, help,
                      lambda field=field: forwarder.status(True)[field])


def backfill_checkpoint(path, target):
    """A backfill's checkpoint at `path`; ValueError if unreadable, or sent to another `target`."""
    try:
        document = read_checkpoint(path) or _NO_CHECKPOINT
    except ValueError as error:
        raise ValueError("cannot read the checkpoint %s: %s" % (path, error)) from None
    if document.get("target", target) != target:
        raise ValueError("the checkpoint %s is of files sent to %s: to send them to %s too, "
                         "give another --checkpoint" % (path, document["target"], target))
    return document


def _backlog_age(now, oldest, caught_up_at, caught_up_monotonic):
    """Seconds the oldest unsent event has waited, by its receivedAt (else since all was
    sent). With the wall clock set back past it (NTP), by the monotonic clock since all was
    sent: /health said ok through an outage for as long as the step (the attack pass)."""
    age = now - (oldest or caught_up_at)
    return age if age >= 0 else max(0.0, time.monotonic() - caught_up_monotonic)


class Forwarder:
    """Relays a LogQueue's files (follow: a live log; add_files: a backfill) to a Receiver in
    order, at least once, in batches a Sender sends; what cannot be sent goes to the rejects
    log. The checkpoint is replaced after each batch: a kill -9 sends at most that one again."""

    def __init__(self, receiver, rejects, *, write_key=None, batch_events=DEFAULT_FORWARD_BATCH,
                 alert=DEFAULT_FORWARD_ALERT, reporter=None, clock=time.time):
        self.receiver, self.stopping = receiver, receiver.stopping
        self.rejects = rejects       # a LogWriter, for events that are never sent
        self.write_key, self.batch_events, self.alert = write_key, batch_events, alert
        self.reporter, self.clock = reporter or Reporter(), clock
        self.queue = LogQueue(self.reporter, self.stopping, self.receiver.woken)
        self.checkpoint = self.thread = None   # the checkpoint's path; the loop's thread
        self.made_checkpoint = False   # by follow(): no checkpoint was there
        self.sent = 0                # events the receiver took
        self.refused = Counter()     # events written to the rejects log instead, by reason
        self.skipped = 0             # rejects-log lines with no event to send again
        self.truncated = []          # a backfill's files it could not read to their end
        self.last_success = None     # clock time of the last 2xx
        self.held = None             # while an erase is at work (hold): its last status
        self.unsaved = False         # the checkpoint could not be written: nothing is sent
        self.sender = Sender(receiver, write_key, self._refuse, self._acknowledge,
                             self.reporter, clock)
        self._caught_up_at = clock(), time.monotonic()   # all written before this was sent
        receiver.between, receiver.secret = self._look, write_key   # between: during a backoff

    def follow(self, writer):
        """Relay `writer`'s live log from its checkpoint, written at once (or OSError): a
        restart before the first batch must know where to start, or rotations pass for history."""
        self.checkpoint = adopt_legacy_state(writer.path, "forward", self.reporter)
        try:
            checkpoint = read_checkpoint(self.checkpoint)
        except (OSError, ValueError) as error:
            self.reporter.say("cannot read the checkpoint %s (%s): forwarding every log "
                              "file from its start; the receiver may get events twice"
                              % (self.checkpoint, getattr(error, "strerror", None) or error))
            checkpoint = _NO_CHECKPOINT
        else:   # 1.0's or early 2.0's ("live" came later, always written)
            if checkpoint and not {"live", "moved"} & checkpoint.keys():
                self.reporter.say("the checkpoint %s is an older pixel's: a log file it moved "
                                  "by hand is not forwarded (`pixel.py forward FILE` sends it)"
                                  % self.checkpoint)
        self.made_checkpoint = checkpoint is None
        self.queue.follow(writer, checkpoint)
        self._save(self.queue.files[0], quiet=False)   # or OSError: the writer keeps its files
        writer.left = None                             # left for the next follow()

    def add_files(self, paths, checkpoint, erasing=None):
        """Relay the files at `paths` once (a backfill), from the checkpoint file `checkpoint`."""
        self.checkpoint = checkpoint
        self.queue.add_files(paths, backfill_checkpoint(checkpoint, self.receiver.url), erasing)

    def start(self):
        self.thread = threading.Thread(None, self._run_on_thread, "pixel-forwarder", daemon=True)
        self.thread.start()

    def stop(self, timeout=None):
        """Stop the loop, waiting up to `timeout` for it. A batch in flight is cut: it is
        sent again after the restart, and a receiving pixel dedupes it."""
        self.receiver.stop()   # which sets receiver.woken, the queue's too: run() wakes
        if self.thread is not None:
            self.thread.join(timeout)

    def close(self):
        """Close the files and the connection; not while the loop still runs (a stop that
        timed out mid-post): then the process is exiting, and its end closes them."""
        if self.thread is None or not self.thread.is_alive():
            self.queue.close()
            self.receiver.close()

    def hold(self):
        """Stop after the batch in flight (or cut its post after HOLD_WAIT), and close the files
        until resume(), as an erase replaces them (EraseDesk); /health shows this moment's."""
        self.held = dict(self.status(True), held=True)
        self.stopping.set()
        self.queue.woken.set()
        if self.thread is not None:
            self.thread.join(HOLD_WAIT)
            if self.thread.is_alive():
                self.receiver.abort()
                self.thread.join()
        self._look(count=False)   # the checkpoint names files moved by hand: the erase moves
        self.queue.close()        # it into their new files, and resume() follows it

    def resume(self):
        """Forward again, from the checkpoint, which the erase moved into the new files. An
        OSError (the checkpoint cannot be written) is said, and retried at the next look."""
        writer = self.queue.writer
        self.queue = LogQueue(self.reporter, self.stopping, self.receiver.woken)
        self.stopping.clear()
        try:
            self.follow(writer)
        except OSError as error:
            self.stopping.set()
            self.queue.close()
            raise OSError(error.errno, "cannot forward again after the erase: %s"
                          % (error.strerror or error)) from None
        self.held = None
        self.start()

    def _run_on_thread(self):
        while not self.stopping.is_set():
            try:
                self.run()
            except Exception as error:   # a bug: say it, and start the loop again
                self.reporter.say("forwarder error: %s; retrying in %d s" % (
                    _bug(error), self.receiver.max_delay), key="forwarder error")
                self.stopping.wait(self.receiver.max_delay)

    def run(self):
        """Forward until stop(), or a backfill until all is sent; True if all was sent."""
        with contextlib.suppress(InterruptedError):   # a stop, while inflating an archive
            while not self.stopping.is_set():
                self._look()
                batch = self._next_batch()
                if batch is None:
                    if self.queue.writer is None and not self.queue.files:
                        return True
                    if self.queue.woken.wait(FORWARD_POLL):   # a stop, or a new file to _look at
                        self.queue.woken.clear()
                elif batch:
                    log, items, end, complete, read_at = batch
                    if not self.sender.send(log, items, end, complete):
                        break
                    if log.offset == items[-1].end == end:   # all there was, taken
                        self._caught_up_at = read_at, time.monotonic()
        return False

    def _next_batch(self):
        """(file, items, its end, whether complete, the time of the read) to send; None if
        nothing is to send now; () if a line was refused or a file finished: look again."""
        if self.unsaved and self.queue.files and not self._save(self.queue.files[0]):
            return None
        head = self.queue.first(self._save)
        if head is None:
            return None
        log, end, complete = head
        read_at = self.clock()
        data, whole = read_lines(log, log.offset, end)
        if whole:
            skipped, log.offset, items, refused = take_batch(
                data[:whole - 1], log.offset, self.write_key, self.batch_events,
                alone=self.sender.doubt is not None)
            self.skipped += skipped   # rejects-log lines with no event to send again
        elif len(data) == FORWARD_READ:   # a line longer than any batch: not an event
            end = log.line_end(log.offset + FORWARD_READ, self.stopping)
            if end is None:
                return None
            refused = end, [log.read(log.offset, MAX_REJECT_RAW)], Rejected(
                "forward_unreadable", "a line of %d bytes" % (end - log.offset))
        elif not complete:
            if not data:
                self._caught_up_at = read_at, time.monotonic()
            return None
        elif data:   # a last line with no newline: a torn write from long ago
            refused = log.offset + len(data), [data], Rejected("forward_unreadable", "no newline")
        else:
            damage = log.archive and log.archive.damage   # an archive that ended early
            if damage is not None:
                problem = "%s cannot be read past byte %d (inflated): %s" % (
                    log.name, log.offset, damage)
                if not self._refuse(log, log.offset, [b""],
                                    Rejected("forward_truncated", problem)):
                    return None
                self.truncated.append(problem)
            self.queue.finish(log, self._save)
            return ()
        if refused is not None:
            self._refuse(log, *refused)   # False: stop() came, which ends the loop
            return ()
        if not items:
            self._save(log)
            return ()
        return log, items, end, complete, read_at

    def _acknowledge(self, log, items):
        """`items` of `log` were taken: past them."""
        log.offset = items[-1].end
        self._save(log)   # then the counts: who sees them sees the checkpoint saved
        self.sent += len(items)
        self.last_success = self.clock()
        return True

    def _refuse(self, log, end, lines, rejection):
        """Write log `lines`, ending at `end`, to the rejects log with `rejection`, each until
        it is written, then move past them; False if stop() came first."""
        for line in lines:
            record, failures = forward_reject_line(rejection, line, self.clock()), 0
            while not self.rejects.write([record]):
                failures += 1
                if self.stopping.wait(backoff_delay(failures, self.receiver.first_delay,
                                                    self.receiver.max_delay)):
                    return False
        log.offset = end
        self._save(log)
        self.refused.add(rejection.reason, len(lines))
        return True

    def _look(self, count=True):
        """Save the checkpoint when files moved by hand, or opened by the writer, join the queue
        (the one to send from open: one parked is looked for in its turn), then (`count`) count
        the backlog as it is to be, looking again as it reads (a count can take seconds)."""
        if self.queue.moves_to_save() and self.queue.files and self.queue.files[0].fd is not None:
            self._save(self.queue.files[0])
        if count:
            self.queue.count_lines(self.sent + self.refused.total() + self.skipped, on_new_files(
                self.queue.writer, lambda: self._look(count=False)))

    def _save(self, log, quiet=True):
        """Name `log` and its offset in the checkpoint; whether it did. A failure is said (once
        an interval), or with quiet=False raised; a full disk holds _next_batch till it works."""
        try:
            write_checkpoint(self.checkpoint, self.queue.checkpoint(
                log, self.receiver.url, self.clock()), in_place=True)
        except OSError as error:
            full = error.errno in (errno.ENOSPC, errno.EDQUOT)   # a live log's forwarder waits
            self.unsaved = full and self.queue.writer is not None   # (a backfill ends: goes on)
            if not quiet and not self.unsaved:
                raise
            self.reporter.say("cannot write the checkpoint %s: %s; forwarding %s" % (
                self.checkpoint, error.strerror or error, "waits until it can" if self.unsaved else
                "goes on, and after a restart may send some events again"), key="checkpoint")
            return False
        self.unsaved = False
        return True

    def status(self, for_metrics=False):
        """The forwarder's part of /health, and with `for_metrics` what /metrics adds."""
        if self.held is not None:
            return self.held if for_metrics else {
                name: value for name, value in self.held.items()
                if name not in ("paused", "last_success_time")}
        lines, size, files = self.queue.backlog(self.sent + self.refused.total() + self.skipped)
        oldest = self.queue.oldest_unsent() if lines or size else None
        age = _backlog_age(self.clock(), oldest, *self._caught_up_at) if lines or size else 0.0
        receiver = self.receiver
        fault = self.sender.refusing_all or receiver.wrong_url
        paused = receiver.paused_key is not None or fault is not None
        status = {"target": receiver.url, "sent": self.sent, "refused": self.refused.total(),
                  "lines_behind": lines, "bytes_behind": size, "files_behind": files,
                  "backlog_seconds": round(age, 3), "failed_attempts": receiver.failed_attempts,
                  "last_success": None if self.last_success is None
                  else format_time(self.last_success),
                  "backoff": round(receiver.backoff, 3), "last_error": receiver.last_error,
                  "paused_write_key": receiver.paused_key and named_secret(   # as _gist does
                      receiver.paused_key, self.write_key),
                  "receiver_fault": fault, "degraded": paused or age > self.alert}
        if for_metrics:
            status.update(paused=int(paused), last_success_time=float(self.last_success or 0))
        return status


def unsent_forward_files(writer):
    """(the forward checkpoint's path, the identities of the files it has not sent) if a run with
    --forward left one for `writer`'s log that names events not yet sent: its file, a rotation or
    the live log, from its offset on, and every file after it up to the backlog's end
    (_backlog_end); else None. Started without --forward, pixel keeps those past --keep: the next
    run with --forward sends them. As that run finds them (rotated_since, found_at): its file by
    the inode an erase killed mid-way gave it too ("replaced"), and if it is gone or moved by hand,
    every rotation since its save. 1.0's checkpoint (<log>.forward) counts first, as there."""
    path, legacy = state_path(writer.path, "forward"), os.path.abspath(writer.path) + ".forward"
    try:
        checkpoint = read_checkpoint(legacy)
        if checkpoint is None:
            checkpoint = read_checkpoint(path)
        else:
            path = legacy
        rotated = pixel_rotations(writer.path)
    except (OSError, ValueError):   # unreadable: nothing it could vouch for
        return None
    if checkpoint is None:
        return None
    positions = {(checkpoint["device"], checkpoint["inode"]): checkpoint["offset"]}
    replaced = checkpoint.get("replaced")
    if isinstance(replaced, dict) and all(type(replaced.get(field)) is int
                                          for field in ("inode", "offset")):
        positions[checkpoint["device"], replaced["inode"]] = replaced["offset"]
    live, end, _ = writer.committed()
    if positions.get(live, -1) >= end:   # sent to its end
        return None
    statuses = [stat_or_none(rotation) for rotation in rotated]
    first = len(statuses) if live in positions else next((
        index for index, status in enumerate(statuses) if status is not None and (
            (status.st_dev, status.st_ino) in positions or
            status.st_mtime_ns >= checkpoint["mtime_ns"])), None)
    if first is None:   # gone, and nothing written since: the forwarder says so when it runs
        return None
    files = [(rotation, (status.st_dev, status.st_ino))
             for rotation, status in zip(rotated[first:], statuses[first:]) if status]
    files.append((writer.path, live))
    last = _backlog_end(writer.path, checkpoint, files)
    return path, frozenset(identity for _, identity in files[:None if last is None else last + 1])


def _first_bytes(path):
    """The first 4096 bytes of the file at `path` (none if it is gone); None if it cannot be
    read."""
    try:
        with open(open_file(path), "rb") as handle:
            return handle.read(4096)
    except FileNotFoundError:
        return b""
    except OSError:
        return None


def _backlog_end(log, checkpoint, files):
    """The index in `files` ([(path, identity)], oldest first, the live file last) of the
    backlog's last file: the newest with a line when a run without --forward first met
    `checkpoint` (else each restart kept --keep's newest files too). Saved in the "kept"
    state by identity and first bytes (an inode freed by an erase or an rm is given again);
    a run with --forward removes it. None, keeping every file, if no file with a line is
    found, one newer cannot be read, or the one saved is not (an erase rewrote its first
    line): more, never less."""
    path = state_path(log, "kept")
    mark = [checkpoint["device"], checkpoint["inode"], checkpoint["offset"]]
    try:
        with open(open_file(path), "rb") as handle:
            saved = json.loads(handle.read(4096))
    except (OSError, ValueError, RecursionError):   # none yet, or not one: measured below
        saved = None
    if not isinstance(saved, dict) or saved.get("checkpoint") != mark:
        ends = ((name, identity, _first_bytes(name)) for name, identity in reversed(files))
        name, identity, first = next((end for end in ends if end[2] != b""), (None,) * 3)
        if not first:   # none with a line, or the newest with any unreadable
            return None
        saved = {"checkpoint": mark, "file": list(identity), "head_bytes": len(first),
                 "head": head_of(first)}
        with contextlib.suppress(OSError):   # unsaved, the next start measures: keeps more
            write_checkpoint(path, saved)
    for index, (name, identity) in enumerate(files):
        if list(identity) == saved.get("file") and type(saved.get("head_bytes")) is int and \
                head_of((_first_bytes(name) or b"")[:saved["head_bytes"]]) == saved.get("head"):
            return index
    return None


# --------------------------------------------------------------------------------------------
# Erasing beside a running pixel: how `pixel.py erase` asks it to let go of a live log
# (EraseRequest), and how the pixel answers (EraseDesk).

ERASE_POLL = 0.2       # seconds between a running pixel's looks for an erase request
NEXT_FILE_GRACE = 1.0  # seconds from a pixel's rename of its log to its flock of the
                       # next file: erase takes an empty file this new as that pixel's
ERASE_WAIT = 60.0      # seconds erase waits for a running pixel to answer (see HOLD_WAIT)
MAX_STATE_BYTES = 64 * 1024   # of an erase request or answer


def erase_request_path(log_path):
    return state_path(log_path, "erase")


def erase_answer_path(log_path):
    return state_path(log_path, "erase-answer")


def read_state(path):
    """A small JSON object of the state folder; None if there is none or it is not one."""
    try:
        with open(open_file(path), "rb") as handle:
            document = json.loads(handle.read(MAX_STATE_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _remove_files(*paths):
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def sweep_erase_requests(folder):
    """Remove what erases killed before their end left in `folder`'s state folder for files
    gone since (--keep deleted them): requests, answers, and requests half made."""
    state = os.path.join(folder, STATE_FOLDER)
    try:
        names = os.listdir(state)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(r"erase\.(.+)\.json(?:\.(\d+))?", name)
        if not match or os.path.lexists(os.path.join(folder, match.group(1))):
            continue
        request = {"pid": int(match.group(2))} if match.group(2) else \
            read_state(os.path.join(state, name)) or {}
        if not process_alive(request.get("pid"), request.get("started")):
            _remove_files(os.path.join(state, name),
                          os.path.join(state, "erase-answer.%s.json" % match.group(1)))


def _remove_empty(folder, made):
    if made:
        with contextlib.suppress(OSError):   # not empty (a checkpoint moved in), or gone
            os.rmdir(folder)


def _process_stat(pid):
    """The fields of /proc/<pid>/stat after the command's name (the state first), or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_started(pid, fields=None):
    """When process `pid` started (clock ticks since boot, in /proc; `fields` its
    _process_stat if read already), or None where that cannot be read: with the pid, it
    names one process, which a reused pid does not."""
    try:
        return int((fields or _process_stat(pid))[19])
    except (TypeError, ValueError, IndexError):
        return None


def process_alive(pid, started):
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process: there
        pass
    fields = _process_stat(pid)
    if fields and fields[0] in (b"Z", b"X"):   # killed, its parent not yet told: gone, but
        return False                         # kill(pid, 0) finds it (erase waited 60 s)
    return started is None or process_started(pid, fields) in (None, started)


def erase_at_work(log_path):
    """Whether an erase is at work on `log_path`: its request is there, its process alive."""
    request = read_state(erase_request_path(log_path))
    return request is not None and process_alive(request.get("pid"), request.get("started"))


class EraseRequest:
    """erase's side of asking a running pixel (its EraseDesk), whose flock shows it writes
    the log at `log_path`, to let go of it: a request file in the log's state folder (made
    with O_EXCL: one erase of a log at a time), answered by the pixel in another."""

    def __init__(self, log_path, reporter):
        self.log_path, self.reporter = log_path, reporter
        self.path, self.answer_path = erase_request_path(log_path), erase_answer_path(log_path)
        self.document = {"id": os.urandom(8).hex(), "pid": os.getpid(),
                         "started": process_started(os.getpid()), "state": "asked"}
        self.answered = False

    def claim(self):
        """Make the request; OSError if another erase of this log runs, or it cannot."""
        make_state_folder(self.path)   # the pixel must write its answer there
        written = "%s.%d" % (self.path, os.getpid())
        write_checkpoint(written, self.document)
        try:
            for _ in range(2):
                try:   # a link made whole, or none: never an empty request to misread
                    os.link(written, self.path)
                    return
                except FileExistsError:
                    other = read_state(self.path) or {}
                    if process_alive(other.get("pid"), other.get("started")):
                        raise OSError(errno.EBUSY, "another erase (pid %s) is at work on it"
                                      % other.get("pid"), self.log_path) from None
                    _remove_files(self.path, self.answer_path)   # left by an erase that died
            raise OSError(errno.EBUSY, "cannot make the erase request %s" % self.path)
        finally:
            os.remove(written)

    def wait_ready(self, gone):
        """The name the running pixel rotated the log to (None: it was empty) once it answers, or
        False if `gone()` says it has let go of the log meanwhile (ended); OSError if it does
        neither within ERASE_WAIT seconds. None too if `gone()` says (None) for NEXT_FILE_GRACE s
        that nothing is at the path: the pixel stopped between renaming the log and making the next
        file; a rotated file it still holds is not erased (_hold_for_erase)."""
        deadline, missing_since = time.monotonic() + ERASE_WAIT, None
        while time.monotonic() < deadline:
            free, now = gone(), time.monotonic()
            if free:
                return False
            missing_since = (missing_since or now) if free is None else None
            if missing_since is not None and now - missing_since > NEXT_FILE_GRACE:
                self.reporter.say("erase: nothing has been at %s for %g s since the pixel "
                                  "renamed it (did it stop?): erasing its rotated files"
                                  % (self.log_path, NEXT_FILE_GRACE))
                return None
            answer = self._ready()
            if answer is not None:
                self.answered = True
                if answer["state"] == "failed":   # erasing the rest would leave the person
                    raise OSError(errno.EIO, "the pixel that writes it %s" % answer.get("error"),
                                  self.log_path)
                rotated = answer.get("rotated")
                return rotated if isinstance(rotated, str) else None
            time.sleep(0.05)
        raise OSError(errno.ETIMEDOUT, "the pixel that holds it did not answer the erase "
                      "request in %d s (is it older than 2.1? If the file was moved by hand and "
                      "pixel still forwards it, name pixel's live log too)" % ERASE_WAIT,
                      self.log_path)

    def _ready(self):
        """The pixel's answer if it is ready for this request (or failed to be), else None."""
        answer = read_state(self.answer_path) or {}
        ready = answer.get("id") == self.document["id"] and answer.get("state") in (
            "ready", "failed")
        return answer if ready else None

    @staticmethod
    def finish(requests, done=True):
        """Say each erase request is done (or, not `done`, stopped: a file refused, Ctrl-C),
        wait (a while) for the pixels that answered to go on forwarding, which each does once
        all its requests have ended; remove them."""
        try:
            for request in requests:
                try:
                    write_checkpoint(request.path, dict(request.document,
                                                        state="done" if done else "stopped"))
                except OSError as error:   # a full disk: the pixel goes on once it sees the
                    request.answered = False   # request gone, or this process ended
                    request.reporter.say("erase: cannot write %s: %s" % (
                        request.path, error.strerror or error))
            deadline = time.monotonic() + ERASE_WAIT
            for request in requests:
                while request.answered and time.monotonic() < deadline and \
                        process_alive((request._ready() or {}).get("pid"), None):
                    time.sleep(0.05)   # a pixel gone since its answer will not go on
        finally:
            for request in requests:
                _remove_files(request.path, request.answer_path)


class EraseDesk:
    """A running pixel's side of `pixel.py erase`: a request beside either log (EraseRequest)
    is answered by rotating that log, so that erase rewrites a file nobody writes, and by
    holding the forwarder, whose files erase replaces, until the request says done or the
    erase's process is gone. A thread looks every ERASE_POLL seconds."""

    def __init__(self, writers, forwarder, reporter):
        self.writers = {erase_request_path(writer.path): writer for writer in writers}
        self.answers = {path: erase_answer_path(writer.path)
                        for path, writer in self.writers.items()}
        self.forwarder, self.reporter = forwarder, reporter
        self.stopping, self.thread = threading.Event(), None
        self.said = set()   # (pid, start) of each erase said to have ended undone

    def start(self):
        """Start looking, and the forwarder, unless an erase is at work: then once it ends."""
        if self.forwarder is not None:
            if self._requests():
                self.forwarder.hold()
            else:
                self.forwarder.start()
        self.thread = threading.Thread(target=self._run, name="pixel-erase", daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(ERASE_WAIT)

    def _requests(self):
        """{request path: request} of the erases at work on this pixel's logs; a request
        whose process is gone is removed."""
        found = {}
        for path in self.writers:
            request = read_state(path)
            if request is None:
                continue
            alive = process_alive(request.get("pid"), request.get("started"))
            state, said = request.get("state"), (request.get("pid"), request.get("started"))
            if (state == "stopped" or not alive and state != "done") and said not in self.said:
                self.reporter.say("an erase (pid %s) ended before it was done: run it again"
                                  % request.get("pid"))
                self.said.add(said)
            if alive:
                found[path] = request
            else:
                _remove_files(path, self.answers[path])
        return found

    def _rotate(self, path, request):
        """The answer to erase request `path`: ready, the log rotated to a new name (None: it
        was empty), or failed, and why: the live log, which erase leaves alone, keeps all."""
        writer = self.writers[path]
        try:
            return {"state": "ready", "rotated": writer.rotate_now()}
        except OSError as error:   # no inode or descriptor for the next file, a mount point
            why = "cannot rotate %s: %s" % (writer.path, why_not_rotated(error))
            self.said.add((request.get("pid"), request.get("started")))   # not "run it again"
            self.reporter.say("an erase (pid %s) stops: %s" % (request.get("pid"), why))
            return {"state": "failed", "error": why}

    def _run(self):
        while not self.stopping.wait(ERASE_POLL):
            try:
                if self._requests():
                    self._serve()
                elif self.forwarder is not None and self.forwarder.held is not None:
                    self.forwarder.resume()   # held at start by an erase that has ended
            except OSError as error:
                self.reporter.say("cannot answer an erase request: %s" % (
                    error.strerror or error), key="erase")

    def _serve(self):
        answered = {}
        try:
            while True:
                at_work = {path: request for path, request in self._requests().items()
                           if request.get("state") not in ("done", "stopped")}
                if not at_work or self.stopping.is_set():
                    return
                if self.forwarder is not None and self.forwarder.held is None:
                    self.forwarder.hold()
                for writer in self.writers.values():   # a backlog kept with no forwarder
                    if self.forwarder is None and writer.pinned:   # (unsent_forward_files):
                        writer.pinned = None   # its files are replaced: --keep deletes none
                for path, request in at_work.items():
                    if answered.get(path) != request.get("id"):
                        write_checkpoint(self.answers[path], dict(
                            self._rotate(path, request), id=request.get("id"), pid=os.getpid()))
                        answered[path] = request.get("id")
                self.stopping.wait(ERASE_POLL)
        finally:
            if self.forwarder is not None and self.forwarder.held is not None and \
                    not self.stopping.is_set():
                self.forwarder.resume()
            for writer in self.writers.values():   # the backlog by its files' new identities
                if self.forwarder is None and writer.pinned is None:
                    backlog = unsent_forward_files(writer)
                    writer.pinned = frozenset() if backlog is None else backlog[1]
            for path, request_id in answered.items():
                if os.path.exists(path):
                    write_checkpoint(self.answers[path], {"id": request_id, "state": "resumed",
                                                          "pid": os.getpid()})


# --------------------------------------------------------------------------------------------
# Configuration: every option once, with its flag, variable, default, check and help. The
# command line, make_wsgi_app(**options) and the tests all make a Config with configure().

class StartupError(Exception):
    """What stops pixel from starting, in one line: an option, a log, a CPU, a port."""


_KIND_WORDS = {int: "a whole number", float: "a number", str: "text", bool: "True or False"}


def _checker(name, kind, convert, ok, problem):
    """A check of a `kind` value, given as it is or as text to `convert`, then `ok`. argparse
    shows `name` for text that `convert` refuses: "invalid _port value: 'http'"."""
    several = kind if isinstance(kind, tuple) else (kind,)
    kinds = " or ".join(sorted({_KIND_WORDS[one] for one in several
                                if not (one is int and float in several)}))

    def check(value):
        if isinstance(value, str):
            value = convert(value.strip())
        elif not isinstance(value, kind) or isinstance(value, bool) and \
                kind is not bool:   # from Python: "must not be empty: 123" misled
            raise argparse.ArgumentTypeError("takes %s, not %s: %r" % (
                kinds, type(value).__name__, value))
        if not isinstance(value, kind) or not ok(value):
            raise argparse.ArgumentTypeError("%s: %r" % (problem, value))
        return value
    check.__name__ = name
    return check


_FLAG_WORDS = {"1": True, "true": True, "yes": True, "on": True, "": False, "0": False,
               "false": False, "no": False, "off": False}
_count = _checker("_count", int, int, lambda number: number >= 0, "must be 0 or more")
_window = _checker("_window", int, int, lambda number: 0 <= number <= MAX_DEDUPE_WINDOW,
                   "must be between 0 and %d" % MAX_DEDUPE_WINDOW)
_connections = _checker("_connections", int, int, lambda number: number > 0,
                        "must be greater than 0")
_port = _checker("_port", int, int, lambda number: 0 <= number <= 65535,
                 "must be between 0 and 65535")
_seconds = _checker("_seconds", (int, float), float,   # NaN fails both comparisons
                    lambda number: MIN_TIMEOUT <= number <= MAX_TIMEOUT,
                    "must be between %g and %g seconds" % (MIN_TIMEOUT, MAX_TIMEOUT))
_batch_size = _checker("_batch_size", int, int, lambda number: 1 <= number <= MAX_BATCH_ITEMS,
                       "must be between 1 and %d" % MAX_BATCH_ITEMS)
_cpu = _checker("_cpu", (int, str), lambda text: int(text) if text.isdigit() else text,
                lambda value: value in ("auto", "none") if isinstance(value, str) else value >= 0,
                "not auto, none or a CPU number")
_flag = _checker("_flag", bool, lambda text: _FLAG_WORDS.get(text.lower(), text),
                 lambda _: True, "not a yes/no value")
_nonempty = _checker("_nonempty", str, str, bool, "must not be empty")


def _host_name(text):
    """Whether sockets take `text` as a host: they encode it by IDNA first, and a traceback
    ("encoding of hostname failed") was all a '\u202e' or a 64-letter label got."""
    try:
        return bool(text.encode("idna"))
    except UnicodeError:
        return False


_host = _checker("_host", str, str, _host_name, "is not an address or a host name")


def _size(value):
    """A byte count, with an optional K, M or G suffix (powers of 1024)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[iI]?[bB]?\s*", value)
        if not match:
            raise argparse.ArgumentTypeError("not a size: %r (try 10485760 or 10M)" % value)
        value = int(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " ")
    return _count(value)


def _write_key(value):
    """A writeKey: a comma is PIXEL_WRITE_KEYS's separator, so "K1,K2" given once is a mistake
    that would refuse every event, not a key."""
    text = _nonempty(value)
    if "," in text:
        raise argparse.ArgumentTypeError("one key each, no comma (repeat --write-key, or give "
                                         "a list): %r" % text)
    return text


def _public_url(value):
    """An http(s) URL of a host, and the path a proxy mounts pixel under, if any
    (https://shop.example.com/collect): the settings document's apiHost starts with both."""
    scheme, _, rest = _nonempty(value).rstrip("/").partition("://")
    scheme = scheme.lower()   # HTTPS:// is https://
    text = scheme + "://" + rest
    host, _, path = rest.partition("/")
    if not origin_ok("%s://%s" % (scheme, host)):
        raise argparse.ArgumentTypeError("not an http(s) URL of a host, with no query: %r (try "
                                         "https://pixel.example.com)" % text)
    segments = path.split("/") if path else []   # RFC 3986 pchars, %2e%2e is .. to a browser
    if not all(re.fullmatch(r"(?:[\w.~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})+", part, re.ASCII) and
               urllib.parse.unquote(part) not in (".", "..") for part in segments):
        raise argparse.ArgumentTypeError("not an http(s) URL of a host and the path a proxy "
                                         "mounts pixel under (no query, no empty, . or .. "
                                         "segment): %r" % text)
    names, keep = [urllib.parse.unquote(part) for part in segments], len(segments)
    while True:   # pixel's settings add /v1, a client the route (/v1/t): here either is a 404
        tails = ["/" + "/".join(names[at:keep]) for at in range(max(0, keep - 4), keep)]
        ends = [keep - len(tails) + index for index, tail in enumerate(tails) if tail == "/v1"
                or "/v1/" in tail and route_for(tail)]   # 4: the longest route, /beacon/v1/b
        if not ends:
            break
        keep = ends[0]
    if keep < len(segments):
        raise argparse.ArgumentTypeError("%r ends in /%s, which pixel and its clients add "
                                         "(try %s)" % (text, "/".join(names[keep:]), "/".join(
                                             [scheme + ":/", host] + segments[:keep])))
    return text


def _origin_pattern(value):
    text = _nonempty(value).lower()   # as browsers send an Origin
    if text.startswith("*.") and "." in text[2:].rstrip(".") and origin_ok("https://" + text[2:]):
        return text
    if origin_ok(text):   # the port as browsers send it: none for the scheme's own, no 0s
        parts = urllib.parse.urlsplit(text)
        host = "[%s]" % parts.hostname if ":" in parts.hostname else parts.hostname
        port = "" if parts.port in (None, _DEFAULT_PORTS[parts.scheme]) else ":%d" % parts.port
        return "%s://%s%s" % (parts.scheme, host, port)
    raise argparse.ArgumentTypeError("not an origin (https://shop.example.com) or a pattern "
                                     "(*.example.com): %r" % text)


def _network(value):
    text = _nonempty(value)
    if text == "unix":   # the peer of a unix socket (_trusted)
        return text
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError("not an IP address or network: %r" % text) from None
    return text


def _forward_url(value):
    """An http(s) base URL, to which /v1/batch is added: one given with /v1/batch or /v1
    already is taken as meant, not posted to at /v1/batch/v1/batch."""
    scheme, _, rest = _nonempty(value).rstrip("/").partition("://")
    text = scheme.lower() + "://" + rest   # HTTPS:// is https://
    parts = urllib.parse.urlsplit(text)
    # origin_ok: a scheme and a host, with no user or password before it.
    if not re.fullmatch(r"[!-~]+", text) or "?" in text or "#" in text or \
            not origin_ok("%s://%s" % (parts.scheme, parts.netloc)):
        raise argparse.ArgumentTypeError("not an http(s) URL with no query or credentials: "
                                         "%r (try https://api.segment.io)" % text)
    return re.sub(r"/v1(/batch)?\Z", "", text).rstrip("/")


def _ranges_source(value):
    """LABEL=FILE, or a (label, file) pair, as a (label, file) pair; LABEL one of
    RANGE_LABELS. The file is read when pixel starts (Pixel), not here."""
    pair = value.partition("=")[::2] if isinstance(value, str) and "=" in value else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or \
            not all(isinstance(part, str) and part.strip() for part in pair) or \
            pair[0].strip() not in RANGE_LABELS:
        raise argparse.ArgumentTypeError("not LABEL=FILE with LABEL %s: %r"
                                         % (" or ".join(RANGE_LABELS), value))
    return pair[0].strip(), pair[1].strip()


def _token(value):
    # RFC 6750's b64token: what an Authorization: Bearer header can carry as it is.
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", value):
        raise argparse.ArgumentTypeError("not a bearer token (letters, digits and -._~+/, "
                                         "then = padding): %r" % (value,))
    return value


def _ca_file(value):
    """A PEM file of CA certificates, checked by loading it."""
    import ssl   # here: only --forward-ca pays for it
    text = _nonempty(value)
    try:
        mode = os.stat(text).st_mode
        if not stat.S_ISREG(mode):   # a FIFO would block the load
            raise OSError(errno.EINVAL, "not a regular file (%s)" % file_kind(mode))
        ssl.create_default_context().load_verify_locations(text)
    except (OSError, ValueError) as error:   # ssl.SSLError is an OSError
        raise argparse.ArgumentTypeError("not a readable PEM file of CA certificates: %r "
                                         "(%s)" % (text, error)) from None
    return text


Option = collections.namedtuple("Option", "name env default check help scope many",
                                defaults=("all", False))
Option.__doc__ = """One option: `name` is its keyword (the flag is --name with dashes); `env`
its PIXEL_* variable; `check` converts and checks a value; `scope` where it means something:
"all", "server" (the built-in server's listening and process only), "wsgi"; `many` a list."""

OPTIONS = (
    Option("host", "PIXEL_HOST", "127.0.0.1", _host, "address to listen on; 0.0.0.0 or :: "
           "for every interface", "server"),
    Option("port", "PIXEL_PORT", 8000, _port, "port to listen on; 0 picks a free one", "server"),
    Option("log", "PIXEL_LOG", DEFAULT_LOG, _nonempty, "the event log, one JSON object per line"),
    Option("rejects", "PIXEL_REJECTS", None, _nonempty, "the rejects log; unset means %s beside "
           "--log" % DEFAULT_REJECTS_NAME),
    Option("max_bytes", "PIXEL_MAX_BYTES", 0, _size, "rotate a log before it would grow past "
           "this size (K, M, G suffixes); 0 never rotates"),
    Option("keep", "PIXEL_KEEP", 0, _count, "rotated files to keep per log, the oldest deleted "
           "first; 0 keeps them all"),
    Option("write_key", "PIXEL_WRITE_KEYS", (), _write_key, "accept only this writeKey; "
           "repeatable. Unset, any non-empty key is accepted", many=True),
    Option("trusted_proxy", "PIXEL_TRUSTED_PROXIES", (), _network, "an address or network whose "
           "X-Forwarded-For is believed, or unix: a unix socket's peer (a WSGI server bound "
           "to one); repeatable. Unset, none is believed", many=True),
    Option("allow_origin", "PIXEL_ALLOW_ORIGINS", (), _origin_pattern, "a website origin whose "
           "browsers may send to the HTTP API (https://shop.example.com, or *.example.com for "
           "its subdomains); repeatable. Unset, any origin may send", many=True),
    Option("public_url", "PIXEL_PUBLIC_URL", None, _public_url, "the URL browsers reach this "
           "server at, such as https://pixel.example.com or https://shop.example.com/collect "
           "behind a proxy; the settings document points analytics.js there. Unset, the "
           "request's Host and scheme are used"),
    Option("dedupe_window", "PIXEL_DEDUPE_WINDOW", DEFAULT_DEDUPE_WINDOW, _window, "client-sent "
           "messageIds to remember, one window for all writeKeys; an event whose key and "
           "messageId were written among the last N is dropped as a retry. 0 turns it off"),
    Option("no_ip", "PIXEL_NO_IP", False, _flag, "record no IP address, not even a client-sent "
           "context.ip"),
    Option("anonymize_ip", "PIXEL_ANONYMIZE_IP", False, _flag, "record IP addresses truncated "
           "to their /24 (IPv4) or /48 (IPv6): the peer's, X-Forwarded-For's, a client-sent "
           "context.ip, and in the rejects log"),
    Option("machine_ranges", "PIXEL_MACHINE_RANGES", (), _ranges_source, "LABEL=FILE: label pixel "
           "fetches from addresses in FILE as LABEL, apple_mpp (Apple's egress-ip-ranges.csv) or "
           "scanner; each line starts with a CIDR. Repeatable; reloaded on SIGHUP", many=True),
    Option("suppress", "PIXEL_SUPPRESS", None, _nonempty, "a file of people whose events are "
           "not recorded (one userId, anonymousId, email address or sha256:HEX a line); they "
           "are answered as recorded and counted as suppressed. Reloaded on SIGHUP"),
    Option("metrics_token", "PIXEL_METRICS_TOKEN", None, _token, "require `Authorization: "
           "Bearer TOKEN` for /metrics. Unset, /metrics answers anyone who can reach it"),
    Option("forward", "PIXEL_FORWARD", None, _forward_url, "relay the events log, at least once "
           "and in order, to this Segment-compatible API (https://api.segment.io, a "
           "RudderStack or Jitsu URL, another pixel); batches go to URL/v1/batch"),
    Option("forward_write_key", "PIXEL_FORWARD_WRITE_KEY", None, _nonempty, "forward every "
           "event under this writeKey, instead of each under its own"),
    Option("forward_batch", "PIXEL_FORWARD_BATCH", DEFAULT_FORWARD_BATCH, _batch_size, "events "
           "per forwarded batch, 1 to %d; a batch is also at most 500 KB" % MAX_BATCH_ITEMS),
    Option("forward_ca", "PIXEL_FORWARD_CA", None, _ca_file, "a CA bundle (PEM) to trust for "
           "--forward, besides the system's: for a receiver with a private CA"),
    Option("forward_timeout", "PIXEL_FORWARD_TIMEOUT", DEFAULT_FORWARD_TIMEOUT, _seconds,
           "seconds the receiver has to connect and to answer; then the batch is retried"),
    Option("forward_alert", "PIXEL_FORWARD_ALERT", DEFAULT_FORWARD_ALERT, _seconds, "seconds "
           "of unsent backlog after which /health says degraded"),
    Option("reuse_port", "PIXEL_REUSE_PORT", False, _flag, "share the port with other pixel "
           "processes (SO_REUSEPORT), each with its own --log: the kernel spreads connections "
           "among them, one CPU each", "server"),
    Option("max_connections", "PIXEL_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, _connections,
           "connections served at once; more wait in the listen backlog", "server"),
    Option("request_timeout", "PIXEL_REQUEST_TIMEOUT", 10.0, _seconds, "seconds a client has "
           "to send a whole request, head and body", "server"),
    Option("idle_timeout", "PIXEL_IDLE_TIMEOUT", 15.0, _seconds, "seconds a kept-alive "
           "connection may wait for its next request", "server"),
    Option("certfile", "PIXEL_CERTFILE", None, _nonempty, "serve HTTPS with this certificate "
           "chain (PEM, the leaf first: certbot's fullchain.pem); needs --keyfile", "server"),
    Option("keyfile", "PIXEL_KEYFILE", None, _nonempty, "the private key of --certfile (PEM)",
           "server"),
    Option("cpu", "PIXEL_CPU", "auto", _cpu, "pin the process to one CPU: auto (the last one "
           "it may use), none, or a CPU number. Python runs one thread at a time; keeping all "
           "of them on one core makes handing over between them much cheaper", "server"),
    Option("public_metrics", None, False, _flag, "serve /metrics under WSGI with no "
           "metrics_token", "wsgi"),
)
OPTION_NAMES = tuple(option.name for option in OPTIONS)

Config = collections.namedtuple("Config", OPTION_NAMES)
Config.__doc__ = """Every option of one pixel, checked: configure() makes one."""


def configure(**options):
    """A Config of `options` (named as the flags are), each checked as its flag is, the rest
    at their defaults. ValueError, in words, for a value or a combination that cannot be used."""
    unknown = set(options) - set(OPTION_NAMES)
    if unknown:
        raise ValueError("no such option: %s" % ", ".join(sorted(unknown)))
    values = {}
    for option in OPTIONS:
        value = options.get(option.name)
        value = option.default if value is None else os.fspath(value) if isinstance(
            value, os.PathLike) else value   # None: as if left out; a pathlib.Path as text
        try:
            if option.many:
                if isinstance(value, (str, bytes)):   # would be read a letter at a time
                    raise ValueError("takes a list, not a string: %r" % (value,))
                value = [option.check(item) for item in value or ()]
            elif value is not option.default:
                value = option.check(value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
            raise ValueError("%s: %s" % (option.name, error)) from None
        values[option.name] = value
    if values["rejects"] is None:
        values["rejects"] = os.path.join(os.path.dirname(os.path.abspath(values["log"])),
                                         DEFAULT_REJECTS_NAME)
    if os.path.realpath(values["rejects"]) == os.path.realpath(values["log"]):
        raise ValueError("the events log and the rejects log must be different files "
                         "(--log, --rejects): both are %s" % os.path.realpath(values["log"]))
    if bool(values["certfile"]) != bool(values["keyfile"]):
        raise ValueError("--certfile and --keyfile go together")
    if values["forward_write_key"] and not values["forward"]:
        raise ValueError("--forward-write-key needs --forward")
    if values["forward_ca"] and not (values["forward"] or "").startswith("https://"):
        raise ValueError("--forward-ca needs an https:// --forward URL")
    return Config(**values)


def build_parser(environ):
    """The command line's parser: a flag for each option but WSGI's, its default taken from
    its PIXEL_* variable when that is set (lists comma-separated). A flag wins over it."""
    parser = argparse.ArgumentParser(
        prog="pixel.py", description="Segment-compatible tracking-pixel server.",
        epilog="Each flag's environment variable is shown in brackets; lists in a variable "
               "are comma-separated. Commands of their own, each with --help: `pixel.py "
               "forward` sends log files, `report` counts them, `erase` takes a person out.")
    parser.from_env = {}   # "append" would add a list's flags to its variable's list
    for option in OPTIONS:
        if option.scope == "wsgi":
            continue
        flag, default = "--" + option.name.replace("_", "-"), option.default
        if option.env in environ:
            text = environ[option.env]
            try:
                if not text.strip():
                    # PIXEL_WRITE_KEYS= must not switch the allowlist off, nor PIXEL_HOST=
                    # listen everywhere: an empty value is a mistake, not a setting.
                    raise ValueError("is set but empty; unset it to use the default")
                default = [option.check(item) for item in text.split(",") if item.strip()] \
                    if option.many else option.check(text)
                if option.many and not default:
                    raise ValueError("names nothing; unset it to use the default")
            except (argparse.ArgumentTypeError, ValueError) as error:
                parser.error("%s%s %s" % (option.env, "=%r:" % text if text.strip() else "",
                                          error))
            parser.from_env[option.name] = default
        help = "%s [%s%s]%s" % (option.help, option.env, "=1" if option.check is _flag else "",
                                "" if option.many or default is None else   # unset: see help
                                " (default: %(default)s)")
        if option.check is _flag:
            parser.add_argument(flag, action="store_true", default=default, help=help)
        else:
            parser.add_argument(flag, type=option.check, default=None if option.many else
                                default, action="append" if option.many else "store",
                                metavar=option.name.upper(), help=help)
    parser.add_argument("--version", action="version", version="pixel " + __version__)
    # PIXEL_WRITE_KEY, named as the flag is, would leave the allowlist off without a word.
    for option in OPTIONS:
        flag_named = "PIXEL_" + option.name.upper()
        if option.env and option.env != flag_named and flag_named in environ:
            parser.error("%s is not one of pixel's variables: did you mean %s?"
                         % (flag_named, option.env))
    return parser


def parse_args(argv=None, environ=None):
    """The command line's Config: flags, then PIXEL_* variables, then defaults; bad ones exit 2."""
    parser = build_parser(os.environ if environ is None else environ)
    flags = {name: value for name, value in vars(parser.parse_args(argv)).items()
             if value is not None}   # a list's flags not given, or an option unset
    try:
        return configure(**dict(parser.from_env, **flags))
    except ValueError as error:
        parser.error(str(error))


# --------------------------------------------------------------------------------------------
# Wiring: the one place a Config becomes working parts, for the command line, WSGI and tests

def open_logs(log, rejects, *, busy, wait=0.0, **options):
    """The events and the rejects LogWriter (`options` are LogWriter's). StartupError for a
    file that cannot be opened, for two hard links to one file (configure() refuses two
    paths to it), and for a file another process still holds after `wait` seconds, saying
    `busy` (what to do instead); a file made here is removed again then."""
    if os.path.exists(log) and os.path.exists(rejects) and os.path.samefile(log, rejects):
        raise StartupError("the events log and the rejects log are the same file: %s"
                           % os.path.realpath(log))
    writers, waited, collected = [], None, False
    deadline = time.monotonic() + wait
    for path in (log, rejects):
        while True:
            try:
                writers.append(LogWriter(path, **options))
                break
            except OSError as error:
                # Wait while another process holds it: a gunicorn reload, whose old worker
                # lets go soon; an erase rewriting it (erase_at_work), until it is done.
                here = error.errno == errno.EBUSY and os.path.realpath(path) in WRITTEN_HERE
                if here and not collected:
                    # An app dropped in a reference cycle (a Flask app's, a test's) holds
                    # its files until the collector runs its finalizer: run it now, once.
                    collected = True
                    gc.collect()
                    continue
                if error.errno != errno.EBUSY or here or time.monotonic() >= deadline and \
                        not erase_at_work(path):
                    for writer in writers:
                        writer.close(discard=True)
                    advice = {errno.EBUSY: "; " + busy, errno.ENOENT: "; make its folder first"}
                    why = ("this process writes it already (another make_wsgi_app or pixel in "
                           "it): give each its own log and rejects") if here else "%s%s" % (
                        error.strerror or error, advice.get(error.errno, ""))
                    raise StartupError("cannot open %s: %s" % (error.filename or path, why)) \
                        from None
                if waited is None:   # a wait of seconds must not look like a hang
                    waited = options["reporter"].say("%s: %s" % (path, "pixel.py erase is "
                        "rewriting it; waiting for it to end" if erase_at_work(path) else
                        "another process holds it; waiting up to %.0f s for it to let go" % wait))
            time.sleep(0.05)
        options["readable"] = False   # only the events log is followed
    return writers


class SuppressingRejects:
    """A rejects log for the forwarder that drops the lines of people --suppress names now:
    an event logged before its entry was added, then refused by the receiver, is written
    nowhere (counted as suppressed), as a suppressed request is written nowhere."""

    def __init__(self, writer, recorder):
        self.writer, self.recorder = writer, recorder

    def write(self, lines):
        """How many of `lines` are done with: written, or dropped."""
        people = self.recorder.people
        kept = [line for line in lines if people is None or not self._names(people, line)]
        return len(lines) - len(kept) + (self.writer.write(kept) if kept else 0)

    def _names(self, people, line):
        """Whether a rejects line (forward_reject_line's) names one: by its event's fields, or
        else by the values of what it quotes: a line not JSON, JSON not an object."""
        try:
            record = json.loads(line)
            event = record.get("event")
            if isinstance(event, dict):
                return self.recorder.suppress(people, event)
            quoted = record["line"] if "line" in record else _encode_lenient(event)
        except RecursionError:   # a line pixel did not write, nested past what json reads here
            quoted = line.decode("utf-8", "replace")
        return self.recorder.suppress(people, None, quoted, True)


class Pixel:
    """One pixel made from a Config: its log files, Recorder, App, metrics and, with
    `forward`, its Forwarder; the one wiring there is. StartupError for what cannot be
    opened or started, having removed the files it made."""

    def __init__(self, config, *, reporter=None, clock=time.time, serve_metrics=True,
                 busy="give each pixel process its own --log and --rejects", wait=0.0):
        self.config = config
        self.reporter = reporter or Reporter()
        self.metrics = Metrics(clock)
        self._reloading, self._retired = threading.Lock(), []   # --suppress lists replaced
        try:   # before any file is made: a start that fails here leaves none
            self.labeller = Labeller(config.machine_ranges, self.reporter)
        except (OSError, ValueError) as error:
            raise StartupError("cannot load the machine ranges: %s"
                               % _ranges_error(error)) from None
        try:
            people = read_people(config.suppress) if config.suppress else None
        except (OSError, ValueError) as error:
            raise StartupError("cannot load --suppress: %s" % _people_error(error)) from None
        self.events, self.rejects = open_logs(
            config.log, config.rejects, max_bytes=config.max_bytes, keep=config.keep, clock=clock,
            reporter=self.reporter, readable=bool(config.forward), busy=busy, wait=wait)
        backlog = None if config.forward or not config.keep else unsent_forward_files(self.events)
        if backlog is not None:   # --forward left out for a while: its backlog is not --keep's
            self.events.pinned = backlog[1]
            self.reporter.say("keeping %d file(s) of %s past --keep %d: %s names events not yet "
                              "forwarded (start with --forward to send them, or remove it)"
                              % (len(backlog[1]), config.log, config.keep, backlog[0]))
        self.recorder = Recorder(
            self.events, self.rejects, write_keys=config.write_key, record_ip=not config.no_ip,
            trusted_proxies=config.trusted_proxy, anonymize_ip=config.anonymize_ip, people=people,
            dedupe_window=config.dedupe_window, metrics=self.metrics, clock=clock,
            reporter=self.reporter, labeller=self.labeller)
        self.app = App(self.recorder, self.metrics, allow_origins=config.allow_origin,
                       public_url=config.public_url, metrics_token=config.metrics_token,
                       serve_metrics=serve_metrics)
        self.forwarder = None
        # What a start that fails after all (serve's listen) removes: see close(discard=True)
        self._made_state = not os.path.lexists(os.path.dirname(state_path(config.log, "forward")))
        try:
            if config.forward:
                _remove_files(state_path(self.events.path, "kept"))   # see _backlog_end
                receiver = Receiver(
                    config.forward, cafile=config.forward_ca, timeout=config.forward_timeout,
                    configured_keys=set(config.write_key) | {config.forward_write_key} - {None},
                    reporter=self.reporter, clock=clock)
                self.forwarder = Forwarder(
                    receiver, SuppressingRejects(self.rejects, self.recorder),
                    write_key=config.forward_write_key, batch_events=config.forward_batch,
                    alert=config.forward_alert, reporter=self.reporter, clock=clock)
                self.forwarder.follow(self.events)
                register_forwarder(self.forwarder, self.metrics)
        except OSError as error:
            if self.forwarder is not None:
                self.forwarder.close()
            self.events.close(discard=True)
            self.rejects.close(discard=True)
            raise StartupError("cannot forward %s: %s" % (error.filename or config.log,
                                                          error.strerror or error)) from None
        record_torn_tails(self.recorder)
        self.recorder.remember_logged()
        self.desk = EraseDesk((self.events, self.rejects), self.forwarder, self.reporter)

    def start(self):
        """Start what runs beside the requests: the forwarder's thread, and the erase
        desk's, which answers `pixel.py erase`."""
        self.desk.start()

    def reopen(self):
        """SIGHUP: both logs reopened at their paths, the machine ranges and the --suppress
        list loaded again (one that fails keeps the one loaded before)."""
        reopened = []
        for writer in (self.events, self.rejects):
            try:
                writer.reopen()
            except OSError as error:   # the next write tries again, and reports it
                self.reporter.say("cannot reopen %s: %s" % (
                    writer.path, error.strerror or error), key="reopen " + writer.path)
            else:
                reopened.append(writer.path)
        if reopened:
            self.reporter.say("reopened %s (SIGHUP)" % " and ".join(reopened), key="reopened")
        self.labeller.reload()
        if self.config.suppress:
            try:
                people = read_people(self.config.suppress)
            except (OSError, ValueError) as error:
                self.reporter.say("cannot reload --suppress, so the list loaded before "
                                  "stays in use: %s" % _people_error(error))
            else:
                with self._reloading:   # one at a time, each waiting for every older list
                    self._retired.append(self.recorder.people)
                    self.recorder.people = people
                    deadline = time.monotonic() + SUPPRESS_RELOAD_WAIT
                    while any(old.judging for old in self._retired) and \
                            time.monotonic() < deadline:
                        time.sleep(STOP_POLL / 10)   # requests judged by them, to their end
                    self._retired = [old for old in self._retired if old.judging]
                    self.reporter.say("reloaded --suppress (SIGHUP): %d identifier(s)%s" % (
                        len(people), ", some requests judged by a list before still running"
                        if self._retired else ""))

    def close(self, discard=False):
        """Stop and close it all; with `discard`, a start that failed after all, also remove
        the logs it made, still empty."""
        self.desk.stop()
        if self.forwarder is not None:
            self.forwarder.stop(1.0)
            self.forwarder.close()
        for writer in (self.events, self.rejects):
            writer.close(discard=discard)
        if discard and self.forwarder is not None and self.forwarder.made_checkpoint:
            _remove_files(self.forwarder.checkpoint)
            _remove_empty(os.path.dirname(self.forwarder.checkpoint), self._made_state)


# How long a WSGI worker waits for another to let go of the logs: a gunicorn reload starts
# the new worker while the old one ends its requests (--graceful-timeout, 30 s), and kills a
# worker that takes over --timeout (30 s) to boot.
WSGI_LOCK_WAIT = 25.0
WSGI_BUSY = ("one process owns pixel's files, so serve it from one worker process with "
             "threads (gunicorn --workers 1 --threads 8; flask run --debug --no-reload), or "
             "give each worker process its own make_wsgi_app(log=..., rejects=...)")


def make_wsgi_app(**options):
    """A WSGI application of the OPTIONS of scope "all" and "wsgi", named as the flags are.
    It opens the logs now, so serve it from one process (threads are fine). /metrics needs
    `metrics_token` or public_metrics=True, else it is a 404: a WSGI app usually shares its
    port with a public site. A bad option or file: a line on stderr, then SystemExit(3),
    which gunicorn takes for a worker that cannot boot, not to be started again and again."""
    reporter = Reporter()
    for old, new in (("write_keys", "write_key"), ("trusted_proxies", "trusted_proxy"),
                     ("allow_origins", "allow_origin")):   # version 1.0's keywords, and now
        if old in options:
            options[new] = options.pop(old)
    if "record_ip" in options:
        options["no_ip"] = not options.pop("record_ip")
    try:
        server_only = [option.name for option in OPTIONS
                       if option.scope == "server" and option.name in options]
        if server_only:
            raise ValueError("%s: the WSGI server's to set, not pixel's" % ", ".join(server_only))
        config = configure(**options)
        pixel = Pixel(config, reporter=reporter, busy=WSGI_BUSY, wait=WSGI_LOCK_WAIT,
                      serve_metrics=config.metrics_token is not None or config.public_metrics)
    except (StartupError, ValueError) as error:
        reporter.say("make_wsgi_app: %s" % error)
        raise SystemExit(3) from None
    pixel.start()
    return WsgiApp(pixel.app, pixel.close, config)


# --------------------------------------------------------------------------------------------
# Reports: what `pixel.py report` counts in an events log, a line at a time. No I/O.

REPORT_COLUMNS = ("events", "users", "machine", "events_no_machine", "users_no_machine")
REPORT_BAR = 40   # characters of the longest --daily bar
_REPORT_KEY_CHARS = 60   # of a group's key, shown in a table
# json's C scanner, which json.loads calls after checks a log line does not need.
_scan_json = json.JSONDecoder().scan_once


class _Counts:
    """One row's counts: events, those labelled machine, distinct users, the distinct users
    with an event not labelled machine; and a group's rows by day, with --daily."""

    __slots__ = ("events", "machine", "users", "people", "days")

    def __init__(self):
        self.events = self.machine = 0
        self.users, self.people = set(), set()
        self.days = collections.defaultdict(_Counts)

    def add(self, user, machine):
        self.events += 1
        self.machine += machine
        if user is not None:
            self.users.add(user)
            if not machine:
                self.people.add(user)

    def values(self):
        return (self.events, len(self.users), self.machine, self.events - self.machine,
                len(self.people))


def _received_text(value):
    """receivedAt as format_time writes it, for comparing as text; None if it is no time."""
    if isinstance(value, str) and len(value) == 24 and value[10] == "T" and \
            value[23] == "Z" and value[:10].isascii() and value[4:8:3] == "--" and \
            value[:10].replace("-", "").isdigit():   # --daily prints its first ten
        return value   # pixel's own form, nearly always: no parsing
    try:
        seconds = parse_time(value)
    except (ValueError, OverflowError):
        return None
    return format_time(seconds) if 0 <= seconds < _LAST_SECOND else None


def report_time(text, end=False):
    """A --since or --until value (a date or an ISO-8601 time) as format_time text; a date
    alone is its first millisecond, or with `end` its last. ValueError."""
    seconds = parse_time(text.strip())
    if not 0 <= seconds < _LAST_SECOND:
        raise ValueError("out of range: %r" % text)
    if end and len(text.strip()) == 10:   # YYYY-MM-DD: the whole day
        seconds += 86400 - 0.001
    return format_time(seconds)


class Tally:
    """Counts of an events log's events by a field (`by`, a dotted path such as
    properties.campaign), of type `kind` and named `event` only, received within [since, until]
    (format_time text, inclusive); with `daily`, by UTC day of receivedAt too. A user is the
    userId, else the anonymousId (never a userId of the same text); a machine event has a
    context.machine. Memory grows with groups, days and users, never with lines."""

    def __init__(self, by="event", event=None, kind=None, since=None, until=None, daily=False):
        self.by, self.path, self.daily = by, tuple(by.split(".")), daily
        self.event, self.kind, self.since, self.until = event, kind, since, until
        self.groups = collections.defaultdict(_Counts)   # the field's value -> _Counts
        self.skipped = 0    # lines that are not events
        self._timed = since is not None or until is not None or daily

    def add_lines(self, lines):
        """Count each line (bytes or str) that is an event, and the others in `skipped`;
        None stands for a line too long to have been read (log_lines')."""
        for line in lines:
            if not line:
                if line is None:
                    self.skipped += 1
                continue   # a blank line
            try:
                # Half json.loads's time: UTF-8 decoded here, json's C scanner called
                # directly. What it does not take whole, json.loads reads as it would.
                text = line.decode() if type(line) is bytes else line
                try:
                    event, end = _scan_json(text, 0)
                except StopIteration:   # no value where the line starts: a BOM, a space
                    event, end = json.loads(line), len(text)
                if end != len(text):
                    event = json.loads(text)
            except (ValueError, RecursionError):   # torn, not JSON, not UTF-8, too deep
                event = None
            if type(event) is dict and event.get("type") in EVENT_TYPES:
                self.add(event)
            else:
                self.skipped += 1   # a checkpoint, a settings document, another log's line

    def add(self, event):
        """Count one event (a dict with a type)."""
        if self.event is not None and event.get("event") != self.event or \
                self.kind is not None and event["type"] != self.kind:
            return
        received = None
        if self._timed:
            received = _received_text(event.get("receivedAt"))
            if (self.since is not None or self.until is not None) and received is None or \
                    self.since is not None and received < self.since or \
                    self.until is not None and received > self.until:
                return
        value = event
        for part in self.path:
            value = value.get(part) if type(value) is dict else None
        if value is not None and type(value) is not str:   # 1 and "1" are two groups
            value = (_encode_lenient(value),)
        user = event.get("userId")
        if user is None or user == "":
            user = event.get("anonymousId")
            user = None if user is None or user == "" else ("anonymousId", str(user))
        elif type(user) is not str:
            user = str(user)   # a number, from another writer
        context = event.get("context")
        machine = type(context) is dict and bool(context.get("machine"))
        counts = self.groups[value]
        counts.add(user, machine)
        if self.daily:
            day = received[:10] if received is not None else "(no date)"
            counts.days[day].add(user, machine)

    @property
    def total(self):
        """The counts of all groups, each user once."""
        total = _Counts()
        for counts in self.groups.values():
            total.events += counts.events
            total.machine += counts.machine
            total.users |= counts.users
            total.people |= counts.people
        return total

    def rows(self):
        """(key, day, counts) rows: each group, the most events first (ties by key, the
        events with no key last), with --daily its days after it, oldest first (day None on
        a group's row; "(no date)" for events with no receivedAt to read)."""
        rows = []
        for key, counts in sorted(self.groups.items(), key=lambda item: (
                -item[1].events, item[0] is None, _key_text(item[0]))):
            rows.append((key, None, counts))
            rows.extend((key, day, day_counts) for day, day_counts in sorted(counts.days.items()))
        return rows


def _key_text(key):
    """A group's key as text: a string as it is, another value as JSON, none as (none)."""
    return "(none)" if key is None else key[0] if type(key) is tuple else key


def _printable(text, limit=None, keep=""):
    """`text`, at most `limit` characters, with unprintable characters but those in `keep`
    escaped: a key comes from a URL, and an escape sequence in it (ESC, a right-to-left
    override) must not reach the operator's terminal."""
    if not text.isprintable():
        text = "".join(char if char.isprintable() or char in keep else repr(char)[1:-1]
                       for char in text)
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def _bar(counts, peak):
    """A day's bar, as long against the busiest day's as its events: "#" for events not
    labelled machine, "." for machine ones."""
    width = max(1, round(REPORT_BAR * counts.events / peak))
    dots = round(width * counts.machine / counts.events)
    return "#" * (width - dots) + "." * dots


def report_table(tally):
    """The report as aligned text: a header, a row a group (with --daily, a row a day under
    it with its bar), and a total row, whose users are distinct over all groups."""
    rows = tally.rows()
    peak = max((counts.events for _, day, counts in rows if day is not None), default=0)
    table = [[_printable(tally.by, _REPORT_KEY_CHARS)] + list(REPORT_COLUMNS) + [""]]
    table += [[_printable(_key_text(key), _REPORT_KEY_CHARS) if day is None else "  " + day]
              + [str(value) for value in counts.values()]
              + [_bar(counts, peak) if day is not None else ""] for key, day, counts in rows]
    table.append(["total"] + [str(value) for value in tally.total.values()] + [""])
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]) - 1)]
    lines = ["  ".join([row[0].ljust(widths[0])] + list(map(str.rjust, row[1:-1], widths[1:]))
                       + row[-1:]).rstrip() for row in table]   # no bar: no trailing spaces
    if tally.daily:
        lines.append("(bars: # events not labelled machine, . machine events)")
    return "\n".join(lines) + "\n"


def report_records(tally):
    """The report as dicts, one a group (with --daily, one a day of a group too): key (the
    field's value; null where events have none), day (with --daily), and REPORT_COLUMNS."""
    for key, day, counts in tally.rows():
        # NaN as "NaN": a number json's scanner takes, which no JSON reader does
        record = {"key": None if key is None else json.loads(key[0], parse_constant=str)
                  if type(key) is tuple else key}
        if tally.daily:
            record["day"] = day
        record.update(zip(REPORT_COLUMNS, counts.values()))
        yield record


# --------------------------------------------------------------------------------------------
# Erase: what `pixel.py erase` takes out of a log file, and how the file is replaced.

ERASE_READ = 1 << 20   # bytes erase reads and writes at once
# How files packed by what logrotate's compresscmd may name start: erase reads plain and
# gzip only, and read as text these would hold no line of anyone.
_OTHER_PACKERS = ((b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"), (b"\x28\xb5\x2f\xfd", "zstd"),
                  (b"\x04\x22\x4d\x18", "lz4"), (b"LZIP", "lzip"), (b"\x1f\x9d", "compress"))
MAX_USER_IDS_SHOWN = 1000     # userIds of erased events erase prints
MAX_FOLLOW_ROUNDS = 16        # reads of the logs for --follow: aliases of aliases
MIN_SHARE_LINES = 10          # --max-share judges a file of as many lines: a share of fewer
                              # says little (2 of 3: the live log an erase has just rotated)


def line_names(people, line):
    """(Whether a log line (bytes) names one of `people`, whether it parsed as JSON, the
    line's userId if it is an event's): an event by its fields, a rejects-log line by what
    it holds and quotes, anything else as a client's raw text."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):   # UnicodeDecodeError too
        record = None
    if not isinstance(record, dict):
        return people.named_in_raw(line.decode("utf-8", "replace"), True), False, None
    # Its userId (for deletion upstream) only where the event is theirs by an id or their
    # own traits: listed for an invite she sent to the address, carol would be deleted too.
    if "reason" in record and "type" not in record:
        event = record.get("event")   # its userId only if the event itself names one
        return people.named_in_reject(record), True, _id_text(event.get("userId")) \
            if isinstance(event, dict) and people.named_in(event, _OWN_EMAIL_PATHS) else None
    own = people.named_in(record, _OWN_EMAIL_PATHS)
    return own or people.named_by_email(record), True, \
        _id_text(record.get("userId")) if own else None


def _needles(people):
    """What a line pixel wrote about one of `people` must hold: (ids, addresses lower-
    cased), as bytes escaped as pixel writes them, for a first look that spares most lines
    the JSON parse; None if no such look can be trusted: with a digest (whose id is not
    known), or an address outside ASCII (whose case changes its \\u escape)."""
    followed = people.followed
    everyone = [more for more in (people, followed, people.truncated(),
                                  followed and followed.truncated()) if more]
    ids = set().union(*(more.ids for more in everyone))
    emails = set().union(*(more.emails for more in everyone))
    if any(more.digests for more in everyone) or not all(map(str.isascii, emails)):
        return None
    escape = json.encoder.encode_basestring_ascii
    return tuple([escape(text)[1:-1].encode("ascii") for text in texts] for texts in (ids, emails))


# What pixel's encoder never writes (an ASCII character escaped, upper-case hex, "\/", a byte
# outside ASCII): a line another tool wrote again (jq, PHP), which the needles may not find.
_FOREIGN_ESCAPE = re.compile(rb"\\(?:/|u00[2-7]|u[0-9a-f]{0,3}[A-F])|[\x80-\xff]")


def _may_name(needles, line):
    if line.startswith(b'{"reason"'):   # a rejects-log line quotes raw input: look closer
        return True
    ids, emails = needles
    if any(needle in line for needle in ids) or _FOREIGN_ESCAPE.search(line):
        return True
    if not emails:
        return False
    lowered = line.lower()
    # The KELVIN SIGN, the one letter outside ASCII that lower() makes ASCII (a k): an
    # address written with it names the person to the parse, so the look lets it by.
    return b"\\u212a" in lowered or any(needle in lowered for needle in emails)


def _refuse_packed(start):
    """OSError if a file starting with the bytes `start` was packed by another tool than gzip."""
    for magic, packer in _OTHER_PACKERS:
        if start.startswith(magic):
            raise OSError(errno.EINVAL, "packed with %s, which pixel does not read: unpack it "
                          "first" % packer)


class _Replayed(io.RawIOBase):
    """A pipe's bytes from its start, after its first bytes `head` were read from it."""

    def __init__(self, head, pipe):
        self.head, self.pipe = head, pipe

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.head:
            data, self.head = self.head[:len(buffer)], self.head[len(buffer):]
        else:
            data = self.pipe.read1(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def open_raw(path):
    """The log `path` opened to read bytes, "-" for stdin. OSError."""
    if path == "-" and sys.stdin is None:
        raise OSError(errno.EBADF, "stdin is closed")
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def open_log_stream(path, raw=None):
    """(A binary stream of the log `path`, "-" for stdin, a pipe too (<(zcat ...)), gzip
    inflated if it starts as gzip does; the file under it, to close: `raw` if it was opened
    already). OSError, for a file another tool packed too."""
    raw = open_raw(path) if raw is None else raw
    try:
        start = raw.read(6)   # all six: a pipe may hand over one byte first
        _refuse_packed(start)
        if raw.seekable():
            raw.seek(-len(start), io.SEEK_CUR)
            stream = raw
        else:
            stream = io.BufferedReader(_Replayed(start, raw), 1 << 20)
    except OSError:
        if raw is not sys.stdin.buffer:
            raw.close()
        raise
    if start.startswith(b"\x1f\x8b"):
        import gzip   # here: only a gzipped file pays for it
        return gzip.GzipFile(fileobj=stream, mode="rb"), raw
    return stream, raw


class FileErasure:
    """One file's erase: its lines read once (scan), those naming one of `people` counted
    and the others written where it is told, keeping where each erased line stood so that
    a checkpoint's or a backfill's offset can be moved into the new file (new_offset)."""

    def __init__(self, path, people, needles=None):
        self.path, self.people, self.needles = path, people, needles
        self.lines = self.erased = self.as_text = 0
        self.replaced = self.scanned = False   # by a copy without them (erase_file); read
        self.user_ids = set()   # of the erased events, for the receivers' deletion APIs
        self.first = b""        # the new file's first 4096 bytes (of its content)
        self._starts, self._before = array.array("q"), array.array("q")

    def scan(self, write=None):
        """Read the file, calling `write(bytes)` with the lines kept. OSError, EOFError or
        zlib.error for one that cannot be read to its end."""
        offset = erased_bytes = kept_bytes = 0
        kept, self.scanned = [], True
        stream, raw = open_log_stream(self.path)
        try:
            for line in stream:
                self.lines += 1
                named = False
                if self.needles is None or _may_name(self.needles, line):
                    named, parsed, user_id = line_names(self.people, line)
                if named:
                    self.erased += 1
                    self.as_text += not parsed
                    if user_id and len(self.user_ids) < MAX_USER_IDS_SHOWN:
                        self.user_ids.add(user_id)
                    self._starts.append(offset)
                    erased_bytes += len(line)
                    self._before.append(erased_bytes)
                elif write is not None:
                    if len(self.first) < 4096:
                        self.first += line[:4096 - len(self.first)]
                    kept.append(line)
                    kept_bytes += len(line)
                    if kept_bytes >= ERASE_READ:
                        write(b"".join(kept))
                        kept, kept_bytes = [], 0
                offset += len(line)
        finally:
            stream.close()
            raw.close()
        if kept:
            write(b"".join(kept))

    def new_offset(self, offset):
        """Where a line that started at `offset` in the old file starts in the new one."""
        index = bisect.bisect_left(self._starts, offset)
        return offset - (self._before[index - 1] if index else 0)

    def new_head(self, offset):
        """(head_bytes, head) as a checkpoint at `offset` in the new file holds them."""
        head_bytes = min(offset, 4096)
        return head_bytes, head_of(self.first[:head_bytes])


def linked_ids(paths, people, emails=None):
    """--follow: a Counter of (field, id) to how many events in the logs at `paths` link it
    to one of `people`: the anonymousId of any event of theirs; an alias's previousId, or its
    userId if the previousId is theirs (a person's former and new userIds); the userId, else
    the anonymousId (a sign-up before its account), of an event whose traits hold an address
    of `emails` (People; not properties.email, which may be whom a person wrote to). A file
    that cannot be read is skipped here; its erase fails later, saying why."""
    linked = collections.Counter()
    for path in paths:
        try:
            stream, raw = open_log_stream(path)
        except OSError:
            continue
        try:
            for line in stream:
                if b'"userId"' not in line and (emails is None or b'"email"' not in line):
                    continue
                try:
                    event = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
                    continue
                user_id, anonymous_id = (_id_text(event.get(field)) for field in _ID_FIELDS[:2])
                if not user_id:
                    if anonymous_id and emails is not None and \
                            emails.named_by_email(event, _OWN_EMAIL_PATHS):
                        linked[("anonymousId", anonymous_id)] += 1
                    continue
                field = "previousId" if event["type"] == "alias" else "anonymousId"
                other = _id_text(event.get(field))
                if other and people._names(user_id):
                    linked[(field, other)] += 1
                if other and field == "previousId" and people._names(other) or \
                        emails is not None and emails.named_by_email(event, _OWN_EMAIL_PATHS):
                    linked[("userId", user_id)] += 1
        except (OSError, EOFError, zlib.error):
            continue
        finally:
            stream.close()
            raw.close()
    return linked


def checkpoints_beside(paths):
    """{path: document} of every checkpoint (the forwarder's, backfills') in the state
    folders beside `paths`; one that cannot be read is left alone."""
    found = {}
    for folder in {os.path.join(os.path.dirname(os.path.abspath(path)), STATE_FOLDER)
                   for path in paths}:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.endswith(".json") and name.startswith(("forward.", "backfill.")):
                try:
                    document = read_checkpoint(os.path.join(folder, name))
                except (OSError, ValueError):
                    continue
                if document is not None:
                    found[os.path.join(folder, name)] = document
    return found


def replaced_checkpoint(document, old, new, erasure, new_path, archive):
    """Checkpoint `document` for a file erase replaces (identity `old`, then `new`, written
    at `new_path`), or None if it names neither. Where it stands and the files a backfill
    sent are added as they are in the new file ("replaced", "done" entries) beside the old,
    so that a kill -9 before or after the rename finds the file that is there."""
    document = json.loads(json.dumps(document))   # a copy
    changed = False
    if (document["device"], document["inode"]) == old:
        offset = erasure.new_offset(document["offset"])
        head_bytes, head = erasure.new_head(offset)
        document["replaced"] = {"inode": new[1], "offset": offset, "head_bytes": head_bytes,
                                "head": head}
        changed = True
    done = document.get("done")
    prefix = "%d:%d:" % old
    for entry in list(done) if isinstance(done, list) else ():
        parts = entry.split(":") if isinstance(entry, str) else ()   # a hand-edited one
        if len(parts) == 4 and entry.startswith(prefix) and parts[2].isdigit():
            if archive:   # LogFile.fingerprint: an archive's size and first bytes on disk
                length = os.stat(new_path).st_size
                with open(new_path, "rb") as handle:
                    head = head_of(handle.read(min(length, 4096)))
            else:
                length = erasure.new_offset(int(parts[2]))
                head = erasure.new_head(length)[1]
            done.append("%d:%d:%d:%s" % (new + (length, head)))
            changed = True
    moved = document.get("moved")
    for entry in list(moved) if isinstance(moved, list) else ():   # a live log's, by hand
        if isinstance(entry, dict) and (entry.get("device"), entry.get("inode")) == old:
            head_bytes, head = erasure.new_head(len(erasure.first))
            moved.append(dict(entry, inode=new[1], head_bytes=head_bytes, head=head))
            changed = True
    return document if changed else None


def settled_checkpoint(document, old):
    """A checkpoint after the rename: the new file only (see replaced_checkpoint)."""
    document = dict(document)
    replaced = document.pop("replaced", None)
    if replaced is not None:
        document.update(replaced)
    if isinstance(document.get("done"), list):
        prefix = "%d:%d:" % old
        document["done"] = [entry for entry in document["done"]
                            if not (isinstance(entry, str) and entry.startswith(prefix))]
    if isinstance(document.get("moved"), list):
        document["moved"] = [entry for entry in document["moved"] if not (
            isinstance(entry, dict) and (entry.get("device"), entry.get("inode")) == old)]
    return document


def erase_file(path, people, *, apply=False, max_share=0.5, checkpoints=None, held=None, names=1):
    """Erase `people`'s lines from the file at `path`: with `apply`, a copy without them
    written beside it (.<name>.erase-<pid>.tmp), synced, given the file's mode, owner and
    times, then renamed over it and the folder synced: a crash leaves the old file whole
    or the new one. `checkpoints` ({path: document}, updated here) follow the file. A file
    where more than `max_share` of the lines match, or not the one `held` (a descriptor
    erase flocked) or changed while read, or of more than `names` names (hard links: a dry
    run's count has a second name erase will remove), is left as it is. Returns the
    FileErasure and a problem (None if none): OSError, EOFError or zlib.error otherwise."""
    erasure = FileErasure(path, people, _needles(people))
    before = os.stat(path)
    if not stat.S_ISREG(before.st_mode):
        return erasure, "not a regular file"
    if held is not None and not os.path.samestat(before, os.fstat(held)):
        return erasure, "not the file erase holds, which a pixel renamed: run erase again"
    with open(path, "rb") as handle:
        start = handle.read(6)
    archive = start.startswith(b"\x1f\x8b")
    _refuse_packed(start)
    problem = _gzip_beside(path, archive)
    if problem is not None:
        return erasure, problem
    if not apply:
        erasure.scan()
        return erasure, _too_common(erasure, max_share) or (
            _hard_links(path, before, names) if erasure.erased else None)
    folder, name = os.path.split(os.path.abspath(path))
    prefix = ".%s.erase-" % name
    for entry in os.listdir(folder):   # the copies erases killed mid-way left: removed
        pid = entry[len(prefix):-4] if entry.startswith(prefix) and entry.endswith(".tmp") else ""
        if pid.isdigit() and not process_alive(int(pid), None):
            os.remove(os.path.join(folder, entry))
    temporary = os.path.join(folder, "%s%d.tmp" % (prefix, os.getpid()))
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                 0o600)
    try:
        with open(fd, "wb", closefd=False) as handle:
            if archive:
                import gzip
                with gzip.GzipFile(filename="", mode="wb", fileobj=handle, compresslevel=6,
                                   mtime=int(before.st_mtime)) as packed:
                    erasure.scan(packed.write)
            else:
                erasure.scan(handle.write)
        problem = _too_common(erasure, max_share) or _changed(path, before, held) or (
            _hard_links(path, before, names) if erasure.erased else None)
        if problem is not None or not erasure.erased:
            return erasure, problem
        if _root() or before.st_uid == os.geteuid():
            os.fchown(fd, before.st_uid, before.st_gid)
        os.fchmod(fd, stat.S_IMODE(before.st_mode))
        os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))   # the order of rotations
        os.fsync(fd)
        # Again, after the slow part, in which a gzip may have begun: done, it would remove
        # the new file by its name, and leave its .gz of the old one.
        problem = _changed(path, before, held) or _gzip_beside(path, archive)
        if problem is not None:
            return erasure, problem
        old, new = (before.st_dev, before.st_ino), (before.st_dev, os.fstat(fd).st_ino)
        moved = {}
        for where, document in (checkpoints or {}).items():
            replaced = replaced_checkpoint(document, old, new, erasure, temporary, archive)
            if replaced is not None:
                write_checkpoint(where, replaced)
                moved[where] = replaced
        os.replace(temporary, path)
        erasure.replaced = True
        if not archive and os.path.lexists(path + ".gz"):   # a gzip began meanwhile, and will
            problem = "erased, but a gzip of it began meanwhile, from the old file: erase " \
                      "%s.gz once it is done" % path   # remove this name when it is
        if held is not None and os.fstat(held).st_nlink:   # a name made since the look
            problem = "erased, but a name given it meanwhile keeps the old file, person " \
                      "included: erase that name too (inode %d on the file system of %s: " \
                      "`find MOUNT -xdev -inum %d`)" % (before.st_ino, folder, before.st_ino)
    finally:
        try:
            os.close(fd)
        finally:
            if os.path.lexists(temporary):   # not renamed over the file: refused, or an error
                os.remove(temporary)
    fd = os.open(folder, os.O_RDONLY)   # the rename synced
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for where, document in moved.items():
        checkpoints[where] = settled_checkpoint(document, old)
        write_checkpoint(where, checkpoints[where])
    return erasure, problem


def _hard_links(path, status, names=1):
    """Why a file of more names than `names` is not replaced, else None."""
    if status.st_nlink <= names:
        return None
    return "it has %d names (hard links): erased by one, it would stay whole by the others; " \
        "remove those (`find %s -samefile %s` lists the ones beside it), then erase again" % (
            status.st_nlink, os.path.dirname(os.path.abspath(path)), path)


def _gzip_beside(path, archive):
    """Why a plain file with a .gz beside it is not replaced, else None: gzip makes the .gz,
    fills it from the file it opened, then removes the file by its name, whichever is there."""
    if archive or not os.path.lexists(path + ".gz"):
        return None
    return "%s.gz is beside it: a gzip of it may be under way; erase %s.gz once it is done " \
        "(and this, if it is still here)" % (path, path)


def _changed(path, before, held):
    now = os.stat(path)
    if (now.st_ino, now.st_size, now.st_mtime_ns) != \
            (before.st_ino, before.st_size, before.st_mtime_ns) or \
            held is not None and not os.path.samestat(now, os.fstat(held)):
        return "it changed while it was read: is a process writing it?"
    return None


def _too_common(erasure, max_share):
    if erasure.lines >= MIN_SHARE_LINES and erasure.erased > max_share * erasure.lines:
        return ("%d of its %d lines match, more than --max-share %g: not erased (an id "
                "as common as that is likely a mistake; if all are this person's, "
                "--max-share 1 erases them)" % (erasure.erased, erasure.lines, max_share))
    return None


# --------------------------------------------------------------------------------------------
# The command line

def pin_cpu(choice):
    """Pin this process and the threads it starts later to one CPU, before any starts; return
    which, or None. With the GIL a second core mostly adds wake-ups across cores each time the
    GIL changes hands (wrk on 2 cores: +32% requests/s kept alive, +53% a connection each)."""
    if choice == "none" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if choice == "auto":
        if len(allowed) < 2:
            return None
        choice = allowed[-1]   # CPU 0 usually takes the most interrupts
    os.sched_setaffinity(0, {choice})
    return choice


def _raise_file_limit(needed):
    """Raise the soft open-file limit toward `needed`: how many of `needed` it allows now."""
    if resource is None:
        return needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return needed
    soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def listen(config, reporter):
    """Pin to a CPU, raise the open-file limit and bind the port, before any file is made:
    (PixelServer, the CPU or None). It listens once serve() is ready to answer."""
    try:
        pinned = pin_cpu(config.cpu)
    except (OSError, OverflowError) as error:   # a CPU this process may not use, or a
        raise StartupError("cannot pin to CPU %s: %s" % (   # number past a C long's
            config.cpu, getattr(error, "strerror", None) or error)) from None
    # A connection holds a socket (two under TLS: see _handshake), and 64 files are kept for
    # the logs, the listener and stdio (a soft limit of 1024 would not fit --max-connections).
    # Under a lower hard limit fewer are served at once, the others waiting in the backlog.
    per = 2 if config.certfile else 1
    connections, needed = config.max_connections, per * config.max_connections + 64
    soft = _raise_file_limit(needed)
    if soft < needed:
        connections = max(1, (soft - 64) // per)
        reporter.say("the open-file limit is %d, so at most %d connections are served at once, "
                     "not --max-connections %d" % (soft, connections, config.max_connections))
    # A small stack is enough: the deepest path is json's C scanner on a payload whose
    # depth the core has capped at MAX_DEPTH.
    threading.stack_size(THREAD_STACK_SIZE)
    tls = (config.certfile, config.keyfile) if config.certfile else None
    try:
        server = PixelServer((config.host, config.port), max_connections=connections,
                             request_timeout=config.request_timeout,
                             idle_timeout=config.idle_timeout, reporter=reporter,
                             reuse_port=config.reuse_port, tls=tls, listening=False)
    except ValueError as error:   # load_tls, in words
        raise StartupError("cannot serve HTTPS: %s" % error) from None
    except AttributeError:   # no socket.SO_REUSEPORT on this system
        raise StartupError("--reuse-port: this system has no SO_REUSEPORT") from None
    except OSError as error:
        raise _cannot_listen(config.host, config.port, error) from None
    return server, pinned


def _cannot_listen(host, port, error):
    return StartupError("cannot listen on %s port %d: %s%s" % (
        host, port, error.strerror or error, "; another process has it: stop it, or give "
        "another --port" if error.errno == errno.EADDRINUSE else ""))


def serve(server, pixel, pinned, previous, stopped=()):
    """Serve `pixel` until SIGTERM or SIGINT (one already in `stopped`: at once); SIGHUP
    reopens the logs and reloads TLS. The handlers replaced go in `previous` (those there
    kept); from the stop on, those signals are ignored."""
    reloading, asked = threading.Lock(), []   # one reload runs, and one more may wait

    def reopen():
        with reloading:   # a storm of SIGHUPs costs two reloads, not one each (a helper
            asked.clear()   # measured 50 in 1 s: 95% fewer answers, 320 MiB more RSS)
            pixel.reopen()
            server.reload_tls()

    def say(line):   # stdout: a supervisor's pipe, which may be gone or full
        try:
            write_line(sys.stdout, line + "\n")
        except (OSError, ValueError):
            pixel.reporter.lost += 1

    # A handler runs on this thread, between two bytecodes of serve_forever(), maybe inside
    # a lock it holds (starting a thread takes one): it only leaves word for service_actions.
    def reopen_soon(signum, frame):
        if not asked:   # else one not yet begun will read the files as they are now
            asked.append(signum)
            server.deferred.append(reopen)

    def stop(signum, frame):   # answers from now on close their connections
        server.stop_asked = server.pool.stopping = True

    server.serve_app(pixel.app)
    host, port = server.server_address[:2]
    try:   # only now: a client that connects is answered at once, not after the warm-up
        server.server_activate()
    except OSError as error:   # a second pixel bound beside one not yet listening (SO_REUSEADDR)
        raise _cannot_listen(host, port, error) from None
    # Before the line that says we listen: whoever waits for it may signal at once. SIGUSR1,
    # SIGUSR2 and SIGQUIT from a supervisor or an operator must not take the service down.
    handlers = {"SIGTERM": stop, "SIGINT": stop, "SIGHUP": reopen_soon,
                "SIGUSR1": signal.SIG_IGN, "SIGUSR2": signal.SIG_IGN, "SIGQUIT": signal.SIG_IGN}
    if threading.current_thread() is threading.main_thread():
        for name, handler in handlers.items():
            signum = getattr(signal, name, None)   # Windows has only some of them
            if signum is not None:
                previous.setdefault(signum, signal.signal(signum, handler))
    if stopped:   # during the start, while main() held the signals
        stop(None, None)
    say("pixel %s listening on %s://%s:%d/ writing events to %s and rejects to %s%s" % (
        __version__, server.scheme, "[%s]" % host if ":" in host else host, port,
        pixel.events.path, pixel.rejects.path, "" if pinned is None else " (on CPU %d)" % pinned))
    pixel.start()
    try:
        server.serve_forever(STOP_POLL)
    except StopAsked:
        pass
    finally:
        # The stop is under way: a second SIGTERM, a Ctrl-C or logrotate's SIGHUP must not
        # kill it (-15, a traceback) while it answers what it took and closes the logs.
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        server.drain()
    say("pixel stopped: %d events written, %d rejected, %d lines not written" % (
        pixel.events.written, pixel.recorder.rejected_by_reason.total(),
        pixel.events.failed + pixel.rejects.failed))
    return 0


def main(argv=None, environ=None):
    """Run the server until SIGTERM or SIGINT, or a subcommand (forward, report, erase) to its end;
    return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    commands = {"forward": forward_files, "report": report_files, "erase": erase_command}
    if argv and argv[0] in commands:
        try:
            return commands[argv[0]](argv[1:])
        except KeyboardInterrupt:   # a second Ctrl-C, in a command's own clean-up
            Reporter().say("%s: stopped" % argv[0])
            return 130
    config = parse_args(argv, environ)
    reporter, previous, stopped = Reporter(), {}, []
    server = pixel = None
    if threading.current_thread() is threading.main_thread():   # a stop during the start,
        for signum in (signal.SIGTERM, signal.SIGINT):          # kept for serve(): not -15
            previous[signum] = signal.signal(signum, lambda signum, frame: stopped.append(signum))
        for name in ("SIGUSR1", "SIGUSR2", "SIGQUIT", "SIGHUP"):   # as serve() does; and a
            signum = getattr(signal, name, None)   # reopen: the files are being opened anyway
            if signum is not None:
                previous[signum] = signal.signal(signum, signal.SIG_IGN)
    try:
        server, pinned = listen(config, reporter)   # the port first: a start that cannot
        pixel = Pixel(config, reporter=reporter)    # have it makes no file
        return serve(server, pixel, pinned, previous, stopped)
    except StartupError as error:
        reporter.say(str(error))
        if pixel is not None:   # serve() could not listen: the files made at start go too
            pixel.close(discard=True)
            pixel = None
        return 1
    finally:
        if pixel is not None:
            pixel.close()
        if server is not None:
            server.server_close()
        if __name__ != "__main__":   # imported: the caller's handlers back (None: one set
            for signum, handler in previous.items():   # in C, not Python's to restore); run,
                if handler is not None:                 # none until the process is gone
                    signal.signal(signum, handler)


def build_forward_parser():
    parser = argparse.ArgumentParser(prog="pixel.py forward", description=(
        "Send pixel log files (rotated ones, gzipped archives, a rejects log's refused events) "
        "to a Segment-compatible API once, in order, and exit. A checkpoint records what the "
        "receiver took: the same command run again goes on from there, skipping files already "
        "sent."))
    parser.add_argument("--to", required=True, type=_forward_url, metavar="URL",
                        help="the API's base URL; batches go to URL/v1/batch (a URL given "
                             "with /v1/batch or /v1 at its end is taken without it)")
    parser.add_argument("--write-key", type=_nonempty, metavar="KEY", help=(
        "send every event under this writeKey, not its own; refused, it stops the run. Each "
        "event's own key refused, its events go to the rejects log and the run goes on"))
    parser.add_argument("--batch", type=_batch_size, default=DEFAULT_FORWARD_BATCH,
                        metavar="N", help="events per batch (default: %(default)s)")
    parser.add_argument("--ca", type=_ca_file, metavar="FILE",
                        help="a CA bundle to trust besides the system's")
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_FORWARD_TIMEOUT, metavar="S",
                        help="seconds the receiver has to answer (default: %(default)s)")
    parser.add_argument("--checkpoint", metavar="PATH", help="the checkpoint file "
                        "(default: .pixel/backfill.<first FILE>.json beside the first FILE)")
    parser.add_argument("--rejects", metavar="PATH", help="where refused events go "
                        "(default: %s beside the first FILE; not the server's rejects "
                        "log, which it holds)" % FORWARD_REJECTS_NAME)
    parser.add_argument("files", nargs="+", metavar="FILE")
    return parser


def forward_files(argv=None):
    """`pixel.py forward`: send log files once. 0 once all is sent; 1 if it stopped first
    (a signal, a refused --write-key, nothing at the URL), could not read a file to its end,
    or was given one that is not an event log."""
    parser = build_forward_parser()
    args = parser.parse_args(argv)
    reporter, files = Reporter(), args.files
    if args.checkpoint is None:   # version 1.0's checkpoint, which a glob may have passed
        legacy = os.path.abspath(files[0]) + ".backfill"
        files = [path for path in files if not (
            os.path.abspath(path) in (legacy, legacy + ".tmp") and os.path.isfile(path))]
    for path in files:   # before anything is made beside them, or opened
        try:
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):   # /dev/zero would be read for ever, a FIFO block
                raise _not_regular(path, mode)
        except OSError as error:
            reporter.say("cannot forward %s: %s" % (path, error.strerror or error))
            return 1
    rejects_path = args.rejects or os.path.join(os.path.dirname(os.path.abspath(files[0])),
                                                FORWARD_REJECTS_NAME)
    # Its own refusals appended to one of the files would be read again, and again.
    if os.path.realpath(rejects_path) in map(os.path.realpath, files):
        parser.error("%s is one of the files to send: give --rejects another file for "
                     "what is refused this time" % rejects_path)
    try:
        refuse_root_link(rejects_path)
    except OSError as error:
        parser.error("--rejects %s: %s" % (rejects_path, error.strerror))
    folder = os.path.dirname(state_path(files[0], "backfill"))
    made = args.checkpoint is None and not os.path.lexists(folder)   # removed on a failure
    try:
        checkpoint = args.checkpoint or adopt_legacy_state(files[0], "backfill", reporter)
        receiver = Receiver(args.to, cafile=args.ca, timeout=args.timeout,
                            configured_keys=[args.write_key] if args.write_key else (),
                            gives_up=True, reporter=reporter)
        rejects = LogWriter(rejects_path, reporter=reporter)
    except OSError as error:
        reporter.say("cannot start: %s" % error)
        _remove_empty(folder, made)
        return 1
    forwarder = Forwarder(receiver, rejects, write_key=args.write_key,
                          batch_events=args.batch, reporter=reporter)
    # Before any file is opened: a stop must be heard while a FIFO or a huge backlog waits.
    previous = {signum: signal.signal(signum, lambda signum, frame: forwarder.stop())
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            forwarder.add_files(files, checkpoint, erase_at_work)
        except (OSError, ValueError) as error:   # not a file, not a log, a bad checkpoint
            reporter.say(str(error) if isinstance(error, ValueError) else "%s %s: %s" % (
                "cannot read the checkpoint" if error.filename in (None, checkpoint)
                else "cannot forward", error.filename or checkpoint, error.strerror or error))
            rejects.close(discard=True)   # nothing was sent: leave no empty rejects log behind
            _remove_empty(folder, made)
            return 1
        complete = forwarder.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        forwarder.close()
        rejects.close()
    refused = forwarder.refused.total()
    print("pixel forward: %d event(s) sent to %s, %d refused%s%s%s%s" % (
        forwarder.sent, args.to, refused, " (written to %s)" % rejects_path if refused else "",
        ", %d rejects-log line(s) with no event to send skipped" % forwarder.skipped
        if forwarder.skipped else "",
        "; %d file(s) could not be read to their end" % len(forwarder.truncated)
        if forwarder.truncated else "",
        "" if complete else "; stopped before the end: run the same command again to go on"),
        flush=True)
    if receiver.gave_up:
        reporter.say(receiver.gave_up)
    for problem in forwarder.truncated:
        reporter.say("%s; every whole line before that was sent" % problem)
    return 0 if complete and not forwarder.truncated else 1


def build_report_parser():
    parser = argparse.ArgumentParser(prog="pixel.py report", description=(
        "Count the events of pixel's events logs by a field: events, distinct users (userId, "
        "else anonymousId), those labelled machine (context.machine), and both again without "
        "machines. Reads plain and gzipped files and - (stdin), a line at a time."))
    parser.add_argument("--by", type=_field_path, default="event", metavar="FIELD", help=(
        "the field to group by, a dotted path such as properties.campaign (default: %(default)s)"))
    parser.add_argument("--event", metavar="NAME", help="count only events of this name")
    parser.add_argument("--type", choices=EVENT_TYPES, help="count only events of this type")
    parser.add_argument("--since", type=_report_time, metavar="DATE", help="count only events "
                        "received at or after DATE (YYYY-MM-DD, UTC, or an ISO-8601 time)")
    parser.add_argument("--until", type=lambda text: _report_time(text, end=True), metavar="DATE",
                        help="count only events received up to DATE, a date's whole day")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table", help=(
        "aligned text with a total row, CSV, or one JSON object a row (default: %(default)s)"))
    parser.add_argument("--daily", action="store_true",
                        help="add a row a day (UTC, by receivedAt) under each group, with a bar")
    parser.add_argument("files", nargs="+", metavar="FILE")
    return parser


def _field_path(text):
    if "" in text.split("."):   # "" too
        raise argparse.ArgumentTypeError("not a dotted field path such as "
                                         "properties.campaign: %r" % text)
    return text


def _report_time(text, end=False):
    try:
        return report_time(text, end)
    except ValueError:
        raise argparse.ArgumentTypeError("not a date (YYYY-MM-DD) or an ISO-8601 time: %r"
                                         % text) from None


def report_files(argv=None, stdout=None):
    """`pixel.py report`: the counts of the events in FILEs, on stdout. 0; 1 if a file
    could not be read to its end (what was read is counted, and stderr says where it
    stopped); 2 for a bad command line; 130 if SIGINT stopped it."""
    args = build_report_parser().parse_args(argv)
    if stdout is None and hasattr(sys.stdout, "reconfigure"):   # an ASCII-only locale: é as \xe9
        sys.stdout.reconfigure(errors="backslashreplace")
    stdout, reporter = stdout or sys.stdout, Reporter()
    if stdout is None:
        reporter.say("report: stdout is closed: nowhere to write the report")
        return 1
    tally = Tally(args.by, event=args.event, kind=args.type, since=args.since,
                  until=args.until, daily=args.daily)
    status, seen, failed = 0, {}, []

    def take(path, now=False):
        """The file at `path`, open, or None: it cannot be opened, or is open already; ()
        for later, at the open-file limit (unless `now`)."""
        name = "stdin" if path == "-" else path
        try:
            raw = open_raw(path)
            found = os.fstat(raw.fileno())
        except OSError as error:
            if error.errno == errno.EMFILE and not now:
                return ()
            reporter.say("report: cannot read %s: %s" % (name, error.strerror or error))
            return failed.append(path)
        identity = (found.st_dev, found.st_ino)
        if identity in seen and stat.S_ISREG(found.st_mode):
            reporter.say("report: %s is %s again: counted once" % (name, seen[identity]))
            return raw.close()
        seen[identity] = path
        return raw

    # Every file opened before one is read, as many as the open-file limit holds: a logrotate
    # meanwhile (events.jsonl to .1, .1 to .2) would have one read twice and another never.
    room = _raise_file_limit(len(args.files) + 32)
    opened, name = [[path, ()] for path in args.files], "the files"   # (): opened when read
    try:
        import gzip   # now: at the open-file limit, an import could not open its module
        for entry in opened[:max(0, room - 32)]:
            entry[1] = take(entry[0])
            if entry[1] == ():   # at the limit: this one and the rest opened when read
                break
        for entry in opened:
            name, raw = "stdin" if entry[0] == "-" else entry[0], entry[1]
            if raw == ():   # past the limit: opened now
                raw = entry[1] = take(entry[0], now=True)
            if raw is None:
                continue
            try:
                stream, raw = open_log_stream(name, raw)
            except OSError as error:
                reporter.say("report: cannot read %s: %s" % (name, error.strerror or error))
                status = 1
                continue
            try:
                # read1: what one read of the file gives. A GzipFile's read() gathers, and
                # drops all it gathered when it meets damage.
                tally.add_lines(log_lines(stream.read1))
            except (OSError, EOFError, zlib.error) as error:   # gzip's damage is one of these
                reporter.say("report: cannot read %s to its end: %s; what was read before is "
                             "counted" % (name, getattr(error, "strerror", None) or error))
                status = 1
            finally:
                if stream is not raw:
                    stream.close()   # a GzipFile, which leaves the file under it open
                if raw is not sys.stdin.buffer:
                    raw.close()
    except KeyboardInterrupt:   # Ctrl-C on a long log, on /dev/zero, or a FIFO: no traceback
        reporter.say("report: stopped while reading %s; nothing is reported" % name)
        for _, raw in opened:
            if raw and raw is not sys.stdin.buffer:
                raw.close()
        return 130
    status = 1 if failed else status
    if tally.skipped:
        reporter.say("report: skipped %d line(s) that are not events (torn, not JSON, or "
                     "not an event: a checkpoint, say)" % tally.skipped)
    try:
        if args.format == "table":
            stdout.write(report_table(tally))
        elif args.format == "json":
            for record in report_records(tally):
                stdout.write(json.dumps(record, ensure_ascii=True) + "\n")
        else:
            import csv   # here: only --format csv pays for it
            writer = csv.writer(stdout, lineterminator="\n")
            writer.writerow(["key"] + ["day"] * tally.daily + list(REPORT_COLUMNS))
            writer.writerows(map(_csv_cell, record.values()) for record in report_records(tally))
        stdout.flush()
    except OSError as error:   # | head (EPIPE): the reader has what it wanted; or a full disk
        if error.errno != errno.EPIPE:
            reporter.say("report: cannot write the report: %s" % (error.strerror or error))
            status = 1
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())   # for the flush at exit
    return status


def _csv_cell(value):
    """A CSV cell: counts as they are, no value as nothing, any other as JSON; text that a
    spreadsheet would run as a formula (=, +, -, @, a tab first: a key is whatever a pixel
    URL said) starts with a quote, as OWASP advises; a CR is escaped, as a row may end in it."""
    if value is None or type(value) is int:
        return "" if value is None else value
    text = value if type(value) is str else json.dumps(value, ensure_ascii=True)
    text = _printable(text, keep="\t\n")   # as the table does; these two csv quotes
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t")) else text


def build_erase_parser():
    parser = argparse.ArgumentParser(prog="pixel.py erase", description=(
        "Erase a person from pixel's log files (events and rejects logs, plain or gzipped, "
        "rotated or live, beside a running pixel or not): each file is replaced whole, without "
        "that person's lines. A dry run unless --apply."))
    for flag, meta, help in (
            ("--user-id", "ID", "a userId (also matched as anonymousId and previousId)"),
            ("--anonymous-id", "ID", "an anonymousId (also matched as userId and previousId)"),
            ("--email", "ADDRESS", "an email address, matched lower-cased against "
             "traits.email, context.traits.email and properties.email")):
        parser.add_argument(flag, action="append", default=[], metavar=meta,
                            help=help + "; repeatable; sha256:HEX of it too")
    parser.add_argument("--ledger", metavar="FILE", help="erase again everyone an erase "
                        "ledger (.pixel/erase-ledger.json) names: after restoring a backup")
    parser.add_argument("--follow", action="store_true", help="also erase the anonymousIds "
                        "the logs link to a given userId, or one --ledger names (its events "
                        "of any type that carry both), in events with no other userId, and "
                        "the ids its aliases link it to, theirs in turn")
    parser.add_argument("--apply", action="store_true", help="erase; without it, only say "
                        "what would go")
    parser.add_argument("--max-share", type=_share, default=0.5, metavar="FRACTION",
                        help="leave alone a file in which more than this share of the lines "
                             "match (default: %(default)s)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="log files: events.jsonl*, "
                        "rejects.jsonl* ...")
    return parser


_share = _checker("_share", (int, float), float, lambda number: 0 < number <= 1,
                  "must be above 0 and at most 1")


def erase_command(argv=None, stdout=None):
    """`pixel.py erase`: 0 when all that was asked is done, 1 if a file could not be (a
    line each on stderr), 2 for a bad command line."""
    parser = build_erase_parser()
    args = parser.parse_args(argv)
    stdout, reporter = stdout or sys.stdout, Reporter()
    try:
        for value in args.email:
            if "@" not in value and value.strip()[:7].lower() != "sha256:":
                raise ValueError("--email %r is not an address" % value[:80])
        earlier = ledger_ids(args.ledger) if args.ledger else dict.fromkeys(LEDGER_IDS, ())
        # --follow starts from a ledger's userIds too: a former userId, whose alias an earlier
        # erase took, links what came since only so. Not from its other ids: an anonymousId
        # or an address (or its truncated form, another's) would reach past that erase.
        user_ids = People(args.user_id + list(earlier["user_ids"]))
        people = People(args.user_id + args.anonymous_id + args.email + list(earlier["ids"]))
        for digest in earlier["followed"]:
            people.follow(digest)
        people.truncated_digests.update(earlier["truncated"])   # in what is quoted alone
    except (OSError, ValueError) as error:
        parser.error(_people_error(error))
    if not people:
        parser.error("name someone: --user-id, --anonymous-id, --email or --ledger")
    second = second_names(args.files)
    for name, log in sorted(second.items()):   # _hold_for_erase removes it
        reporter.say("erase: %s is a second name of %s: erased once, as that" % (name, log))
    args.files = [path for path in args.files if path not in second]
    # A dry run leaves them: a log may have as many names more (erase_file's `names`).
    second_of = collections.Counter(os.path.realpath(log) for log in second.values()
                                    if not args.apply)
    # An address's events give its userIds (an identify's traits.email), followed on: the
    # attack pass's `--email E --follow` erased the identify alone, and with it the link.
    emails = People(args.email) if args.email else None
    if args.follow and not (user_ids or emails):
        stdout.write("--follow: nothing to follow from: it follows --user-id, --email and "
                     "a --ledger's userIds\n")
    elif args.follow:
        own = People(args.user_id + list(earlier["user_ids"]))
        for _ in range(MAX_FOLLOW_ROUNDS + 1):   # a new userId links on; the last: nothing?
            linked = sorted((link, count) for link, count in linked_ids(
                args.files, user_ids, emails).items() if link[0] == "anonymousId" or
                not own._names(link[1]))
            more = [other for (field, other), _ in linked
                    if field != "anonymousId" and not user_ids._names(other)]
            for other in more:
                user_ids.add(People.literal(other))
            if not more:
                break
        else:   # an erase that stopped here would take the links to the rest with it
            reporter.say("erase: --follow: aliases link on past %d rounds (to %s): nothing "
                         "erased; name those too with --user-id" % (
                             MAX_FOLLOW_ROUNDS, ", ".join(more[:10])))
            return 1
        for (field, other), count in linked:
            # An alias's ids are the person's own userIds, named whatever else an event
            # holds; an anonymousId, a browser's, may be another person's too (People.follow).
            (people.follow if field == "anonymousId" else people.add)(
                People.literal(other))
            stdout.write("--follow: %s %s (%d event(s))\n" % (field, other, count))
        if any(field == "anonymousId" for (field, _), _ in linked):
            stdout.write("--follow: an event with another userId is kept, whatever its "
                         "anonymousId\n")
    status, requests, locks, files, results, finished = 0, [], {}, [], [], False
    for folder in {os.path.dirname(os.path.realpath(path)) for path in args.files}:
        if args.apply:   # what killed erases left behind
            sweep_erase_requests(folder)
    # A forwarding pixel's live logs first: its answer holds the forwarder, whose descriptors
    # of files moved by hand (named anywhere in the list) keep the pixel's flock on them.
    try:
        # A rotated file named alone, of a log a running pixel writes: that pixel's forwarder
        # must wait, as for its live log (which is not erased unless named), or the files it
        # has parked come back replaced, unknown to it (the attack pass: 2,880 events lost).
        named = {os.path.realpath(path) for path in args.files}
        held_up = {}   # live log -> the OSError of a pixel that did not let it go
        for log in sorted({_running_log(path) for path in named} - {None} - named) \
                if args.apply else ():
            try:
                _hold_for_erase(log, requests, locks, reporter, refused=[])
            except OSError as error:
                held_up[log] = error
        for path in sorted(args.files, key=lambda path: not os.path.exists(
                state_path(os.path.realpath(path), "forward"))):
            real = os.path.realpath(path)   # a link is not replaced: the file it names is,
            refused = []                    # and a pixel looks for requests beside that
            try:
                if args.apply:
                    refuse_root_link(path)
                log = _running_log(real) if held_up else None   # a look at the file: once
                if log in held_up:
                    raise held_up[log]
                held = _hold_for_erase(real, requests, locks, reporter, refused=refused) \
                    if args.apply else [real]
            except OSError as error:
                refused.append((path, error))
                held = []
            for name, error in refused:
                if _deleted_rotation(name, error, reporter):
                    results.append({"path": name, "status": "gone"})
                else:
                    reporter.say("erase: %s: %s: not erased" % (name, error.strerror or error))
                    status = 1
            files += [name for name in held if name not in files]
        if not files:
            return status
        ledger = os.path.join(os.path.dirname(os.path.abspath(args.files[0])), STATE_FOLDER,
                              "erase-ledger.json")
        if args.apply:
            try:   # no erase without its record
                _append_ledger(ledger, people, "started", [], user_ids)
            except OSError as error:
                reporter.say("erase: cannot write the ledger %s: %s; nothing erased"
                             % (ledger, error.strerror or error))
                return 1
        checkpoints = checkpoints_beside(files)
        user_ids_seen = set()
        for path in files:
            held = locks.get(os.path.realpath(path))
            try:
                erasure, problem = erase_file(
                    path, people, apply=args.apply, max_share=args.max_share, held=held,
                    checkpoints=checkpoints, names=1 + second_of[os.path.realpath(path)])
            except (OSError, EOFError, zlib.error) as error:
                kept = os.fstat(held) if held is not None else None
                if kept is not None and kept.st_nlink and isinstance(error, FileNotFoundError):
                    error.strerror = "deleted by this name since, but another name keeps it " \
                        "(inode %d: `find MOUNT -xdev -inum %d`): erase that one" % (
                            kept.st_ino, kept.st_ino)   # --keep deleted this name, not the file
                elif _deleted_rotation(path, error, reporter):
                    results.append({"path": path, "status": "gone"})
                    continue
                erasure, problem = None, "cannot erase it: %s" % (
                    getattr(error, "strerror", None) or error)
            if problem is not None:
                reporter.say("erase: %s: %s" % (path, problem))
                status = 1
            if erasure is None:
                results.append({"path": path, "status": "failed"})
                continue
            user_ids_seen |= erasure.user_ids
            left = problem is not None and not erasure.replaced
            results.append({"path": path, "lines": erasure.lines, "erased": erasure.erased,
                            "as_text": erasure.as_text, "status": "refused" if left else
                            "erased" if args.apply else "dry run"})
            # Not "would erase" for a file an --apply run leaves alone (a newcomer's find), nor
            # "0 of 0" for one left before it was read (a .gz beside it, not the file held).
            stdout.write("%s: %s %d of %d line(s)%s\n" % (
                path, "left alone (see stderr), matching" if left else "erased"
                if args.apply else "would erase", erasure.erased, erasure.lines,
                " (%d matched as text: not JSON)" % erasure.as_text if erasure.as_text else "")
                if erasure.scanned else "%s: left alone (see stderr), unread\n" % path)
        if args.apply:
            try:
                _append_ledger(ledger, people, "partial" if status else "done", results, user_ids)
                stdout.write("ledger: %s\n" % ledger)
            except OSError as error:
                reporter.say("erase: cannot write the ledger %s: %s; its last line says "
                             "started" % (ledger, error.strerror or error))
                status = 1
        else:
            stdout.write("dry run: nothing changed; --apply erases\n")
        if user_ids_seen:
            stdout.write("userIds to delete at Segment or RudderStack too (their deletion "
                         "APIs take userIds): %s\n" % ", ".join(sorted(user_ids_seen)))
        finished = True
    except KeyboardInterrupt:   # Ctrl-C: a file replaced is whole, one being copied untouched
        reporter.say("erase: stopped before it was done: run it again")
        return 130
    finally:
        EraseRequest.finish(requests, done=finished and not status)
        for fd in locks.values():
            os.close(fd)
    return status


def _deleted_rotation(path, error, reporter):
    """Whether `error` says that a file a glob of a log's files could have named is gone: named as
    pixel's rotation names one, beside that log or its other rotations, and older than each of
    those left (and than now). --keep deleted it since the shell named it, the oldest first, and
    nothing in it is left to erase (said). A name that sorts among the files left, or after them,
    was never there: a mistake. One gzipped since is not gone: `error` is made to say so."""
    if not isinstance(error, FileNotFoundError):
        return False
    if os.path.lexists(path + ".gz"):   # gzipped since (cron, logrotate): not gone
        error.strerror = "gzipped since it was named: run erase again with %s.gz" % path
        return False
    match = _ROTATED.search(os.path.basename(path))
    if not match or not match.group(1):
        return False
    log, named = path[:len(path) - len(match.group(0))], _rotation_key(match)
    try:
        left = _rotations(log)
        if not os.path.isfile(log) and not left:
            return False
    except OSError:   # no such folder
        return False
    if named >= (left[0][:2] if left else (_stamp(time.time()), 0)):
        return False
    reporter.say("erase: %s: gone since it was named (--keep deletes the oldest): nothing "
                 "in it to erase" % path)
    return True


def _open_rotating(path):
    """open_file(path), waiting up to NEXT_FILE_GRACE s for a log that has rotated files to
    be at its path again: a running pixel renames it, then makes the next one (ms)."""
    deadline = time.monotonic() + NEXT_FILE_GRACE
    while True:
        try:
            return open_file(path)
        except FileNotFoundError:
            if time.monotonic() > deadline or not pixel_rotations(path):
                raise
            time.sleep(0.01)


def _hold_for_erase(path, requests, locks, reporter, live=True, refused=None):
    """The files to erase for `path`, each held (flocked: a pixel starting meanwhile waits):
    `path`; or, if a running pixel writes it, every rotated file of that log, the last one
    rotated at erase's request (EraseRequest), so that none rotated since the shell's glob is
    missed. OSError for one that cannot be held; but a live log's rotated file that cannot be
    goes in `refused` as (path, OSError), and the others are held all the same."""
    if os.path.realpath(path) in locks:   # held already: a rotation of a live log given
        return [path]
    fd = _open_rotating(path) if live else open_file(path)
    status = os.fstat(fd)
    if status.st_nlink > 1 and any(os.path.samestat(status, os.fstat(other))
                                   for other in locks.values()):   # held by another name:
        os.close(fd)   # erase's own flock is no running pixel's; erase_file judges the names
        return [path]
    request = EraseRequest(path, reporter)   # one erase a file, and a pixel that starts
    try:                                     # meanwhile waits for it (open_logs)
        request.claim()
        requests.append(request)
        if fcntl is not None:
            if live and _maybe_next(os.fstat(fd)):   # a pixel's next file: not flocked here,
                raise BlockingIOError                # or the pixel's own flock fails
            if not _flock_exclusive(fd):
                raise OSError(errno.EBUSY, "a pixel.py forward is sending it: erase it when "
                              "that is done, or stop it first", path)
            # Free, but renamed since it was opened (claim() syncs: milliseconds)? A pixel
            # rotated it, and writes the file at the path now: that one is its live log. Or
            # free, but that pixel's next file, which it has yet to flock (_maybe_next)?
            try:
                status = os.fstat(fd)
                moved = live and (not os.path.samestat(status, os.stat(path)) or
                                  _maybe_next(status))
            except FileNotFoundError:   # between the pixel's rename and its next file
                moved = True
            if moved:
                raise BlockingIOError
            if live:   # no pixel writes it, or starts till erase ends: a rotation's name goes
                remove_second_name(path, (status.st_dev, status.st_ino), reporter)
    except BlockingIOError:   # a running pixel writes it, or has just rotated it
        os.close(fd)
        if not live:
            raise OSError(errno.EBUSY, "a running pixel still writes it", path) from None
        # False: the pixel ended meanwhile, and the file is ours now; it may have rotated
        # it first (answered or not), so its rotated files are looked for all the same.
        found = [path] if request.wait_ready(lambda: _flock_free(path, locks)) is False else []
        for rotated in pixel_rotations(path):
            try:
                found += _hold_for_erase(rotated, requests, locks, reporter, False)
            except FileNotFoundError:   # --keep deleted it meanwhile
                continue
            except OSError as error:   # a backfill sends it: it alone keeps the person
                if refused is None:
                    raise
                refused.append((rotated, error))
        return found
    except OSError:
        os.close(fd)
        raise
    locks[os.path.realpath(path)] = fd
    return [path]


def _running_log(path):
    """The log that `path` is a rotated file of (pixel's or logrotate's name), if a running
    pixel writes it (holds its flock); else None."""
    match = _ROTATED.search(os.path.basename(path))
    if match is None or fcntl is None:
        return None
    log = path[:len(path) - len(match.group(0))]
    try:
        fd = open_file(log)
    except OSError:   # none, or not a file
        return None
    try:   # free: nobody writes it (a backfill's shared flock is no writer). A pixel's next
        # file is not flocked here: its own flock, taken a moment later, would fail, and the
        # lines it writes then (answered pixels) with it
        return log if _maybe_next(os.fstat(fd)) or not _flock_shared(fd) else None
    except OSError:   # no flock on this file system
        return None
    finally:
        os.close(fd)


def _flock_exclusive(fd):
    """Take an exclusive flock of `fd`: True when taken; BlockingIOError if another process
    holds one (a running pixel); False if others hold shared ones (pixel.py forward's,
    LogFile.share). A holder that lets go between the looks is not taken for either."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        if not _flock_shared(fd):
            raise
    try:   # ours, shared now, becomes exclusive if no one else shares it
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _maybe_next(status):
    """Whether a file no one holds may be a pixel's next log, made by its rotation but not
    flocked yet: empty, and made in the last NEXT_FILE_GRACE s. One older (the pixel died),
    or written to, is no one's."""
    return not status.st_size and abs(time.time() - status.st_ctime) < NEXT_FILE_GRACE


def _flock_free(path, locks):
    """Take the flock of `path` if it is free (kept in `locks`): True if taken; False if held or
    _maybe_next; None if nothing is at it (the pixel is between the rename and the next file)."""
    try:
        fd = open_file(path)
    except FileNotFoundError:
        return None
    try:
        if _maybe_next(os.fstat(fd)):
            raise BlockingIOError
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not os.path.samestat(os.fstat(fd), os.stat(path)):   # rotated (and let go of) since
            raise BlockingIOError                                # it was opened: not the log
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return False
    locks[os.path.realpath(path)] = fd
    return True


def _append_ledger(path, people, status, files, user_ids=None):
    """One line of the erase ledger: when, who (as digests only), what was done where; which
    of them are `user_ids`, those a --follow again starts from."""
    make_state_folder(path)
    ids = people.digested(False)
    data = (json.dumps({"time": format_time(time.time()), "pid": os.getpid(),
                        "status": status, "ids": ids, "files": files,
                        "truncated": sorted(set(people.digested()).difference(ids)),
                        "followed": people.followed.digested() if people.followed else [],
                        "user_ids": user_ids.digested(False) if user_ids else []},
                       sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
    try:
        made = os.fstat(fd)
        if _root() and not made.st_size and made.st_nlink == 1:   # new: the service's user's,
            owner = os.stat(os.path.dirname(path))   # as make_state_folder makes .pixel
            os.fchown(fd, owner.st_uid, owner.st_gid)
        if os.write(fd, data) != len(data):   # a full disk takes what fits: cut it off, or
            os.ftruncate(fd, made.st_size)    # the next line is glued to it, and --ledger
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)   # refuses it all
        os.fsync(fd)
    finally:
        os.close(fd)


LEDGER_IDS = ("ids", "followed", "user_ids", "truncated")   # what a ledger line names


def ledger_ids(path):
    """{field of LEDGER_IDS: the digests an erase ledger's lines name}: everyone named, the ids
    --follow added, the userIds among them, and the truncated forms (People.truncated) of their
    addresses, to be matched in what is quoted alone (an older ledger has no user_ids, and its
    truncated forms among the ids). ValueError for a file that is not one; OSError."""
    found = {field: set() for field in LEDGER_IDS}
    with open(open_file(path), "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                entry = json.loads(line)
                lists = {field: entry[field] if field == "ids" else entry.get(field, [])
                         for field in LEDGER_IDS}
                if not all(isinstance(value, list) and all(isinstance(text, str) for text in
                                                           value) for value in lists.values()):
                    raise TypeError   # a string's letters would each be an id
            except (ValueError, KeyError, TypeError):   # TypeError: not an object
                raise ValueError("%s line %d: not an erase ledger line" % (path, number))
            try:
                People(sum(lists.values(), []))   # each one erase takes from the command line
            except ValueError as error:
                raise ValueError("%s line %d: %s" % (path, number, error))
            for field, values in lists.items():
                found[field].update(values)
    return {field: sorted(values) for field, values in found.items()}


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""pixel: a Segment-compatible tracking-pixel server in one file, standard library only.

It answers Segment's Pixel API and HTTP Tracking API and appends every accepted event to a
JSON-lines log, on disk before the reply goes out:

    GET  /v1/pixel/{identify,group,alias,page,screen,track}?data=<base64 JSON>
    GET  /v1/pixel/track?writeKey=K&userId=u&event=Email%20Opened&properties.subject=Hi
    POST /v1/{identify,group,alias,page,screen,track,batch,import}   (JSON, optionally gzip)
    GET  /health

Every pixel route answers 200 with a 1x1 transparent GIF, even on error; rejected requests are
written, with a named reason, to a second JSON-lines file (the rejects log).

Usage:
    python3 pixel.py                       # http://127.0.0.1:8000/, ./events.jsonl
    python3 pixel.py --help                # every flag, with its PIXEL_* variable and default

    import pixel                           # starts nothing
    event = pixel.pixel_event("track", "writeKey=K&userId=u&event=Opened", received_at=0.0)

Log format: one JSON object per line, ASCII-only (non-ASCII is \\u-escaped, so the file is
valid UTF-8 and no character inside a value can split a line). Each line is the client's
payload plus "type", "messageId", "receivedAt", "timestamp" and "context.ip" /
"context.userAgent". With --max-bytes the live file is renamed to <log>.<UTC stamp> when the
next line would not fit, and a fresh file is opened; rotated files are never renamed again.

Copyright (c) 2026 the pixel authors. MIT License, full text in LICENSE and below:
Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions: The above copyright
notice and this permission notice shall be included in all copies or substantial portions of
the Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A
PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE
LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS
IN THE SOFTWARE.

SPDX-License-Identifier: MIT
"""

__version__ = "1.0.0"

import argparse
import base64
import binascii
import bisect
import collections
import datetime
import email.utils
import errno
import html
import http.server
import hmac
import ipaddress
import itertools
import json
import math
import os
import random
import re
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
import zlib

try:
    import resource   # Unix only; used to raise the open-file limit
except ImportError:
    resource = None
try:
    import fcntl      # Unix only; used to keep a second process off a log
except ImportError:
    fcntl = None

# --------------------------------------------------------------------------------------------
# Constants

# The 43-byte transparent GIF89a that nginx's empty_gif also serves: a 1x1 logical screen, a
# two-colour global table, a graphic control extension marking colour 0 transparent, one
# image of one pixel, and the trailer.
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
       b"!\xf9\x04\x01\x00\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

EVENT_TYPES = ("identify", "group", "alias", "page", "screen", "track")
PIXEL_PREFIX = "/v1/pixel/"
API_PREFIX = "/v1/"
BATCH_ROUTES = ("batch", "import")

# Segment's own limits: 32 KB per event, 500 KB per batch request.
MAX_PAYLOAD_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_ITEMS = 10000
# Our own caps. JSON nesting is capped well below the interpreter's recursion limit, so that
# json's C scanner never recurses deep on a small thread stack.
MAX_DEPTH = 32
MAX_PARAMS = 256
MAX_EVENT_LINE = 128 * 1024      # a 32 KB payload of astral characters escapes to ~96 KB
MAX_USER_AGENT = 1024
MAX_REJECT_RAW = 16 * 1024       # the raw query or body kept in a rejects-log line
MAX_DECODE_ROUNDS = 4            # nested escapes undone this often, looking for an address
                                 # to truncate (--anonymize-ip); text still encoded after
                                 # that is not quoted
MAX_REQUEST_LOG_BYTES = 16 * MAX_BATCH_BYTES   # what one request's events may add to the log
MAX_REJECTS_PER_REQUEST = 100    # item lines one request may add to the rejects log
MAX_REJECTS_BYTES_PER_REQUEST = 64 * 1024   # ... and bytes, after which lines stop
MAX_WRITE_BYTES = 1024 * 1024    # the most one write() hands the kernel at once
DEFAULT_DEDUPE_WINDOW = 65536    # (writeKey, messageId) pairs remembered: about 25 MB at
                                 # MAX_DEDUPE_ID bytes each
MAX_DEDUPE_ID = 128              # bytes: an event with a longer client messageId or writeKey
                                 # is written unchecked
# HTTP head limits, the same ones http.client and http.server enforce (_MAXLINE,
# _MAXHEADERS), plus a total so one connection can hold at most ~128 KiB of head.
MAX_LINE = 65536
MAX_HEADERS = 100
MAX_HEAD_BYTES = 2 * MAX_LINE
RECV_SIZE = 65536

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_LOG = "events.jsonl"
DEFAULT_REJECTS_NAME = "rejects.jsonl"
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_REQUEST_TIMEOUT = 10.0   # seconds to deliver a whole request, head and body
DEFAULT_IDLE_TIMEOUT = 15.0      # seconds a kept-alive connection may sit between requests
MIN_TIMEOUT = 0.001              # what --request-timeout and --idle-timeout accept
MAX_TIMEOUT = 86400.0
LISTEN_BACKLOG = 1024            # socketserver's default of 5 drops bursts of connections
THREAD_STACK_SIZE = 512 * 1024   # main() only; 1024 threads then reserve 512 MiB, not 8 GiB
WORKER_IDLE_SECONDS = 30.0       # a thread with no connection to serve exits after this
ERROR_INTERVAL = 10.0            # at most one stderr line per failing file per interval
RELINK_ATTEMPTS = 3              # a log file deleted under a write is recreated this often
MOVED_GRACE = 1.0                # seconds a log renamed away is still written, awaiting its
                                 # successor (see LogWriter._follow_path)
PATH_CHECK_INTERVAL = 0.1        # seconds between looks at whether a log is still at its path
MAX_WARM_BYTES = 64 * 1024 * 1024   # log tail read at start-up to refill the dedupe window
MAX_PEM_BYTES = 1024 * 1024      # of --certfile or --keyfile (a few KB), read to check it

# The forwarder (--forward and `pixel.py forward`).
DEFAULT_FORWARD_BATCH = 100      # events per batch; a batch is also at most MAX_BATCH_BYTES
DEFAULT_FORWARD_TIMEOUT = 10.0   # seconds a receiver has to answer, per connect and read
DEFAULT_FORWARD_ALERT = 300.0    # seconds of backlog after which /health says degraded
FORWARD_POLL = 0.2               # seconds between looks at a log with nothing new in it
BACKOFF_FIRST = 1.0              # retry delays double from this ...
BACKOFF_MAX = 60.0               # ... to this, with up to half again of random jitter
MAX_RETRY_AFTER = 600.0          # a receiver's Retry-After is honoured up to this
MAX_ANSWER_BYTES = 64 * 1024     # of a receiver's answer, read and quoted
FORWARD_READ = MAX_BATCH_BYTES + MAX_EVENT_LINE   # log bytes read to build one batch
MAX_FORWARD_ITEM = MAX_PAYLOAD_BYTES - 64   # an event a Segment-compatible receiver takes,
                                            # with the batch's sentAt added to it
SNIFF_LINES = 8                  # `pixel.py forward` takes a file for an event log if one
SNIFF_BYTES = 2 * MAX_EVENT_LINE # of its first 8 lines, in its first 256 KiB, is an event
MAX_OPEN_LOG_FILES = 32          # rotated files the forwarder holds open; later ones wait
                                 # closed, by name
MAX_REFUSED_IN_A_ROW = 3         # events a receiver refuses alone in a row, taking none
                                 # between, written off before it is doubted (see _deliver)
PROBES_A_ROUND = 100             # events then sent one at a time, at most, between waits
GZIP_MAGIC = b"\x1f\x8b"
STATE_FOLDER = ".pixel"           # beside the log: checkpoints (see state_path)
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024   # a backfill's checkpoint lists every file sent
# A checkpoint that names no file: forwarding starts at the oldest file it may send.
_NO_CHECKPOINT = {"device": -1, "inode": -1, "offset": 0, "mtime_ns": 0, "head_bytes": 0,
                  "head": ""}


# Every reason a rejects-log line can name, with what it means. The README's table and the
# code's rejections are both checked against this one (test_pixel.ReadmeIsTrue).
REASONS = {
    "no_write_key": "no writeKey",
    "write_key_not_string": "a writeKey that is not a string",
    "invalid_write_key": "a writeKey that is not one of --write-key",
    "no_user_anon_id": "neither userId nor anonymousId",
    "id_not_string": "userId, anonymousId, messageId, groupId or previousId is not a string "
                     "or number",
    "event_not_defined": "a track without an event",
    "event_not_string": "a track whose event is not a string",
    "group_id_not_defined": "a group without a groupId",
    "previous_id_not_defined": "an alias without a previousId",
    "user_id_not_defined": "an alias without a userId",
    "name_not_string": "a page or screen name that is not a string",
    "category_not_string": "a page or screen category that is not a string",
    "properties_not_object": "properties is not an object",
    "traits_not_object": "traits is not an object",
    "context_not_object": "context is not an object",
    "integrations_not_object": "integrations is not an object",
    "invalid_timestamp": "timestamp, originalTimestamp or sentAt is not ISO-8601",
    "invalid_base64": "data= that is not base64",
    "invalid_utf8": "data=, a query or a body that is not UTF-8",
    "invalid_json": "data= or a body that is not JSON",
    "payload_not_object": "a payload or batch item that is not a JSON object",
    "invalid_number": "NaN, Infinity, or a number too large for JSON such as 1e400",
    "too_deep": "JSON nested more than %d levels" % MAX_DEPTH,
    "payload_too_large": "a payload over 32 KB",
    "event_too_large": "an event line over 128 KiB",
    "invalid_key": "a malformed plain parameter name, such as a..b or properties.",
    "duplicate_key": "a plain parameter given twice",
    "key_conflict": "a plain parameter that is both a value and an object",
    "too_many_params": "more than %d plain parameters" % MAX_PARAMS,
    "uri_too_long": "a request line over 64 KiB (the pixel still gets its GIF)",
    "header_too_long": "a header line over 64 KiB (the pixel still gets its GIF)",
    "too_many_headers": "more than %d headers (the pixel still gets its GIF)" % MAX_HEADERS,
    "headers_too_large": "a request head over 128 KiB (the pixel still gets its GIF)",
    "invalid_type": "HTTP API: a batch item without a valid type",
    "batch_not_array": "HTTP API: a batch that is not a list",
    "too_many_items": "HTTP API: more than %d batch items" % MAX_BATCH_ITEMS,
    "body_too_large": "HTTP API: a body over 500 KB, after gunzip",
    "batch_too_large": "HTTP API: a batch whose events, each with the shared fields it "
                       "inherits, would write more than 16 times its body (at least 500 KB)",
    "too_many_rejects": "HTTP API: more rejected items in one request than %d lines or "
                        "64 KiB quote; one line counts the rest" % MAX_REJECTS_PER_REQUEST,
    "origin_not_allowed": "HTTP API: a browser request from an origin --allow-origin does "
                          "not allow, or not a well-formed one; nothing of it is written",
    "torn_tail": "a log's last line was cut short (kill -9 or power loss mid-write); the "
                 "fragment, cut from that log at start-up",
    "invalid_gzip": "HTTP API: a gzip body that does not inflate",
    "unsupported_encoding": "HTTP API: a Content-Encoding other than gzip",
    "forward_rejected": "forwarding: the receiver answered 400, 413 or 422 to this one "
                        "event; the line has the event and the receiver's answer",
    "forward_unauthorized": "forwarding: the receiver answered 401 or 403 to this event's "
                            "writeKey, which is not one of --write-key or --forward-write-key; "
                            "the line has the event, for `pixel.py forward` to send again",
    "forward_unreadable": "forwarding: a log line that is not an event pixel can send (not "
                          "JSON, no writeKey, no newline, or over 500 KB)",
    "forward_truncated": "backfill: a file that cannot be read to its end (a .gz cut short "
                         "or corrupt); every whole line before the damage was sent",
}


# --------------------------------------------------------------------------------------------
# The pure core: query or body in, event or named rejection out. No I/O.

class Rejected(ValueError):
    """A request or event that breaks a rule; `reason` is a stable snake_case name."""

    def __init__(self, reason, detail="", item=None):
        super().__init__(reason if not detail else "%s: %s" % (reason, detail))
        self.reason = reason
        self.detail = detail
        self.item = item        # the batch item at fault, when there is one


def decode_query(query):
    """Turn a pixel query string into the payload object it carries.

    `data=` holds base64 JSON (standard or URL-safe alphabet, padded or not, "+" arrived as
    a space). Every other parameter is plain: a dot in its name nests ("properties.subject=Hi"
    becomes {"properties": {"subject": "Hi"}}) and its value stays a string. When both forms
    are present they are merged, and the fields inside `data` win.
    """
    if query.startswith("data=") and "&" not in query:
        # The common pixel: one base64 parameter, percent-escaped at most. Spaces and "+"
        # need no unquoting, since decode_data reads both as "+".
        return decode_data(urllib.parse.unquote(query[5:]) if "%" in query else query[5:])
    try:
        pairs = parse_pairs(query)
    except UnicodeDecodeError:
        raise Rejected("invalid_utf8", "query") from None
    data = None
    plain = {}
    size = 0
    for key, value in pairs:
        size += len(key) + len(value)
        if key == "data":
            if data is not None:
                raise Rejected("duplicate_key", "data")
            data = value
        else:
            _set_dotted(plain, key, value)
    if size > MAX_PAYLOAD_BYTES:
        raise Rejected("payload_too_large")
    if data is None:
        return plain
    payload = decode_data(data)
    return _overlay(plain, payload) if plain else payload


def parse_pairs(query):
    """urllib.parse.parse_qsl(query, keep_blank_values=True, errors="strict"), capped at
    MAX_PARAMS fields, in a third of the time: only a field holding "%" or "+" is unquoted.
    Raises UnicodeDecodeError for escapes that are not UTF-8."""
    if query.count("&") >= MAX_PARAMS:
        raise Rejected("too_many_params")
    pairs = []
    for field in query.split("&"):
        if not field:
            continue
        key, _, value = field.partition("=")
        if "%" in key or "+" in key:
            key = urllib.parse.unquote(key.replace("+", " "), errors="strict")
        if "%" in value or "+" in value:
            value = urllib.parse.unquote(value.replace("+", " "), errors="strict")
        pairs.append((key, value))
    return pairs


def _set_dotted(target, key, value):
    parts = key.split(".")
    if "" in parts or len(parts) > MAX_DEPTH:
        raise Rejected("invalid_key", key[:100])
    node = target
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise Rejected("key_conflict", key[:100])
        node = child
    last = parts[-1]
    if last in node:
        if isinstance(node[last], dict):
            raise Rejected("key_conflict", key[:100])
        raise Rejected("duplicate_key", key[:100])
    node[last] = value


def _overlay(base, top):
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        merged[key] = _overlay(below, value) if (
            isinstance(value, dict) and isinstance(below, dict)) else value
    return merged


_MAX_DATA_CHARS = (MAX_PAYLOAD_BYTES + 2) // 3 * 4


def decode_data(data):
    """Decode a pixel's `data=` value (base64 of a UTF-8 JSON object) into a dict."""
    if len(data) > _MAX_DATA_CHARS + 2:
        raise Rejected("payload_too_large")
    # Senders disagree about the alphabet and the padding, and "+" often arrives as a space
    # because nobody percent-encoded it. Normalise to the standard alphabet, then decode
    # strictly. (str.replace is several times faster than str.translate here.)
    text = data.rstrip("=")
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    if " " in text:
        text = text.replace(" ", "+")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):   # bad characters, bad length, or non-ASCII
        raise Rejected("invalid_base64") from None
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise Rejected("payload_too_large")
    return parse_object(raw)


def _refuse_constant(name):
    raise Rejected("invalid_number", name)


# Built once: json.loads with any keyword argument builds a new decoder on every call.
_decode_json = json.JSONDecoder(parse_constant=_refuse_constant).decode


_NOT_BRACKET = re.compile(r'[^\[\]{}]+')
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text):
    """How deep JSON text nests: the most brackets open at once outside strings.

    Linear in the text, and all of it in C but one accumulate() over the brackets. Inside a
    JSON string a backslash escapes exactly the next character, so dropping escaped
    backslashes, then escaped quotes, leaves only quotes that open or close strings: every
    other piece between them is outside. (A regular expression that skipped strings was
    tried again at each quote inside an unterminated string: quadratic, with the GIL held.)
    Text that is not JSON may be miscounted after its first error, where json stops too.
    """
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    outside = "".join(unescaped.split('"')[::2])
    brackets = _NOT_BRACKET.sub("", outside)
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


# A \uD800-\uDFFF escape, which json turns into a lone surrogate unless it pairs with the next.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(value):
    """`value` with every lone surrogate replaced by U+FFFD. Strict JSON readers (serde_json,
    which Vector uses) refuse a line holding one; json joins the valid pairs itself."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_surrogates(key): _replace_surrogates(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    return value


def parse_object(raw, max_depth=MAX_DEPTH):
    """Parse UTF-8 JSON text that must hold an object nested at most `max_depth` deep."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("invalid_utf8") from None
    # Counting brackets is a cheap upper bound on depth; only a payload with many of them
    # pays for the exact scan, which skips brackets inside strings.
    if text.count("{") + text.count("[") > max_depth and json_depth(text) > max_depth:
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


# re.ASCII: \d would otherwise match Arabic-Indic or fullwidth digits, which int() reads.
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
    seconds = moment.timestamp() + float("0." + (fraction or "0"))
    if zone and zone not in "Zz":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:] or 0) * 60)
    return seconds


_FIRST_SECOND, _LAST_SECOND = 0, 253402300800   # 1970-01-01 to the end of year 9999


_second_cache = (None, "")


def format_time(seconds):
    """UTC ISO-8601 with milliseconds and Z, the form Segment writes."""
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
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):   # 1e400 parses as inf; it must not be logged as "inf"
            raise Rejected("invalid_number", field)
        return str(value)
    raise Rejected("id_not_string", field)


def validate(kind, payload, write_keys=None):
    """Check a payload against Segment's rules for `kind`; return a copy with ids as strings.

    `write_keys`, when given, is the set of accepted keys; otherwise any non-empty key is.
    Raises Rejected with Segment's code where it has one.
    """
    if kind not in EVENT_TYPES:
        raise Rejected("invalid_type", str(kind)[:40])
    write_key = payload.get("writeKey")
    if write_key is None or write_key == "":
        raise Rejected("no_write_key")
    if not isinstance(write_key, str):
        raise Rejected("write_key_not_string")
    if write_keys and write_key not in write_keys:
        raise Rejected("invalid_write_key")
    event = dict(payload)
    for field in ("userId", "anonymousId", "messageId"):
        value = _string_id(payload, field)
        if value is not None:
            event[field] = value
    if event.get("userId") in (None, "") and event.get("anonymousId") in (None, ""):
        raise Rejected("no_user_anon_id")
    if kind == "track":
        name = payload.get("event")
        if name is None or name == "":
            raise Rejected("event_not_defined")
        if not isinstance(name, str):
            raise Rejected("event_not_string")
    elif kind == "group":
        group_id = _string_id(payload, "groupId")
        if group_id is None:
            raise Rejected("group_id_not_defined")
        event["groupId"] = group_id
    elif kind == "alias":
        previous_id = _string_id(payload, "previousId")
        if previous_id is None:
            raise Rejected("previous_id_not_defined")
        event["previousId"] = previous_id
        if event.get("userId") in (None, ""):
            raise Rejected("user_id_not_defined")
    elif kind in ("page", "screen"):
        for field, reason in _STRING_FIELDS.items():
            if payload.get(field) is not None and not isinstance(payload[field], str):
                raise Rejected(reason)
    # A null in one of these is accepted as absent, so it is written as absent: a reader of
    # event["properties"]["x"] must not meet a null.
    for field, reason in _OBJECT_FIELDS.items():
        value = payload.get(field)
        if value is None:
            if field in payload:
                del event[field]
        elif not isinstance(value, dict):
            raise Rejected(reason)
    for field in _STRING_FIELDS:
        if field in payload and payload[field] is None:
            del event[field]
    for field in _TIME_FIELDS:
        if payload.get(field) is not None:
            try:
                parse_time(payload[field])
            except ValueError:   # also a day or hour out of range
                raise Rejected("invalid_timestamp", field) from None
    return event


_message_ids = random.Random(os.urandom(32))   # seeded when the module loads; see below
if hasattr(os, "register_at_fork"):   # a forked child must not repeat its parent's ids
    os.register_at_fork(after_in_child=lambda: _message_ids.seed(os.urandom(32)))


def new_message_id():
    """A random (version 4) UUID string.

    uuid.uuid4() asks the kernel for 16 bytes on every call; an id only needs to be unique,
    not secret, so the bits come from a Mersenne Twister seeded once from os.urandom.
    """
    bits = _message_ids.getrandbits(128) & ~(0xF000 << 64 | 0xC000 << 48) | \
        (0x4000 << 64 | 0x8000 << 48)
    text = "%032x" % bits
    return "%s-%s-%s-%s-%s" % (text[:8], text[8:12], text[12:16], text[16:20], text[20:])


def enrich(kind, payload, *, received_at, ip=None, user_agent=None, message_id=None,
           anonymize=False):
    """Return the event to log: the payload plus type, messageId, receivedAt, timestamp and
    context.ip / context.userAgent, as Segment's API adds them.

    `received_at` is the server's clock (seconds since the epoch); `ip=None` drops any IP,
    the client's included; `anonymize` truncates a client-sent context.ip as anonymize_ip
    does (the caller truncates `ip`), and drops one that is not an address. A client-sent
    messageId, timestamp, context.ip or context.userAgent is kept. Without a timestamp,
    one is derived as Segment does: with both sentAt and originalTimestamp, receivedAt -
    (sentAt - originalTimestamp) corrects the client's clock skew; else originalTimestamp;
    else receivedAt.
    """
    event = {"type": kind}
    event.update(payload)
    event["type"] = kind
    if not event.get("messageId"):
        event["messageId"] = message_id or new_message_id()
    received = format_time(received_at)
    event["receivedAt"] = received
    if event.get("timestamp") is None:
        original, sent = event.get("originalTimestamp"), event.get("sentAt")
        corrected = None
        if original is not None and sent is not None:
            corrected = received_at - (parse_time(sent) - parse_time(original))
        # format_time rounds to the millisecond: check what it will write, not less.
        if corrected is not None and _FIRST_SECOND <= round(corrected, 3) < _LAST_SECOND:
            event["timestamp"] = format_time(corrected)
        else:
            event["timestamp"] = original if original is not None else received
    context = dict(event.get("context") or ())
    if ip is None:
        context.pop("ip", None)
    elif anonymize and "ip" in context:
        client_ip = anonymize_ip(context["ip"]) if isinstance(context["ip"], str) else None
        if client_ip is None:
            del context["ip"]
        else:
            context["ip"] = client_ip
    else:
        context.setdefault("ip", ip)
    if user_agent and "userAgent" not in context:
        context["userAgent"] = user_agent[:MAX_USER_AGENT]
    event["context"] = context
    return event


def build_event(kind, payload, *, received_at, write_keys=None, ip=None, user_agent=None,
                anonymize=False):
    """validate + enrich: the one path from a payload to the event to log, for pixels and
    the HTTP API alike. Raises Rejected."""
    return enrich(kind, validate(kind, payload, write_keys), received_at=received_at, ip=ip,
                  user_agent=user_agent, anonymize=anonymize)


def pixel_event(kind, query, *, received_at, write_keys=None, ip=None, user_agent=None):
    """decode_query + build_event: the event a pixel request records. Raises Rejected."""
    return build_event(kind, decode_query(query), received_at=received_at,
                       write_keys=write_keys, ip=ip, user_agent=user_agent)


def _make_encoder():
    """Compact ASCII JSON, refusing NaN and infinities. JSONEncoder.encode builds a new C
    encoder on every call; building it once saves ~4 us an event. Objects here come from
    JSON, so they cannot be cyclic and no circular-reference markers are kept."""
    encoder = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    try:   # the C accelerator's signature since CPython 3.11
        scan = make(None, encoder.default, json.encoder.encode_basestring_ascii, None,
                    ":", ",", False, False, False)
    except TypeError:   # no accelerator, or an older signature: the documented way
        return encoder.encode
    return lambda document: "".join(scan(document, 0))


_encode = _make_encoder()
# For text that is only quoted in a rejects-log line, where an out-of-range float may appear.
_encode_lenient = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


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
    if len(body) > MAX_BATCH_BYTES:
        raise Rejected("body_too_large")
    return body


def request_log_limit(body_size):
    """The most one API request of `body_size` bytes (after gunzip) may add to the event log:
    16 times its body, or 500 KB for a small one, and never more than MAX_REQUEST_LOG_BYTES.
    A batch of ten thousand two-field items would otherwise write 40 times its body once
    each item carries the request's user agent and the server's fields."""
    return min(MAX_REQUEST_LOG_BYTES, max(MAX_BATCH_BYTES, 16 * body_size))


def _gunzip(body):
    """Inflate every gzip member in `body` (RFC 1952 allows several, and gzip -c a b > c
    makes them), each checked against its CRC and length trailer. A bomb of a few KB can
    inflate to gigabytes, so inflating stops one byte past the cap."""
    parts, size = [], 0
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(body, MAX_BATCH_BYTES + 1 - size)
        except zlib.error:   # not gzip, corrupt, or a CRC or length that does not match
            raise Rejected("invalid_gzip") from None
        size += len(part)
        if inflater.unconsumed_tail or size > MAX_BATCH_BYTES:
            raise Rejected("body_too_large")
        if not inflater.eof:   # cut short: no trailer, so no CRC was checked
            raise Rejected("invalid_gzip")
        parts.append(part)
        body = inflater.unused_data
        if not body:
            return b"".join(parts)


def _basic_auth_user(authorization):
    """The user part of an HTTP Basic credential: Segment's SDKs send `writeKey:`."""
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return user.partition(":")[0] or None


def query_write_key(query):
    """The writeKey parameter of a request's query string, None without one; no other
    parameter is read. Raises Rejected for a writeKey given twice or not UTF-8."""
    write_key = None
    for field in query.split("&"):
        name, _, value = field.partition("=")
        if "%" in name:
            name = urllib.parse.unquote(name, errors="replace")
        if name != "writeKey":
            continue
        if write_key is not None:
            raise Rejected("duplicate_key", "writeKey")
        try:
            write_key = urllib.parse.unquote(value.replace("+", " "), errors="strict")
        except UnicodeDecodeError:
            raise Rejected("invalid_utf8", "writeKey") from None
    return write_key or None


def request_write_key(authorization, query):
    """The writeKey a request names outside its body: the user of its HTTP Basic auth (what
    Segment's and RudderStack's SDKs send), else its query's writeKey (for a client that
    cannot send Authorization: navigator.sendBeacon, RudderStack's beacon transport). None
    if it names neither; Rejected as query_write_key raises it."""
    return _basic_auth_user(authorization) or (query_write_key(query) if query else None)


def api_payloads(route, body, *, authorization=None, query=""):
    """Split an HTTP Tracking API body into (kind, payload) pairs, one per event.

    `route` is the last path segment: an event type, or "batch" / "import". A batch's
    top-level context, integrations, writeKey and sentAt are given to each item that lacks
    them (and merged into an item's own context or integrations). An event without a
    writeKey of its own (or its batch's) gets the request's: its Basic auth user, else the
    `query`'s writeKey (request_write_key). Raises Rejected for a body that is not a JSON
    object or breaks a size limit (the caller answers 400); an item that is not an event,
    or is over 32 KB with the shared fields counted in, comes back as a Rejected (holding
    the item) in place of its payload, so the rest of the batch counts.
    """
    batch = route in BATCH_ROUTES
    # A batch nests its events two levels down, in {"batch": [...]}.
    document = parse_object(body, MAX_DEPTH + 2 if batch else MAX_DEPTH)
    fallback_key = request_write_key(authorization, query)
    if not batch:
        if len(body) > MAX_PAYLOAD_BYTES:
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
    # An item's size is counted with the shared fields it may inherit, so a large shared
    # context cannot be copied into thousands of small items; and all items together are
    # bounded, so one request cannot write more than a small multiple of its body.
    inherited = 0
    for value in shared.values():
        text = _encode_lenient(value)
        inherited += len(text)
        if json_depth(text) > MAX_DEPTH - 1:   # level 2 of every event that inherits it
            raise Rejected("too_deep")
    limit = request_log_limit(len(body))
    total = 0
    pairs = []
    for item in items:
        if not isinstance(item, dict):
            pairs.append((None, Rejected("payload_not_object", item=item)))
            continue
        size = len(_encode_lenient(item)) + inherited
        total += size
        if total > limit:
            raise Rejected("batch_too_large")
        if size > MAX_PAYLOAD_BYTES:
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


def client_ip(peer, forwarded_for, trusted_proxies):
    """The client address: the peer, or with a trusted peer the right-most untrusted entry of
    X-Forwarded-For. Entries are read right to left, since only the right end was written
    by proxies we trust; the left end is whatever the client claimed. An IPv4-mapped IPv6
    address (an IPv4 client of a dual-stack `--host ::` socket) is read as the IPv4 one."""
    if peer.startswith("::ffff:"):
        peer = str(_address(peer) or peer)
    if not trusted_proxies or not forwarded_for:
        return peer
    address = _address(peer)
    if address is None or not any(address in network for network in trusted_proxies):
        return peer
    candidate = peer
    for entry in reversed(forwarded_for.split(",")):
        address = _address(entry.strip())
        if address is None:
            break   # a malformed hop: trust nothing left of it
        candidate = str(address)
        if not any(address in network for network in trusted_proxies):
            break
    return candidate


def anonymize_ip(text):
    """`text`, an IP address, truncated as Matomo and Google Analytics do: an IPv4 address
    to its /24 (203.0.113.7 -> 203.0.113.0), an IPv6 one to its /48; None if `text` is not
    an address (it could be one in a form this does not know, so it is not kept)."""
    address = _address(text.strip()) if text.isascii() else None
    if address is None:
        return None
    prefix = 24 if address.version == 4 else 48
    if address.version == 6 and address.sixtofour is not None:
        prefix = 40   # 2002:AABB:CCDD::/48 is the whole IPv4 address AA.BB.CC.DD: keep /24
    return str(ipaddress.ip_network("%s/%d" % (address, prefix), strict=False)
               .network_address)


_IPV6_LIKE = re.compile(r"(?<![0-9A-Fa-f:%.])(?:[0-9A-Fa-f]{0,4}(?::|%3[Aa])){2,7}"
                        r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4})(?![0-9A-Fa-f:.])",
                        re.ASCII)
# Numbers of any length: inet_aton reads 203.0000.113.77 as 203.0.113.77.
_IPV4_LIKE = re.compile(r"(?<![0-9.])\d+(?:\.\d+){3}(?![0-9])", re.ASCII)


def anonymize_addresses(text):
    """`text` (a request quoted in the rejects log) with each IP address in it, IPv6 ones
    with their colons percent-encoded too, truncated as anonymize_ip does. Dotted text
    that ipaddress refuses as IPv4 loses its last number all the same: inet_aton reads
    203.0.113.077 as an address (077 in octal)."""
    def truncate(match):
        found = match.group()
        address = anonymize_ip(found.replace("%3A", ":").replace("%3a", ":"))
        if address is None and match.re is _IPV4_LIKE:
            return found.rpartition(".")[0] + ".0"
        return found if address is None else address
    return _IPV4_LIKE.sub(truncate, _IPV6_LIKE.sub(truncate, text))


_UNICODE_ESCAPE = re.compile(r"[\\%]u([0-9A-Fa-f]{4})")   # JSON's \u002E, and IIS's %u002E
_OTHER_DIGIT = re.compile(r"(?![0-9])\d")   # a decimal digit of another script, as int() reads


def _reveal(text):
    """`text` as a reader could decode it: percent-escapes, \\u and %u escapes and HTML's
    character references undone, as often as they nest, fullwidth forms (NFKC) and other
    scripts' digits made ASCII. None if it still changes after MAX_DECODE_ROUNDS rounds, or
    holds a percent-escape that is not UTF-8 (a lenient decoder reads the overlong %C0%AE
    as a dot)."""
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
            decoded = unicodedata.normalize("NFKC", decoded)
            decoded = _OTHER_DIGIT.sub(lambda match: str(unicodedata.decimal(match.group())),
                                       decoded)
        if decoded == text:
            return text
        text = decoded
    return None


# What may end a text cut short in the middle of an address: taken off the cut end, since
# part of an IPv6 address is no address and would be quoted as it is.
_ADDRESS_CHARACTERS = "0123456789ABCDEFabcdef:.%"


def anonymize_text(text, limit=None):
    """Client text a line quotes, under --anonymize-ip: `text` itself if no address can be
    read out of it (_reveal), else its decoded form with every address truncated; None if
    it cannot be decoded far enough to tell, and so must not be quoted at all. With a
    `limit`, only the first `limit` characters are looked at and quoted."""
    cut = limit is not None and len(text) > limit
    revealed = _reveal(text[:limit] if cut else text)
    if revealed is None:
        return None
    if cut:
        revealed = revealed.rstrip(_ADDRESS_CHARACTERS)
    anonymized = anonymize_addresses(revealed)
    return text if anonymized == revealed and not cut else anonymized


def anonymize_json(value, budget=MAX_REJECT_RAW):
    """A copy of `value` (parsed JSON) fit to quote under --anonymize-ip: every string in
    it, keys too, through anonymize_text, and a context.ip kept only as anonymize_ip
    truncates it, as enrich keeps it. Returns (the copy, whether anything was left out).

    Truncating an address costs ipaddress some microseconds, and a 500 KB body can hold a
    hundred thousand: only the first `budget` characters of its strings, as many as a
    quote can show, are looked at; the strings after them become ""."""
    left_out = []

    def quote(text):
        nonlocal budget
        if budget <= 0:
            return ""
        safe = anonymize_text(text, budget)
        budget -= len(text)
        if safe is None:
            left_out.append(text)
        return safe

    def walk(value):
        if isinstance(value, str):
            text = quote(value)
            return "" if text is None else text
        if isinstance(value, list):
            return [walk(item) for item in value]
        if not isinstance(value, dict):
            return value
        copy = {}
        for key, item in value.items():
            name = quote(key)
            if name is not None:
                copy[name] = walk(item)
        context = copy.get("context")
        if isinstance(context, dict) and "ip" in context:
            address = context["ip"]
            address = anonymize_ip(address) if isinstance(address, str) else None
            if address is None:   # not an address: nothing to truncate, so not kept
                del context["ip"]
                left_out.append(True)
            else:
                context["ip"] = address
        return copy

    copy = walk(value)   # nested at most MAX_DEPTH + 2: parse_object saw to that
    return copy, bool(left_out)


# Printable ASCII but what delimits or escapes a query: kept as is when rebuilding one.
_QUERY_SAFE = "".join(chr(code) for code in range(0x21, 0x7f) if chr(code) not in "%&=+#")


def anonymize_query(query):
    """A pixel's query as a rejects line may quote it under --anonymize-ip. A parameter
    is kept as sent if no address can be read out of it (data= decoded from base64 and
    JSON, any parameter's percent-escapes undone), else rebuilt from what it decodes to,
    every address truncated (data= as URL-safe base64 again); one that does not decode is
    left out, and so is what lies past the first MAX_REJECT_RAW characters (as when not
    anonymizing, the line says queryTruncated). Returns (the query, whether anything
    before that was left out)."""
    fields, left_out, budget = [], False, MAX_REJECT_RAW
    for field in query.split("&"):
        if budget <= 0:
            break
        budget -= len(field) + 1
        name, _, value = field.partition("=")
        try:
            name = urllib.parse.unquote_plus(name, errors="strict")
            value = urllib.parse.unquote_plus(value, errors="strict")
        except UnicodeDecodeError:
            left_out = True
            continue
        if name == "data":
            try:
                payload = decode_data(value)
            except Rejected:   # no telling what it holds
                left_out = True
                continue
            safe, cut = anonymize_json(payload)
            left_out = left_out or cut
            if safe != payload:
                data = _encode_lenient(safe).encode("ascii")
                field = "data=" + base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
            fields.append(field)
            continue
        safe_name = anonymize_text(name, MAX_REJECT_RAW)
        safe_value = anonymize_text(value, MAX_REJECT_RAW)
        if name == "context.ip" and safe_value is not None:   # as enrich keeps it
            safe_value = anonymize_ip(safe_value)
        if safe_name is None or safe_value is None:
            left_out = True
            continue
        if (safe_name, safe_value) != (name, value):
            # A \\u escape can make a lone surrogate, which UTF-8 cannot hold: "?".
            field = "%s=%s" % (urllib.parse.quote(safe_name, _QUERY_SAFE, errors="replace"),
                               urllib.parse.quote(safe_value, _QUERY_SAFE, errors="replace"))
        fields.append(field)
    return "&".join(fields), left_out


def anonymize_body(body):
    """An HTTP API body (bytes, gunzipped) as a rejects line may quote it under
    --anonymize-ip: its JSON through anonymize_json, encoded again. A body that is not
    JSON, nor UTF-8, could hold an address in any encoding: it is left out whole.
    Returns (the text, whether anything was left out)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "", True
    if json_depth(text) > MAX_DEPTH + 2:   # json's C scanner must not recurse that deep
        return "", True
    try:
        document = json.loads(text)
    except ValueError:
        return "", True
    safe, left_out = anonymize_json(document)
    return _encode_lenient(safe), left_out


def _address(text):
    """An ip_address, IPv4-mapped IPv6 read as IPv4; None if `text` is not an address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def user_agent(headers):
    """The User-Agent header as text. HTTP transports hand over header bytes read as
    Latin-1 (WSGI's rule too); a UTF-8 agent is read as UTF-8 again, not logged as mojibake."""
    agent = headers.get("user-agent")
    if agent and not agent.isascii():
        agent = agent.encode("latin-1", "replace").decode("utf-8", "replace")
    return agent or None


# --------------------------------------------------------------------------------------------
# Messages for operators

class Reporter:
    """One-line messages for operators on `stream` (stderr by default), each prefixed
    "pixel: ". A message given a `key` is said at most once per `interval` seconds for that
    key, so that a failing disk or a flood of bad requests cannot bury everything else. A
    failed write to the stream itself (stderr on the same full disk) is counted in `lost`
    and never raised: a message for the operator must not cost a client its answer."""

    def __init__(self, stream=None, *, interval=ERROR_INTERVAL, clock=time.monotonic):
        self.stream = stream
        self.interval = interval
        self.lost = 0
        self._clock = clock
        self._said = {}          # key -> when it was last said
        self._lock = threading.Lock()
        self._printing = threading.Lock()   # one whole line at a time

    def say(self, message, key=None):
        """Print `message`; with a `key`, only if that key was not said in the interval.
        True if it was printed."""
        if key is not None:
            now = self._clock()
            with self._lock:
                last = self._said.get(key)
                if last is not None and now - last < self.interval:
                    return False
                self._said[key] = now
        try:
            with self._printing:
                print("pixel: " + message, file=self.stream or sys.stderr, flush=True)
        except (OSError, ValueError):   # a full disk, a closed pipe, a closed stream
            self.lost += 1
            return False
        return True


# --------------------------------------------------------------------------------------------
# The log writer

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_ROTATED_SUFFIX = re.compile(r"\.(\d{8}T\d{6}\.\d{3}Z)(?:-(\d+))?\Z")
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


def file_kind(mode):
    """What a file of st_mode `mode` is, in words: "a directory", "a FIFO" ..."""
    return next((kind for test, kind in _FILE_KINDS if test(mode)), "not a regular file")


def open_file(path, flags=_READ_FLAGS, devices=False):
    """os.open() for a regular file (and, with `devices`, a character device such as
    /dev/full); anything else raises OSError(EINVAL, "not a regular file (a FIFO)"). The
    open itself cannot block: a FIFO would wait there for a writer (or a reader) before any
    signal handler could stop it, so it is opened O_NONBLOCK, checked with fstat, and set
    back to blocking. A directory or /dev/zero would be read for ever."""
    nonblocking = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | nonblocking, 0o644)
    except OSError as error:
        # A FIFO with no reader, or a socket, opened to write: ENXIO; a directory: EISDIR.
        if error.errno not in (errno.ENXIO, errno.EISDIR):
            raise
        try:
            mode = os.stat(path).st_mode
        except OSError:
            raise error from None
        raise OSError(errno.EINVAL, "not a regular file (%s)" % file_kind(mode),
                      path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or devices and stat.S_ISCHR(mode)):
            raise OSError(errno.EINVAL, "not a regular file (%s)" % file_kind(mode), path)
        if nonblocking:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock(fd, path):
    """Take an exclusive flock on a log: a second pixel process writing the same file would
    rotate it under the first, and lines would be lost. Where the file system has no flock
    (some network ones), nothing is locked, as before."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(errno.EBUSY, "another process writes it (it holds its flock)",
                      path) from None
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
            raise


class LogWriter:
    """Appends whole lines to a file, one os.write each, before the caller answers.

    The file is opened with O_APPEND, so a kill -9 loses nothing that was written and no line
    is torn. With `max_bytes`, the live file is renamed to `<path>.<UTC stamp>` when the next
    write would cross the limit (as RotatingFileHandler does), a fresh file is opened, and
    with `keep` the oldest rotated files beyond that many are deleted, each deletion said on
    stderr. If something else renames the file, a write at most PATH_CHECK_INTERVAL later
    reopens the path (as WatchedFileHandler does, though it looks at every write), and a
    line written into a file deleted under it is written again to a fresh one. A failed or
    short write is cut back to the last whole line, counted in `failed`, and reported
    through `reporter` at most once per interval; writing resumes by itself when the disk
    has room again.

    One process owns a log file: rotation and the torn-tail repair assume no other writer,
    so the open file is held with an exclusive flock, and a second process's LogWriter on
    it fails to open with EBUSY.

    A `follower` (the Forwarder) may be attached with follow(): it is handed a readable
    descriptor of each file the writer opens, in the order they are written, and
    rotated files it still holds are not deleted by `keep`. That needs `readable=True`.
    """

    def __init__(self, path, *, max_bytes=0, keep=0, clock=time.time, reporter=None,
                 readable=False):
        # The real path: rotating a symlink would rename the link, not the file it names.
        self.path = os.path.realpath(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.written = 0        # lines on disk
        self.written_bytes = 0  # ... and their bytes
        self.failed = 0         # lines that could not be written
        self.rotations = 0
        self._clock = clock
        self._reporter = reporter or Reporter()
        self._lock = threading.Lock()
        self._fd = None
        self._identity = None
        self._size = 0          # where the file's last whole line ends
        self._torn = False      # a short write left bytes past _size that are not yet cut
        self._failing_since = None
        self._failures_unreported = 0
        self._moved_at = None   # when the open file was first seen renamed away
        self._path_checked = float("-inf")   # when write() last looked at the path
        self._flags = _OPEN_FLAGS if not readable else \
            _OPEN_FLAGS & ~os.O_WRONLY | os.O_RDWR
        self.follower = None
        self.torn_tail = None   # the start of a torn last line cut at start-up, if any
        self.torn_tail_bytes = 0
        self.created = not os.path.lexists(self.path)   # by this start: see discard()
        self._open()            # at start-up an OSError here is the operator's to see
        try:
            self._cut_torn_tail()
        except OSError:
            self._close()
            raise

    @property
    def failing(self):
        return self._failing_since is not None

    def _open(self):
        fd = open_file(self.path, self._flags, devices=True)   # /dev/null, /dev/full too
        try:
            status = os.fstat(fd)
            if (status.st_dev, status.st_ino) == self._identity and self._fd is not None:
                os.close(fd)   # the file it has open (a SIGHUP with nothing renamed)
                return
            _lock(fd, self.path)
            handed = os.dup(fd) if self.follower is not None else None
        except OSError:   # in use, out of descriptors: keep the file open until now
            os.close(fd)
            raise
        self._fd, self._identity, self._size = fd, (status.st_dev, status.st_ino), status.st_size
        if handed is not None:   # under the lock: files reach the follower in write order
            self.follower.opened(handed, self._identity, self.path)

    def follow(self, follower):
        """Attach `follower` and hand it the open file; return (descriptor, identity,
        committed end, lines written so far), all taken at the same instant."""
        if not self._flags & os.O_RDWR:
            raise ValueError("a LogWriter needs readable=True to be followed")
        with self._lock:
            self.follower = follower
            return os.dup(self._fd), self._identity, self._size, self.written

    def committed_end(self, identity):
        """Where the last whole line written to file `identity` ends, if it is the open
        file; None otherwise. A follower reads no further: past it, a short write may be
        about to be cut."""
        return self._size if self._identity == identity else None

    def _reopen(self):
        """Open the path afresh, then close the file open until now (so that if the path
        cannot be opened, the old file stays open); a torn tail still to cut was the old
        file's."""
        old = self._fd
        self._open()
        if self._fd == old:   # the path names the file it has open: nothing to do
            return
        self._torn = False
        self._moved_at = None
        if old is not None:
            os.close(old)

    def reopen(self):
        """Open the path afresh (SIGHUP, logrotate's convention), even if it names the
        same file; what is written from now on goes to the file at the path. If the path
        cannot be opened, raises OSError and keeps the file it had."""
        with self._lock:
            self._reopen()

    def _cut_torn_tail(self):
        """A kill -9 or a power cut during a write can leave a last line with no newline;
        the next line appended to it would be glued on, and neither would parse. Cut the
        fragment back to the last whole line, keeping its first MAX_REJECT_RAW bytes in
        `torn_tail` (for the rejects log), and say so."""
        if not self._size:
            return
        end = self._size
        reader = os.open(self.path, _READ_FLAGS)
        try:
            if os.pread(reader, 1, end - 1) == b"\n":
                return
            start = end
            # Back to the last newline, a block at a time; no further than one write can
            # leave, since a file of gigabytes with no newline is not worth reading through.
            while start > 0 and end - start <= MAX_WRITE_BYTES:
                block_start = max(0, start - RECV_SIZE)
                block = os.pread(reader, start - block_start, block_start)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    start = block_start + newline + 1
                    break
                start = block_start
            if end - start > MAX_WRITE_BYTES:
                # pixel never writes that much at once: this is not a torn write but a file
                # that is not a pixel log, and cutting it would destroy it.
                raise OSError(errno.EINVAL, "its last %d bytes have no newline, more than "
                                            "one write leaves; is it a pixel log?"
                              % (end - start))
            self.torn_tail = os.pread(reader, min(end - start, MAX_REJECT_RAW), start)
        finally:
            os.close(reader)
        self.torn_tail_bytes = end - start
        os.ftruncate(self._fd, start)
        self._size = start
        self._reporter.say("%s ended in a torn line (%d bytes, no newline): cut it"
                           % (self.path, end - start))

    def _close(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def close(self):
        with self._lock:
            self._close()

    def discard(self):
        """Close, and remove the file if this writer created it and it is still empty and
        still at the path: a start that fails after opening its logs leaves the folder as
        it found it (a file that was there before, or that holds a line, is kept)."""
        with self._lock:
            if self._fd is not None and self.created:
                opened = os.fstat(self._fd)
                try:
                    named = os.stat(self.path)
                    if opened.st_size == 0 and \
                            (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino):
                        os.unlink(self.path)
                except FileNotFoundError:   # removed already, by someone else
                    pass
                except OSError as error:
                    self._reporter.say("cannot remove %s, created by a start that failed: %s"
                                       % (self.path, error.strerror or error))
            self._close()

    def write(self, lines):
        """Append `lines` (a list of bytes, each ending in a newline). True once all are on
        disk. Lines go out in as few write() calls as rotation and MAX_WRITE_BYTES allow;
        if one fails, the lines before it stay written and counted, the rest are failed."""
        # Whether the path still names the open file (an outside mv, or a new file put
        # there) is looked at once every PATH_CHECK_INTERVAL, by the first write after it:
        # a stat a write would cost a system call, and a hand-over of the GIL, per event.
        # Meanwhile a line goes on into a renamed file, where it is not lost: shippers that
        # follow inodes, and the forwarder, read that file to its end. A delete is caught
        # after every write (_append_linked), and the line written again. The stat is taken
        # before the lock, so that threads queue only behind the write itself. (An inotify
        # watch was tried instead: a write could beat its notice.)
        now = self._clock()
        check = not 0 <= now - self._path_checked < PATH_CHECK_INTERVAL or self._fd is None
        if check:
            self._path_checked = now
            try:
                status = os.stat(self.path)
            except OSError:
                status = None
        with self._lock:
            done = 0
            try:
                if check:
                    self._follow_path(status)
                if self._torn:   # an earlier cut failed; never extend the file with it
                    if os.fstat(self._fd).st_size > self._size:
                        os.ftruncate(self._fd, self._size)
                    self._torn = False
                for chunk, count in self._chunks(lines):
                    if self.max_bytes and self._size and self._size + len(chunk) > self.max_bytes:
                        self._rotate()
                    self._append_linked(chunk)
                    done += count
            except OSError as error:
                self.written += done
                self.failed += len(lines) - done
                self._report_failure(error, len(lines) - done)
                return False
            self.written += done
            if self._failing_since is not None:
                self._reporter.say("writing %s again after %d failed line(s)"
                                   % (self.path, self._failures_unreported))
                self._failing_since = None
                self._failures_unreported = 0
            return True

    def _chunks(self, lines):
        """(bytes, line count) pieces of `lines` for one write() each: whole lines, at most
        MAX_WRITE_BYTES (or max_bytes) each, unless one line is larger on its own."""
        if len(lines) == 1:
            return [(lines[0], 1)]
        limit = min(self.max_bytes or MAX_WRITE_BYTES, MAX_WRITE_BYTES)
        chunks, current, size = [], [], 0
        for line in lines:
            if current and size + len(line) > limit:
                chunks.append((b"".join(current), len(current)))
                current, size = [], 0
            current.append(line)
            size += len(line)
        chunks.append((b"".join(current), len(current)))
        return chunks

    def _follow_path(self, status):
        """Reopen the configured path if the open file is no longer at it (logrotate's
        `create` mode, an operator's mv or rm). `status` is a stat of the path taken just
        before the lock; a mismatch is checked again, since our own rotation may have
        happened in between.

        A file renamed away with nothing at its path yet is written to for MOVED_GRACE
        seconds more: logrotate's `create` renames, then creates the new file with O_EXCL,
        and fails if we created it first. Lines written there are not lost: the renamed
        file is the rotated one, which shippers that follow inodes read to its end. If the
        path cannot be opened even then (its folder was renamed or removed) but the open
        file still has a name somewhere, writing goes on there."""
        if self._fd is not None:
            if status is not None and (status.st_dev, status.st_ino) == self._identity:
                return
            try:
                status = os.stat(self.path)
            except FileNotFoundError:
                status = None
            if status is not None and (status.st_dev, status.st_ino) == self._identity:
                return
            if status is None and os.fstat(self._fd).st_nlink:
                now = self._clock()
                if self._moved_at is None or now < self._moved_at:
                    self._moved_at = now
                if now - self._moved_at < MOVED_GRACE:
                    return
            try:
                self._reopen()
            except OSError as error:
                if not os.fstat(self._fd).st_nlink:
                    raise
                self._reporter.say("cannot reopen %s: %s; still writing to the file it "
                                   "named" % (self.path, error.strerror or error),
                                   key="reopen " + self.path)
            return
        self._reopen()

    def _append_linked(self, chunk):
        """_append, then check that the file still has a name. Another process can delete
        it between write()'s stat and the write itself, and a line written into a deleted
        file vanishes with it; so a file left with no links is replaced by a fresh one at
        the path and the chunk written again. If the delete came just after our write,
        the copy that survives is the only one."""
        for _ in range(RELINK_ATTEMPTS):
            before = self._size
            self._append(chunk)
            if os.fstat(self._fd).st_nlink:
                return
            # Take this copy back out of the nameless file first: whoever still reads it
            # (the forwarder, a shipper holding it open) would have the line twice.
            os.ftruncate(self._fd, before)
            self._size = before
            self._reopen()
        raise OSError(errno.ENOENT, "deleted each time it was written, %d times"
                      % RELINK_ATTEMPTS)

    def _append(self, chunk):
        written = os.write(self._fd, chunk)
        if written != len(chunk):
            # A short write means the disk filled mid-line: cut the torn tail so the file
            # still ends on a whole line, and report the chunk as not written. The cut is
            # measured from the file's real end, never _size: something else (logrotate's
            # copytruncate) may have truncated the file, and cutting to a stale _size would
            # extend it with zeros.
            self._size = os.fstat(self._fd).st_size - written
            self._torn = True
            os.ftruncate(self._fd, self._size)
            self._torn = False
            raise OSError(errno.ENOSPC, "short write (%d of %d bytes)" % (written, len(chunk)))
        self._size += written
        self.written_bytes += written

    def _rotate(self):
        now = self._clock()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + ".%03dZ" % (now % 1 * 1000)
        target = "%s.%s" % (self.path, stamp)
        serial = 0
        while os.path.lexists(target):   # two rotations in one millisecond
            serial += 1
            target = "%s.%s-%d" % (self.path, stamp, serial)
        try:
            os.rename(self.path, target)
        except OSError as error:
            # Keep writing to the live file rather than lose lines; it grows past max_bytes
            # until a rename succeeds.
            self._reporter.say("cannot rotate %s: %s; still writing to it"
                               % (self.path, error), key="write " + self.path)
            return
        if self.follower is not None:
            self.follower.renamed(self._identity, target)
        self.rotations += 1
        self._reopen()
        if self.keep:
            self._prune()

    def rotated_files(self):
        """Rotated files of this log, oldest first."""
        folder, base = os.path.split(self.path)
        found = []
        for name in os.listdir(folder):
            if name.startswith(base + "."):
                match = _ROTATED_SUFFIX.match(name, len(base))
                if match:
                    found.append((match.group(1), int(match.group(2) or 0), name))
        return [os.path.join(folder, name) for _, _, name in sorted(found)]

    def _prune(self):
        held = self.follower.held() if self.follower is not None else ()
        for old in self.rotated_files()[:-self.keep]:
            try:
                status = os.stat(old)
            except FileNotFoundError:
                continue
            if (status.st_dev, status.st_ino) in held:
                self._reporter.say("keeping %s past --keep %d: the forwarder has not sent "
                                   "all of it yet" % (old, self.keep), key="keep " + self.path)
                continue
            try:
                os.remove(old)
            except FileNotFoundError:
                continue
            self._reporter.say("deleted %s (--keep %d)" % (old, self.keep))

    def _report_failure(self, error, lines):
        if self._failing_since is None:
            self._failing_since = self._clock()
        self._failures_unreported += lines
        self._reporter.say("cannot write %s: %s (%d line(s) lost so far; still answering, will "
                           "retry)" % (self.path, error.strerror or error,
                                       self._failures_unreported), key="write " + self.path)


class StartupError(Exception):
    """What stops pixel from starting, said in one line: a log, an option, a CPU, a port."""


def open_logs(log, rejects, *, busy, wait=0.0, **options):
    """The events and the rejects LogWriter (`options` are LogWriter's), for main() and
    make_wsgi_app(). A file that cannot be opened, or two paths that name one file, raise
    StartupError; when another process holds a file, after waiting up to `wait` seconds
    for it to let go, with `busy` (what to do instead). A file created here is removed
    again then (LogWriter.discard)."""
    if os.path.realpath(log) == os.path.realpath(rejects) or os.path.exists(log) and \
            os.path.exists(rejects) and os.path.samefile(log, rejects):   # a hard link, say
        raise StartupError("the events log and the rejects log are the same file: %s"
                           % os.path.realpath(log))
    writers = []
    deadline = time.monotonic() + wait
    try:
        for path in (log, rejects):
            while True:
                try:
                    writers.append(LogWriter(path, **options))
                    break
                except OSError as error:
                    if error.errno == errno.EBUSY and time.monotonic() < deadline:
                        time.sleep(0.05)
                        continue
                    raise StartupError("cannot open %s: %s%s" % (
                        error.filename or path, error.strerror or error,
                        "; " + busy if error.errno == errno.EBUSY else "")) from None
            options["readable"] = False   # only the events log is ever followed
        if os.path.samefile(writers[0].path, writers[1].path):   # linked since the check
            raise StartupError("the events log and the rejects log are the same file: %s"
                               % writers[0].path)
    except StartupError:
        for writer in writers:
            writer.discard()
        raise
    return writers


# --------------------------------------------------------------------------------------------
# Routes and the recorder: what a request is, and the log lines it becomes. No sockets here;
# the built-in HTTP server and the WSGI app are two transports over one Recorder.

Route = collections.namedtuple("Route", "kind name methods max_body browser",
                               defaults=(False,))
Route.__doc__ = """What a path is. `kind` is "pixel", "api", "metrics" (a browser SDK's
own), "settings" (a configuration document an SDK loads), "prometheus" (/metrics) or
"health"; `name` the event type, API route or document; `methods` those it answers
(anything else gets a 405); `max_body` the largest body it reads, 0 for a route whose body,
if any, is discarded; `browser` whether only browsers post to it, so that an event's clock
is the browser's."""

_GET_HEAD = ("GET", "HEAD")
_POST_OPTIONS = ("POST", "OPTIONS")   # OPTIONS: the browser's CORS preflight

# analytics.js (analytics-next) posts each event to the first letter of its type, a batch
# to /b, and its own metrics to /m.
BROWSER_ROUTES = {"t": "track", "p": "page", "i": "identify", "g": "group", "a": "alias",
                  "s": "screen", "b": "batch"}

# The one route table: every transport, and every early answer, asks it what a path is.
ROUTES = {"/health": Route("health", "health", _GET_HEAD, 0),
          "/metrics": Route("prometheus", "metrics", _GET_HEAD, 0)}
ROUTES.update((PIXEL_PREFIX + kind, Route("pixel", kind, _GET_HEAD, 0)) for kind in EVENT_TYPES)
ROUTES.update((API_PREFIX + name, Route("api", name, _POST_OPTIONS, MAX_BATCH_BYTES))
              for name in EVENT_TYPES + BATCH_ROUTES)
ROUTES.update((API_PREFIX + letter, Route("api", name, _POST_OPTIONS, MAX_BATCH_BYTES, True))
              for letter, name in BROWSER_ROUTES.items())
ROUTES[API_PREFIX + "m"] = Route("metrics", "m", _POST_OPTIONS, MAX_PAYLOAD_BYTES, True)

# RudderStack's browser SDK (@rudderstack/analytics-js) with pixel as its data plane: with
# useBeacon it posts a batch here, text/plain, with the writeKey in the query, since
# navigator.sendBeacon cannot send Authorization; it posts its own error reports (Bugsnag's
# format, with breadcrumbs and the SDK's state) to /rsaMetrics when a source configuration
# turns them on. With configUrl pointing here it loads its source configuration from
# /sourceConfig/ (and, with sendAdblockPage, asks HEAD /sourceConfig/?view=ad whether
# that is blocked).
ROUTES["/beacon/v1/batch"] = Route("api", "batch", _POST_OPTIONS, MAX_BATCH_BYTES, True)
ROUTES["/rsaMetrics"] = Route("metrics", "rsaMetrics", _POST_OPTIONS, MAX_BATCH_BYTES, True)
ROUTES.update((path, Route("settings", "sourceConfig", ("GET", "HEAD", "OPTIONS"), 0))
              for path in ("/sourceConfig", "/sourceConfig/"))

# GET /v1/projects/<writeKey>/settings: what analytics.js fetches from its CDN.
SETTINGS_PREFIX, SETTINGS_SUFFIX = "/v1/projects/", "/settings"
SETTINGS_ROUTE = Route("settings", "settings", ("GET", "HEAD", "OPTIONS"), 0)
_WRITE_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}\Z", re.ASCII)


def route_for(path):
    """The Route for `path`, from ROUTES or the one route with a parameter; None if none."""
    route = ROUTES.get(path)
    if route is None and path.startswith(SETTINGS_PREFIX) and path.endswith(SETTINGS_SUFFIX) \
            and _WRITE_KEY.match(path[len(SETTINGS_PREFIX):-len(SETTINGS_SUFFIX)]):
        return SETTINGS_ROUTE
    return route


Request = collections.namedtuple("Request", "method path query headers peer body prefix "
                                            "scheme", defaults=("", "http"))
Request.__doc__ = """A request as plain values: `headers` is a dict with lower-case names,
`peer` the connection's IP address as text, `body` bytes (b"" when there is none), `prefix`
the path an app is mounted under (WSGI's SCRIPT_NAME; "" for the built-in server), `scheme`
"https" if it came over TLS (the built-in server's --certfile, WSGI's wsgi.url_scheme)."""

Answer = collections.namedtuple("Answer", "status headers body")
Answer.__doc__ = """What a transport sends: a status, (name, value) header pairs that include
Content-Length, and the body. The body goes out for every method but HEAD."""

GIF_ANSWER = Answer(200, (("Content-Type", "image/gif"),
                          ("Content-Length", str(len(GIF))),
                          ("Cache-Control", "no-cache, no-store, must-revalidate"),
                          ("Pragma", "no-cache"),
                          ("Expires", "0")), GIF)


# An origin as browsers send it: scheme, host (a name, or an IPv6 address in brackets), port.
# Only such a value is ever echoed back; "null" (file:, sandboxed frames) is not allowed.
_ORIGIN = re.compile(r"https?://(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])"
                     r"(?::\d{1,5})?\Z", re.ASCII)
MAX_PREFLIGHT_HEADERS = 32


def origin_allowed(origin, allowed):
    """Whether a well-formed `origin` is allowed by --allow-origin entries: none allows
    any; "https://shop.example.com" allows that origin; "*.example.com" any origin whose
    host is a subdomain of example.com, on any scheme and port."""
    if not allowed:
        return True
    origin = origin.lower()
    if origin in allowed:
        return True
    host = origin.partition("://")[2]
    if host.startswith("["):   # an IPv6 address: exact entries only
        return False
    host = host.partition(":")[0]
    return any(pattern.startswith("*.") and host.endswith(pattern[1:]) for pattern in allowed)


def plain_answer(status, extra_headers=()):
    """A fixed text answer, the status's own phrase: never anything from the request."""
    body = http.server.BaseHTTPRequestHandler.responses[status][0].encode() + b"\n"
    return Answer(status, (("Content-Type", "text/plain; charset=utf-8"),
                           ("Content-Length", str(len(body)))) + tuple(extra_headers), body)


def json_answer(status, document):
    body = json.dumps(document).encode() + b"\n"
    return Answer(status, (("Content-Type", "application/json"),
                           ("Content-Length", str(len(body)))), body)


def add_headers(answer, headers):
    """`answer` with `headers` (pairs) appended, or `answer` itself if there are none."""
    return answer._replace(headers=answer.headers + headers) if headers else answer


NOT_FOUND = plain_answer(404)


def not_allowed(route):
    return plain_answer(405, (("Allow", ", ".join(route.methods)),))


# What validate() refuses a writeKey for: with --write-key, a request refused only for these
# gets a 401.
_KEY_REASONS = ("no_write_key", "write_key_not_string", "invalid_write_key")

LENGTH_REQUIRED = json_answer(411, {"success": False, "error": "length_required",
                                    "message": "send a Content-Length; chunked bodies are not "
                                               "accepted"})


def _short(text):
    """Whether `text` is at most MAX_DEDUPE_ID bytes of UTF-8."""
    return len(text) <= MAX_DEDUPE_ID and (
        text.isascii() or len(text.encode("utf-8", "replace")) <= MAX_DEDUPE_ID)


def dedupe_key(write_key, message_id):
    """What the dedupe window remembers an event by: its writeKey and its messageId, as
    Segment de-duplicates per source, so that one key's event never suppresses another's.
    One string, the key's length first so that no two pairs can make the same one; None
    if either is over MAX_DEDUPE_ID bytes, too long to remember."""
    if not (_short(write_key) and _short(message_id)):
        return None
    return "%d:%s:%s" % (len(write_key), write_key, message_id)


def _client_id(payload, event):
    """The event's dedupe_key if the client sent its messageId, else None: an id pixel
    made up can never repeat."""
    if payload.get("messageId") in (None, ""):
        return None
    return dedupe_key(event["writeKey"], event["messageId"])


class Histogram:
    """Durations counted into Prometheus's cumulative buckets (seconds)."""

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
        """(suffix, labels, value) samples: the buckets, _sum and _count."""
        with self._lock:
            counts, total = list(self.counts), self.sum
        samples, running = [], 0
        for bound, count in zip(self.BOUNDS + (None,), counts):
            running += count
            samples.append(("_bucket", (("le", "+Inf" if bound is None else repr(bound)),),
                            running))
        return samples + [("_sum", (), total), ("_count", (), running)]


def render_metrics(families):
    """Prometheus's text exposition format 0.0.4: for each (name, type, help, samples),
    samples being (suffix, labels, value), a HELP and a TYPE line and a line a sample."""
    lines = []
    for name, kind, help, samples in families:
        lines.append("# HELP %s %s" % (name, help.replace("\\", "\\\\").replace("\n", "\\n")))
        lines.append("# TYPE %s %s" % (name, kind))
        for suffix, labels, value in samples:
            text = ",".join('%s="%s"' % (label, str(content).replace("\\", "\\\\")
                                         .replace('"', '\\"').replace("\n", "\\n"))
                            for label, content in labels)
            lines.append("%s%s%s %s" % (name, suffix, "{%s}" % text if text else "",
                                        repr(float(value)) if isinstance(value, float)
                                        else int(value)))
    return "\n".join(lines) + "\n"


class RecentIds:
    """The last `size` ids added, the oldest forgotten first; not thread-safe. An
    OrderedDict, since finding a plain dict's first key walks the slots its deletions
    left behind: 11 us an add once the window is full, against 0.3."""

    def __init__(self, size):
        self.size = size
        self._ids = collections.OrderedDict()

    def __contains__(self, client_id):
        return client_id in self._ids

    def __len__(self):
        return len(self._ids)

    def add(self, client_id):
        self._ids[client_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)


class Recorder:
    """Turns requests into log lines. It owns what that takes: the write keys, the IP
    policy, the two LogWriters, the clock, the counts and the health document.

    Its methods take plain values (a Route and a Request) and return the Answer a transport
    must send; every line is on disk, or counted as failed, before they return. `gauges`
    maps extra /health fields to zero-argument callables a transport registers (the HTTP
    server adds "connections").
    """

    def __init__(self, events, rejects, *, write_keys=(), trusted_proxies=(), record_ip=True,
                 anonymize_ip=False, allow_origins=(), dedupe_window=DEFAULT_DEDUPE_WINDOW,
                 public_url=None, metrics_token=None, clock=time.time, reporter=None):
        self.events = events
        self.rejects = rejects
        self.reporter = reporter or Reporter()
        self.write_keys = frozenset(write_keys)
        self.trusted_proxies = tuple(ipaddress.ip_network(proxy, strict=False)
                                     for proxy in trusted_proxies)
        self.record_ip = record_ip
        self.anonymize_ip = anonymize_ip and record_ip
        self.clock = clock
        self.started = time.monotonic()
        self.rejected = 0       # rejections, written or not (one line may count several)
        self.written_by_type = collections.Counter()   # events on disk, by type
        self.rejected_by_reason = collections.Counter()
        self.metrics_token = metrics_token
        self.started_at = clock()
        self.browser_metrics = 0   # browser SDKs' own metrics posts, counted and dropped
        self.public_url = public_url.rstrip("/") if public_url else None
        self.deduped = 0           # events not written: their key and messageId were, recently
        self.recent = RecentIds(dedupe_window) if dedupe_window else None
        self._dedupe_lock = threading.Lock()
        self.allow_origins = tuple(origin.lower() for origin in allow_origins)
        self.gauges = {}
        self.metric_sources = []   # callables a transport adds: metric families for /metrics
        self.forwarder = None      # a Forwarder relaying the events log, if any
        self._count_lock = threading.Lock()

    def remember_logged(self, max_bytes=MAX_WARM_BYTES):
        """Refill the dedupe window from the writeKeys and messageIds at the end of the
        events log (the live file, then rotated ones), so that a restart does not forget
        what the window held: a forwarder re-sending its last batch after a crash on either
        side must not write it twice. Returns how many it read."""
        if self.recent is None:
            return 0
        paths = [self.events.path] + self.events.rotated_files()[::-1]
        client_ids = logged_client_ids(paths, self.recent.size, max_bytes)
        with self._dedupe_lock:
            for client_id in client_ids:
                self.recent.add(client_id)
        return len(client_ids)

    def answer(self, route, request):
        """Record `request` as `route` says (None: no such path) and return the answer."""
        if route is None:
            return NOT_FOUND
        if request.method not in route.methods:
            return not_allowed(route)
        if route.kind == "pixel":
            if request.method == "GET":   # HEAD, which mail scanners send, records nothing
                self.record_pixel(route.name, request)
            return GIF_ANSWER
        if route.kind == "prometheus":
            return self.metrics(request)
        if route.kind in ("api", "metrics", "settings"):
            cors = self.cors_headers(request)
            if request.method == "OPTIONS":
                return self.preflight(route, request, cors)
            if cors is None:   # a browser on a site that is not allowed: nothing is written
                return self._origin_refused(request)
            if route.kind == "settings":
                answer = self.settings(request) if route.name == "settings" else \
                    self.source_config(request)
            elif route.kind == "metrics":   # a browser SDK's own metrics: counted only
                with self._count_lock:
                    self.browser_metrics += 1
                answer = json_answer(200, {"success": True})
            else:
                answer = self.record_api(route.name, request, browser=route.browser)
            return add_headers(answer, cors)
        return json_answer(200, self.health())

    def early_answer(self, route, request, length):
        """What a transport answers, before reading it, to a body `route` would read:
        `length` is its Content-Length, -1 for none that can be trusted (chunked). None
        means: read the body and ask answer()."""
        if length == -1:
            return self.with_cors(request, LENGTH_REQUIRED)
        if length > route.max_body:
            return self.refuse(route, request, "body_too_large", 400)
        return None

    def _origin_refused(self, request):
        self.reject(Rejected("origin_not_allowed"), request, quoted="")
        return json_answer(403, {"success": False, "error": "origin_not_allowed"})

    def cors_headers(self, request):
        """The CORS headers for an HTTP API answer: () for a request with no Origin (a
        server, not a browser), None for an origin that --allow-origin does not allow or
        that is not a well-formed http(s) origin, else the origin echoed, with credentials
        allowed, as analytics.js's `credentials: 'include'` needs."""
        origin = request.headers.get("origin")
        if not origin:
            return ()
        if not _ORIGIN.match(origin) or not origin_allowed(origin, self.allow_origins):
            return None
        return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                ("Access-Control-Allow-Credentials", "true"))

    def settings(self, request):
        """The settings document analytics.js loads from its CDN (`cdnURL`), pointing its
        Segment.io destination back here: at --public-url if set, else at the Host the
        request came to, over the scheme it came by. An unknown writeKey (with --write-key)
        is a 404."""
        write_key = request.path[len(SETTINGS_PREFIX):-len(SETTINGS_SUFFIX)]
        if self.write_keys and write_key not in self.write_keys:
            return NOT_FOUND
        if self.public_url:
            protocol, _, host = self.public_url.partition("://")
            no_store = ()
        else:
            protocol, host = self.scheme(request), request.headers.get("host", "")
            if not _ORIGIN.match("http://" + host):
                return plain_answer(400)
            # Built from this request's Host and scheme: a shared cache must not hand it to
            # a visitor who came by another.
            no_store = (("Cache-Control", "no-store"),)
        api_host = host.rstrip("/") + request.prefix.rstrip("/") + "/v1"
        return add_headers(json_answer(200, {
            "integrations": {"Segment.io": {"apiKey": write_key, "apiHost": api_host,
                                            "protocol": protocol,
                                            "unbundledIntegrations": [],
                                            "addBundledMetadata": True,
                                            "maybeBundledConfigIds": {}}},
            "plan": {"track": {"__default": {"enabled": True, "integrations": {}}},
                     "identify": {"__default": {"enabled": True}},
                     "group": {"__default": {"enabled": True}}},
            "edgeFunction": {}, "analyticsNextEnabled": True, "middlewareSettings": {},
            "enabledMiddleware": {}, "metrics": {"sampleRate": 0}, "remotePlugins": []}),
            no_store)

    def source_config(self, request):
        """The source configuration RudderStack's browser SDK loads from its control plane
        (`configUrl`): the source, enabled, under the writeKey the request names (Basic
        auth, else the query's: request_write_key), with no destinations, and the SDK's own
        error and metrics reports off, so that it sends events to its data plane (its
        `dataPlaneUrl`, which names pixel) and nothing else. A request naming no writeKey
        is a 400; an unknown one (with --write-key), or one the settings document's path
        could not hold, a 404, as for the settings document."""
        try:
            write_key = request_write_key(request.headers.get("authorization"), request.query)
        except Rejected:
            write_key = None
        if write_key is None:
            return plain_answer(400)
        if not _WRITE_KEY.match(write_key) or (self.write_keys and
                                               write_key not in self.write_keys):
            return NOT_FOUND
        off = {"enabled": False}
        return json_answer(200, {"source": {
            "id": write_key, "name": "pixel", "writeKey": write_key, "enabled": True,
            "config": {"statsCollection": {"errors": off, "metrics": off}},
            "destinations": []}})

    def preflight(self, route, request, cors):
        """The answer to a CORS preflight (OPTIONS): 204 allowing POST with the headers the
        browser asks for (Authorization and X-Retry-Count among them), cached for two
        hours, Chromium's cap; 403 with no CORS headers for an origin that is not allowed."""
        if not cors:
            return plain_answer(403)
        asked = request.headers.get("access-control-request-headers", "")
        allowed = [name.strip() for name in asked.split(",")[:MAX_PREFLIGHT_HEADERS]
                   if _TOKEN.match(name.strip())]
        methods = ", ".join(method for method in route.methods if method != "HEAD")
        headers = cors + (("Access-Control-Allow-Methods", methods),
                          ("Access-Control-Max-Age", "7200"), ("Content-Length", "0"))
        if allowed:
            headers += (("Access-Control-Allow-Headers", ", ".join(allowed)),)
        return Answer(204, headers, b"")

    def refuse(self, route, request, reason, status):
        """A request refused before it could be read whole (a head over the limits, a body
        over the cap). A pixel GET still gets its GIF and a rejects-log line; a request to
        the API a rejects-log line and `status` with its reason in JSON; anything else, the
        plain `status`."""
        if route is not None and request.method in route.methods:
            if route.kind == "pixel" and request.method == "GET":
                self.reject(Rejected(reason), request)
                return GIF_ANSWER
            if route.kind in ("api", "metrics"):
                cors = self.cors_headers(request)
                if cors is None:
                    return self._origin_refused(request)
                self.reject(Rejected(reason), request, quoted="")
                return add_headers(json_answer(status, {"success": False, "error": reason}),
                                   cors)
        return plain_answer(status)

    def with_cors(self, request, answer):
        """`answer` with the request's CORS headers, if its origin is allowed: so that a
        browser can read an early refusal (411, 400) instead of seeing a network error."""
        return add_headers(answer, self.cors_headers(request))

    def scheme(self, request):
        """"https" or "http": how the client reached us. A --trusted-proxy's
        X-Forwarded-Proto says it for a proxy that ends TLS in front of pixel."""
        forwarded = request.headers.get("x-forwarded-proto", "").strip().lower()
        if forwarded in ("http", "https") and self.trusted_proxies:
            address = _address(request.peer)
            if address is not None and any(address in network
                                           for network in self.trusted_proxies):
                return forwarded
        return request.scheme

    def client_ip(self, request):
        if not self.record_ip or not request.peer:   # no address known: none is written
            return None
        if not self.trusted_proxies and not request.peer.startswith("::ffff:"):
            ip = request.peer   # the common case, without the call
        else:
            ip = client_ip(request.peer, request.headers.get("x-forwarded-for"),
                           self.trusted_proxies)
        return anonymize_ip(ip) if self.anonymize_ip else ip

    def record_pixel(self, kind, request):
        received_at = self.clock()
        ip = self.client_ip(request)
        try:
            payload = decode_query(request.query)
            event = build_event(kind, payload, received_at=received_at,
                                write_keys=self.write_keys, ip=ip,
                                user_agent=user_agent(request.headers),
                                anonymize=self.anonymize_ip)
            line = encode_line(event)
        except Rejected as rejection:
            self.reject(rejection, request, received_at=received_at, ip=ip)
            return
        self.write_events([line], [_client_id(payload, event)], [kind])

    def write_events(self, lines, client_ids, kinds):
        """Write `lines` (of events of `kinds`), but none whose writeKey and client-sent
        messageId (`client_ids`, each a dedupe_key, or None where pixel made the id) were
        written within the dedupe window: retries by SDKs, browsers and networks repeat an
        event's messageId. True once all that was kept is on disk."""
        if self.recent is None or not any(client_ids):
            written = self.events.write(lines)
        else:
            with self._dedupe_lock:   # so that two copies arriving at once are one write
                kept, kept_kinds, ids = [], [], set()
                for line, client_id, kind in zip(lines, client_ids, kinds):
                    if client_id is not None and (client_id in self.recent or
                                                  client_id in ids):
                        self.deduped += 1
                        continue
                    kept.append(line)
                    kept_kinds.append(kind)
                    if client_id is not None:
                        ids.add(client_id)
                written = self.events.write(kept) if kept else True
                if written:
                    for client_id in ids:
                        self.recent.add(client_id)
            kinds = kept_kinds
        if written:
            with self._count_lock:
                if len(kinds) == 1:
                    self.written_by_type[kinds[0]] += 1
                else:
                    self.written_by_type.update(kinds)
        return written

    def record_api(self, route, request, browser=False):
        """Write the events of an HTTP API body. 200 once they are on disk; 400 for a body
        that is not one; 503 if the log could not be written, so that SDKs send it again
        (they retry 5xx); with --write-key, 401 when every event was refused for its key.
        Items that break a rule go to the rejects log, at most MAX_REJECTS_PER_REQUEST
        lines of them and then one line counting the rest.

        From the `browser` routes, an event's `timestamp` is the browser's clock: it is
        kept as originalTimestamp, and timestamp becomes receivedAt - (sentAt -
        originalTimestamp), as Segment does for client sources."""
        received_at = self.clock()
        ip = self.client_ip(request)
        agent = user_agent(request.headers)
        body = request.body
        try:
            body = decode_body(body, request.headers.get("content-encoding"))
            pairs = api_payloads(route, body, authorization=request.headers.get("authorization"),
                                 query=request.query)
        except Rejected as rejection:   # quote the body as received, or as gunzipped
            return self._body_refused(rejection, request, received_at, ip, body)
        lines, client_ids, kinds, size, refused = [], [], [], 0, []
        key_refused = key_taken = False   # was some event's writeKey refused? one's taken?
        limit = request_log_limit(len(body))
        for kind, payload in pairs:
            try:
                if isinstance(payload, Rejected):   # an item that is not even an event
                    raise payload
                if browser and payload.get("timestamp") is not None and \
                        payload.get("originalTimestamp") is None:
                    payload = dict(payload, originalTimestamp=payload["timestamp"])
                    del payload["timestamp"]
                event = build_event(kind, payload, received_at=received_at,
                                    write_keys=self.write_keys, ip=ip, user_agent=agent,
                                    anonymize=self.anonymize_ip)
                line = encode_line(event)
            except Rejected as rejection:
                refused.append((rejection, payload.item if payload is rejection else payload))
                if rejection.reason in _KEY_REASONS:
                    key_refused = True
                elif payload is not rejection:   # validate checks the key first: it passed
                    key_taken = True
                continue
            key_taken = True
            size += len(line)
            if size > limit:   # with the user agent, ip and server fields, once per event
                return self._body_refused(Rejected("batch_too_large"), request, received_at,
                                          ip, body)
            lines.append(line)
            client_ids.append(_client_id(payload, event))
            kinds.append(kind)
        written = self.write_events(lines, client_ids, kinds) if lines else True
        if refused:
            # At most MAX_REJECTS_PER_REQUEST lines and MAX_REJECTS_BYTES_PER_REQUEST bytes,
            # then one line that counts the rest.
            records, size = [], 0
            for rejection, item in refused:
                if len(records) == MAX_REJECTS_PER_REQUEST or \
                        size > MAX_REJECTS_BYTES_PER_REQUEST:
                    break
                records.append(self._reject_line(rejection, request, received_at, ip,
                                                 *self._quote_item(item)))
                size += len(records[-1])
            if len(records) < len(refused):
                rest = Rejected("too_many_rejects", "%d more item(s) not quoted"
                                % (len(refused) - len(records)))
                records.append(self._reject_line(rest, request, received_at, ip, ""))
            self._write_rejects(records, [rejection.reason for rejection, _ in refused])
        if self.write_keys and key_refused and not key_taken:
            return self._key_refused(request, next(rejection.reason for rejection, _ in refused
                                                   if rejection.reason in _KEY_REASONS))
        if not written:
            return json_answer(503, {"success": False, "error": "write_failed"})
        return json_answer(200, {"success": True})

    def _key_refused(self, request, reason):
        """The 401 for an API request none of whose events carries a key of --write-key.
        Segment's API answers 200 to anything, and its users cannot tell a wrong key from a
        right one; pixel knows its keys, so a sender (another pixel's forwarder, an SDK)
        learns at once. A browser gets no WWW-Authenticate challenge: it would ask its user
        for a password."""
        answer = json_answer(401, {"success": False, "error": reason})
        if request.headers.get("origin"):
            return answer
        return add_headers(answer, (("WWW-Authenticate", 'Basic realm="pixel"'),))

    def _body_refused(self, rejection, request, received_at, ip, body):
        """A 400 for an API body as a whole, and its rejects line quoting the body."""
        quoted, redacted = self._quote_body(body)
        self.reject(rejection, request, received_at=received_at, ip=ip, quoted=quoted,
                    redacted=redacted)
        return json_answer(400, {"success": False, "error": rejection.reason})

    # What a rejects line quotes of the client's input, and whether part of it was left
    # out. With --anonymize-ip, never raw text, which could hold an address in an encoding
    # (base64, percent-escapes, \u escapes, gzip): what pixel decoded, addresses truncated.

    def _quote_body(self, body):
        if not self.anonymize_ip:
            return body[:MAX_REJECT_RAW].decode("utf-8", "replace"), False
        quoted, redacted = anonymize_body(body)
        return quoted[:MAX_REJECT_RAW], redacted

    def _quote_item(self, item):
        redacted = False
        if self.anonymize_ip:
            item, redacted = anonymize_json(item)
        return _encode_lenient(item)[:MAX_REJECT_RAW], redacted

    def _quote_text(self, text, limit=None):
        if not self.anonymize_ip:
            return text[:limit], False
        quoted = anonymize_text(text, limit)
        return ("", True) if quoted is None else (quoted, False)

    def reject(self, rejection, request, *, received_at=None, ip=None, quoted=None,
               redacted=False):
        """Write one rejects-log line: enough to find a broken campaign and replay it. A
        pixel's line quotes its query, an API request's the body or item at fault, as
        _quote_body or _quote_item made them (`redacted`: part of it was left out)."""
        if received_at is None:
            received_at = self.clock()
            ip = self.client_ip(request)
        self._write_rejects([self._reject_line(rejection, request, received_at, ip, quoted,
                                               redacted)], [rejection.reason])

    def _reject_line(self, rejection, request, received_at, ip, quoted, redacted=False):
        # The detail can quote a parameter's name, and the user agent is the client's too.
        detail, cut = self._quote_text(rejection.detail)
        agent, cut_agent = self._quote_text(user_agent(request.headers) or "", MAX_USER_AGENT)
        redacted = redacted or cut or cut_agent
        query = request.query
        if self.anonymize_ip and quoted is None:
            query, cut = anonymize_query(query)
            redacted = redacted or cut
        record = {"reason": rejection.reason}
        if detail:
            record["detail"] = detail
        record["method"] = request.method
        record["path"] = request.path[:1024]
        if quoted is not None:
            record["body"] = quoted
        else:
            record["query"] = query[:MAX_REJECT_RAW]
            if len(request.query) > MAX_REJECT_RAW or len(query) > MAX_REJECT_RAW:
                record["queryTruncated"] = True
        if redacted:
            record["redacted"] = True
        if ip is not None:
            record["ip"] = ip
        if agent:
            record["userAgent"] = agent
        record["receivedAt"] = format_time(received_at)
        return (_encode(record) + "\n").encode("ascii")

    def _write_rejects(self, lines, reasons):
        """Write rejects-log `lines` for rejections of `reasons` (one line may stand for
        several: too_many_rejects)."""
        with self._count_lock:
            self.rejected += len(reasons)
            self.rejected_by_reason.update(reasons)
        self.rejects.write(lines)

    def record_torn_tails(self):
        """A rejects line for each log whose torn last line its LogWriter cut at start-up."""
        for writer in (self.events, self.rejects):
            if writer.torn_tail is not None:
                rejection = Rejected("torn_tail", "%d byte(s) cut from %s"
                                     % (writer.torn_tail_bytes, writer.path))
                request = Request("", "", "", {}, "", b"")
                quoted, redacted = self._quote_text(writer.torn_tail.decode("utf-8",
                                                                            "replace"))
                self.reject(rejection, request, ip=None, received_at=self.clock(),
                            quoted=quoted, redacted=redacted)

    def reopen(self):
        """Open both logs afresh at their paths (SIGHUP)."""
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
            self.reporter.say("reopened %s (SIGHUP)" % " and ".join(reopened))

    def metrics(self, request):
        """GET /metrics, in Prometheus's text format; with a metrics token, only for a
        request that sends it as `Authorization: Bearer <token>`."""
        if self.metrics_token is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    token.strip().encode("latin-1", "replace"), self.metrics_token.encode()):
                return plain_answer(401, (("WWW-Authenticate", 'Bearer realm="pixel"'),))
        body = render_metrics(self.metric_families()).encode("utf-8")
        return Answer(200, (("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                            ("Content-Length", str(len(body)))), body)

    def metric_families(self):
        """What /metrics shows, as render_metrics takes it."""
        with self._count_lock:
            by_type = sorted(self.written_by_type.items())
            by_reason = collections.Counter(self.rejected_by_reason)
        forwarder = self.forwarder
        if forwarder is not None:
            by_reason.update(forwarder.refused_by_reason)
        logs = (("events", self.events), ("rejects", self.rejects))

        def per_log(attribute):
            return [("", (("log", name),), getattr(writer, attribute)) for name, writer in logs]

        families = [
            ("pixel_events_total", "counter", "Events written to the events log, by type.",
             [("", (("type", kind),), count) for kind, count in by_type]),
            ("pixel_rejections_total", "counter", "Requests, items and forwarded events "
             "refused, by the reason in the rejects log.",
             [("", (("reason", reason),), count)
              for reason, count in sorted(by_reason.items())]),
            ("pixel_written_lines_total", "counter", "Lines written, by log.",
             per_log("written")),
            ("pixel_written_bytes_total", "counter", "Bytes written, by log.",
             per_log("written_bytes")),
            ("pixel_write_errors_total", "counter", "Lines that could not be written, by log.",
             per_log("failed")),
            ("pixel_rotations_total", "counter", "Rotations, by log.", per_log("rotations")),
            ("pixel_deduped_events_total", "counter", "Events not written: their writeKey and "
             "messageId were written within the dedupe window.", [("", (), self.deduped)]),
            ("pixel_browser_metrics_total", "counter", "Browser SDKs' own metrics and error "
             "reports (/v1/m, /rsaMetrics), counted and dropped.",
             [("", (), self.browser_metrics)]),
        ]
        if forwarder is not None:
            status = forwarder.status()
            families += [
                ("pixel_forward_sent_events_total", "counter", "Events the forwarder's "
                 "receiver took.", [("", (), forwarder.sent)]),
                ("pixel_forward_refused_events_total", "counter", "Events the forwarder wrote "
                 "to the rejects log instead.", [("", (), forwarder.refused)]),
                ("pixel_forward_failed_attempts_total", "counter", "Forwarding attempts that "
                 "got no answer or one to retry.", [("", (), forwarder.failed_attempts)]),
                ("pixel_forward_backlog_events", "gauge", "Events written and not yet "
                 "forwarded.", [("", (), status["lines_behind"] or 0)]),
                ("pixel_forward_backlog_bytes", "gauge", "Bytes written and not yet "
                 "forwarded.", [("", (), status["bytes_behind"])]),
                ("pixel_forward_backlog_files", "gauge", "Rotated files not yet forwarded "
                 "whole.", [("", (), status["files_behind"])]),
                ("pixel_forward_backlog_seconds", "gauge", "Age of the oldest event not yet "
                 "forwarded.", [("", (), float(status["backlog_seconds"]))]),
                ("pixel_forward_paused", "gauge", "1 while forwarding is held up: a 401 or "
                 "403 for a configured writeKey, or a receiver at fault.",
                 [("", (), int(status["paused_write_key"] is not None or
                               status["receiver_fault"] is not None))]),
                ("pixel_forward_last_success_timestamp_seconds", "gauge", "When the receiver "
                 "last took a batch (Unix time; 0: never).",
                 [("", (), float(forwarder.last_success or 0))]),
            ]
        for source in self.metric_sources:
            families += source()
        families += [
            ("pixel_build_info", "gauge", "pixel's version and the Python it runs on.",
             [("", (("version", __version__), ("python", sys.version.split()[0])), 1)]),
            ("process_start_time_seconds", "gauge", "When the process started (Unix time).",
             [("", (), float(self.started_at))]),
        ]
        return families

    def health(self):
        failing = self.events.failing or self.rejects.failing
        forward = self.forwarder.status() if self.forwarder is not None else None
        if forward is not None and forward["degraded"]:
            failing = True
        document = {"status": "degraded" if failing else "ok", "version": __version__,
                    "uptime": round(time.monotonic() - self.started, 3),
                    "accepted": self.events.written, "rejected": self.rejected,
                    "write_errors": self.events.failed + self.rejects.failed,
                    "browser_metrics": self.browser_metrics, "deduped": self.deduped}
        for name, gauge in self.gauges.items():
            document[name] = gauge()
        if forward is not None:
            document["forward"] = forward
        return document


# --------------------------------------------------------------------------------------------
# HTTP, part 1: reading a request head. One bounded pass, no I/O.

_COMMON_METHODS = frozenset(("GET", "HEAD", "POST"))
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HTTP_VERSION = re.compile(r"HTTP/(\d)\.(\d)\Z")
_SAFE_TARGET = bytes(range(0x21, 0x7f))   # printable ASCII: kept as is when re-quoting


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


def parse_head(head):
    """Parse a request head (request line and header lines, without the blank line after
    them; CRLF or bare LF line ends) into a Head, or raise HeadError.

    Limits are http.server's: a line of at most MAX_LINE bytes, at most MAX_HEADERS
    headers. Whitespace before a header's colon, obsolete line folding, two framings or
    two different Content-Lengths are refused (RFC 9112 5.1, 5.2, 6.3): each has been used
    to smuggle a second request past a proxy.
    """
    lines = head.split(b"\n")
    request_line = lines[0].rstrip(b"\r")
    # A bare CR or a NUL is read differently by different parsers (RFC 9112 2.2): refuse.
    # (The head comes without its last line end, so a CR may end it.)
    if head.count(b"\r") != head.count(b"\r\n") + head.endswith(b"\r") or b"\0" in head:
        raise HeadError(400, "bad_header", request_line[:MAX_LINE])
    if len(request_line) > MAX_LINE:
        raise HeadError(414, "uri_too_long", request_line[:MAX_LINE])
    if len(lines) - 1 > MAX_HEADERS:
        raise HeadError(431, "too_many_headers", request_line)
    words = request_line.decode("latin-1").split(" ")
    if len(words) != 3:
        # Two words is an HTTP/0.9 request, which has no headers to carry a user agent or a
        # Host; it is answered, like anything else malformed, with a 400.
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
    # HTTP/1.1 requires exactly one Host (RFC 9112 3.2); two could route differently at a
    # proxy and here.
    if minor != "0" and (not headers.get("host") or "," in headers["host"]):
        raise HeadError(400, "bad_host", request_line)
    if not target.isascii():
        target = urllib.parse.quote_from_bytes(target.encode("latin-1"), _SAFE_TARGET)
    if not target.startswith("/"):
        scheme, _, rest = target.partition("://")   # absolute-form, RFC 9112 3.2.2
        if scheme.lower() not in ("http", "https") or not rest:
            raise HeadError(400, "bad_target", request_line)
        target = "/" + rest.partition("/")[2]
    body_length = _body_length(headers) if (
        "content-length" in headers or "transfer-encoding" in headers) else 0
    if body_length is None:
        raise HeadError(400, "bad_framing", request_line)
    path, _, query = target.partition("?")
    return Head(method, target, path, query, "HTTP/1." + minor, headers, body_length,
                keep_alive)


def _body_length(headers):
    """Content-Length as an int, -1 for a chunked body, None if the framing is invalid."""
    if "content-length" not in headers:
        if "transfer-encoding" not in headers:
            return 0
        return -1
    if "transfer-encoding" in headers:
        return None
    lengths = set(value.strip() for value in headers["content-length"].split(","))
    if len(lengths) != 1:
        return None
    length = lengths.pop()
    # ASCII digits only: "\u00b2" passes str.isdigit() but not int().
    return int(length) if length.isascii() and length.isdigit() and len(length) < 12 else None


# --------------------------------------------------------------------------------------------
# HTTP, part 2: the connection handler, its thread pool, and the server

# Kernel socket timeouts take a struct timeval on Linux and the BSDs; elsewhere (Windows)
# the handler falls back to settimeout().
_KERNEL_TIMEOUTS = sys.platform.startswith(("linux", "darwin", "freebsd", "openbsd", "netbsd"))


# The line that starts each in PEM: -----BEGIN PRIVATE KEY----- (or RSA, EC ... PRIVATE KEY).
_PEM_MARKS = {"certificate": b"-----BEGIN CERTIFICATE-----", "private key": b"PRIVATE KEY-----"}
_PEM_ENCRYPTED = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")


def _check_pem(path, kind):
    """Raise ValueError, naming `path`, unless it is a readable regular file holding a PEM
    `kind` ("certificate" or "private key") that pixel can load: not a FIFO, whose open
    would block for ever; not DER; not encrypted; not the other file of the pair."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError("%s is not a regular file" % path)
        with open(path, "rb") as handle:
            data = handle.read(MAX_PEM_BYTES)
    except OSError as error:
        raise ValueError("cannot read %s: %s" % (path, error.strerror or error)) from None
    other = "private key" if kind == "certificate" else "certificate"
    if not data.strip():
        raise ValueError("%s is empty" % path)
    if kind == "private key" and any(marker in data for marker in _PEM_ENCRYPTED):
        raise ValueError("%s is encrypted with a passphrase, which pixel has no way to ask "
                         "for: write it out unencrypted (openssl pkey -in %s -out NEW.key) "
                         "and keep that file private" % (path, path))
    if _PEM_MARKS[kind] in data:
        return
    if _PEM_MARKS[other] in data:
        raise ValueError("%s holds a %s, not a %s: are --certfile and --keyfile swapped?"
                         % (path, other, kind))
    if data[:1] == b"\x30":   # an ASN.1 SEQUENCE: the binary form
        raise ValueError("%s is DER, not PEM: convert it (openssl %s -inform DER -in %s "
                         "-out NEW.pem)" % (path, "x509" if kind == "certificate" else
                                            "pkey", path))
    raise ValueError("%s is not a PEM %s: it has no -----BEGIN %s----- line"
                     % (path, kind, kind.upper()))


def load_tls(certfile, keyfile):
    """A server-side TLS context: TLS 1.2 and up, the default ciphers, ALPN http/1.1, no
    renegotiation. Raises ValueError saying which file is wrong and how, in words: OpenSSL
    says "[SSL] PEM lib" for nearly every mistake."""
    import ssl   # here, not at the top: only --certfile needs it
    _check_pem(certfile, "certificate")
    _check_pem(keyfile, "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.set_alpn_protocols(["http/1.1"])
    try:
        # An encrypted key fails to load rather than make OpenSSL ask for its password on a
        # terminal nobody watches (_check_pem has said so already).
        context.load_cert_chain(certfile, keyfile, password=lambda: b"")
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
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


def _timeval(seconds):
    # At least 1 us: the kernel reads a zero timeval as "no timeout", so a deadline that
    # is a few ns away must not become one.
    whole = int(seconds)
    micro = int((seconds - whole) * 1e6)
    return struct.pack("@ll", whole, micro if whole or micro else 1)


class _Closed(Exception):
    """The client closed, timed out, or the server is stopping: end the connection quietly."""


class PixelHandler(http.server.BaseHTTPRequestHandler):
    """One connection: reads each request head into one buffer with a strict, bounded reader
    (parse_head), asks the server's Recorder for the answer, and sends it in one write.

    Of http.server's hooks these work as documented: `protocol_version` ("HTTP/1.0" closes
    after every answer), `server_version` and `sys_version` (through version_string()),
    `responses`, `send_error()`, `log_message()` (quiet by default: the event log is the
    record), and handle() / handle_one_request(). There is no `rfile` or `wfile`, and
    `headers` is a dict with lower-case names, not an email.message.Message.
    """

    protocol_version = "HTTP/1.1"
    server_version = "pixel/" + __version__
    sys_version = ""

    def version_string(self):
        return " ".join(part for part in (self.server_version, self.sys_version) if part)

    def setup(self):
        # No rfile/wfile: requests are read into one buffer and answers go out in one
        # sendall, which also avoids the header/body split write that costs ~40 ms with
        # Nagle (CPython gh-108736). TCP_NODELAY for the same reason.
        #
        # Timeouts are the kernel's (SO_RCVTIMEO, SO_SNDTIMEO) on a blocking socket: a
        # Python-level settimeout() would add a poll() before every recv and send, and an
        # ioctl() per change, each one a trip through the GIL. The socket option is only
        # changed on the slow path, when a head arrives in pieces.
        #
        # Linux copies these options from the listening socket to each accepted one, so
        # PixelServer sets them there once; setup() only checks the first connection.
        self.connection = self.request
        server = self.server
        self._pool = server.pool
        timeout = server.request_timeout
        self._deadline = time.monotonic() + timeout
        self._buffer = bytearray()
        self._served = 0
        self._recv_timeout = None
        self._kernel_timeouts = _KERNEL_TIMEOUTS
        tls = server.tls_context
        if tls is not None:
            # A blocking TLS socket retries a read that SO_RCVTIMEO ends, for ever: TLS
            # connections keep Python's own timeouts, a poll() before each recv and send.
            self._kernel_timeouts = False
            self.connection = self._handshake(tls)
            if self.connection is None:
                return
        if server.options_inherited is None:
            server.options_inherited = _KERNEL_TIMEOUTS and (
                self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) and
                self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) ==
                _timeval(timeout))
        if server.options_inherited and self._kernel_timeouts:
            self._recv_timeout = timeout
        else:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._recv_timeout = None
            self._set_recv_timeout(max(MIN_TIMEOUT, self._deadline - time.monotonic()))
            if self._kernel_timeouts:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                           _timeval(timeout))
        self._unread_body = False
        self._started = None
        self.close_connection = True
        self.command = self.path = self.requestline = ""
        self.request_version = self.protocol_version
        self.headers = {}

    def _handshake(self, tls):
        """The TLS handshake, within the request deadline (a Python-level one: SO_RCVTIMEO
        does not bound it), while the connection may be evicted like any other that waits
        for its client. A plain HTTP request gets a plain 400 saying so. The TLS socket,
        or None if there is none (the failure counted, never printed)."""
        raw = self.request
        pool = self._pool
        pool.mark_idle(raw, False)
        try:
            raw.settimeout(max(MIN_TIMEOUT, self._deadline - time.monotonic()))
            first = raw.recv(1, socket.MSG_PEEK)
            if first and first != b"\x16":   # not a TLS handshake record: plain HTTP, say
                pool.mark_busy(raw)
                self.server.count_tls_failure()
                self._refuse_plain(raw)
                return None
            # Wrap a duplicate: wrap_socket detaches the socket it wraps, and the pool must
            # keep a working one to close on an eviction or a stop.
            connection = tls.wrap_socket(raw.dup(), server_side=True,
                                         do_handshake_on_connect=False)
            try:
                connection.settimeout(max(MIN_TIMEOUT, self._deadline - time.monotonic()))
                connection.do_handshake()
            except BaseException:
                connection.close()
                raise
        except (OSError, ValueError):   # ssl.SSLError, a timeout, a reset, an eviction
            self.server.count_tls_failure()
            return None
        finally:
            pool.mark_busy(raw)
        return connection

    def _refuse_plain(self, raw):
        """Answer plain HTTP on a TLS port with a plain 400, then linger (within the request
        deadline): closing with its request unread would reset the connection before the
        client reads the answer."""
        try:
            raw.sendall(_PLAIN_TO_TLS)
        except OSError:   # gone already
            return
        self._linger(min(time.monotonic() + 1.0, self._deadline))

    def handle(self):
        if self.connection is not None:   # None: a TLS handshake that failed
            super().handle()

    def finish(self):
        # The server closes the TCP socket in shutdown_request; a TLS one is a duplicate.
        if self.connection is not None and self.connection is not self.request:
            self.connection.close()

    def log_message(self, format, *args):
        pass   # the event log is the record; stderr is kept for what operators must act on

    # -- reading ------------------------------------------------------------------------------

    def _set_recv_timeout(self, timeout):
        if timeout <= 0:
            raise _Closed("request timeout")
        if self._kernel_timeouts:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
        else:
            self.connection.settimeout(timeout)
        self._recv_timeout = timeout

    def _recv(self, timeout):
        """Append what the client sends next to the buffer, waiting at most `timeout` s.

        While it waits for the client (for a first request, a next one, the rest of a
        head or of a body), the connection may be closed to make room when every slot is
        taken (ConnectionPool.submit); while pixel works on a request, it may not."""
        if timeout != self._recv_timeout:
            self._set_recv_timeout(timeout)
        pool = self._pool
        kept_alive = self._served > 0 and not self._buffer
        pool.mark_idle(self.request, kept_alive)   # the TCP socket, under TLS too
        # After marking: a stop either sees this connection idle and closes it, or is seen
        # here. A client that has not sent its first request is waited for, stop or not.
        if kept_alive and pool.stopping:
            pool.mark_busy(self.request)
            raise _Closed("stopping")
        try:
            chunk = self.connection.recv(RECV_SIZE)
        except OSError as error:   # timeout, reset, or shut down by a stop or an eviction
            raise _Closed(str(error)) from None
        finally:
            pool.mark_busy(self.request)
        if not chunk:
            raise _Closed("client closed")
        self._buffer += chunk

    def _read_head(self):
        """The next request head, without its blank line; bare LF line ends are accepted."""
        buffer = self._buffer
        server = self.server
        if not buffer:
            if self._served:   # a kept-alive connection waits idle, then gets a fresh deadline
                self._recv(server.idle_timeout)
                self._deadline = time.monotonic() + server.request_timeout
            else:
                self._recv(self._deadline - time.monotonic())
        elif self._served:
            self._deadline = time.monotonic() + server.request_timeout
        start = 0
        skipped = 0
        while True:
            # RFC 9112 section 2.2: ignore empty lines before a request line. They count
            # toward the head's limit, and go in one step, not a byte at a time.
            if buffer[:1] in (b"\r", b"\n") and buffer:
                blank = len(buffer) - len(buffer.lstrip(b"\r\n"))
                del buffer[:blank]
                skipped += blank
                if skipped > MAX_HEAD_BYTES:
                    raise _Closed("only empty lines")
            end = buffer.find(b"\n\r\n", start)
            end_lf = buffer.find(b"\n\n", start, end if end >= 0 else len(buffer))
            if end_lf >= 0:
                head, size = bytes(buffer[:end_lf]), end_lf + 2
                break
            if end >= 0:
                head, size = bytes(buffer[:end]), end + 3
                break
            if len(buffer) > MAX_LINE and buffer.find(b"\n", 0, MAX_LINE + 1) < 0:
                raise HeadError(414, "uri_too_long", bytes(buffer[:MAX_LINE]))
            if len(buffer) + skipped > MAX_HEAD_BYTES:
                raise HeadError(431, "headers_too_large", bytes(buffer[:MAX_LINE]))
            start = max(0, len(buffer) - 2)
            self._recv(self._deadline - time.monotonic())
        del buffer[:size]
        return head

    def _read_body(self, length):
        while len(self._buffer) < length:
            self._recv(self._deadline - time.monotonic())
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return body

    def _settle_body(self, length):
        """Read and drop a body nobody asked for, so that it cannot be taken for the next
        request; a chunked or large one ends the connection instead."""
        if length == -1 or length > MAX_PAYLOAD_BYTES:
            self.close_connection = self._unread_body = True
        elif length:
            self._read_body(length)

    # -- the request loop ---------------------------------------------------------------------

    def handle_one_request(self):
        self.close_connection = True
        try:
            try:
                head = parse_head(self._read_head())
            except HeadError as error:
                self._refuse(error)
                return
            self._served += 1
            self._started = time.monotonic()   # _send observes the duration
            self._serve(head)
            if self._unread_body:
                self._linger()   # let the client finish sending and read our answer
        except (_Closed, OSError):
            # A timeout, a reset, or a stop, perhaps in the middle of a body: whatever the
            # client sends after this must never be read as a request of its own.
            self.close_connection = True
            return
        if self.server.stopping or self.protocol_version == "HTTP/1.0":
            self.close_connection = True

    def _serve(self, head):
        self.command, self.path, self.request_version = head.method, head.target, head.version
        self.headers = head.headers
        self.close_connection = not head.keep_alive or self._pool.stopping
        route = route_for(head.path)
        recorder = self.server.recorder
        request = Request(head.method, head.path, head.query, head.headers,
                          self.client_address[0], b"", scheme=self.server.scheme)
        if route is not None and route.max_body and head.method in route.methods:
            early = recorder.early_answer(route, request, head.body_length)
            if early is not None:   # the body is not read: the connection ends after this
                self.close_connection = self._unread_body = True
                return self._send(early)
            if head.version == "HTTP/1.1" and len(self._buffer) < head.body_length and \
                    "100-continue" in head.headers.get("expect", "").lower():
                self.connection.sendall(b"%s 100 Continue\r\n\r\n"
                                        % self.protocol_version.encode())
            request = request._replace(body=self._read_body(head.body_length))
        else:
            self._settle_body(head.body_length)
        self._send(recorder.answer(route, request))

    def _refuse(self, error):
        """Answer a head that parse_head or the reader refused, then close: what follows it
        on the connection was never read as a request."""
        self.close_connection = True
        words = error.request_line.decode("latin-1").split(" ")
        target = words[1] if len(words) > 1 else ""
        path, _, query = target.partition("?")
        self.command, self.path, self.headers = words[0], target, {}
        answer = plain_answer(error.status)
        if error.status in (414, 431):   # over a size limit: a pixel still gets its GIF
            request = Request(words[0], path, query, {}, self.client_address[0], b"",
                              scheme=self.server.scheme)
            answer = self.server.recorder.refuse(route_for(path), request, error.reason,
                                                 error.status)
        self._send(answer)
        if error.status in (414, 431) or self._buffer:
            self._linger()   # the rest of the head, or a body, may still be on its way

    def send_error(self, code, message=None, explain=None):
        """http.server's hook: a plain-text answer (`message` or the status's phrase, never
        HTML) that closes the connection. `explain` is ignored."""
        self.close_connection = True
        answer = plain_answer(code)
        if message is not None:
            text = message.encode("latin-1", "replace") + b"\n"
            answer = answer._replace(body=text, headers=(
                answer.headers[0], ("Content-Length", str(len(text)))))
        self._send(answer)

    def _linger(self, until=None):
        """Half-close and read what the client still sends for a moment (until `until`, by
        default a second), so that closing with unread data does not reset the connection
        before it reads our answer."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 1.0 if until is None else until
            drained = 0
            while drained < MAX_HEAD_BYTES * 8:
                self._buffer.clear()
                self._recv(deadline - time.monotonic())
                drained += len(self._buffer)
        except (_Closed, OSError):
            return

    # -- answering ----------------------------------------------------------------------------

    def _send(self, answer):
        """Send `answer` in one write, with Server, Date and Connection added."""
        server = self.server
        date = server.http_date()
        if answer is GIF_ANSWER and self.command == "GET" and not self.close_connection \
                and self.request_version == self.protocol_version == "HTTP/1.1":
            # What most requests get, a kept-alive pixel's GIF: whole, built once a second.
            # http_date() hands out one bytes object all second, so identity says whether
            # the cached answer is this second's. (Server is the handler class's, as
            # status_lines assumes too.)
            cached_date, data = server.gif_reply
            if cached_date is not date:
                data = self._reply(answer, date)
                server.gif_reply = (date, data)
        else:
            data = self._reply(answer, date)
        if self._started is not None:
            # Counted before the answer goes, so that a client that has its answer and
            # then asks /metrics finds it counted.
            server.durations.observe(time.monotonic() - self._started)
            self._started = None
        self.connection.sendall(data)

    def _reply(self, answer, date):
        """`answer`'s bytes, with Server, Date and Connection added."""
        server = self.server
        status_line = server.status_lines.get(answer.status)
        if status_line is None:   # once per status: Server is the handler class's
            status_line = server.status_lines[answer.status] = \
                b"%s %d %s\r\nServer: %s\r\nDate: " % (
                    self.protocol_version.encode(), answer.status,
                    self.responses[answer.status][0].encode(), self.version_string().encode())
        if answer is GIF_ANSWER:
            headers = _GIF_HEADER_LINES
        else:
            headers = "".join("%s: %s\r\n" % pair for pair in answer.headers).encode("latin-1")
        parts = [status_line, date, b"\r\n", headers]
        if self.close_connection or self.protocol_version == "HTTP/1.0":
            parts.append(b"Connection: close\r\n")
        elif self.request_version == "HTTP/1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if self.command != "HEAD":
            parts.append(answer.body)
        return b"".join(parts)


_GIF_HEADER_LINES = "".join("%s: %s\r\n" % pair for pair in GIF_ANSWER.headers).encode()
# Plain HTTP to a TLS port, answered before a handler reads anything. Its length is counted,
# not typed: a typed 39 for this 38-byte body made curl wait for a byte that never came.
_PLAIN_TO_TLS_BODY = b"This port speaks HTTPS: use https://.\n"
_PLAIN_TO_TLS = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (len(_PLAIN_TO_TLS_BODY), _PLAIN_TO_TLS_BODY))


def _wake(sock):
    """Half-close `sock` for reading: the thread waiting on it wakes, finds EOF, and ends.
    False if it was closed already."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        return False
    return True


class ConnectionPool:
    """Serves at most `size` connections at once, each one start to end on one thread, as
    ThreadingMixIn's thread per connection does. A thread whose connection has ended waits
    up to `linger` seconds to be handed the next one rather than exiting: starting a thread
    costs ~150 us here, about as much as serving a whole request.

    When every slot is taken, submit() closes the connection that has waited longest for
    its client (for a next request, as nginx reuses idle keep-alive connections, or for
    the rest of one: see PixelHandler._recv), and otherwise waits for a slot to free; new
    connections wait meanwhile in the listen backlog.
    """

    def __init__(self, size, serve, *, reporter, linger=WORKER_IDLE_SECONDS):
        self.size = size
        self.stopping = False    # finish what was received, keep no connection alive
        self.closing = False     # ... and take no more connections
        self._serve = serve      # serve(sock, client_address): one connection's whole life
        self._reporter = reporter
        self._linger = linger
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)   # a slot freed, or one went idle
        self._handed = threading.Condition(self._lock)    # a connection for a waiting thread
        self._live = set()       # connections given a slot, served or about to be
        self._idle = {}          # connections waiting for their client, oldest first:
                                 # True for a kept-alive one between requests
        self._evicted = set()    # closed to make room, their slots not yet free
        self._handoff = collections.deque()
        self._waiting_threads = 0
        self._full = False       # submit() waits for a slot
        self.exhausted = 0       # times a connection found every slot taken

    def __len__(self):
        return len(self._live)

    def idle(self):
        """Connections waiting for their client."""
        return len(self._idle)

    def submit(self, sock, client_address):
        """Serve `sock` once a slot is free. False if the pool is closing: the caller closes
        the socket."""
        with self._lock:
            if len(self._live) >= self.size:
                self.exhausted += 1
                self._reporter.say("all %d connection slots are busy; new connections wait"
                                   % self.size, key="slots")
                self._full = True
                while len(self._live) >= self.size and not self.closing:
                    # One at a time: a connection going idle while the one closed to make
                    # room still holds its slot must not be closed as well.
                    if not self._evicted:
                        self._evict_one()
                    self._changed.wait()
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
            threading.Thread(target=self._run, args=(sock, client_address),
                             daemon=True).start()
        except RuntimeError:   # can't start a new thread
            self._release(sock)
            self._reporter.say("cannot start a thread for a new connection; closed it",
                               key="threads")
            return False
        return True

    def mark_idle(self, sock, kept_alive=True):
        """`sock` waits for its client (for a next request if `kept_alive`); when slots run
        out it may be closed, and a kept-alive one is closed by a stop."""
        self._idle[sock] = kept_alive
        if self._full:   # set before submit() looks for one to close: no lost wake-up
            with self._lock:
                self._changed.notify_all()

    def mark_busy(self, sock):
        self._idle.pop(sock, None)

    def _evict_one(self):
        # mark_idle and mark_busy change _idle without the lock (they run once a request),
        # so iterate over a copy (list() of a dict is one step under the GIL) and take
        # each socket out with pop(), which says whether it was still there.
        for sock in list(self._idle):
            if self._idle.pop(sock, None) is not None and _wake(sock):
                self._evicted.add(sock)
                return   # else busy again, or closed, meanwhile

    def _release(self, sock):
        with self._lock:
            self._forget(sock)

    def _forget(self, sock):
        self._live.discard(sock)
        self._evicted.discard(sock)
        self._idle.pop(sock, None)
        self._changed.notify_all()

    def _run(self, sock, client_address):
        while True:
            try:
                self._serve(sock, client_address)
            except BaseException:
                self._release(sock)
                raise
            # Free the slot and wait for the next connection in one step, so that a
            # connection that arrives once the slot is free finds this thread waiting.
            with self._lock:
                self._forget(sock)
                self._waiting_threads += 1
                while not self._handoff:
                    if self.closing or not self._handed.wait(self._linger):
                        if not self._handoff:
                            self._waiting_threads -= 1
                            return
                sock, client_address = self._handoff.popleft()

    def stop(self):
        """Keep no connection alive: close those waiting between requests (HTTP lets a
        client send again what it sent on a kept-alive connection closed under it); every
        other one ends after its next answer. A connection still waiting for its first
        request is waited for: it is somebody's request."""
        self.stopping = True
        self._close_kept_alive()

    def _close_kept_alive(self):
        for sock, kept_alive in list(self._idle.items()):
            if kept_alive and self._idle.pop(sock, None) is not None:
                _wake(sock)

    def close(self, timeout):
        """Take no more connections, and wait up to `timeout` seconds for the live ones to
        end; those still open then are half-closed, cut, and waited for a moment more."""
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


class PixelServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """The built-in HTTP transport: the listening socket, a ConnectionPool, the deadlines
    and a graceful stop. What a request becomes is the `recorder`'s business.

    ThreadingMixIn's process_request, which starts a thread per connection, is replaced by
    the pool, whose threads each run ThreadingMixIn.process_request_thread for one
    connection at a time (so handle_error and shutdown_request work as documented).
    """

    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, recorder, *, max_connections=DEFAULT_MAX_CONNECTIONS,
                 request_timeout=DEFAULT_REQUEST_TIMEOUT, idle_timeout=DEFAULT_IDLE_TIMEOUT,
                 handler=PixelHandler, reporter=None, reuse_port=False, tls=None):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.recorder = recorder
        self.reporter = reporter or Reporter()
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.reuse_port = reuse_port
        self.tls_files = tls              # (certfile, keyfile), or None for plain HTTP
        self.scheme = "https" if tls else "http"   # what each Request says it came by
        self.tls_context = load_tls(*tls) if tls else None
        self.tls_failures = 0             # handshakes that did not end in TLS
        self._tls_lock = threading.Lock()
        self._reloading = threading.Lock()
        if tls:
            recorder.gauges["tls_handshake_failures"] = lambda: self.tls_failures
        self.pool = ConnectionPool(max_connections, self.process_request_thread,
                                   reporter=self.reporter)
        recorder.gauges["connections"] = self.pool.__len__
        self.durations = Histogram()
        recorder.metric_sources.append(self.metric_families)
        self.options_inherited = None    # set by the first connection's handler
        self.status_lines = {}           # status -> the answer's first bytes, up to the Date
        self.gif_reply = (None, b"")     # (Date, a kept-alive GET's whole GIF answer)
        self._date = (0, b"")
        self._drained = threading.Lock()
        super().__init__(address, handler)

    @property
    def stopping(self):
        return self.pool.stopping

    def count_tls_failure(self):
        with self._tls_lock:
            self.tls_failures += 1

    def reload_tls(self):
        """Load the certificate and key files again (SIGHUP: certbot's renew hook): new
        connections get the new pair, and a pair that does not load keeps the old one."""
        if self.tls_files is None or not self._reloading.acquire(blocking=False):
            return   # a SIGHUP storm: one reload at a time
        try:
            context = load_tls(*self.tls_files)
        except ValueError as error:
            self.reporter.say("cannot reload TLS: %s; still using the certificate and key "
                              "loaded before" % error)
            return
        finally:
            self._reloading.release()
        self.tls_context = context
        self.reporter.say("reloaded the TLS certificate %s and key %s" % self.tls_files)

    def metric_families(self):
        """The transport's part of /metrics."""
        return [
            ("pixel_tls_handshake_failures_total", "counter", "Connections to a TLS port "
             "that did not end in TLS: a failed or stalled handshake, plain HTTP.",
             [("", (), self.tls_failures)]),
            ("pixel_open_connections", "gauge", "Connections being served.",
             [("", (), len(self.pool))]),
            ("pixel_idle_connections", "gauge", "Connections waiting for their client.",
             [("", (), self.pool.idle())]),
            ("pixel_connection_slots", "gauge", "Connections served at once at most "
             "(--max-connections).", [("", (), self.pool.size)]),
            ("pixel_connection_slots_exhausted_total", "counter", "Times a new connection "
             "found every slot taken.", [("", (), self.pool.exhausted)]),
            ("pixel_request_duration_seconds", "histogram", "From a request's whole head to "
             "its answer, ready to send.", self.durations.samples()),
        ]

    def server_bind(self):
        # HTTPServer.server_bind resolves the host's FQDN, a DNS round trip at start-up that
        # we do not need.
        if self.reuse_port:   # several processes on one port: the kernel spreads connections
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        # Inherited by accepted sockets on Linux (see PixelHandler.setup).
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _KERNEL_TIMEOUTS:
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
                self.socket.setsockopt(socket.SOL_SOCKET, option,
                                       _timeval(self.request_timeout))

    def http_date(self):
        now = int(self.recorder.clock())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True).encode())
        return self._date[1]

    def process_request(self, request, client_address):
        if not self.pool.submit(request, client_address):
            self.shutdown_request(request)

    def shutdown_request(self, request):
        # socketserver half-closes before closing, because a plain close() used to wait for
        # the garbage collector; the handler holds no other reference, so close() alone
        # sends the FIN now, one system call less per connection.
        request.close()

    def handle_error(self, request, client_address):
        # An exception no handler expected. One line, not a traceback, and at most one per
        # interval: stderr is for operators, and a line per hostile request would bury
        # everything else.
        error = sys.exc_info()[1]
        trace = error.__traceback__
        while trace.tb_next:
            trace = trace.tb_next
        # The address as the logs would have it: none with --no-ip, truncated with
        # --anonymize-ip (stderr ends up in a journal too).
        client = self.recorder.client_ip(Request("", "", "", {}, client_address[0], b""))
        self.reporter.say("internal error serving %s: %s: %s (line %d)" % (
            client or "a client", type(error).__name__, error, trace.tb_lineno),
            key="internal error")

    def shutdown(self):
        """Stop serve_forever(); call it from another thread. Connections already taken,
        and those in the listen queue, are served by drain()."""
        self.pool.stop()
        super().shutdown()

    def stop(self, timeout=None):
        """Stop serve_forever() and drain(); call it from another thread than serve_forever's."""
        self.shutdown()
        self.drain(timeout)

    def drain(self, timeout=None):
        """The one stop sequence, for after serve_forever() has returned: take the
        connections already in the listen queue, close the listening socket, and answer
        every connection taken (waiting at most `timeout` seconds, by default the request
        timeout). Idempotent."""
        with self._drained:
            if self.socket.fileno() < 0:
                return
            self.pool.stop()
            self._accept_queued()
            self.server_close()
            self.pool.close(self.request_timeout if timeout is None else timeout)

    def _accept_queued(self):
        """Accept what the kernel has already accepted for us, so that closing the listening
        socket does not reset it: each connection is served like any other (with
        Connection: close). A connection that arrives between the last accept() and the
        close is still reset, unless Linux's net.ipv4.tcp_migrate_req hands it to another
        --reuse-port process; that window is one system call long."""
        self.socket.setblocking(False)
        while True:
            try:
                request, client_address = self.socket.accept()
            except OSError:   # BlockingIOError: the queue is empty; or EMFILE, ECONNABORTED
                return
            request.setblocking(True)
            self.process_request(request, client_address)


# --------------------------------------------------------------------------------------------
# WSGI: the same recorder behind any WSGI server, or mounted in an existing application

class WsgiApp:
    """A WSGI application over a Recorder: the pixel routes, /health and the HTTP API (and
    /metrics, if `serve_metrics`), with the same answers, GIF and rejects lines as the
    built-in server, and every event on disk before the answer. Any other path is a 404,
    so it can be mounted under a prefix with a dispatcher. The client address is
    REMOTE_ADDR, and X-Forwarded-For is believed under the recorder's trusted proxies. HTTP
    framing, keep-alive and head limits are the WSGI server's, and so is decoding the path:
    a route is matched on PATH_INFO, which WSGI servers percent-decode (the built-in server
    matches the path as sent)."""

    def __init__(self, recorder, serve_metrics=False):
        self.recorder = recorder
        self.serve_metrics = serve_metrics   # /metrics; otherwise it is a 404

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        query = environ.get("QUERY_STRING", "")
        if not query.isascii():   # raw UTF-8 bytes, which WSGI hands over read as Latin-1
            query = urllib.parse.quote_from_bytes(query.encode("latin-1"), _SAFE_TARGET)
        headers = {name[5:].replace("_", "-").lower(): value
                   for name, value in environ.items() if name.startswith("HTTP_")}
        for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(name):
                headers[name.replace("_", "-").lower()] = environ[name]
        route = route_for(path)
        if route is not None and route.kind == "prometheus" and not self.serve_metrics:
            route = None
        request = Request(method, path, query, headers, environ.get("REMOTE_ADDR") or "", b"",
                          environ.get("SCRIPT_NAME", ""),
                          "https" if environ.get("wsgi.url_scheme") == "https" else "http")
        answer = None
        if route is not None and route.max_body and method in route.methods:
            length = environ.get("CONTENT_LENGTH") or "0"
            # WSGI gives no safe way to read a body of unknown size: that is a 411.
            length = int(length) if length.isascii() and length.isdigit() and \
                "transfer-encoding" not in headers else -1
            answer = self.recorder.early_answer(route, request, length)
            if answer is None:
                body = _read_exactly(environ["wsgi.input"], length)
                if len(body) < length:   # the client stopped sending: record nothing
                    answer = plain_answer(400)
                request = request._replace(body=body)
        if answer is None:
            answer = self.recorder.answer(route, request)
        start_response("%d %s" % (answer.status, http.server.BaseHTTPRequestHandler.responses[
            answer.status][0]), list(answer.headers))
        return [b""] if method == "HEAD" else [answer.body]


def _read_exactly(stream, length):
    """`length` bytes of a WSGI input, fewer only if the client stopped sending."""
    chunks, remaining = [], length
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# What a WSGI server with several worker processes is told when the second one finds the
# logs held by the first, after waiting this long for it to let go.
WSGI_LOCK_WAIT = 5.0
WSGI_BUSY = ("one process owns pixel's files, so serve it from one worker process with "
             "threads (gunicorn --workers 1 --threads 8), or give each worker process its "
             "own make_wsgi_app(log=..., rejects=...)")


def make_wsgi_app(log=DEFAULT_LOG, rejects=None, write_keys=(), trusted_proxies=(),
                  record_ip=True, max_bytes=0, keep=0, allow_origins=(),
                  dedupe_window=DEFAULT_DEDUPE_WINDOW, public_url=None, anonymize_ip=False,
                  metrics_token=None, public_metrics=False):
    """A WSGI callable that records into `log` (and `rejects`, by default rejects.jsonl
    beside it), with the command line's meaning for each option. It opens both files now;
    one process should own them, so serve it from one process (threads are fine).

    /metrics is served with a `metrics_token` (only to requests that send it as a Bearer
    token, public_metrics or not) or with public_metrics=True (to anyone); otherwise it is
    a 404 like any other path, as a WSGI app usually shares its port with a public site.

    An option it cannot use, or a file it cannot open, ends the process as a bad command
    line does: one line on stderr, then SystemExit(3), which gunicorn takes for a worker
    that cannot boot, so that it stops rather than starting the worker again and again."""
    reporter = Reporter()
    if rejects is None:
        rejects = os.path.join(os.path.dirname(os.path.abspath(log)), DEFAULT_REJECTS_NAME)
    try:
        try:   # the command line's checks, on the same values
            trusted_proxies = [_network(proxy) for proxy in trusted_proxies]
            allow_origins = [_origin_pattern(origin) for origin in allow_origins]
            public_url = _public_url(public_url) if public_url else None
            metrics_token = _token(metrics_token) if metrics_token is not None else None
        except argparse.ArgumentTypeError as error:
            raise StartupError(str(error)) from None
        # A gunicorn reload (SIGHUP) boots the new worker while the old one still holds
        # the files, on its way out: wait for it a little.
        writers = open_logs(log, rejects, max_bytes=max_bytes, keep=keep, reporter=reporter,
                            busy=WSGI_BUSY, wait=WSGI_LOCK_WAIT)
    except StartupError as error:
        reporter.say("make_wsgi_app: %s" % error)
        raise SystemExit(3) from None
    recorder = Recorder(*writers, write_keys=write_keys, trusted_proxies=trusted_proxies,
                        record_ip=record_ip, anonymize_ip=anonymize_ip,
                        allow_origins=allow_origins, dedupe_window=dedupe_window,
                        public_url=public_url, metrics_token=metrics_token,
                        reporter=reporter)
    recorder.record_torn_tails()
    recorder.remember_logged()
    return WsgiApp(recorder, serve_metrics=metrics_token is not None or public_metrics)


# --------------------------------------------------------------------------------------------
# The forwarder: the event log relayed, in order and at least once, to a Segment-compatible
# HTTP Tracking API (Segment, RudderStack, Jitsu, or another pixel), from a checkpoint.

class Receiver:
    """A Segment-compatible HTTP Tracking API at `url`. A batch goes to <url>/v1/batch as
    gzipped JSON with HTTP Basic auth `<writeKey>:`, as Segment's SDKs send it, over one
    kept-alive connection. Over https the certificate is verified against the system's
    CAs, and `cafile`'s too if given."""

    def __init__(self, url, *, cafile=None, timeout=DEFAULT_FORWARD_TIMEOUT):
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.host, self.port = parts.hostname, parts.port
        self.path = parts.path.rstrip("/") + "/v1/batch"
        # What every message names: the URL posted to, not the base URL it was given.
        self.endpoint = urllib.parse.urlunsplit((parts.scheme, parts.netloc, self.path, "",
                                                 ""))
        self.timeout = timeout
        self._aborted = False
        self.context = None
        if parts.scheme == "https":
            import ssl   # here, not at the top: only a forwarder over https pays its cost
            self.context = ssl.create_default_context()
            if cafile:
                self.context.load_verify_locations(cafile)
        self._connection = None

    def _connect(self):
        if self.context is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                               context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def post(self, write_key, body):
        """POST one gzipped batch; return (status, headers with lower-case names, the first
        MAX_ANSWER_BYTES of the answer as text). Raises OSError or HTTPException when no
        whole answer came within `timeout` seconds, all told: a receiver that drips its
        answer a byte at a time, or sends 100 Continue forever, is cut off then."""
        credential = base64.b64encode((write_key + ":").encode("utf-8")).decode("ascii")
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                   "Authorization": "Basic " + credential, "User-Agent": "pixel/" + __version__}
        self._aborted = False
        watchdog = threading.Timer(self.timeout, self.abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            return self._post(body, headers)
        except (OSError, http.client.HTTPException):
            if self._aborted:
                raise socket.timeout("no whole answer within %g s" % self.timeout) from None
            raise
        finally:
            watchdog.cancel()

    def abort(self):
        """Cut the post under way, from another thread (its deadline, or a stop)."""
        self._aborted = True
        connection = self._connection
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)   # wakes a recv or send blocked on it
            except OSError:   # closed meanwhile: the post is over anyway
                return

    def _post(self, body, headers):
        for second_try in (False, True):
            reused = self._connection is not None
            if not reused:
                self._connection = self._connect()
            try:
                self._connection.request("POST", self.path, body, headers)
                response = self._connection.getresponse()
                answer = response.read(MAX_ANSWER_BYTES)
            except ConnectionError:
                self.close()
                if reused and not second_try and not self._aborted:
                    continue   # it had closed the kept-alive connection: once more, afresh
                raise
            except (OSError, http.client.HTTPException):
                self.close()
                raise
            if not response.isclosed():   # an answer longer than we read: drop the rest
                self.close()
            headers = {name.lower(): value for name, value in response.getheaders()}
            return response.status, headers, answer.decode("utf-8", "replace")

    def close(self):
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()


# The raw bytes "writeKey":" can only be a key: a quote inside a JSON string is escaped.
_WRITE_KEY_FIELD = re.compile(rb'"writeKey":"((?:[^"\\]|\\.)*)"')
_MESSAGE_ID_FIELD = re.compile(rb'"messageId":"((?:[^"\\]|\\.)*)"')


def _top_level_string(line, field):
    """The match of `field` (a compiled "<name>":"<value>" pattern) in a log line, if the
    line has exactly one, at its top level, with no escape in the value: then it can be
    read without parsing the line, which would cost more than all the rest. Every event
    pixel logs has its writeKey and messageId at its top level, so a line with only one
    has it there (checked anyway: at depth 1). None: parse the line instead."""
    matches = list(field.finditer(line))
    if len(matches) != 1 or line[:1] != b"{" or line[-1:] != b"}":
        return None
    match = matches[0]
    if b"\\" in match.group(1) or not match.group(1).isascii() or \
            _depth_at(line[:match.start()]) != 1:
        return None
    return match


def forward_item(line, strip=False):
    """A log line (without its newline) as a batch item: (its writeKey, or None; the event
    as JSON bytes). With `strip`, the event's writeKey is taken out, so that the batch's
    (its Basic auth: --forward-write-key) applies; else it is kept, since Basic auth cannot
    carry a key with a colon in it. Raises Rejected("forward_unreadable") for a line that
    is not a JSON object."""
    match = _top_level_string(line, _WRITE_KEY_FIELD)
    if match is not None:
        key = match.group(1).decode("ascii")
        if not strip:
            return key, line
        start, end = match.span()   # cut it out, with one of the commas beside it
        if line[end:end + 1] == b",":
            return key, line[:start] + line[end + 1:]
        if line[start - 1:start] == b",":
            return key, line[:start - 1] + line[end:]
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
# `pixel.py forward` sends again when given the rejects log.
_SENT_AGAIN = ("forward_unauthorized", "forward_rejected")


def rejected_event(line):
    """For a line of pixel's rejects log (a JSON object with a reason and no type, which
    every event has), the event it holds as a log line, if its reason is one of
    _SENT_AGAIN, else b"": nothing to send. None for any other line."""
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
    """Why a file whose first bytes are `first` (`whole`: all of it) is not a log
    `pixel.py forward` may send, in words; None if it is one. It is if one of its first SNIFF_LINES lines is an event
    (a JSON object with a "type") or a rejects-log line (one with a "reason", whose event
    may be sent again), or if it is empty. Anything else (a checkpoint, JSON of another
    kind, a binary or a compressed file) is refused before anything of it is sent: under
    --write-key, each of its lines would have been posted as an event."""
    lines = first.split(b"\n")
    if not whole:   # the last piece may be cut short by the read
        lines.pop()
    lines = [line for line in lines[:SNIFF_LINES] if line.strip()]
    if not first:
        return None   # nothing to send
    if not lines:
        return "no newline in its first %d bytes" % len(first) if first.strip() else \
            "blank lines only"
    kinds = set()
    for line in lines:
        try:
            document = json.loads(line)
        except UnicodeDecodeError:
            kinds.add("binary")
            continue
        except (ValueError, RecursionError):
            kinds.add("binary" if b"\0" in line else "text")
            continue
        if not isinstance(document, dict):
            kinds.add("json")
        elif isinstance(document.get("type"), str) or isinstance(document.get("reason"), str):
            return None
        else:
            kinds.add("checkpoint" if {"device", "inode", "offset"} <= set(document)
                      else "json")
    if "checkpoint" in kinds:
        return "it is a pixel checkpoint"
    if "json" in kinds:
        return 'JSON, but none of its first lines is an event, an object with a "type"'
    if "binary" in kinds:
        return "binary data, not lines of JSON"
    return "its first lines are not JSON"


def _depth_at(prefix):
    """How many brackets are open at the end of `prefix`, the start of a JSON text."""
    text = prefix.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(text.split(b'"')[::2])   # what lies between strings
    return outside.count(b"{") + outside.count(b"[") - outside.count(b"}") - \
        outside.count(b"]")


def logged_client_id(line):
    """The dedupe_key of a log line (bytes), from its writeKey and messageId, or None."""
    key_match = _top_level_string(line, _WRITE_KEY_FIELD)
    id_match = _top_level_string(line, _MESSAGE_ID_FIELD) if key_match is not None else None
    if id_match is not None:
        return dedupe_key(key_match.group(1).decode("ascii"), id_match.group(1).decode("ascii"))
    if b'"messageId"' not in line:   # garbage, fast: the warm-up may read a lot of it
        return None
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict):
        return None
    write_key, message_id = event.get("writeKey"), event.get("messageId")
    if isinstance(write_key, str) and write_key and isinstance(message_id, str) and \
            message_id:
        return dedupe_key(write_key, message_id)
    return None


def logged_client_ids(paths, count, max_bytes=MAX_WARM_BYTES):
    """The dedupe_keys of the last `count` events in the log files `paths` (the newest
    file first), oldest first, reading at most `max_bytes` from their ends."""
    found = []   # newest first
    lines_left = 2 * count + 1024   # a log of pixel's has an id a line: garbage stops this
    for path in paths:
        try:
            fd = open_file(path)
        except OSError:   # rotated away or deleted since it was listed, or not a file
            continue
        try:
            end, partial = os.fstat(fd).st_size, b""
            while end > 0 and len(found) < count and max_bytes > 0:
                size = min(MAX_WRITE_BYTES, end, max_bytes)
                end, max_bytes = end - size, max_bytes - size
                lines = (os.pread(fd, size, end) + partial).split(b"\n")
                partial = lines.pop(0) if end > 0 else b""   # may go on in the block before
                for line in reversed(lines):
                    client_id = logged_client_id(line) if line else None
                    lines_left -= 1
                    if client_id is not None:
                        found.append(client_id)
                    if len(found) == count or lines_left <= 0:
                        break
                if lines_left <= 0:
                    break
        finally:
            os.close(fd)
        if len(found) >= count or max_bytes <= 0 or lines_left <= 0:
            break
    found.reverse()
    return found


def state_path(log_path, role):
    """Where pixel keeps its `role` state for the log at `log_path`: "forward" (the live
    forwarder's checkpoint) or "backfill" (pixel.py forward's, named after its first file).

    Version 1.0 wrote <log>.forward and <first FILE>.backfill beside the log, where the
    globs users write for the log's files (events.jsonl* for a shipper, events.jsonl.2* for
    a backfill) matched them, and a checkpoint was shipped, and even posted, as an event.
    Now every state file lives in a folder of its own beside the log, .pixel/: a glob of
    the log's name matches no folder of another name, in a shell or in Go or Rust (whose
    `*` also matches a leading dot), since `*` never crosses a slash. Inside it a name
    starts with the role and ends in .json, so that a recursive glob (**/events.jsonl*,
    **/*.jsonl) passes it by too."""
    folder, name = os.path.split(os.path.abspath(log_path))
    return os.path.join(folder, STATE_FOLDER, "%s.%s.json" % (role, name))


def adopt_legacy_state(log_path, role, reporter):
    """state_path(log_path, role), with its folder made and version 1.0's state file there
    (<log>.<role>, beside the log) moved into it, so that an upgrade goes on where the old
    version stopped. Returns (the state path, the old path if a file was moved from it).
    Raises OSError if the folder cannot be made or the old file not moved."""
    path = state_path(log_path, role)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    legacy = os.path.abspath(log_path) + "." + role
    moved = None
    for old in (legacy, legacy + ".tmp"):   # .tmp: what a kill -9 mid-write could leave
        try:
            if not stat.S_ISREG(os.lstat(old).st_mode):
                continue   # not one of ours: leave it be
        except FileNotFoundError:
            continue
        if old == legacy:
            # Over one already in the folder, if any: the old file can only be the newer
            # (version 1.0 run again after an upgrade), since moving it is a rename.
            os.replace(old, path)
            moved = old
            reporter.say("moved the checkpoint %s to %s, where no glob of the log's files "
                         "matches it" % (old, path))
        else:
            os.remove(old)
    return path, moved


def read_checkpoint(path):
    """The checkpoint document at `path`, or None if there is none. Raises OSError, or
    ValueError for a file that is not a checkpoint."""
    try:
        fd = open_file(path)
    except FileNotFoundError:
        return None
    try:
        data = b""
        while len(data) < MAX_CHECKPOINT_BYTES:   # a backfill's list of files sent grows
            block = os.read(fd, MAX_CHECKPOINT_BYTES - len(data))
            if not block:
                break
            data += block
    finally:
        os.close(fd)
    try:
        document = json.loads(data)
    except RecursionError:
        raise ValueError("not a pixel checkpoint: nested too deep") from None
    if not isinstance(document, dict) or not all(
            isinstance(document.get(field), int) and not isinstance(document[field], bool)
            and document[field] >= -1 for field in ("device", "inode", "offset", "mtime_ns",
                                                    "head_bytes")) or \
            not 0 <= document["head_bytes"] <= 4096 or document["offset"] < 0:
        raise ValueError("not a pixel checkpoint")
    return document


def write_checkpoint(path, document):
    """Replace `path` with `document` atomically: written to <path>.tmp, fsynced, renamed
    over `path`, and the folder fsynced, so that a kill -9 or a power cut leaves the old
    checkpoint or the new one, never a mix or nothing."""
    temporary = path + ".tmp"
    data = (json.dumps(document, sort_keys=True) + "\n").encode("ascii")
    fd = open_file(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC |
                   getattr(os, "O_CLOEXEC", 0))   # a FIFO put there would block
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, "short write")
        os.fsync(fd)
    except OSError:
        os.close(fd)
        os.remove(temporary)
        raise
    os.close(fd)
    try:
        os.replace(temporary, path)
    except OSError:   # `path` is a folder, say: no .tmp left behind to pass for state
        os.remove(temporary)
        raise
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class GzipReader:
    """A gzip file read forward from a descriptor, as GzipFile reads one (several members,
    as `cat a.gz b.gz` makes, and zero padding after them), but for damage: GzipFile drops
    what a read() had inflated when it meets the end of a file cut short or a corrupt byte,
    and a backfill of an archive cut in half sent none of it. Here all that inflates before
    the damage is handed out, as zcat does; then `damage` says what stopped it, in words,
    and read() returns b"" from there on. A seek() forward inflates all that lies between,
    which for a large archive takes a while: `stopping` (an Event) cuts it short."""

    CHUNK = 16 * 1024   # compressed bytes read at once; at damage, inflated again a byte
                        # at a time to find its exact place

    def __init__(self, fd, stopping=None):
        self.fd = fd
        self.stopping = stopping
        self._rewind()

    def _rewind(self):
        self.position = 0      # inflated bytes handed out
        self.damage = None
        self._read = 0         # compressed bytes read from the file
        self._input = b""      # ... of which not yet inflated
        self._member = None    # the member being inflated; None before one, or between
        self._members = 0
        self._ready = b""      # inflated, not yet handed out

    def seek(self, offset):
        """Go to inflated byte `offset`: from the top if it lies behind, as GzipFile does.
        Raises InterruptedError if `stopping` is set before it gets there."""
        if offset < self.position:
            self._rewind()
        while self.position < offset:
            if self.stopping is not None and self.stopping.is_set():
                raise InterruptedError(errno.EINTR, "stopped while inflating up to byte %d"
                                       % offset)
            if not self.read(min(offset - self.position, MAX_WRITE_BYTES)):
                break

    def read(self, size):
        """Up to `size` inflated bytes; b"" at the end, or at damage."""
        if not self._ready:
            self._inflate(size)
        block, self._ready = self._ready[:size], self._ready[size:]
        self.position += len(block)
        return block

    def close(self):
        self._ready = self._input = b""
        self._member = None

    def _inflate(self, size):
        """Inflate up to `size` more bytes into _ready, unless the end or damage comes
        first."""
        while not self._ready and self.damage is None:
            if not self._input:
                self._input = os.pread(self.fd, self.CHUNK, self._read)
                self._read += len(self._input)
                if not self._input:
                    if self._member is not None:
                        self.damage = ("cut short: the file ends at byte %d, inside the "
                                       "gzip data" % self._read)
                    return
            if self._member is None:   # a member next, or the zeros that may pad the end
                if self._members:
                    self._input = self._input.lstrip(b"\0")
                    if not self._input:
                        continue
                self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._members += 1
            data, start = self._input, self._read - len(self._input)
            before = self._member.copy()
            try:
                self._ready = self._member.decompress(data, size)
            except zlib.error as error:
                self._ready, self._member = self._salvage(before, data, start, error), None
                return
            if self._member.eof:
                self._input, self._member = self._member.unused_data, None
            else:
                self._input = self._member.unconsumed_tail

    def _salvage(self, member, data, start, error):
        """What `data` inflates to, fed to `member` a byte at a time, before the byte that
        `error` was about; `damage` names that byte."""
        kept, index = [], 0
        while index < len(data):
            try:
                kept.append(member.decompress(data[index:index + 1]))
            except zlib.error:
                break
            index += 1
        message = str(error).rpartition(": ")[2] or str(error)
        self.damage = "corrupt gzip data, found at byte %d of the file (%s)" % (
            start + index, message)
        return b"".join(kept)


class LogFile:
    """One file of a log being forwarded, read through a descriptor of its own, so that a
    rename or a delete of its name does not matter; `offset` is where its unsent lines
    start. A file whose name is known for good (pixel's own rotated names) may be parked:
    its descriptor closed, to be opened again by name (or found again by identity) when
    its turn comes, so that a long backlog of small files holds few descriptors. A gzipped
    file (`archive`, backfill only) is read through a GzipReader, `offset` counting
    inflated bytes; `broken` says why an archive could not be read to its end."""

    def __init__(self, fd, identity, name, offset=0, archive=False, stopping=None):
        self.fd, self.identity, self.name, self.offset = fd, identity, name, offset
        self.named = False      # `name` is pixel's own rotated name: it may be parked
        self.broken = None
        self._archive = GzipReader(fd, stopping) if archive else None
        self._cache, self._cache_start = b"", 0
        self._first = b""       # the first bytes, for head()

    @classmethod
    def open(cls, path, archive=False, stopping=None):
        """The regular file at `path` (OSError for anything else: see open_file). With
        `archive` None, it is read as gzip if its first bytes say it is gzip, whatever its
        name: a pixel log starts with "{". `stopping`: see GzipReader."""
        fd = open_file(path)
        try:
            status = os.fstat(fd)
            if archive is None:
                archive = os.pread(fd, len(GZIP_MAGIC), 0) == GZIP_MAGIC
            return cls(fd, (status.st_dev, status.st_ino), path, archive=archive,
                       stopping=stopping)
        except BaseException:
            os.close(fd)
            raise

    @property
    def archive(self):
        return self._archive is not None

    def park(self):
        if self.fd is not None and self.named and self._archive is None:
            os.close(self.fd)
            self.fd = None

    def unpark(self):
        """Open a parked file again: by its name, or else by its identity among the rotated
        files beside it (an outside rename). False if it is gone."""
        if self.fd is None:
            self.fd = self._find()
        return self.fd is not None

    def duplicate(self):
        """A descriptor of this file for the caller to read by and close, parked or not; None
        if it is gone. Not for an archive."""
        return os.dup(self.fd) if self.fd is not None else self._find()

    def _find(self):
        folder, base = os.path.split(self.name)
        suffix = _ROTATED_NAME.search(base)
        stem = base[:suffix.start()] if suffix else base
        names = [base] + [name for name in os.listdir(folder) if name.startswith(stem)]
        for name in names:
            try:
                fd = open_file(os.path.join(folder, name))
            except OSError:   # gone, unreadable, or not a file (a FIFO would block)
                continue
            status = os.fstat(fd)
            if (status.st_dev, status.st_ino) == self.identity:
                self.name = os.path.join(folder, name)
                return fd
            os.close(fd)
        return None

    def read(self, offset, size):
        if self._archive is None:
            return os.pread(self.fd, size, offset)
        # The forwarder reads on from where its last batch ended, a little before where its
        # last read ended: keep what was read, since gzip can only go back by starting
        # over from the top.
        if not self._cache_start <= offset <= self._cache_start + len(self._cache):
            self._cache, self._cache_start = b"", -1   # until the seek gets there
            self._archive.seek(offset)   # InterruptedError: a stop came first
            self._cache_start = offset
        self._cache = self._cache[offset - self._cache_start:]
        self._cache_start = offset
        while len(self._cache) < size:
            block = self._archive.read(size - len(self._cache))
            if not block:
                self.broken = self._archive.damage
                break
            self._cache += block
        return self._cache[:size]

    def size(self):
        return os.fstat(self.fd).st_size if self._archive is None and self.fd is not None \
            else None

    def disk_size(self):
        """The file's size on disk (an archive's, gzipped)."""
        return os.fstat(self.fd).st_size

    def fingerprint(self):
        """"device:inode:bytes:head" for a backfill's list of files sent: how many of its
        bytes on disk were sent (an archive's: all of them), and a checksum of the first
        of those (at most 4096), as the live checkpoint has. An inode number is reused by
        a new file once the old one is deleted; its size and first bytes are not."""
        length = self.disk_size() if self.archive else self.offset
        return "%d:%d:%d:%s" % (self.identity + (length, self._disk_head(length)))

    def sent_before(self, entries):
        """How many of this file's bytes on disk an earlier backfill sent, by the
        fingerprints in its list with this file's identity: (bytes, head) pairs, or None
        for version 1.0's, which named the inode alone (taken at its word). None if none is
        this file: a different size (an archive's), fewer bytes (a log's, which may only
        grow), or different first bytes."""
        size = self.disk_size()
        for entry in entries:
            if entry is None:
                return size
            length, head = entry
            if (length == size or length < size and not self.archive) and \
                    self._disk_head(length) == head:
                return length
        return None

    def _disk_head(self, length):
        return "%08x" % zlib.crc32(os.pread(self.fd, min(length, 4096), 0))

    def mtime_ns(self):
        return os.fstat(self.fd).st_mtime_ns

    def head(self, length):
        """A fingerprint of the file's first `length` (at most 4096) bytes: an inode number
        can be reused by a new file once the old one is deleted, its first line cannot."""
        if len(self._first) < length:   # read once for an archive, where it costs most
            offset = self.offset
            self._first = self.read(0, 4096)
            if self._archive is not None:
                self.read(offset, 1)   # back where the forwarder reads
        return "%08x" % zlib.crc32(self._first[:length])

    def close(self):
        if self._archive is not None:
            self._archive.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# A rotated file of a log: pixel's <log>.<UTC stamp>, logrotate's <log>.N and <log>-DATE.
_ROTATED_NAME = re.compile(r"(?:\.\d{8}T\d{6}\.\d{3}Z(?:-\d+)?|\.\d{1,6}|-\d{8,14})\Z")
_REFUSED_STATUSES = (400, 413, 422)   # the receiver will never take this batch as it is
_KEY_STATUSES = (401, 403)            # ... nor anything with this writeKey, until fixed
_NOTHING_THERE_STATUSES = (404, 405)  # ... nor anything at this URL (a 3xx neither)

Item = collections.namedtuple("Item", "data end line key", defaults=(None,))
Item.__doc__ = """One event of a batch: its JSON, where its line ends in the log, the line,
the writeKey it goes under."""


class Forwarder:
    """Relays a log to a Receiver: in order, at least once, across crashes and outages.

    It reads each file of the log through a descriptor of its own, from a checkpoint,
    and POSTs the events as batches of at most `batch_events` events and MAX_BATCH_BYTES,
    one writeKey per batch (all under `write_key` if given). After each batch the
    receiver took, the checkpoint (the file's identity and the offset of the last line
    taken) is replaced atomically; after a kill -9 at most the batch in flight is sent
    again. A 2xx moves on; 429 waits its Retry-After; 5xx, a timeout or no connection is
    retried with exponential backoff and jitter, forever; 400, 413 or 422 splits the batch
    until the event the receiver refuses is alone, and writes that event to the rejects
    log, unless the receiver seems to refuse every event (see _deliver); 401 or 403 for a
    key of `configured_keys` (or `write_key`) pauses forwarding and retries every
    BACKOFF_MAX seconds, and for any other key, which anyone can send, writes that
    batch's events to the rejects log, for `pixel.py forward` to send again. Nothing is
    dropped.

    follow(writer) relays a live log as its LogWriter writes it, through pixel's own
    rotations and anyone else's renames; add_files() relays a list of files once
    (`pixel.py forward`). run() is the loop; start() runs it on a thread.
    """

    def __init__(self, receiver, rejects, *, write_key=None, configured_keys=(),
                 batch_events=DEFAULT_FORWARD_BATCH, alert=DEFAULT_FORWARD_ALERT,
                 backoff=(BACKOFF_FIRST, BACKOFF_MAX), reporter=None, clock=time.time):
        self.receiver = receiver
        self.rejects = rejects       # a LogWriter, for events that are never sent
        self.write_key = write_key
        # The keys the operator named (--write-key, --forward-write-key): a receiver that
        # refuses one of them is set up wrong, which only the operator can fix.
        self.configured_keys = frozenset(configured_keys) | (
            {write_key} if write_key is not None else set())
        self.batch_events = batch_events
        self.alert = alert
        self.first_delay, self.max_delay = backoff   # tests shorten them
        self.reporter = reporter or Reporter()
        self.clock = clock
        self.writer = None           # the LogWriter followed, in live mode
        self.checkpoint = None       # the checkpoint file's path
        self.done = []               # backfill: LogFile.fingerprint() of the files sent
        self.files = collections.deque()
        self._files_lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = None
        self.sent = 0                # events the receiver took
        self.refused = 0             # events written to the rejects log instead
        self.refused_by_reason = collections.Counter()
        self.skipped = 0             # rejects-log lines with no event to send again
        self.failed_attempts = 0     # posts that got no answer, or one to retry
        self.last_success = None     # clock time of the last 2xx
        self.last_error = None
        self.backoff = 0.0           # the wait now under way, while retrying
        self.paused_key = None       # the writeKey a 401 or 403 stopped
        self.refusing_all = None     # why the receiver, not the events, seems at fault
        self.wrong_url = None        # its last answer saying nothing is at the URL
        self.gave_up = None          # backfill: why it stopped for good (a configured key
                                     # refused, nothing at the URL)
        self.truncated = []          # backfill: the files it could not read to their end
        self._failing = 0            # attempts failed in a row
        self._refused_in_a_row = 0   # events refused alone since the receiver last took one
        self._held = []              # (item, rejection, answer): refused alone, not yet
                                     # written off
        self._doubted = 0            # rounds in a row it refused every event sent (_doubt)
        self._lines_done = 0         # lines sent or refused since the start
        self._backlog_start = None   # (lines unsent at the start, writer.written then)
        self._counting = None        # what _count_backlog() counts: files, live end
        self._caught_up_at = clock()   # all lines written before this were sent

    # -- what to read ---------------------------------------------------------------------

    def follow(self, writer):
        """Relay `writer`'s log from its checkpoint (see state_path). With none, start at the
        live file's first line (older rotated files are for `pixel.py forward`). If the
        file the checkpoint names is gone, start at the oldest file written since."""
        self.writer = writer
        self.checkpoint = adopt_legacy_state(writer.path, "forward", self.reporter)[0]
        try:
            checkpoint = read_checkpoint(self.checkpoint)
        except (OSError, ValueError) as error:
            self.reporter.say("cannot read the checkpoint %s (%s): forwarding every log "
                              "file from its start; the receiver may get events twice"
                              % (self.checkpoint, getattr(error, "strerror", None) or error))
            checkpoint = _NO_CHECKPOINT
        fd, identity, end, written = writer.follow(self)
        live = LogFile(fd, identity, writer.path)
        files = [live]
        try:
            files[:0] = self._rotated(writer.path, identity, checkpoint)
            start = self._resume(checkpoint, files, end)
        except BaseException:
            for log in files:
                log.close()
            raise
        for log in files[:start]:
            log.close()
        with self._files_lock:   # files the writer opened since follow() come after these
            self.files.extendleft(reversed(files[start:]))
            self._park()
        self._counting = (files[start:], end, written)
        # At once: a restart before the first batch is taken must find where to start, or
        # the files rotated meanwhile would be taken for history. No checkpoint can be
        # written, no forwarding: the caller refuses to start.
        self._save(self.files[0], quiet=False)

    @staticmethod
    def _rotated(path, live, checkpoint):
        """The rotated files of the log at `path` that may hold unsent lines, oldest first,
        each opened: by last write, then by name (a coarse clock can give two files one
        mtime, and pixel's stamps sort in time order). Only files written to since the
        checkpoint was (its file among them, whose mtime can only have grown) are opened,
        so that a folder of ten thousand old files costs no more; none without one."""
        folder, base = os.path.split(path)
        found = []
        for name in os.listdir(folder):
            if name.startswith(base) and _ROTATED_NAME.match(name[len(base):]):
                try:
                    status = os.stat(os.path.join(folder, name))
                except OSError:   # gone since listdir
                    continue
                if (status.st_dev, status.st_ino) != live:
                    found.append((status.st_mtime_ns, name, (status.st_dev, status.st_ino)))
        if checkpoint is None:
            return []
        opened = []
        for mtime, name, identity in sorted(found):
            if mtime < checkpoint["mtime_ns"]:
                continue
            if len(opened) >= MAX_OPEN_LOG_FILES:   # opened when its turn comes
                log = LogFile(None, identity, os.path.join(folder, name))
                log.named = True
                opened.append(log)
                continue
            try:
                log = LogFile.open(os.path.join(folder, name))
            except OSError:   # deleted since, or not readable: nothing of it can be sent
                continue
            if log.identity != identity:   # replaced since the stat: not the same file
                log.close()
                continue
            log.named = _ROTATED_SUFFIX.search(name) is not None
            opened.append(log)
        return opened

    def _resume(self, checkpoint, files, live_end):
        """The index in `files` to start at, with that file's offset set."""
        if checkpoint is None:
            return len(files) - 1
        for index, log in enumerate(files):
            if log.identity == (checkpoint["device"], checkpoint["inode"]) and \
                    log.unpark() and \
                    log.head(checkpoint["head_bytes"]) == checkpoint.get("head"):
                end = live_end if log is files[-1] else log.size()
                log.offset = checkpoint["offset"]
                if log.offset > end:   # lost in a power cut after it was sent, or cut
                    self.reporter.say("%s is shorter than the checkpoint says (%d < %d "
                                      "bytes): forwarding from its end" % (log.name, end,
                                                                           log.offset))
                    log.offset = end
                return index
        start = next(index for index, log in enumerate(files)
                     if log is files[-1] or log.fd is None or
                     log.mtime_ns() >= checkpoint["mtime_ns"])
        if checkpoint["device"] != -1:
            self.reporter.say("the file the checkpoint names (%s, inode %d) is gone: "
                              "forwarding from %s, the oldest file written since; the "
                              "receiver may get events twice" % (
                                  checkpoint.get("path"), checkpoint["inode"],
                                  files[start].name))
        return start

    def add_files(self, paths, checkpoint):
        """Relay the files at `paths`, in that order, once (backfill), resuming from the
        checkpoint file `checkpoint`: files it lists as sent are skipped. Each file is
        opened and its first lines looked at before anything is sent: OSError for one that
        is not a regular file (see open_file), ValueError for one that is not an event log
        (see not_an_event_log)."""
        self.checkpoint = checkpoint
        try:
            document = read_checkpoint(checkpoint) or _NO_CHECKPOINT
        except ValueError as error:
            raise ValueError("cannot read the checkpoint %s: %s" % (checkpoint,
                                                                     error)) from None
        done = document.get("done")
        self.done = [entry for entry in done if isinstance(entry, str)] \
            if isinstance(done, list) else []
        sent = collections.defaultdict(list)   # "device:inode" -> [(bytes, head) or None]
        for entry in self.done:
            parts = entry.split(":")
            if len(parts) == 4 and parts[2].isdigit():
                sent[":".join(parts[:2])].append((int(parts[2]), parts[3]))
            elif len(parts) == 2:   # version 1.0's: the inode alone
                sent[entry].append(None)
        seen = set()
        for path in paths:
            if self.stopping.is_set():   # thousands of archives take a while to look at
                break
            log = LogFile.open(path, archive=None, stopping=self.stopping)
            self.files.append(log)   # closed by close(), whatever happens next
            for size in (8192, SNIFF_BYTES):   # most logs show an event in 8 KiB
                first = log.read(0, size)
                problem = not_an_event_log(first, whole=len(first) < size)
                if problem is None or len(first) < size:
                    break
            if problem is not None:
                raise ValueError("cannot forward %s: not a pixel event log (%s)"
                                 % (path, problem))
            if path.endswith(".gz") and not log.archive:
                self.reporter.say("%s is not gzipped: sending it as it is" % path)
            before = log.sent_before(sent["%d:%d" % log.identity])
            if log.identity in seen or before is not None and before >= log.disk_size():
                self.reporter.say("%s: already sent, skipped" % path)
                self.files.pop().close()
                continue
            seen.add(log.identity)
            if before is not None:   # an append-only log that has grown since
                self.reporter.say("%s: sent up to byte %d before; sending what was "
                                  "written since" % (path, before))
                log.offset = before
            elif log.identity == (document["device"], document["inode"]) and \
                    log.head(document["head_bytes"]) == document.get("head"):
                log.offset = document["offset"]
        self._counting = (list(self.files), None, 0)

    def opened(self, fd, identity, path):
        """Called by the followed LogWriter, under its lock, for each file it opens."""
        with self._files_lock:
            if any(log.identity == identity for log in self.files):
                os.close(fd)   # reopened the file it had (SIGHUP): nothing new
                return
            self.files.append(LogFile(fd, identity, path))
            self._park()

    def renamed(self, identity, path):
        """Called by the followed LogWriter when its rotation renames file `identity` to
        `path`, a name it keeps for good: the file may now be parked."""
        with self._files_lock:
            for log in self.files:
                if log.identity == identity:
                    log.name, log.named = path, True
            self._park()

    def _park(self):
        """Hold at most MAX_OPEN_LOG_FILES descriptors: close those of files waiting in the
        middle of the queue whose names are known (never the one being read, nor the live
        one). Under the files lock."""
        open_files = [log for log in self.files if log.fd is not None]
        for log in open_files[1:-1]:
            if len(open_files) <= MAX_OPEN_LOG_FILES:
                break
            if log.named:
                log.park()
                open_files.remove(log)

    def held(self):
        """The identities of the files with lines not yet sent (LogWriter's --keep asks)."""
        with self._files_lock:
            return {log.identity for log in self.files}

    # -- the loop -------------------------------------------------------------------------

    def start(self):
        self.thread = threading.Thread(target=self._run_on_thread, name="pixel-forwarder",
                                       daemon=True)
        self.thread.start()

    def stop(self, timeout=None):
        """Ask the loop to stop, and wait up to `timeout` for it. A batch in flight is cut:
        it is sent again after the restart, and a receiving pixel dedupes it."""
        self.stopping.set()
        self.receiver.abort()
        if self.thread is not None:
            self.thread.join(timeout)

    def close(self):
        """Close the files and the connection; not while the loop still runs (a stop that
        timed out mid-post): then the process is exiting, and its end closes them."""
        if self.thread is not None and self.thread.is_alive():
            return
        with self._files_lock:
            while self.files:
                self.files.popleft().close()
        self.receiver.close()

    def _run_on_thread(self):
        while not self.stopping.is_set():
            try:
                self.run()
            except Exception as error:   # a bug: say it, and start the loop again
                trace = error.__traceback__
                while trace.tb_next:
                    trace = trace.tb_next
                self.reporter.say("forwarder error: %s: %s (line %d); retrying in %d s" % (
                    type(error).__name__, error, trace.tb_lineno, self.max_delay),
                    key="forwarder error")
                self.stopping.wait(self.max_delay)

    def run(self):
        """Forward until stop() (or, for a backfill, until every file is sent). True if it
        ended with everything sent."""
        try:
            self._count_backlog()
            while not self.stopping.is_set():
                batch = self._next_batch()
                if batch is None:
                    if self.writer is None and not self.files:
                        return True
                    self.stopping.wait(FORWARD_POLL)
                elif batch:
                    log, key, items, read_at = batch
                    if self.refusing_all is None:
                        delivered = self._deliver(log, key, items)
                    else:
                        delivered = self._probe(log, items)
                    if delivered and self._held:   # it refused each event from the first held on
                        delivered = self._doubt()
                    self._held = []   # not written off: sent again, from the first of them
                    if not delivered:
                        break
                    if read_at is not None and log.offset == items[-1].end:
                        self._caught_up_at = read_at
        except InterruptedError:   # a stop, in the middle of inflating an archive
            pass
        return False

    def _count_backlog(self):
        """Count the lines not yet sent, once: those after the checkpoint when the loop
        starts, then the writer's count of lines written keeps the figure current."""
        if self._counting is None:
            return
        files, live_end, written = self._counting
        lines = 0
        for log in files:
            offset = log.offset
            end = live_end if not log.archive and live_end is not None and \
                log is files[-1] else None
            if log.archive:
                fd = None
            else:   # a descriptor of its own: a parked file is not opened meanwhile
                with self._files_lock:
                    fd = log.duplicate()
                if fd is None:
                    continue
            try:
                while end is None or offset < end:
                    if self.stopping.is_set():   # a backlog of terabytes takes a while
                        return
                    size = MAX_WRITE_BYTES if end is None else min(MAX_WRITE_BYTES,
                                                                   end - offset)
                    block = log.read(offset, size) if fd is None else \
                        os.pread(fd, size, offset)
                    if not block:
                        break
                    lines += block.count(b"\n")
                    offset += len(block)
            finally:
                if fd is not None:
                    os.close(fd)
        self._backlog_start = (lines, written)
        self._counting = None

    def _next_batch(self):
        """The next batch to send, as (file, writeKey, items, read_at): `read_at` is the
        time of a read that the batch takes everything of. None if there is nothing to send
        now; () if something was done without sending (a line refused here, a file
        finished), so the caller looks again at once."""
        with self._files_lock:
            if not self.files:
                return None
            log, later = self.files[0], len(self.files) > 1
            found = log.unpark()
        if not found:
            self.reporter.say("%s (inode %d) is gone before the forwarder could send it: "
                              "its unsent events are lost to the receiver" % (
                                  log.name, log.identity[1]))
            self._finished(log)
            return ()
        end = None if later or self.writer is None else self.writer.committed_end(log.identity)
        size = log.size()
        if size is not None and log.offset > size:
            self.reporter.say("%s was cut shorter under the forwarder (copytruncate?): "
                              "forwarding it from its start" % log.name)
            log.offset = 0
        if end is not None:   # after a truncate from outside, the writer's count is stale
            end = min(end, size)
        read_at = self.clock()
        limit = FORWARD_READ if end is None else min(FORWARD_READ, end - log.offset)
        data = log.read(log.offset, limit) if limit > 0 else b""
        cut = data.rfind(b"\n") + 1
        if not cut:
            if len(data) == FORWARD_READ:   # a line longer than any batch: not an event
                return self._refuse_oversized(log)
            if end is None and (later or self.writer is None):   # this file is complete
                if data:   # a last line with no newline: a torn write from long ago
                    return self._refused(log, Item(b"", log.offset + len(data), data),
                                         Rejected("forward_unreadable", "no newline"))
                if log.broken is not None:   # an archive that does not inflate to its end
                    broken, log.broken = log.broken, None
                    problem = "%s cannot be read past byte %d (inflated): %s" % (
                        log.name, log.offset, broken)
                    if not self._refuse(log, Item(b"", log.offset, b""),
                                        Rejected("forward_truncated", problem)):
                        return None
                    self.truncated.append(problem)
                self._finished(log)
                return ()
            if not data:
                self._caught_up_at = read_at
            return None
        items, key, offset = [], None, log.offset
        batch_size = len(_BATCH_OPEN) + len(_BATCH_CLOSE) + 40   # 40: the sentAt
        for line in data[:cut - 1].split(b"\n"):
            line_end = offset + len(line) + 1
            try:
                line_key, item = forward_item(line, strip=self.write_key is not None)
                if line_key is None:   # a line of a rejects log? Then the event it holds.
                    held = rejected_event(line)
                    if held == b"":   # a rejection with no event to send again: skipped
                        if items:
                            break
                        self.skipped += 1
                        self._lines_done += 1
                        log.offset = offset = line_end
                        continue
                    if held is not None:
                        line = held
                        line_key, item = forward_item(line, strip=self.write_key is not None)
                line_key = self.write_key or line_key
                if line_key is None:
                    raise Rejected("forward_unreadable", "no writeKey")
                if len(item) > MAX_FORWARD_ITEM:
                    raise Rejected("forward_unreadable", "an event of %d bytes: Segment-"
                                   "compatible receivers take at most 32 KB" % len(item))
            except Rejected as rejection:
                if items:   # send what came before it first: the log's order is kept
                    break
                return self._refused(log, Item(b"", line_end, line), rejection)
            if self.refusing_all is None:   # one key a batch, as Basic auth carries one
                full = line_key != key or len(items) == self.batch_events or \
                    batch_size + len(item) + 1 > MAX_BATCH_BYTES
            else:   # a receiver in doubt is sent each event alone, under its own (_probe)
                full = len(items) == PROBES_A_ROUND
            if items and full:
                break
            key = line_key
            items.append(Item(item, line_end, line, line_key))
            batch_size += len(item) + 1
            offset = line_end
        if not items:   # only rejects-log lines skipped: where the next batch starts
            self._save(log)
            return ()
        everything = end is not None and offset == end
        return log, key, items, read_at if everything else None

    def _finished(self, log):
        """`log` is sent to its end: on to the next file. The checkpoint names that one
        at once, so that it never names a file --keep may now delete."""
        with self._files_lock:
            self.files.popleft()
            following = self.files[0] if self.files else None
            if following is not None:
                following.unpark()
        if self.writer is None:
            if log.fd is not None:   # one fingerprint a file: this one's replaces any other
                same = "%d:%d" % log.identity
                self.done = [entry for entry in self.done if entry != same and
                             not entry.startswith(same + ":")] + [log.fingerprint()]
            self._save(log)
        elif following is not None and following.fd is not None:
            self._save(following)
        with self._files_lock:   # not while /health reads it
            log.close()

    def _refuse_oversized(self, log):
        """Skip a line longer than FORWARD_READ: read on to its newline, refuse its start."""
        offset = log.offset + FORWARD_READ
        while True:
            if self.stopping.is_set():   # a "line" may be gigabytes long
                return None
            block = log.read(offset, MAX_WRITE_BYTES)
            newline = block.find(b"\n")
            if newline >= 0 or not block:
                end = offset + (newline + 1 if newline >= 0 else len(block))
                break
            offset += len(block)
        return self._refused(log, Item(b"", end, log.read(log.offset, MAX_REJECT_RAW)),
                             Rejected("forward_unreadable", "a line of %d bytes"
                                      % (end - log.offset)))

    # -- sending --------------------------------------------------------------------------

    def _deliver(self, log, key, items):
        """Send `items` until the receiver takes them, splitting the batch on a 400 to find
        the events it refuses. False if stop() came first.

        Some receivers refuse every event, for reasons of their own: nginx answering plain
        HTTP sent to its HTTPS port, a WAF, a load balancer mid-deploy. So the receiver may
        refuse MAX_REFUSED_IN_A_ROW events alone in a row, taking none between, and they
        are written off; the next one it refuses is held, not written off, and the rest of
        the batch waits: run() then doubts the receiver (_doubt, _probe)."""
        if self._held:   # the receiver is doubted: this part waits for the next round
            return True
        status, answer = self._post(key, items)
        if status is None:
            return False
        if 200 <= status < 300:
            if not self._trust(log):
                return False
            self._acknowledge(log, items, sent=True)
            return True
        if status in _KEY_STATUSES:   # _post returns it only for a key no one configured
            return self._set_aside(log, key, items, "%d %s" % (status, answer[:1024]))
        if len(items) == 1:
            return self._refused_alone(log, items[0], status, answer)
        middle = len(items) // 2
        return self._deliver(log, key, items[:middle]) and \
            self._deliver(log, key, items[middle:])

    def _refused_alone(self, log, item, status, answer):
        """The receiver refused `item` alone: write it off, or hold it (see _deliver)."""
        rejection = Rejected("forward_rejected", "%d from %s: %s" % (
            status, self.receiver.url, answer[:1024]))
        self._refused_in_a_row += 1
        if self._refused_in_a_row <= MAX_REFUSED_IN_A_ROW:
            return self._refuse(log, item, rejection)
        self._held.append((item, rejection, "%d %s" % (status, " ".join(
            answer[:200].split()))))
        return True

    def _probe(self, log, items):
        """A round with the receiver in doubt: send `items` (from the first event held on,
        of any keys) one at a time, until it takes one. Then those it refused meanwhile
        were refused for themselves: they are written off, and forwarding goes on as
        before. None taken, run() waits and tries again (_doubt). Costs a post an event,
        at most PROBES_A_ROUND a round, with the rounds spaced as for a 5xx; so a run of
        more than that many events the receiver refuses, each alone, is taken for its
        fault until it takes the event after them."""
        for item in items:
            status, answer = self._post(item.key, [item])
            if status is None:
                return False
            if 200 <= status < 300:
                if not self._trust(log):
                    return False
                self._acknowledge(log, [item], sent=True)
                return True   # the rest as usual, in batches
            if status in _KEY_STATUSES:
                done = self._set_aside(log, item.key, [item], "%d %s" % (status,
                                                                          answer[:1024]))
            else:
                done = self._refused_alone(log, item, status, answer)
            if not done:
                return False
        return True

    def _trust(self, log):
        """The receiver took an event: those held before it were refused for themselves,
        and it is not (or no longer) doubted. False if stop() came first."""
        held, self._held = self._held, []
        if not all(self._refuse(log, item, rejection) for item, rejection, _ in held):
            return False
        self._refused_in_a_row = self._doubted = 0
        if self.refusing_all is not None:
            self.refusing_all = None
            self.reporter.say("forwarding to %s: it takes events again; %d event(s) it "
                              "refused alone written to the rejects log" % (
                                  self.receiver.endpoint, len(held)))
        return True

    def _doubt(self):
        """The receiver refused alone every event it was sent from the first one held on:
        it, not they, is taken to be at fault. Say so once, show it in /health, and wait
        as for a 5xx before they are sent again (_probe). False if stop() came first."""
        answer = self._held[-1][2]
        self._doubted += 1
        delay = backoff_delay(self._doubted, self.first_delay, self.max_delay)
        if self.refusing_all is None:
            self.reporter.say(
                "forwarding to %s: it refused %d events in a row, each alone, taking none "
                "between (%s): the receiver, not the events, is taken to be at fault. The "
                "first %d are in the rejects log; the rest are kept, and sent one at a time "
                "with backoff until it takes one (next in %.1f s)" % (
                    self.receiver.endpoint, self._refused_in_a_row, answer,
                    MAX_REFUSED_IN_A_ROW, delay))
        self.refusing_all = "it refuses every event, each alone: %s" % answer
        self.failed_attempts += 1
        self.last_error, self.backoff = self.refusing_all, delay
        return not self.stopping.wait(delay)

    def _set_aside(self, log, key, items, problem):
        """The receiver refused writeKey `key`, which the operator did not configure: anyone
        can send a pixel with any key, so the events of that batch go to the rejects log,
        for `pixel.py forward` to send again, and forwarding goes on with the rest. Events
        held before them are written off first: it answered about a key, so it was not
        refusing everything. False if stop() came first."""
        rejection = Rejected("forward_unauthorized", "%s refused writeKey %s: %s" % (
            self.receiver.endpoint, key, problem))
        self.reporter.say("forwarding to %s: it refused writeKey %s (%s), which is not one "
                          "of --write-key or --forward-write-key: its events go to the "
                          "rejects log as forward_unauthorized, for `pixel.py forward` to send "
                          "again once the key works; forwarding goes on" % (
                              self.receiver.endpoint, key, " ".join(problem[:200].split())),
                          key="forward_unauthorized")
        held, self._held = self._held, []
        return all(self._refuse(log, item, refused) for item, refused, _ in held) and \
            all(self._refuse(log, item, rejection) for item in items)

    def _post(self, key, items):
        """(status, answer) once the receiver answers 2xx, 400, 413 or 422, or 401 or 403
        for a key not configured; (None, None) if stop() came first, or a backfill gave up.
        Anything else is retried after a wait."""
        body = _BATCH_OPEN + b",".join(item.data for item in items) + _BATCH_CLOSE % \
            format_time(self.clock()).encode("ascii")
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        body = compressor.compress(body) + compressor.flush()
        endpoint = self.receiver.endpoint
        while not self.stopping.is_set():
            delay = None
            try:
                status, headers, answer = self.receiver.post(key, body)
            except (OSError, http.client.HTTPException) as error:
                if self.stopping.is_set():   # stop()'s own cut of the post: not a fault
                    break
                problem = "%s: %s" % (type(error).__name__, error)
            else:
                if 200 <= status < 300 or status in _REFUSED_STATUSES or \
                        status in _KEY_STATUSES and key not in self.configured_keys:
                    self._answered()
                    return status, answer
                problem = "%d %s" % (status, " ".join(answer[:200].split()))
                if status in _KEY_STATUSES:
                    if self.writer is None:   # a backfill stops: the key is wrong
                        self.gave_up = "%s refused writeKey %s: %s" % (endpoint, key, problem)
                        self.stopping.set()
                        break
                    delay = self.max_delay
                    if self.paused_key != key:
                        self.paused_key = key
                        self.reporter.say(
                            "forwarding to %s is PAUSED: it refused writeKey %s (%s). Check "
                            "--forward-write-key or the receiver's keys; nothing is dropped, "
                            "retrying every %d s" % (endpoint, key, problem, self.max_delay))
                elif status in _NOTHING_THERE_STATUSES or 300 <= status < 400:
                    # No API there (a redirect is never followed): waiting will not fix it.
                    location = headers.get("location")
                    problem += "%s: nothing at this URL takes batches; check the URL" % (
                        " (to %s)" % location[:200] if location else "")
                    if self.writer is None:
                        self.gave_up = "%s answered %s" % (endpoint, problem)
                        self.stopping.set()
                        break
                    self.wrong_url = problem
                elif status == 429:   # as it says, but never at once: Retry-After: 0 is a loop
                    delay = retry_after(headers.get("retry-after"), self.clock())
                    if delay is not None:
                        delay = max(delay, self.first_delay)
            self._failing += 1
            self.failed_attempts += 1
            if delay is None:
                delay = backoff_delay(self._failing, self.first_delay, self.max_delay)
            self.last_error, self.backoff = problem, delay
            self.reporter.say("forwarding to %s: %s; %d failed attempt(s) in a row, next in "
                              "%.1f s" % (endpoint, problem, self._failing, delay),
                              key="forward")
            self.stopping.wait(delay)
        return None, None

    def _answered(self):
        if self._failing:
            self.reporter.say("forwarding to %s again, after %d failed attempt(s)"
                              % (self.receiver.endpoint, self._failing))
        self._failing, self.backoff, self.paused_key, self.wrong_url = 0, 0.0, None, None

    def _acknowledge(self, log, items, sent):
        log.offset = items[-1].end
        self._lines_done += len(items)
        if sent:
            self.sent += len(items)
            self.last_success = self.clock()
        self._save(log)

    def _refused(self, log, item, rejection):
        """_refuse, as _next_batch answers: () to look again at once, None to stop."""
        return () if self._refuse(log, item, rejection) else None

    def _refuse(self, log, item, rejection):
        """Write `item` to the rejects log with `rejection`, then move past it. False if
        stop() came while the rejects log could not be written: a line is tried again
        until it is written, never skipped."""
        record = {"reason": rejection.reason, "detail": rejection.detail}
        try:
            record["event"] = json.loads(item.line)
        except (ValueError, RecursionError):
            record["line"] = item.line[:MAX_REJECT_RAW].decode("utf-8", "replace")
        record["receivedAt"] = format_time(self.clock())
        try:
            line = (_encode(record) + "\n").encode("ascii")
        except (ValueError, RecursionError):   # 1e400, or too deep: quote the line instead
            del record["event"]
            record["line"] = item.line[:MAX_REJECT_RAW].decode("utf-8", "replace")
            line = (_encode(record) + "\n").encode("ascii")
        failures = 0
        while not self.rejects.write([line]):
            failures += 1
            if self.stopping.wait(backoff_delay(failures, self.first_delay, self.max_delay)):
                return False
        self.refused += 1
        self.refused_by_reason[rejection.reason] += 1
        self._acknowledge(log, [item], sent=False)
        return True

    def _save(self, log, quiet=True):
        """Write the checkpoint: `log` and the offset its unsent lines start at. Failing,
        say so (once an interval), or with quiet=False raise the OSError."""
        head_bytes = min(log.offset, 4096)
        document = {"path": log.name, "device": log.identity[0], "inode": log.identity[1],
                    "offset": log.offset, "head_bytes": head_bytes,
                    "head": log.head(head_bytes), "updated": format_time(self.clock()),
                    "target": self.receiver.url}
        try:
            document["mtime_ns"] = log.mtime_ns()
            if self.writer is None:
                document["done"] = self.done
            write_checkpoint(self.checkpoint, document)
        except OSError as error:
            if not quiet:
                raise
            self.reporter.say("cannot write the checkpoint %s: %s; forwarding goes on, and "
                              "after a restart the receiver may get events twice" % (
                                  self.checkpoint, error.strerror or error),
                              key="checkpoint")

    # -- what /health shows ---------------------------------------------------------------

    def backlog(self):
        """(lines, bytes, files) not yet sent."""
        size = 0
        with self._files_lock:   # so that the forwarder closes none of them meanwhile
            queued = list(self.files)
            for log in queued:
                end = self.writer.committed_end(log.identity) if self.writer else None
                if end is None and log.fd is not None:
                    end = log.size() or 0
                elif end is None:   # parked: by its name
                    try:
                        end = os.stat(log.name).st_size
                    except OSError:
                        end = log.offset
                size += max(0, end - log.offset)
        files = len(queued) - (self.writer is not None)   # the live file is not behind
        if self._backlog_start is None:
            return None, size, files
        unsent, written = self._backlog_start
        if self.writer is not None:
            unsent += self.writer.written - written
        lines = unsent - self._lines_done
        return max(0, lines), size, files

    def oldest_unsent(self):
        """The receivedAt of the first line not yet sent, as a clock time; None if there is
        none, or it has none."""
        with self._files_lock:   # so that the forwarder closes it not meanwhile
            log = self.files[0] if self.files else None
            if log is None or log.fd is None or log.archive:
                return None
            line = log.read(log.offset, MAX_EVENT_LINE).partition(b"\n")[0]
        try:
            received = json.loads(line).get("receivedAt")
            return parse_time(received)
        except (ValueError, AttributeError, TypeError, RecursionError):
            return None

    def status(self):
        """The forwarder's part of /health."""
        lines, size, files = self.backlog()
        now = self.clock()
        age = 0.0
        if lines or size:
            oldest = self.oldest_unsent()
            age = max(0.0, now - (oldest if oldest is not None else self._caught_up_at))
        return {"target": self.receiver.url, "sent": self.sent, "refused": self.refused,
                "lines_behind": lines, "bytes_behind": size, "files_behind": files,
                "backlog_seconds": round(age, 3),
                "last_success": None if self.last_success is None
                else format_time(self.last_success),
                "failed_attempts": self.failed_attempts, "backoff": round(self.backoff, 3),
                "last_error": self.last_error, "paused_write_key": self.paused_key,
                "receiver_fault": self.refusing_all or self.wrong_url,
                "degraded": self.paused_key is not None or self.refusing_all is not None or
                self.wrong_url is not None or age > self.alert}


_BATCH_OPEN = b'{"batch":['
_BATCH_CLOSE = b'],"sentAt":"%s"}'


def backoff_delay(failures, first=BACKOFF_FIRST, maximum=BACKOFF_MAX):
    """Seconds to wait after `failures` failed attempts in a row: 1, 2, 4 ... up to 60,
    each with up to half again of random jitter, so that forwarders that failed together
    do not all retry together."""
    base = min(maximum, first * 2 ** min(failures - 1, 16))
    return min(maximum, base * (1 + random.random() / 2))


def retry_after(value, now):
    """Seconds to wait for a Retry-After header (seconds, or an HTTP date), at most
    MAX_RETRY_AFTER; None if it is missing or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


# --------------------------------------------------------------------------------------------
# Command line

def _size(text):
    """A byte count, with an optional K, M or G suffix (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[iI]?[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError("not a size: %r (try 10485760 or 10M)" % text)
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " ")


def _positive(kind):
    def convert(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError("must be greater than 0: %r" % text)
        return value
    convert.__name__ = kind.__name__
    return convert


def _seconds(text):
    value = float(text)
    if not MIN_TIMEOUT <= value <= MAX_TIMEOUT:   # NaN fails both comparisons
        raise argparse.ArgumentTypeError("must be between %g and %g seconds: %r"
                                         % (MIN_TIMEOUT, MAX_TIMEOUT, text))
    return value


def _port(text):
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535: %r" % text)
    return port


def _count(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more: %r" % text)
    return value


def _nonempty(text):
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _flag(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError("not a yes/no value: %r" % text)


def _cpu(text):
    if text in ("auto", "none"):
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError("not auto, none or a CPU number: %r" % text)
    return int(text)


def raise_file_limit(needed):
    """Raise the soft open-file limit to `needed` (as far as the hard limit allows), so that
    --max-connections sockets fit; the usual soft limit of 1024 would not. Returns the limit
    now in force, or None where there is no such limit."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def release_free_memory():
    """Hand the C heap's free pages back to the kernel (glibc's malloc_trim). Compiling
    this file leaves the compiler's scratch memory freed but held by malloc, about 4 MiB of
    RSS when there is no __pycache__ to load instead. Without glibc, nothing is done."""
    try:
        import ctypes   # here, not at the top: only serve() needs it, once
        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return
    trim(0)


def pin_cpu(choice):
    """Pin this process (and every thread it starts later) to one CPU; return which, or None.

    With the GIL only one thread runs Python at a time, so a second core mostly adds
    cross-core wake-ups each time the GIL changes hands, at every recv, write and send.
    Measured with wrk on a 2-core machine: +32% requests/s with keep-alive, +53% with a
    connection per request. Must run before any thread starts, as threads inherit it.
    """
    if choice == "none" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if choice == "auto":
        if len(allowed) < 2:
            return None
        choice = allowed[-1]   # CPU 0 usually takes the most interrupts
    os.sched_setaffinity(0, {choice})
    return choice


def _public_url(text):
    text = text.strip().rstrip("/")
    if not _ORIGIN.match(text):
        raise argparse.ArgumentTypeError("not an http(s) URL of a host: %r (try "
                                         "https://pixel.example.com)" % text)
    return text


def _origin_pattern(text):
    text = text.strip()
    pattern = text[2:] if text.startswith("*.") else None
    if pattern is not None and _ORIGIN.match("https://" + pattern) and "." in pattern:
        return text.lower()
    if pattern is None and _ORIGIN.match(text):
        return text.lower()
    raise argparse.ArgumentTypeError("not an origin (https://shop.example.com) or a pattern "
                                     "(*.example.com): %r" % text)


_URL_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])"
                       r"(?::\d{1,5})?\Z", re.ASCII)


def _forward_url(text):
    text = text.strip().rstrip("/")
    parts = urllib.parse.urlsplit(text)
    try:
        parts.port   # a port that is not a number raises here
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or \
            parts.query or parts.fragment or parts.username or parts.password or \
            not _URL_HOST.match(parts.netloc) or \
            not re.fullmatch(r"[!-~]*", parts.path, re.ASCII):
        raise argparse.ArgumentTypeError("not an http(s) URL with no query or credentials: "
                                         "%r (try https://api.segment.io)" % text)
    # The API's base URL, under which batches go to /v1/batch. Given as Segment's docs
    # write the endpoint (https://api.segment.io/v1/batch), or its /v1, it is meant as that
    # base: posting to /v1/batch/v1/batch would be answered 404, forever.
    for endpoint in ("/v1/batch", "/v1"):
        if parts.path.endswith(endpoint):
            return text[:-len(endpoint)]
    return text


def _token(text):
    # RFC 6750's b64token: what an Authorization: Bearer header can carry as is.
    if not re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", text, re.ASCII):
        raise argparse.ArgumentTypeError("not a bearer token (letters, digits and -._~+/, "
                                         "then = padding): %r" % text)
    return text


def _batch_size(text):
    value = int(text)
    if not 1 <= value <= MAX_BATCH_ITEMS:
        raise argparse.ArgumentTypeError("must be between 1 and %d: %r"
                                         % (MAX_BATCH_ITEMS, text))
    return value


def _ca_file(text):
    """A PEM file of CA certificates, checked by loading it."""
    import ssl   # here, not at the top: only --forward-ca needs it
    try:
        mode = os.stat(text).st_mode
        if not stat.S_ISREG(mode):   # a FIFO would block the load for ever
            raise OSError(errno.EINVAL, "not a regular file (%s)" % file_kind(mode))
        ssl.create_default_context().load_verify_locations(text)
    except (OSError, ValueError) as error:   # ssl.SSLError is an OSError
        raise argparse.ArgumentTypeError("not a readable PEM file of CA certificates: %r "
                                         "(%s)" % (text, error)) from None
    return text


def _network(text):
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError("not an IP address or network: %r" % text) from None
    return text.strip()


def build_parser(environ):
    """The argument parser. Each flag's default comes from its PIXEL_* variable when that is
    set; a flag given on the command line wins over the variable."""
    parser = argparse.ArgumentParser(
        prog="pixel.py", description="Segment-compatible tracking-pixel server.",
        epilog="Each flag's environment variable is shown in brackets; lists in a variable "
               "are comma-separated.")
    from_env = {}

    def option(flag, env, default, help, convert=str, many=False, **kwargs):
        dest = flag[2:].replace("-", "_")
        kwargs.setdefault("metavar", dest.upper())
        if env in environ:
            text = environ[env]
            if not text.strip():
                # PIXEL_WRITE_KEYS= must not switch the allowlist off, nor PIXEL_HOST=
                # listen everywhere: an empty value is a mistake, not a setting.
                parser.error("%s is set but empty; unset it to use the default" % env)
            try:
                default = ([convert(item.strip()) for item in text.split(",") if item.strip()]
                           if many else convert(text))
            except (argparse.ArgumentTypeError, ValueError) as error:
                parser.error("%s=%r: %s" % (env, text, error))
            if many and not default:
                parser.error("%s=%r names nothing; unset it to use the default" % (env, text))
            from_env[dest] = default
        parser.add_argument(flag, type=convert, action="append" if many else "store",
                            default=None if many else default,
                            help="%s [%s] (default: %s)" % (help, env, "%(default)s"
                                                            if not many else default),
                            **kwargs)

    option("--host", "PIXEL_HOST", DEFAULT_HOST,
           "address to listen on; 0.0.0.0 or :: for every interface")
    option("--port", "PIXEL_PORT", DEFAULT_PORT, "port to listen on; 0 picks a free one",
           _port)
    option("--log", "PIXEL_LOG", DEFAULT_LOG, "the event log, one JSON object per line",
           metavar="PATH")
    option("--rejects", "PIXEL_REJECTS", None,
           "the rejects log; unset means %s beside --log" % DEFAULT_REJECTS_NAME,
           metavar="PATH")
    option("--max-bytes", "PIXEL_MAX_BYTES", 0, "rotate a log before it would grow past "
           "this size (K, M, G suffixes); 0 never rotates", _size, metavar="N")
    option("--keep", "PIXEL_KEEP", 0, "rotated files to keep per log, the oldest deleted "
           "first; 0 keeps them all", _count, metavar="N")
    option("--write-key", "PIXEL_WRITE_KEYS", None, "accept only this writeKey; "
           "repeatable. Unset, any non-empty key is accepted", _nonempty, many=True,
           metavar="KEY")
    option("--trusted-proxy", "PIXEL_TRUSTED_PROXIES", None, "an address or network whose "
           "X-Forwarded-For is believed; repeatable. Unset, none is", _network, many=True,
           metavar="CIDR")
    option("--allow-origin", "PIXEL_ALLOW_ORIGINS", None, "a website origin whose browsers may "
           "send to the HTTP API (https://shop.example.com, or *.example.com for its "
           "subdomains); repeatable. Unset, any origin may", _origin_pattern, many=True,
           metavar="ORIGIN")
    option("--public-url", "PIXEL_PUBLIC_URL", None, "the URL browsers reach this server at, "
           "such as https://pixel.example.com behind a proxy; the settings document "
           "points analytics.js there. Unset, the request's Host and scheme are used",
           _public_url, metavar="URL")
    option("--dedupe-window", "PIXEL_DEDUPE_WINDOW", DEFAULT_DEDUPE_WINDOW, "writeKey and "
           "client-sent messageId pairs to remember; an event whose pair was written among "
           "the last N is dropped as a retry. 0 turns it off", _count, metavar="N")

    def switch(flag, env, help):
        default = False
        if env in environ:
            try:
                default = _flag(environ[env])
            except argparse.ArgumentTypeError as error:
                parser.error("%s=%r: %s" % (env, environ[env], error))
        parser.add_argument(flag, action="store_true", default=default,
                            help="%s [%s=1] (default: %%(default)s)" % (help, env))

    switch("--no-ip", "PIXEL_NO_IP", "record no IP address, not even a client-sent context.ip")
    switch("--reuse-port", "PIXEL_REUSE_PORT", "share the port with other pixel processes "
           "(SO_REUSEPORT), each with its own --log: the kernel spreads connections among "
           "them, one CPU each")
    switch("--anonymize-ip", "PIXEL_ANONYMIZE_IP", "record IP addresses truncated to their "
           "/24 (IPv4) or /48 (IPv6): the peer's, X-Forwarded-For's, a client-sent "
           "context.ip, and in the rejects log")
    option("--max-connections", "PIXEL_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS,
           "connections served at once; more wait in the listen backlog", _positive(int),
           metavar="N")
    option("--request-timeout", "PIXEL_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT,
           "seconds a client has to send a whole request, head and body", _seconds,
           metavar="S")
    option("--idle-timeout", "PIXEL_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT,
           "seconds a kept-alive connection may wait for its next request", _seconds,
           metavar="S")
    option("--certfile", "PIXEL_CERTFILE", None, "serve HTTPS with this certificate chain "
           "(PEM, the leaf first: certbot's fullchain.pem); needs --keyfile", _nonempty,
           metavar="PATH")
    option("--keyfile", "PIXEL_KEYFILE", None, "the private key of --certfile (PEM)",
           _nonempty, metavar="PATH")
    option("--metrics-token", "PIXEL_METRICS_TOKEN", None, "require `Authorization: Bearer "
           "TOKEN` for /metrics. Unset, /metrics answers anyone who can reach it", _token,
           metavar="TOKEN")
    option("--forward", "PIXEL_FORWARD", None, "relay the events log, at least once and in "
           "order, to this Segment-compatible API (https://api.segment.io, a RudderStack or "
           "Jitsu URL, another pixel); batches go to URL/v1/batch (a URL given with "
           "/v1/batch or /v1 at its end is taken without it)", _forward_url,
           metavar="URL")
    option("--forward-write-key", "PIXEL_FORWARD_WRITE_KEY", None, "forward every event "
           "under this writeKey, instead of each under its own", _nonempty, metavar="KEY")
    option("--forward-batch", "PIXEL_FORWARD_BATCH", DEFAULT_FORWARD_BATCH, "events per "
           "forwarded batch; a batch is also at most 500 KB", _batch_size, metavar="N")
    option("--forward-ca", "PIXEL_FORWARD_CA", None, "a CA bundle (PEM) to trust for "
           "--forward, besides the system's: for a receiver with a private CA",
           _ca_file, metavar="FILE")
    option("--forward-timeout", "PIXEL_FORWARD_TIMEOUT", DEFAULT_FORWARD_TIMEOUT, "seconds "
           "the receiver has to connect and to answer; then the batch is retried", _seconds,
           metavar="S")
    option("--forward-alert", "PIXEL_FORWARD_ALERT", DEFAULT_FORWARD_ALERT, "seconds of "
           "unsent backlog after which /health says degraded", _seconds, metavar="S")
    option("--cpu", "PIXEL_CPU", "auto", "pin the process to one CPU: auto (the last one it may "
           "use), none, or a CPU number. Python runs one thread at a time; keeping all of them "
           "on one core makes handing over between them much cheaper", _cpu, metavar="CPU")
    parser.add_argument("--version", action="version", version="pixel " + __version__)
    parser.from_env = from_env
    return parser


def parse_args(argv=None, environ=None):
    """Flags, then PIXEL_* variables, then defaults, as a Namespace; errors exit with usage."""
    environ = os.environ if environ is None else environ
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    for dest in ("write_key", "trusted_proxy", "allow_origin"):
        if getattr(args, dest) is None:
            setattr(args, dest, parser.from_env.get(dest) or [])
    if args.rejects is None:
        args.rejects = os.path.join(os.path.dirname(os.path.abspath(args.log)),
                                    DEFAULT_REJECTS_NAME)
    if os.path.realpath(args.rejects) == os.path.realpath(args.log):
        parser.error("--log and --rejects must be different files")
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together")
    if args.forward_write_key and not args.forward:
        parser.error("--forward-write-key needs --forward")
    if args.forward_ca and not (args.forward or "").startswith("https://"):
        parser.error("--forward-ca needs an https:// --forward URL")
    return args


def main(argv=None, environ=None):
    """Run the server until SIGTERM or SIGINT, or `pixel.py forward ...` (forward_files)
    to its end; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["forward"]:
        return forward_files(argv[1:])
    args = parse_args(argv, environ)
    reporter = Reporter()
    writers = []
    server = forwarder = None
    serving = False   # until then, a failure removes the logs this start created
    try:
        writers = open_logs(args.log, args.rejects, max_bytes=args.max_bytes, keep=args.keep,
                            reporter=reporter, readable=bool(args.forward),
                            busy="give each pixel process its own --log and --rejects")
        recorder = Recorder(*writers, write_keys=args.write_key,
                            trusted_proxies=args.trusted_proxy, record_ip=not args.no_ip,
                            anonymize_ip=args.anonymize_ip, metrics_token=args.metrics_token,
                            allow_origins=args.allow_origin, dedupe_window=args.dedupe_window,
                            public_url=args.public_url, reporter=reporter)
        recorder.record_torn_tails()
        recorder.remember_logged()
        server, pinned = listen(args, recorder, reporter)
        # After the port is ours: the forwarder writes its checkpoint as it starts.
        if args.forward:
            forwarder = recorder.forwarder = start_forwarder(args, *writers, reporter)
        serving = True
        return serve(args, server, pinned, reporter)
    except StartupError as error:
        reporter.say(str(error))
        return 1
    finally:
        if forwarder is not None:
            forwarder.stop(1.0)
            forwarder.close()
        if server is not None and not serving:
            server.server_close()
        for writer in writers:
            if serving:
                writer.close()
            else:
                writer.discard()


def start_forwarder(args, events, rejects, reporter):
    """The Forwarder of --forward, following the events log from its checkpoint."""
    try:
        receiver = Receiver(args.forward, cafile=args.forward_ca,
                            timeout=args.forward_timeout)
    except OSError as error:   # ssl.SSLError: a CA file that is not PEM certificates
        raise StartupError("cannot use --forward-ca %s: %s" % (args.forward_ca,
                                                               error)) from None
    forwarder = Forwarder(receiver, rejects, write_key=args.forward_write_key,
                          configured_keys=args.write_key, batch_events=args.forward_batch,
                          alert=args.forward_alert, reporter=reporter)
    try:
        forwarder.follow(events)
    except OSError as error:
        forwarder.close()
        raise StartupError("cannot forward %s: %s" % (error.filename or events.path,
                                                      error.strerror or error)) from None
    return forwarder


def build_forward_parser():
    parser = argparse.ArgumentParser(
        prog="pixel.py forward",
        description="Send pixel log files (rotated ones, or gzipped archives) to a "
                    "Segment-compatible API once, in order, and exit. A checkpoint records "
                    "what the receiver took: run the same command again after an "
                    "interruption and it goes on from there, skipping files already sent.")
    parser.add_argument("--to", required=True, type=_forward_url, metavar="URL",
                        help="the API's base URL; batches go to URL/v1/batch (a URL given "
                             "with /v1/batch or /v1 at its end is taken without it)")
    parser.add_argument("--write-key", type=_nonempty, metavar="KEY",
                        help="send every event under this writeKey, not its own; refused, "
                             "it stops the run. Each event's own key refused, its events go "
                             "to the rejects log and the run goes on")
    parser.add_argument("--batch", type=_batch_size, default=DEFAULT_FORWARD_BATCH,
                        metavar="N", help="events per batch (default: %(default)s)")
    parser.add_argument("--ca", type=_ca_file, metavar="FILE",
                        help="a CA bundle to trust besides the system's")
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_FORWARD_TIMEOUT,
                        metavar="S", help="seconds the receiver has to answer "
                                          "(default: %(default)s)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="the checkpoint file (default: .pixel/backfill.<first "
                             "FILE>.json beside the first FILE)")
    parser.add_argument("--rejects", metavar="PATH", help="where refused events go "
                        "(default: %s beside the first FILE)" % DEFAULT_REJECTS_NAME)
    parser.add_argument("files", nargs="+", metavar="FILE")
    return parser


def forward_files(argv=None):
    """`pixel.py forward`: send log files once; 0 once all is sent, 1 if it stopped first
    (a signal, a refused writeKey), could not read a file to its end, or was given one
    that is not an event log. A rejects log may be among the files: the events it holds
    that a receiver refused are sent again."""
    parser = build_forward_parser()
    args = parser.parse_args(argv)
    reporter = Reporter()
    files = args.files
    if args.checkpoint is None:   # version 1.0's checkpoint, which a glob may have passed
        legacy = os.path.abspath(files[0]) + ".backfill"
        files = [path for path in files if not (
            os.path.abspath(path) in (legacy, legacy + ".tmp") and os.path.isfile(path))]
    for path in files:   # before anything is made beside them, or opened
        try:
            mode = os.stat(path).st_mode
        except OSError as error:
            reporter.say("cannot forward %s: %s" % (path, error.strerror or error))
            return 1
        if not stat.S_ISREG(mode):   # /dev/zero would be read for ever, a FIFO block
            reporter.say("cannot forward %s: not a regular file (%s)" % (path,
                                                                         file_kind(mode)))
            return 1
    rejects_path = args.rejects or os.path.join(
        os.path.dirname(os.path.abspath(files[0])), DEFAULT_REJECTS_NAME)
    for path in files:   # its own refusals appended to it would be read, again and again
        if os.path.realpath(path) == os.path.realpath(rejects_path):
            parser.error("%s is one of the files to send: give --rejects another file for "
                         "what is refused this time" % rejects_path)
    try:
        checkpoint = args.checkpoint or \
            adopt_legacy_state(files[0], "backfill", reporter)[0]
        receiver = Receiver(args.to, cafile=args.ca, timeout=args.timeout)
        rejects = LogWriter(rejects_path, reporter=reporter)
    except OSError as error:
        reporter.say("cannot start: %s" % error)
        return 1
    forwarder = Forwarder(receiver, rejects, write_key=args.write_key,
                          batch_events=args.batch, reporter=reporter)

    def stop(signum, frame):
        forwarder.stop()   # cuts the post in flight too, or it waits for its answer

    previous = {signum: signal.signal(signum, stop)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            forwarder.add_files(files, checkpoint)
        except OSError as error:
            reporter.say("%s %s: %s" % (
                "cannot read the checkpoint" if error.filename in (None, checkpoint)
                else "cannot forward", error.filename or checkpoint, error.strerror or error))
            rejects.discard()   # nothing was sent: leave no empty rejects log behind
            return 1
        except ValueError as error:   # a file that is not a log, or a garbled checkpoint
            reporter.say(str(error))
            rejects.discard()
            return 1
        complete = forwarder.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        forwarder.close()
        rejects.close()
    print("pixel forward: %d event(s) sent to %s, %d refused (written to %s)%s%s%s" % (
        forwarder.sent, args.to, forwarder.refused, rejects_path,
        ", %d rejects-log line(s) with no event to send skipped" % forwarder.skipped
        if forwarder.skipped else "",
        "; %d file(s) could not be read to their end" % len(forwarder.truncated)
        if forwarder.truncated else "",
        "" if complete else "; stopped before the end: run the same command again to go on"),
        flush=True)
    if forwarder.gave_up:
        reporter.say(forwarder.gave_up)
    for problem in forwarder.truncated:
        reporter.say("%s; every whole line before that was sent" % problem)
    return 0 if complete and not forwarder.truncated else 1


def listen(args, recorder, reporter):
    """Pin to a CPU and bind the port, for serve(); returns the PixelServer and the CPU."""
    try:
        pinned = pin_cpu(args.cpu)
    except OSError as error:   # a CPU this process may not use
        raise StartupError("cannot pin to CPU %s: %s" % (args.cpu,
                                                         error.strerror or error)) from None
    # Each connection holds a socket; keep room for the logs, the listener and stdio.
    # If the hard limit is lower, serve fewer at once: the others wait in the listen
    # backlog, where accept() failing with EMFILE would have spun the accept loop.
    files = raise_file_limit(args.max_connections + 64)
    if files is not None and files < args.max_connections + 64:
        reporter.say("the open-file limit is %d, so at most %d connections are served at "
                     "once, not --max-connections %d" % (files, max(1, files - 64),
                                                         args.max_connections))
        args.max_connections = max(1, files - 64)
    # Threads only need a small stack: the deepest path is json's C scanner on a payload
    # whose nesting the core has already capped at MAX_DEPTH.
    threading.stack_size(THREAD_STACK_SIZE)
    if args.certfile:
        try:   # here, for a clear error; the server loads the pair itself
            load_tls(args.certfile, args.keyfile)
        except ValueError as error:
            raise StartupError("cannot serve HTTPS: %s" % error) from None
    try:
        server = PixelServer((args.host, args.port), recorder,
                             max_connections=args.max_connections,
                             request_timeout=args.request_timeout,
                             idle_timeout=args.idle_timeout, reporter=reporter,
                             reuse_port=args.reuse_port,
                             tls=(args.certfile, args.keyfile) if args.certfile else None)
    except AttributeError:   # no socket.SO_REUSEPORT on this platform
        raise StartupError("--reuse-port: this system has no SO_REUSEPORT") from None
    except OSError as error:
        raise StartupError("cannot listen on %s port %d: %s" % (
            args.host, args.port, error.strerror or error)) from None
    return server, pinned


def serve(args, server, pinned, reporter):
    """Serve until a signal; the caller owns (and closes) the writers."""
    recorder = server.recorder

    def stop(signum, frame):
        # serve_forever() runs on this thread, and shutdown() waits for it to return, so
        # the stop has to be asked from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    def reopen(signum, frame):
        # logrotate's convention (postrotate kill -HUP), and certbot's renew hook's. A
        # thread, since the handler runs between two bytecodes of the accept loop and must
        # not wait for a writer's lock.
        def work():
            recorder.reopen()
            server.reload_tls()
        threading.Thread(target=work, daemon=True).start()

    # Before the line that says we listen: whoever waits for it (a test, a supervisor) may
    # signal at once, and a SIGINT or SIGTERM must then stop us cleanly, not kill us. The
    # other signals a supervisor or an operator may send must not kill it either: SIGHUP
    # reopens the logs; SIGUSR1, SIGUSR2 and SIGQUIT are ignored.
    handlers = {"SIGTERM": stop, "SIGINT": stop, "SIGHUP": reopen, "SIGUSR1": signal.SIG_IGN,
                "SIGUSR2": signal.SIG_IGN, "SIGQUIT": signal.SIG_IGN}
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name, handler in handlers.items():
            signum = getattr(signal, name, None)   # Windows has only some of them
            if signum is not None:
                previous[signum] = signal.signal(signum, handler)

    release_free_memory()
    host, port = server.server_address[:2]
    shown = "[%s]" % host if ":" in host else host
    print("pixel %s listening on %s://%s:%d/ writing events to %s and rejects to %s%s"
          % (__version__, "https" if args.certfile else "http", shown, port,
             recorder.events.path, recorder.rejects.path,
             "" if pinned is None else " (on CPU %d)" % pinned), flush=True)
    if recorder.forwarder is not None:
        recorder.forwarder.start()
    try:
        server.serve_forever()
    finally:
        server.drain()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("pixel stopped: %d events written, %d rejected, %d lines not written"
          % (recorder.events.written, recorder.rejected,
             recorder.events.failed + recorder.rejects.failed), flush=True)
    return 0


def run_imported(path):
    """Run main() from this file imported as the module `pixel`, in this same process (its
    image replaced by a fresh interpreter; the pid, arguments and interpreter flags kept).

    Run as a script, a file's whole syntax tree stays in memory until the script's code
    returns (CPython's pyrun_file frees its arena only after run_mod), and for a server
    that is never: about 2.4 KB a line, 8 MiB of RSS for this file. Imported, it is
    compiled (or read from __pycache__) and the tree freed at once. Costs one interpreter
    start-up, about 20 ms. Where exec is not POSIX's, main() runs here instead."""
    import subprocess   # only for the interpreter's flags (-S, -I, -X ...) to pass on
    # -c puts the working folder first on sys.path, where a json.py of someone else's
    # would be imported instead of the standard library's: put this file's folder there
    # first, as running the script does. The loader is named, since a copy of this file
    # may be called anything, not only *.py.
    code = ("import sys\n"
            "sys.path[0] = %r\n"
            "import importlib.machinery, importlib.util\n"
            "loader = importlib.machinery.SourceFileLoader('pixel', %r)\n"
            "spec = importlib.util.spec_from_loader('pixel', loader)\n"
            "module = sys.modules['pixel'] = importlib.util.module_from_spec(spec)\n"
            "loader.exec_module(module)\n"
            "raise SystemExit(module.main())" % (os.path.dirname(path), path))
    if os.name == "posix" and sys.executable:
        flags = getattr(subprocess, "_args_from_interpreter_flags", list)()
        try:
            os.execv(sys.executable, [sys.executable] + flags + ["-c", code] + sys.argv[1:])
        except OSError as error:   # an interpreter that cannot be found again: run here
            print("pixel: cannot exec %s (%s); running in place" % (
                sys.executable, error.strerror or error), file=sys.stderr)
    return main()


if __name__ == "__main__":
    raise SystemExit(run_imported(os.path.abspath(__file__)))

"""Tests for pixel.py: stdlib unittest only.  Run: python3 -m unittest -v

Layer 1 is tables of named cases for the pure core, the head parser and the command line: no
files, no sockets. Layer 2 drives the Recorder and the LogWriter on real files, with no
socket. Layer 3 runs a real PixelServer on port 0 in a thread, driven over real sockets, and
runs one table of contract cases against the built-in server and the WSGI app under wsgiref
and gunicorn. Layer 4 runs pixel.py as a process for what needs one: kill -9, signals,
start-up errors. Last, the README is checked against the code. Tests wait on a condition
with a deadline (wait_until), never a bare sleep, and share one temp-folder helper
(temp_dir).
"""

import argparse
import ast
import atexit
import base64
import bisect
import collections
import contextlib
import errno
import fcntl
import fnmatch
import gc
import glob
import gzip
import html
import http.client
import http.server
import io
import ipaddress
import itertools
import json
import os
import pathlib
import pydoc
import queue
import random
import re
import select
import shlex
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
import unittest
import unittest.mock
import unicodedata
import urllib.parse
import urllib.request
import warnings
import wsgiref.simple_server
import zlib

import pixel

HERE = os.path.dirname(os.path.abspath(__file__))
PIXEL_PY = os.path.join(HERE, "pixel.py")

# Segment's Pixel API docs' own example: unpadded URL-safe base64.
DOCS_DATA = ("eyJ3cml0ZUtleSI6ICJZT1VSX1dSSVRFX0tFWSIsICJ1c2VySWQiOiAiMDI1cGlrYWNodTAyNSIsICJldmVudCI6"
             "ICJFbWFpbCBPcGVuZWQiLCAicHJvcGVydGllcyI6IHsgICAic3ViamVjdCI6ICJUaGUgRWxlY3RyaWMgRGFpbHkiLCAg"
             "ICJlbWFpbCI6ICJwZWVrQXRNZUBlbWFpbC5wb2tlIiB9fQ")
DOCS_PAYLOAD = {"writeKey": "YOUR_WRITE_KEY", "userId": "025pikachu025", "event": "Email Opened",
                "properties": {"subject": "The Electric Daily", "email": "peekAtMe@email.poke"}}
ROTATED = re.compile(r"\.\d{8}T\d{6}\.\d{3}Z(-\d+)?\Z")
T0 = 1795000000.25   # a fixed clock: 2026-11-18T11:06:40.250Z
PROCESS_PATH_CHECK = pixel.PATH_CHECK_INTERVAL   # a pixel.py process's: no patch reaches it
# .ci/run sets PIXEL_SOAK=1: the long fault, load and property runs. Without it, the suite
# runs them short, or skips them (soak), to finish in about a minute.
SOAK = os.environ.get("PIXEL_SOAK") == "1"


def soak(test):
    test.soak = True   # counted against the README by ReadmeIsTrue
    return unittest.skipUnless(SOAK, "a soak test: PIXEL_SOAK=1 runs it (.ci/run does)")(test)


def _compiled_pixel():
    """What the tests start as `python3 pixel.py` (pixel itself, its forward, report and erase
    commands): the file itself under PIXEL_SOAK, as CI runs it; else the same file compiled
    once for this run, under the same name (CPython runs a file that begins with its bytecode
    header as bytecode): about 120 starts a run, each 0.1 s sooner without the compile."""
    if SOAK:
        return PIXEL_PY
    import py_compile
    folder = tempfile.mkdtemp(prefix="pixel-compiled-")
    atexit.register(shutil.rmtree, folder, True)
    return py_compile.compile(PIXEL_PY, cfile=os.path.join(folder, "pixel.py"), doraise=True)


PIXEL_RUN = _compiled_pixel()


EXAMPLES = 1 if SOAK else 0.25   # what share of the property and fuzz cases to run


# pixel's files where a log is opened with no --log: a test that leaves them in the folder the
# suite runs from forgot to give its own (every test's files belong in a temp_dir).
DEFAULT_FILES = ("events.jsonl", "rejects.jsonl")
_there_before = set()


def setUpModule():
    _there_before.update(name for name in DEFAULT_FILES if os.path.lexists(name))


def tearDownModule():
    left = [name for name in DEFAULT_FILES
            if os.path.lexists(name) and name not in _there_before]
    for name in left:
        os.unlink(name)
    if left:
        raise AssertionError("a test left %s in %s: give it a log in a temp_dir"
                             % (" and ".join(left), os.getcwd()))


def usage_error(test, argv, environ):
    """What pixel.parse_args says when it refuses `argv` and `environ`: (exit status, stderr)."""
    stderr = io.StringIO()
    with test.assertRaises(SystemExit) as caught, unittest.mock.patch("sys.stderr", stderr):
        pixel.parse_args(argv, environ)
    return caught.exception.code, stderr.getvalue()


def temp_dir(test, prefix="pixel-test-"):
    """A fresh folder, removed with everything in it when `test` ends."""
    folder = tempfile.mkdtemp(prefix=prefix)
    test.addCleanup(shutil.rmtree, folder, True)
    return folder


# A test's server loop looks this often for a stop: shutdown() waits for its next look, and a
# test stops a server or two: a 0.05 s poll cost the suite 18 s of its 64.
SERVE_POLL = 0.002


def wait_until(condition, timeout=10.0):
    """Poll `condition` until it is true or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.005)


def b64(obj, alphabet="standard", pad=True):
    raw = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    text = (base64.urlsafe_b64encode if alphabet == "urlsafe" else base64.b64encode)(raw).decode()
    return text if pad else text.rstrip("=")


def quote_all(text):
    return "".join("%%%02X" % ord(char) if char in "+/=" else char for char in text)


# A payload whose standard base64 holds "+", "/" and "=" (checked in test_table_is_honest).
TRICKY = {"writeKey": "k", "userId": "u>>>?", "event": "??>"}


# ---------------------------------------------------------------------------------------------
# Layer 1: the pure core, the HTTP head parser and the command line, as tables of
# named cases. No files, no sockets.


DECODE_CASES = [
    # name, query, expected payload or the rejection reason
    ("docs example, unpadded url-safe", "data=" + DOCS_DATA, DOCS_PAYLOAD),
    ("standard alphabet, padded", "data=" + quote_all(b64(TRICKY)), TRICKY),
    ("standard alphabet, unpadded", "data=" + quote_all(b64(TRICKY, pad=False)), TRICKY),
    ("url-safe alphabet, padded", "data=" + b64(TRICKY, "urlsafe"), TRICKY),
    ("url-safe alphabet, unpadded", "data=" + b64(TRICKY, "urlsafe", pad=False), TRICKY),
    ("plus arrived as a space", "data=" + b64(TRICKY).replace("+", "%20"), TRICKY),
    ("plus sent raw, read as a space", "data=" + b64(TRICKY), TRICKY),
    ("percent-encoded + / =", "data=" + quote_all(b64(TRICKY)), TRICKY),
    ("dot notation nests, values stay strings",
     "userId=u&event=Email%20Opened&properties.subject=Hi&properties.n=3&writeKey=K"
     "&context.campaign.name=x",
     {"userId": "u", "event": "Email Opened", "properties": {"subject": "Hi", "n": "3"},
      "writeKey": "K", "context": {"campaign": {"name": "x"}}}),
    ("blank value kept", "userId=&anonymousId=a", {"userId": "", "anonymousId": "a"}),
    ("data and plain merge, data wins",
     "writeKey=plain&properties.a=1&properties.b=2&data=" +
     b64({"userId": "u", "writeKey": "data", "properties": {"b": 3}}, "urlsafe"),
     {"writeKey": "data", "userId": "u", "properties": {"a": "1", "b": 3}}),
    ("utf-8 in a plain value", "event=%E2%9C%93", {"event": "\u2713"}),
    ("invalid base64 character", "data=ab$d", "invalid_base64"),
    ("impossible base64 length", "data=abcde", "invalid_base64"),
    ("padding in the middle", "data=ab%3Dcd", "invalid_base64"),
    ("base64 of non-UTF-8", "data=" + b64(b"\xff\xfe{}"), "invalid_utf8"),
    ("base64 of broken JSON", "data=" + b64(b'{"userId": '), "invalid_json"),
    ("base64 of a JSON array", "data=" + b64([1, 2]), "payload_not_object"),
    ("base64 of a JSON string", "data=" + b64("hi"), "payload_not_object"),
    ("NaN is not JSON", "data=" + b64(b'{"a": NaN}'), "invalid_number"),
    ("nesting beyond the cap", "data=" + b64(b'{"a":' * 40 + b"1" + b"}" * 40), "too_deep"),
    ("brackets inside strings are not nesting",
     "data=" + b64({"a": "[[[[{{{{" * 20}), {"a": "[[[[{{{{" * 20}),
    ("decoded payload over 32 KB", "data=" + b64({"a": "x" * 33000}), "payload_too_large"),
    ("plain payload over 32 KB", "a=" + "x" * 33000, "payload_too_large"),
    # 43,692 characters of base64 pass the cheap length check; what they decode to does not.
    ("decoded payload one byte over 32 KB",
     "data=" + b64(b'{"a": "' + b"x" * 32760 + b'"}', "urlsafe", pad=False), "payload_too_large"),
    ("decoded payload of exactly 32 KB",
     "data=" + b64(b'{"a": "' + b"x" * 32759 + b'"}', "urlsafe", pad=False), {"a": "x" * 32759}),
    ("empty dot segment", "a..b=1", "invalid_key"),
    ("trailing dot", "properties.=1", "invalid_key"),
    ("a lone dot", ".=1", "invalid_key"),
    ("empty key", "=1", "invalid_key"),
    ("dot key deeper than the cap", ".".join("k" * 40) + "=1", "invalid_key"),
    ("repeated key", "userId=a&userId=b", "duplicate_key"),
    ("repeated data", "data=e30&data=e30", "duplicate_key"),
    ("string then object", "properties=x&properties.a=1", "key_conflict"),
    ("object then string", "properties.a=1&properties=x", "key_conflict"),
    ("too many parameters", "&".join("k%d=1" % i for i in range(300)), "too_many_params"),
    ("bad percent-escape of UTF-8", "event=%FF", "invalid_utf8"),
    ("broken percent-escape kept as text", "event=%zz", {"event": "%zz"}),
]

VALID = {"writeKey": "k", "userId": "u"}
VALIDATE_CASES = [
    # name, kind, payload, allowed write keys, expected reason (None: accepted)
    ("identify with a userId", "identify", VALID, None, None),
    ("anonymousId alone", "page", {"writeKey": "k", "anonymousId": "a"}, None, None),
    ("missing writeKey", "identify", {"userId": "u"}, None, "no_write_key"),
    ("empty writeKey", "identify", {"writeKey": "", "userId": "u"}, None, "no_write_key"),
    ("writeKey not a string", "identify", {"writeKey": 7, "userId": "u"}, None,
     "write_key_not_string"),
    ("writeKey not allowed", "identify", VALID, {"other"}, "invalid_write_key"),
    ("writeKey allowed", "identify", VALID, {"k", "other"}, None),
    ("no user or anonymous id", "identify", {"writeKey": "k"}, None, "no_user_anon_id"),
    ("empty ids", "identify", {"writeKey": "k", "userId": "", "anonymousId": None}, None,
     "no_user_anon_id"),
    ("userId an object", "identify", {"writeKey": "k", "userId": {"a": 1}}, None,
     "id_not_string"),
    ("userId a boolean", "identify", {"writeKey": "k", "userId": True}, None, "id_not_string"),
    ("anonymousId a list", "identify", {"writeKey": "k", "anonymousId": [1]}, None,
     "id_not_string"),
    ("messageId a list", "identify", dict(VALID, messageId=[1]), None, "id_not_string"),
    ("track without event", "track", VALID, None, "event_not_defined"),
    ("track with empty event", "track", dict(VALID, event=""), None, "event_not_defined"),
    ("track with a numeric event", "track", dict(VALID, event=5), None, "event_not_string"),
    ("track", "track", dict(VALID, event="Opened"), None, None),
    ("group without groupId", "group", VALID, None, "group_id_not_defined"),
    ("group", "group", dict(VALID, groupId="g"), None, None),
    ("group with an object groupId", "group", dict(VALID, groupId={}), None, "id_not_string"),
    ("alias without previousId", "alias", VALID, None, "previous_id_not_defined"),
    ("alias without userId", "alias", {"writeKey": "k", "anonymousId": "a", "previousId": "p"},
     None, "user_id_not_defined"),
    ("alias", "alias", dict(VALID, previousId="p"), None, None),
    ("page name not a string", "page", dict(VALID, name=["x"]), None, "name_not_string"),
    ("screen category not a string", "screen", dict(VALID, category=1), None,
     "category_not_string"),
    ("page with name and category", "page", dict(VALID, name="Home", category="Docs"), None,
     None),
    ("properties not an object", "track", dict(VALID, event="e", properties="x"), None,
     "properties_not_object"),
    ("traits not an object", "identify", dict(VALID, traits=[1]), None, "traits_not_object"),
    ("context not an object", "identify", dict(VALID, context="x"), None, "context_not_object"),
    ("integrations not an object", "identify", dict(VALID, integrations=1), None,
     "integrations_not_object"),
    ("timestamp not ISO-8601", "identify", dict(VALID, timestamp="yesterday"), None,
     "invalid_timestamp"),
    ("timestamp a number", "identify", dict(VALID, timestamp=5), None, "invalid_timestamp"),
    ("Arabic-Indic digits", "identify",
     dict(VALID, timestamp="\u0662\u0660\u0662\u0666-01-01T00:00:00Z"), None,
     "invalid_timestamp"),
    ("fullwidth digits", "identify", dict(VALID, sentAt="\uff12\uff10\uff12\uff16-01-01"),
     None, "invalid_timestamp"),
    ("offset +99:99", "identify", dict(VALID, timestamp="2026-01-01T00:00:00+99:99"), None,
     "invalid_timestamp"),
    ("offset +24:00", "identify", dict(VALID, timestamp="2026-01-01T00:00:00+24:00"), None,
     "invalid_timestamp"),
    ("offset +14:00", "identify", dict(VALID, timestamp="2026-01-01T00:00:00+14:00"), None,
     None),
    ("userId 1e400 (infinite)", "identify", {"writeKey": "k", "userId": float("inf")}, None,
     "invalid_number"),
    ("groupId -1e400", "group", dict(VALID, groupId=float("-inf")), None, "invalid_number"),
    ("sentAt out of range", "identify", dict(VALID, sentAt="2026-13-01T00:00:00Z"), None,
     "invalid_timestamp"),
    ("ISO-8601 with offset", "identify", dict(VALID, timestamp="2026-11-26T10:00:00+01:00"),
     None, None),
    ("unknown type", "launch", VALID, None, "invalid_type"),
]


class CoreTables(unittest.TestCase):
    def test_table_is_honest(self):
        # The "tricky" payload really exercises both alphabets' special characters.
        self.assertTrue(set("+/=") <= set(b64(TRICKY)), b64(TRICKY))
        self.assertTrue(set("-_") <= set(b64(TRICKY, "urlsafe")))

    def test_decode_cases(self):
        for name, query, expected in DECODE_CASES:
            with self.subTest(name):
                if isinstance(expected, str):
                    with self.assertRaises(pixel.Rejected) as caught:
                        pixel.decode_query(query)
                    self.assertEqual(caught.exception.reason, expected)
                else:
                    self.assertEqual(pixel.decode_query(query), expected)

    def test_validate_cases(self):
        for name, kind, payload, keys, expected in VALIDATE_CASES:
            with self.subTest(name):
                if expected:
                    with self.assertRaises(pixel.Rejected) as caught:
                        pixel.validate(kind, payload, keys)
                    self.assertEqual(caught.exception.reason, expected)
                else:
                    self.assertIsInstance(pixel.validate(kind, payload, keys), dict)

    def test_numbers_become_string_ids(self):
        event = pixel.validate("group", {"writeKey": "k", "userId": 42, "groupId": 7,
                                         "messageId": 9}, None)
        self.assertEqual((event["userId"], event["groupId"], event["messageId"]),
                         ("42", "7", "9"))

    def test_validate_does_not_mutate_its_input(self):
        payload = {"writeKey": "k", "userId": 42}
        pixel.validate("identify", payload)
        self.assertEqual(payload, {"writeKey": "k", "userId": 42})


class Enrichment(unittest.TestCase):
    def enrich(self, payload, kind="track", **kwargs):
        kwargs.setdefault("received_at", T0)
        return pixel.enrich(kind, pixel.validate(kind, payload), **kwargs)

    def test_server_fields(self):
        event = self.enrich(dict(VALID, event="e"), ip="10.0.0.1", user_agent="UA/1")
        self.assertEqual(event["type"], "track")
        self.assertEqual(event["receivedAt"], "2026-11-18T11:06:40.250Z")
        self.assertEqual(event["timestamp"], event["receivedAt"])
        self.assertEqual(event["context"], {"ip": "10.0.0.1", "userAgent": "UA/1"})
        self.assertRegex(event["messageId"], r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-")

    def test_client_fields_are_kept(self):
        event = self.enrich(dict(VALID, event="e", messageId="m1", timestamp="2026-01-01T00:00:00Z",
                                 type="identify", context={"ip": "1.2.3.4", "locale": "fr"}),
                            ip="10.0.0.1", user_agent="UA/1")
        self.assertEqual(event["messageId"], "m1")
        self.assertEqual(event["timestamp"], "2026-01-01T00:00:00Z")
        self.assertEqual(event["type"], "track", "the route decides the type")
        self.assertEqual(event["context"], {"ip": "1.2.3.4", "locale": "fr", "userAgent": "UA/1"})

    def test_clock_skew_is_corrected_from_sent_at(self):
        # The client's clock runs 60 s fast; the call was made 5 s before it was sent.
        event = self.enrich(dict(VALID, event="e", originalTimestamp="2026-11-18T11:07:35.250Z",
                                 sentAt="2026-11-18T11:07:40.250Z"))
        self.assertEqual(event["timestamp"], "2026-11-18T11:06:35.250Z")

    def test_original_timestamp_without_sent_at(self):
        event = self.enrich(dict(VALID, event="e", originalTimestamp="2026-11-18T09:00:00Z"))
        self.assertEqual(event["timestamp"], "2026-11-18T09:00:00Z")

    def test_a_correction_never_rounds_into_year_10000(self):
        last = 253402300800   # 10000-01-01T00:00:00Z
        event = pixel.enrich("track", {"originalTimestamp": "9999-12-31T23:59:59.000Z",
                                       "sentAt": "2026-11-27T00:00:00.000Z"},
                             received_at=pixel.parse_time("2026-11-27T00:00:00.000Z") +
                             (last - 0.0004 - pixel.parse_time("9999-12-31T23:59:59.000Z")))
        self.assertFalse(event["timestamp"].startswith("10000"), event["timestamp"])
        pixel.parse_time(event["timestamp"])

    def test_absurd_skew_falls_back_to_original_timestamp(self):
        event = self.enrich(dict(VALID, event="e", originalTimestamp="0001-01-01T00:00:00Z",
                                 sentAt="9999-01-01T00:00:00Z"))
        self.assertEqual(event["timestamp"], "0001-01-01T00:00:00Z")

    def test_no_ip_drops_the_clients_ip_too(self):
        event = self.enrich(dict(VALID, event="e", context={"ip": "1.2.3.4"}), ip=None)
        self.assertNotIn("ip", event["context"])

    def test_pixel_event_is_the_whole_pipeline(self):
        event = pixel.pixel_event("track", "data=" + DOCS_DATA, received_at=T0, ip="127.0.0.1")
        self.assertEqual({key: event[key] for key in DOCS_PAYLOAD}, DOCS_PAYLOAD)

    def test_input_is_not_mutated(self):
        payload = dict(VALID, event="e", context={"locale": "fr"})
        self.enrich(payload, ip="10.0.0.1")
        self.assertEqual(payload["context"], {"locale": "fr"})


class LineEncoding(unittest.TestCase):
    def test_one_ascii_line_that_parses_back(self):
        event = {"a": "line\nbreak \u2028 separator \x00 nul \U0001F600", "b": [1, 2.5, None]}
        line = pixel.encode_line(event)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertTrue(line.isascii())
        self.assertEqual(json.loads(line), event)

    def test_out_of_range_float(self):
        with self.assertRaises(pixel.Rejected) as caught:
            pixel.encode_line({"a": float("inf")})
        self.assertEqual(caught.exception.reason, "invalid_number")

    def test_huge_number_in_a_payload_is_rejected_not_logged(self):
        with self.assertRaises(pixel.Rejected) as caught:
            pixel.encode_line(pixel.pixel_event("identify", "data=" + b64(
                b'{"writeKey":"k","userId":"u","traits":{"n":1e400}}'), received_at=T0))
        self.assertEqual(caught.exception.reason, "invalid_number")

    def test_an_event_nested_deeper_than_the_stack_is_too_deep_not_a_traceback(self):
        deep = []
        for _ in range(100000):   # built in Python: no parser would have let it through
            deep = [deep]
        with self.assertRaises(pixel.Rejected) as caught:
            pixel.encode_line({"a": deep})
        self.assertEqual(caught.exception.reason, "too_deep")

    def test_a_line_of_128_KiB_or_more_is_event_too_large(self):
        # {"a":"..."} is 8 characters around the string; the newline is not counted.
        self.assertEqual(len(pixel.encode_line({"a": "x" * (pixel.MAX_EVENT_LINE - 9)})),
                         pixel.MAX_EVENT_LINE)
        with self.assertRaises(pixel.Rejected) as caught:
            pixel.encode_line({"a": "x" * (pixel.MAX_EVENT_LINE - 8)})
        self.assertEqual(caught.exception.reason, "event_too_large")

    def test_format_and_parse_time_round_trip(self):
        self.assertEqual(pixel.format_time(T0), "2026-11-18T11:06:40.250Z")
        self.assertEqual(pixel.parse_time("2026-11-18T11:06:40.250Z"), T0)
        self.assertEqual(pixel.parse_time("2026-11-18T12:06:40.25+01:00"), T0)
        self.assertEqual(pixel.parse_time("2026-11-18"), T0 - 40000.25)


class ApiBodies(unittest.TestCase):
    def test_single_event_with_basic_auth(self):
        auth = "Basic " + base64.b64encode(b"KEY:").decode()
        pairs = pixel.api_payloads("track", b'{"userId":"u","event":"e"}', authorization=auth)
        self.assertEqual(pairs, [("track", {"userId": "u", "event": "e", "writeKey": "KEY"})])

    def test_batch_shares_context_integrations_key_and_sent_at(self):
        body = json.dumps({"writeKey": "k", "sentAt": "2026-11-18T09:46:40Z",
                           "context": {"library": "x", "locale": "fr"},
                           "integrations": {"All": False},
                           "batch": [{"type": "track", "event": "e", "userId": "u",
                                      "context": {"locale": "de"}},
                                     {"type": "nope", "userId": "u"}, 5]}).encode()
        pairs = pixel.api_payloads("batch", body)
        kind, payload = pairs[0]
        self.assertEqual(kind, "track")
        self.assertEqual(payload["context"], {"library": "x", "locale": "de"})
        self.assertEqual(payload["integrations"], {"All": False})
        self.assertEqual((payload["writeKey"], payload["sentAt"]), ("k", "2026-11-18T09:46:40Z"))
        self.assertEqual(pairs[1][1].reason, "invalid_type")
        self.assertEqual(pairs[2][1].reason, "payload_not_object")

    def test_bad_bodies(self):
        for name, route, body, reason in [
                ("broken JSON", "track", b"{", "invalid_json"),
                ("not an object", "batch", b"[]", "payload_not_object"),
                ("batch not a list", "batch", b'{"batch": {}}', "batch_not_array"),
                ("over 10,000 items", "batch",
                 json.dumps({"batch": [{}] * (pixel.MAX_BATCH_ITEMS + 1)}).encode(),
                 "too_many_items"),
                ("event over 32 KB", "track", json.dumps({"a": "x" * 33000}).encode(),
                 "payload_too_large")]:
            with self.subTest(name):
                with self.assertRaises(pixel.Rejected) as caught:
                    pixel.api_payloads(route, body)
                self.assertEqual(caught.exception.reason, reason)

    def test_write_key_from_the_query_when_no_item_and_no_basic_auth_names_one(self):
        # Precedence: the item's own key (or its batch's) > Basic auth > the query's writeKey.
        auth = "Basic " + base64.b64encode(b"BASIC:").decode()
        body = json.dumps({"batch": [{"type": "track", "writeKey": "ITEM"},
                                     {"type": "track"}]}).encode()
        with_batch_key = json.dumps({"writeKey": "BATCH", "batch": [{"type": "track"}]}).encode()
        for name, route, body, authorization, query, keys in [
                ("query only", "batch", body, None, "writeKey=QUERY", ["ITEM", "QUERY"]),
                ("basic auth wins", "batch", body, auth, "writeKey=QUERY", ["ITEM", "BASIC"]),
                ("the batch's key wins", "batch", with_batch_key, auth, "writeKey=QUERY",
                 ["BATCH"]),
                ("single event", "track", b'{"userId":"u"}', None, "writeKey=QUERY", ["QUERY"]),
                ("escaped, among others", "track", b'{"userId":"u"}', None,
                 "p=npm&write%4Bey=Q%20K&v=3", ["Q K"]),
                ("empty is none", "batch", body, None, "writeKey=", ["ITEM", None]),
                ("no query", "batch", body, None, "", ["ITEM", None])]:
            with self.subTest(name):
                pairs = pixel.api_payloads(route, body, authorization=authorization,
                                           query=query)
                self.assertEqual([payload.get("writeKey") for _, payload in pairs], keys)
        for name, query, reason in [("given twice", "writeKey=a&writeKey=b", "duplicate_key"),
                                    ("not UTF-8", "writeKey=%FF", "invalid_utf8")]:
            with self.subTest(name):
                with self.assertRaises(pixel.Rejected) as caught:
                    pixel.api_payloads("batch", body, query=query)
                self.assertEqual(caught.exception.reason, reason)
        # With Basic auth the query is not read at all.
        self.assertEqual(pixel.request_write_key(auth, "writeKey=%FF"), "BASIC")
        # Basic auth that is not base64, or not UTF-8, names no key: the query's is taken.
        for credential in ("!!not base64!!", base64.b64encode(b"\xff:").decode()):
            with self.subTest(credential):
                self.assertEqual(pixel.request_write_key("Basic " + credential,
                                                         "writeKey=QUERY"), "QUERY")

    def test_gzip_and_its_bombs(self):
        self.assertEqual(pixel.decode_body(gzip.compress(b'{"a":1}'), "gzip"), b'{"a":1}')
        for name, body, coding, reason in [
                ("bomb", gzip.compress(b" " * (10 * 1024 * 1024)), "gzip", "body_too_large"),
                ("not gzip", b"plain", "gzip", "invalid_gzip"),
                ("unknown coding", b"{}", "br", "unsupported_encoding")]:
            with self.subTest(name):
                with self.assertRaises(pixel.Rejected) as caught:
                    pixel.decode_body(body, coding)
                self.assertEqual(caught.exception.reason, reason)


class ClientIp(unittest.TestCase):
    def test_cases(self):
        import ipaddress
        trusted = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))
        for name, peer, forwarded, proxies, expected in [
                ("no proxies trusted", "127.0.0.1", "6.6.6.6", (), "127.0.0.1"),
                ("untrusted peer", "8.8.8.8", "6.6.6.6", trusted, "8.8.8.8"),
                ("trusted peer", "127.0.0.1", "6.6.6.6", trusted, "6.6.6.6"),
                ("client spoofs the left end", "127.0.0.1", "1.1.1.1, 6.6.6.6", trusted,
                 "6.6.6.6"),
                ("proxy chain", "127.0.0.1", "6.6.6.6, 10.1.1.1", trusted, "6.6.6.6"),
                ("malformed hop", "127.0.0.1", "6.6.6.6, junk, 10.1.1.1", trusted, "10.1.1.1"),
                ("no header", "127.0.0.1", None, trusted, "127.0.0.1"),
                # A WSGI server on a unix socket gives no peer address (REMOTE_ADDR "").
                ("unix socket, trusted", "", "6.6.6.6", ("unix",), "6.6.6.6"),
                ("unix socket, proxy chain", "", "6.6.6.6, 10.1.1.1", trusted + ("unix",),
                 "6.6.6.6"),
                ("unix socket, not trusted", "", "6.6.6.6", trusted, ""),
                ("unix trusted, a TCP peer", "8.8.8.8", "6.6.6.6", ("unix",), "8.8.8.8")]:
            with self.subTest(name):
                self.assertEqual(pixel.client_ip(peer, forwarded, proxies), expected)


class ClientIpDualStack(unittest.TestCase):
    def test_ipv4_mapped_addresses_are_read_as_ipv4(self):
        import ipaddress
        trusted = (ipaddress.ip_network("127.0.0.1/32"),)
        self.assertEqual(pixel.client_ip("::ffff:127.0.0.1", None, ()), "127.0.0.1")
        self.assertEqual(pixel.client_ip("::ffff:127.0.0.1", "6.6.6.6", trusted), "6.6.6.6")
        self.assertEqual(pixel.client_ip("127.0.0.1", "::ffff:6.6.6.6", trusted), "6.6.6.6")
        self.assertEqual(pixel.client_ip("::1", None, trusted), "::1")
        self.assertEqual(pixel.client_ip("::ffff:junk", None, ()), "::ffff:junk")


def short_pairs(count):
    """`count` query pairs of distinct 2- and 3-character names and values: many values in
    few bytes (2,100 pairs, 4,200 values, in 13 KB)."""
    characters = string.ascii_letters + string.digits
    tokens = itertools.chain(*(map("".join, itertools.product(characters, repeat=size))
                               for size in (2, 3)))
    return "&".join("%s=%s" % (next(tokens), next(tokens)) for _ in range(count))


def nested(depth):
    return "[" * depth + "]" * depth


class JsonDepth(unittest.TestCase):
    def test_brackets_in_strings_and_escapes(self):
        for name, text, depth in [
                ("flat", '{"a": 1}', 1),
                ("brackets in a string", '{"a": "[[[[{{{{", "b": [[1]]}', 3),
                ("escaped quote", '["\\"[[[[", 1]', 1),
                ("escaped backslash before the quote", '["\\\\", [[1]]]', 3),
                ("three backslashes", '["\\\\\\"[[[", []]', 2),
                ("empty", "", 0),
                ("unterminated string", '[[["' + "[" * 50, 3),
                ("33 deep", nested(33), 33)]:
            with self.subTest(name):
                self.assertEqual(pixel.json_depth(text), depth)

    def test_against_json_on_random_documents(self):
        import random
        rng = random.Random(20261127)
        alphabet = ['"', "\\", "[", "]", "{", "}", "a", " ", "\n", "\u2028"]

        def document(level):
            roll = rng.random()
            if level > 6 or roll < 0.3:
                return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
            if roll < 0.65:
                return [document(level + 1) for _ in range(rng.randint(0, 3))]
            return {"".join(rng.choice(alphabet) for _ in range(3)): document(level + 1)
                    for _ in range(rng.randint(0, 3))}

        def depth(value):
            if isinstance(value, (dict, list)):
                children = value.values() if isinstance(value, dict) else value
                return 1 + max([depth(child) for child in children] or [0])
            return 0

        for _ in range(3000):
            value = document(0)
            text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
            self.assertEqual(pixel.json_depth(text), depth(value), text)

    def test_worst_inputs_take_time_linear_in_their_size(self):
        # Inputs that made the earlier regular expression quadratic, and others with many
        # tokens. Time per byte must not grow with size: a quadratic scan would take 16
        # times longer per byte at 512 KiB than at 32 KiB; allowing 4 leaves room for noise.
        worst = [lambda size: "[]" * 33 + '"' + '\\"' * (size // 2),
                 lambda size: "[" * 33 + '"' + "\\" * size,
                 lambda size: "[" * 33 + '"[",' * (size // 4) + "1]}",
                 lambda size: "[]" * (size // 4) + '"' * (size // 2)]
        for number, make in enumerate(worst):
            per_byte = []
            for size in (32 * 1024, 512 * 1024):
                text = make(size).encode()
                runs = []
                for _ in range(5):   # this thread's CPU time, the best of 5: other work on
                    started = time.thread_time()   # the machine does not count
                    with self.assertRaises(pixel.Rejected):
                        pixel.parse_object(text)
                    runs.append(time.thread_time() - started)
                # Seconds, not milliseconds, is what the quadratic scan took: fail now
                # rather than wait minutes for the larger size.
                self.assertLess(sum(runs), 5.0, (number, size))
                per_byte.append(min(runs) / len(text))
            with self.subTest(number):
                self.assertLess(per_byte[1], 4 * per_byte[0] + 2e-8, per_byte)

    def test_api_caps_depth_at_32_as_the_readme_says(self):
        deep = {"writeKey": "k", "userId": "u", "event": "e", "properties": {}}
        node = deep["properties"]
        for _ in range(30):   # the event is level 1, properties 2, ... 32 in all
            node["x"] = {}
            node = node["x"]
        self.assertEqual(pixel.api_payloads("track", json.dumps(deep).encode())[0][0], "track")
        batch = json.dumps({"batch": [dict(deep, type="track")]}).encode()
        self.assertEqual(pixel.api_payloads("batch", batch)[0][0], "track")
        context = {}
        node = context
        for _ in range(31):   # a shared context 32 deep, at level 2 of each event: 33
            node["x"] = {}
            node = node["x"]
        shared = {"context": context, "batch": [{"type": "track", "userId": "u", "event": "e",
                                                  "writeKey": "k"}]}
        with self.assertRaises(pixel.Rejected) as caught:
            pixel.api_payloads("batch", json.dumps(shared).encode())
        self.assertEqual(caught.exception.reason, "too_deep")
        node = deep["properties"]
        while node:
            node = node["x"]
        node["x"] = {}
        for route, body in (("track", deep), ("batch", {"batch": [dict(deep, type="track")]})):
            with self.assertRaises(pixel.Rejected) as caught:
                pixel.api_payloads(route, json.dumps(body).encode())
            self.assertEqual(caught.exception.reason, "too_deep")


class WrittenAsAccepted(unittest.TestCase):
    def test_lone_surrogates_become_replacement_characters(self):
        data = base64.b64encode(b'{"writeKey":"k","userId":"u\\ud800","event":"\\udfff x",'
                                b'"properties":{"\\ud83d\\ude00":"\\ud83d\\ude00 ok"}}')
        event = pixel.pixel_event("track", "data=" + data.decode(), received_at=T0)
        self.assertEqual((event["userId"], event["event"]), ("u\ufffd", "\ufffd x"))
        self.assertEqual(event["properties"], {"\U0001f600": "\U0001f600 ok"})
        line = pixel.encode_line(event)
        self.assertNotRegex(line.decode(), r"\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f])")
        self.assertIn(b"\\ud83d\\ude00", line)   # a valid pair stays a pair
        line.decode("ascii").encode("utf-8")

    def test_null_fields_are_not_written(self):
        payload = dict(VALID, event="e", properties=None, traits=None, context=None,
                       integrations=None, name=None, category=None)
        event = pixel.build_event("page", payload, received_at=T0)
        for field in ("properties", "traits", "integrations", "name", "category"):
            self.assertNotIn(field, event)
        self.assertEqual(event["context"], {})

    def test_gzip_must_be_whole_and_every_member_is_read(self):
        whole = gzip.compress(b'{"batch":[1,')
        self.assertEqual(pixel.decode_body(whole + gzip.compress(b"2]}"), "gzip"),
                         b'{"batch":[1,2]}')
        for name, body in [("no trailer", whole[:-8]), ("bad CRC", whole[:-8] + b"\0" * 8),
                           ("half a second member", whole + gzip.compress(b"2]}")[:15])]:
            with self.subTest(name):
                with self.assertRaises(pixel.Rejected) as caught:
                    pixel.decode_body(body, "gzip")
                self.assertEqual(caught.exception.reason, "invalid_gzip")
        bombs = gzip.compress(b" " * (300 * 1024)) * 2   # each member fits, both do not
        with self.assertRaises(pixel.Rejected) as caught:
            pixel.decode_body(bombs, "gzip")
        self.assertEqual(caught.exception.reason, "body_too_large")


class BatchBounds(unittest.TestCase):
    def test_a_shared_context_counts_toward_each_items_32_kb(self):
        body = json.dumps({"writeKey": "k", "context": {"pad": "x" * 20000}, "batch": [
            {"type": "track", "userId": "u", "event": "small"},
            {"type": "track", "userId": "u", "event": "e", "properties": {"p": "y" * 13000}}]})
        (small, small_payload), (large, large_payload) = pixel.api_payloads("batch",
                                                                            body.encode())
        self.assertEqual(small_payload["context"]["pad"], "x" * 20000)
        self.assertEqual(large_payload.reason, "payload_too_large")
        self.assertEqual(large_payload.item["properties"]["p"], "y" * 13000)

    def test_an_item_is_measured_as_sdks_send_it_in_utf8(self):
        # Ruby, Java, Go and Rust cap a message at 32 KB of UTF-8; pixel's ASCII log escapes
        # a Cyrillic letter to 6 bytes and an emoji to 12, and refused such items, answered
        # 200 (analytics-go's 11,330-byte message of Cyrillic was lost).
        def batch(text):
            return json.dumps({"writeKey": "k", "batch": [
                {"type": "track", "userId": "u", "event": "e", "properties": {"t": text}}]},
                ensure_ascii=False).encode()
        for name, text, taken in [("Cyrillic, 30 KB", "\u0416" * 15000, True),
                                  ("emoji, 32,000 bytes", "\U0001F600" * 8000, True),
                                  ("Cyrillic, 34 KB", "\u0416" * 17000, False),
                                  ("ASCII, 33 KB", "x" * 33000, False)]:
            with self.subTest(name):
                (_, payload), = pixel.api_payloads("batch", batch(text))
                self.assertEqual(isinstance(payload, dict), taken)
                if taken:   # and its line, escaped, fits the log's
                    self.assertEqual(json.loads(pixel.encode_line(payload))["properties"]["t"],
                                     text)
        # ... and what an item inherits, as the second attack pass found: 12 KB in all.
        body = json.dumps({"writeKey": "k", "context": {"page": {"title": "\u0436" * 6000}},
                           "batch": [{"type": "track", "userId": "u", "event": "e"}]},
                          ensure_ascii=False).encode()
        (_, payload), = pixel.api_payloads("batch", body)
        self.assertEqual(payload["context"]["page"]["title"], "\u0436" * 6000)

    def test_a_single_event_is_measured_as_a_batch_item_is(self):
        # The same event, 12 KB of UTF-8 sent with json.dumps's \u escapes (36 KB of body),
        # was taken in a batch and refused alone on /v1/track.
        event = {"writeKey": "k", "userId": "u", "event": "e",
                 "properties": {"t": "\u00e9" * 6000}}
        body = json.dumps(event).encode()
        self.assertGreater(len(body), pixel.MAX_PAYLOAD_BYTES)
        (_, batched), = pixel.api_payloads("batch", json.dumps(
            {"batch": [dict(event, type="track")]}).encode())
        self.assertIsInstance(batched, dict)
        (_, payload), = pixel.api_payloads("track", body)
        self.assertEqual(payload["properties"]["t"], "\u00e9" * 6000)
        with self.assertRaises(pixel.Rejected) as caught:   # over 32 KB as it is sent
            pixel.api_payloads("track", json.dumps({"a": "\u0416" * 17000},
                                                   ensure_ascii=False).encode())
        self.assertEqual(caught.exception.reason, "payload_too_large")

    def test_a_pixels_data_counts_decoded_beside_other_parameters(self):
        # A 26 KB payload in data= was taken alone and refused with a cache buster beside it:
        # its 35 KB of base64 counted toward the 32 KB.
        payload = {"writeKey": "k", "userId": "u", "event": "e", "properties": {"s": "x" * 26000}}
        for query in ("data=" + b64(payload), "data=" + b64(payload) + "&cb=1",
                      "cb=1&data=" + b64(payload, pad=False)):
            with self.subTest(query[-8:]):
                self.assertEqual(pixel.decode_query(query)["properties"]["s"], "x" * 26000)
        with self.assertRaises(pixel.Rejected) as caught:   # together still at most 32 KB
            pixel.decode_query("cb=" + "y" * 7000 + "&data=" + b64(payload))
        self.assertEqual(caught.exception.reason, "payload_too_large")

    def test_a_body_as_large_as_analytics_rusts_largest_batch_is_taken(self):
        # batcher.rs: MAX_BATCH_SIZE = 1024 * 512 for the items, and the envelope beside it.
        item = {"type": "track", "userId": "u", "event": "e", "properties": {"p": "x" * 32600}}
        body = json.dumps({"batch": [item] * 16, "sentAt": "2026-12-04T00:00:00Z",
                           "writeKey": "k"}).encode()
        self.assertGreater(len(body), 520000)   # Segment's 500 KB is 512,000
        self.assertEqual(len(pixel.api_payloads("batch", pixel.decode_body(body))), 16)
        with self.assertRaises(pixel.Rejected) as caught:
            pixel.decode_body(b" " * (pixel.MAX_BODY_BYTES + 1))
        self.assertEqual(caught.exception.reason, "body_too_large")

    def test_a_context_bomb_is_refused_whole(self):
        started = time.monotonic()
        body = json.dumps({"writeKey": "k", "context": {"pad": "x" * 120000},
                           "batch": [{"type": "track", "userId": "u", "event": "e"}] * 10000})
        with self.assertRaises(pixel.Rejected) as caught:
            pixel.api_payloads("batch", body.encode())
        self.assertEqual(caught.exception.reason, "batch_too_large")
        body = json.dumps({"writeKey": "k", "context": {"pad": "x" * 30000},
                           "batch": [{"type": "track", "userId": "u", "event": "e"}] * 10000})
        with self.assertRaises(pixel.Rejected) as caught:
            pixel.api_payloads("batch", body.encode())
        self.assertEqual(caught.exception.reason, "batch_too_large")
        self.assertLess(time.monotonic() - started, 5)


# Its examples and caches in a temporary folder, not a .hypothesis/ left in the checkout.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",
                      os.path.join(tempfile.gettempdir(), "pixel-hypothesis"))
try:
    import hypothesis
    from hypothesis import strategies
except ImportError:   # a dev-only dependency; .ci/run installs it
    hypothesis = None

if hypothesis is not None:
    json_values = strategies.recursive(
        strategies.none() | strategies.booleans() | strategies.integers() |
        strategies.floats(allow_nan=True, allow_infinity=True) | strategies.text(),
        lambda children: strategies.lists(children, max_size=4) |
        strategies.dictionaries(strategies.text(max_size=8), children, max_size=4),
        max_leaves=20)
    field_names = strategies.sampled_from(
        ["writeKey", "userId", "anonymousId", "event", "groupId", "previousId", "name",
         "category", "properties", "traits", "context", "integrations", "messageId",
         "timestamp", "sentAt", "originalTimestamp", "type"]) | strategies.text(max_size=8)
    payloads = strategies.dictionaries(field_names, json_values, max_size=8)
    kinds = strategies.sampled_from(pixel.EVENT_TYPES)

    class Properties(unittest.TestCase):
        """Hypothesis over decode, validate and enrich: nothing but a Rejected escapes, every
        accepted event keeps every rule, and every line parses back to its event."""

        def check_event(self, kind, event):
            self.assertEqual(pixel.validate(kind, event)["type"], kind)
            self.assertTrue(event.get("userId") or event.get("anonymousId"))
            self.assertIsInstance(event["writeKey"], str)
            line = pixel.encode_line(event)
            self.assertEqual(line.count(b"\n"), 1)
            self.assertEqual(json.loads(line), event)

        @hypothesis.settings(max_examples=int(400 * EXAMPLES), deadline=None)
        @hypothesis.given(kind=kinds, payload=payloads, base=payloads)
        def test_payloads_through_data(self, kind, payload, base):
            payload = dict(base, **payload)
            raw = json.dumps(payload, allow_nan=True).encode("utf-8", "surrogatepass")
            try:
                event = pixel.pixel_event(kind, "data=" + base64.urlsafe_b64encode(raw).decode(),
                                          received_at=T0, ip="127.0.0.1")
                line_event = json.loads(pixel.encode_line(event))
            except pixel.Rejected:
                return
            self.check_event(kind, line_event)

        @hypothesis.settings(max_examples=int(400 * EXAMPLES), deadline=None)
        @hypothesis.given(kind=kinds, query=strategies.text(max_size=300))
        def test_any_query(self, kind, query):
            try:
                event = pixel.pixel_event(kind, query, received_at=T0, user_agent="h")
                line_event = json.loads(pixel.encode_line(event))
            except pixel.Rejected:
                return
            self.check_event(kind, line_event)

        @hypothesis.settings(max_examples=int(500 * EXAMPLES), deadline=None)
        @hypothesis.given(query=strategies.text(alphabet=strategies.sampled_from(
            "ab=&%+.2EFf0\u00e9 ;"), max_size=60) | strategies.text(max_size=60))
        def test_query_fields_read_as_parse_qsl_reads_them(self, query):
            import urllib.parse
            hypothesis.assume("data" not in urllib.parse.unquote_plus(query, errors="replace"))
            try:
                expected = {}
                for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True,
                                                         errors="strict"):
                    *parents, last = key.split(".")
                    node = expected
                    for part in parents:
                        node = node.setdefault(part, {})
                        if not part or not isinstance(node, dict):
                            raise ValueError(key)
                    if not last or last in node:
                        raise ValueError(key)
                    node[last] = value
            except ValueError:   # UnicodeDecodeError too: the query is refused
                with self.assertRaises(pixel.Rejected):
                    pixel.decode_query(query)
                return
            self.assertEqual(pixel.decode_query(query), expected)

        @hypothesis.settings(max_examples=int(300 * EXAMPLES), deadline=None)
        @hypothesis.given(data=strategies.binary(max_size=300))
        def test_any_bytes_as_data(self, data):
            for text in (base64.b64encode(data).decode(), data.decode("latin-1")):
                try:
                    self.assertIsInstance(pixel.decode_data(text), dict)
                except pixel.Rejected:
                    pass   # the only exception allowed out

        @hypothesis.settings(max_examples=int(300 * EXAMPLES), deadline=None)
        @hypothesis.given(body=strategies.binary(max_size=300) | payloads.map(
            lambda p: json.dumps({"batch": [p, p]}).encode()))
        def test_any_api_body(self, body):
            try:
                pairs = pixel.api_payloads("batch", body)
            except pixel.Rejected:
                return
            for kind, payload in pairs:
                if isinstance(payload, pixel.Rejected):
                    continue
                try:
                    event = json.loads(pixel.encode_line(pixel.enrich(
                        kind, pixel.validate(kind, payload), received_at=T0)))
                except pixel.Rejected:
                    continue
                self.check_event(kind, event)
else:
    class Properties(unittest.TestCase):
        def test_properties(self):
            need(False, "hypothesis")


PARSE_HEAD_CASES = [
    # name, head (without its blank line), (method, path, query, version, body length,
    # keep-alive) or (status, reason) of the HeadError
    ("plain GET", b"GET /v1/pixel/track?a=1 HTTP/1.1\r\nHost: x",
     ("GET", "/v1/pixel/track", "a=1", "HTTP/1.1", 0, True)),
    ("bare LF", b"GET /health HTTP/1.1\nHost: x", ("GET", "/health", "", "HTTP/1.1", 0, True)),
    ("a fragment dropped, as WSGI hosts drop it",
     b"GET /v1/pixel/track?event=a#x=1 HTTP/1.1\r\nHost: x",
     ("GET", "/v1/pixel/track", "event=a", "HTTP/1.1", 0, True)),
    ("close", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close", ("GET", "/", "", "HTTP/1.1", 0, False)),
    ("HTTP/1.0 closes", b"GET / HTTP/1.0", ("GET", "/", "", "HTTP/1.0", 0, False)),
    ("HTTP/1.0 keep-alive", b"GET / HTTP/1.0\r\nConnection: Keep-Alive",
     ("GET", "/", "", "HTTP/1.0", 0, True)),
    ("absolute form", b"GET http://h.example/v1/pixel/page?x=1 HTTP/1.1\r\nHost: x",
     ("GET", "/v1/pixel/page", "x=1", "HTTP/1.1", 0, True)),
    ("content length", b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 12",
     ("POST", "/v1/track", "", "HTTP/1.1", 12, True)),
    ("same length twice", b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3",
     ("POST", "/v1/track", "", "HTTP/1.1", 3, True)),
    ("chunked", b"POST /v1/track HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked",
     ("POST", "/v1/track", "", "HTTP/1.1", -1, True)),
    ("chunked in HTTP/1.0", b"POST /v1/track HTTP/1.0\r\nTransfer-Encoding: chunked",
     (400, "bad_framing")),
    ("a coding before chunked", b"POST /v1/track HTTP/1.1\r\nHost: x\r\n"
                                b"Transfer-Encoding: gzip, chunked", (400, "bad_framing")),
    ("chunked twice", b"POST /v1/track HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Transfer-Encoding: chunked", (400, "bad_framing")),
    ("non-ASCII target is quoted", "GET /v1/pixel/track?u=\u00e9 HTTP/1.1\r\nHost: x".encode("latin-1"),
     ("GET", "/v1/pixel/track", "u=%E9", "HTTP/1.1", 0, True)),
    ("HTTP/0.9", b"GET /v1/pixel/track", (400, "bad_request_line")),
    ("bad method", b"G(T / HTTP/1.1", (400, "bad_request_line")),
    ("HTTP/2", b"GET / HTTP/2.0", (505, "bad_version")),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : x", (400, "bad_header")),
    ("line folding", b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n c", (400, "bad_header")),
    ("no colon", b"GET / HTTP/1.1\r\nHost", (400, "bad_header")),
    ("bad scheme", b"GET ftp://x/ HTTP/1.1\r\nHost: x", (400, "bad_target")),
    ("two lengths", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2",
     (400, "bad_framing")),
    ("length and chunked", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                           b"Transfer-Encoding: chunked", (400, "bad_framing")),
    ("negative length", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1", (400, "bad_framing")),
    ("a length with a tab", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\t, 3 ",
     ("POST", "/", "", "HTTP/1.1", 3, True)),
] + [
    # Only spaces and tabs around a length (the attack pass): these are not whitespace there.
    ("a length after %r" % blank, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:" + blank +
     b"34", (400, "bad_framing")) for blank in (b"\x0b", b"\x0c", b"\x1f", b"\x85", b"\xa0")
] + [
    ("request line over 64 KiB", b"GET /" + b"x" * pixel.MAX_LINE + b" HTTP/1.1",
     (414, "uri_too_long")),
    ("header over 64 KiB", b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"v" * pixel.MAX_LINE,
     (431, "header_too_long")),
    ("101 headers", b"GET / HTTP/1.1" + b"\r\nX: v" * 101, (431, "too_many_headers")),
]


class ParseHead(unittest.TestCase):
    def test_cases(self):
        for name, head, expected in PARSE_HEAD_CASES:
            with self.subTest(name):
                if len(expected) == 2:
                    with self.assertRaises(pixel.HeadError) as caught:
                        pixel.parse_head(head)
                    self.assertEqual((caught.exception.status, caught.exception.reason),
                                     expected)
                else:
                    parsed = pixel.parse_head(head)
                    self.assertEqual((parsed.method, parsed.path, parsed.query, parsed.version,
                                      parsed.body_length, parsed.keep_alive), expected)

    def test_repeated_headers_are_joined_and_names_lowered(self):
        parsed = pixel.parse_head(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\n"
                                  b"x-forwarded-for: 2.2.2.2\r\nUser-Agent:  Mail/1 ")
        self.assertEqual(parsed.headers, {"host": "x", "x-forwarded-for": "1.1.1.1, 2.2.2.2",
                                          "user-agent": "Mail/1"})


class Routes(unittest.TestCase):
    def test_the_table(self):
        self.assertEqual({path for path, route in pixel.ROUTES.items() if route.kind == "pixel"},
                         {"/v1/pixel/" + kind for kind in pixel.EVENT_TYPES})
        self.assertEqual({route.name for route in pixel.ROUTES.values() if route.kind == "api"},
                         set(pixel.EVENT_TYPES + pixel.BATCH_ROUTES))
        self.assertEqual(pixel.ROUTES["/health"].methods, ("GET", "HEAD"))
        for path in ("/v1/pixel/bogus", "/v1/pixel/", "/v1/pixel/track/", "/v1/"):
            self.assertNotIn(path, pixel.ROUTES)


class Reporting(unittest.TestCase):
    def test_a_key_is_said_once_per_interval(self):
        now = [0.0]
        stream = io.StringIO()
        reporter = pixel.Reporter(stream, interval=10, clock=lambda: now[0])
        self.assertTrue(reporter.say("one", key="k"))
        self.assertFalse(reporter.say("two", key="k"))
        self.assertTrue(reporter.say("other", key="j"))
        self.assertTrue(reporter.say("unkeyed"))
        now[0] = 10.5
        self.assertTrue(reporter.say("three", key="k"))
        self.assertEqual(stream.getvalue(), "pixel: one\npixel: other\npixel: unkeyed\n"
                                            "pixel: three\n")

    def test_a_line_is_one_write_with_its_newline(self):
        # A reader of stderr (a test, a shipper) must never see a line without its end.
        writes = []
        stream = io.StringIO()
        stream.write = lambda text: writes.append(text) or len(text)
        pixel.Reporter(stream).say("cannot reload TLS")
        self.assertEqual([text for text in writes if text], ["pixel: cannot reload TLS\n"])

    def test_a_failing_stream_is_counted_not_raised(self):
        # write_through: nothing is buffered, so each say() meets the full disk itself.
        with io.TextIOWrapper(open("/dev/full", "wb", buffering=0), write_through=True) as full:
            reporter = pixel.Reporter(full)
            self.assertFalse(reporter.say("cannot write"))
            self.assertFalse(reporter.say("again"))
        self.assertEqual(reporter.lost, 2)


# Issue 21: what fetched a pixel. User agents as the research for issue 21 found them in
# public sources (Mautic's and warmbly's lists, mail providers' pages), and the ranges the
# label table loads.
GMAIL_PROXY = ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com "
               "GoogleImageProxy)")
GMAIL_PREFETCH = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
                  "Gecko) Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0")
EDGE_12 = GMAIL_PREFETCH[:-len(" Mozilla/5.0")]
APPLE_MAIL = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_4) AppleWebKit/605.1.15 (KHTML, "
              "like Gecko)")
IPHONE_MAIL = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
               "(KHTML, like Gecko) Mobile/15E148")
SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
          "Gecko) Version/17.1 Safari/605.1.15")
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/120.0.0.0 Safari/537.36")
CUBOT = ("Mozilla/5.0 (Linux; Android 10; CUBOT_X30) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/120.0.0.0 Mobile Safari/537.36")
# Apple's egress-ip-ranges.csv, as it is, and Microsoft's Exchange Online Protection ranges
# in warmbly's format (CIDR, scope, label).
APPLE_RANGES = ("172.224.226.0/27,GB,GB-EN,London,\n"
                "172.224.226.32/27,GB,GB-EN,London,\n"
                "2a02:26f7:b3c0:4000::/64,GB,GB-EN,London,\n"
                "104.28.0.24/31,US,US-CA,Los Angeles,\n")
SCANNER_RANGES = ("# Microsoft 365 Defender / Exchange Online Protection\n"
                  "40.92.0.0/15        all     microsoft-365-protection\n"
                  "2a01:111:f400::/48  all     microsoft-365-protection\n")

LABEL_CASES = [
    # name, user agent, headers, client address, with the ranges, (mailClient, machine)
    ("gmail's image proxy is a person", GMAIL_PROXY, {}, "66.249.84.1", True, ("gmail", None)),
    ("gmail's prefetch", GMAIL_PREFETCH, {}, "66.249.84.1", True, ("gmail", "gmail_prefetch")),
    ("edge 12 itself is a browser", EDGE_12, {}, "198.51.100.1", True, (None, None)),
    ("yahoo, help page", "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
     {}, None, False, ("yahoo", None)),
    ("yahoo, senders page", "YahooMailProxy; https://senders.yahooinc.com/mail-proxy-servers",
     {}, None, False, ("yahoo", None)),
    ("outlook desktop", "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.14931; "
     "Pro)", {}, None, False, ("outlook", None)),
    ("outlook ms-office", "Mozilla/4.0 (compatible; ms-office; MSOffice 16)", {}, None, False,
     ("outlook", None)),
    ("outlook iOS", "Outlook-iOS/709.2189947.prod.iphone (3.24.0)", {}, None, False,
     ("outlook", None)),
    ("outlook from a scanner range", "Microsoft Office/16.0 (Windows NT 10.0; Microsoft "
     "Outlook 16.0.14931; Pro)", {}, "40.93.1.2", True, ("outlook", "scanner")),
    ("apple mail, privacy protection off", APPLE_MAIL, {}, "198.51.100.1", True,
     ("apple_mail", None)),
    ("iphone mail", IPHONE_MAIL, {}, None, False, ("apple_mail", None)),
    ("safari is a browser", SAFARI, {}, None, False, (None, None)),
    ("apple privacy protection", "Mozilla/5.0", {}, "172.224.226.7", True,
     ("apple_mail", "apple_mpp")),
    ("apple privacy protection, the range's last address", "Mozilla/5.0", {}, "172.224.226.63",
     True, ("apple_mail", "apple_mpp")),
    ("apple privacy protection, the next address is not", "Mozilla/5.0", {}, "172.224.226.64",
     True, (None, None)),
    ("apple privacy protection over IPv6", "Mozilla/5.0", {}, "2a02:26f7:b3c0:4000:1:2:3:4",
     True, ("apple_mail", "apple_mpp")),
    ("apple privacy protection, IPv4-mapped", "Mozilla/5.0", {}, "::ffff:104.28.0.25", True,
     ("apple_mail", "apple_mpp")),
    ("Mozilla/5.0 elsewhere is any script", "Mozilla/5.0", {}, "198.51.100.1", True,
     (None, None)),
    ("Mozilla/5.0 with no ranges loaded", "Mozilla/5.0", {}, "172.224.226.7", False,
     (None, None)),
    ("apple's list with a browser's agent is private relay", SAFARI, {}, "172.224.226.7", True,
     (None, None)),
    ("barracuda", "Barracuda Sentinel (EE)", {}, None, False, (None, "scanner")),
    ("a crawler", "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
     {}, None, False, (None, "scanner")),
    ("curl", "curl/8.5.0", {}, None, False, (None, "scanner")),
    # The report attack: scripts and link previews counted as people.
    ("wget", "Wget/1.21.3", {}, None, False, (None, "scanner")),
    ("python", "python-requests/2.31.0", {}, None, False, (None, "scanner")),
    ("go", "Go-http-client/2.0", {}, None, False, (None, "scanner")),
    ("java", "Java/17.0.9", {}, None, False, (None, "scanner")),
    ("okhttp", "okhttp/4.12.0", {}, None, False, (None, "scanner")),
    ("slack", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", {}, None, False,
     (None, "scanner")),
    ("facebook", "facebookexternalhit/1.1", {}, None, False, (None, "scanner")),
    ("a cubot phone is no bot", CUBOT, {}, None, False, (None, None)),
    ("a browser from a scanner range", CHROME, {}, "40.92.0.1", True, (None, "scanner")),
    ("a scanner range over IPv6", CHROME, {}, "2a01:111:f400:7::1", True, (None, "scanner")),
    ("next to a scanner range", CHROME, {}, "40.94.0.0", True, (None, None)),
    ("sec-purpose prefetch", CHROME, {"sec-purpose": "prefetch"}, None, False,
     (None, "prefetch")),
    ("sec-purpose prerender", CHROME, {"sec-purpose": "prefetch;prerender"}, None, False,
     (None, "prefetch")),
    ("purpose prefetch", CHROME, {"purpose": "Prefetch"}, None, False, (None, "prefetch")),
    ("x-moz prefetch", CHROME, {"x-moz": "prefetch"}, None, False, (None, "prefetch")),
    ("x-purpose preview", SAFARI, {"x-purpose": "preview"}, None, False, (None, "prefetch")),
    ("another purpose", CHROME, {"sec-purpose": "anything"}, None, False, (None, None)),
    ("a mail client's prefetch keeps its client", APPLE_MAIL, {"purpose": "prefetch"}, None,
     False, ("apple_mail", "prefetch")),
    ("a scanner agent wins over a prefetch header", "Barracuda Sentinel (EE)",
     {"purpose": "prefetch"}, None, False, (None, "scanner")),
    ("no agent", None, {}, "172.224.226.7", True, (None, None)),
    ("an empty agent", "", {}, "172.224.226.7", True, (None, None)),
    ("not an address", "Mozilla/5.0", {}, "unknown", True, (None, None)),
    ("an address with a zone", "Mozilla/5.0", {}, "fe80::1%eth0", True, (None, None)),
    ("a NUL in the address", "Mozilla/5.0", {}, "172.224.226.7\0", True, (None, None)),
    ("a marker past the first 1024 characters", "Mozilla/5.0 " + "x" * 65000 +
     " GoogleImageProxy", {}, None, False, (None, None)),
]


class MachineLabels(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        folder = tempfile.mkdtemp(prefix="pixel-test-")
        cls.addClassCleanup(shutil.rmtree, folder, True)
        paths = []
        for label, text in (("apple_mpp", APPLE_RANGES), ("scanner", SCANNER_RANGES)):
            paths.append((label, os.path.join(folder, label + ".csv")))
            with open(paths[-1][1], "w") as handle:
                handle.write(text)
        cls.ranges = pixel.load_ranges(paths)

    def test_cases(self):
        self.assertEqual(self.ranges.counts, {"apple_mpp": 4, "scanner": 2})
        for name, agent, headers, address, with_ranges, expected in LABEL_CASES:
            with self.subTest(name):
                self.assertEqual(pixel.fetch_labels(agent, headers, address,
                                                    self.ranges if with_ranges else None),
                                 expected)
        self.assertTrue(set(pixel.MAIL_CLIENTS) <= {case[-1][0] for case in LABEL_CASES})
        self.assertTrue(set(pixel.MACHINES) <= {case[-1][1] for case in LABEL_CASES})

    def test_the_agent_cache_is_bounded(self):
        pixel.agent_labels.cache_clear()
        for number in range(10000):
            pixel.fetch_labels("Mail/%d" % number + "x" * 2000, {})
        self.assertEqual(pixel.agent_labels.cache_info().currsize, 4096)
        self.assertEqual(pixel.fetch_labels(GMAIL_PROXY, {}), ("gmail", None))


class MachineRangesOption(unittest.TestCase):
    def test_flags_variable_and_keyword(self):
        expected = [("apple_mpp", "/a.csv"), ("scanner", "/b.txt")]
        self.assertEqual(pixel.parse_args(["--machine-ranges", "apple_mpp=/a.csv",
                                           "--machine-ranges", "scanner = /b.txt"], {})
                         .machine_ranges, expected)
        self.assertEqual(pixel.parse_args([], {"PIXEL_MACHINE_RANGES":
                                               "apple_mpp=/a.csv, scanner=/b.txt"})
                         .machine_ranges, expected)
        self.assertEqual(pixel.configure(machine_ranges=[("apple_mpp", "/a.csv"),
                                                         "scanner=/b.txt"]).machine_ranges,
                         expected)
        self.assertFalse(pixel.parse_args([], {}).machine_ranges)
        self.assertFalse(pixel.configure().machine_ranges)

    def test_bad_values(self):
        for argv, environ, message in [
                (["--machine-ranges", "/a.csv"], {}, "not LABEL=FILE"),
                (["--machine-ranges", "apple=/a.csv"], {}, "not LABEL=FILE"),
                (["--machine-ranges", "scanner="], {}, "not LABEL=FILE"),
                (["--machine-ranges", "=/a.csv"], {}, "not LABEL=FILE"),
                ([], {"PIXEL_MACHINE_RANGES": ""}, "PIXEL_MACHINE_RANGES is set but empty"),
                ([], {"PIXEL_MACHINE_RANGES": " , "}, "names nothing"),
                ([], {"PIXEL_MACHINE_RANGES": "apple_mpp"}, "not LABEL=FILE")]:
            with self.subTest(argv=argv, environ=environ):
                status, stderr = usage_error(self, argv, environ)
                self.assertEqual(status, 2)
                self.assertIn(message, stderr)
        with self.assertRaisesRegex(ValueError, "takes a list"):
            pixel.configure(machine_ranges="apple_mpp=/a.csv")
        for value in ([42], [("apple_mpp",)], [("apple_mpp", 3)], [{"apple_mpp": "/a"}]):
            with self.subTest(value), self.assertRaisesRegex(
                    (argparse.ArgumentTypeError, ValueError), "not LABEL=FILE"):
                pixel.configure(machine_ranges=value)


SPACED_TARGET_CASES = [
    # name, request line, (path, query) or the (status, reason) of the HeadError
    ("the seed's raw example", b"GET /v1/pixel/track?userId=user_123&event=Email Opened"
     b"&properties.subject=The Electric Daily HTTP/1.1",
     ("/v1/pixel/track", "userId=user_123&event=Email Opened&properties.subject=The Electric "
                         "Daily")),
    ("many spaces are one", b"GET  /v1/pixel/page?name=A    B   HTTP/1.1",
     ("/v1/pixel/page", "name=A B")),
    ("HEAD", b"HEAD /v1/pixel/track?event=A B HTTP/1.1", ("/v1/pixel/track", "event=A B")),
    ("an escaped path", b"GET /v1/pixel/%74rack?event=A B HTTP/1.1",
     ("/v1/pixel/track", "event=A B")),
    ("HTTP/1.0", b"GET /v1/pixel/track?event=A B HTTP/1.0", ("/v1/pixel/track", "event=A B")),
    ("HTTP/1.1 inside the target", b"GET /v1/pixel/track?event=A HTTP/1.1 B HTTP/1.1",
     ("/v1/pixel/track", "event=A HTTP/1.1 B")),
    ("a tab inside a word stays", b"GET /v1/pixel/track?event=A\tB C HTTP/1.1",
     ("/v1/pixel/track", "event=A\tB C")),
    ("non-ASCII is quoted", "GET /v1/pixel/track?event=\u00e9 t\u00e9 HTTP/1.1".encode("latin-1"),
     ("/v1/pixel/track", "event=%E9%20t%E9")),
    ("a space in the path", b"GET /v1/pixel/ track?event=A B HTTP/1.1", (400, "bad_request_line")),
    ("a space before the query", b"GET /v1/pixel/track ?event=A B HTTP/1.1",
     (400, "bad_request_line")),
    ("no query", b"GET /v1/pixel/track HTTP/1.1 HTTP/1.1", (400, "bad_request_line")),
    ("not a pixel route", b"GET /health?a=b c HTTP/1.1", (400, "bad_request_line")),
    ("the API", b"GET /v1/track?a=b c HTTP/1.1", (400, "bad_request_line")),
    ("POST", b"POST /v1/pixel/track?a=b c HTTP/1.1", (400, "bad_request_line")),
    ("an unknown method", b"PUT /v1/pixel/track?a=b c HTTP/1.1", (400, "bad_request_line")),
    ("a space after the version", b"GET /v1/pixel/track?a=b c HTTP/1.1 ",
     (400, "bad_request_line")),
    ("HTTP/2", b"GET /v1/pixel/track?a=b c HTTP/2.0", (400, "bad_request_line")),
    ("tabs between the words", b"GET\t/v1/pixel/track?a=b c\tHTTP/1.1",
     (400, "bad_request_line")),
    ("the absolute form", b"GET http://h/v1/pixel/track?a=b c HTTP/1.1",
     (400, "bad_request_line")),
    ("spaces only", b"GET " + b" " * 60000 + b" HTTP/1.1", (400, "bad_request_line")),
    ("a bare CR is still refused", b"GET /v1/pixel/track?a=b\rc d HTTP/1.1", (400, "bad_header")),
    ("a NUL is still refused", b"GET /v1/pixel/track?a=b\0c d HTTP/1.1", (400, "bad_header")),
    ("over 64 KiB", b"GET /v1/pixel/track?a=" + b"b " * 33000 + b"HTTP/1.1",
     (414, "uri_too_long")),
]


class SpacedTarget(unittest.TestCase):
    def test_cases(self):
        for name, line, expected in SPACED_TARGET_CASES:
            with self.subTest(name):
                head = line + b"\r\nHost: x"
                if isinstance(expected[0], int):
                    with self.assertRaises(pixel.HeadError) as caught:
                        pixel.parse_head(head)
                    self.assertEqual((caught.exception.status, caught.exception.reason),
                                     expected)
                else:
                    parsed = pixel.parse_head(head)
                    self.assertEqual((parsed.path, parsed.query), expected)

    def test_the_seeds_example_is_an_email_opened(self):
        parsed = pixel.parse_head(SPACED_TARGET_CASES[0][1] + b"\r\nHost: x")
        self.assertEqual(pixel.decode_query(parsed.query), {
            "userId": "user_123", "event": "Email Opened",
            "properties": {"subject": "The Electric Daily"}})

    def test_a_line_of_64_kib_of_spaces_is_linear(self):
        line = b"GET /v1/pixel/track?a=b" + b" " * (pixel.MAX_LINE - 40) + b"c HTTP/1.1"
        started = time.perf_counter()
        for _ in range(20):
            parsed = pixel.parse_head(line + b"\r\nHost: x")
        self.assertEqual(parsed.query, "a=b c")
        self.assertLess(time.perf_counter() - started, 2.0)   # ~1 ms each, measured


# receivedAt of a fixed day, and events as the log holds them, for the report's table.
def logged(user=None, event="Email Opened", machine=None, day="2026-11-18", kind="track",
           anonymous=None, **fields):
    line = {"type": kind, "event": event, "receivedAt": day + "T11:06:40.250Z",
            "context": {"ip": "192.0.2.1"}}
    if user is not None:
        line["userId"] = user
    if anonymous is not None:
        line["anonymousId"] = anonymous
    if machine:
        line["context"]["machine"] = machine
    line.update(fields)
    return json.dumps(line).encode()


REPORT_CASES = [
    # name, Tally keywords, lines, [(key as shown, day, (events, users, machine,
    # events_no_machine, users_no_machine))], lines skipped
    ("by event", {}, [logged("a"), logged("b"), logged("a", event="Clicked")],
     [("Email Opened", None, (2, 2, 0, 2, 2)), ("Clicked", None, (1, 1, 0, 1, 1))], 0),
    ("a user is the userId, else the anonymousId", {},
     [logged("a"), logged(anonymous="a"), logged(anonymous="x"), logged("a", anonymous="y"),
      logged()], [("Email Opened", None, (5, 3, 0, 5, 3))], 0),
    ("machines, and the counts without them", {},
     [logged("a", machine="apple_mpp"), logged("a"), logged("b", machine="scanner"),
      logged("c", machine="")],
     [("Email Opened", None, (4, 3, 2, 2, 2))], 0),
    ("by a dotted path, missing as (none)", {"by": "properties.campaign"},
     [logged("a", properties={"campaign": "spring"}), logged("b", properties={}),
      logged("c", properties="x"), logged("d", properties={"campaign": "spring"})],
     [("spring", None, (2, 2, 0, 2, 2)), ("(none)", None, (2, 2, 0, 2, 2))], 0),
    ("a number and its string are two groups", {"by": "properties.n"},
     [logged("a", properties={"n": 1}), logged("a", properties={"n": "1"}),
      logged("a", properties={"n": 1}), logged("a", properties={"n": None}),
      logged("a", properties={"n": {"x": [1]}})],
     [("1", None, (2, 1, 0, 2, 1)), ("1", None, (1, 1, 0, 1, 1)),
      ('{"x":[1]}', None, (1, 1, 0, 1, 1)), ("(none)", None, (1, 1, 0, 1, 1))], 0),
    ("one event name", {"event": "Clicked"}, [logged("a"), logged("b", event="Clicked")],
     [("Clicked", None, (1, 1, 0, 1, 1))], 0),
    ("one type", {"kind": "page", "by": "name"},
     [logged("a"), logged("a", kind="page", name="Home")], [("Home", None, (1, 1, 0, 1, 1))], 0),
    ("since and until take both ends", {"since": "2026-11-18T00:00:00.000Z",
                                        "until": "2026-11-19T23:59:59.999Z"},
     [logged("a", day="2026-11-17"), logged("b", day="2026-11-18"),
      logged("c", day="2026-11-19"), logged("d", day="2026-11-20")],
     [("Email Opened", None, (2, 2, 0, 2, 2))], 0),
    ("another zone's receivedAt is read as the time it is",
     {"since": "2026-11-18T00:00:00.000Z"},
     [logged("a", receivedAt="2026-11-18T01:00:00+02:00"),
      logged("b", receivedAt="2026-11-18T03:00:00+02:00"), logged("c", receivedAt="soon")],
     [("Email Opened", None, (1, 1, 0, 1, 1))], 0),
    ("daily rows under their group", {"daily": True},
     [logged("a", day="2026-11-19"), logged("a", day="2026-11-18", machine="apple_mpp"),
      logged("b", day="2026-11-18"), logged("c", receivedAt=None)],
     [("Email Opened", None, (4, 3, 1, 3, 3)), ("Email Opened", "(no date)", (1, 1, 0, 1, 1)),
      ("Email Opened", "2026-11-18", (2, 2, 1, 1, 1)),
      ("Email Opened", "2026-11-19", (1, 1, 0, 1, 1))], 0),
    ("what is not an event is skipped", {},
     [logged("a"), b'{"device": 2049, "inode": 7, "offset": 0}', b'{"type":"track","userI',
      b"[1, 2]", b'"track"', b'{"type": "nope"}', b"\xff\xfe{}", b"[" * 100000, None,
      b"", b"null", b'{"type": ["track"]}'],
     [("Email Opened", None, (1, 1, 0, 1, 1))], 10),
    ("a userId number is the user its text is", {}, [logged(7), logged("7"), logged(7.5)],
     [("Email Opened", None, (3, 2, 0, 3, 2))], 0),
    ("spaces or a BOM around a line's JSON", {},
     [b" " + logged("a"), logged("b") + b" \t", b"\xef\xbb\xbf" + logged("c"),
      "\t" + logged("d").decode()],
     [("Email Opened", None, (4, 4, 0, 4, 4))], 0),
]


class ReportTally(unittest.TestCase):
    def test_cases(self):
        for name, options, lines, expected, skipped in REPORT_CASES:
            with self.subTest(name):
                tally = pixel.Tally(**options)
                tally.add_lines(lines)
                rows = [(pixel._key_text(key), day, counts.values())
                        for key, day, counts in tally.rows()]
                self.assertEqual(rows, expected)
                self.assertEqual(tally.skipped, skipped)

    def test_the_total_counts_each_user_once(self):
        tally = pixel.Tally()
        tally.add_lines([logged("a"), logged("a", event="Clicked"), logged("b", machine="x")])
        self.assertEqual(tally.total.values(), (3, 2, 1, 2, 1))

    def test_the_table(self):
        tally = pixel.Tally(by="properties.campaign", daily=True)
        tally.add_lines([logged("a", day="2026-11-18", properties={"campaign": "s\x1b[2Jpring"}),
                         logged("b", day="2026-11-18", machine="scanner",
                                properties={"campaign": "s\x1b[2Jpring"}),
                         logged("c", day="2026-11-19", properties={"campaign": "x" * 500})])
        table = pixel.report_table(tally)
        self.assertNotIn("\x1b", table)   # an escape sequence never reaches a terminal
        lines = table.splitlines()
        self.assertEqual(lines[0].split(), ["properties.campaign"] + list(pixel.REPORT_COLUMNS))
        self.assertEqual(lines[1].split()[0], "s\\x1b[2Jpring")
        self.assertEqual(lines[2].split(), ["2026-11-18", "2", "2", "1", "1", "1",
                                            "#" * 20 + "." * 20])
        self.assertTrue(lines[3].startswith("x" * 57 + "..."))
        self.assertEqual(lines[4].split()[1:], ["1", "1", "0", "1", "1", "#" * 20])
        self.assertEqual(lines[5].split(), ["total", "3", "3", "1", "2", "2"])
        self.assertEqual(len({len(lines[index]) for index in (0, 1, 3, 5)}), 1, table)
        # A crafted receivedAt of pixel's shape is no day: it never reaches a terminal either
        # (the attack pass), nor one of another's digits.
        tally = pixel.Tally(daily=True)
        for received in ("\x1b[2J\x1b[1mXXT000000000000Z", "\u0662026-11-18T10:00:00.000Z"):
            tally.add_lines([json.dumps({"type": "track", "event": "E", "userId": "u",
                                         "receivedAt": received})])
        table = pixel.report_table(tally)
        self.assertNotIn("\x1b", table)
        self.assertEqual(table.splitlines()[2].split()[:3], ["(no", "date)", "2"])

    def test_records(self):
        tally = pixel.Tally(by="properties.n")
        tally.add_lines([logged("a", properties={"n": 2}), logged("b"),
                         b'{"type":"track","userId":"c","properties":{"n":NaN}}'])
        self.assertEqual(list(pixel.report_records(tally)), [
            {"key": 2, "events": 1, "users": 1, "machine": 0, "events_no_machine": 1,
             "users_no_machine": 1},
            {"key": "NaN", "events": 1, "users": 1, "machine": 0, "events_no_machine": 1,
             "users_no_machine": 1},   # not NaN, which no JSON reader takes (the attack pass)
            {"key": None, "events": 1, "users": 1, "machine": 0, "events_no_machine": 1,
             "users_no_machine": 1}])

    def test_times(self):
        self.assertEqual(pixel.report_time("2026-11-18"), "2026-11-18T00:00:00.000Z")
        self.assertEqual(pixel.report_time("2026-11-18", end=True), "2026-11-18T23:59:59.999Z")
        self.assertEqual(pixel.report_time("2026-11-18T10:00:00+01:00", end=True),
                         "2026-11-18T09:00:00.000Z")
        for bad in ("yesterday", "2026-13-01", "2026-11-18T25:00"):
            with self.subTest(bad), self.assertRaises(ValueError):
                pixel.report_time(bad)
        for bad in ("1969-12-31", "1970-01-01T00:00:00+00:01"):   # before pixel's first time
            with self.subTest(bad), self.assertRaisesRegex(ValueError, "out of range"):
                pixel.report_time(bad)


def reader(data, chunk):
    """A read(size) over `data` that never gives more than `chunk` bytes at once."""
    stream = io.BytesIO(data)
    return lambda size: stream.read(min(size, chunk))


LOG_LINES_CASES = [
    # name, data, read at most this many bytes at once, limit, lines
    ("lines", b"a\nbb\n", 1 << 20, 10, [b"a", b"bb"]),
    ("a last line with no newline", b"a\nbb", 1 << 20, 10, [b"a", b"bb"]),
    ("blank lines stay", b"a\n\nb\n", 1 << 20, 10, [b"a", b"", b"b"]),
    ("a byte at a time", b"ab\ncd\n", 1, 10, [b"ab", b"cd"]),
    ("a long line is one None", b"a\n" + b"x" * 50 + b"\nb\n", 1 << 20, 10, [b"a", None, b"b"]),
    ("a long line read in pieces", b"a\n" + b"x" * 50 + b"\nb\n", 7, 10, [b"a", None, b"b"]),
    ("a long last line", b"a\n" + b"x" * 50, 7, 10, [b"a", None]),
    ("exactly the limit", b"x" * 10 + b"\n", 3, 10, [b"x" * 10]),
    ("nothing", b"", 5, 10, []),
]


class LogLines(unittest.TestCase):
    def test_cases(self):
        for name, data, chunk, limit, expected in LOG_LINES_CASES:
            with self.subTest(name):
                self.assertEqual(list(pixel.log_lines(reader(data, chunk), limit, size=8)),
                                 expected)

    def test_a_file_with_no_newline_is_never_held_whole(self):
        blocks = []

        def endless(size):
            blocks.append(size)
            return b"x" * size if len(blocks) < 200 else b""
        self.assertEqual(list(pixel.log_lines(endless, limit=100, size=1 << 20)), [None])
        self.assertEqual(len(blocks), 200)


# Any PEM file of CA certificates this machine has, for flags that check theirs.
CA_BUNDLE = next((path for path in ("/etc/ssl/certs/ca-certificates.crt",
                                    "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
                  if os.path.exists(path)), None)


class PureFunctionsCalledFromPython(unittest.TestCase):
    """What a user's own code may hand the documented pure functions (the importer pass)."""

    def test_a_payload_that_is_no_object_and_one_key_as_a_string(self):
        event = {"writeKey": "PROD_KEY", "userId": "u", "event": "e"}
        for payload, keys, reason in (([1], None, "payload_not_object"),
                                      (None, None, "payload_not_object"),
                                      (dict(event, writeKey="K"), "PROD_KEY", "invalid_write_key"),
                                      (dict(event, writeKey="KEY"), "PROD_KEY",
                                       "invalid_write_key")):
            with self.subTest(payload=payload, keys=keys):
                with self.assertRaises(pixel.Rejected) as caught:
                    pixel.validate("track", payload, keys)
                self.assertEqual(caught.exception.reason, reason)
        self.assertEqual(pixel.validate("track", event, "PROD_KEY")["writeKey"], "PROD_KEY")
        # A dict of another class is a dict; no key, or an empty string, is any key.
        self.assertEqual(pixel.validate("track", collections.OrderedDict(event))["event"], "e")
        self.assertEqual(pixel.validate("track", dict(event, writeKey="K"), "")["writeKey"], "K")


class OneWiring(unittest.TestCase):
    """One configuration, one wiring: every option of the command line is one of
    make_wsgi_app's too, with the same meaning, unless it is the built-in server's own
    (listening, TLS, the process); the tests make pixel through the same configure()."""

    # A value other than the default for each option both take: (as flags, in Python,
    # what the Config then holds).
    VALUES = {
        "log": (["--log", "x/e.jsonl"], "x/e.jsonl", "x/e.jsonl"),
        "rejects": (["--rejects", "x/r.jsonl"], "x/r.jsonl", "x/r.jsonl"),
        "max_bytes": (["--max-bytes", "1K"], "1K", 1024),
        "keep": (["--keep", "3"], 3, 3),
        "write_key": (["--write-key", "K1", "--write-key", "K2"], ["K1", "K2"], ["K1", "K2"]),
        "trusted_proxy": (["--trusted-proxy", "10.0.0.0/8"], ["10.0.0.0/8"], ["10.0.0.0/8"]),
        "allow_origin": (["--allow-origin", "*.Example.com"], ["*.Example.com"],
                         ["*.example.com"]),
        "public_url": (["--public-url", "https://p.example/"], "https://p.example/",
                       "https://p.example"),
        "dedupe_window": (["--dedupe-window", "7"], 7, 7),
        "no_ip": (["--no-ip"], True, True),
        "anonymize_ip": (["--anonymize-ip"], True, True),
        "metrics_token": (["--metrics-token", "t0k"], "t0k", "t0k"),
        "forward": (["--forward", "https://h/v1/batch"], "https://h/v1/batch", "https://h"),
        "forward_write_key": (["--forward", "https://h", "--forward-write-key", "F"], "F",
                              "F"),
        "forward_batch": (["--forward-batch", "9"], 9, 9),
        "forward_ca": (["--forward", "https://h", "--forward-ca", CA_BUNDLE], CA_BUNDLE,
                       CA_BUNDLE),
        "forward_timeout": (["--forward-timeout", "2.5"], 2.5, 2.5),
        "forward_alert": (["--forward-alert", "30"], 30, 30.0),
        "machine_ranges": (["--machine-ranges", "scanner=r.txt"], ["scanner=r.txt"],
                           [("scanner", "r.txt")]),
        "suppress": (["--suppress", "s.txt"], "s.txt", "s.txt"),
    }

    def test_an_option_that_does_not_exist_is_named_not_ignored(self):
        with self.assertRaisesRegex(ValueError, r"\Ano such option: anonymise_ip, logg\Z"):
            pixel.configure(logg="events.jsonl", anonymise_ip=True)

    def test_every_option_but_the_servers_is_make_wsgi_apps_too(self):
        scopes = {option.name: option.scope for option in pixel.OPTIONS}
        self.assertEqual(set(self.VALUES), {name for name, scope in scopes.items()
                                            if scope == "all"})
        flags = {flag for action in pixel.build_parser({})._actions
                 for flag in action.option_strings if flag not in ("-h", "--help", "--version")}
        self.assertEqual(flags, {"--" + name.replace("_", "-") for name, scope in
                                 scopes.items() if scope != "wsgi"})
        for name, (argv, value, held) in self.VALUES.items():
            if name == "forward_ca" and not CA_BUNDLE:
                continue
            with self.subTest(name):
                extra = {"forward": "https://h"} if name in ("forward_write_key",
                                                              "forward_ca") else {}
                self.assertEqual(getattr(pixel.parse_args(argv, {}), name), held)
                self.assertEqual(getattr(pixel.configure(**dict(extra, **{name: value})),
                                         name), held)
                folder = temp_dir(self)
                options = {"log": os.path.join(folder, "e.jsonl"), name: value}
                if name in ("log", "rejects"):
                    os.makedirs(os.path.join(folder, "x"))
                    options[name] = os.path.join(folder, value)   # the log in `folder` too
                    held = os.path.join(folder, held)
                if name == "machine_ranges":   # a file it loads at start
                    ranges = write_file(folder, "r.txt", "10.0.0.0/8\n")
                    options[name], held = ["scanner=" + ranges], [("scanner", ranges)]
                if name == "suppress":
                    options[name] = held = write_file(folder, "s.txt", "alice\n")
                with unittest.mock.patch("sys.stderr", io.StringIO()):
                    app = pixel.make_wsgi_app(**dict(extra, **options))
                app.close()
                self.assertEqual(getattr(app.config, name), held)

    def test_the_servers_own_options_are_refused_by_name(self):
        folder = temp_dir(self)
        for name in (option.name for option in pixel.OPTIONS if option.scope == "server"):
            with self.subTest(name):
                status, stderr = wsgi_start_error(
                    self, log=os.path.join(folder, "e.jsonl"),
                    **{name: pixel.OPTIONS[pixel.OPTION_NAMES.index(name)].default})
                self.assertEqual(status, 3)
                self.assertIn("make_wsgi_app: %s: the WSGI server's to set" % name, stderr)
        self.assertEqual(os.listdir(folder), [])


class CommandLine(unittest.TestCase):
    def parse(self, argv, environ=None):
        return pixel.parse_args(argv, environ or {})

    def test_defaults(self):
        args = self.parse([])
        self.assertEqual((args.host, args.port, args.log, args.max_bytes, args.keep,
                          args.write_key, args.trusted_proxy, args.no_ip, args.cpu),
                         ("127.0.0.1", 8000, "events.jsonl", 0, 0, [], [], False, "auto"))
        self.assertEqual(self.parse(["--cpu", "none"]).cpu, "none")
        self.assertEqual(self.parse(["--cpu", "3"]).cpu, 3)
        self.assertEqual(self.parse([], {"PIXEL_CPU": "1"}).cpu, 1)
        self.assertEqual(args.rejects, os.path.join(os.getcwd(), "rejects.jsonl"))

    def test_flags(self):
        args = self.parse(["--host", "0.0.0.0", "--port", "0", "--log", "/tmp/x/e.jsonl",
                           "--max-bytes", "10M", "--keep", "3", "--write-key", "a",
                           "--write-key", "b", "--trusted-proxy", "10.0.0.0/8", "--no-ip"])
        self.assertEqual((args.port, args.max_bytes, args.keep, args.write_key,
                          args.trusted_proxy, args.no_ip, args.rejects),
                         (0, 10 * 1024 * 1024, 3, ["a", "b"], ["10.0.0.0/8"], True,
                          "/tmp/x/rejects.jsonl"))

    def test_a_host_sockets_cannot_encode_is_refused_in_words(self):
        # The attack pass: socket's IDNA encoding refused these, and `bind` gave a traceback
        # ("encoding of hostname failed"); 'é' alone got its one line from bind already.
        for host in ("\u202e", "é" * 70, "a." + "b" * 64):
            with self.subTest(host=host[:10]), contextlib.redirect_stderr(io.StringIO()) as err:
                with self.assertRaises(SystemExit) as caught:
                    self.parse(["--host", host])
                self.assertEqual(caught.exception.code, 2)
                self.assertIn("argument --host: is not an address or a host name: ",
                              err.getvalue())
        self.assertEqual(self.parse(["--host", "é"]).host, "é")

    def test_environment(self):
        environ = {"PIXEL_HOST": "::", "PIXEL_PORT": "9", "PIXEL_LOG": "a.jsonl",
                   "PIXEL_REJECTS": "b.jsonl", "PIXEL_MAX_BYTES": "1K", "PIXEL_KEEP": "2",
                   "PIXEL_WRITE_KEYS": "x, y", "PIXEL_TRUSTED_PROXIES": "127.0.0.1",
                   "PIXEL_NO_IP": "1", "PIXEL_MAX_CONNECTIONS": "7",
                   "PIXEL_REQUEST_TIMEOUT": "3", "PIXEL_IDLE_TIMEOUT": "4"}
        args = self.parse([], environ)
        self.assertEqual((args.host, args.port, args.log, args.rejects, args.max_bytes,
                          args.keep, args.write_key, args.trusted_proxy, args.no_ip,
                          args.max_connections, args.request_timeout, args.idle_timeout),
                         ("::", 9, "a.jsonl", "b.jsonl", 1024, 2, ["x", "y"], ["127.0.0.1"],
                          True, 7, 3.0, 4.0))
        self.assertEqual(self.parse(["--write-key", "z", "--port", "1"], environ).write_key,
                         ["z"], "a flag replaces its variable")
        # Another program's variables are not pixel's to refuse (the attack pass on the first
        # check: PIXEL_LOGIN exited 2, "did you mean PIXEL_LOG?").
        for other in ("PIXEL_LOGIN", "PIXEL_FORWARD_KEY", "PIXEL_SOAK", "PIXEL_LOGS"):
            self.assertEqual(self.parse([], {other: "x"}).port, 8000, other)

    def test_bad_flags_and_variables_exit_with_usage(self):
        for argv, environ, message in [
                (["--port", "http"], {}, "--port: invalid _port value"),
                (["--port", "70000"], {}, "between 0 and 65535"),
                (["--max-bytes", "lots"], {}, "not a size"),
                (["--keep", "-1"], {}, "0 or more"),
                (["--trusted-proxy", "example.com"], {}, "not an IP address"),
                (["--max-connections", "0"], {}, "greater than 0"),
                (["--log", "same", "--rejects", "same"], {}, "different files"),
                (["--bogus"], {}, "unrecognized arguments"),
                (["--cpu", "fast"], {}, "not auto, none or a CPU number"),
                # PIXEL_WRITE_KEYS's comma given to the flag was one key no event had.
                (["--write-key", "K1,K2"], {}, "one key each, no comma"),
                ([], {"PIXEL_PORT": "x"}, "PIXEL_PORT='x'"),
                ([], {"PIXEL_NO_IP": "maybe"}, "PIXEL_NO_IP"),
                # Empty variables must not mean wider access than unset ones.
                ([], {"PIXEL_WRITE_KEYS": ""}, "PIXEL_WRITE_KEYS is set but empty"),
                ([], {"PIXEL_WRITE_KEYS": " , "}, "PIXEL_WRITE_KEYS"),
                ([], {"PIXEL_HOST": ""}, "PIXEL_HOST is set but empty"),
                ([], {"PIXEL_TRUSTED_PROXIES": ""}, "PIXEL_TRUSTED_PROXIES is set but empty"),
                ([], {"PIXEL_LOG": " "}, "PIXEL_LOG is set but empty"),
                # ... nor a misspelt one, named as its flag is (the newcomer).
                ([], {"PIXEL_WRITE_KEY": "K"}, "did you mean PIXEL_WRITE_KEYS?"),
                ([], {"PIXEL_TRUSTED_PROXY": "10.0.0.1"}, "did you mean PIXEL_TRUSTED_PROXIES"),
                ([], {"PIXEL_ALLOW_ORIGIN": "https://a"}, "did you mean PIXEL_ALLOW_ORIGINS"),
                (["--log", "/tmp", "--rejects", "/tmp/../tmp"], {}, "different files"),
                (["--forward", "ftp://host"], {}, "not an http(s) URL"),
                (["--forward", "http://127.0.0.1:9/a b"], {}, "not an http(s) URL"),
                (["--forward", "http://exa mple.com"], {}, "not an http(s) URL"),
                (["--forward", "https://user:pw@host"], {}, "not an http(s) URL"),
                (["--forward", "https://host/?q=1"], {}, "not an http(s) URL"),
                (["--forward", "https://host:99999"], {}, "not an http(s) URL"),
                (["--forward", "https://host", "--forward-batch", "0"], {}, "between 1"),
                (["--forward", "https://host", "--forward-ca", "/etc/hostname"], {},
                 "not a readable PEM file"),
                (["--forward-write-key", "K"], {}, "--forward-write-key needs --forward"),
                (["--forward", "https://host", "--forward-timeout", "nan"], {}, "between"),
                (["--metrics-token", "a b"], {}, "not a bearer token"),
                ([], {"PIXEL_FORWARD": ""}, "PIXEL_FORWARD is set but empty"),
                ([], {"PIXEL_ANONYMIZE_IP": "perhaps"}, "PIXEL_ANONYMIZE_IP"),
                ([], {"PIXEL_REUSE_PORT": "2"}, "PIXEL_REUSE_PORT")] + [
                (["--forward", "http://host", "--forward-ca", CA_BUNDLE], {},
                 "--forward-ca needs an https:// --forward URL")] * bool(CA_BUNDLE):
            with self.subTest(argv=argv, environ=environ):
                status, stderr = usage_error(self, argv, environ)
                self.assertEqual(status, 2)
                self.assertIn("usage: pixel.py", stderr)
                self.assertIn(message, stderr)

    def test_a_forward_url_given_with_its_endpoint_is_its_base(self):
        for given, base in (("https://host/v1/batch", "https://host"),
                            ("https://host/v1/batch/", "https://host"),
                            ("https://host:8443/v1", "https://host:8443"),
                            ("http://host/rudder/v1/batch", "http://host/rudder"),
                            ("https://host/v1batch", "https://host/v1batch"),
                            ("https://host", "https://host")):
            with self.subTest(given):
                self.assertEqual(pixel.parse_args(["--forward", given], {}).forward, base)
                self.assertEqual(pixel.build_forward_parser().parse_args(
                    ["--to", given, "file"]).to, base)
                self.assertEqual(pixel.Receiver(base).endpoint, base + "/v1/batch")

    def test_version(self):
        stdout = io.StringIO()
        with self.assertRaises(SystemExit) as caught, unittest.mock.patch("sys.stdout", stdout):
            pixel.main(["--version"])
        self.assertEqual((caught.exception.code, stdout.getvalue()),
                         (0, "pixel %s\n" % pixel.__version__))

    def test_help_and_the_docstring_name_every_command(self):
        with open(PIXEL_PY, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        main = next(node for node in tree.body if getattr(node, "name", None) == "main")
        (table,) = [node.value for node in ast.walk(main) if isinstance(node, ast.Assign) and
                    getattr(node.targets[0], "id", None) == "commands"]
        commands = [key.value for key in table.keys]
        self.assertEqual(sorted(commands), ["erase", "forward", "report"])
        epilog = " ".join(pixel.build_parser({}).epilog.split())
        for command in commands:
            with self.subTest(command):
                self.assertIn("python3 pixel.py %s " % command, pixel.__doc__)
                self.assertRegex(epilog, r"`(pixel\.py )?%s`" % command)

    def test_help_shows_every_variable(self):
        stdout = io.StringIO()
        with self.assertRaises(SystemExit), unittest.mock.patch("sys.stdout", stdout):
            pixel.main(["--help"])
        for variable in ("PIXEL_HOST", "PIXEL_PORT", "PIXEL_LOG", "PIXEL_REJECTS",
                         "PIXEL_MAX_BYTES", "PIXEL_KEEP", "PIXEL_WRITE_KEYS",
                         "PIXEL_TRUSTED_PROXIES", "PIXEL_NO_IP", "PIXEL_MAX_CONNECTIONS",
                         "PIXEL_REQUEST_TIMEOUT", "PIXEL_IDLE_TIMEOUT", "PIXEL_CPU"):
            self.assertIn(variable, stdout.getvalue())
        # ... and every flag the parser has names its variable.
        flags = [action for action in pixel.build_parser({})._actions
                 if action.option_strings[0] not in ("-h", "--version")]
        self.assertEqual(len(re.findall(r"\[PIXEL_[A-Z_]+", stdout.getvalue())), len(flags))
        # The newcomer pass: "(default: none)" for an --allow-origin unset, where any origin
        # may send, and for a --trusted-proxy unset, where none is believed. Unset is said
        # in words, and a range where there is one.
        text = " ".join(stdout.getvalue().split())
        self.assertNotRegex(text, r"\(default: [Nn]one\)")
        for said in ("Unset, any origin may send [PIXEL_ALLOW_ORIGINS]",
                     "Unset, none is believed [PIXEL_TRUSTED_PROXIES]",
                     "batch, 1 to 10000; a batch"):
            self.assertIn(said, text)


FORWARD_ITEM_CASES = [
    # name, log line, (writeKey, the event the receiver gets)
    ("key in the middle", b'{"type":"track","writeKey":"K","event":"e"}',
     ("K", {"type": "track", "event": "e"})),
    ("key first", b'{"writeKey":"K","type":"track"}', ("K", {"type": "track"})),
    ("key last", b'{"type":"track","writeKey":"K"}', ("K", {"type": "track"})),
    ("key alone", b'{"writeKey":"K"}', ("K", {})),
    ("a nested writeKey too", b'{"writeKey":"K","properties":{"writeKey":"P"}}',
     ("K", {"properties": {"writeKey": "P"}})),
    ("only a nested one", b'{"type":"t","properties":{"writeKey":"P"}}',
     (None, {"type": "t", "properties": {"writeKey": "P"}})),
    ("an escaped key", b'{"writeKey":"a\\"b","x":1}', ('a"b', {"x": 1})),
    ("a non-ASCII key", b'{"writeKey":"\\u00e9","x":1}', ("\u00e9", {"x": 1})),
    ("the text in a value", b'{"writeKey":"K","p":"\\"writeKey\\":\\"X\\""}',
     ("K", {"p": '"writeKey":"X"'})),
    ("a key that is not a string", b'{"writeKey":5,"x":1}', (None, {"x": 1})),
    ("spaced JSON", b'{"writeKey": "K", "x": 1}', ("K", {"x": 1})),
    ("not JSON", b'{"writeKey":"K"', "forward_unreadable"),
    ("garbage", b"\xff\xfe", "forward_unreadable"),
    ("an array", b'[{"writeKey":"K"}]', "forward_unreadable"),
    ("a number out of range", b'{"x":1e400}', "forward_unreadable"),
]


class ForwardItems(unittest.TestCase):
    """A log line becomes a batch item: its writeKey cut out (it travels as Basic auth),
    by a fast path for pixel's own lines and json for anything else."""

    def test_cases(self):
        for name, line, expected in FORWARD_ITEM_CASES:
            with self.subTest(name):
                if isinstance(expected, str):
                    with self.assertRaises(pixel.Rejected) as caught:
                        pixel.forward_item(line, strip=True)
                    self.assertEqual(caught.exception.reason, expected)
                    continue
                key, item = pixel.forward_item(line, strip=True)
                self.assertEqual((key, json.loads(item)), expected)
                kept_key, kept = pixel.forward_item(line)
                self.assertEqual(kept_key, key)
                self.assertEqual(kept, line)   # as logged: the receiver reads its writeKey

    def test_a_rejects_line_that_is_not_one_holds_no_event(self):
        for name, line, expected in [
                ("not JSON", b'{"reason": "forward_rejected", "event": {', None),
                ("not an object", b'["reason"]', None),
                ("an event that has a reason", b'{"type":"track","reason":"x"}', None),
                ("a reason not sent again", b'{"reason":"no_write_key","event":{"a":1}}', b""),
                ("a number out of range", b'{"reason":"forward_rejected","event":{"n":1e400}}',
                 b""),
                ("sent again", b'{"reason":"forward_rejected","event":{"n":1}}', b'{"n":1}')]:
            with self.subTest(name):
                self.assertEqual(pixel.rejected_event(line), expected)

    def test_an_item_that_cannot_be_unescaped_is_sent_as_logged(self):
        for item in (b'{"a":"\\ud800"}', b'{"n":1e400}', b"not json"):
            with self.subTest(item):
                self.assertEqual(pixel._unescaped(item), item)
        self.assertEqual(pixel._unescaped(b'{"a":"\\u00e9"}'), '{"a":"\u00e9"}'.encode())

    def test_every_line_pixel_writes_round_trips(self):
        for case, payload in enumerate([DOCS_PAYLOAD, {"writeKey": "k", "userId": 7,
                                                       "event": "\u00e9\U0001f600",
                                                       "properties": {"writeKey": "x"}},
                                        {"userId": "u", "event": "e", "writeKey": "k2"}]):
            with self.subTest(case):
                event = pixel.build_event("track", payload, received_at=T0, ip="192.0.2.1")
                key, item = pixel.forward_item(pixel.encode_line(event)[:-1], strip=True)
                expected = dict(event)
                self.assertEqual(key, expected.pop("writeKey"))
                self.assertEqual(json.loads(item), expected)

    def test_what_pixel_py_forward_takes_for_an_event_log(self):
        event = log_event(1)
        reject = b'{"reason":"forward_unauthorized","detail":"401","event":{"type":"track"}}\n'
        checkpoint = b'{"device": 2049, "done": [], "head": "0", "head_bytes": 0, ' \
                     b'"inode": 7, "mtime_ns": 1, "offset": 0, "path": "x"}\n'
        cases = [
            # name, first bytes, all of the file?, why it is refused (None: taken)
            ("an event log", event * 3, True, None),
            ("an empty file", b"", True, None),
            ("blank lines", b"\n \n" * 1000, True, "blank lines only"),
            ("a rejects log", reject, True, None),
            ("a torn first line, then events", b'{"type":"tr\n' + event, True, None),
            ("an event after garbage", b"x\n" * 7 + event, True, None),
            ("an event only after 8 lines", b"x\n" * 8 + event, True,
             "its first lines are not JSON"),
            ("a checkpoint", checkpoint, True, "it is a pixel checkpoint"),
            ("a checkpoint with no newline", checkpoint[:-1], True,
             "it is a pixel checkpoint"),
            ("JSON of another kind", b'{"name":"x"}\n[1,2]\n', True,
             'JSON, but none of its first lines is an event, an object with a "type"'),
            ("an object whose type is not a string", b'{"type":5}\n', True,
             'JSON, but none of its first lines is an event, an object with a "type"'),
            ("binary", b"\x00\x01\x02\n\xff\xfe", True, "binary data, not lines of JSON"),
            ("zstd", b"\x28\xb5\x2f\xfd\x00\x58\x61\x00", True,
             "binary data, not lines of JSON"),
            ("text", b"hello\nworld\n", True, "its first lines are not JSON"),
            ("the start of a long first line", b"x" * 100, False, "no newline in its first "
                                                                     "100 bytes"),
            ("an event cut by the read", event + event[:20], False, None),
        ]
        for name, first, whole, expected in cases:
            with self.subTest(name):
                self.assertEqual(pixel.not_an_event_log(first, whole), expected)

    def test_logged_client_ids(self):
        cases = [(b'{"writeKey":"K","messageId":"m1","x":1}', ("K", "m1")),
                 (b'{"properties":{"messageId":"p","writeKey":"P"},"messageId":"m2",'
                  b'"writeKey":"K"}', ("K", "m2")),
                 (b'{"writeKey":"K\\u00e9","messageId":"a\\"b"}', ("K\u00e9", 'a"b')),
                 (b'{"messageId":"m1","x":1}', None), (b'{"writeKey":"K"}', None),
                 (b"not json", None), (b"[1]", None), (b'{"writeKey":"K","messageId":5}', None),
                 (b'{"writeKey":"K","properties":{"messageId":"p"}}', None),
                 (b'{"writeKey":"%s","messageId":"m"}' % (b"k" * 129), ("k" * 129, "m"))]
        for line, expected in cases:
            with self.subTest(line):
                self.assertEqual(pixel.logged_client_id(line),
                                 expected and pixel.dedupe_key(*expected))


class ForwardPolicy(unittest.TestCase):
    def test_backoff_doubles_to_its_cap_with_jitter(self):
        for failures, low, high in ((1, 1, 1.5), (2, 2, 3), (3, 4, 6), (6, 32, 48),
                                    (7, 60, 60), (500, 60, 60)):
            for _ in range(50):
                self.assertTrue(low <= pixel.backoff_delay(failures) <= high, failures)

    def test_the_forward_write_key_is_named_in_a_receivers_words(self):
        # A one-letter --forward-write-key was named inside every word of an error text.
        for secret, answer, expected in (
                ("a", "no source for writeKey a, and a path", "no source for writeKey "
                 "(--forward-write-key), and (--forward-write-key) path"),
                ("a", "bad auth: 'a' at /v1/batch", "bad auth: '(--forward-write-key)' at "
                 "/v1/batch"),
                ("k-1", "key k-1x or k-1", "key k-1x or (--forward-write-key)"),
                ("K" * 32, "key=%s;x%sx" % ("K" * 32, "K" * 32),
                 "key=(--forward-write-key);x(--forward-write-key)x"),
                # The attack pass: quoted as it was sent (Basic auth), or in JSON, it was
                # shown to anyone by /health.
                ("S3cretForwardKey", "bad Authorization: Basic UzNjcmV0Rm9yd2FyZEtleTo=",
                 "bad Authorization: Basic (--forward-write-key)"),
                ("S3cretForwardKey", "credential UzNjcmV0Rm9yd2FyZEtleTo refused",
                 "credential (--forward-write-key) refused"),
                ("cl\u00e9-secr\u00e8te", json.dumps({"writeKey": "cl\u00e9-secr\u00e8te"}),
                 '{"writeKey": "(--forward-write-key)"}'),
                ('k\\ey"12345', json.dumps({"writeKey": 'k\\ey"12345'}),
                 '{"writeKey": "(--forward-write-key)"}')):
            with self.subTest(secret=secret, answer=answer):
                self.assertEqual(pixel.named_secret(answer, secret), expected)

    def test_retry_after(self):
        now = 1795000000.0
        for value, expected in (("3", 3.0), (" 0 ", 0.0), ("86400", pixel.MAX_RETRY_AFTER),
                                ("Wed, 18 Nov 2026 11:06:50 GMT", 10.0),
                                ("Wed, 18 Nov 2026 11:06:30 GMT", 0.0),
                                ("-1", None), ("soon", None), ("", None), (None, None),
                                ("\u0663", None), ("Wed, 18 Nov 2026 11:06:50", None)):
            with self.subTest(value):
                self.assertEqual(pixel.retry_after(value, now), expected)

    def test_a_checkpoint_is_replaced_whole_and_garbage_is_refused(self):
        folder = temp_dir(self)
        path = os.path.join(folder, "events.jsonl.forward")
        self.assertIsNone(pixel.read_checkpoint(path))
        document = {"device": 1, "inode": 2, "offset": 3, "mtime_ns": 4, "head_bytes": 3,
                    "head": "0", "path": "x"}
        pixel.write_checkpoint(path, document)
        self.assertEqual(pixel.read_checkpoint(path), document)
        self.assertEqual(os.listdir(folder), ["events.jsonl.forward"])
        for garbage in (b"", b"{", b"[]", b'{"device": "1"}', b'{"device": true}'):
            with open(path, "wb") as handle:
                handle.write(garbage)
            with self.assertRaises(ValueError):
                pixel.read_checkpoint(path)

    def test_a_checkpoint_that_cannot_be_put_in_place_leaves_no_tmp(self):
        folder = temp_dir(self)
        path = os.path.join(folder, "events.jsonl.forward")
        os.mkdir(path)   # what a rename cannot replace
        with self.assertRaises(OSError):
            pixel.write_checkpoint(path, {"device": 1})
        self.assertEqual(os.listdir(folder), ["events.jsonl.forward"])

    def test_a_backfill_of_thousands_of_files_can_read_its_checkpoint_back(self):
        path = os.path.join(temp_dir(self), "backfill.json")
        done = ["2049:%d:104857600:%08x" % (inode, inode) for inode in range(20000)]
        document = {"device": 1, "inode": 2, "offset": 3, "mtime_ns": 4, "head_bytes": 3,
                    "head": "0", "path": "x", "done": done}
        pixel.write_checkpoint(path, document)
        self.assertGreater(os.path.getsize(path), 64 * 1024)
        self.assertEqual(pixel.read_checkpoint(path)["done"], done)


# ---------------------------------------------------------------------------------------------
# Layer 2: the Recorder and the LogWriter on real files, with no socket


def request(method="GET", path="/v1/pixel/track", query="", headers=None, peer="192.0.2.1",
            body=b""):
    return pixel.Request(method, path, query, headers or {}, peer, body)


def make_pixel(test, folder, *, reporter=None, clock=time.time, **options):
    """A pixel.Pixel on `folder`'s events.jsonl and rejects.jsonl, made by the one wiring
    the command line and WSGI use too (options named as the flags are), closed when `test`
    ends."""
    options.setdefault("log", os.path.join(folder, "events.jsonl"))
    made = pixel.Pixel(pixel.configure(**options), clock=clock,
                       reporter=reporter or pixel.Reporter(io.StringIO()))
    test.addCleanup(made.close)
    return made


def app_over(events, rejects, clock=time.time, **recorder_options):
    """An App over a Recorder on writers the test made (on /dev/full, say): the parts the
    wiring would put together, for the tests of those parts."""
    metrics = pixel.Metrics(clock)
    recorder = pixel.Recorder(events, rejects, metrics=metrics, clock=clock, **recorder_options)
    return pixel.App(recorder, metrics)


class RecorderCase(unittest.TestCase):
    recorder_options = {}

    def setUp(self):
        self.dir = temp_dir(self)
        self.stderr = io.StringIO()
        options = dict({"clock": lambda: T0}, **self.recorder_options)
        self.pixel = make_pixel(self, self.dir, reporter=pixel.Reporter(self.stderr), **options)
        self.recorder, self.app = self.pixel.recorder, self.pixel.app

    def answer(self, **fields):
        return self.app.answer(pixel.ROUTES.get(fields.get("path", "/v1/pixel/track")),
                               request(**fields))

    def lines(self, name="events.jsonl"):
        path = os.path.join(self.dir, name)
        with open(path, "rb") as handle:
            return [json.loads(line) for line in handle]


class ProxyHintOnce(RecorderCase):
    def test_requests_coming_together_say_it_once(self):
        # The first requests through a proxy came on several threads at once, and each
        # said it (7 lines of 16 requests, measured): a check, then a say, then a set.
        class SlowStream(io.StringIO):
            def write(self, text):
                time.sleep(0.05)
                return super().write(text)

        stream = SlowStream()
        self.recorder.reporter = pixel.Reporter(stream)
        proxied = request(peer="10.0.0.1", headers={"x-forwarded-for": "203.0.113.7"})
        threads = [threading.Thread(target=self.recorder.true_client_ip, args=(proxied,))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(stream.getvalue().count("carry X-Forwarded-For"), 1)


class RecorderWithoutSockets(RecorderCase):
    def test_a_pixel_is_on_disk_when_answer_returns(self):
        answer = self.answer(query="writeKey=k&userId=u&event=Opened",
                             headers={"user-agent": "Mail/1"})
        self.assertIs(answer, pixel.GIF_ANSWER)
        (event,) = self.lines()
        self.assertEqual((event["event"], event["receivedAt"], event["context"]),
                         ("Opened", "2026-11-18T11:06:40.250Z",
                          {"ip": "192.0.2.1", "userAgent": "Mail/1"}))

    def test_head_and_bad_pixels(self):
        self.assertIs(self.answer(method="HEAD", query="writeKey=k&userId=u&event=e"),
                      pixel.GIF_ANSWER)
        self.assertIs(self.answer(query="writeKey=k&userId=u"), pixel.GIF_ANSWER)
        self.assertEqual(self.lines(), [])
        (record,) = self.lines("rejects.jsonl")
        self.assertEqual((record["reason"], record["query"], record["ip"]),
                         ("event_not_defined", "writeKey=k&userId=u", "192.0.2.1"))

    def test_routes_the_table_does_not_have_and_methods_it_does_not_allow(self):
        self.assertEqual(self.answer(path="/v1/pixel/bogus").status, 404)
        answer = self.answer(method="POST")
        self.assertEqual((answer.status, dict(answer.headers)["Allow"]), (405, "GET, HEAD"))
        answer = self.answer(path="/v1/batch")
        self.assertEqual((answer.status, dict(answer.headers)["Allow"]), (405, "POST, OPTIONS"))

    def test_api_answers_and_quotes_the_item_at_fault(self):
        body = json.dumps({"writeKey": "k", "padding": "p" * 500, "batch": [
            0, {"type": "nope", "userId": "u"}, {"type": "track", "userId": "u"},
            {"type": "track", "userId": "u", "event": "ok"}]}).encode()
        answer = self.answer(method="POST", path="/v1/batch", body=body)
        self.assertEqual((answer.status, json.loads(answer.body)), (200, {"success": True}))
        self.assertEqual([event["event"] for event in self.lines()], ["ok"])
        records = self.lines("rejects.jsonl")
        self.assertEqual([record["reason"] for record in records],
                         ["payload_not_object", "invalid_type", "event_not_defined"])
        self.assertEqual(records[0]["body"], "0")
        self.assertEqual(json.loads(records[1]["body"])["type"], "nope")
        self.assertNotIn("padding", records[2]["body"])
        answer = self.answer(method="POST", path="/v1/track", body=b"[1]")
        self.assertEqual((answer.status, json.loads(answer.body)["error"]),
                         (400, "payload_not_object"))

    def test_refuse_gives_a_pixel_its_gif_and_anything_else_the_status(self):
        answer = self.app.refuse(pixel.ROUTES["/v1/pixel/page"],
                                 request(path="/v1/pixel/page", query="q"),
                                 "uri_too_long", 414)
        self.assertIs(answer, pixel.GIF_ANSWER)
        self.assertEqual(self.lines("rejects.jsonl")[0]["reason"], "uri_too_long")
        for route, path in ((None, "/v1/pixel/bogus"), (pixel.ROUTES["/health"], "/health")):
            answer = self.app.refuse(route, request(path=path), "uri_too_long", 414)
            self.assertEqual(answer.status, 414)
        self.assertEqual(len(self.lines("rejects.jsonl")), 1)

    def test_health_counts_and_gauges(self):
        self.pixel.metrics.health("connections", lambda: 7)
        self.answer(query="writeKey=k&userId=u&event=e")
        self.answer(query="writeKey=k")
        answer = self.answer(path="/health")
        self.assertEqual(answer.headers[0], ("Content-Type", "application/json"))
        health = json.loads(answer.body)
        self.assertEqual({key: health[key] for key in ("status", "accepted", "rejected",
                                                       "write_errors", "connections")},
                         {"status": "ok", "accepted": 1, "rejected": 1, "write_errors": 0,
                          "connections": 7})


class Dedupe(RecorderCase):
    recorder_options = {"dedupe_window": 3}

    def test_a_repeated_client_message_id_is_written_once(self):
        for _ in range(3):
            self.assertIs(self.answer(query="writeKey=k&userId=u&event=e&messageId=m1"),
                          pixel.GIF_ANSWER)
        self.answer(query="writeKey=k&userId=u&event=no-id")
        self.answer(query="writeKey=k&userId=u&event=no-id")   # pixel's own ids never repeat
        self.assertEqual([event["event"] for event in self.lines()], ["e", "no-id", "no-id"])
        self.assertEqual(self.recorder.deduped, 2)

    def test_the_window_forgets_the_oldest(self):
        for message_id in ("a", "b", "c", "d", "a"):   # window 3: "a" is forgotten by then
            self.answer(query="writeKey=k&userId=u&event=e&messageId=" + message_id)
        self.assertEqual([event["messageId"] for event in self.lines()],
                         ["a", "b", "c", "d", "a"])

    def test_within_a_batch_and_across_the_api(self):
        body = json.dumps({"writeKey": "k", "batch": [
            {"type": "track", "userId": "u", "event": "e", "messageId": "x"},
            {"type": "track", "userId": "u", "event": "e", "messageId": "x"},
            {"type": "track", "userId": "u", "event": "e", "messageId": 7}]}).encode()
        for _ in range(2):
            answer = self.answer(method="POST", path="/v1/batch", body=body)
            self.assertEqual(answer.status, 200)
        self.assertEqual([event["messageId"] for event in self.lines()], ["x", "7"])
        self.assertEqual(self.recorder.deduped, 4)

    def test_copies_arriving_at_once_are_one_write(self):
        def send():
            self.answer(method="POST", path="/v1/track", body=json.dumps(
                {"writeKey": "k", "userId": "u", "event": "e", "messageId": "same"}).encode())
        threads = [threading.Thread(target=send) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(len(self.lines()), 1)
        self.assertEqual(self.recorder.deduped, 19)

    def test_a_batch_of_distinct_ids_holds_the_lock_briefly(self):
        # Checking each id against the batch's own ids was a list scan: 50 million
        # comparisons, half a second with the lock held, for 10,000 items.
        # Timed against a tenth of the batch, the best of three each, so that a loaded machine
        # (CI's 0.29 s against an absolute 0.2) moves both: linear is 10 times, that was 100.
        def best(count):
            lines = [b'{"n":%d}\n' % number for number in range(count)]
            times = []
            for _ in range(3):
                recorder = app_over(self.recorder.events, self.recorder.rejects).recorder
                ids = ["ajs-next-%d-%d" % (len(times), number) for number in range(count)]
                started = time.perf_counter()
                self.assertTrue(recorder.write_events(lines, ids, ["track"] * count))
                times.append(time.perf_counter() - started)
            return min(times)

        self.assertLess(best(10000), 30 * best(1000))
        ids = ["ajs-next-%d" % number for number in range(10000)]
        window = pixel.DedupeWindow(1000)
        for client_id in ids:
            window.add(client_id)
        self.assertEqual((len(window), "ajs-next-8999" in window, "ajs-next-9000" in window),
                         (1000, False, True))

    def test_the_window_is_per_write_key(self):
        # Segment de-duplicates per source: one key's messageId must not suppress another's.
        for key in ("k1", "k2", "k1", "k2"):
            self.answer(query="writeKey=%s&userId=u&event=e&messageId=same" % key)
        body = json.dumps({"batch": [
            {"type": "track", "writeKey": "k3", "userId": "u", "event": "e", "messageId": "same"},
            {"type": "track", "writeKey": "k3", "userId": "u", "event": "e", "messageId": "same"},
            {"type": "track", "writeKey": "k1", "userId": "u", "event": "e",
             "messageId": "same"}]}).encode()
        self.answer(method="POST", path="/v1/batch", body=body)
        # A key and an id that run together the same way are still two pairs.
        for key, message_id in (("ab", "c"), ("a", "bc"), ("a:1", "x"), ("a", "1:x")):
            self.answer(query="writeKey=%s&userId=u&event=e&messageId=%s" % (key, message_id))
        self.assertEqual([(event["writeKey"], event["messageId"]) for event in self.lines()],
                         [("k1", "same"), ("k2", "same"), ("k3", "same"), ("ab", "c"),
                          ("a", "bc"), ("a:1", "x"), ("a", "1:x")])
        self.assertEqual(self.recorder.deduped, 4)

    def test_long_ids_are_remembered(self):
        # The attack pass: an id over 128 bytes was not remembered, so an SDK's retry of it
        # was written twice. The window keeps a digest, whatever the id's length.
        for message_id, write_key in (("\U0001f600" * 40, "k"), ("x" * 5000, "k"),
                                      ("x", "k" * 129)):
            body = json.dumps({"writeKey": write_key, "userId": "u", "event": "e",
                               "messageId": message_id}).encode()
            for _ in range(2):
                self.answer(method="POST", path="/v1/track", body=body)
        self.assertEqual(len(self.recorder.recent), 3)
        self.assertEqual(self.recorder.deduped, 3)

    def test_an_id_that_was_not_written_is_not_remembered(self):
        events = pixel.LogWriter("/dev/full", reporter=pixel.Reporter(io.StringIO()))
        self.addCleanup(events.close)
        app = app_over(events, self.recorder.rejects, dedupe_window=3)
        body = json.dumps({"writeKey": "k", "userId": "u", "event": "e",
                           "messageId": "retry-me"}).encode()
        answer = app.answer(pixel.ROUTES["/v1/track"],
                            request(method="POST", path="/v1/track", body=body))
        self.assertEqual(answer.status, 503)
        self.assertNotIn(pixel.dedupe_key("k", "retry-me"), app.recorder.recent)


class MetricsDocument(RecorderCase):
    recorder_options = {"metrics_token": "s3cret-token"}

    def scrape(self, authorization="Bearer s3cret-token"):
        headers = {"authorization": authorization} if authorization else {}
        return self.answer(path="/metrics", headers=headers)

    def test_counts_by_type_and_reason_and_the_token(self):
        self.answer(query="writeKey=k&userId=u&event=e")
        self.answer(path="/v1/pixel/page", query="writeKey=k&userId=u")
        self.answer(query="writeKey=k&userId=u")
        self.answer(path="/v1/batch", method="POST", body=json.dumps({"batch": [
            {"type": "track", "writeKey": "k", "userId": "u", "event": "e"},
            {"type": "track", "writeKey": "k", "userId": "u"},
            {"type": "bogus", "writeKey": "k", "userId": "u"}]}).encode())
        for authorization in (None, "Bearer wrong", "Basic s3cret-token", "Bearer"):
            with self.subTest(authorization):
                answer = self.scrape(authorization)
                self.assertEqual(answer.status, 401)
                self.assertIn(("WWW-Authenticate", 'Bearer realm="pixel"'), answer.headers)
        answer = self.scrape("bearer  s3cret-token ")
        self.assertEqual(answer.status, 200)
        self.assertIn(("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                      answer.headers)
        text = answer.body.decode()
        for sample in ('pixel_events_total{type="page"} 1',
                       'pixel_events_total{type="track"} 2',
                       'pixel_rejections_total{reason="event_not_defined"} 2',
                       'pixel_rejections_total{reason="invalid_type"} 1',
                       'pixel_written_lines_total{log="events"} 3',
                       'pixel_written_lines_total{log="rejects"} 3',
                       'pixel_write_errors_total{log="events"} 0',
                       'pixel_build_info{version="%s",python="%s"} 1'
                       % (pixel.__version__, sys.version.split()[0])):
            self.assertIn(sample + "\n", text)
        self.assertNotIn("pixel_forward_", text)
        self.assertEqual(len(re.findall(r"^# TYPE ", text, re.M)),
                         len(re.findall(r"^# HELP ", text, re.M)))

    def test_bad_tokens_are_refused_at_start(self):
        for token in ("", "has space", "tok\u00e9n", "a=b"):
            with self.subTest(token):
                with self.assertRaises(SystemExit):
                    with unittest.mock.patch("sys.stderr", io.StringIO()):
                        pixel.parse_args(["--metrics-token", token], {})


class DedupeAndMachineOpens(RecorderCase):
    """A fetch labelled machine and the person's are told apart: a scanner's or Apple's fetch
    of an email's pixel comes before the person's open of the same URL (the README's unique
    opens), which an attack pass found dropped as its retry. Each is deduped among its own."""
    recorder_options = {"dedupe_window": 10}
    QUERY = "writeKey=k&userId=u&event=Email%20Opened&messageId=send-42"

    def test_the_persons_open_after_a_scanners_is_written_once(self):
        for agent in ("Barracuda Sentinel (EE)", "Barracuda Sentinel (EE)", CHROME, CHROME):
            self.answer(query=self.QUERY, headers={"user-agent": agent})
        self.assertEqual([event["context"].get("machine") for event in self.lines()],
                         ["scanner", None])
        self.assertEqual(self.recorder.deduped, 2)
        # After a restart, the window refilled from the log agrees.
        restarted = app_over(self.recorder.events, self.recorder.rejects, dedupe_window=10,
                             clock=lambda: T0)
        self.assertEqual(restarted.recorder.remember_logged(), 2)
        for agent in ("Barracuda Sentinel (EE)", CHROME):
            restarted.answer(pixel.ROUTES["/v1/pixel/track"], request(
                query=self.QUERY, headers={"user-agent": agent}))
        self.assertEqual(restarted.recorder.deduped, 2)
        self.assertEqual(len(self.lines()), 2)

    def test_a_forwarding_pixels_labelled_events_sent_again_are_written_once(self):
        # The attack pass on the first fix: labelled events a pixel forwards to another
        # pixel's /v1/batch, sent again after a crash, were written twice there.
        body = json.dumps({"writeKey": "k", "batch": [
            {"type": "track", "userId": "u", "event": "e", "messageId": "m1",
             "context": {"machine": "scanner"}},
            {"type": "track", "userId": "u", "event": "e", "messageId": "m1"}]}).encode()
        for _ in range(2):
            self.assertEqual(self.answer(method="POST", path="/v1/batch", body=body).status, 200)
        self.assertEqual(len(self.lines()), 2)
        self.assertEqual(self.recorder.deduped, 2)

    def test_the_log_is_read_as_the_recorder_decides(self):
        for machine, labelled in ((None, False), ("scanner", True), ("", False), (1, True)):
            event = {"type": "track", "writeKey": "k", "userId": "u", "messageId": "m",
                     "properties": {"machine": "x"}, "context": {"machine": machine}}
            line = json.dumps(event, separators=(",", ":")).encode()
            self.assertEqual(pixel.logged_client_id(line), pixel.dedupe_key("k", "m", labelled))
        self.assertNotEqual(pixel.dedupe_key("k", "m", True), pixel.dedupe_key("k", "m"))


class DedupeAfterRestart(RecorderCase):
    """A new Recorder over an old log refills its dedupe window from the log's end."""

    def test_the_window_is_filled_from_the_log_tail(self):
        self.recorder.events.write([log_event(number) for number in range(100)])
        self.recorder.rejects.write([b"{}\n"])
        restarted = app_over(self.recorder.events, self.recorder.rejects,
                             dedupe_window=10, clock=lambda: T0)
        self.assertEqual(restarted.recorder.remember_logged(), 10)
        window = restarted.recorder.recent
        self.assertEqual(len(window), 10)
        self.assertEqual([pixel.dedupe_key("K", "m%d" % number) in window
                          for number in range(88, 100)], [False] * 2 + [True] * 10)
        body = json.dumps({"batch": [{"type": "track", "writeKey": "K", "userId": "u",
                                      "event": "e", "messageId": "m%d" % number}
                                     for number in (89, 99)]}).encode()
        answer = restarted.answer(pixel.ROUTES["/v1/batch"], request(
            "POST", "/v1/batch", body=body, headers={"content-type": "application/json"}))
        self.assertEqual(answer.status, 200)
        self.assertEqual(restarted.recorder.deduped, 1)
        self.assertEqual(self.lines()[-1]["messageId"], "m89")

    def test_a_folder_it_may_write_in_but_not_list_fills_it_from_the_live_file(self):
        # An attack pass: a start in a folder of mode 0333 ended in a PermissionError's
        # traceback, raised by the listing of rotated files for this window.
        self.recorder.events.write([log_event(number) for number in range(5)])
        folder = os.path.dirname(self.recorder.events.path)
        listdir = os.listdir

        def refused(path="."):
            if os.path.realpath(path) == os.path.realpath(folder):
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return listdir(path)
        self.pixel.close()
        with unittest.mock.patch("os.listdir", refused):
            self.assertEqual(make_pixel(self, self.dir).recorder.remember_logged(), 5)

    def test_the_window_is_filled_from_logrotates_files_too(self):
        # An attack pass: after logrotate's rename and a reload, a restart read only the
        # nearly empty live file, and an SDK's retry was written twice.
        self.recorder.events.write([log_event(number) for number in range(5)])
        path = self.recorder.events.path
        os.rename(path, path + "-20261203")
        self.recorder.events.reopen()
        self.recorder.events.write([log_event(5)])
        with open(path + ".2.gz", "wb") as handle:   # compressed: not read
            handle.write(gzip.compress(log_event(9)))
        restarted = app_over(self.recorder.events, self.recorder.rejects,
                             dedupe_window=10, clock=lambda: T0)
        self.assertEqual(restarted.recorder.remember_logged(), 6)
        window = restarted.recorder.recent
        self.assertEqual([pixel.dedupe_key("K", "m%d" % number) in window
                          for number in (0, 4, 5, 9)], [True, True, True, False])

    def test_the_window_refilled_from_the_log_is_per_write_key(self):
        self.recorder.events.write([log_event(1, key="K1"), log_event(2, key="K2")])
        restarted = app_over(self.recorder.events, self.recorder.rejects,
                             dedupe_window=10, clock=lambda: T0)
        self.assertEqual(restarted.recorder.remember_logged(), 2)
        body = json.dumps({"batch": [
            {"type": "track", "writeKey": key, "userId": "u", "event": "e",
             "messageId": message_id}
            for key, message_id in (("K1", "m1"), ("K2", "m1"), ("K1", "m2"), ("K2", "m2"))]})
        answer = restarted.answer(pixel.ROUTES["/v1/batch"], request(
            "POST", "/v1/batch", body=body.encode()))
        self.assertEqual(answer.status, 200)
        self.assertEqual([(event["writeKey"], event["messageId"]) for event in self.lines()],
                         [("K1", "m1"), ("K2", "m2"), ("K2", "m1"), ("K1", "m2")])
        self.assertEqual(restarted.recorder.deduped, 2)

    def test_reading_is_bounded_and_spans_rotated_files(self):
        writer = pixel.LogWriter(os.path.join(self.dir, "r.jsonl"), max_bytes=1000)
        self.addCleanup(writer.close)
        writer.write([log_event(number) for number in range(30)])
        self.assertGreater(len(pixel.pixel_rotations(writer.path)), 3)
        paths = [writer.path] + pixel.pixel_rotations(writer.path)[::-1]
        self.assertEqual(pixel.logged_client_ids(paths, 25),
                         [pixel.dedupe_key("K", "m%d" % number) for number in range(5, 30)])
        single = os.path.join(self.dir, "single.jsonl")
        with open(single, "wb") as handle:
            handle.write(b"".join(log_event(number) for number in range(30)))
        line = len(log_event(29))   # m27 to m29 are the same length
        # A line the budget cuts is not read: it could be any line's end.
        self.assertEqual(pixel.logged_client_ids([single], 25, max_bytes=line * 3),
                         [pixel.dedupe_key("K", "m28"), pixel.dedupe_key("K", "m29")])
        self.assertEqual(pixel.logged_client_ids([single], 25, max_bytes=line * 3 + 1),
                         [pixel.dedupe_key("K", "m%d" % number) for number in (27, 28, 29)])


class RecorderWithAnAllowList(RecorderCase):
    """With --write-key, the HTTP API answers 401 when no event carries an allowed key."""

    recorder_options = {"write_key": ["good"]}

    def post(self, document, path="/v1/batch", headers=None):
        answer = self.answer(method="POST", path=path, body=json.dumps(document).encode(),
                             headers=headers)
        return answer.status, json.loads(answer.body), dict(answer.headers)

    def test_401_when_no_event_carries_an_allowed_key(self):
        def track(**fields):
            return dict({"type": "track", "userId": "u", "event": "e"}, **fields)

        for name, path, document, expected in [
                ("one event", "/v1/track", track(writeKey="bad"), "invalid_write_key"),
                ("a batch", "/v1/batch", {"batch": [track(writeKey="bad"),
                                                     track(writeKey="worse")]},
                 "invalid_write_key"),
                ("the batch's key", "/v1/batch", {"writeKey": "bad", "batch": [track()]},
                 "invalid_write_key"),
                ("no key at all", "/v1/batch", {"batch": [track(), track()]}, "no_write_key"),
                ("a bad key and an item that is no event", "/v1/batch",
                 {"batch": [track(writeKey="bad"), 0]}, "invalid_write_key")]:
            with self.subTest(name):
                status, body, headers = self.post(document, path)
                self.assertEqual((status, body), (401, {"success": False, "error": expected}))
                self.assertEqual(headers["WWW-Authenticate"], 'Basic realm="pixel"')
        self.assertEqual(self.lines(), [])
        self.assertEqual([record["reason"] for record in self.lines("rejects.jsonl")],
                         ["invalid_write_key"] * 4 + ["no_write_key"] * 2 +
                         ["invalid_write_key", "payload_not_object"])

    def test_200_when_some_event_carries_one(self):
        for name, document in [
                ("a mixed batch", {"batch": [
                    {"type": "track", "writeKey": "good", "userId": "u", "event": "e"},
                    {"type": "track", "writeKey": "bad", "userId": "u", "event": "e"}]}),
                ("an allowed key on a broken event", {"writeKey": "good", "batch": [
                    {"type": "track", "userId": "u"}]}),
                ("items that are not events", {"writeKey": "good", "batch": [
                    {"type": "bogus", "userId": "u"}, 7]})]:
            with self.subTest(name):
                self.assertEqual(self.post(document)[:2], (200, {"success": True}))
        self.assertEqual([(event["writeKey"], event["event"]) for event in self.lines()],
                         [("good", "e")])
        self.assertEqual([record["reason"] for record in self.lines("rejects.jsonl")],
                         ["invalid_write_key", "event_not_defined", "invalid_type",
                          "payload_not_object"])

    def test_browser_routes_the_same_with_cors_and_no_challenge_and_pixels_their_gif(self):
        origin = {"origin": "https://shop.example.com"}
        status, body, headers = self.post({"writeKey": "bad", "userId": "u", "event": "e"},
                                          "/v1/t", origin)
        self.assertEqual((status, body["error"]), (401, "invalid_write_key"))
        self.assertEqual(headers["Access-Control-Allow-Origin"], "https://shop.example.com")
        self.assertNotIn("WWW-Authenticate", headers)   # a browser would ask for a password
        status, _, _ = self.post({"writeKey": "good", "userId": "u", "event": "e"}, "/v1/t",
                                 origin)
        self.assertEqual(status, 200)
        self.assertIs(self.answer(query="writeKey=bad&userId=u&event=e"), pixel.GIF_ANSWER)
        self.assertEqual(len(self.lines()), 1)
        self.assertEqual(len(self.lines("rejects.jsonl")), 2)

    def test_without_an_allowlist_nothing_changes(self):
        recorder = app_over(self.recorder.events, self.recorder.rejects)
        answer = recorder.answer(pixel.ROUTES["/v1/batch"], request(
            "POST", "/v1/batch", body=b'{"batch": [{"type": "track", "userId": "u"}]}'))
        self.assertEqual((answer.status, json.loads(answer.body)), (200, {"success": True}))
        self.assertEqual(self.lines("rejects.jsonl")[0]["reason"], "no_write_key")


class RecorderBehindAProxy(RecorderCase):
    recorder_options = {"trusted_proxy": ["192.0.2.0/24"]}

    def test_forwarded_for_from_a_trusted_peer(self):
        self.answer(query="writeKey=k&userId=u&event=e",
                    headers={"x-forwarded-for": "198.51.100.9, 192.0.2.7"})
        self.assertEqual(self.lines()[0]["context"]["ip"], "198.51.100.9")


class RecorderForRudderStack(RecorderCase):
    """What RudderStack's browser SDK asks of its control and data plane: a preflight and
    GET /sourceConfig/ with Basic auth (and the key in the query), HEAD /sourceConfig/?view=ad
    for its ad-block check, its beacon's text/plain POST /beacon/v1/batch?writeKey=K with no
    Authorization, and its own error reports to /rsaMetrics."""

    ORIGIN = "https://shop.example.com"
    recorder_options = {"write_key": ["K", "K2"], "allow_origin": [ORIGIN]}
    CONFIG_QUERY = "p=npm&v=3.34.1&build=modern&writeKey=K&lockIntegrationsVersion=true"

    def event(self, **fields):
        return dict({"type": "track", "event": "Clicked", "anonymousId": "a1",
                     "channel": "web", "originalTimestamp": "2026-11-27T10:00:00.000Z",
                     "context": {"library": {"name": "RudderLabs JavaScript SDK"}}}, **fields)

    def basic(self, key):
        return "Basic " + base64.b64encode(key.encode() + b":").decode()

    def test_preflight_of_the_source_config(self):
        answer = self.answer(method="OPTIONS", path="/sourceConfig/", query=self.CONFIG_QUERY,
                             headers={"origin": self.ORIGIN,
                                      "access-control-request-method": "GET",
                                      "access-control-request-headers": "authorization"})
        headers = dict(answer.headers)
        self.assertEqual((answer.status, headers["Access-Control-Allow-Origin"],
                          headers["Access-Control-Allow-Methods"],
                          headers["Access-Control-Allow-Headers"]),
                         (204, self.ORIGIN, "GET, OPTIONS", "authorization"))
        answer = self.answer(method="OPTIONS", path="/sourceConfig/",
                             headers={"origin": "https://evil.example",
                                      "access-control-request-method": "GET"})
        self.assertEqual(answer.status, 403)
        self.assertNotIn("Access-Control-Allow-Origin", dict(answer.headers))

    def test_the_source_config_document(self):
        for path in ("/sourceConfig/", "/sourceConfig"):
            with self.subTest(path):
                answer = self.answer(path=path, query=self.CONFIG_QUERY,
                                     headers={"origin": self.ORIGIN,
                                              "authorization": self.basic("K")})
                self.assertEqual((answer.status, dict(answer.headers)["Content-Type"],
                                  dict(answer.headers)["Access-Control-Allow-Origin"]),
                                 (200, "application/json", self.ORIGIN))
                source = json.loads(answer.body)["source"]
                # What the SDK checks (isValidSourceConfig, then source.enabled) and reads.
                self.assertEqual((source["writeKey"], source["enabled"], source["destinations"]),
                                 ("K", True, []))
                self.assertIsNotNone(source["id"])
                self.assertEqual(source["config"]["statsCollection"],
                                 {"errors": {"enabled": False}, "metrics": {"enabled": False}})
        self.assertEqual(self.lines(), [])

    def test_which_key_the_source_config_is_for(self):
        for name, method, query, authorization, status, key in [
                ("the query's alone", "GET", self.CONFIG_QUERY, None, 200, "K"),
                ("Basic auth wins", "GET", self.CONFIG_QUERY, "K2", 200, "K2"),
                ("the ad-block check: HEAD, Basic auth only", "HEAD", "view=ad", "K", 200, None),
                ("an unknown key", "GET", "writeKey=other", None, 404, None),
                ("an unknown key in Basic auth", "HEAD", "view=ad", "other", 404, None),
                ("no key", "GET", "p=npm", None, 400, None),
                ("a key that is not UTF-8", "GET", "writeKey=%FF", None, 400, None),
                ("not GET", "POST", self.CONFIG_QUERY, None, 405, None)]:
            with self.subTest(name):
                headers = {"authorization": self.basic(authorization)} if authorization else {}
                answer = self.answer(method=method, path="/sourceConfig/", query=query,
                                     headers=headers)
                self.assertEqual(answer.status, status)
                if key:
                    self.assertEqual(json.loads(answer.body)["source"]["writeKey"], key)
        # Without an allowlist any key is a source, but only one that a settings document's
        # path could hold: what is echoed back is never markup.
        without_allowlist = app_over(self.recorder.events, self.recorder.rejects)
        for query, status in (("writeKey=any-Key_1", 200), ("writeKey=%3Cb%3E", 404),
                              ("writeKey=" + "k" * 129, 404)):
            with self.subTest(query):
                answer = without_allowlist.answer(pixel.ROUTES["/sourceConfig/"],
                                                  request(path="/sourceConfig/", query=query))
                self.assertEqual(answer.status, status)

    def test_a_beacon_batch_with_the_key_in_the_query(self):
        body = json.dumps({"batch": [self.event(messageId="rs-1"),
                                     self.event(messageId="rs-2", type="page", name="Home")],
                           "sentAt": "2026-11-27T10:00:05.000Z"}).encode()
        answer = self.answer(method="POST", path="/beacon/v1/batch", query="writeKey=K",
                             headers={"content-type": "text/plain;charset=UTF-8",
                                      "origin": self.ORIGIN}, body=body)
        self.assertEqual((answer.status, json.loads(answer.body)), (200, {"success": True}))
        self.assertEqual(dict(answer.headers)["Access-Control-Allow-Origin"], self.ORIGIN)
        events = self.lines()
        self.assertEqual([(event["messageId"], event["type"], event["writeKey"])
                          for event in events], [("rs-1", "track", "K"), ("rs-2", "page", "K")])
        # The browser's clock, corrected by sentAt, as on analytics.js's routes.
        self.assertEqual(events[0]["timestamp"], "2026-11-18T11:06:35.250Z")
        # A key the allowlist does not hold, and no key at all, are refused per item, and
        # with no allowed key in the request the answer is a 401 (issue 19, item 10).
        for query, error in (("writeKey=other", "invalid_write_key"), ("", "no_write_key")):
            answer = self.answer(method="POST", path="/beacon/v1/batch", query=query,
                                 body=body)
            self.assertEqual((answer.status, json.loads(answer.body)["error"]), (401, error))
        self.assertEqual([record["reason"] for record in self.lines("rejects.jsonl")],
                         ["invalid_write_key"] * 2 + ["no_write_key"] * 2)
        self.assertEqual(len(self.lines()), 2)

    def test_the_query_key_on_every_http_api_route(self):
        for path, document in [("/v1/track", self.event(messageId="q-track")),
                               ("/v1/t", self.event(messageId="q-t")),
                               ("/v1/batch", {"batch": [self.event(messageId="q-batch")]}),
                               ("/v1/b", {"batch": [self.event(messageId="q-b")]}),
                               ("/v1/import", {"batch": [self.event(messageId="q-import")]})]:
            with self.subTest(path):
                answer = self.answer(method="POST", path=path, query="writeKey=K2",
                                     body=json.dumps(document).encode())
                self.assertEqual(answer.status, 200)
        self.assertEqual([event["writeKey"] for event in self.lines()], ["K2"] * 5)
        # ... and Basic auth before it, and the item's own key before both.
        self.answer(method="POST", path="/v1/batch", query="writeKey=K2",
                    headers={"authorization": self.basic("K")},
                    body=json.dumps({"batch": [self.event(messageId="p-1"),
                                               self.event(messageId="p-2", writeKey="K2")]
                                     }).encode())
        self.assertEqual([event["writeKey"] for event in self.lines()[5:]], ["K", "K2"])
        answer = self.answer(method="POST", path="/v1/track", query="writeKey=K&writeKey=K2",
                             body=json.dumps(self.event()).encode())
        self.assertEqual((answer.status, json.loads(answer.body)["error"]),
                         (400, "duplicate_key"))

    def test_error_reports_are_counted_not_written(self):
        answer = self.answer(method="POST", path="/rsaMetrics",
                             headers={"origin": self.ORIGIN, "authorization": self.basic("K")},
                             body=b'{"version":"1","message_id":"x","source":{},"errors":[]}')
        self.assertEqual((answer.status, dict(answer.headers)["Access-Control-Allow-Origin"]),
                         (200, self.ORIGIN))
        self.assertEqual(self.pixel.metrics.health_document()["browser_metrics"], 1)
        self.assertFalse(os.path.getsize(os.path.join(self.dir, "events.jsonl")))


class RecorderWithoutIp(RecorderCase):
    recorder_options = {"no_ip": True}

    def test_no_ip_in_either_log(self):
        self.answer(query="writeKey=k&userId=u&event=e&context.ip=1.2.3.4")
        self.answer(query="writeKey=k")
        self.assertNotIn("ip", self.lines()[0]["context"])
        self.assertNotIn("ip", self.lines("rejects.jsonl")[0])


class RejectsQuoteNoAddress:
    """For a RecorderCase whose options quote no address whole in the rejects log."""

    def test_no_address_can_be_read_out_of_the_rejects_log_however_it_was_encoded(self):
        for case, send in hidden_address_cases():
            with self.subTest(case):
                before = len(self.lines("rejects.jsonl"))
                sent = send(self.app)
                self.assertTrue(hidden_addresses(sent), "the case hides no address: " + case)
                with open(os.path.join(self.dir, "rejects.jsonl")) as handle:
                    written = handle.read().splitlines()[before:]
                self.assertTrue(written, "nothing was rejected")
                for line in written:
                    self.assertEqual(hidden_addresses(line), set(), line)
        self.assertEqual(self.lines(), [])


class RecorderWithNoIp(RejectsQuoteNoAddress, RecorderCase):
    """--no-ip records no address in an event, and the rejects log quotes none whole: what it
    quotes of client text is truncated as under --anonymize-ip (a newcomer found it raw)."""
    recorder_options = {"no_ip": True}

    def test_no_address_in_an_event_nor_whole_in_a_quote(self):
        self.answer(query="writeKey=k&userId=u&event=e&context.ip=198.51.100.23",
                    peer="203.0.113.7")
        self.answer(query="writeKey=K&userId=u&evnt=E&context.ip=203.0.113.7")
        self.answer(query="data=" + b64({"userId": "u", "context": {"ip": "203.0.113.8"}}))
        self.answer(path="/v1/track", method="POST", body=json.dumps(
            {"writeKey": "K", "userId": "u", "context": {"ip": "203.0.113.9"}}).encode())
        (event,) = self.lines()
        self.assertNotIn("ip", event["context"])
        rejected = self.lines("rejects.jsonl")
        self.assertEqual(len(rejected), 3)
        self.assertTrue(all("ip" not in line for line in rejected), rejected)
        self.assertEqual(rejected[0]["query"], "writeKey=K&userId=u&evnt=E&context.ip=203.0.113.0")
        self.assertFalse(re.search(r"203\.0\.113\.[789]\b", json.dumps(rejected)), rejected)


class RecorderAnonymizingIp(RejectsQuoteNoAddress, RecorderCase):
    recorder_options = {"anonymize_ip": True, "trusted_proxy": ["10.0.0.0/8"]}

    def rejects_line(self, **sent):
        """The one rejects-log line that the request `sent` adds."""
        before = self.recorder.rejects.written
        self.answer(**sent)
        self.assertEqual(self.recorder.rejects.written, before + 1)
        with open(os.path.join(self.dir, "rejects.jsonl")) as handle:
            return handle.read().splitlines()[-1]

    def test_the_table(self):
        for text, expected in (("203.0.113.7", "203.0.113.0"), ("10.1.2.255", "10.1.2.0"),
                               ("2001:db8:abcd:12:34::1", "2001:db8:abcd::"),
                               ("::ffff:198.51.100.9", "198.51.100.0"),
                               (" 192.0.2.1 ", "192.0.2.0"), ("::1", "::"),
                               ("203.0.113.07", None), ("example.com", None), ("", None),
                               ("\u0661.1.1.1", None), ("1.2.3.4/8", None),
                               # 6to4: the /48 would be the whole IPv4 address inside
                               ("2002:c633:644d::1", "2002:c633:6400::")):
            with self.subTest(text):
                self.assertEqual(pixel.anonymize_ip(text), expected)

    def test_text_that_cannot_be_decoded_far_enough_is_not_quoted(self):
        # A percent-escape that is not UTF-8 (a lenient decoder reads %C0%AE as "."), and
        # escapes nested deeper than MAX_DECODE_ROUNDS: no telling what they hold.
        overlong = "203%C0%AE0%C0%AE113%C0%AE77"
        nested = "203%" + "25" * pixel.MAX_DECODE_ROUNDS + "2E0.113.77"   # 5 levels
        self.assertEqual(pixel.anonymize_text(nested.replace("%25", "%", 1)), "203.0.113.0")
        for text in (overlong, nested):
            with self.subTest(text):
                self.assertIsNone(pixel.anonymize_text(text))
                line = self.rejects_line(method="POST", path="/v1/batch", body=json.dumps(
                    {"batch": [{"type": "bogus", "ip": text}]}).encode())
                self.assertNotIn(text, line)
                self.assertTrue(json.loads(line)["redacted"], line)

    def test_an_address_before_a_colon_is_truncated_and_the_colon_kept(self):
        self.assertEqual(pixel.anonymize_addresses("at 2001:db8:abcd:12::77: ok"),
                         "at 2001:db8:abcd::: ok")
        self.assertEqual(pixel.anonymize_addresses("via ::ffff:198.51.100.9: ok"),
                         "via 198.51.100.0: ok")

    def test_a_quoted_context_ip_that_is_not_an_address_is_left_out_and_said(self):
        self.assertEqual(pixel.anonymize_json({"context": {"ip": "not-an-address", "a": 1}}),
                         ({"context": {"a": 1}}, True))

    def test_a_quote_stops_at_its_budget_even_of_keys_and_parameters_without_strings(self):
        self.assertEqual(pixel.anonymize_json({"k%d" % n: [] for n in range(100)}, budget=20),
                         ({"k%d" % n: [] for n in range(5)}, False))
        query = "&".join("k%d=1" % n for n in range(5000))
        quoted, _ = pixel.anonymize_query(query)
        self.assertTrue(query.startswith(quoted + "&"))
        self.assertLessEqual(len(quoted), pixel.MAX_REJECT_RAW + len("&k4999=1"))

    def test_a_body_nested_deeper_than_pixel_parses_is_left_out_whole(self):
        self.assertEqual(pixel.anonymize_body(b"[" * 40 + b"]" * 40), ("", True))

    def test_peer_forwarded_for_client_ip_and_the_rejects_log(self):
        self.answer(query="writeKey=k&userId=u&event=e", peer="203.0.113.7")
        self.answer(query="writeKey=k&userId=u&event=e", peer="10.0.0.1",
                    headers={"x-forwarded-for": "2001:db8:abcd:12::5"})
        self.answer(query="writeKey=k&userId=u&event=e&context.ip=198.51.100.23")
        self.answer(query="writeKey=k&userId=u&event=e&context.ip=not-an-address")
        self.answer(path="/v1/track", method="POST", peer="203.0.113.8", body=json.dumps(
            {"writeKey": "k", "userId": "u", "event": "e",
             "context": {"ip": "2001:db8:1:2::3"}}).encode())
        self.answer(query="writeKey=k", peer="192.0.2.77")
        self.assertEqual([line["context"].get("ip") for line in self.lines()],
                         ["203.0.113.0", "2001:db8:abcd::", "198.51.100.0", None,
                          "2001:db8:1::"])
        self.assertEqual(self.lines("rejects.jsonl")[0]["ip"], "192.0.2.0")

    def test_an_address_in_the_user_agent_of_an_event(self):
        # An attack pass: the rejects log truncated it, the event kept it whole.
        for path, body in (("/v1/pixel/track", None), ("/v1/track", b'{"writeKey": "k", '
                                                       b'"userId": "u", "event": "e"}')):
            self.answer(path=path, method="POST" if body else "GET", body=body or b"",
                        query="" if body else "writeKey=k&userId=u&event=e",
                        headers={"user-agent": "Proxy-Client/2 (for 203.0.113.77)"})
        self.answer(query="writeKey=k&userId=u&event=e",
                    headers={"user-agent": "Bot/1 (%s)" % quote_all(b64(b"ip 203.0.113.77"))})
        agent = "Proxy-Client/2 (for 203.0.113.77)"
        self.answer(query="writeKey=k&userId=u&event=e&context.userAgent=" + agent)
        self.answer(path="/v1/batch", method="POST", body=json.dumps({"writeKey": "k", "batch": [
            {"type": "track", "userId": "u", "event": "e", "context": {"userAgent": agent}}]}
        ).encode())
        self.assertEqual([event["context"].get("userAgent") for event in self.lines()],
                         ["Proxy-Client/2 (for 203.0.113.0)"] * 2 + [None] +
                         ["Proxy-Client/2 (for 203.0.113.0)"] * 2)
        # A client's agent that is not a string (the second attack pass) is truncated too.
        for agent in ({"s": "Proxy (for 203.0.113.77)"}, ["Proxy (for 203.0.113.77)"]):
            self.answer(path="/v1/track", method="POST", body=json.dumps({
                "writeKey": "k", "userId": "u", "event": "e", "context": {"userAgent": agent}}
            ).encode())
        self.assertEqual([event["context"]["userAgent"] for event in self.lines()[-2:]],
                         [{"s": "Proxy (for 203.0.113.0)"}, ["Proxy (for 203.0.113.0)"]])
        # The cache holds agents of MAX_USER_AGENT characters at most: 64 KB ones are not kept.
        pixel._anonymized_agent.cache_clear()
        for number in range(3):
            pixel.anonymized_agent("%d" % number + "\U0001f600" * 20000)
        self.assertEqual(pixel._anonymized_agent.cache_info().currsize, 0)

    def test_addresses_in_the_request_a_rejects_line_quotes(self):
        self.answer(query="userId=u&event=e&context.ip=198.51.100.77&v=12:30:45")
        self.answer(path="/v1/batch", method="POST", body=json.dumps({"batch": [
            {"type": "bogus", "context": {"ip": "2001:db8:abcd:12::1"}},
            {"type": "bogus", "context": {"ip": "::ffff:10.1.2.3"}}]}).encode())
        self.answer(query="userId=u&context.ip=2001%3Adb8%3Aabcd%3A12%3A%3A1")
        quotes = [line.get("query") or line.get("body") for line in self.lines("rejects.jsonl")]
        self.assertEqual(quotes[0], "userId=u&event=e&context.ip=198.51.100.0&v=12:30:45")
        self.assertIn('"2001:db8:abcd::"', quotes[1])
        self.assertIn('"10.1.2.0"', quotes[2])
        self.assertEqual(quotes[3], "userId=u&context.ip=2001:db8:abcd::")
        self.assertFalse(re.search(r"198\.51\.100\.77|abcd:12|10\.1\.2\.3", json.dumps(quotes)))

    def test_what_is_quoted_is_what_was_decoded(self):
        payload = {"writeKey": "k", "userId": "u", "context": {"ip": "203.0.113.77"},
                   "properties": {"note": "\u00e9 seen at 2001:db8:abcd:12::77"}}
        self.answer(query="data=" + b64(payload))
        self.answer(query="writeKey=k&userId=u&properties.x=1%2E2&context.ip=" + "%FF")
        self.answer(query="data=" + b64(b"not json"))
        first, second, third = self.lines("rejects.jsonl")
        data = urllib.parse.parse_qs(first["query"])["data"][0]
        self.assertEqual(json.loads(base64.urlsafe_b64decode(data + "==")), dict(
            payload, context={"ip": "203.0.113.0"},
            properties={"note": "\u00e9 seen at 2001:db8:abcd::"}))
        self.assertNotIn("redacted", first)
        self.assertEqual((second["query"], second["redacted"]),
                         ("writeKey=k&userId=u&properties.x=1%2E2", True))
        self.assertEqual((third["query"], third["redacted"]), ("", True))


    def test_an_address_beside_a_dot_or_a_label_is_truncated_too(self):
        # No encoding at all: the address regexes do not start a match right after a dot
        # (so as not to start inside a longer dotted run) nor after a colon (inside an IPv6
        # address), and a dotted run is cut only at its first four numbers. So a host name
        # ending in an address, a label such as "ip:" and a run of five or more numbers
        # were quoted whole.
        v4, v6 = (str(address) for address in TEST_ADDRESSES)
        for case, sent in [
                ("after a host name", dict(query="writeKey=k&userId=u&properties.host=edge." +
                                           v4)),
                ("after a dot", dict(query="writeKey=k&userId=u&properties.a=." + v4)),
                ("after four numbers", dict(query="writeKey=k&userId=u&properties.a=1.2.3.4." +
                                            v4)),
                ("after two numbers", dict(query="writeKey=k&userId=u&properties.a=1.2." + v4)),
                ("after a label", dict(query="writeKey=k&userId=u&properties.a=ip:" + v6)),
                ("after a colon", dict(query="writeKey=k&userId=u&properties.a=:" + v6)),
                ("inside data=", dict(query="data=" + b64(
                    {"writeKey": "k", "userId": "u", "note": "seen from ip:" + v6}))),
                ("in a batch item", dict(method="POST", path="/v1/batch", body=json.dumps(
                    {"batch": [{"type": "bogus", "note": "host.%s ip:%s" % (v4, v6)}]}
                ).encode())),
                ("in the user agent", dict(query="writeKey=k",
                                           headers={"user-agent": "Bot/1 (+ip:%s)" % v6}))]:
            with self.subTest(case):
                line = self.rejects_line(**sent)
                self.assertEqual(hidden_addresses(line) | verbatim_addresses(line), set(), line)

    def test_an_address_in_base64_is_not_quoted_from_any_field(self):
        # base64 is undone for data= and for a body as a whole, but a client can base64 any
        # string: a plain parameter, a batch item's field, a field inside data=. The table
        # of hidden_address_cases has none of these; its own reader decodes them.
        v4, v6 = (str(address) for address in TEST_ADDRESSES)
        encoded = base64.b64encode(v4.encode()).decode()
        for case, sent in [
                ("a plain parameter", dict(query="writeKey=k&userId=u&properties.a=" +
                                           urllib.parse.quote(encoded))),
                ("a field inside data=", dict(query="data=" + b64(
                    {"writeKey": "k", "userId": "u", "note": encoded}))),
                ("a batch item's field", dict(method="POST", path="/v1/batch", body=json.dumps(
                    {"batch": [{"type": "bogus", "note": base64.urlsafe_b64encode(
                        ("client " + v6).encode()).decode()}]}).encode())),
                ("the user agent", dict(query="writeKey=k",
                                        headers={"user-agent": "Bot/1 (%s)" % encoded}))]:
            with self.subTest(case):
                line = self.rejects_line(**sent)
                self.assertEqual(hidden_addresses(line), set(), line)

    def test_no_address_is_quoted_in_a_form_a_resolver_reads(self):
        # The anonymiser reads fullwidth forms (NFKC) and leading zeros (inet_aton), but not
        # their siblings: the ideographic full stops IDNA maps to a dot (browsers' URL
        # parser too), the soft hyphen and zero-width characters IDNA drops, and inet_aton's
        # hexadecimal numbers. Python's own idna codec and socket.inet_aton read each of
        # these back as 203.0.113.77.
        v4 = str(TEST_ADDRESSES[0])
        ideographic = urllib.parse.quote(v4.replace(".", "\u3002"))
        halfwidth = v4.replace(".", "\uff61")
        for case, sent in [
                ("ideographic full stops", dict(query="writeKey=k&userId=u&properties.url=" +
                                                "http://%s/" % ideographic)),
                ("halfwidth ideographic full stops", dict(query="data=" + b64(
                    {"writeKey": "k", "userId": "u", "host": halfwidth}))),
                ("a soft hyphen", dict(query="writeKey=k&userId=u&properties.a=" +
                                       urllib.parse.quote("203.0\u00ad.113.77"))),
                ("a zero-width space", dict(query="writeKey=k", headers={
                    "user-agent": "Bot/1 (203.0.113\u200b.77)".encode().decode("latin-1")})),
                ("a hexadecimal number", dict(query="writeKey=k&userId=u&properties.url=" +
                                              "http://0xcb.0.113.77/")),
                ("a hexadecimal last number", dict(method="POST", path="/v1/batch",
                                                   body=json.dumps({"batch": [
                                                       {"type": "bogus",
                                                        "host": "203.0.113.0x4d"}]}).encode()))]:
            with self.subTest(case):
                line = self.rejects_line(**sent)
                self.assertEqual(resolver_addresses(line), set(), line)

    @soak
    def test_a_body_is_not_walked_past_what_a_quote_can_show(self):
        # The budget counted strings' characters only: a 500 KB body of empty lists (or
        # numbers, or empty strings) was walked, copied and encoded whole for a quote of
        # 16 KiB, on the request path with the GIL held: 6 times as long as refusing it
        # without --anonymize-ip (0.53 s for nested lists, over the 0.5 s bound below).
        for name, inner in (("empty lists", "[]"), ("nested lists", "[" * 30 + "]" * 30),
                            ("objects", '{"a":{}}'), ("numbers", "0"), ("empty strings", '""')):
            with self.subTest(name):
                count = (pixel.MAX_BODY_BYTES - 40) // (len(inner) + 1)
                text = '{"batch":1,"x":[' + ",".join([inner] * count) + "]}"
                parsed, quoting = [], []
                for _ in range(3):   # this thread's CPU time, the best of 3: a loaded
                    started = time.thread_time()   # machine does not count
                    document = json.loads(text)
                    parsed.append(time.thread_time() - started)
                    started = time.thread_time()
                    quoted, _ = pixel.anonymize_body(text.encode())
                    quoting.append(time.thread_time() - started)
                copy, _ = pixel.anonymize_json(document)
                self.assertLess(len(json.dumps(copy, separators=(",", ":"))),
                                4 * pixel.MAX_REJECT_RAW)
                self.assertLess(min(quoting), 5 * min(parsed) + 0.05)
                self.assertLess(len(quoted), 4 * pixel.MAX_REJECT_RAW)

    def test_the_worst_inputs_take_bounded_time(self):
        # Each address costs ipaddress microseconds; a body can hold a hundred thousand.
        many = " ".join("2001:db8:%x::1" % number for number in range(60000))
        for name, send in [
                ("a body", lambda: self.answer(method="POST", path="/v1/batch", body=json.dumps(
                    {"batch": many[:pixel.MAX_BODY_BYTES - 100]}).encode())),
                ("items", lambda: self.answer(method="POST", path="/v1/batch", body=json.dumps(
                    {"batch": [{"type": "bogus", "a": many[:30000]}] * 15}).encode())),
                ("a query", lambda: self.answer(query="a=" + urllib.parse.quote(
                    many[:pixel.MAX_LINE - 100]))),
                ("a user agent", lambda: self.answer(query="a=1", headers={
                    "user-agent": many[:pixel.MAX_LINE - 100]}))]:
            with self.subTest(name):
                started = time.thread_time()   # this thread's CPU: a loaded machine's
                send()                         # steal does not count (0.54 s in one CI run)
                self.assertLess(time.thread_time() - started, 0.5)
        for record in self.lines("rejects.jsonl"):
            self.assertNotIn(":1 ", json.dumps(record))


TEST_ADDRESSES = (ipaddress.ip_address("203.0.113.77"),
                  ipaddress.ip_address("2001:db8:abcd:12::77"))


def hidden_address_cases():
    """(case, send) pairs: each send(recorder) makes one request to be rejected that hides
    a TEST_ADDRESSES address in an encoding a client can choose, and returns the request
    as sent (text), for hidden_addresses to read the address out of."""
    v4, v6 = (str(address) for address in TEST_ADDRESSES)
    escaped_v4 = "".join("\\u%04x" % ord(char) for char in v4[:3]) + v4[3:]

    def get(query, headers=None):
        def send(recorder):
            recorder.answer(pixel.ROUTES["/v1/pixel/track"], request(query=query,
                                                                     headers=headers))
            return query + " " + json.dumps(headers or {})
        return send

    def api(body, path="/v1/batch", encoding=None):
        def send(recorder):
            headers = {"content-encoding": encoding} if encoding else {}
            recorder.answer(pixel.ROUTES[path], request("POST", path, body=body,
                                                        headers=headers))
            return body.decode("latin-1")
        return send

    def too_long(query):
        def send(recorder):
            recorder.refuse(pixel.ROUTES["/v1/pixel/track"], request(query=query),
                            "uri_too_long", 414)
            return query
        return send

    no_event = {"writeKey": "k", "userId": "u", "context": {"ip": v4}}
    in_v6 = {"writeKey": "k", "userId": "u", "context": {"ip": v6}}
    fullwidth = unicodedata.normalize("NFKC", v4).translate(
        {ord(char): ord(char) + 0xFEE0 for char in "0123456789."})
    gzipped = gzip.compress(json.dumps({"batch": {"note": v4}}).encode())
    stored = gzip.compress(('{"batch": [{"type": "bogus", "ip": "%s", "pad": "%s"}]}'
                            % (escaped_v4, "x" * 20)).encode(), compresslevel=0)
    return [
        ("data=, standard base64", get("data=" + b64(no_event))),
        ("data=, URL-safe and unpadded", get("data=" + b64(no_event, "urlsafe", False))),
        ("data=, percent-escaped", get("data=" + quote_all(b64(in_v6)))),
        ("data= that is not base64", get("data=" + b64(no_event) + "!!")),
        ("data= that is not JSON", get("data=" + b64(("ip " + v4).encode()))),
        ("data= and plain parameters", get("userId=u&data=" + b64({"context": {"ip": v4}}))),
        ("data= with \\u escapes", get("data=" + b64(
            ('{"writeKey": "k", "userId": "u", "x": "%s"}' % escaped_v4).encode()))),
        ("percent-escaped dots", get("writeKey=k&userId=u&context.ip=" +
                                       v4.replace(".", "%2E"))),
        ("double percent-escaping", get("writeKey=k&userId=u&context.ip=" +
                                          v4.replace(".", "%252E"))),
        ("triple percent-escaping", get("writeKey=k&userId=u&properties.a=" +
                                          v4.replace(".", "%25252E"))),
        ("every character escaped", get("writeKey=k&userId=u&properties.a=" +
                                          "".join("%%%02X" % ord(char) for char in v4))),
        ("an overlong UTF-8 dot", get("writeKey=k&userId=u&properties.a=" +
                                        v4.replace(".", "%C0%AE"))),
        ("escaped colons", get("writeKey=k&userId=u&context.ip=" +
                                 v6.replace(":", "%3A"))),
        ("IPv6 written out whole", get("writeKey=k&userId=u&properties.a=" +
                                         ipaddress.ip_address(v6).exploded)),
        ("IPv4-mapped IPv6", get("writeKey=k&userId=u&context.ip=::ffff:" + v4)),
        ("IPv4-mapped IPv6 in hex", get("writeKey=k&userId=u&properties.a=::ffff:cb00:714d")),
        ("6to4", get("writeKey=k&userId=u&properties.a=2002:cb00:714d::1")),
        ("leading zeros", get("writeKey=k&userId=u&properties.a=203.000.113.077")),
        ("more leading zeros", get("writeKey=k&userId=u&properties.a=203.0000.113.77")),
        ("IIS's %u escapes", get("writeKey=k&userId=u&properties.a=" +
                                 v4.replace(".", "%u002E"))),
        ("HTML character references", get("writeKey=k&userId=u&properties.a=" +
                                           urllib.parse.quote(v4.replace(".", "&#46;")))),
        ("fullwidth digits", get("writeKey=k&userId=u&properties.a=" +
                                   urllib.parse.quote(fullwidth))),
        ("a parameter's name", get("writeKey=k&userId=u&%s.=1" % v4.replace(".", "%2E"))),
        ("base64 whose last group is partial", get("writeKey=k&userId=u&properties.n=" +
                                                    b64(("x " + v4).encode(), pad=False))),
        ("beside hex letters", get("writeKey=k&userId=u&properties.seen=cafe%s&"
                                   "properties.via=%sabc" % (v4, v4))),
        ("the user agent", get("writeKey=k", {"user-agent": "Bot/1 (%s)" % v4})),
        ("the user agent, escaped", get("writeKey=k", {"user-agent": "Bot/1 (%s)" %
                                                          v4.replace(".", "%2E")})),
        ("a query over the limit", too_long("data=" + b64(no_event) + "&x=" + "y" * 70000)),
        ("\\u escapes in a JSON body", api(('{"batch": {"ip": "%s"}}' % escaped_v4).encode())),
        ("\\u escapes in a body that is not JSON", api(
            ('{"batch": [{"ip": "%s"' % escaped_v4).encode())),
        ("\\u escapes in a batch item", api(
            ('{"batch": [{"type": "bogus", "context": {"ip": "%s"}}]}' % escaped_v4).encode())),
        ("HTML character references in a body", api(json.dumps(
            {"batch": {"a": v6.replace(":", "&colon;")}}).encode())),
        ("fullwidth digits in an event", api(json.dumps(
            {"writeKey": "k", "userId": "u", "properties": {"a": fullwidth}}).encode(),
            "/v1/track")),
        ("a base64 body", api(base64.b64encode(json.dumps(no_event).encode()))),
        ("a gzip body", api(gzipped, encoding="gzip")),
        ("a gzip body cut short", api(stored[:-8], encoding="gzip")),
        ("an encoding pixel does not read", api(
            json.dumps({"batch": [{"ip": escaped_v4}]}).encode(), encoding="br")),
        ("a body that is not UTF-8", api(('{"batch": "%s"}' % v4).encode("utf-16"))),
    ]


_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")
_DIGITS = re.compile(r"(?<![0-9A-Za-z])\d+(?:\.\d+){3}(?![0-9])")
_V6ISH = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")


def readings(text, rounds=4):
    """Every text a reader could make of `text` by undoing percent-escapes (strictly, or
    reading an overlong UTF-8 dot as a dot), JSON and its \\u escapes (and IIS's %u), HTML
    character references, base64 of either alphabet, gzip, UTF-16, fullwidth forms and
    other scripts' digits, up to `rounds` deep."""
    seen, frontier = {text}, [text]
    for _ in range(rounds):
        found = []
        for item in frontier:
            found.append(urllib.parse.unquote(item, errors="replace"))
            found.append(urllib.parse.unquote_plus(item, errors="replace"))
            found.append(urllib.parse.unquote_to_bytes(item).replace(b"\xc0\xae", b".")
                         .decode("utf-8", "replace"))
            found.append(re.sub(r"[\\%]u([0-9A-Fa-f]{4})",
                                lambda match: chr(int(match.group(1), 16)), item))
            found.append(html.unescape(item))
            found.append(unicodedata.normalize("NFKC", item))
            found.append(re.sub(r"\d", lambda match: str(unicodedata.decimal(match.group())),
                                item))
            try:
                found.extend(json_strings(json.loads(item)))
            except (ValueError, RecursionError):
                pass
            for raw in (item.encode("latin-1", "replace"), item.encode("utf-8")):
                found.append(raw.decode("utf-16", "replace"))
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                try:
                    found.append(inflater.decompress(raw).decode("utf-8", "replace"))
                except zlib.error:
                    pass
            for run in _BASE64_RUN.findall(item):
                for decode in (base64.b64decode, base64.urlsafe_b64decode):
                    try:
                        found.append(decode(run.rstrip("=") + "=" * (-len(run.rstrip("="))
                                                                       % 4)).decode("latin-1"))
                    except ValueError:   # binascii.Error: not base64 after all
                        pass
        frontier = [item for item in found if item not in seen][:2000]
        seen.update(frontier)
    return seen


def json_strings(value):
    """Every string in parsed JSON, keys too."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return list(value) + [text for item in value.values() for text in json_strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in json_strings(item)]
    return []


def verbatim_addresses(text):
    """The TEST_ADDRESSES that some reading of `text` holds as they are usually written,
    whatever stands next to them: "host.203.0.113.77", "ip:2001:db8:abcd:12::77"."""
    found = set()
    for reading in readings(text):
        if re.search(r"(?<![0-9])203\.0*0\.0*113\.0*77(?![0-9])", reading):
            found.add(TEST_ADDRESSES[0])
        if re.search(r"2001:0*db8:abcd:0*12::0*77(?![0-9A-Fa-f])", reading, re.IGNORECASE):
            found.add(TEST_ADDRESSES[1])
    return found


_HOST_LIKE = re.compile(r"[^\s/\\\"'?#&=@()<>,;\[\]]+")
_INET_ATON = re.compile(r"(?:0[xX][0-9A-Fa-f]*|\d+)(?:\.(?:0[xX][0-9A-Fa-f]*|\d+)){3}")


def resolver_addresses(text):
    """The IPv4 TEST_ADDRESSES that the standard library's resolvers read out of some
    reading of `text`: each host-like word through the idna codec (which maps ideographic
    full stops to dots and drops soft hyphens and zero-width spaces), then its dotted
    numbers through socket.inet_aton (which reads 0xcb as 203)."""
    found = set()
    for reading in readings(text):
        for word in _HOST_LIKE.findall(reading):
            try:
                host = word.encode("idna").decode("ascii")
            except UnicodeError:   # an empty or over-long label: no host name
                continue
            for dotted in _INET_ATON.findall(host):
                try:
                    packed = socket.inet_aton(dotted)
                except OSError:
                    continue
                if packed == TEST_ADDRESSES[0].packed:
                    found.add(TEST_ADDRESSES[0])
    return found


def hidden_addresses(text):
    """The TEST_ADDRESSES that some reading of `text` holds in full, in any notation."""
    found = set()
    for reading in readings(text):
        for dotted in _DIGITS.findall(reading):   # leading zeros read as decimal, too
            if tuple(int(part) for part in dotted.split(".")) == \
                    tuple(TEST_ADDRESSES[0].packed):
                found.add(TEST_ADDRESSES[0])
        for candidate in _V6ISH.findall(reading):
            try:
                address = ipaddress.ip_address(candidate.strip(":.") if "::" not in candidate
                                               else candidate)
            except ValueError:
                continue
            for seen in (address, getattr(address, "ipv4_mapped", None),
                         getattr(address, "sixtofour", None)):
                if seen in TEST_ADDRESSES:
                    found.add(seen)
    return found


class TornTail(unittest.TestCase):
    """A kill -9 in the middle of a write leaves a last line with no newline."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.path = os.path.join(self.dir, "events.jsonl")
        self.stderr = io.StringIO()

    def writer(self):
        writer = pixel.LogWriter(self.path, reporter=pixel.Reporter(self.stderr))
        self.addCleanup(writer.close)
        return writer

    def test_the_fragment_is_cut_at_start_and_kept_for_the_rejects_log(self):
        fragment = b'{"type":"track","pad":"' + b"x" * 200000   # longer than one read block
        with open(self.path, "wb") as handle:
            handle.write(b'{"a":1}\n{"b":2}\n' + fragment)
        writer = self.writer()
        self.assertEqual((writer.torn_tail, writer.torn_tail_bytes),
                         (fragment[:pixel.MAX_REJECT_RAW], len(fragment)))
        self.assertTrue(writer.write([b'{"c":3}\n']))
        with open(self.path, "rb") as handle:
            self.assertEqual(handle.read(), b'{"a":1}\n{"b":2}\n{"c":3}\n')
        self.assertIn("ended in a torn line (%d bytes" % len(fragment), self.stderr.getvalue())

    def test_a_whole_file_is_left_alone(self):
        for content in (b"", b'{"a":1}\n', b"no newline at all"):
            with self.subTest(content):
                with open(self.path, "wb") as handle:
                    handle.write(content)
                writer = self.writer()
                writer.close()   # the next case opens the file again
                with open(self.path, "rb") as handle:
                    self.assertEqual(handle.read(), b"" if content == b"no newline at all"
                                     else content)
                self.assertEqual(writer.torn_tail, content if content.endswith(b"l") else None)

    def test_a_huge_file_with_no_newline_is_refused_without_reading_it_through(self):
        with open(self.path, "wb") as handle:
            try:
                handle.truncate(64 * 1024 ** 3)   # sparse: 64 GiB of zeros, no newline
            except OSError as error:
                self.skipTest("no sparse 64 GiB file here: %s" % error)
        started = time.monotonic()
        with self.assertRaises(OSError) as caught:
            self.writer()
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertIn("is it a pixel log?", str(caught.exception))

    def test_the_recorder_writes_a_torn_tail_line(self):
        with open(self.path, "wb") as handle:
            handle.write(b'{"a":1}\n{"torn')
        rejects = pixel.LogWriter(os.path.join(self.dir, "rejects.jsonl"))
        self.addCleanup(rejects.close)
        recorder = pixel.Recorder(self.writer(), rejects, clock=lambda: T0)
        pixel.record_torn_tails(recorder)
        with open(rejects.path, "rb") as handle:
            (record,) = [json.loads(line) for line in handle]
        self.assertEqual((record["reason"], record["body"]), ("torn_tail", '{"torn'))
        self.assertEqual(record["detail"], "6 byte(s) cut from " + self.path)

    def test_an_anonymizing_recorder_quotes_no_address_out_of_a_torn_tail(self):
        with open(self.path, "wb") as handle:   # written before --anonymize-ip was set
            handle.write(b'{"a":1}\n{"context":{"ip":"\\u0032\\u0030\\u0033.0.113.77"')
        rejects = pixel.LogWriter(os.path.join(self.dir, "rejects.jsonl"))
        self.addCleanup(rejects.close)
        recorder = pixel.Recorder(self.writer(), rejects, clock=lambda: T0, anonymize_ip=True)
        pixel.record_torn_tails(recorder)
        (line,) = read_text(rejects.path).splitlines()
        self.assertEqual(json.loads(line)["body"], '{"context":{"ip":"203.0.113.0"')
        self.assertEqual(hidden_addresses(line), set())

    def test_a_file_that_is_not_a_pixel_log_is_not_cut(self):
        content = b"x" * (pixel.MAX_WRITE_BYTES + 1)   # no newline, more than one write
        with open(self.path, "wb") as handle:
            handle.write(content)
        with self.assertRaises(OSError) as caught:
            pixel.LogWriter(self.path)
        self.assertIn("is it a pixel log?", str(caught.exception))
        with open(self.path, "rb") as handle:
            self.assertEqual(handle.read(), content)

    def test_a_short_write_after_an_outside_truncate_adds_no_zeros(self):
        # logrotate's copytruncate empties the file under pixel; then the disk fills
        # mid-line (here: RLIMIT_FSIZE, in a child, with SIGXFSZ ignored).
        script = (
            "import os, resource, signal, sys; sys.path.insert(0, %r); import pixel\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "w = pixel.LogWriter(%r)\n"
            "assert w.write([b'{\"a\":\"' + b'x' * 3000 + b'\"}\\n'])\n"
            "os.truncate(w.path, 0)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))\n"
            "print(w.write([b'{\"b\":\"' + b'y' * 500 + b'\"}\\n']))\n" % (HERE, self.path))
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=30)
        self.assertEqual(result.stdout.strip(), "0", result.stderr)   # lines written
        with open(self.path, "rb") as handle:
            self.assertEqual(handle.read(), b"")

    def test_one_write_hands_the_kernel_at_most_a_megabyte(self):
        sizes = []

        class Counting(pixel.LogWriter):
            def _append(self, chunk):
                sizes.append(len(chunk))
                super()._append(chunk)

        writer = Counting(self.path)
        self.addCleanup(writer.close)
        line = b'{"pad":"' + b"x" * 2000 + b'"}\n'
        self.assertTrue(writer.write([line] * 3000))
        self.assertLessEqual(max(sizes), pixel.MAX_WRITE_BYTES)
        self.assertEqual(sum(sizes), 3000 * len(line))
        self.assertEqual(writer.written, 3000)


LINE_51 = b'{"pad":"%s"}\n' % (b"x" * 40)   # 51 bytes: two to a file of 110


class PathsThatMove(unittest.TestCase):
    def setUp(self):
        self.dir = temp_dir(self)

    def test_a_symlinked_log_rotates_its_target_and_keeps_writing_there(self):
        target_dir = os.path.join(self.dir, "data")
        os.mkdir(target_dir)
        link = os.path.join(self.dir, "events.jsonl")
        os.symlink(os.path.join(target_dir, "events.jsonl"), link)
        writer = pixel.LogWriter(link, max_bytes=100)
        self.addCleanup(writer.close)
        for number in range(10):
            self.assertTrue(writer.write([b'{"n":%d,"pad":"xxxxxxxxxxxxxxxxxxxx"}\n' % number]))
        self.assertTrue(os.path.islink(link))
        with open(link, "rb") as handle:   # through the link: the newest lines
            self.assertIn(b'"n":9', handle.read())
        self.assertGreater(len(os.listdir(target_dir)), 3)

    def test_a_renamed_folder_keeps_the_open_file(self):
        folder = os.path.join(self.dir, "logs")
        os.mkdir(folder)
        stderr = io.StringIO()
        now = [T0]
        writer = pixel.LogWriter(os.path.join(folder, "events.jsonl"),
                                 reporter=pixel.Reporter(stderr), clock=lambda: now[0])
        self.addCleanup(writer.close)
        self.assertTrue(writer.write([b"one\n"]))
        os.rename(folder, folder + ".old")
        now[0] += 2 * pixel.PATH_CHECK_INTERVAL
        self.assertTrue(writer.write([b"two\n"]))   # the path is gone: the grace begins
        now[0] += pixel.MOVED_GRACE   # past the grace, the path is tried, and cannot be opened
        self.assertTrue(writer.write([b"three\n"]))
        with open(os.path.join(folder + ".old", "events.jsonl"), "rb") as handle:
            self.assertEqual(handle.read(), b"one\ntwo\nthree\n")
        self.assertEqual(stderr.getvalue().count("still writing to the file it named"), 1)

    def two_lines_a_file(self):
        """(stderr, [its clock's now], a LogWriter rotating past 110 bytes, its path)."""
        stderr, now = io.StringIO(), [T0]
        path = os.path.join(self.dir, "events.jsonl")
        writer = pixel.LogWriter(path, max_bytes=110, reporter=pixel.Reporter(stderr),
                                 clock=lambda: now[0])
        self.addCleanup(writer.close)
        return stderr, now, writer, path

    def test_past_max_bytes_within_the_grace_of_an_outside_mv_a_new_file_is_made(self):
        # Nothing is at the path to rename: the mv was the rotation. The moved file was
        # written on past the limit, with "cannot rotate ...: No such file or directory".
        stderr, now, writer, path = self.two_lines_a_file()
        line = LINE_51
        self.assertTrue(writer.write([line]))
        os.rename(path, path + ".moved")
        now[0] += 2 * pixel.PATH_CHECK_INTERVAL
        self.assertTrue(writer.write([line]))   # the grace begins: the moved file is written
        self.assertTrue(writer.write([line]))   # past 110 bytes: a new file at the path
        self.assertEqual((read_bytes(path + ".moved"), read_bytes(path)), (line * 2, line))
        self.assertEqual(stderr.getvalue(), "")

    def test_a_copytruncate_leaves_no_empty_file_to_rotate(self):
        # A known seam until 2026-12-05: without --forward nothing measured the file after a
        # copytruncate, so the next write, by the size it had been, renamed the emptied file.
        stderr, now, writer, path = self.two_lines_a_file()
        self.assertEqual(writer.write([LINE_51, LINE_51]), 2)
        os.truncate(path, 0)   # logrotate's copytruncate, after its copy
        self.assertEqual(writer.write([LINE_51]), 1)
        self.assertEqual((pixel.pixel_rotations(path), read_bytes(path), writer.cuts),
                         ([], LINE_51, 1))
        self.assertEqual((writer.write([LINE_51]), writer.write([LINE_51])), (1, 1))   # past 110
        self.assertEqual([read_bytes(name) for name in pixel.pixel_rotations(path)],
                         [LINE_51 * 2])
        self.assertEqual((read_bytes(path), stderr.getvalue()), (LINE_51, ""))
        os.truncate(path, 0)
        self.assertIsNone(writer.rotate_now())   # an erase's: nothing to rotate in it
        self.assertEqual(len(pixel.pixel_rotations(path)), 1)

    def test_a_rotation_just_after_an_outside_swap_renames_no_file_but_its_own(self):
        # mv events.jsonl kept; a new file at the path (logrotate's create): a rotation before
        # the writer's next look renamed the new file, and named it as the one written, so
        # kept.jsonl was never known to be moved (an attack pass: 9 of 20 lost to kill -9).
        stderr, now, writer, path = self.two_lines_a_file()
        line = LINE_51
        self.assertTrue(writer.write([line, line]))
        os.rename(path, path + ".kept")
        with open(path, "wb") as handle:
            handle.write(b'{"other":1}\n')
        self.assertTrue(writer.write([line]))   # within PATH_CHECK_INTERVAL: no look yet
        self.assertEqual(read_bytes(path + ".kept"), line * 2)
        self.assertEqual(pixel.pixel_rotations(path), [])
        self.assertEqual(read_bytes(path), b'{"other":1}\n' + line)

    def test_reopen_keeps_the_old_file_if_the_path_cannot_be_opened(self):
        folder = os.path.join(self.dir, "logs")
        os.mkdir(folder)
        writer = pixel.LogWriter(os.path.join(folder, "events.jsonl"))
        self.addCleanup(writer.close)
        os.rename(folder, folder + ".old")
        with self.assertRaises(FileNotFoundError):
            writer.reopen()
        self.assertTrue(writer.write([b"kept\n"]))
        with open(os.path.join(folder + ".old", "events.jsonl"), "rb") as handle:
            self.assertEqual(handle.read(), b"kept\n")


class FailingDisk(unittest.TestCase):
    def test_dev_full_is_counted_reported_once_and_answered(self):
        stderr = io.StringIO()
        writer = pixel.LogWriter("/dev/full", reporter=pixel.Reporter(stderr))
        self.addCleanup(writer.close)
        for _ in range(5):
            self.assertFalse(writer.write([b"{}\n"]))
        self.assertEqual((writer.failed, writer.written, writer.failing), (5, 0, 5))
        self.assertEqual(stderr.getvalue().count("cannot write /dev/full"), 1)
        self.assertIn("No space left on device", stderr.getvalue())

    def test_missing_folder_fails_at_start(self):
        with self.assertRaises(FileNotFoundError):
            pixel.LogWriter("/nonexistent-folder/events.jsonl")


class ChangedUnderWrite(unittest.TestCase):
    """Another process deletes or renames the log in the moment between write()'s stat of
    the path and the write itself, or just after the write. The hook runs that change at
    exactly that point, on a real file."""

    def setUp(self):
        self.dir = temp_dir(self, "pixel-test-")
        self.path = os.path.join(self.dir, "events.jsonl")
        self.stderr = io.StringIO()

    def writer(self, before=(), after=(), clock=time.time):
        """A LogWriter whose next writes run `before` / `after` actions around os.write."""
        before, after = list(before), list(after)

        class Writer(pixel.LogWriter):
            def _append(self, chunk):
                if before:
                    before.pop(0)(self.path)
                super()._append(chunk)
                if after:
                    after.pop(0)(self.path)

        writer = Writer(self.path, reporter=pixel.Reporter(self.stderr), clock=clock)
        self.addCleanup(writer.close)
        return writer

    def read(self, path):
        with open(path, "rb") as handle:
            return handle.read().splitlines()

    def test_deleted_before_the_write(self):
        writer = self.writer(before=[os.remove])
        self.assertTrue(writer.write([b"one\n"]))
        self.assertEqual(self.read(self.path), [b"one"])
        self.assertTrue(writer.write([b"two\n"]))
        self.assertEqual(self.read(self.path), [b"one", b"two"])
        self.assertEqual((writer.written, writer.failed), (2, 0))

    def test_a_line_written_into_a_deleted_file_is_taken_back_out(self):
        writer = self.writer(before=[os.remove])
        held = os.open(self.path, os.O_RDONLY)   # as the forwarder or a shipper holds it
        self.addCleanup(os.close, held)
        self.assertTrue(writer.write([b"one\n"]))
        self.assertEqual(self.read(self.path), [b"one"])
        self.assertEqual(os.pread(held, 100, 0), b"", "the deleted file keeps no copy")

    def test_deleted_just_after_the_write(self):
        writer = self.writer(after=[os.remove])
        self.assertTrue(writer.write([b"one\n"]))
        self.assertEqual(self.read(self.path), [b"one"])

    def test_replaced_before_the_write(self):
        def replace(path):   # logrotate's "create": remove, then a new empty file
            os.remove(path)
            open(path, "wb").close()
        writer = self.writer(before=[replace])
        self.assertTrue(writer.write([b"one\n"]))
        self.assertEqual(self.read(self.path), [b"one"])

    def test_renamed_before_the_write_keeps_the_line_once(self):
        now = [T0]
        writer = self.writer(before=[lambda path: os.rename(path, path + ".1")],
                             clock=lambda: now[0])
        self.assertTrue(writer.write([b"one\n"]))
        now[0] += 2 * pixel.PATH_CHECK_INTERVAL
        self.assertTrue(writer.write([b"two\n"]))   # the path is gone: the grace begins
        now[0] += pixel.MOVED_GRACE
        self.assertTrue(writer.write([b"three\n"]))
        # The moved file still has a name: the line stays there, once, for the shipper
        # that follows it; so does the next, within MOVED_GRACE; then the path is opened.
        self.assertEqual(self.read(self.path + ".1"), [b"one", b"two"])
        self.assertEqual(self.read(self.path), [b"three"])

    def test_the_path_is_looked_at_once_an_interval(self):
        now = [T0]
        writer = self.writer(clock=lambda: now[0])
        writer.write([b"one\n"])
        os.rename(self.path, self.path + ".1")
        open(self.path, "wb").close()   # a new file at the path, as logrotate's create
        writer.write([b"two\n"])      # within the interval: still the renamed file
        now[0] += 2 * pixel.PATH_CHECK_INTERVAL
        writer.write([b"three\n"])
        self.assertEqual(self.read(self.path + ".1"), [b"one", b"two"])
        self.assertEqual(self.read(self.path), [b"three"])

    def test_deleted_every_time_is_a_failed_write(self):
        writer = self.writer(before=[os.remove] * pixel.RELINK_ATTEMPTS)
        self.assertFalse(writer.write([b"one\n"]))
        self.assertEqual((writer.written, writer.failed), (0, 1))
        self.assertIn("deleted each time it was written", self.stderr.getvalue())
        self.assertTrue(writer.write([b"two\n"]))
        self.assertEqual(self.read(self.path), [b"two"])


def fill_disk(test, folder):
    """Write zeros to a file in `folder` until the disk is full; return the file's path."""
    filler = os.path.join(folder, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 512):
            pass
    except OSError as error:
        test.assertEqual(error.errno, errno.ENOSPC)
    finally:
        os.close(fd)
    return filler


def mount_tmpfs(test, size, inodes=None):
    folder = temp_dir(test, "pixel-tmpfs-")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % size + (
        ",nr_inodes=%d" % inodes if inodes else ""), "tmpfs", folder], capture_output=True,
        text=True)
    if result.returncode:
        test.skipTest("cannot mount a tmpfs here (%s); FailingDisk uses /dev/full instead"
                      % result.stderr.strip())
    test.addCleanup(subprocess.run, ["umount", "-l", folder])
    return folder


@unittest.skipIf(pixel.fcntl is None, "flock")
class ReadersFlock(unittest.TestCase):
    """A log's flock against other processes' (here other descriptors'): a reader's shared
    one is waited out, a writer's exclusive one refused at once."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.path = os.path.join(self.dir, "events.jsonl")
        open(self.path, "ab").close()   # as a rotation makes the next file
        self.other = os.open(self.path, os.O_RDONLY)
        self.addCleanup(os.close, self.other)

    def test_a_readers_shared_flock_is_waited_out(self):
        # A backfill (or an erase's look) took a shared flock of the file a rotation had just
        # made: the pixel's flock failed, and the pixels it answered then were lost.
        fcntl.flock(self.other, fcntl.LOCK_SH)
        timer = threading.Timer(0.1, fcntl.flock, (self.other, fcntl.LOCK_UN))
        timer.start()
        self.addCleanup(timer.join)   # before the descriptor's close
        started = time.monotonic()
        writer = pixel.LogWriter(self.path)
        self.addCleanup(writer.close)
        self.assertGreaterEqual(time.monotonic() - started, 0.09)
        self.assertEqual(writer.write([b'{"n":1}\n']), 1)
        with self.assertRaises(BlockingIOError):   # exclusive, as a writer's
            fcntl.flock(self.other, fcntl.LOCK_SH | fcntl.LOCK_NB)

    def test_a_writers_exclusive_flock_is_refused_at_once(self):
        fcntl.flock(self.other, fcntl.LOCK_EX)
        started = time.monotonic()
        with self.assertRaisesRegex(OSError, "another process writes it"):
            pixel.LogWriter(self.path)
        self.assertLess(time.monotonic() - started, 0.05)


class DiskFullWriter(unittest.TestCase):
    """The LogWriter alone on a real, full 256 KiB tmpfs."""

    def setUp(self):
        self.dir = mount_tmpfs(self, 256 * 1024)
        self.stderr = io.StringIO()

    def fill(self):
        return fill_disk(self, self.dir)

    def test_after_a_failure_a_line_that_fits_the_last_block_is_written(self):
        # The attack on the room check: it asked for free blocks only, and refused lines that
        # fit in what the file's last block has left.
        writer = pixel.LogWriter(os.path.join(self.dir, "direct.jsonl"),
                                 reporter=pixel.Reporter(self.stderr))
        self.addCleanup(writer.close)
        self.assertEqual(writer.write([b"x" * 249 + b"\n"]), 1)
        self.fill()
        self.assertEqual(writer.write([b"y" * 20000 + b"\n"]), 0)
        self.assertEqual([writer.write([b"z" * 99 + b"\n"]) for _ in range(3)], [1, 1, 1])
        self.assertEqual(os.path.getsize(writer.path), 250 + 300)

    def test_short_write_is_cut_back_to_a_whole_line(self):
        writer = pixel.LogWriter(os.path.join(self.dir, "direct.jsonl"),
                                 reporter=pixel.Reporter(self.stderr))
        self.addCleanup(writer.close)
        self.fill()
        line = b'{"pad":"' + b"x" * 3000 + b'"}\n'
        results = [writer.write([line]) for _ in range(100)]
        self.assertIn(False, results)
        with open(writer.path, "rb") as handle:
            data = handle.read()
        self.assertEqual(len(data), results.count(True) * len(line))
        self.assertTrue(data == b"" or data.endswith(b"\n"))


def use_up_inodes(test, folder):
    """Make empty files in `folder` until its file system has no inode left; their paths."""
    made = []
    while True:
        try:
            os.close(os.open(os.path.join(folder, "inode%d" % len(made)), os.O_CREAT))
        except OSError as error:
            test.assertEqual(error.errno, errno.ENOSPC)
            return made
        made.append(os.path.join(folder, "inode%d" % len(made)))


class NoNewFile(unittest.TestCase):
    """A rotation with no inode left for the next file (a real tmpfs, nr_inodes): the log is
    not renamed (or, if the inode went between the look and the open, is put back), written
    on past --max-bytes, and rotated once one is free."""

    def setUp(self):
        self.dir = mount_tmpfs(self, 4 << 20, inodes=16)
        self.path = os.path.join(self.dir, "events.jsonl")
        self.stderr, self.now = io.StringIO(), [1000.0]
        self.writer = pixel.LogWriter(self.path, max_bytes=1000, reporter=pixel.Reporter(
            self.stderr), clock=lambda: self.now[0], readable=True)
        self.addCleanup(self.writer.close)
        self.fillers = use_up_inodes(self, self.dir)

    def logged(self):
        return sorted(name for name in os.listdir(self.dir) if name.startswith("events"))

    def test_the_lines_stay_in_the_log_till_a_new_file_can_be_made(self):
        # They were lost: the rename came first, then the open failed, and each write after it
        # tried again, while every pixel was answered.
        line = b'{"n":"%s"}\n' % (b"x" * 90)
        with unittest.mock.patch("os.rename", wraps=os.rename) as rename:
            self.assertEqual([self.writer.write([line]) for _ in range(30)], [1] * 30)
            self.now[0] += 1
            self.assertEqual(self.writer.write([line]), 1)
        # Not renamed and put back, a second later again: tail -F read the whole file anew
        # at each (an attack: 555 lines printed for 150 written).
        self.assertEqual(rename.call_count, 0)
        self.assertEqual(self.logged(), ["events.jsonl"])
        self.assertEqual(os.path.getsize(self.path), 31 * len(line))
        self.assertEqual(self.stderr.getvalue().count("cannot rotate %s: No space left on "
                                                      "device; writing on past --max-bytes"
                                                      % self.path), 1)
        self.assertEqual(self.writer.failed, 0)
        os.remove(self.fillers.pop())
        self.assertEqual(self.writer.write([line]), 1)   # tried again a second later, not yet
        self.assertEqual(self.logged(), ["events.jsonl"])
        self.now[0] += 1
        self.assertEqual(self.writer.write([line]), 1)
        rotated = [name for name in self.logged() if name != "events.jsonl"]
        self.assertEqual(len(rotated), 1)
        self.assertEqual(os.path.getsize(os.path.join(self.dir, rotated[0])), 32 * len(line))
        self.assertEqual(os.path.getsize(self.path), len(line))

    def test_an_inode_taken_between_the_look_and_the_open_puts_the_log_back(self):
        line = b'{"n":"%s"}\n' % (b"x" * 90)
        with unittest.mock.patch.object(pixel, "_probe_new_file"):   # it found one free
            self.assertEqual([self.writer.write([line]) for _ in range(12)], [1] * 12)
        self.assertEqual(self.logged(), ["events.jsonl"])   # linked back, or renamed (a tmpfs)
        self.assertEqual(os.path.getsize(self.path), 12 * len(line))
        self.assertIn("cannot rotate %s: No space left on device" % self.path,
                      self.stderr.getvalue())

    def test_an_erase_is_told_the_rotation_failed_not_that_the_log_was_empty(self):
        # rotate_now said None ("empty") when its rename failed: erase then left the live
        # log, and the person in it, alone.
        self.assertEqual(self.writer.write([b'{"userId":"u"}\n']), 1)
        with self.assertRaises(OSError):
            self.writer.rotate_now()
        self.assertEqual(self.logged(), ["events.jsonl"])
        self.assertEqual(self.writer.write([b'{"userId":"v"}\n']), 1)
        self.assertEqual(os.path.getsize(self.path), 30)

    def test_a_file_that_cannot_be_put_back_is_written_on_by_its_new_name(self):
        fd, identity = self.writer.follow()[:2]
        os.close(fd)
        line = b'{"n":"%s"}\n' % (b"x" * 90)
        with unittest.mock.patch("os.link", side_effect=FileExistsError(errno.EEXIST, "made")), \
                unittest.mock.patch.object(pixel, "_probe_new_file"):
            self.assertEqual([self.writer.write([line]) for _ in range(12)], [1] * 12)
        renamed = [name for name in self.logged() if name != "events.jsonl"]
        self.assertEqual(len(renamed), 1)
        self.assertFalse(os.path.exists(self.path))
        self.assertEqual(os.path.getsize(os.path.join(self.dir, renamed[0])), 12 * len(line))
        self.assertEqual(self.writer.changes(), [("renamed", None, identity,
                                                  os.path.join(self.dir, renamed[0]))])

    def test_a_deleted_log_with_no_inode_for_a_new_one_fails_the_write_and_says_so(self):
        # An rm of the log, its inode still held (by the writer): no file can be made at the
        # path. Writing on into the deleted file would lose the line; the write fails, said
        # as such (not "still writing to the file it named"), and the next write makes one.
        self.assertEqual(self.writer.write([b'{"n":0}\n']), 1)
        os.remove(self.path)
        self.now[0] += 1   # past PATH_CHECK_INTERVAL: the write looks at the path first
        self.assertEqual(self.writer.write([b'{"n":1}\n']), 0)
        self.assertEqual((self.writer.written, self.writer.failed), (1, 1))
        self.assertIn("cannot write %s: No space left on device" % self.path,
                      self.stderr.getvalue())
        self.assertNotIn("still writing to the file it named", self.stderr.getvalue())
        os.remove(self.fillers.pop())
        self.now[0] += 1
        self.assertEqual(self.writer.write([b'{"n":2}\n']), 1)
        with open(self.path, "rb") as handle:
            self.assertEqual(handle.read(), b'{"n":2}\n')


class NoDescriptorForTheNextFile(unittest.TestCase):
    def test_a_log_put_back_by_a_link_keeps_no_second_name(self):
        # Out of descriptors (RLIMIT_NOFILE, in a child) between the rotation's look and its
        # open of the next file: the log, renamed, is linked back at its path, its rotated
        # name removed: left, `cat events.jsonl*` would read each line twice (SecondName).
        folder = temp_dir(self)
        path = os.path.join(folder, "events.jsonl")
        script = (
            "import os, resource, sys, unittest.mock; sys.path.insert(0, %r); import pixel\n"
            "writer = pixel.LogWriter(%r, max_bytes=100, clock=lambda: 1000.0)\n"
            "line = b'{\"n\":\"' + b'x' * 40 + b'\"}\\n'\n"
            "print(writer.write([line, line]))\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(\n"
            "    resource.RLIMIT_NOFILE)[1]))\n"
            "held = []\n"
            "try:\n"
            "    while True:\n"
            "        held.append(os.open('/dev/null', os.O_RDONLY))\n"
            "except OSError:\n"
            "    pass\n"
            "with unittest.mock.patch.object(pixel, '_probe_new_file'):   # it found one\n"
            "    print(writer.write([line]))\n" % (HERE, path))
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=30)
        self.assertEqual(result.stdout.split(), ["2", "1"], result.stderr)
        self.assertEqual(result.stderr, "pixel: cannot rotate %s: Too many open files; writing "
                         "on past --max-bytes\n" % path)
        self.assertEqual(os.listdir(folder), ["events.jsonl"])
        self.assertEqual(os.stat(path).st_nlink, 1)
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), (b'{"n":"' + b"x" * 40 + b'"}\n') * 3)


class RotationProbe(unittest.TestCase):
    """The look for room before a rotation (_probe_new_file) against what else may be in the
    log's folder, at its first name, .LOG.probe (an attack on it: each case below failed)."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.log = os.path.join(self.dir, "x")
        self.writer = pixel.LogWriter(self.log, max_bytes=100,
                                      reporter=pixel.Reporter(io.StringIO()))
        self.addCleanup(self.writer.close)

    def fill(self):
        return [self.writer.write([b'{"e":"%s"}\n' % (b"a" * 60)]) for _ in range(4)]

    def test_a_fifo_there_holds_nothing(self):
        # Opened without O_NONBLOCK, it waited for a reader under the writer's lock: every
        # request hung, and SIGTERM could not stop pixel.
        os.mkfifo(os.path.join(self.dir, ".x.probe"))
        done = []
        thread = threading.Thread(target=lambda: done.append(self.fill()), daemon=True)
        thread.start()
        thread.join(10)
        self.assertEqual(done, [[1, 1, 1, 1]])
        self.assertEqual(self.writer.rotations, 3)

    def test_another_file_there_is_never_removed(self):
        # Another pixel's live log at that name lost its answered events at this one's
        # rotation.
        other = pixel.LogWriter(os.path.join(self.dir, ".x.probe"))
        self.addCleanup(other.close)
        self.assertEqual(other.write([b'{"answered":1}\n']), 1)
        self.assertEqual(self.fill(), [1, 1, 1, 1])
        self.assertEqual(self.writer.rotations, 3)
        with open(os.path.join(self.dir, ".x.probe"), "rb") as handle:
            self.assertEqual(handle.read(), b'{"answered":1}\n')
        self.assertEqual(sorted(name for name in os.listdir(self.dir) if "probe" in name),
                         [".x.probe"])   # its own probes are gone

    def test_a_folder_there_does_not_stop_rotation(self):
        os.mkdir(os.path.join(self.dir, ".x.probe"))
        self.assertEqual(self.fill(), [1, 1, 1, 1])
        self.assertEqual(self.writer.rotations, 3)

    # The third attack: a named probe was left by each kill -9 that came between its create
    # and its remove (8 in 50 kills), an inode each for good; its name, the log's and 17
    # characters more, was too long for a log of 232 characters, which then never rotated.
    @unittest.skipUnless(hasattr(os, "O_TMPFILE"), "O_TMPFILE is Linux's")
    def test_the_probe_has_no_name_to_leave_behind(self):
        real_open, named = os.open, []

        def spy(path, flags, *args):
            named.append(path != self.dir and "probe" in os.path.basename(path))
            return real_open(path, flags, *args)
        with unittest.mock.patch("os.open", spy):
            self.assertEqual(self.fill(), [1, 1, 1, 1])
        self.assertEqual(self.writer.rotations, 3)
        self.assertNotIn(True, named)

    def test_without_o_tmpfile_a_short_name_of_its_own(self):
        real_open = os.open

        def no_tmpfile(path, flags, *args):
            if flags & getattr(os, "O_TMPFILE", 0) == getattr(os, "O_TMPFILE", -1):
                raise OSError(errno.EOPNOTSUPP, "not here")
            return real_open(path, flags, *args)
        log = os.path.join(self.dir, "e" * 234)   # its rotated names are 255 characters
        writer = pixel.LogWriter(log, max_bytes=100, clock=itertools.count(1000).__next__)
        self.addCleanup(writer.close)
        with unittest.mock.patch("os.open", no_tmpfile), \
                unittest.mock.patch("os.getpid", return_value=4194304):   # pid_max's digits
            self.assertEqual([writer.write([b'{"e":"%s"}\n' % (b"a" * 60)]) for _ in range(3)],
                             [1, 1, 1])
        self.assertEqual(writer.rotations, 2)
        self.assertEqual([name for name in os.listdir(self.dir) if "probe" in name], [])

    def test_with_a_forwarder_it_looks_for_two_descriptors(self):
        # One was free, two were needed (the forwarder's copy): the next file was made, its
        # copy failed, and the put-back found that empty file at the log's name.
        fd = self.writer.follow()[0]
        os.close(fd)
        self.writer.pinned = None   # (no --keep here)
        real_dup, calls = os.dup, []

        def one_descriptor_left(fd):
            calls.append(fd)
            raise OSError(errno.EMFILE, "Too many open files")
        with unittest.mock.patch("os.dup", one_descriptor_left), \
                unittest.mock.patch("os.rename", wraps=os.rename) as rename:
            self.assertEqual(self.fill(), [1, 1, 1, 1])
        self.assertTrue(calls)
        self.assertEqual((rename.call_count, self.writer.rotations), (0, 0))
        self.assertEqual(os.listdir(self.dir), ["x"])


class NoNewFileProcess(unittest.TestCase):
    @soak   # a second: the next rotation is tried a second after a failed one
    def test_every_answered_pixel_is_on_disk_through_a_kill(self):
        folder = mount_tmpfs(self, 4 << 20, inodes=24)
        log = os.path.join(folder, "events.jsonl")
        process = subprocess.Popen(
            [sys.executable, PIXEL_RUN, "--host", "127.0.0.1", "--port", "0", "--log", log,
             "--max-bytes", "2000", "--cpu", "none"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.addCleanup(Process.reap, process)
        port = int(re.search(r":(\d+)/", process.stdout.readline()).group(1))
        fillers = use_up_inodes(self, folder)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(connection.close)

        sent = []

        def send(count):
            for _ in range(count):
                connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e%d&p=%s"
                                   % (len(sent), "x" * 200))
                response = connection.getresponse()
                self.assertEqual((response.status, response.read()), (200, pixel.GIF))
                sent.append("e%d" % len(sent))
            return [name for name in os.listdir(folder) if name.startswith("events.jsonl.")]
        self.assertEqual(send(40), [])
        os.remove(fillers.pop())
        self.assertTrue(wait_until(lambda: send(1)))   # tried again a second after a failure
        send(5)
        process.kill()
        process.wait()
        events = []
        for name in os.listdir(folder):
            if name.startswith("events"):
                with open(os.path.join(folder, name), "rb") as handle:
                    events += [json.loads(line)["event"] for line in handle]
        self.assertEqual(sorted(events), sorted(sent))
        self.assertIn("cannot rotate %s: No space left on device" % log, process.stderr.read())


class SecondName(unittest.TestCase):
    """A kill -9 between _put_back's link and its remove leaves the live log with a rotated
    name too: `cat events.jsonl*` read its lines twice (report and the forwarder count a file
    once), and an erase split it into two files, one still holding the person."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.log = os.path.join(self.dir, "events.jsonl")
        with open(self.log, "wb") as handle:
            handle.write(b"".join(log_event(number, userId="u%d" % number)
                                  for number in range(3)))
        self.second = self.log + ".20261205T000000.000Z"
        os.link(self.log, self.second)

    def erase(self, *names):
        return main_in_this_process(["erase", "--user-id", "u1", "--apply"] + list(names))

    def test_an_erase_of_both_names_erases_the_file_once_and_removes_the_second(self):
        # It waited 60 s for a pixel that was not there (erase's own flock, by the other
        # name), exited 1, and left the person in the second name, now a file of its own.
        status, out, err = self.erase(self.log, self.second)
        self.assertEqual(status, 0, err)
        self.assertIn("events.jsonl: erased 1 of 3 line(s)", out)
        self.assertIn("erase: %s is a second name of %s: erased once, as that\n"
                      % (self.second, self.log), err)
        self.assertEqual(sorted(glob.glob(self.log + "*")), [self.log])
        self.assertEqual([json.loads(line)["userId"] for line in read_bytes(
            self.log).splitlines()], ["u0", "u2"])

    def test_an_erase_of_the_live_log_alone_removes_its_second_name(self):
        status, _, err = self.erase(self.log)
        self.assertEqual(status, 0, err)
        self.assertIn("removed %s, a second name of %s" % (self.second, self.log), err)
        self.assertEqual(sorted(glob.glob(self.log + "*")), [self.log])

    def test_the_second_name_given_twice_or_first_is_still_erased_once(self):
        # The attack on the fix: list.remove took one of two copies, and the 60 s came back.
        status, out, err = self.erase(self.second, self.second, self.log)
        self.assertEqual(status, 0, err)
        self.assertIn("events.jsonl: erased 1 of 3 line(s)", out)
        self.assertEqual(sorted(glob.glob(self.log + "*")), [self.log])

    def test_a_file_with_other_names_is_left_whole_not_split(self):
        # The attack on the fix: erased by one name (the second alone, two rotated names of
        # one file, a logrotate name linked by hand), a file was replaced by that name and
        # stayed whole by the others: the person kept, the rest written twice; or, by its
        # own flock through the other name, erase waited 60 s for a pixel that was not there.
        os.remove(self.log)
        other = self.log + ".1"
        os.link(self.second, other)
        said = ("erase: %s: it has 2 names (hard links): erased by one, it would stay whole by "
                "the others; remove those (`find %s -samefile %s` lists the ones beside it), "
                "then erase again\n" % (self.second, self.dir, self.second))
        for names in ([self.second], [self.second, other]):
            with self.subTest(names):
                started = time.monotonic()
                status, out, err = self.erase(*names)
                self.assertLess(time.monotonic() - started, pixel.NEXT_FILE_GRACE + 5)
                self.assertEqual(status, 1)
                self.assertIn(said, err)
                self.assertIn("left alone (see stderr), matching 1 of 3", out)
                self.assertTrue(os.path.samefile(self.second, other))
                self.assertEqual(len(read_bytes(other).splitlines()), 3)
        self.assertIn("erase: %s: it has 2 names" % other, err)   # held by the other: judged
        # A dry run says so too; a file with none of the person's lines is no failure.
        status, out, err = main_in_this_process(["erase", "--user-id", "u1", self.second])
        self.assertEqual((status, err), (1, "pixel: " + said))
        status, out, err = main_in_this_process(["erase", "--user-id", "nobody", "--apply",
                                                 self.second])
        self.assertEqual(status, 0, err)

    def test_a_second_ctrl_c_in_its_clean_up_is_one_line_not_a_traceback(self):
        # The attack pass: 3 of 11 interrupts under load landed in EraseRequest.finish.
        with unittest.mock.patch("pixel.EraseRequest.finish", side_effect=KeyboardInterrupt):
            status, out, err = self.erase(self.log)
        self.assertEqual(status, 130)
        self.assertTrue(err.endswith("\npixel: erase: stopped\n"), err)

    def test_a_gzip_beside_it_is_said_not_raced(self):
        # The attack: a cron's gzip began on a rotated file just before erase; it wrote the
        # .gz from the old file, person included, and removed erase's new one: exit 0.
        os.remove(self.second)
        with open(self.log + ".gz", "wb") as handle:   # under way: it removes the file last
            handle.write(gzip.compress(b""))
        status, out, err = self.erase(self.log)
        self.assertEqual(status, 1)
        self.assertIn("erase: %s: %s.gz is beside it: a gzip of it may be under way; erase "
                      "%s.gz once it is done" % (self.log, self.log, self.log), err)
        self.assertEqual(len(read_bytes(self.log).splitlines()), 3)
        os.remove(self.log + ".gz")
        replace = os.replace

        def gzip_began(source, target):
            if target == self.log:
                with open(self.log + ".gz", "wb") as handle:
                    handle.write(gzip.compress(read_bytes(self.log)))
            return replace(source, target)
        with unittest.mock.patch("os.replace", gzip_began):
            status, out, err = self.erase(self.log)
        self.assertEqual(status, 1)
        self.assertIn("erase: %s: erased, but a gzip of it began meanwhile, from the old file: "
                      "erase %s.gz once it is done" % (self.log, self.log), err)

    def test_a_file_of_three_names_is_no_stopped_rotation_and_keeps_them(self):
        # The attack: a dry run took both rotation names for second names and said "would
        # erase", while --apply, which removes a name only from a file of two, refused.
        third = self.log + ".20261206T000000.000Z"
        os.link(self.log, third)
        names = sorted(glob.glob(self.log + "*"))
        for apply in ([], ["--apply"]):
            with self.subTest(apply=apply):
                status, out, err = main_in_this_process(["erase", "--user-id", "u1"] + apply +
                                                        names)
                self.assertEqual((status, err.count("it has 3 names")), (1, 3), err)
                self.assertNotIn("removed", err)
        self.assertTrue(os.path.samefile(self.log, third) and
                        os.path.samefile(self.log, self.second))

    def test_a_name_given_while_erase_runs_is_said(self):
        # The attack on that: a link made after erase's look (a cp -al backup) kept the
        # person by its name, and erase said it was done.
        link = os.path.join(self.dir, "backup.jsonl")
        replace = os.replace

        def linked_first(source, target):
            if target == self.log:
                os.link(self.log, link)
            return replace(source, target)
        with unittest.mock.patch("os.replace", linked_first):
            status, out, err = self.erase(self.log)
        self.assertEqual(status, 1)
        self.assertIn("erase: %s: erased, but a name given it meanwhile keeps the old file, "
                      "person included: erase that name too (inode %d on the file system of %s"
                      % (self.log, os.stat(link).st_ino, self.dir), err)
        self.assertEqual(len(read_bytes(link).splitlines()), 3)
        # Said as erased, not "left alone" (the attack after it): its path holds the new file.
        self.assertIn("events.jsonl: erased 1 of 3 line(s)", out)
        self.assertEqual(len(read_bytes(self.log).splitlines()), 2)

    def test_a_held_file_deleted_by_its_name_meanwhile_but_kept_by_another_is_said(self):
        # The attack: --keep deleted a rotated file erase held (its own rotation request made
        # room), and erase called it "gone", exit 0, while a backup's hard link kept it.
        backup = os.path.join(self.dir, "backup.jsonl")
        os.link(self.second, backup)
        erase_file = pixel.erase_file

        def deleted_first(path, *args, **kwargs):
            if path == self.second:
                os.remove(self.second)
            return erase_file(path, *args, **kwargs)
        os.remove(self.log)
        with unittest.mock.patch("pixel.erase_file", deleted_first):
            status, out, err = self.erase(self.second)
        self.assertEqual(status, 1)
        self.assertIn("erase: %s: cannot erase it: deleted by this name since, but another "
                      "name keeps it (inode %d: `find MOUNT -xdev -inum %d`): erase that one\n" % (
                          self.second, os.stat(backup).st_ino, os.stat(backup).st_ino), err)
        self.assertNotIn("gone since", err)

    def test_a_dry_run_counts_the_file_once_and_changes_nothing(self):
        here = os.getcwd()
        self.addCleanup(os.chdir, here)
        os.chdir(self.dir)   # the names as a shell's glob gives them, and absolute
        for names in ([self.log, self.second], glob.glob("events.jsonl*")):
            with self.subTest(names):
                status, out, err = main_in_this_process(["erase", "--user-id", "u1"] + names)
                self.assertEqual((status, out.count("would erase 1 of 3")), (0, 1), err)
                self.assertTrue(os.path.samefile(self.log, self.second))

    def test_a_kill_between_the_put_backs_link_and_remove_is_undone_at_the_next_start(self):
        folder = temp_dir(self)
        log = os.path.join(folder, "events.jsonl")
        with open(log, "wb") as handle:
            handle.write(b"".join(log_event(number) for number in range(3)))
        os.link(log, log + ".20261205T000000.000Z")
        older = log + ".20261204T000000.000Z"
        with open(older, "wb") as handle:
            handle.write(log_event(3))
        process, port = start_pixel(self, "--log", log, stderr=subprocess.PIPE)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(connection.close)
        connection.request("GET", "/v1/pixel/track?writeKey=K&userId=u&event=e")
        self.assertEqual(connection.getresponse().read(), pixel.GIF)
        process.kill()
        process.wait()
        self.assertIn("removed %s.20261205T000000.000Z, a second name of %s: a rotation was "
                      "stopped as it put the log back\n" % (log, log), process.stderr.read())
        process.stderr.close()
        names = sorted(glob.glob(log + "*"))
        self.assertEqual(names, [log, older])
        status, out, err = main_in_this_process(["report", "--format", "json"] + names)
        self.assertEqual((status, json.loads(out)["events"]), (0, 5), err)


class TakenBack(unittest.TestCase):
    """LogWriter.write takes a failed call's lines back: only its own, never past the end."""

    def test_a_copytruncate_between_two_chunks_leaves_no_zeros(self):
        # The attack on the take-back: it truncated to where the call began, past the end of
        # a file emptied between its chunks, and filled 8,000 bytes with NULs.
        path = os.path.join(temp_dir(self), "events.jsonl")
        writer = pixel.LogWriter(path, reporter=pixel.Reporter(io.StringIO()))
        self.addCleanup(writer.close)
        writer.write([b"{}\n"] * 4000)
        real, calls = writer._append_linked, []

        def append(chunk):
            calls.append(len(chunk))
            if len(calls) == 2:
                os.truncate(path, 0)   # a copytruncate, between the chunks
                raise OSError(errno.ENOSPC, "No space left on device")
            real(chunk)
        writer._append_linked = append
        # The first chunk's 1,048 lines went into the copy: they stay, counted as written.
        self.assertEqual(writer.write([b"x" * 999 + b"\n"] * 1500), 1048)   # two chunks
        self.assertEqual(len(calls), 2)
        self.assertEqual(os.path.getsize(path), 0)
        writer._append_linked = real
        self.assertEqual(writer.write([b"{}\n"]), 1)
        with open(path, "rb") as handle:
            self.assertEqual(handle.read(), b"{}\n")

    def test_a_line_another_process_appended_is_never_cut(self):
        # The third attack: an `echo >>` between two chunks, then a failure: the take-back
        # cut the echoed line and left a torn piece of the first chunk.
        path = os.path.join(temp_dir(self), "events.jsonl")
        writer = pixel.LogWriter(path, reporter=pixel.Reporter(io.StringIO()))
        self.addCleanup(writer.close)
        real, calls = writer._append_linked, []

        def append(chunk):
            calls.append(len(chunk))
            if len(calls) == 2:
                with open(path, "ab") as handle:
                    handle.write(b'{"marker":1}\n')
                raise OSError(errno.ENOSPC, "No space left on device")
            real(chunk)
        writer._append_linked = append
        self.assertEqual(writer.write([b'{"x":"' + b"x" * 991 + b'"}\n'] * 1500), 1048)
        with open(path, "rb") as handle:
            lines = handle.read().split(b"\n")
        self.assertEqual((len(lines), lines[-2], lines[-1]), (1050, b'{"marker":1}', b""))
        self.assertTrue(all(json.loads(line) for line in lines[:-1]))

    def test_after_a_failure_a_write_is_tried_once_a_second_under_steady_traffic(self):
        # The third attack: each write the room check skipped counted as a failure, so under
        # requests less than 1 s apart none was tried again (a reserve fstatvfs cannot see).
        clock = [100.0]
        writer = pixel.LogWriter(os.path.join(temp_dir(self), "e.jsonl"), clock=lambda: clock[0],
                                 reporter=pixel.Reporter(io.StringIO()))
        self.addCleanup(writer.close)
        real, tried = writer._append_linked, []

        def append(chunk):
            tried.append(clock[0])
            if len(tried) == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(chunk)
        writer._append_linked = append
        results = []
        with unittest.mock.patch.object(pixel, "_room", return_value=False):
            for step in range(6):   # every 0.3 s
                clock[0] = 100.0 + 0.3 * step
                results.append(writer.write([b"{}\n"]))
        self.assertEqual(results, [0, 0, 0, 0, 1, 1])
        self.assertEqual(tried, [100.0, 101.2, 101.5])

    def test_a_copytruncate_before_a_call_is_no_place_to_take_back_to(self):
        # The second attack: the writer's end was the one from before a copytruncate between
        # two calls, and a take-back to it cut the call's first chunk mid-line (a torn line,
        # and 206 events twice after the retry).
        path = os.path.join(temp_dir(self), "events.jsonl")
        writer = pixel.LogWriter(path, reporter=pixel.Reporter(io.StringIO()))
        self.addCleanup(writer.close)
        writer.write([b"{}\n"] * 100000)
        os.truncate(path, 0)   # a copytruncate, between two calls
        real, calls = writer._append_linked, []

        def append(chunk):
            calls.append(len(chunk))
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(chunk)
        writer._append_linked = append
        self.assertEqual(writer.write([b"x" * 999 + b"\n"] * 1500), 0)
        self.assertEqual(os.path.getsize(path), 0)


def chattr(test, flag, path):
    """Set the file attribute `flag` ("a": append-only, "i": immutable) of the file at `path`,
    undone at cleanup: a real file system refuses to cut, rename or remove it (EPERM), as no
    mock could. Skips where chattr or the attribute is missing (.ci/run installs chattr)."""
    try:
        result = subprocess.run(["chattr", "+" + flag, path], capture_output=True, text=True)
    except FileNotFoundError:
        test.skipTest("no chattr here (Debian's e2fsprogs)")
    if result.returncode:
        test.skipTest("cannot chattr +%s %s (%s)" % (flag, path, result.stderr.strip()))
    test.addCleanup(subprocess.run, ["chattr", "-" + flag, path], capture_output=True)


class AppendOnlyLog(unittest.TestCase):
    """The cuts a LogWriter makes to take back what a failed write left (a torn line, a failed
    call's lines), refused by the file system: an append-only file on a real, full tmpfs."""

    def setUp(self):
        self.dir = mount_tmpfs(self, 4 << 20)
        self.path = os.path.join(self.dir, "events.jsonl")
        self.stderr, self.now = io.StringIO(), [T0]
        self.writer = pixel.LogWriter(self.path, reporter=pixel.Reporter(self.stderr),
                                      clock=lambda: self.now[0])
        self.addCleanup(self.writer.close)

    def read(self):
        with open(self.path, "rb") as handle:
            return handle.read()

    def test_a_torn_line_that_could_not_be_cut_is_cut_before_the_next_line_is_written(self):
        # A short write on a full disk, and its cut refused: the next write must not glue
        # its line to the torn piece (one garbled line, the event in it lost to readers).
        self.assertEqual(self.writer.write([b'{"n":0}\n']), 1)
        filler = fill_disk(self, self.dir)
        chattr(self, "a", self.path)
        self.assertEqual(self.writer.write([b'{"pad":"' + b"x" * 8000 + b'"}\n']), 0)
        self.assertGreater(os.path.getsize(self.path), 8, "a torn piece is left")
        self.assertIn("cannot write %s: Operation not permitted" % self.path,
                      self.stderr.getvalue())
        subprocess.run(["chattr", "-a", self.path], check=True)
        os.remove(filler)
        self.now[0] += 1
        self.assertEqual(self.writer.write([b'{"n":2}\n']), 1)
        self.assertEqual(self.read(), b'{"n":0}\n{"n":2}\n')
        self.assertEqual((self.writer.written, self.writer.failed), (2, 1))

    def test_lines_of_a_failed_call_that_cannot_be_taken_back_are_counted_as_written(self):
        # The first chunk (1 MiB) fits, the second finds the disk full, and the first cannot
        # be cut: its lines are on disk, so write() says so (the recorder puts them in the
        # dedupe window, and the client's retry writes only the rest), not 0.
        chattr(self, "a", self.path)
        filler = fill_disk(self, self.dir)
        os.truncate(filler, os.path.getsize(filler) - pixel.MAX_WRITE_BYTES)   # 256 pages free
        lines = [b'{"n":%04d,"pad":"%s"}\n' % (number, b"x" * 4076) for number in range(260)]
        self.assertEqual({len(line) for line in lines}, {4096})
        self.assertEqual(self.writer.write(lines), 256)
        self.assertEqual(self.read(), b"".join(lines[:256]))
        self.assertEqual((self.writer.written, self.writer.failed), (256, 4))
        self.assertIn("cannot write %s: No space left on device (4 line(s) lost so far"
                      % self.path, self.stderr.getvalue())

    def test_a_second_name_that_cannot_be_removed_is_said_and_the_log_still_starts(self):
        # remove_second_name at start: a pixel that could not remove it refused to start.
        self.writer.write([log_event(0)])
        self.writer.close()
        second = self.path + ".20261205T000000.000Z"
        os.link(self.path, second)
        chattr(self, "a", self.path)   # both names: one inode
        writer = pixel.LogWriter(self.path, reporter=pixel.Reporter(self.stderr))
        self.addCleanup(writer.close)
        self.assertIn("cannot remove %s, a second name of %s: Operation not permitted"
                      % (second, self.path), self.stderr.getvalue())
        self.assertEqual(writer.write([log_event(1)]), 1)
        self.assertEqual(self.read(), log_event(0) + log_event(1))
        self.assertTrue(os.path.samefile(self.path, second))

    def test_an_empty_log_a_failed_start_cannot_remove_or_finds_gone_is_no_new_error(self):
        # close(discard=True) runs as a start fails: an error of its own hid the start's.
        self.writer.close(discard=True)
        self.assertFalse(os.path.exists(self.path))
        kept = pixel.LogWriter(self.path, reporter=pixel.Reporter(self.stderr))
        chattr(self, "a", self.path)
        kept.close(discard=True)
        self.assertTrue(os.path.exists(self.path))
        self.assertEqual(self.stderr.getvalue(), "pixel: cannot remove %s, made by a start "
                         "that failed: Operation not permitted\n" % self.path)
        subprocess.run(["chattr", "-a", self.path], check=True)
        os.remove(self.path)
        gone = pixel.LogWriter(self.path, reporter=pixel.Reporter(self.stderr))
        os.remove(self.path)   # by someone else, before the failed start's clean-up
        gone.close(discard=True)
        self.assertEqual(self.stderr.getvalue().count("cannot remove"), 1)


def write_file(folder, name, text):
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def load_bench(name):
    """A module of bench/ (the generators the bench and these tests share)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, "bench", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BAD_RANGE_LINES = [
    # name, line 3 of a ranges file, what the error says
    ("an ASN", "asn:22843           all     probable  proofpoint", "'asn:22843' is not a CIDR"),
    ("a name", "mask-api.icloud.com,GB", "is not a CIDR"),
    ("an octet over 255", "172.224.256.0/27,GB", "is not a CIDR"),
    ("a leading zero", "172.224.026.0/27,GB", "is not a CIDR"),
    ("three octets", "172.224.226/24,GB", "is not a CIDR"),
    ("a prefix over 32", "172.224.226.0/33,GB", "a prefix longer than /32"),
    ("a prefix over 128", "2a02:26f7::/129,GB", "a prefix longer than /128"),
    ("a negative prefix", "172.224.226.0/-1,GB", "not a prefix length"),
    ("an empty prefix", "172.224.226.0/,GB", "not a prefix length"),
    ("a fullwidth digit", "172.224.226.0/\uff12\uff17,GB", "not ASCII"),
    ("a mapped prefix under 96", "::ffff:172.224.226.0/95", "shorter than /96"),
    ("a zone", "fe80::1%eth0/64", "is not a CIDR"),
    ("a NUL", "172.224.226.0\0/27", "is not a CIDR"),
    ("a quoted CIDR", '"172.224.226.0/27",GB', "is not a CIDR"),
]


class RangeFiles(unittest.TestCase):
    """--machine-ranges files: Apple's list as it is, lists in other shapes, and lines that
    are not ranges, each refused with its file and line."""

    def setUp(self):
        self.dir = temp_dir(self)

    def load(self, text, label="apple_mpp"):
        return pixel.load_ranges([(label, write_file(self.dir, "ranges.csv", text))])

    def test_apples_format_and_others_load_as_they_are(self):
        ranges = self.load("\ufeff172.224.226.0/27,GB,GB-EN,London,\r\n"
                           "\n"
                           "# a comment\n"
                           "   # an indented one\n"
                           "2a02:26f7:b3c0:4000::/64,GB,GB-EN,London,\n"
                           "104.28.0.24/31,BR,BR-SP,S\u00e3o Paulo,\n"
                           "40.92.0.0/15        all     microsoft-365-protection\n"
                           "203.0.113.7\n"
                           "2001:DB8::1\n"
                           "198.51.100.77/24,host bits set\n"
                           "::ffff:192.0.2.0/120,mapped\n"
                           "  10.1.2.0/24  \t,leading space")
        self.assertEqual(ranges.counts, {"apple_mpp": 9})
        for address, found in (("172.224.226.0", True), ("172.224.226.31", True),
                               ("172.224.226.32", False), ("172.224.225.255", False),
                               ("2a02:26f7:b3c0:4000::", True),
                               ("2a02:26f7:b3c0:4000:ffff:ffff:ffff:ffff", True),
                               ("2a02:26f7:b3c0:4001::", False),
                               ("2a02:26f7:b3c0:3fff:ffff:ffff:ffff:ffff", False),
                               ("104.28.0.25", True), ("104.28.0.26", False),
                               ("40.93.255.255", True), ("203.0.113.7", True),
                               ("203.0.113.8", False), ("2001:db8::1", True),
                               ("2001:db8::2", False), ("198.51.100.1", True),
                               ("192.0.2.9", True), ("::ffff:192.0.2.9", True),
                               ("10.1.2.3", True), ("::ffff:172.224.226.1", True)):
            with self.subTest(address):
                self.assertEqual(ranges.find(address), "apple_mpp" if found else None)
        self.assertIsNone(ranges.find("172.224.226.1", ("scanner",)))

    def test_a_bad_line_names_its_file_and_line(self):
        for name, line, message in BAD_RANGE_LINES:
            with self.subTest(name):
                path = write_file(self.dir, "list.csv", "172.224.226.0/27,GB\n# fine\n%s\n"
                                  "10.0.0.0/8\n" % line)
                with self.assertRaises(ValueError) as caught:
                    pixel.load_ranges([("scanner", path)])
                self.assertIn("%s line 3: " % path, str(caught.exception))
                self.assertIn(message, str(caught.exception))

    def test_a_download_cut_short_is_refused(self):
        path = write_file(self.dir, "egress.csv", "172.224.226.0/27,GB,GB-EN,London,\n"
                                                  "2a02:26f7:b3c0:40")
        with self.assertRaisesRegex(ValueError, re.escape(path) + " line 2: "):
            pixel.load_ranges([("apple_mpp", path)])

    def test_a_long_line_is_refused_unread(self):
        for name, text, line in (("a long line", "10.0.0.0/8\n" + "1" * 5000 + "\n", 2),
                                 ("no newline", "7" * (3 << 20), 1),
                                 ("a long last line", "10.0.0.0/8\n" + "1" * 5000, 2)):
            with self.subTest(name):
                path = write_file(self.dir, "long.csv", text)
                with self.assertRaisesRegex(ValueError, "%s line %d: longer than 4096 bytes"
                                            % (re.escape(path), line)):
                    pixel.load_ranges([("scanner", path)])
        # 4096 bytes is not too long: a CIDR and a long tail.
        ranges = self.load("10.0.0.0/8," + "x" * 4085 + "\n")
        self.assertEqual(ranges.find("10.9.9.9"), "apple_mpp")

    def test_several_files_of_one_label_are_one_set(self):
        ranges = pixel.load_ranges([
            ("scanner", write_file(self.dir, "eop.txt", "40.92.0.0/15 all eop\n")),
            ("scanner", write_file(self.dir, "barracuda.txt", "209.222.82.0/24 all egd\n"
                                                              "40.92.0.0/16 again\n")),
            ("apple_mpp", write_file(self.dir, "apple.csv", "209.222.82.0/25,US\n"))])
        self.assertEqual(ranges.counts, {"scanner": 3, "apple_mpp": 1})
        self.assertEqual([ranges.find(address) for address in
                          ("40.93.0.1", "209.222.82.200", "209.222.82.1")],
                         ["scanner", "scanner", "apple_mpp"])
        self.assertEqual(ranges.find("209.222.82.1", ("scanner",)), "scanner")

    def test_too_many_ranges(self):
        paths = [("scanner", write_file(self.dir, "a.txt", "10.0.0.0/24\n" * 6)),
                 ("apple_mpp", write_file(self.dir, "b.csv", "10.0.1.0/24\n" * 6))]
        with unittest.mock.patch("pixel.MAX_RANGES", 11):
            with self.assertRaisesRegex(ValueError, "b.csv line 6: more than 11 ranges"):
                pixel.load_ranges(paths)
        with unittest.mock.patch("pixel.MAX_RANGES", 12):
            self.assertEqual(pixel.load_ranges(paths).counts, {"scanner": 6, "apple_mpp": 6})

    def test_what_is_not_a_file(self):
        fifo = os.path.join(self.dir, "fifo")
        os.mkfifo(fifo)
        for path, message in ((fifo, "a FIFO"), (self.dir, "a directory"),
                              (os.path.join(self.dir, "missing.csv"), "No such file")):
            with self.subTest(path):
                started = time.monotonic()
                with self.assertRaisesRegex(OSError, message):
                    pixel.load_ranges([("scanner", path)])
                self.assertLess(time.monotonic() - started, 5)   # a FIFO never blocks

    def test_lookups_agree_with_ipaddress(self):
        # Nested, overlapping, adjacent and duplicate networks of both families, in one
        # label, against addresses near their edges.
        generator = random.Random(21)
        networks, lines = [], []
        for _ in range(300):
            if generator.random() < 0.5:
                base = ipaddress.ip_address("10.0.0.0") + generator.randrange(1 << 16)
                prefix = generator.randrange(16, 33)
            else:
                base = ipaddress.ip_address("2001:db8::") + (generator.randrange(1 << 16) << 56)
                prefix = generator.randrange(40, 129)
            network = ipaddress.ip_network("%s/%d" % (base, prefix), strict=False)
            networks.append(network)
            lines.append("%s,XX\n" % network)
        ranges = self.load("".join(lines), "scanner")
        probes = []
        for network in networks:
            for offset in (-1, 0, 1):
                for edge in (network.network_address, network.broadcast_address):
                    try:
                        probes.append(edge + offset)
                    except ValueError:   # past the end of the family's space
                        pass
        probes += [ipaddress.ip_address("10.0.0.0") + generator.randrange(1 << 17)
                   for _ in range(2000)]
        for address in probes:
            inside = any(address in network for network in networks)
            self.assertEqual(ranges.find(str(address)), "scanner" if inside else None,
                             str(address))
        self.assertGreater(sum(ranges.find(str(address)) is None for address in probes), 100)

    @soak
    def test_an_apple_sized_list(self):
        rows = load_bench("opens").apple_like_rows(290000)
        path = write_file(self.dir, "egress-ip-ranges.csv", "\n".join(rows) + "\n")
        started = time.perf_counter()
        ranges = pixel.load_ranges([("apple_mpp", path)])
        self.assertLess(time.perf_counter() - started, 10)   # about 0.7 s: see the README
        self.assertEqual(ranges.counts, {"apple_mpp": 290000})
        for row in rows[::97]:
            network = ipaddress.ip_network(row.split(",")[0])
            with self.subTest(row):
                self.assertEqual(ranges.find(str(network.network_address)), "apple_mpp")
                self.assertEqual(ranges.find(str(network.broadcast_address)), "apple_mpp")
        self.assertIsNone(ranges.find("8.8.8.8"))
        self.assertIsNone(ranges.find("2001:db8::1"))


class LabelsCase(RecorderCase):
    """A Recorder with the label table's ranges loaded."""

    def setUp(self):
        self.ranges_dir = temp_dir(self)
        self.recorder_options = dict(self.recorder_options, machine_ranges=[
            ("apple_mpp", write_file(self.ranges_dir, "apple.csv", APPLE_RANGES)),
            ("scanner", write_file(self.ranges_dir, "scanner.txt", SCANNER_RANGES))])
        super().setUp()

    def pixel_event(self, query="writeKey=k&userId=u&event=Email%20Opened", **fields):
        self.assertIs(self.answer(query=query, **fields), pixel.GIF_ANSWER)
        return self.lines()[-1]


class LabelsInTheLog(LabelsCase):
    """Labels through the Recorder: written on pixel events only, pixel's own observation,
    and never costing an event its line."""

    def test_labels_are_written(self):
        for agent, peer, context in (
                (GMAIL_PROXY, "66.249.84.1", {"mailClient": "gmail"}),
                ("Mozilla/5.0", "172.224.226.40", {"mailClient": "apple_mail",
                                                   "machine": "apple_mpp"}),
                ("Barracuda Sentinel (EE)", "192.0.2.1", {"machine": "scanner"}),
                (CHROME, "40.92.3.4", {"machine": "scanner"}),
                (CHROME, "192.0.2.1", {})):
            with self.subTest(agent):
                event = self.pixel_event(headers={"user-agent": agent}, peer=peer)
                self.assertEqual(event["context"], dict(ip=peer, userAgent=agent, **context))

    def test_a_client_sent_label_is_replaced(self):
        query = "writeKey=k&userId=u&event=E&context.machine=none&context.mailClient=gmail"
        event = self.pixel_event(query, headers={"user-agent": CHROME})
        self.assertEqual(event["context"], {"ip": "192.0.2.1", "userAgent": CHROME})
        event = self.pixel_event(query, headers={"user-agent": "Outlook-iOS/709.2189947"})
        self.assertEqual((event["context"]["mailClient"], "machine" in event["context"]),
                         ("outlook", False))
        data = b64({"writeKey": "k", "userId": "u", "event": "E",
                    "context": {"machine": "scanner", "campaign": {"name": "x"}}})
        event = self.pixel_event("data=" + data, headers={"user-agent": CHROME})
        self.assertEqual(event["context"], {"ip": "192.0.2.1", "userAgent": CHROME,
                                            "campaign": {"name": "x"}})

    def test_api_events_are_not_labelled(self):
        body = json.dumps({"writeKey": "k", "userId": "u", "event": "E",
                           "context": {"machine": "mine"}}).encode()
        answer = self.answer(method="POST", path="/v1/track", body=body,
                             headers={"user-agent": "Mozilla/5.0"}, peer="172.224.226.40")
        self.assertEqual(answer.status, 200)
        self.assertEqual(self.lines()[-1]["context"], {"machine": "mine", "ip": "172.224.226.40",
                                                       "userAgent": "Mozilla/5.0"})

    def test_head_records_nothing(self):
        self.assertIs(self.answer(method="HEAD", query="writeKey=k&userId=u&event=E",
                                  headers={"user-agent": "Barracuda Sentinel (EE)"}),
                      pixel.GIF_ANSWER)
        self.assertEqual(self.lines(), [])

    def test_a_label_never_costs_the_event(self):
        for headers, peer in (({"user-agent": "\x00\xff" * 40000}, ""),
                              ({"user-agent": "Mozilla/5.0", "sec-purpose": "\xff" * 9000},
                               "not-an-address"),
                              ({"user-agent": "Mozilla/5.0"}, "::ffff:"),
                              ({"purpose": ""}, "fe80::1%lo")):
            with self.subTest(peer=peer):
                before = len(self.lines())
                self.assertIs(self.answer(query="writeKey=k&userId=u&event=E", headers=headers,
                                          peer=peer), pixel.GIF_ANSWER)
                self.assertEqual(len(self.lines()), before + 1)


class LabelsBehindAProxy(LabelsCase):
    recorder_options = {"trusted_proxy": ["10.0.0.0/8"]}

    def test_the_forwarded_address_is_matched(self):
        event = self.pixel_event(headers={"user-agent": "Mozilla/5.0",
                                          "x-forwarded-for": "172.224.226.40"}, peer="10.0.0.1")
        self.assertEqual(event["context"]["machine"], "apple_mpp")
        # From a peer that is not trusted, X-Forwarded-For is anyone's to write.
        event = self.pixel_event(headers={"user-agent": "Mozilla/5.0",
                                          "x-forwarded-for": "172.224.226.40"},
                                 peer="192.0.2.1")
        self.assertNotIn("machine", event["context"])
        # A peer inside Apple's list with a trusted proxy's header is the header's client.
        event = self.pixel_event(headers={"user-agent": "Mozilla/5.0",
                                          "x-forwarded-for": "198.51.100.1, 10.9.9.9"},
                                 peer="10.0.0.1")
        self.assertNotIn("machine", event["context"])
        event = self.pixel_event(headers={"user-agent": "Mozilla/5.0"},
                                 peer="::ffff:172.224.226.40")
        self.assertEqual((event["context"]["ip"], event["context"]["machine"]),
                         ("172.224.226.40", "apple_mpp"))


class LabelsWithoutIp(LabelsCase):
    recorder_options = {"no_ip": True}

    def test_the_real_address_is_matched(self):
        event = self.pixel_event(headers={"user-agent": "Mozilla/5.0"}, peer="172.224.226.40")
        self.assertEqual(event["context"], {"userAgent": "Mozilla/5.0", "mailClient": "apple_mail",
                                            "machine": "apple_mpp"})


class LabelsAnonymizingIp(LabelsCase):
    recorder_options = {"anonymize_ip": True}

    def test_the_real_address_is_matched(self):
        # 2a02:26f7:b3c0:4000::/64 holds the address, not its /48, which is what is written.
        event = self.pixel_event(headers={"user-agent": "Mozilla/5.0"},
                                 peer="2a02:26f7:b3c0:4000::9")
        self.assertEqual(event["context"], {"ip": "2a02:26f7:b3c0::", "userAgent": "Mozilla/5.0",
                                            "mailClient": "apple_mail", "machine": "apple_mpp"})
        self.assertIsNone(self.pixel.labeller.ranges.find("2a02:26f7:b3c0::"))


class RangesReload(RecorderCase):
    """SIGHUP's reload of the machine ranges, through Pixel.reopen: a file that fails to load
    keeps the set loaded before, and stderr says why."""

    def setUp(self):
        self.ranges_dir = temp_dir(self)
        self.path = write_file(self.ranges_dir, "apple.csv", "10.0.0.0/8\n")
        self.recorder_options = {"machine_ranges": [("apple_mpp", self.path)]}
        super().setUp()

    def machine(self, peer="172.224.226.40"):
        self.answer(query="writeKey=k&userId=u&event=E", headers={"user-agent": "Mozilla/5.0"},
                    peer=peer)
        return self.lines()[-1]["context"].get("machine")

    def replace(self, text):
        temporary = write_file(self.ranges_dir, "next.csv", text)
        os.replace(temporary, self.path)

    def test_a_reload_takes_the_new_set_and_a_failed_one_keeps_it(self):
        self.assertIsNone(self.machine())
        self.replace(APPLE_RANGES)
        self.pixel.reopen()
        self.assertEqual(self.machine(), "apple_mpp")
        self.assertIn("reloaded the machine ranges (SIGHUP): apple_mpp 4", self.stderr.getvalue())
        for text, why in (("172.224.226.0/27\nnonsense\n", "apple.csv line 2: 'nonsense' is "
                                                            "not a CIDR"),
                          (None, "cannot read %s: No such file" % self.path)):
            with self.subTest(why):
                if text is None:
                    os.remove(self.path)
                else:
                    self.replace(text)
                self.pixel.reopen()
                self.assertEqual(self.machine(), "apple_mpp")
                self.assertIn("cannot reload the machine ranges, so the ranges loaded before "
                              "stay in use: ", self.stderr.getvalue().splitlines()[-1])
                self.assertIn(why, self.stderr.getvalue().splitlines()[-1])

    @soak
    def test_lookups_while_reloading(self):
        texts = ("172.224.226.0/24\n", "10.0.0.0/8\n")
        stop, seen, failures = threading.Event(), collections.Counter(), []
        labeller = self.pixel.labeller

        def look():
            request = pixel.Request("GET", "/v1/pixel/track", "", {"user-agent": "Mozilla/5.0"},
                                    "172.224.226.40", b"")
            while not stop.is_set():
                context = {}
                try:
                    labeller.label(context, request, lambda request: request.peer)
                except Exception as error:   # any at all is a failure of this test
                    failures.append(error)
                    return
                seen[context.get("machine")] += 1

        threads = [threading.Thread(target=look) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            for round in range(40):
                self.replace(texts[round % 2])
                self.assertTrue(labeller.reload())
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        self.assertEqual(failures, [])
        self.assertEqual(set(seen), {None, "apple_mpp"})

    def test_reloads_at_once(self):
        # SIGHUPs in a row each start a thread (serve()); they load one at a time, and the
        # set in use is always a whole one.
        self.replace(APPLE_RANGES)
        labeller, results = self.pixel.labeller, []
        threads = [threading.Thread(target=lambda: results.append(labeller.reload()))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(results, [True] * 8)
        self.assertEqual(labeller.ranges.counts, {"apple_mpp": 4})
        self.assertEqual(self.machine(), "apple_mpp")
        self.assertEqual(self.stderr.getvalue().count("reloaded the machine ranges"), 8)

    def test_without_ranges_a_reload_does_nothing(self):
        made = make_pixel(self, temp_dir(self), reporter=pixel.Reporter(self.stderr))
        self.assertIsNone(made.labeller.ranges)
        self.assertFalse(made.labeller.reload())


# ---------------------------------------------------------------------------------------------
# Layer 3: a real server on port 0 in a thread, driven over real sockets


def read_response(stream):
    """(status, headers, body) of one HTTP/1.1 response read from a binary file object."""
    status_line = stream.readline()
    if not status_line:
        raise ConnectionError("closed before a response")
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = stream.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", 0)))
    return status, headers, body, status_line


def start_pixel(test, *argv, stderr=subprocess.DEVNULL):
    """pixel.py as a process on a free port with `argv`, killed when `test` ends; returns
    the process and its port (read from the line that says where it listens)."""
    process = subprocess.Popen([sys.executable, PIXEL_RUN, "--port", "0", "--cpu", "none"] +
                               list(argv), stdout=subprocess.PIPE, stderr=stderr, text=True)

    def stop():
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()

    test.addCleanup(stop)
    return process, int(re.search(r":(\d+)/", process.stdout.readline()).group(1))


def process_state(pid):
    """The state letter /proc gives process `pid` (R, S, Z ...), or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def serve_in_thread(test, server):
    """Run `server` (a PixelServer) on a thread until `test` ends; return its port."""
    thread = threading.Thread(target=server.serve_forever, args=(SERVE_POLL,), daemon=True)
    thread.start()
    test.addCleanup(thread.join, 10)
    test.addCleanup(server.stop, 5)
    return server.server_address[1]


class ServerCase(unittest.TestCase):
    recorder_options = {}
    server_options = {}
    writer_options = {}

    def setUp(self):
        self.dir = temp_dir(self, "pixel-test-")
        self.stderr = io.StringIO()
        self.start_server()

    def start_server(self):
        reporter = pixel.Reporter(self.stderr)
        self.pixel = make_pixel(self, self.dir, reporter=reporter,
                                **dict(self.recorder_options, **self.writer_options))
        self.events, self.rejects = self.pixel.events, self.pixel.rejects
        self.recorder, self.app = self.pixel.recorder, self.pixel.app
        self.server = pixel.PixelServer(("127.0.0.1", 0), self.app, reporter=reporter,
                                        **self.server_options)
        self.port = serve_in_thread(self, self.server)

    def connect(self, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, target, headers=None, method="GET", body=None):
        connection = self.connect()
        try:
            connection.request(method, target, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict((k.lower(), v) for k, v in response.getheaders()), \
                response.read()
        finally:
            connection.close()

    def raw(self, data, timeout=5):
        """Send bytes on a fresh socket; return everything the server sends until it closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)

    def lines(self, name="events.jsonl"):
        path = os.path.join(self.dir, name)
        if not os.path.exists(path):
            return []
        with open(path, "rb") as handle:
            data = handle.read()
        self.assertTrue(data == b"" or data.endswith(b"\n"), "torn last line in " + name)
        return [json.loads(line) for line in data.splitlines()]

    def assertGif(self, status, headers, body):
        self.assertEqual(status, 200)
        self.assertEqual(body, pixel.GIF)
        self.assertEqual(headers["content-type"], "image/gif")
        self.assertEqual(headers["content-length"], "43")

    def assertQuietStderr(self):
        self.assertNotIn("Traceback", self.stderr.getvalue())
        self.assertNotIn("internal error", self.stderr.getvalue())


class PixelRoutes(ServerCase):
    def test_gif_bytes_and_headers(self):
        self.assertEqual(len(pixel.GIF), 43)
        self.assertTrue(pixel.GIF.startswith(b"GIF89a\x01\x00\x01\x00") and
                        pixel.GIF.endswith(b";"))
        status, headers, body = self.get("/v1/pixel/track?data=" + DOCS_DATA)
        self.assertGif(status, headers, body)
        self.assertEqual(headers["cache-control"], "no-cache, no-store, must-revalidate")
        self.assertEqual(headers["pragma"], "no-cache")
        self.assertEqual(headers["expires"], "0")
        self.assertIn("date", headers)

    def test_version_string_is_the_versions_given(self):
        # server_version and sys_version work as documented: either may be left empty,
        # and the Server header then holds the other alone, with no stray space.
        for server, system, expected in (("pixel/1", "", "pixel/1"), ("", "Py/3", "Py/3"),
                                         ("pixel/1", "Py/3", "pixel/1 Py/3"), ("", "", "")):
            handler = type("Handler", (pixel.PixelHandler,),
                           {"server_version": server, "sys_version": system})
            self.assertEqual(handler.version_string(object.__new__(handler)), expected)

    def test_wire_bytes_match_a_stock_http_server_response(self):
        # The fast path's single prebuilt write must be byte for byte what the stock
        # BaseHTTPRequestHandler builds with send_response, send_header and end_headers.
        reply = self.raw(b"GET /v1/pixel/track?data=" + DOCS_DATA.encode() +
                         b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        date = re.search(rb"\r\nDate: ([^\r]+)\r\n", reply).group(1).decode()

        class Stock(http.server.BaseHTTPRequestHandler):
            server_version = pixel.PixelHandler.server_version
            sys_version = pixel.PixelHandler.sys_version
            version_string = pixel.PixelHandler.version_string
            protocol_version = "HTTP/1.1"

            def __init__(self):   # no socket: write into a buffer
                self.wfile, self.request_version, self.requestline = io.BytesIO(), "HTTP/1.1", ""

            def date_time_string(self, timestamp=None):
                return date

            def log_request(self, *args):
                pass

        stock = Stock()
        stock.send_response(200)
        for name, value in [("Content-Type", "image/gif"), ("Content-Length", "43"),
                            ("Cache-Control", "no-cache, no-store, must-revalidate"),
                            ("Pragma", "no-cache"), ("Expires", "0"), ("Connection", "close")]:
            stock.send_header(name, value)
        stock.end_headers()
        stock.wfile.write(pixel.GIF)
        self.assertEqual(reply, stock.wfile.getvalue())

    def test_connection_threads_are_reused(self):
        before = threading.active_count()
        for _ in range(30):
            self.get("/v1/pixel/track?writeKey=k&userId=u&event=e")
            # Once the slot is free the thread waits for the next connection: a new one
            # must be handed to it, not to a new thread.
            self.assertTrue(wait_until(lambda: len(self.server.pool) == 0))
        self.assertLessEqual(threading.active_count() - before, 1)
        self.assertEqual(len(self.lines()), 30)

    def test_every_route_answers_a_gif_even_on_error(self):
        for kind in pixel.EVENT_TYPES:
            with self.subTest(kind):
                self.assertGif(*self.get("/v1/pixel/%s?data=%%%%%%" % kind))
                self.assertGif(*self.get("/v1/pixel/%s" % kind))
        self.assertEqual(self.lines(), [])
        self.assertEqual(len(self.lines("rejects.jsonl")), 12)

    def test_event_is_on_disk_when_the_reply_arrives(self):
        self.get("/v1/pixel/track?data=" + DOCS_DATA, {"User-Agent": "Mail/1"})
        (event,) = self.lines()
        self.assertEqual({key: event[key] for key in DOCS_PAYLOAD}, DOCS_PAYLOAD)
        self.assertEqual(event["type"], "track")
        self.assertEqual(event["context"], {"ip": "127.0.0.1", "userAgent": "Mail/1"})

    def test_dot_notation_page(self):
        self.get("/v1/pixel/page?anonymousId=a1&name=Home&properties.url=https%3A%2F%2Fx.io%2F"
                 "&writeKey=k")
        (event,) = self.lines()
        self.assertEqual((event["type"], event["name"], event["properties"]),
                         ("page", "Home", {"url": "https://x.io/"}))

    def test_head_records_nothing(self):
        status, headers, body = self.get("/v1/pixel/track?data=" + DOCS_DATA, method="HEAD")
        self.assertEqual((status, headers["content-type"], headers["content-length"], body),
                         (200, "image/gif", "43", b""))
        self.assertEqual(self.lines(), [])
        self.assertEqual(self.lines("rejects.jsonl"), [])

    def test_other_methods_record_nothing(self):
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            with self.subTest(method):
                status, headers, _ = self.get("/v1/pixel/track?data=" + DOCS_DATA, method=method)
                self.assertEqual(status, 405)
                self.assertEqual(headers["allow"], "GET, HEAD")
        self.assertEqual(self.lines(), [])

    def test_other_paths_are_plain_404s(self):
        for target in ("/", "/v1/pixel/", "/v1/pixel/trackx", "/v1/pixel/track/", "/favicon.ico",
                       "//v1/pixel/track?data=" + DOCS_DATA):
            with self.subTest(target):
                status, headers, body = self.get(target)
                self.assertEqual((status, headers["content-type"], body),
                                 (404, "text/plain; charset=utf-8", b"Not Found\n"))
        self.assertEqual(self.lines(), [])

    def test_keep_alive(self):
        connection = self.connect()
        self.addCleanup(connection.close)
        ports = set()
        for number in range(5):
            connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e%d" % number)
            response = connection.getresponse()
            self.assertEqual(response.read(), pixel.GIF)
            self.assertIsNone(response.getheader("Connection"))
            ports.add(connection.sock.getsockname()[1])
        self.assertEqual(len(ports), 1, "all five requests went over one connection")
        self.assertEqual([event["event"] for event in self.lines()],
                         ["e%d" % number for number in range(5)])

    def test_http_1_0_closes_unless_asked(self):
        reply = self.raw(b"GET /health HTTP/1.0\r\n\r\n")
        self.assertIn(b"Connection: close\r\n", reply)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
            stream = sock.makefile("rb")
            for _ in range(2):
                status, headers, _, _ = read_response(stream)
                self.assertEqual((status, headers.get("connection")), (200, "keep-alive"))

    def test_health(self):
        self.get("/v1/pixel/track?data=" + DOCS_DATA)
        self.get("/v1/pixel/track?userId=u")
        status, headers, body = self.get("/health")
        health = json.loads(body)
        self.assertEqual((status, headers["content-type"]), (200, "application/json"))
        self.assertEqual({key: health[key] for key in ("status", "version", "accepted",
                                                       "rejected", "write_errors")},
                         {"status": "ok", "version": pixel.__version__, "accepted": 1,
                          "rejected": 1, "write_errors": 0})
        self.assertGreaterEqual(health["uptime"], 0)

    def test_rejects_log(self):
        self.get("/v1/pixel/track?writeKey=k&userId=u&properties.subject=Hi",
                 {"User-Agent": "Mail/2"})
        (record,) = self.lines("rejects.jsonl")
        self.assertEqual(record["reason"], "event_not_defined")
        self.assertEqual((record["method"], record["path"], record["query"]),
                         ("GET", "/v1/pixel/track", "writeKey=k&userId=u&properties.subject=Hi"))
        self.assertEqual((record["ip"], record["userAgent"]), ("127.0.0.1", "Mail/2"))
        self.assertRegex(record["receivedAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_rejects_log_caps_the_query(self):
        self.get("/v1/pixel/track?writeKey=k&x=" + "y" * 40000)
        (record,) = self.lines("rejects.jsonl")
        self.assertEqual(record["reason"], "payload_too_large")
        self.assertEqual(len(record["query"]), pixel.MAX_REJECT_RAW)
        self.assertTrue(record["queryTruncated"])

    def test_x_forwarded_for_is_ignored_by_default(self):
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=e")
        self.assertNotIn("X-Forwarded-For", self.stderr.getvalue())
        for _ in range(3):
            self.get("/v1/pixel/track?writeKey=k&userId=u&event=e",
                     {"X-Forwarded-For": "6.6.6.6"})
        self.assertEqual([line["context"]["ip"] for line in self.lines()], ["127.0.0.1"] * 4)
        # ... and said once: a proxy on this host without --trusted-proxy (a helper's pass
        # behind nginx: every event had the proxy's address, and nothing said why).
        self.assertEqual(self.stderr.getvalue().count(
            "requests from 127.0.0.1 carry X-Forwarded-For, which is ignored: the client's "
            "address is not recorded. If it is a proxy of yours, start pixel with "
            "--trusted-proxy 127.0.0.1 (a WSGI app: trusted_proxy=[\"127.0.0.1\"])\n"), 1)

    def test_no_hint_for_a_public_clients_own_x_forwarded_for(self):
        stderr = io.StringIO()
        for peer in ("8.8.8.8", "2001:4860:4860::8888", None, "not an address"):
            self.assertFalse(pixel.hint_trusted_proxy(peer, pixel.Reporter(stderr)))
        self.assertEqual(stderr.getvalue(), "")
        self.assertTrue(pixel.hint_trusted_proxy("", pixel.Reporter(stderr)))   # WSGI's unix
        self.assertIn("requests from a unix socket carry X-Forwarded-For, which is ignored: "
                      "the client's address is not recorded. If it is a proxy of yours, start "
                      "pixel with --trusted-proxy unix", stderr.getvalue())
        self.assertTrue(pixel.hint_trusted_proxy("::ffff:10.1.2.3", pixel.Reporter(stderr)))
        self.assertIn("requests from ::ffff:10.1.2.3 carry X-Forwarded-For, which is ignored",
                      stderr.getvalue())
        self.assertIn("--trusted-proxy 10.1.2.3", stderr.getvalue())

    def test_no_log_injection(self):
        self.get("/v1/pixel/track?writeKey=k&userId=u%0A%7B%22forged%22%3A1%7D&event=%E2%80%A8",
                 {"User-Agent": "a\x0bb"})
        self.get("/v1/pixel/track?writeKey=k&userId=%0A%7B%22forged%22%3A1%7D")
        with open(os.path.join(self.dir, "events.jsonl"), "rb") as handle:
            data = handle.read()
        self.assertEqual(data.count(b"\n"), 1)
        self.assertTrue(data.isascii())
        self.assertEqual(self.lines()[0]["userId"], 'u\n{"forged":1}')
        self.assertEqual(len(self.lines("rejects.jsonl")), 1)

    def test_no_input_is_reflected(self):
        marker = "REFLECTED"
        for target in ("/%s" % marker, "/v1/pixel/track?%s=1" % marker,
                       "/v1/pixel/%s" % marker):
            status, headers, body = self.get(target, {"X-" + marker: marker})
            self.assertNotIn(marker.encode(), body)
            self.assertNotIn(marker, json.dumps(headers))
        reply = self.raw(b"GET /" + marker.encode() + b" HTTP/9.9\r\n\r\n")
        self.assertNotIn(marker.encode(), reply)


class KeptAliveGifAnswer(ServerCase):
    """The GIF a kept-alive GET gets is built once a second and reused: each answer must
    still carry its own second's Date, and others (HEAD, HTTP/1.0, close) their own."""
    now = [1764201600.0]   # 2025-11-27T00:00:00Z
    recorder_options = {"clock": lambda: KeptAliveGifAnswer.now[0]}

    def test_each_answer_is_its_own(self):
        target = b"/v1/pixel/track?writeKey=k&userId=u&event=e"
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            stream = sock.makefile("rb")

            def ask(head, body=True):
                sock.sendall(head + b"\r\nHost: x\r\n\r\n")
                if body:
                    return read_response(stream)
                status_line, headers = stream.readline(), {}
                for line in iter(stream.readline, b"\r\n"):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                return int(status_line.split()[1]), headers, b"", status_line

            replies = []
            for now in (1764201600.0, 1764201600.9, 1764288000.0):
                self.now[0] = now
                replies.append(ask(b"GET " + target + b" HTTP/1.1"))
            head = ask(b"HEAD " + target + b" HTTP/1.1", body=False)
            old = ask(b"GET " + target + b" HTTP/1.0\r\nConnection: keep-alive")
            last = ask(b"GET " + target + b" HTTP/1.1\r\nConnection: close")
            self.assertEqual(stream.read(), b"")   # and then closed
        dates = [headers["date"] for _, headers, _, _ in replies]
        self.assertEqual(dates, ["Thu, 27 Nov 2025 00:00:00 GMT"] * 2 +
                         ["Fri, 28 Nov 2025 00:00:00 GMT"])
        for status, headers, body, status_line in replies:
            self.assertGif(status, headers, body)
            self.assertNotIn("connection", headers)
            self.assertTrue(status_line.startswith(b"HTTP/1.1 200 "))
        self.assertEqual((head[0], head[1]["content-length"]), (200, "43"))
        self.assertEqual(old[1]["connection"], "keep-alive")
        self.assertTrue(old[3].startswith(b"HTTP/1.1 200 "))
        self.assertEqual(last[1]["connection"], "close")
        for reply in (head, old, last):
            self.assertEqual(reply[1]["date"], "Fri, 28 Nov 2025 00:00:00 GMT")
        self.assertEqual(len(self.lines()), 5)   # HEAD records nothing


class OldProtocolPerConnection(ServerCase):
    """A handler that speaks HTTP/1.0 on some connections only (protocol_version set on
    the instance) must not be sent the HTTP/1.1 GIF answer cached for the others."""

    class Handler(pixel.PixelHandler):
        connections = itertools.count()

        def setup(self):
            super().setup()
            if next(self.connections) % 2:   # every second connection, in the order made
                self.protocol_version = "HTTP/1.0"

    server_options = {"handler": Handler}

    def test_each_connection_gets_its_own_protocol(self):
        seen = set()
        for number in range(4):
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(b"GET /v1/pixel/track?writeKey=k&userId=u&event=e HTTP/1.1\r\n"
                             b"Host: x\r\n\r\n")
                headers = read_response(sock.makefile("rb"))[1]
            old = number % 2 == 1
            self.assertEqual(headers.get("connection"), "close" if old else None)
            seen.add(old)
        self.assertEqual(seen, {True, False})


class TrustedProxy(ServerCase):
    recorder_options = {"trusted_proxy": ["127.0.0.0/8"]}

    def test_forwarded_address_from_a_trusted_proxy(self):
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=e",
                 {"X-Forwarded-For": "1.1.1.1, 6.6.6.6"})
        self.assertEqual(self.lines()[0]["context"]["ip"], "6.6.6.6")
        self.assertNotIn("X-Forwarded-For", self.stderr.getvalue())


class WriteKeyAllowList(ServerCase):
    recorder_options = {"write_key": ["good"]}

    def test_only_listed_keys_are_logged(self):
        self.assertGif(*self.get("/v1/pixel/track?writeKey=good&userId=u&event=e"))
        self.assertGif(*self.get("/v1/pixel/track?writeKey=bad&userId=u&event=e"))
        self.assertEqual([event["writeKey"] for event in self.lines()], ["good"])
        self.assertEqual([r["reason"] for r in self.lines("rejects.jsonl")],
                         ["invalid_write_key"])

    def test_the_api_answers_401_to_a_request_with_no_allowed_key(self):
        def batch(*keys):
            return json.dumps({"batch": [{"type": "track", "writeKey": key, "userId": "u",
                                          "event": "e"} for key in keys]})

        status, headers, body = self.get("/v1/batch", method="POST", body=batch("bad", "bad"),
                                         headers={"Content-Type": "application/json"})
        self.assertEqual((status, json.loads(body)),
                         (401, {"success": False, "error": "invalid_write_key"}))
        self.assertEqual(headers["www-authenticate"], 'Basic realm="pixel"')
        status, headers, body = self.get("/v1/b", method="POST", body=batch("bad"), headers={
            "Origin": "https://shop.example.com", "Content-Type": "text/plain"})
        self.assertEqual((status, headers["access-control-allow-origin"],
                          headers["access-control-allow-credentials"]),
                         (401, "https://shop.example.com", "true"))
        self.assertEqual(self.get("/v1/batch", method="POST", body=batch("good", "bad"))[0],
                         200)
        self.assertEqual([event["writeKey"] for event in self.lines()], ["good"])
        self.assertEqual([r["reason"] for r in self.lines("rejects.jsonl")],
                         ["invalid_write_key"] * 4)

    def test_a_forwarding_pixel_sees_the_401_and_pauses(self):
        sender = pixel.LogWriter(os.path.join(self.dir, "sender.jsonl"), readable=True)
        self.addCleanup(sender.close)
        sender.write([log_event(number) for number in range(3)])
        sender_rejects = pixel.LogWriter(os.path.join(self.dir, "sender-rejects.jsonl"))
        self.addCleanup(sender_rejects.close)
        reporter = pixel.Reporter(io.StringIO())
        forwarder = pixel.Forwarder(
            pixel.Receiver("http://127.0.0.1:%d" % self.port, timeout=5, backoff=(0.05, 0.4),
                           configured_keys=["wrong"], reporter=reporter), sender_rejects,
            write_key="wrong", reporter=reporter)
        forwarder.follow(sender)
        self.addCleanup(forwarder.close)
        self.addCleanup(forwarder.stop, 5)
        forwarder.start()
        self.assertTrue(wait_until(lambda: forwarder.receiver.paused_key == "wrong"))
        # --forward-write-key's: /health names it, never shows it (PublicHealth)
        self.assertEqual(forwarder.status()["paused_write_key"], "(--forward-write-key)")
        self.assertIn("401", forwarder.status()["last_error"])
        self.assertEqual((forwarder.sent, self.lines()), (0, []))


class NoIp(ServerCase):
    recorder_options = {"no_ip": True}

    def test_no_ip_anywhere(self):
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=e&context.ip=1.2.3.4")
        self.get("/v1/pixel/track?writeKey=k&userId=u")
        self.assertNotIn("ip", self.lines()[0]["context"])
        self.assertNotIn("ip", self.lines("rejects.jsonl")[0])


class OddHttp(ServerCase):
    server_options = {"request_timeout": 1.0, "idle_timeout": 1.0}

    def test_bare_lf_line_ends(self):
        reply = self.raw(b"GET /v1/pixel/track?writeKey=k&userId=u&event=e HTTP/1.1\nHost: x\n"
                         b"Connection: close\n\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(pixel.GIF))
        self.assertEqual(len(self.lines()), 1)

    def test_request_line_over_64_kib(self):
        long_query = "writeKey=k&userId=u&event=e&pad=" + "x" * 66000
        reply = self.raw(("GET /v1/pixel/track?%s HTTP/1.1\r\nHost: x\r\n\r\n" % long_query).encode())
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(pixel.GIF))
        self.assertEqual(self.lines(), [])
        self.assertEqual(self.lines("rejects.jsonl")[0]["reason"], "uri_too_long")
        reply = self.raw(("GET /v1/pixel/%%74rack?%s HTTP/1.1\r\nHost: x\r\n\r\n"
                          % long_query).encode())   # routed as decoded, as under WSGI
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(pixel.GIF))
        self.assertEqual(self.lines("rejects.jsonl")[1]["reason"], "uri_too_long")
        reply = self.raw(("GET http://h.example/v1/pixel/track?%s HTTP/1.1\r\nHost: x\r\n\r\n"
                          % long_query).encode())   # the absolute form's path
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(pixel.GIF))
        self.assertEqual(self.lines("rejects.jsonl")[2]["reason"], "uri_too_long")
        reply = self.raw(("GET /elsewhere?%s HTTP/1.1\r\nHost: x\r\n\r\n" % long_query).encode())
        self.assertTrue(reply.startswith(b"HTTP/1.1 414 "), reply[:40])
        self.assertQuietStderr()

    def test_more_than_100_headers(self):
        headers = b"".join(b"X-%d: v\r\n" % number for number in range(101))
        reply = self.raw(b"GET /v1/pixel/track?writeKey=k&userId=u&event=e HTTP/1.1\r\nHost: x\r\n" +
                         headers + b"\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(pixel.GIF))
        self.assertEqual(self.lines("rejects.jsonl")[0]["reason"], "too_many_headers")
        reply = self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 431 "), reply[:40])
        # 100 headers is still fine.
        headers = b"".join(b"X-%d: v\r\n" % number for number in range(98))
        reply = self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply[:40])

    def test_a_request_line_is_refused_once_over_64_kib_not_when_its_end_arrives(self):
        line = b"GET /v1/pixel/track?writeKey=k&userId=u&event=e&pad=" + b"x" * 70000
        reply = self.raw(line)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(pixel.GIF),
                        reply[:40])
        self.assertEqual(self.lines("rejects.jsonl")[0]["reason"], "uri_too_long")
        reply = self.raw(b"GET /elsewhere?pad=" + b"x" * 70000)
        self.assertTrue(reply.startswith(b"HTTP/1.1 414 "), reply[:40])
        self.assertQuietStderr()

    def test_a_head_is_refused_once_over_128_kib_not_when_its_blank_line_arrives(self):
        headers = b"".join(b"X-%d: %s\r\n" % (number, b"v" * 2000) for number in range(70))
        reply = self.raw(b"GET /v1/pixel/track?writeKey=k&userId=u&event=e HTTP/1.1\r\n"
                                b"Host: x\r\n" + headers)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(pixel.GIF),
                        reply[:40])
        self.assertEqual(self.lines("rejects.jsonl")[0]["reason"], "headers_too_large")
        reply = self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers)
        self.assertTrue(reply.startswith(b"HTTP/1.1 431 "), reply[:40])
        self.assertEqual(self.lines(), [])
        self.assertQuietStderr()

    def test_header_line_over_64_kib(self):
        reply = self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 66000 + b"\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 431 "), reply[:40])

    def test_http_0_9_and_junk(self):
        for name, request, status in [
                ("HTTP/0.9", b"GET /v1/pixel/track?writeKey=k&userId=u&event=e\r\n\r\n", 400),
                ("junk", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
                ("no version", b"GET / FOO\r\n\r\n", 400),
                ("HTTP/2", b"GET / HTTP/2.0\r\n\r\n", 505),
                ("space before colon", b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n", 400),
                ("line folding", b"GET /health HTTP/1.1\r\nHost: x\r\nA: b\r\n c\r\n\r\n", 400),
                ("two lengths", b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                b"Content-Length: 2\r\n\r\n", 400),
                ("length and chunked", b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n", 400),
                ("bad length", b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400)]:
            with self.subTest(name):
                reply = self.raw(request)
                self.assertTrue(reply.startswith(b"HTTP/1.1 %d " % status), reply[:60])
        self.assertEqual(self.lines(), [])
        self.assertQuietStderr()

    def test_absolute_form_target(self):
        reply = self.raw(b"GET http://pixel.example/v1/pixel/track?writeKey=k&userId=u&event=e "
                         b"HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(reply.endswith(pixel.GIF))
        self.assertEqual(self.lines()[0]["event"], "e")

    def test_pipelined_requests_are_answered_in_order(self):
        requests = b"".join(b"GET /v1/pixel/track?writeKey=k&userId=u&event=p%d HTTP/1.1\r\n"
                            b"Host: x\r\n\r\n" % number for number in range(10))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(requests + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            stream = sock.makefile("rb")
            for _ in range(10):
                self.assertEqual(read_response(stream)[2], pixel.GIF)
            self.assertEqual(json.loads(read_response(stream)[2])["accepted"], 10)
        self.assertEqual([event["event"] for event in self.lines()],
                         ["p%d" % number for number in range(10)])

    def test_client_that_disconnects(self):
        for data in (b"GET /v1/pixel/tr", b"GET /v1/pixel/track?userId=u HTTP/1.1\r\nHost:",
                     b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\""):
            with socket.create_connection(("127.0.0.1", self.port)) as sock:
                sock.sendall(data)
        # A request that is fully sent but whose answer is never read is still recorded.
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(b"GET /v1/pixel/track?writeKey=k&userId=u&event=gone HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(wait_until(lambda: self.events.written == 1))
        self.assertEqual(self.get("/health")[0], 200)
        self.assertEqual([event["event"] for event in self.lines()], ["gone"])
        self.assertQuietStderr()

    @soak
    def test_slow_request_is_cut_at_the_deadline(self):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            try:
                for char in b"GET /v1/pixel/track?writeKey=k&userId=u&event=slow HTTP/1.1\r\nHost: x\r\n":
                    sock.sendall(bytes([char]))
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass   # the server already closed: what we are testing
            closed = sock.recv(1) == b""
        self.assertTrue(closed)
        self.assertLess(time.monotonic() - started, 6.5)
        self.assertEqual(self.lines(), [])

    @soak
    def test_idle_keep_alive_connection_is_closed(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            stream = sock.makefile("rb")
            self.assertEqual(read_response(stream)[0], 200)
            started = time.monotonic()
            self.assertEqual(stream.read(1), b"")
            self.assertGreater(time.monotonic() - started, 0.7)


class Concurrency(ServerCase):
    def test_1000_concurrent_events_none_lost_or_duplicated(self):
        errors = []

        def client(worker):
            connection = self.connect()
            try:
                for number in range(50):
                    connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e"
                                              "&messageId=%d-%d" % (worker, number))
                    response = connection.getresponse()
                    if response.read() != pixel.GIF:
                        errors.append(response.status)
            finally:
                connection.close()

        threads = [threading.Thread(target=client, args=(worker,)) for worker in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        ids = [event["messageId"] for event in self.lines()]
        self.assertEqual(len(ids), 1000)
        self.assertEqual(set(ids), {"%d-%d" % (w, n) for w in range(20) for n in range(50)})


def follow(handle, path, stop, seen):
    """An inode-following tailer, as Vector, Filebeat and Fluent Bit read: read the open file
    (`handle`, opened on `path` by the caller before any write, so that it starts at the
    first line) to its end; when the path names another inode, drain the old one, then go
    on with the file that came after it in rotation order (the next rotated file, or the
    live one), so that no rotated file is skipped however many rotations happened in
    between."""
    pending = b""
    while True:
        chunk = handle.read()
        pending += chunk
        *complete, pending = pending.split(b"\n")
        seen.extend(json.loads(line) for line in complete)
        if chunk:
            continue
        inode = os.fstat(handle.fileno()).st_ino
        try:
            moved = os.stat(path).st_ino != inode
        except FileNotFoundError:
            moved = False
        if moved:
            pending += handle.read()
            *complete, pending = pending.split(b"\n")
            seen.extend(json.loads(line) for line in complete)
            assert pending == b"", "a line was split across files"
            handle.close()
            handle = open_next(path, inode)
            continue
        if stop.is_set():
            handle.close()
            return
        time.sleep(0.005)   # a tailer's poll interval


def open_next(path, inode):
    """Open the file that follows the one with `inode` in rotation order. Rotated names
    are stable, so a rotated file after ours is the next one. With none, the next is the
    live file, unless it was itself rotated while we opened it: so after opening the live
    path, look again, and if a rotated file after ours has appeared since, that one comes
    first."""
    folder, base = os.path.split(path)

    def rotated_after_ours():
        names = sorted(name for name in os.listdir(folder)
                       if name.startswith(base) and ROTATED.match(name[len(base):]))
        ours = [name for name in names if os.stat(os.path.join(folder, name)).st_ino == inode]
        assert ours, "the file being read was not rotated"
        return names[names.index(ours[0]) + 1:]

    while True:
        later = rotated_after_ours()
        if later:
            return open(os.path.join(folder, later[0]), "rb")
        try:
            handle = open(path, "rb")
        except FileNotFoundError:   # between a rotation's rename and its new file
            continue
        if not rotated_after_ours():
            return handle
        handle.close()


class Rotation(ServerCase):
    writer_options = {"max_bytes": 8192}

    def test_rotation_under_load_loses_and_duplicates_nothing(self):
        stop, seen = threading.Event(), []
        each = 150 if SOAK else 70   # requests a connection: some 15 rotations at 70
        path = os.path.join(self.dir, "events.jsonl")
        tailer = threading.Thread(target=follow, args=(open(path, "rb"), path, stop, seen))
        tailer.start()

        def client(worker):
            connection = self.connect()
            for number in range(each):
                connection.request("GET", "/v1/pixel/page?writeKey=k&anonymousId=a&messageId="
                                          "%d-%d&properties.pad=%s" % (worker, number, "p" * 40))
                self.assertEqual(connection.getresponse().read(), pixel.GIF)
            connection.close()

        threads = [threading.Thread(target=client, args=(worker,)) for worker in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        expected = {"%d-%d" % (w, n) for w in range(8) for n in range(each)}
        wait_until(lambda: len(seen) >= len(expected))
        stop.set()
        tailer.join()

        rotated = pixel.pixel_rotations(self.events.path)
        self.assertGreater(len(rotated), 10)
        ids = []
        for path in rotated + [self.events.path]:
            self.assertRegex(path, ROTATED if path != self.events.path else "events.jsonl$")
            size = os.path.getsize(path)
            self.assertLessEqual(size, 8192)
            with open(path, "rb") as handle:
                data = handle.read()
            self.assertTrue(data.endswith(b"\n"))
            ids += [json.loads(line)["messageId"] for line in data.splitlines()]
        self.assertEqual(sorted(ids), sorted(expected))
        tailed = [event["messageId"] for event in seen]
        self.assertEqual(len(tailed), len(expected), "the tailer saw a duplicate or a loss")
        self.assertEqual(set(tailed), expected)

    def test_rotated_names_are_stable(self):
        for number in range(200):
            self.get("/v1/pixel/track?writeKey=k&userId=u&event=e%d&pad=%s" % (number, "x" * 60))
        first = pixel.pixel_rotations(self.events.path)
        with open(first[0], "rb") as handle:
            before = handle.read()
        for number in range(200):
            self.get("/v1/pixel/track?writeKey=k&userId=u&event=f%d&pad=%s" % (number, "x" * 60))
        self.assertEqual(pixel.pixel_rotations(self.events.path)[:len(first)], first)
        with open(first[0], "rb") as handle:
            self.assertEqual(handle.read(), before, "a rotated file was written to again")


class Keep(ServerCase):
    writer_options = {"max_bytes": 1024, "keep": 2}

    def test_oldest_rotated_files_are_deleted_and_said(self):
        for number in range(60):
            self.get("/v1/pixel/track?writeKey=k&userId=u&event=e%d&pad=%s" % (number, "x" * 60))
        self.assertEqual(len(pixel.pixel_rotations(self.events.path)), 2)
        deleted = re.findall(r"deleted (\S+) \(--keep 2\)", self.stderr.getvalue())
        self.assertGreater(len(deleted), 0)
        self.assertFalse(any(os.path.exists(path) for path in deleted))

    def test_a_rotated_name_that_cannot_be_deleted_costs_no_event(self):
        # A folder with a rotated file's name, or a file pixel may not delete (a sticky
        # folder, an immutable file): os.remove failed inside the rotation, which the
        # write took for its own failure. The pixel that crossed --max-bytes was lost,
        # at every rotation, said as "cannot write events.jsonl: Is a directory", and
        # no later file was pruned.
        os.mkdir(self.events.path + ".20200101T000000.000Z")
        for number in range(60):
            self.get("/v1/pixel/track?writeKey=k&userId=u&event=e%d&pad=%s" % (number, "x" * 60))
        self.assertEqual((self.events.written, self.events.failed), (60, 0),
                         self.stderr.getvalue())
        self.assertIn("cannot delete %s.20200101T000000.000Z" % self.events.path,
                      self.stderr.getvalue())
        self.assertEqual(len([path for path in pixel.pixel_rotations(self.events.path)
                              if os.path.isfile(path)]), 2)


class KeepAfterAClockSetBack(unittest.TestCase):
    def test_the_oldest_are_deleted_all_the_same(self):
        # Names were stamped from the clock alone: after NTP set it back an hour, each
        # rotation's file sorted first, and --keep deleted the file it had just made.
        now = [T0]
        writer = pixel.LogWriter(os.path.join(temp_dir(self), "events.jsonl"), max_bytes=100,
                                 keep=2, clock=lambda: now[0],
                                 reporter=pixel.Reporter(io.StringIO()))
        self.addCleanup(writer.close)
        for number in range(8):
            if number == 4:
                now[0] -= 3600
            self.assertTrue(writer.write([b'{"n":%d,"pad":"%s"}\n' % (number, b"x" * 80)]))
            now[0] += 0.0004   # two rotations in one millisecond too
        kept = []
        for path in pixel.pixel_rotations(writer.path):
            with open(path, "rb") as handle:
                kept.append([json.loads(line)["n"] for line in handle])
        self.assertEqual(kept, [[5], [6]])

    def test_a_name_far_ahead_is_followed_and_a_folder_not_listed_is_passed_over(self):
        # A clock ten years ahead once, then right: the names carry its stamp on (a second
        # attacker's case: named by the clock, the right files sorted first, and --keep
        # deleted them), until the clock passes it.
        folder = temp_dir(self)
        path = os.path.join(folder, "events.jsonl")
        ahead = pixel.rotation_target(path, T0 + 10 * 365 * 86400)
        open(ahead, "w").close()
        self.assertEqual(pixel.rotation_target(path, T0), ahead + "-1")
        self.assertEqual(pixel.rotation_target(path, T0 + 11 * 365 * 86400),
                         path + ".20371115T110640.250Z")
        stderr = io.StringIO()
        writer = pixel.LogWriter(path, max_bytes=100, keep=1, clock=lambda: T0,
                                 reporter=pixel.Reporter(stderr))
        self.addCleanup(writer.close)
        with unittest.mock.patch("pixel.os.listdir", side_effect=PermissionError(
                errno.EACCES, "Permission denied")):
            for number in range(3):   # rotates, and writes, all the same
                self.assertEqual(writer.write([b'{"n":%d,"pad":"%s"}\n' % (number, b"x" * 80)]),
                                 1)
        self.assertEqual((writer.rotations, writer.failed), (2, 0))
        self.assertIn("cannot list %s's folder (--keep 1): Permission denied" % path,
                      stderr.getvalue())


    def test_files_handed_to_the_follower_are_kept_until_it_pins_them(self):
        # A rotation between the follower's changes() and its setting `pinned` took the
        # files handed over for no one's: with --keep, an erase's long hold and a slow
        # receiver, an attacker lost 36-774 answered events of files never forwarded.
        folder = temp_dir(self)
        writer = pixel.LogWriter(os.path.join(folder, "events.jsonl"), max_bytes=100, keep=1,
                                 reporter=pixel.Reporter(io.StringIO()), readable=True)
        self.addCleanup(writer.close)
        fd, live, _, _, _ = writer.follow()
        os.close(fd)
        writer.pinned = frozenset([live])   # as a follower that took nothing yet
        line = lambda number: b'{"n":%d,"pad":"%s"}\n' % (number, b"x" * 80)
        for number in range(4):
            writer.write([line(number)])
        handed = writer.changes()
        for change in handed:
            if change[1] is not None:
                os.close(change[1])
        rotated = pixel.pixel_rotations(writer.path)
        self.assertEqual(len(rotated), 3)   # the first two past --keep 1: in changes
        writer.write([line(4)])   # rotates before the follower pins what it took
        self.assertEqual([path for path in rotated if not os.path.exists(path)], [])
        writer.pinned = frozenset([live])   # it sent the others: the next rotation deletes
        writer.write([line(5)])             # them, and keeps the first, still pinned
        self.assertEqual([os.path.exists(path) for path in rotated], [True, False, False])


class ExternalMoves(ServerCase):
    def setUp(self):
        self.now = [T0]
        self.writer_options = {"clock": lambda: self.now[0]}
        super().setUp()

    def test_reopen_after_an_external_rename(self):
        path = os.path.join(self.dir, "events.jsonl")
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=before")
        os.rename(path, path + ".1")
        # Within MOVED_GRACE the renamed file is still written (logrotate's create is
        # about to put a new one at the path); after it, the path is opened afresh.
        self.now[0] += 2 * pixel.PATH_CHECK_INTERVAL
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=during")
        self.now[0] += pixel.MOVED_GRACE
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=after")
        with open(path + ".1") as handle:
            self.assertEqual([json.loads(line)["event"] for line in handle],
                             ["before", "during"])
        self.assertEqual([event["event"] for event in self.lines()], ["after"])

    def test_a_file_put_at_the_path_is_taken_at_the_next_look(self):
        path = os.path.join(self.dir, "events.jsonl")
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=before")
        os.rename(path, path + ".1")
        open(path, "wb").close()   # logrotate's create
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=within")
        self.now[0] += 2 * pixel.PATH_CHECK_INTERVAL
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=after")
        with open(path + ".1") as handle:   # not lost: in the renamed file, for its shipper
            self.assertEqual([json.loads(line)["event"] for line in handle],
                             ["before", "within"])
        self.assertEqual([event["event"] for event in self.lines()], ["after"])

    def test_a_storm_of_sighups_says_reopened_once_an_interval(self):
        # 130 SIGHUPs a second printed 1,100 lines in 8 s (an attack pass).
        stream = io.StringIO()
        made = make_pixel(self, temp_dir(self), reporter=pixel.Reporter(stream))
        for _ in range(50):
            made.reopen()
        self.assertEqual(stream.getvalue().count("reopened"), 1)

    def test_reopen_after_an_external_delete(self):
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=before")
        os.remove(os.path.join(self.dir, "events.jsonl"))
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=after")
        self.assertEqual([event["event"] for event in self.lines()], ["after"])


class TrackingApi(ServerCase):
    def post(self, route, document, headers=None, encoding=None):
        body = json.dumps(document).encode() if not isinstance(document, bytes) else document
        headers = dict(headers or {}, **{"Content-Type": "application/json"})
        if encoding == "gzip":
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        status, _, answer = self.get("/v1/" + route, headers, "POST", body)
        return status, json.loads(answer)

    def test_single_events(self):
        auth = {"Authorization": "Basic " + base64.b64encode(b"k:").decode()}
        self.assertEqual(self.post("track", {"userId": "u", "event": "e"}, auth),
                         (200, {"success": True}))
        self.assertEqual(self.post("identify", {"writeKey": "k", "userId": "u"},
                                   encoding="gzip"), (200, {"success": True}))
        self.assertEqual([event["type"] for event in self.lines()], ["track", "identify"])

    def test_batch(self):
        status, answer = self.post("batch", {"writeKey": "k", "context": {"app": "a"}, "batch": [
            {"type": "track", "userId": "u", "event": "e1"},
            {"type": "track", "userId": "u"},
            {"type": "alias", "userId": "u", "previousId": "p"}]})
        self.assertEqual((status, answer), (200, {"success": True}))
        self.assertEqual([(e["type"], e["context"]["app"]) for e in self.lines()],
                         [("track", "a"), ("alias", "a")])
        (record,) = self.lines("rejects.jsonl")
        self.assertEqual((record["reason"], record["method"]), ("event_not_defined", "POST"))
        self.assertEqual(json.loads(record["body"])["type"], "track")

    def test_bad_bodies_get_400(self):
        self.assertEqual(self.post("track", b"{nope"), (400, {"success": False,
                                                              "error": "invalid_json"}))
        self.assertEqual(self.post("batch", {"batch": [{"a": "x" * 1000}] * 600})[0], 400)
        # A chunked body (Segment's Android SDK sends them) is read too, and answered alike.
        for body in (b'{"a": 1}', iter([b'{"a": ', b'1}'])):
            status, _, answer = self.get("/v1/track", {}, "POST", body)
            self.assertEqual((status, json.loads(answer)), (200, {"success": True}))
        self.assertEqual([(record["reason"], record["body"]) for record in
                          self.lines("rejects.jsonl")][-2:], [("no_write_key", '{"a":1}')] * 2)

    def test_expect_100_continue(self):
        body = b'{"writeKey":"k","userId":"u","event":"e"}'
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                         b"Expect: 100-continue\r\n\r\n" % len(body))
            self.assertEqual(sock.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(body)
            self.assertEqual(read_response(sock.makefile("rb"))[2], b'{"success": true}\n')
        self.assertEqual(len(self.lines()), 1)


class MaxConnections(ServerCase):
    server_options = {"max_connections": 2, "request_timeout": 1.0, "idle_timeout": 30.0}

    @soak
    def test_an_idle_connection_makes_room(self):
        kept = []
        for _ in range(2):
            connection = self.connect()
            connection.request("GET", "/health")
            connection.getresponse().read()
            kept.append(connection)
        status, _, body = self.get("/v1/pixel/track?writeKey=k&userId=u&event=third")
        self.assertEqual((status, body), (200, pixel.GIF))
        closed = 0
        for connection in kept:
            connection.sock.settimeout(1)
            try:
                closed += connection.sock.recv(1) == b""
            except socket.timeout:
                pass   # still open: the one that was not evicted
            connection.close()
        self.assertEqual(closed, 1, "exactly one idle connection was closed to make room")
        self.assertIn("all 2 connection slots are busy", self.stderr.getvalue())

    @soak   # 1.4-1.7 s: two clients must stall pixel's sends first
    def test_a_client_that_does_not_read_its_answers_makes_room(self):
        # The attack pass: clients that pipeline requests and read their answers slowly
        # (8 KB/s) held every slot, their threads in sendall, never idle, so never closed
        # to make room: a new client waited as long as they liked.
        done = threading.Event()
        self.addCleanup(done.set)

        def feed(sock, stalled):   # until pixel reads no more: it is stuck answering
            requests = memoryview(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 1000)
            left = requests
            try:
                while not done.is_set():
                    try:
                        left = left[sock.send(left):] or requests
                    except socket.timeout:
                        stalled.set()
            except OSError:
                pass   # closed to make room

        def trickle(sock):   # each send of pixel's goes on within --request-timeout
            try:
                while not done.wait(0.4) and sock.recv(8192):   # all it holds, each time
                    pass
            except OSError:
                pass

        stalls = []
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", self.port))
            sock.settimeout(0.5)
            self.addCleanup(sock.close)
            stalls.append(threading.Event())
            threading.Thread(target=feed, args=(sock, stalls[-1]), daemon=True).start()
            threading.Thread(target=trickle, args=(sock,), daemon=True).start()
        for stalled in stalls:
            self.assertTrue(stalled.wait(30))
        started = time.monotonic()
        status, _, body = self.get("/v1/pixel/track?writeKey=k&userId=u&event=third")
        self.assertEqual((status, body), (200, pixel.GIF))
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual([event["event"] for event in self.lines()], ["third"])

    def test_an_answer_that_goes_at_once_is_never_cut_to_make_room(self):
        # The attack pass on the fix above: every answer marked its connection closable while
        # it was sent, so a full pool cut answers whose events were written: a client sends
        # those again (1,676 written twice in 8 s). Only an answer that cannot go at once is.
        done, answered, lock = threading.Event(), set(), threading.Lock()

        def client(name, keep_alive):
            connection, number = None, 0
            while not done.is_set():
                number += 1
                try:
                    if connection is None:
                        connection = self.connect()
                    connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e&"
                                       "messageId=%s-%d" % (name, number))
                    if connection.getresponse().read() == pixel.GIF:
                        with lock:
                            answered.add("%s-%d" % (name, number))
                except (OSError, http.client.HTTPException):
                    pass   # closed to make room: sent again, under a new id
                if not keep_alive or connection is not None and connection.sock is None:
                    connection.close()
                    connection = None
            if connection is not None:
                connection.close()

        threads = [threading.Thread(target=client, args=("k%d" % n, True)) for n in range(2)]
        threads += [threading.Thread(target=client, args=("n%d" % n, False)) for n in range(2)]
        for thread in threads:
            thread.start()
        # Load for a while (what is tested is that none is cut meanwhile): 1,500 answers
        wait_until(lambda: len(answered) >= 1500, timeout=10)
        done.set()
        for thread in threads:
            thread.join(10)
        written = [event["messageId"] for event in self.lines()]
        self.assertGreater(len(written), 100)
        self.assertEqual(sorted(set(written) - answered), [], "written, never answered")
        self.assertEqual(len(written), len(set(written)))

    @soak
    def test_busy_slots_wait_for_the_request_deadline(self):
        slow = [socket.create_connection(("127.0.0.1", self.port)) for _ in range(2)]
        for sock in slow:
            sock.sendall(b"GET /v1/pixel/track?writeKey=k")
        self.assertTrue(wait_until(lambda: len(self.server.pool) == 2))
        status, _, body = self.get("/v1/pixel/track?writeKey=k&userId=u&event=waited")
        self.assertEqual((status, body), (200, pixel.GIF))
        for sock in slow:
            sock.settimeout(5)
            self.assertEqual(sock.recv(1), b"", "the slow client was cut at its deadline")
            sock.close()
        self.assertEqual([event["event"] for event in self.lines()], ["waited"])


def fuzz_targets(count, seed=20261126):
    """Random and mutated pixel requests: broken base64 and escapes, odd dot-keys, wrong
    types in every field, huge and deep values, NULs and U+2028."""
    import random
    import urllib.parse
    rng = random.Random(seed)
    odd_values = [None, True, 0, -1, 1.5, 1e308, "", "x", [], [1, "a"], {}, {"a": None},
                  "\x00", "\u2028\u2029", "\ud800", "\U0001F600", "a" * 40000,
                  "x" * 5000, {"deep": json.loads("[" * 30 + "]" * 30)}]
    fields = ["writeKey", "userId", "anonymousId", "event", "groupId", "previousId", "name",
              "category", "properties", "traits", "context", "integrations", "messageId",
              "timestamp", "sentAt", "originalTimestamp", "type"]
    odd_keys = ["a..b", "properties.", ".", "..", "properties..x", "context.ip.", "data",
                "properties.a.b.c.d.e.f.g", "%00", "%E2%80%A8", "a%2Eb", "=", "&", "%zz",
                ".".join("k" * 40)]
    for number in range(count):
        kind = rng.choice(pixel.EVENT_TYPES)
        payload = {"writeKey": "k", "userId": "u", "event": "e", "groupId": "g",
                   "previousId": "p"}
        for _ in range(rng.randrange(4)):
            payload[rng.choice(fields)] = rng.choice(odd_values)
        style = number % 4
        if style == 0:   # base64, then mutated
            text = json.dumps(payload)
            encoded = base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()
            if rng.random() < 0.5:
                position = rng.randrange(len(encoded))
                encoded = encoded[:position] + rng.choice("!*%$=-_ +/\x00") + \
                    encoded[position + 1:]
            if rng.random() < 0.2:
                encoded = encoded[:rng.randrange(len(encoded))]
            query = "data=" + rng.choice([encoded, urllib.parse.quote(encoded, safe="")])
        elif style == 1:   # plain parameters with odd keys and escapes
            parts = ["writeKey=k", "userId=u", "event=e"]
            for _ in range(rng.randrange(1, 6)):
                parts.append("%s=%s" % (rng.choice(odd_keys), rng.choice(
                    ["1", "%", "%zz", "%FF%FE", "%00", "%E2%80%A8", "x" * rng.randrange(100)])))
            rng.shuffle(parts)
            query = "&".join(parts)
        elif style == 2:   # random printable junk
            query = "".join(rng.choice("abc=&.%+/_-09xyzAZ") for _ in range(rng.randrange(200)))
        else:   # valid plain form with wrong-typed JSON smuggled into data
            query = "writeKey=k&data=" + base64.urlsafe_b64encode(json.dumps(
                rng.choice(odd_values)).encode("utf-8", "surrogatepass")).decode()
        # Control characters and spaces cannot travel raw in a request line (http.client
        # refuses them); they arrive percent-encoded, as a browser would send them.
        yield "/v1/pixel/%s?%s" % (kind, re.sub(r"[\x00-\x20\x7f-\uffff]", lambda match: "".join(
            "%%%02X" % byte for byte in match.group().encode("utf-8", "surrogatepass")), query))


class Fuzz(ServerCase):
    def test_5000_hostile_pixel_requests(self):
        targets = list(fuzz_targets(int(5000 * EXAMPLES)))
        problems = []

        def client(share):
            connection = self.connect()
            for target in share:
                try:
                    connection.request("GET", target)
                    response = connection.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as error:
                    problems.append((target[:80], repr(error)))
                    connection.close()
                    connection = self.connect()
                    continue
                if (response.status, body) != (200, pixel.GIF):
                    problems.append((target[:80], response.status))
            connection.close()

        threads = [threading.Thread(target=client, args=(targets[n::4],)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(problems, [])
        health = json.loads(self.get("/health")[2])
        # A repeated random messageId is dropped as a retry (the dedupe window).
        self.assertEqual(health["accepted"] + health["rejected"] + health["deduped"],
                         len(targets))
        self.assertGreater(health["accepted"], len(targets) // 50)
        self.assertGreater(health["rejected"], len(targets) // 5)
        events = self.lines()   # every line parses, the last one is whole
        self.assertEqual(len(events), health["accepted"])
        for event in events:
            pixel.validate(event["type"], event)   # every rule still holds
            self.assertEqual(json.loads(pixel.encode_line(event)), event)
        self.assertEqual(len(self.lines("rejects.jsonl")), health["rejected"])
        self.assertQuietStderr()


class Smuggling(ServerCase):
    """Every answer given before a declared body is read must read and drop that body, or
    close: otherwise the body is parsed as the next request."""

    server_options = {"request_timeout": 0.3}
    SMUGGLED = (b"GET /v1/pixel/track?writeKey=k&userId=u&event=smuggled HTTP/1.1\r\n"
                b"Host: x\r\n\r\n")

    def exchange(self, head, body):
        """Send a request head with `body`, and half-close: the server answers what it read
        as requests, then closes. Return the status codes seen."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                pass
        return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]

    def test_early_answers_never_serve_the_body(self):
        for name, head, status in [
                ("POST to a pixel", b"POST /v1/pixel/track HTTP/1.1\r\nHost: x\r\n", 405),
                ("POST to /health", b"POST /health HTTP/1.1\r\nHost: x\r\n", 405),
                ("GET to the API", b"GET /v1/track HTTP/1.1\r\nHost: x\r\n", 405),
                ("HEAD to the API", b"HEAD /v1/batch HTTP/1.1\r\nHost: x\r\n", 405),
                ("GET to no such path", b"GET /nope HTTP/1.1\r\nHost: x\r\n", 404),
                ("GET a pixel with a body", b"GET /v1/pixel/page?writeKey=k&anonymousId=a "
                                            b"HTTP/1.1\r\nHost: x\r\n", 200),
                ("GET /health with a body", b"GET /health HTTP/1.1\r\nHost: x\r\n", 200)]:
            with self.subTest(name):
                self.assertEqual(self.exchange(head, self.SMUGGLED), [status])
        self.assertNotIn("smuggled", [event.get("event") for event in self.lines()])

    def test_a_large_or_chunked_body_nobody_asked_for_ends_the_connection(self):
        pixel_head = b"GET /v1/pixel/page?writeKey=k&anonymousId=a HTTP/1.1\r\nHost: x\r\n"
        self.assertEqual(self.exchange(pixel_head, b"x" * 40000 + self.SMUGGLED), [200])
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                         b"\r\n\r\n" + self.SMUGGLED)
            stream = sock.makefile("rb")
            self.assertEqual(read_response(stream)[0], 200)
            self.assertEqual(stream.read(), b"", "closed, the rest not read as a request")
        self.assertEqual([event.get("event") for event in self.lines()], [None])

    def test_the_answer_before_a_large_body_nobody_asked_for_is_not_lost_to_a_reset(self):
        # Closed with the body unread, the connection would be reset: the client would see
        # ECONNRESET, not the GIF. pixel half-closes and drains it first.
        body = b"x" * (512 * 1024)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"GET /v1/pixel/page?writeKey=k&anonymousId=a HTTP/1.1\r\nHost: x"
                         b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            stream = sock.makefile("rb")
            self.assertEqual(read_response(stream)[2], pixel.GIF)
            self.assertEqual(stream.read(), b"")

    def test_a_body_that_misses_the_deadline_closes_the_connection(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                         b'{"writeKey":"k",')
            time.sleep(0.4)   # past --request-timeout: what is being tested is the wait
            try:
                sock.sendall(b" " * 84 + self.SMUGGLED)
                sock.settimeout(3)
                answer = sock.recv(65536)
            except (BrokenPipeError, ConnectionResetError):
                answer = b""
        self.assertEqual(answer, b"")
        self.assertEqual(self.lines(), [])


def chunked(body, size=5, extension=b""):
    """`body` in chunks of `size` bytes, each size line with `extension`, then the last chunk."""
    return b"".join(b"%x%s\r\n%s\r\n" % (len(body[i:i + size]), extension, body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


class ChunkedBodies(ServerCase):
    """Chunked request bodies (Segment's Android SDK sends its batches so): read up to the
    route's cap, framed by strict CRLF lines; anything else refused, named, and the
    connection closed, so that nothing after it is read as a request."""

    server_options = {"request_timeout": 0.3}
    HEAD = b"POST /v1/import HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    BATCH = json.dumps({"writeKey": "k", "batch": [
        {"type": "track", "userId": "u", "event": "Opened", "messageId": "m1"}]}).encode()

    def test_chunks_extensions_and_trailers_then_the_next_request(self):
        body = chunked(self.BATCH, 7, b";name=value").replace(b"0\r\n\r\n", b"0\r\nX-T: 1\r\n\r\n")
        body = b"00000000" + body   # leading zeros, as RFC 9112 allows
        reply = self.raw(self.HEAD + b"\r\n" + body + b"GET /health HTTP/1.1\r\nHost: x\r\n"
                         b"Connection: close\r\n\r\n")
        self.assertEqual(re.findall(rb"HTTP/1\.1 (\d{3}) ", reply), [b"200", b"200"])
        self.assertIn(b'{"success": true}\n', reply)
        self.assertEqual([event["messageId"] for event in self.lines()], ["m1"])

    def test_gzip_in_chunks_and_100_continue(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(self.HEAD + b"Content-Encoding: gzip\r\nExpect: 100-continue\r\n\r\n")
            self.assertEqual(sock.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(chunked(gzip.compress(self.BATCH), 3))
            self.assertIn(b'{"success": true}', sock.recv(1000))
        self.assertEqual(len(self.lines()), 1)

    def test_as_analytics_kotlin_sends(self):
        # Segment's newer Android SDK: POST {apiHost}/b, text/plain, gzip, chunked, the key
        # in the batch, no Origin.
        reply = self.raw(b"POST /v1/b HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                         b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"
                         b"Connection: close\r\n\r\n" + chunked(gzip.compress(self.BATCH), 4096))
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 ") and
                        reply.endswith(b'{"success": true}\n'), reply)
        self.assertEqual([(event["writeKey"], event["event"]) for event in self.lines()],
                         [("k", "Opened")])

    def test_bad_framing_is_refused_and_nothing_after_it_is_read(self):
        smuggled = (b"GET /v1/pixel/track?writeKey=k&userId=u&event=smuggled HTTP/1.1\r\n"
                    b"Host: x\r\n\r\n")
        for name, body in [
                ("0x before the size", b"0x5\r\nhello\r\n0\r\n\r\n"),
                ("an underscore in it", b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n"),
                ("a space before it", b" 5\r\nhello\r\n0\r\n\r\n"),
                ("a sign", b"+5\r\nhello\r\n0\r\n\r\n"),
                ("a space after it", b"5 \r\nhello\r\n0\r\n\r\n"),
                ("nine digits", b"100000005\r\nhello\r\n0\r\n\r\n"),
                ("a NUL in an extension", b"5;a\0\r\nhello\r\n0\r\n\r\n"),
                ("a trailer with no colon", b"0\r\ngarbage\r\n\r\n"),
                ("a folded trailer", b"0\r\nX: y\r\n z\r\n\r\n"),
                ("a bare LF after the size", b"5\nhello\r\n0\r\n\r\n"),
                ("a bare LF in an extension", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
                ("data longer than its size", b"3\r\nhello\r\n0\r\n\r\n"),
                ("no CRLF after the data", b"5\r\nhello0\r\n\r\n"),
                ("a size line over MAX_LINE", b"5;" + b"e" * pixel.MAX_LINE + b"\r\n"),
                ("too many trailers", b"0\r\n" + b"X: y\r\n" * (pixel.MAX_HEADERS + 1) + b"\r\n"),
                ("a bare LF in a trailer", b"0\r\nX: y\nZ: w\r\n\r\n")]:
            with self.subTest(name):
                reply = self.raw(self.HEAD + b"\r\n" + body + smuggled)
                self.assertEqual(re.findall(rb"HTTP/1\.1 (\d{3}) ", reply), [b"400"], reply[:300])
                self.assertIn(b'"error": "bad_framing"', reply)
                self.assertEqual(self.lines("rejects.jsonl")[-1]["reason"], "bad_framing")
        self.assertEqual(self.lines(), [])
        self.assertQuietStderr()

    def test_bare_lf_lines_are_refused_as_they_come(self):
        # The attack pass: with no CRLF after them to look for, they waited out the timeout.
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(self.HEAD + b"\r\n5\nhello\n0\n\n")
            self.assertIn(b'"error": "bad_framing"', sock.recv(1000))
        self.assertEqual(self.lines("rejects.jsonl")[-1]["reason"], "bad_framing")

    def test_the_cap_is_the_decoded_size_and_lines_are_bounded(self):
        padded = self.BATCH[:-1] + b" " * (pixel.MAX_BODY_BYTES - len(self.BATCH)) + b"}"
        reply = self.raw(self.HEAD + b"Connection: close\r\n\r\n" + chunked(padded, 65536))
        self.assertIn(b'{"success": true}', reply)   # exactly the cap
        self.assertEqual(len(self.lines()), 1)
        for name, body, reason in [
                ("one byte over", chunked(padded + b" ", 65536), "body_too_large"),
                ("a size over the cap, its data never sent",
                 b"%x\r\n" % (pixel.MAX_BODY_BYTES + 1), "body_too_large"),
                # many tiny chunks: their lines may take a line and a 16th of the cap
                ("lines past their share", b"1;" + b"e" * 32000 + b"\r\n \r\n" * 4,
                 "bad_framing")]:
            with self.subTest(name):
                reply = self.raw(self.HEAD + b"\r\n" + body)
                self.assertIn(b'"error": "%s"' % reason.encode(), reply)
                self.assertEqual(self.lines("rejects.jsonl")[-1]["reason"], reason)
        self.assertEqual(len(self.lines()), 1)

    def test_half_finished_and_slow_bodies_record_nothing(self):
        for name, cut in [("cut in a size line", b"1"), ("cut in a chunk", b"a\r\nhel"),
                          ("cut before the trailers end", chunked(self.BATCH)[:-2])]:
            for half_close in (True, False):   # else: silent past the request timeout
                with self.subTest(name, half_close=half_close), socket.create_connection(
                        ("127.0.0.1", self.port), timeout=5) as sock:
                    sock.sendall(self.HEAD + b"\r\n" + cut)
                    if half_close:
                        sock.shutdown(socket.SHUT_WR)
                    started = time.monotonic()
                    self.assertEqual(sock.recv(100), b"")   # closed, unanswered
                    self.assertLess(time.monotonic() - started, 0.2 if half_close else 3)
        self.assertEqual((self.lines(), self.lines("rejects.jsonl")), ([], []))
        self.assertQuietStderr()

    def test_many_clients_each_event_once(self):
        def client(n):
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                for i in range(20):   # kept alive, one after another
                    body = json.dumps({"writeKey": "k", "batch": [{
                        "type": "track", "userId": "u", "event": "e",
                        "messageId": "c%d-%d" % (n, i)}]}).encode()
                    sock.sendall(self.HEAD + b"\r\n" + chunked(body, 1 + i))
                    reply = b""
                    while not reply.endswith(b'{"success": true}\n'):
                        chunk = sock.recv(1000)
                        if not chunk:   # closed: what it sent since is missing from the log
                            return
                        reply += chunk
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        ids = [event["messageId"] for event in self.lines()]
        self.assertEqual(sorted(ids), sorted("c%d-%d" % (n, i) for n in range(8)
                                             for i in range(20)))


class HeadLimits(ServerCase):
    server_options = {"request_timeout": 5.0}

    def test_blank_lines_before_a_request_go_in_one_step(self):
        # 120 KiB of CRLF, under the head cap: answered, and fast. The old reader stripped
        # them a byte at a time, a memmove each: seconds of GIL for every other thread.
        started = time.monotonic()
        reply = self.raw(b"\r\n" * 60000 + b"GET /health HTTP/1.1\r\nHost: x\r\n"
                                          b"Connection: close\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 "), reply[:40])
        self.assertLess(time.monotonic() - started, 2.0)

    def test_a_head_over_the_cap_is_refused_however_it_arrives(self):
        # The cap was looked at only before a read: a 180 KiB head in one send was taken.
        lines = b"".join(b"X-%d: %s\r\n" % (number, b"a" * 2000) for number in range(90))
        reply = self.raw(b"GET /v1/pixel/track?writeKey=k&userId=u&event=e HTTP/1.1\r\n"
                         b"Host: x\r\n" + lines + b"\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(pixel.GIF),
                        reply[:40])
        self.assertEqual(self.lines(), [])
        self.assertEqual([record["reason"] for record in self.lines("rejects.jsonl")],
                         ["headers_too_large"])

    def test_endless_blank_lines_are_cut_off(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sent = 0
            try:
                while sent < 8 * 1024 * 1024:
                    sent += sock.send(b"\r\n" * 32768)
            except (BrokenPipeError, ConnectionResetError):
                pass   # cut off: what is being tested
        self.assertLess(sent, 8 * 1024 * 1024)
        self.assertQuietStderr()

    def test_numbers_in_headers_are_ascii_digits(self):
        for length in ("\u00b2", "1\u00b3", "\u0661"):
            for target, status in (("/health", 400), ("/v1/pixel/track?writeKey=k&userId=u&"
                                                      "event=e", 200)):
                with self.subTest(length=length, target=target):
                    reply = self.raw(("GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n"
                                      "\r\n" % (target, length)).encode(
                                          "utf-8" if length == "\u0661" else "latin-1"))
                    self.assertTrue(reply.startswith(b"HTTP/1.1 %d " % status), reply[:40])
        # A pixel still gets its GIF, and the rejects log says why (the attack pass).
        self.assertEqual(self.lines(), [])
        self.assertEqual([record["reason"] for record in self.lines("rejects.jsonl")],
                         ["bad_framing"] * 3)
        # ... quoting a query with Segment's docs' literal spaces whole.
        reply = self.raw(b"GET /v1/pixel/track?writeKey=k&event=Email Opened&userId=u HTTP/1.1"
                         b"\r\n\r\n")   # no Host
        self.assertTrue(reply.endswith(pixel.GIF), reply[:40])
        self.assertEqual(self.lines("rejects.jsonl")[-1]["query"],
                         "writeKey=k&event=Email Opened&userId=u")
        self.assertQuietStderr()

    def test_bare_cr_nul_and_host_rules(self):
        for name, head in [
                ("bare CR in a value", b"GET /health HTTP/1.1\r\nHost: x\rContent-Length: 5\r\n"),
                ("NUL in a value", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n"),
                ("no Host", b"GET /health HTTP/1.1\r\n"),
                ("two Hosts", b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n"),
                ("empty Host", b"GET /health HTTP/1.1\r\nHost:\r\n")]:
            with self.subTest(name):
                reply = self.raw(head + b"\r\n")
                self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply[:40])
        reply = self.raw(b"GET /health HTTP/1.0\r\n\r\n")   # HTTP/1.0 needs no Host
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 "), reply[:40])

    def test_no_100_continue_for_http_1_0(self):
        body = b'{"writeKey":"k","userId":"u","event":"e"}'
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/track HTTP/1.0\r\nContent-Length: %d\r\n"
                         b"Expect: 100-continue\r\n\r\n" % len(body))
            sock.settimeout(0.2)   # a 100 Continue would come at once
            with self.assertRaises(socket.timeout):
                sock.recv(100)
            sock.settimeout(5)
            sock.sendall(body)
            self.assertTrue(read_response(sock.makefile("rb"))[3].startswith(b"HTTP/1.1 200"))

    def test_a_utf8_user_agent_is_logged_as_utf8(self):
        self.raw("GET /v1/pixel/track?writeKey=k&userId=u&event=e HTTP/1.1\r\nHost: x\r\n"
                 "User-Agent: Mail/1 (\u00e9t\u00e9 \u2603)\r\nConnection: close\r\n\r\n"
                 .encode("utf-8"))
        self.assertEqual(self.lines()[0]["context"]["userAgent"], "Mail/1 (\u00e9t\u00e9 \u2603)")


class ApiAmplification(ServerCase):
    def post(self, route, body, gzipped=True):
        headers = {"Content-Type": "application/json"}
        if gzipped:
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        status, _, answer = self.get("/v1/" + route, headers, "POST", body)
        return status, json.loads(answer)

    def log_size(self, name):
        return os.path.getsize(os.path.join(self.dir, name))

    def test_a_context_bomb_writes_nothing(self):
        body = json.dumps({"writeKey": "k", "context": {"pad": "x" * 120000},
                           "batch": [{"type": "page", "anonymousId": "a"}] * 10000},
                          separators=(",", ":"))
        started = time.monotonic()
        self.assertEqual(self.post("batch", body.encode()),
                         (400, {"success": False, "error": "batch_too_large"}))
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(self.lines(), [])
        (record,) = self.lines("rejects.jsonl")
        self.assertEqual(record["reason"], "batch_too_large")
        self.assertLessEqual(self.log_size("rejects.jsonl"), pixel.MAX_REJECT_RAW + 1024)

    def test_what_one_request_adds_to_the_log_is_bounded(self):
        # 10,000 items, each inheriting a 700-byte context: about 8 MB as written, which
        # is over 16 x the body cap, from a body of a few KB.
        body = json.dumps({"writeKey": "k", "context": {"pad": "x" * 700},
                           "batch": [{"type": "track", "userId": "u", "event": "e"}] * 10000})
        status, answer = self.post("batch", body.encode())
        self.assertEqual((status, answer["error"]), (400, "batch_too_large"))
        self.assertEqual(self.lines(), [])
        body = json.dumps({"writeKey": "k", "context": {"pad": "x" * 300},
                           "batch": [{"type": "track", "userId": "u", "event": "e"}] * 10000})
        self.assertEqual(self.post("batch", body.encode()), (200, {"success": True}))
        self.assertEqual(len(self.lines()), 10000)
        self.assertLessEqual(self.log_size("events.jsonl"), pixel.MAX_REQUEST_LOG_BYTES)

    def test_a_batch_of_tiny_items_cannot_write_many_times_its_body(self):
        # 162 KB of items that, each with a 1 KiB user agent and the server's fields, would
        # write 7.8 MB: over 16 times the body.
        body = json.dumps({"writeKey": "k", "batch": [{"type": "page", "userId": 1}] * 6000},
                          separators=(",", ":")).encode()
        status, _, answer = self.get("/v1/batch", {"User-Agent": "u" * 1024,
                                                   "Content-Encoding": "gzip"},
                                     "POST", gzip.compress(body))
        self.assertEqual((status, json.loads(answer)["error"]), (400, "batch_too_large"))
        self.assertEqual(self.lines(), [])

    def test_rejects_lines_are_bounded_in_bytes_too(self):
        body = json.dumps({"writeKey": "k", "batch": [1] * 101}).encode()
        status, _, _ = self.get("/v1/batch", {"User-Agent": "u" * 1024}, "POST", body)
        self.assertEqual(status, 200)
        records = self.lines("rejects.jsonl")
        self.assertEqual(records[-1]["reason"], "too_many_rejects")
        self.assertLess(self.log_size("rejects.jsonl"),
                        pixel.MAX_REJECTS_BYTES_PER_REQUEST + 2 * 2048)

    def test_rejects_lines_quote_the_item_and_are_bounded(self):
        body = json.dumps({"writeKey": "k", "pad": "p" * 5000, "batch": [0] * 10000})
        self.assertEqual(self.post("batch", body.encode()), (200, {"success": True}))
        records = self.lines("rejects.jsonl")
        self.assertEqual(len(records), pixel.MAX_REJECTS_PER_REQUEST + 1)
        self.assertEqual({record["body"] for record in records[:-1]}, {"0"})
        self.assertEqual((records[-1]["reason"], records[-1]["detail"]),
                         ("too_many_rejects", "9900 more item(s) not quoted"))
        self.assertLess(self.log_size("rejects.jsonl"), 64 * 1024)
        self.assertEqual(json.loads(self.get("/health")[2])["rejected"], 10000)


class SilentSockets(ServerCase):
    """Connections that never send a whole request (silent, half a head, a head and part
    of a body) must not keep real ones waiting."""

    server_options = {"max_connections": 50, "request_timeout": 10.0}

    def test_a_real_pixel_is_served_within_a_second(self):
        stop = threading.Event()
        silent = []

        def hog():
            # Hold more connections than there are slots, reconnecting whatever is closed.
            while not stop.is_set():
                for sock in list(silent):
                    try:
                        sock.setblocking(False)
                        if sock.recv(1) == b"":
                            silent.remove(sock)
                            sock.close()
                    except BlockingIOError:
                        continue   # still open
                    except OSError:
                        silent.remove(sock)
                        sock.close()
                while len(silent) < 70 and not stop.is_set():
                    silent.append(socket.create_connection(("127.0.0.1", self.port)))
                    if len(silent) % 10 == 0:
                        silent[-1].sendall(b"GET /v1/pixel/track?writeKey=k")   # half a head
                    elif len(silent) % 10 == 5:   # a whole head, and a body that never ends
                        silent[-1].sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Length: 1000\r\n\r\n{")
                stop.wait(0.02)

        hogging = threading.Thread(target=hog)
        hogging.start()
        try:
            self.assertTrue(wait_until(lambda: len(self.server.pool) == 50))
            latencies = []
            for number in range(10):
                started = time.monotonic()
                status, _, body = self.get("/v1/pixel/track?writeKey=k&userId=u&event=r%d"
                                           % number)
                latencies.append(time.monotonic() - started)
                self.assertEqual((status, body), (200, pixel.GIF))
        finally:
            stop.set()
            hogging.join()
            for sock in silent:
                sock.close()
        self.assertLess(max(latencies), 1.0, latencies)
        self.assertEqual(len(self.lines()), 10)


class DualStack(unittest.TestCase):
    """--host :: serves IPv4 clients too, as IPv4-mapped addresses; they are logged, and
    matched against --trusted-proxy, as plain IPv4."""

    def test_ipv4_clients_of_an_ipv6_socket(self):
        if not socket.has_ipv6:
            self.skipTest("no IPv6 here")
        folder = temp_dir(self)
        events = pixel.LogWriter(os.path.join(folder, "events.jsonl"))
        rejects = pixel.LogWriter(os.path.join(folder, "rejects.jsonl"))
        self.addCleanup(events.close)
        self.addCleanup(rejects.close)
        app = app_over(events, rejects, trusted_proxies=["127.0.0.1"])
        try:
            server = pixel.PixelServer(("::", 0), app)
        except OSError as error:
            self.skipTest("cannot listen on :: here: %s" % error)
        port = serve_in_thread(self, server)
        for headers in ({}, {"X-Forwarded-For": "198.51.100.7"}):
            connection = http.client.HTTPConnection("127.0.0.1", port)
            connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e",
                               headers=headers)
            self.assertEqual(connection.getresponse().read(), pixel.GIF)
            connection.close()
        with open(events.path) as handle:
            self.assertEqual([json.loads(line)["context"]["ip"] for line in handle],
                             ["127.0.0.1", "198.51.100.7"])


class StopWhileFull(ServerCase):
    server_options = {"max_connections": 1, "request_timeout": 30.0, "idle_timeout": 30.0}

    @soak   # 1.3 s of waiting on a full pool
    def test_stop_returns_while_a_connection_waits_for_a_slot(self):
        # The only slot is held by a request pixel is at work on (not evictable), here held
        # up in the app; a second client then waits for a slot in the accept loop.
        release, answer = threading.Event(), self.app.answer
        self.addCleanup(release.set)

        def held(route, request):
            release.wait(30)
            return answer(route, request)

        self.app.answer = held
        busy = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(busy.close)
        busy.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(wait_until(lambda: len(self.server.pool) == 1))
        waiting = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(waiting.close)
        self.assertTrue(wait_until(lambda: self.server.pool._full))
        stopping = threading.Thread(target=self.server.stop, args=(0.3,), daemon=True)
        stopping.start()
        stopping.join(5)
        self.assertFalse(stopping.is_alive(), "stop() waited for a slot that never came")


class EvictionRace(unittest.TestCase):
    @soak
    def test_eviction_while_connections_come_and_go(self):
        # mark_idle and mark_busy run without the pool's lock; _evict_one must not trip
        # over them. Switch threads as often as the interpreter allows, for a second.
        pool = pixel.ConnectionPool(4, serve=None, reporter=pixel.Reporter(io.StringIO()))
        pairs = [socket.socketpair() for _ in range(8)]
        self.addCleanup(lambda: [sock.close() for pair in pairs for sock in pair])
        stop, errors = threading.Event(), []

        def churn():
            while not stop.is_set():
                for sock, _ in pairs:
                    pool.mark_idle(sock)
                    pool.mark_busy(sock)
                    pool.mark_idle(sock)

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        self.addCleanup(sys.setswitchinterval, interval)
        churning = threading.Thread(target=churn)
        churning.start()
        deadline = time.monotonic() + 1.0
        try:
            while time.monotonic() < deadline:
                try:
                    pool._evict_one()
                except (RuntimeError, KeyError) as error:
                    errors.append(repr(error))
        finally:
            stop.set()
            churning.join()
        self.assertEqual(errors, [])


class PoolThreads(unittest.TestCase):
    def test_a_thread_whose_connection_another_took_waits_on_for_the_next(self):
        # A thread woken for a connection that a thread coming back to the pool took first
        # must wait on, not exit: else a busy server starts a thread (~150 us) for many of
        # its connections. No thread exits within `linger`, so no more than `size` serve.
        served, done = set(), threading.Semaphore(0)   # Thread objects held: none reused

        def serve(sock, client_address):
            served.add(threading.current_thread())
            done.release()

        pool = pixel.ConnectionPool(8, serve, reporter=pixel.Reporter(io.StringIO()),
                                    linger=60)
        self.addCleanup(pool.close, 5)
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        self.addCleanup(sys.setswitchinterval, interval)
        for _ in range(3000):
            self.assertTrue(pool.submit(object(), ("127.0.0.1", 0)))
        for _ in range(3000):
            self.assertTrue(done.acquire(timeout=10))
        self.assertLessEqual(len(served), 8)


class AtLimits(unittest.TestCase):
    """The accept loop out of file descriptors, and signals at a thread limit."""

    def test_a_connection_that_gets_no_thread_is_closed_and_said_and_the_next_served(self):
        stderr = io.StringIO()
        server = pixel.PixelServer(("127.0.0.1", 0), make_pixel(self, temp_dir(self)).app,
                                   reporter=pixel.Reporter(stderr))
        self.addCleanup(server.server_close)
        self.addCleanup(server.pool.close, 5)
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        with socket.create_connection(server.server_address, timeout=5) as sock, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            with unittest.mock.patch("threading.Thread.start",
                                     side_effect=RuntimeError("can't start new thread")):
                server._handle_request_noblock()   # accept, and submit to the pool
            gc.collect()
            self.assertEqual(sock.recv(100), b"")
        # Closed by pixel, not left to the garbage collector (which would warn).
        self.assertEqual([str(warning.message) for warning in caught], [])
        self.assertEqual(stderr.getvalue(),
                         "pixel: cannot start a thread for a new connection; closed it\n")
        self.assertEqual(len(server.pool), 0, "its slot is free")
        with socket.create_connection(server.server_address, timeout=5) as sock:
            sock.sendall(request)
            server._handle_request_noblock()
            reply = sock.recv(100)
            self.assertTrue(reply.startswith(b"HTTP/1.1 200 "), reply)

    def test_a_signals_work_waits_for_a_thread_and_a_stop_needs_none(self):
        # The attack pass: at a thread limit, SIGHUP's handler raised RuntimeError out of
        # serve_forever (a traceback, exit 1), and a SIGTERM would have too.
        stderr = io.StringIO()
        server = pixel.PixelServer(("127.0.0.1", 0), reporter=pixel.Reporter(stderr))
        self.addCleanup(server.server_close)
        ran = threading.Event()
        server.deferred.append(ran.set)   # as SIGHUP's handler leaves it
        with unittest.mock.patch("threading.Thread.start",
                                 side_effect=RuntimeError("can't start new thread")):
            server.service_actions()
            server.service_actions()
        self.assertFalse(ran.is_set())
        self.assertEqual(stderr.getvalue(),
                         "pixel: cannot start a thread; trying again each 0.1 s\n")
        server.service_actions()
        self.assertTrue(ran.wait(10))
        self.assertEqual(server.deferred, [])
        server.stop_asked = True   # as SIGTERM's handler leaves it
        with unittest.mock.patch("threading.Thread.start", side_effect=RuntimeError):
            started = time.monotonic()
            with self.assertRaises(pixel.StopAsked):
                server.serve_forever(0.05)
        self.assertLess(time.monotonic() - started, 5)

    def test_a_stop_a_signal_asks_for_frees_a_submit_waiting_for_a_slot(self):
        # A signal's handler only sets pool.stopping (no lock: the main thread, which it
        # interrupts, may hold it); accept's submit(), waiting for a slot on that thread,
        # must see it without a notify, or SIGTERM waits for a slot that may never come.
        release = threading.Event()
        pool = pixel.ConnectionPool(1, lambda sock, address: release.wait(30),
                                    reporter=pixel.Reporter(io.StringIO()))
        self.addCleanup(pool.close, 1)
        self.addCleanup(release.set)
        self.assertTrue(pool.submit(object(), ("127.0.0.1", 0)))   # busy, never idle
        waiting = threading.Thread(target=pool.submit, args=(object(), ("127.0.0.1", 0)))
        waiting.start()
        self.assertTrue(wait_until(lambda: pool._full))
        pool.stopping = True   # as serve()'s handler does
        waiting.join(5)
        self.assertFalse(waiting.is_alive())

    def test_accept_out_of_descriptors_waits_instead_of_spinning(self):
        # socketserver tries a failed accept() again at once: with EMFILE, for ever, at
        # 100% CPU (the attack pass). The client waits in the listen queue meanwhile.
        stderr = io.StringIO()
        server = pixel.PixelServer(("127.0.0.1", 0), reporter=pixel.Reporter(stderr))
        self.addCleanup(server.server_close)
        listener, calls = server.socket, []

        class Exhausted:
            def accept(self):
                calls.append(time.monotonic())
                raise OSError(errno.EMFILE, "Too many open files")

            def __getattr__(self, name):
                return getattr(listener, name)

        server.socket = Exhausted()
        self.addCleanup(setattr, server, "socket", listener)
        for _ in range(3):
            server._handle_request_noblock()
        self.assertEqual(len(calls), 3)
        self.assertGreaterEqual(calls[2] - calls[0], 2 * pixel.ACCEPT_PAUSE * 0.9)
        self.assertEqual(stderr.getvalue().count("\n"), 1, "said once an interval")
        self.assertIn("cannot accept a connection: Too many open files; it waits (raise the "
                      "open-file limit", stderr.getvalue())


class InternalErrors(ServerCase):
    def test_one_line_per_interval_not_one_per_request(self):
        def broken(route, request):
            raise RuntimeError("boom")
        self.app.answer = broken
        for _ in range(20):
            with self.assertRaises((ConnectionError, http.client.HTTPException)):
                self.get("/v1/pixel/track?writeKey=k&userId=u&event=e")
        self.assertEqual(self.stderr.getvalue().count("internal error"), 1)
        self.assertIn("RuntimeError: boom", self.stderr.getvalue())

    def test_the_address_in_the_line_is_as_the_logs_have_it(self):
        def broken(route, request):
            raise RuntimeError("boom")
        for options, shown in (({}, "127.0.0.1"), ({"anonymize_ip": True}, "127.0.0.0"),
                               ({"no_ip": True}, "a client")):
            with self.subTest(options):
                self.recorder_options = options
                self.dir, self.stderr = temp_dir(self), io.StringIO()
                self.start_server()
                self.app.answer = broken
                with self.assertRaises((ConnectionError, http.client.HTTPException)):
                    self.get("/v1/pixel/track?writeKey=k&userId=u&event=e")
                self.assertIn("internal error serving %s: RuntimeError" % shown,
                              self.stderr.getvalue())


class BrowserRoutes(ServerCase):
    """What analytics.js (analytics-next) sends: a preflight, then a text/plain POST to the
    first letter of the event's type, with Basic auth and the browser's own clock."""

    ORIGIN = "https://shop.example.com"
    recorder_options = {"allow_origin": ["https://shop.example.com", "*.example.org"]}

    def event(self, **fields):
        return dict({"type": "track", "event": "Clicked", "anonymousId": "a1",
                     "messageId": "ajs-next-1-x", "timestamp": "2026-11-27T10:00:00.000Z",
                     "sentAt": "2026-11-27T10:00:05.000Z", "writeKey": "K",
                     "context": {"library": {"name": "analytics.js"}}}, **fields)

    def post(self, route, document, origin=ORIGIN):
        headers = {"Content-Type": "text/plain", "Origin": origin,
                   "Authorization": "Basic " + base64.b64encode(b"K:").decode()}
        return self.get("/v1/" + route, headers, "POST", json.dumps(document).encode())

    def test_preflight(self):
        status, headers, body = self.get("/v1/t", {
            "Origin": self.ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,x-retry-count"}, "OPTIONS")
        self.assertEqual((status, body), (204, b""))
        self.assertEqual((headers["access-control-allow-origin"], headers["vary"],
                          headers["access-control-allow-credentials"],
                          headers["access-control-allow-methods"],
                          headers["access-control-allow-headers"],
                          headers["access-control-max-age"]),
                         (self.ORIGIN, "Origin", "true", "POST, OPTIONS",
                          "authorization, x-retry-count", "7200"))
        status, headers, _ = self.get("/v1/batch", {"Origin": "https://a.b.example.org:8443",
                                                    "Access-Control-Request-Method": "POST"},
                                      "OPTIONS")
        self.assertEqual((status, headers["access-control-allow-origin"]),
                         (204, "https://a.b.example.org:8443"))

    def test_every_short_route_and_cors_on_the_answer(self):
        for letter, kind, extra in [("t", "track", {}), ("p", "page", {"name": "Home"}),
                                    ("i", "identify", {"userId": "u"}),
                                    ("g", "group", {"groupId": "g"}),
                                    ("a", "alias", {"userId": "u", "previousId": "p"}),
                                    ("s", "screen", {"name": "Home"})]:
            with self.subTest(letter):
                status, headers, body = self.post(letter, self.event(
                    type=kind, messageId="ajs-next-" + letter, **extra))
                self.assertEqual((status, json.loads(body)), (200, {"success": True}))
                self.assertEqual(headers["access-control-allow-origin"], self.ORIGIN)
        status, _, _ = self.post("b", {"writeKey": "K", "sentAt": "2026-11-27T10:00:05.000Z",
                                       "batch": [self.event(messageId="ajs-next-b1"),
                                                 self.event(messageId="ajs-next-b2")]})
        self.assertEqual(status, 200)
        logged = self.lines()
        self.assertEqual([event["type"] for event in logged],
                         ["track", "page", "identify", "group", "alias", "screen", "track",
                          "track"])
        self.assertEqual(self.lines("rejects.jsonl"), [])

    def test_the_browser_clock_is_corrected_by_sent_at(self):
        self.post("t", self.event())
        (event,) = self.lines()
        self.assertEqual(event["originalTimestamp"], "2026-11-27T10:00:00.000Z")
        received = pixel.parse_time(event["receivedAt"])
        self.assertAlmostEqual(pixel.parse_time(event["timestamp"]), received - 5, places=2)

    def test_the_long_routes_keep_the_clients_timestamp(self):
        self.post("track", self.event())
        self.assertEqual(self.lines()[0]["timestamp"], "2026-11-27T10:00:00.000Z")

    def test_an_origin_that_is_not_allowed_gets_nothing(self):
        for origin in ("https://evil.example", "https://example.org", "null",
                       "https://shop.example.com/", "https://shop.example.com <x>",
                       "javascript:alert(1)"):
            with self.subTest(origin):
                status, headers, _ = self.get("/v1/t", {
                    "Origin": origin, "Access-Control-Request-Method": "POST"}, "OPTIONS")
                self.assertEqual(status, 403)
                self.assertNotIn("access-control-allow-origin", headers)
                status, headers, body = self.post("t", self.event(), origin=origin)
                self.assertEqual((status, json.loads(body)["error"]),
                                 (403, "origin_not_allowed"))
                self.assertNotIn("access-control-allow-origin", headers)
        self.assertEqual(self.lines(), [])
        self.assertEqual({record["reason"] for record in self.lines("rejects.jsonl")},
                         {"origin_not_allowed"})

    def test_metrics_are_counted_not_written(self):
        status, headers, body = self.get("/v1/m", {"Origin": self.ORIGIN}, "POST",
                                         b'{"series":[]}')
        self.assertEqual((status, headers["access-control-allow-origin"]), (200, self.ORIGIN))
        self.assertEqual(self.lines(), [])
        self.assertEqual(json.loads(self.get("/health")[2])["browser_metrics"], 1)

    def test_early_refusals_carry_cors_headers_too(self):
        status, answer_headers, body = self.get("/v1/t", {"Origin": self.ORIGIN}, "POST", iter(
            [b" " * pixel.MAX_BODY_BYTES, b"{}"]))
        self.assertEqual((status, json.loads(body)["error"],
                          answer_headers["access-control-allow-origin"]),
                         (400, "body_too_large", self.ORIGIN))
        status, answer_headers, body = self.get("/v1/b", {"Origin": self.ORIGIN}, "POST",
                                                b" " * (pixel.MAX_BODY_BYTES + 1))
        self.assertEqual((status, json.loads(body)["error"],
                          answer_headers["access-control-allow-origin"]),
                         (400, "body_too_large", self.ORIGIN))
        status, answer_headers, body = self.get("/v1/b", {"Origin": "https://evil.example"},
                                                "POST", b" " * (pixel.MAX_BODY_BYTES + 1))
        self.assertEqual((status, json.loads(body)["error"]), (403, "origin_not_allowed"))
        self.assertNotIn("access-control-allow-origin", answer_headers)

    def test_servers_without_an_origin_get_no_cors_headers(self):
        status, headers, _ = self.get("/v1/track", {}, "POST", json.dumps(self.event()).encode())
        self.assertEqual(status, 200)
        self.assertNotIn("access-control-allow-origin", headers)


class BrowserRoutesAnyOrigin(ServerCase):
    """With no --allow-origin, any origin: "null" too (a sandboxed frame, a file: page)."""

    event, post = BrowserRoutes.event, BrowserRoutes.post

    def test_any_well_formed_origin_and_null_get_in(self):
        for origin in ("null", "https://evil.example"):
            with self.subTest(origin):
                status, headers, _ = self.post("t", self.event(), origin=origin)
                self.assertEqual((status, headers["access-control-allow-origin"]),
                                 (200, origin))
        for origin in ("https://shop.example.com/", "javascript:alert(1)", "Null"):
            with self.subTest(origin):
                status, headers, body = self.post("t", self.event(), origin=origin)
                self.assertEqual((status, json.loads(body)["error"]),
                                 (403, "origin_not_allowed"))
        self.assertEqual(len(self.lines()), 1, "the second is a retry of the first")


class SettingsDocument(ServerCase):
    recorder_options = {"write_key": ["K"], "public_url": "https://pixel.example.com/"}

    def test_points_analytics_js_back_here(self):
        status, headers, body = self.get("/v1/projects/K/settings",
                                         {"Origin": "https://shop.example.com"})
        self.assertEqual((status, headers["access-control-allow-origin"]),
                         (200, "https://shop.example.com"))
        destination = json.loads(body)["integrations"]["Segment.io"]
        self.assertEqual((destination["apiKey"], destination["apiHost"],
                          destination["protocol"]),
                         ("K", "pixel.example.com/v1", "https"))
        status, headers, _ = self.get("/v1/projects/K/settings", {
            "Origin": "https://shop.example.com", "Access-Control-Request-Method": "GET"},
            "OPTIONS")
        self.assertEqual((status, headers["access-control-allow-methods"]),
                         (204, "GET, OPTIONS"))

    def test_unknown_and_malformed_keys(self):
        for path in ("/v1/projects/other/settings", "/v1/projects//settings",
                     "/v1/projects/K%3Cb%3E/settings", "/v1/projects/a/b/settings"):
            with self.subTest(path):
                self.assertEqual(self.get(path)[0], 404)

    def test_under_a_wsgi_prefix(self):
        app = pixel.make_wsgi_app(log=os.path.join(self.dir, "w.jsonl"),
                                  rejects=os.path.join(self.dir, "w-rejects.jsonl"),
                                  dedupe_window=10, public_url="https://site.example")
        self.addCleanup(app.close)
        answers = []
        body = app({"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/collect",
                    "PATH_INFO": "/v1/projects/K/settings", "HTTP_HOST": "site.example",
                    "wsgi.input": io.BytesIO()}, lambda status, headers: answers.append(status))
        self.assertEqual(answers, ["200 OK"])
        destination = json.loads(b"".join(body))["integrations"]["Segment.io"]
        self.assertEqual(destination["apiHost"], "site.example/collect/v1")
        self.assertEqual(app.app.recorder.recent.size, 10)
        app.app.public_url = "https://site.example/collect"   # the whole way: not twice
        body = app({"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/collect",
                    "PATH_INFO": "/v1/projects/K/settings", "HTTP_HOST": "site.example",
                    "wsgi.input": io.BytesIO()}, lambda status, headers: None)
        destination = json.loads(b"".join(body))["integrations"]["Segment.io"]
        self.assertEqual(destination["apiHost"], "site.example/collect/v1")

    def test_a_public_url_with_the_path_a_proxy_mounts_pixel_under(self):
        # nginx's `location /collect/ { proxy_pass http://127.0.0.1:8000/; }` strips the path:
        # only --public-url can tell analytics.js to post to /collect/v1/...
        metrics = pixel.Metrics()
        app = pixel.App(pixel.Recorder(self.events, self.rejects, metrics=metrics), metrics,
                        public_url=pixel.configure(public_url="https://shop.example/collect/")
                        .public_url)
        answer = app.answer(pixel.route_for("/v1/projects/K/settings"), request(
            path="/v1/projects/K/settings", headers={"host": "127.0.0.1:8000"}))
        destination = json.loads(answer.body)["integrations"]["Segment.io"]
        self.assertEqual((destination["apiHost"], destination["protocol"]),
                         ("shop.example/collect/v1", "https"))
        for bad in ("https://shop.example/collect?x=1", "https://shop.example/a b",
                    "https://shop.example/<b>", "https://user@shop.example/collect",
                    "https://shop.example/a//b", "https://shop.example/%zz",
                    "https://shop.example/a/../b", "https://shop.example/."):
            with self.subTest(bad), self.assertRaisesRegex(ValueError, "public_url: not an"):
                pixel.configure(public_url=bad)
        # The attack: /v1 at the end gave analytics.js .../v1/v1/t, a 404 for every event.
        with self.assertRaisesRegex(ValueError, r"ends in /v1, which pixel and its clients add \(try "
                                                r"https://shop\.example/collect\)"):
            pixel.configure(public_url="https://shop.example/collect/v1/")
        self.assertEqual(pixel.configure(public_url="https://shop.example/a%2Fb/.well-known")
                         .public_url, "https://shop.example/a%2Fb/.well-known")
        # The attack on that check: %2e%2e is .. to a browser, %76%31 is v1; ... is a name.
        for bad in ("https://shop.example/a/%2e%2e", "https://shop.example/a/.%2E"):
            with self.subTest(bad), self.assertRaisesRegex(ValueError, "public_url: not an"):
                pixel.configure(public_url=bad)
        with self.assertRaisesRegex(ValueError, r"ends in /v1, which pixel and its clients add \(try "
                                                r"https://shop\.example\)"):
            pixel.configure(public_url="https://shop.example/%76%31")
        self.assertEqual(pixel.configure(public_url="https://shop.example/.../p").public_url,
                         "https://shop.example/.../p")
        # A route's URL pasted whole: analytics.js sent to .../v1/batch/v1/b. The URL it
        # suggests is taken (the attack: /x/v1/v1/batch suggested /x/v1, then refused it).
        for bad, tail, base in (("https://shop.example/v1/batch", "/v1/batch", ""),
                                ("https://shop.example/c/v1/pixel/track/", "/v1/pixel/track", "/c"),
                                ("https://shop.example/c/%76%31/t", "/v1/t", "/c"),
                                ("https://shop.example/c/v1/projects/K/settings",
                                 "/v1/projects/K/settings", "/c"),
                                ("https://shop.example/v1/v1/batch", "/v1/v1/batch", ""),
                                ("https://shop.example/health/v1/t", "/v1/t", "/health"),
                                ("https://shop.example/c/beacon/v1/batch", "/beacon/v1/batch",
                                 "/c")):
            with self.subTest(bad), self.assertRaisesRegex(
                    ValueError, r"ends in %s, which pixel and its clients add \(try "
                                r"https://shop\.example%s\)" % (tail, base)):
                pixel.configure(public_url=bad)
            self.assertEqual(pixel.configure(public_url="https://shop.example" + base)
                             .public_url, "https://shop.example" + base)
        # Only what a client adds: a proxy may mount pixel at /v1/c, /health or /sourceConfig.
        for good in ("https://shop.example/v1/c", "https://shop.example/analytics/health",
                     "https://shop.example/sourceConfig"):
            self.assertEqual(pixel.configure(public_url=good).public_url, good)
        # Each tail is checked once: 65,000 segments took 15 s.
        started = time.process_time()
        with self.assertRaisesRegex(ValueError, r"ends in /v1, which"):
            pixel.configure(public_url="https://shop.example" + "/a" * 65000 + "/v1")
        self.assertLess(time.process_time() - started, 2)

    def test_urls_are_taken_as_browsers_take_them(self):
        # The attack pass: https://x:99999 was taken, and HTTPS:// and a docker_host refused,
        # by --public-url, --forward and --allow-origin alike.
        for option in ("public_url", "forward", "allow_origin"):
            def configured(url):
                value = getattr(pixel.configure(**{option: [url] if option == "allow_origin"
                                                   else url}), option)
                return value[0] if option == "allow_origin" else value

            for bad in ("https://shop.example:99999", "https://shop.example:0",
                        "https://[::1]:65536", "https://shop.example:8a", "http://[1.2.3.4]",
                        "http://[:::]", "http://shop.example:\u00b2", "ht\ttp://shop.example"):
                with self.subTest(option=option, url=bad), self.assertRaises(ValueError):
                    configured(bad)
            for url, taken in (("HTTPS://shop.example", "https://shop.example"),
                               ("http://docker_host:8000", "http://docker_host:8000"),
                               ("https://[::1]:65535", "https://[::1]:65535")):
                with self.subTest(option=option, url=url):
                    self.assertEqual(configured(url), taken)
        # The second attack: browsers send http://a_b, not :080, and https://x, not :443.
        for entry, origin in (("http://a_b:080", "http://a_b"), ("https://x:443", "https://x"),
                              ("HTTPS://Shop.Example:8443", "https://shop.example:8443")):
            self.assertEqual(pixel.configure(allow_origin=[entry]).allow_origin, [origin])
        for bad in ("*.example.com:99999", "*.example.com:0"):
            with self.subTest(bad), self.assertRaises(ValueError):
                pixel.configure(allow_origin=[bad])
        for bad in ("http://shop.example#", "http://shop.example?", "http://shop.example/a b"):
            with self.subTest(bad), self.assertRaises(ValueError):
                pixel.configure(forward=bad)
        self.assertTrue(pixel.origin_ok("https://shop.example.com."))   # a trailing dot
        app = pixel.App(pixel.Recorder(self.events, self.rejects), pixel.Metrics(),
                        public_url=pixel.configure(public_url="HTTPS://shop.example").public_url)
        answer = app.answer(pixel.route_for("/v1/projects/K/settings"), request(
            path="/v1/projects/K/settings", headers={"host": "127.0.0.1:8000"}))
        self.assertEqual(json.loads(answer.body)["integrations"]["Segment.io"]["protocol"],
                         "https")

    def test_from_the_host_header_without_a_public_url(self):
        recorder = app_over(self.events, self.rejects)
        answer = recorder.answer(pixel.route_for("/v1/projects/K/settings"), request(
            path="/v1/projects/K/settings", headers={"host": "127.0.0.1:8000"}))
        destination = json.loads(answer.body)["integrations"]["Segment.io"]
        self.assertEqual((destination["apiHost"], destination["protocol"]),
                         ("127.0.0.1:8000/v1", "http"))
        answer = recorder.answer(pixel.route_for("/v1/projects/K/settings"), request(
            path="/v1/projects/K/settings", headers={"host": "x\"><script>"}))
        self.assertEqual(answer.status, 400)

    def test_the_scheme_it_came_by_and_no_shared_cache_of_a_host_built_document(self):
        recorder = app_over(self.events, self.rejects, trusted_proxies=["10.0.0.0/8"])
        route = pixel.route_for("/v1/projects/K/settings")
        for name, peer, scheme, forwarded, expected in [
                ("plain", "192.0.2.1", "http", None, "http"),
                ("TLS", "192.0.2.1", "https", None, "https"),
                ("a trusted proxy that ended TLS", "10.0.0.2", "http", "https", "https"),
                ("a trusted proxy over plain HTTP", "10.0.0.2", "https", "http", "http"),
                ("anyone else's header", "192.0.2.1", "http", "https", "http")]:
            with self.subTest(name):
                headers = {"host": "pixel.test"}
                if forwarded:
                    headers["x-forwarded-proto"] = forwarded
                answer = recorder.answer(route, pixel.Request(
                    "GET", "/v1/projects/K/settings", "", headers, peer, b"", "", scheme))
                destination = json.loads(answer.body)["integrations"]["Segment.io"]
                self.assertEqual(destination["protocol"], expected)
                self.assertIn(("Cache-Control", "no-store"), answer.headers)
        # With --public-url the document is the same for every visitor: cacheable.
        status, headers, _ = self.get("/v1/projects/K/settings")
        self.assertEqual(status, 200)
        self.assertNotIn("cache-control", headers)

    def test_wsgi_url_scheme(self):
        app = pixel.make_wsgi_app(log=os.path.join(self.dir, "w.jsonl"),
                                  rejects=os.path.join(self.dir, "w-rejects.jsonl"))
        self.addCleanup(app.close)
        for scheme in ("https", "http"):
            with self.subTest(scheme):
                answers = []
                body = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/projects/K/settings",
                            "HTTP_HOST": "site.example", "wsgi.url_scheme": scheme,
                            "wsgi.input": io.BytesIO()},
                           lambda status, headers: answers.append((status, headers)))
                self.assertEqual(answers[0][0], "200 OK")
                self.assertIn(("Cache-Control", "no-store"), answers[0][1])
                destination = json.loads(b"".join(body))["integrations"]["Segment.io"]
                self.assertEqual(destination["protocol"], scheme)


class OriginPatterns(unittest.TestCase):
    def test_cases(self):
        allowed = ("https://shop.example.com", "*.example.org")
        for origin, expected in [("https://shop.example.com", True),
                                 ("http://shop.example.com", False),
                                 ("https://SHOP.example.com", True),
                                 ("https://a.example.org", True),
                                 ("http://a.b.example.org:8080", True),
                                 ("https://example.org", False),
                                 ("https://evilexample.org", False),
                                 ("https://[::1]:8080", False)]:
            with self.subTest(origin):
                self.assertEqual(pixel.origin_allowed(origin, allowed), expected)
        self.assertTrue(pixel.origin_allowed("https://anything.test", ()))

    def test_flag_values(self):
        args = pixel.parse_args(["--allow-origin", "https://Shop.example.com",
                                 "--allow-origin", "*.example.org"], {})
        self.assertEqual(args.allow_origin, ["https://shop.example.com", "*.example.org"])
        for bad in ("shop.example.com", "*", "*.com.", "https://x/path", "null"):
            with self.subTest(bad):
                with self.assertRaises(SystemExit), \
                        unittest.mock.patch("sys.stderr", io.StringIO()):
                    pixel.parse_args(["--allow-origin", bad], {})


class Timeouts(unittest.TestCase):
    def test_no_timeout_is_ever_zero_for_the_kernel(self):
        for seconds in (1e-9, 1e-7, 0.0000009):
            self.assertNotEqual(pixel._timeval(seconds), struct.pack("@ll", 0, 0))
        self.assertEqual(pixel._timeval(1.5), struct.pack("@ll", 1, 500000))

    def test_tiny_flag_values_are_refused(self):
        for flag in ("--request-timeout", "--idle-timeout"):
            for value in ("1e-7", "0", "-1", "nan", "inf"):
                with self.subTest((flag, value)):
                    with self.assertRaises(SystemExit), \
                            unittest.mock.patch("sys.stderr", io.StringIO()):
                        pixel.parse_args([flag, value], {})


class DiskFull(ServerCase):
    """A real full disk: a 256 KiB tmpfs, filled up, then emptied."""

    def setUp(self):
        self.dir = mount_tmpfs(self, 256 * 1024)
        self.stderr = io.StringIO()
        self.start_server()

    def fill(self):
        return fill_disk(self, self.dir)

    def test_full_disk_keeps_answering_and_recovers(self):
        self.get("/v1/pixel/track?writeKey=k&userId=u&event=first")
        filler = self.fill()
        for number in range(200):
            self.assertGif(*self.get("/v1/pixel/track?writeKey=k&userId=u&event=full%d&pad=%s"
                                     % (number, "x" * 300)))
        health = json.loads(self.get("/health")[2])
        self.assertEqual(health["status"], "degraded")
        self.assertGreater(health["write_errors"], 0)
        self.assertEqual(self.stderr.getvalue().count("cannot write " + self.events.path), 1)
        events = self.lines()   # asserts the file ends on a whole line: no torn tail
        written = len(events)
        self.assertEqual(written + self.events.failed, 201)
        os.remove(filler)
        self.assertGif(*self.get("/v1/pixel/track?writeKey=k&userId=u&event=after"))
        self.assertEqual(self.lines()[-1]["event"], "after")
        self.assertEqual(len(self.lines()), written + 1)
        self.assertIn("writing %s again" % self.events.path, self.stderr.getvalue())
        self.assertEqual(json.loads(self.get("/health")[2])["status"], "ok")

    def test_the_api_answers_503_when_nothing_was_written(self):
        # Each event over a 4 KiB page, so none fits in what is left of the log's last page.
        event = {"type": "track", "userId": "u", "event": "e", "pad": "x" * 5000}
        body = json.dumps({"writeKey": "k", "batch": [event] * 10}).encode()
        self.assertEqual(self.get("/v1/batch", {}, "POST", body)[0], 200)
        self.fill()
        accepted = json.loads(self.get("/health")[2])["accepted"]
        for route, document in (("batch", {"writeKey": "k", "batch": [event] * 20}),
                                ("track", dict(event, writeKey="k"))):
            with self.subTest(route):
                status, _, answer = self.get("/v1/" + route, {}, "POST",
                                             json.dumps(document).encode())
                self.assertEqual((status, json.loads(answer)),
                                 (503, {"success": False, "error": "write_failed"}))
        self.assertEqual(json.loads(self.get("/health")[2])["accepted"], accepted)
        self.assertGif(*self.get("/v1/pixel/track?writeKey=k&userId=u&event=e"))


class DiskFullRejects(ServerCase):
    """The durability pass on a full disk: an API answer is 200, or a 400 that names its
    reason, only once the rejects line is written too; a request written in part is taken
    back whole; and a follower of the log is not flooded with lines cut back."""

    def setUp(self):
        self.dir = mount_tmpfs(self, 4 << 20)
        self.stderr = io.StringIO()
        self.start_server()

    def test_a_rejects_line_that_cannot_be_written_holds_nothing_back(self):
        # The events log has room in its last page, rejects.jsonl none. A first fix wrote the
        # rejects lines first and answered 503 when they failed: valid events were held back,
        # and a body that can never be taken was sent again and again (the attack on it).
        self.assertEqual(self.get("/v1/track", {}, "POST",
                                  b'{"writeKey":"k","userId":"u","event":"first"}')[0], 200)
        fill_disk(self, self.dir)
        for path, body, wanted in (
                ("/v1/batch", b'{"writeKey":"k","batch":[{"type":"track","userId":"u",'
                              b'"event":"kept"},{"type":"track","userId":"u"}]}', 200),
                ("/v1/track", b'{"writeKey":"k","userId":"u"}', 200),   # as Segment
                ("/v1/batch", b'{"writeKey":"k","batch":[', 400)):
            with self.subTest(path=path, body=body):
                self.assertEqual(self.get(path, {}, "POST", body)[0], wanted)
        self.assertEqual([event["event"] for event in self.lines()], ["first", "kept"])
        self.assertEqual(self.rejects.failed, 3)   # counted, and said on stderr
        self.assertIn("cannot write %s" % self.rejects.path, self.stderr.getvalue())
        self.assertEqual(json.loads(self.get("/health")[2])["status"], "degraded")

    def test_refused_items_are_written_once_when_their_batch_is_sent_again(self):
        # The second attack: the rejects lines of a batch answered 503 were written, and
        # written again by each retry (5 lines for one bad item after 4 retries).
        body = (b'{"writeKey":"k","batch":[{"type":"track","userId":"u","event":"kept"},'
                b'{"type":"track","userId":"u"}]}')
        with unittest.mock.patch.object(self.events, "write", return_value=0):
            for _ in range(3):
                self.assertEqual(self.get("/v1/batch", {}, "POST", body)[0], 503)
        self.assertEqual(self.get("/v1/batch", {}, "POST", body)[0], 200)
        self.assertEqual([event["event"] for event in self.lines()], ["kept"])
        self.assertEqual([line["reason"] for line in self.lines("rejects.jsonl")],
                         ["event_not_defined"])

    def test_a_request_written_in_part_is_taken_back_whole(self):
        # 4,000 events with no messageId, over 1 MiB of lines: three writes. The disk filled
        # after the first, which stayed: the client's retry wrote those events twice.
        batch = [{"type": "track", "userId": "u%d" % number, "event": "e", "pad": "x" * 80}
                 for number in range(4000)]
        body = json.dumps({"writeKey": "k", "batch": batch}).encode()
        filler = fill_disk(self, self.dir)
        os.truncate(filler, os.stat(filler).st_size - (1100 << 10))
        status, _, answer = self.get("/v1/batch", {}, "POST", body)
        self.assertEqual(status, 503, answer)
        self.assertEqual(os.path.getsize(os.path.join(self.dir, "events.jsonl")), 0)
        os.remove(filler)
        self.assertEqual(self.get("/v1/batch", {}, "POST", body)[0], 200)
        self.assertEqual(sorted(event["userId"] for event in self.lines()),
                         sorted(event["userId"] for event in batch))

    def test_a_backfill_from_a_full_disk_ends(self):
        # The attack on the forwarder's hold for a full disk: a backfill, whose checkpoint
        # lives beside its files, sent them all, then waited for room for ever.
        receiver = FakeReceiver(self)
        path = write_file(self.dir, "old.jsonl", b"".join(log_event(n) for n in range(50)))
        os.makedirs(os.path.join(self.dir, ".pixel"))
        fill_disk(self, self.dir)
        result = subprocess.run([sys.executable, PIXEL_RUN, "forward", "--to", receiver.url,
                                 path], capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(len(receiver.taken), 50)
        self.assertIn("forwarding goes on", result.stderr)

    def test_a_forwarding_pixel_starts_on_a_full_disk(self):
        # It exited 1 ("cannot forward ...: No space left on device"): every client refused,
        # and under systemd's Restart=always a loop, for as long as the disk was full.
        argv = ("--log", os.path.join(self.dir, "fwd.jsonl"), "--rejects",
                os.path.join(self.dir, "fwd-rejects.jsonl"), "--forward", "http://127.0.0.1:9")
        process, _ = start_pixel(self, *argv)
        process.kill()
        process.wait()
        os.remove(pixel.state_path(argv[1], "forward"))   # none to write over in place
        fill_disk(self, self.dir)
        process, port = start_pixel(self, *argv, stderr=subprocess.PIPE)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(connection.close)
        connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e")
        self.assertEqual(connection.getresponse().read(), pixel.GIF)
        process.terminate()
        self.assertIn("cannot write the checkpoint", process.communicate(timeout=30)[1])

    def test_a_full_disk_writes_no_line_to_cut_back_again_and_again(self):
        # A follower (tail -F) saw a part line and a truncation for each request, 524 times:
        # the log's last page had room for part of each line.
        self.assertGif(*self.get("/v1/pixel/track?writeKey=k&userId=u&event=first"))
        fill_disk(self, self.dir)
        cuts = []
        with unittest.mock.patch("os.ftruncate", side_effect=lambda fd, size: cuts.append(size)
                                 or os.truncate("/proc/self/fd/%d" % fd, size)):
            for number in range(20):
                self.assertGif(*self.get("/v1/pixel/track?writeKey=k&userId=u&event=e%d&pad=%s"
                                         % (number, "x" * 3000)))
        self.assertEqual(len(cuts), 1)   # the first failure's, then no write to cut
        self.assertEqual(len(self.lines()) + self.events.failed, 21)
        self.assertLessEqual(len(self.lines()), 2)


class DiskFullPartWay(ServerCase):
    """A batch written in pieces (--max-bytes) that the disk fills in the middle of."""
    writer_options = {"max_bytes": 16 * 1024}

    def setUp(self):
        self.dir = mount_tmpfs(self, 256 * 1024)
        self.stderr = io.StringIO()
        self.start_server()

    def test_what_was_written_is_kept_and_the_retry_writes_only_the_rest(self):
        # The answer is 503 (the SDK sends it all again); what reached the disk stays there,
        # so it must be in the dedupe window and the counts, or the retry writes it twice.
        batch = [{"type": "track", "userId": "u", "event": "e", "messageId": "m%d" % number,
                  "pad": "x" * 1000} for number in range(100)]
        body = json.dumps({"writeKey": "k", "batch": batch}).encode()
        filler = fill_disk(self, self.dir)
        os.truncate(filler, os.stat(filler).st_size - 40 * 1024)
        self.assertEqual(self.get("/v1/batch", {}, "POST", body)[0], 503)
        first = [event["messageId"] for event in self.logged()]
        self.assertTrue(0 < len(first) < 100, len(first))
        os.remove(filler)
        self.assertEqual(self.get("/v1/batch", {}, "POST", body)[0], 200)
        self.assertEqual(sorted(event["messageId"] for event in self.logged()),
                         sorted(event["messageId"] for event in batch))
        health = json.loads(self.get("/health")[2])
        self.assertEqual((health["accepted"], health["deduped"]), (100, len(first)))
        metrics = self.get("/metrics")[2].decode()
        self.assertIn('pixel_events_total{type="track"} 100\n', metrics)

    def logged(self):
        found = []
        for name in sorted(os.listdir(self.dir)):
            if name.startswith("events.jsonl"):
                with open(os.path.join(self.dir, name), "rb") as handle:
                    found += [json.loads(line) for line in handle]
        return found


class MainInAThread(unittest.TestCase):
    """main() itself, run in a thread with its signal handlers left alone."""

    def test_main_serves_until_stopped(self):
        folder = temp_dir(self, "pixel-main-")
        stdout = io.StringIO()
        servers = []
        real = pixel.PixelServer

        def capture(*args, **kwargs):
            servers.append(real(*args, **kwargs))
            return servers[-1]

        with unittest.mock.patch("sys.stdout", stdout), \
                unittest.mock.patch.object(pixel, "PixelServer", capture):
            runner = threading.Thread(target=lambda: servers.append(pixel.main(
                ["--port", "0", "--log", os.path.join(folder, "e.jsonl"), "--cpu", "none"],
                {})))
            runner.start()
            # It listens once it can answer, and says so: until then a connect is refused.
            self.assertTrue(wait_until(lambda: "listening on" in stdout.getvalue()),
                            "main() never listened")
            connection = http.client.HTTPConnection("127.0.0.1", servers[0].server_port)
            connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e")
            self.assertEqual(connection.getresponse().read(), pixel.GIF)
            connection.close()
            servers[0].shutdown()
            runner.join(10)
        self.assertEqual(servers[-1], 0)
        self.assertRegex(stdout.getvalue(), r"listening on http://127\.0\.0\.1:\d+/ writing "
                                            r"events to .*e\.jsonl and rejects to .*rejects\.jsonl")
        with open(os.path.join(folder, "e.jsonl")) as handle:
            self.assertEqual(len(handle.readlines()), 1)


# ---------------------------------------------------------------------------------------------
# The forwarder, in this process, against receivers on real sockets


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass   # a forwarder that gave up on an answer, or was killed: BrokenPipeError


class AnswerHandler(http.server.BaseHTTPRequestHandler):
    """A test server's handler: answer() sends a whole answer; a "then-close" header is not
    sent but closes the connection after the answer, without saying so."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # headers and body are two writes: 40 ms each, else

    def answer(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            if name == "then-close":
                self.close_connection = True
            else:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve_quietly(test, handler, context=None):
    """A QuietServer of `handler` on a free port, on a thread until `test` ends."""
    server = QuietServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(SERVE_POLL,), daemon=True).start()
    test.addCleanup(server.server_close)
    test.addCleanup(server.shutdown)
    return server


class FakeReceiver:
    """A Segment-compatible receiver on a thread: it records every batch posted to it, and
    answers as `respond(receiver, user, events)` says: (status, headers, body); a status of
    None hangs up without answering. `taken` holds the events of the batches it answered
    2xx, in order."""

    def __init__(self, test, respond=None, context=None):
        self.respond = respond or (lambda receiver, user, events: (200, {}, b'{"success":true}'))
        self.posts = []       # (path, user, events, headers) of every request, answered or not
        self.taken = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(AnswerHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                document = json.loads(body)
                scheme, _, credential = self.headers.get("Authorization", "").partition(" ")
                user = base64.b64decode(credential).decode().partition(":")[0] \
                    if scheme == "Basic" else None
                with receiver.lock:
                    receiver.posts.append((self.path, user, document, dict(self.headers)))
                status, headers, answer = receiver.respond(receiver, user, document["batch"])
                if status is None:
                    self.close_connection = True
                    return
                if 200 <= status < 300:   # taken before the answer can reach the forwarder
                    with receiver.lock:
                        receiver.taken.extend(document["batch"])
                self.answer(status, answer, headers.items())

        self.server = serve_quietly(test, Handler, context)
        self.port = self.server.server_address[1]
        self.url = "%s://127.0.0.1:%d" % ("https" if context else "http", self.port)

    def ids(self):
        with self.lock:
            return [event["messageId"] for event in self.taken]


def receiver_down(case):
    """(a FakeReceiver answering 503, the Event that makes it: clear it and it takes all)."""
    down = threading.Event()
    down.set()
    return FakeReceiver(case, lambda receiver, user, events: (
        (503, {}, b"") if down.is_set() else (200, {}, b"{}"))), down


def receiver_holding(case, message_id):
    """(a FakeReceiver taking all, Event set once the batch of `message_id` is in, Event that
    lets it be answered)."""
    held, hold = threading.Event(), threading.Event()

    def respond(receiver, user, events):
        if events[0]["messageId"] == message_id:
            held.set()
            hold.wait(10)
        return 200, {}, b"{}"

    return FakeReceiver(case, respond), held, hold


def moved_inodes(path):
    """The inodes of the files the forwarding checkpoint of the log at `path` lists to be
    found by identity after a restart (moved by hand, or the live file behind a backlog)."""
    checkpoint = pixel.read_checkpoint(pixel.state_path(path, "forward")) or {}
    return [entry["inode"] for entry in checkpoint.get("moved", ())]


def forward_checkpoint(path):
    """(inode, offset) that the forwarding checkpoint of the log at `path` names."""
    checkpoint = pixel.read_checkpoint(pixel.state_path(path, "forward"))
    return checkpoint["inode"], checkpoint["offset"]


def log_event(number, key="K", **fields):
    """A log line as pixel writes it, with messageId m<number>."""
    payload = dict({"writeKey": key, "userId": "u", "event": "e", "messageId": "m%d" % number},
                   **fields)
    return pixel.encode_line(pixel.build_event("track", payload, received_at=T0 + number))


def state_file(log_path, role="forward"):
    """pixel's state file for the log at `log_path`, its folder made, for a test to write."""
    path = pixel.state_path(log_path, role)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


class ForwardingCase(unittest.TestCase):
    def setUp(self):
        # The forwarder looks at an idle log every FORWARD_POLL s, and the writer at its path
        # every PATH_CHECK_INTERVAL; at 0.2 and 0.1 s each test here would wait out a few.
        for name in ("FORWARD_POLL", "PATH_CHECK_INTERVAL"):
            patcher = unittest.mock.patch("pixel." + name, 0.02)
            patcher.start()
            self.addCleanup(patcher.stop)
        self.dir = temp_dir(self, "pixel-forward-")
        self.stderr = io.StringIO()
        self.reporter = pixel.Reporter(self.stderr)

    def writer(self, **options):
        writer = pixel.LogWriter(os.path.join(self.dir, "events.jsonl"), readable=True,
                                 reporter=self.reporter, **options)
        self.addCleanup(writer.close)
        return writer

    def forwarder(self, url, writer, start=True, timeout=2, backoff=(0.05, 0.4),
                  configured_keys=(), **options):
        rejects = getattr(self, "rejects_writer", None)
        if rejects is None:   # one for the test: a restarted forwarder writes it on
            rejects = self.rejects_writer = pixel.LogWriter(
                os.path.join(self.dir, "rejects.jsonl"))
            self.addCleanup(rejects.close)
        keys = set(configured_keys) | ({options["write_key"]} if options.get("write_key")
                                       else set())
        receiver = pixel.Receiver(url, timeout=timeout, backoff=backoff, configured_keys=keys,
                                  reporter=self.reporter)
        forwarder = pixel.Forwarder(receiver, rejects, reporter=self.reporter, **options)
        forwarder.follow(writer)
        self.addCleanup(forwarder.close)
        self.addCleanup(forwarder.stop, 5)
        if start:
            forwarder.start()
        return forwarder

    def rejects(self):
        with open(os.path.join(self.dir, "rejects.jsonl")) as handle:
            return [json.loads(line) for line in handle]

    def write(self, writer, numbers, **fields):
        self.assertTrue(writer.write([log_event(number, **fields) for number in numbers]))

    def move_aside(self, writer):
        """The live file moved by hand to aside.jsonl, and the writer on at its path: that
        path."""
        aside = os.path.join(self.dir, "aside.jsonl")
        os.rename(writer.path, aside)
        writer.reopen()
        return aside

    def forwarded_then_stopped(self, numbers):
        """(receiver, writer): `numbers` written and forwarded to a FakeReceiver, its
        checkpoint at the file's end, then the forwarder stopped and closed."""
        receiver = FakeReceiver(self)
        writer = self.writer()
        self.write(writer, numbers)
        forwarder = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: forward_checkpoint(writer.path)[1] ==
                                   os.path.getsize(writer.path)))
        forwarder.stop(5)
        forwarder.close()
        return receiver, writer

    def moved_aside_and_a_new_file(self):
        """(receiver, down, writer, forwarder, aside path): the receiver refusing, m0-m4
        written, the live file moved by hand to aside.jsonl, m5-m9 written to a new one."""
        receiver, down = receiver_down(self)
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(5))
        aside = self.move_aside(writer)
        self.write(writer, range(5, 10))
        return receiver, down, writer, forwarder, aside

    def sent_after_a_restart(self, expected):
        """A forwarder started again (a writer of 1000-byte files), to a receiver taking all,
        gets `expected` (messageIds). A new one: a post cut by the stop may reach the old
        one's handler late, and be taken there had it been told to take all."""
        receiver = FakeReceiver(self)
        forwarder = self.forwarder(receiver.url, self.writer(max_bytes=1000))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), expected)

    def moved_behind_the_checkpoint(self, lines):
        """(receiver, down, moved path): `lines` written (several rotations past 1000 bytes)
        while the receiver refuses; the live file moved by hand before the last 5 and
        named in the checkpoint; the forwarder and the writer stopped ("killed")."""
        receiver, down = receiver_down(self)
        writer = self.writer(max_bytes=1000)
        forwarder = self.forwarder(receiver.url, writer)
        self.assertTrue(writer.write(lines[:-5]))
        moved = os.path.join(self.dir, "kept-by-hand.jsonl")
        os.rename(writer.path, moved)
        open(writer.path, "ab").close()
        time.sleep(2 * pixel.PATH_CHECK_INTERVAL)   # the writer looks at its path this often
        self.assertTrue(writer.write(lines[-5:]))
        self.assertTrue(wait_until(lambda: moved_inodes(writer.path) == [
            os.stat(moved).st_ino, os.stat(writer.path).st_ino]))
        self.assertGreater(len(pixel.pixel_rotations(writer.path)), 1)
        forwarder.stop(5)
        forwarder.close()
        writer.close()
        return receiver, down, moved


class Forwarding(ForwardingCase):
    def test_batches_in_order_one_key_each_gzipped_with_basic_auth(self):
        receiver = FakeReceiver(self)
        writer = self.writer()
        self.write(writer, range(0, 5), key="A")
        self.write(writer, range(5, 8), key="B")
        self.write(writer, range(8, 260), key="A")
        forwarder = self.forwarder(receiver.url + "/prefix", writer, batch_events=100)
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 260))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(260)])
        sizes = [(path, user, len(document["batch"])) for path, user, document, _ in
                 receiver.posts]
        self.assertEqual(sizes, [("/prefix/v1/batch", "A", 5), ("/prefix/v1/batch", "B", 3)] +
                         [("/prefix/v1/batch", "A", size) for size in (100, 100, 52)])
        for _, user, document, headers in receiver.posts:
            self.assertEqual(headers["Content-Encoding"], "gzip")
            self.assertTrue(pixel.parse_time(document["sentAt"]))
            self.assertTrue(all(event["writeKey"] == user for event in document["batch"]))
        wait_until(lambda: forwarder.status()["lines_behind"] == 0)
        status = forwarder.status()
        self.assertEqual((status["sent"], status["lines_behind"], status["bytes_behind"],
                          status["degraded"]), (260, 0, 0, False))
        self.assertTrue(wait_until(lambda: pixel.read_checkpoint(
            pixel.state_path(writer.path, "forward"))["offset"] ==
            os.path.getsize(writer.path)))

    def test_one_write_key_for_all_and_500_kb_batches(self):
        receiver = FakeReceiver(self)
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer, write_key="ALL", batch_events=100,
                                   start=False)
        self.write(writer, range(100), key="A", properties={"pad": "x" * 14000})
        self.write(writer, [100], key="A", properties={"pad": "x" * 40000})
        # 30 KB of Cyrillic, as SDKs send it, 90 KB as logged: sent as UTF-8 JSON, 30 KB.
        self.write(writer, [101], key="A", properties={"pad": "\u0416" * 15000})
        forwarder.start()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        for _, user, document, headers in receiver.posts:
            self.assertEqual(user, "ALL")
            self.assertTrue(all("writeKey" not in event for event in document["batch"]))
            self.assertLessEqual(len(json.dumps(document, separators=(",", ":"),
                                                ensure_ascii=False).encode()),
                                 pixel.MAX_BATCH_BYTES)
        self.assertGreater(len(receiver.posts), 2)
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(100)] + ["m101"])
        self.assertEqual(receiver.posts[-1][2]["batch"][-1]["properties"]["pad"],
                         "\u0416" * 15000)
        # Over 32 KB in UTF-8: Segment-compatible receivers refuse it, so it is not sent.
        self.assertEqual([(line["reason"], line["event"]["messageId"])
                          for line in self.rejects()], [("forward_unreadable", "m100")])
        self.assertIn("at most 32 KB", self.rejects()[0]["detail"])

    def test_a_400_is_split_until_the_poisoned_events_are_alone(self):
        def respond(receiver, user, events):
            if any(event["properties"].get("poison") for event in events):
                return 400, {}, b'{"error":"poison inside"}'
            return 200, {}, b"{}"

        receiver = FakeReceiver(self, respond)
        writer = self.writer()
        poisoned = {17, 64}
        forwarder = self.forwarder(receiver.url, writer, start=False)
        for number in range(100):
            self.write(writer, [number], properties={"poison": number in poisoned})
        forwarder.start()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(100)
                                          if number not in poisoned])
        rejects = self.rejects()
        self.assertEqual([(line["reason"], line["event"]["messageId"]) for line in rejects],
                         [("forward_rejected", "m17"), ("forward_rejected", "m64")])
        # The URL posted to, as every other forwarding message names it (issue 19, item 5).
        self.assertIn("400 from %s/v1/batch: " % receiver.url, rejects[0]["detail"])
        self.assertIn("poison inside", rejects[0]["detail"])
        self.assertEqual(rejects[0]["event"]["writeKey"], "K")   # the line, whole
        self.assertEqual((forwarder.sent, forwarder.refused.total()), (98, 2))
        # One batch, then two halves per level down to each poisoned event: 2 x 2 x 7.
        self.assertLessEqual(len(receiver.posts), 1 + 2 * 2 * 7)

    @soak
    def test_5xx_refused_connections_and_timeouts_are_retried_with_backoff(self):
        answers = iter([(500, {}, b"down"), ("hang", {}, b""), (503, {}, b"x" * 1000000),
                        (None, {}, b"")])

        def respond(receiver, user, events):
            status, headers, body = next(answers, (200, {}, b"{}"))
            if status == "hang":
                time.sleep(1.5)
                return 200, {}, b"{}"   # too late: the forwarder gave up at 0.5 s
            return status, headers, body

        receiver = FakeReceiver(self, respond)
        writer = self.writer()
        self.write(writer, range(10))
        forwarder = self.forwarder(receiver.url, writer, timeout=0.5)
        self.assertTrue(wait_until(lambda: forwarder.sent == 10, timeout=20))
        # The batch the hung answer took is in the receiver twice: at least once.
        self.assertEqual(set(receiver.ids()), {"m%d" % number for number in range(10)})
        self.assertEqual(forwarder.receiver.failed_attempts, 4)
        self.assertEqual(len(receiver.posts), 5)
        self.assertEqual(forwarder.status()["backoff"], 0)
        self.assertRegex(self.stderr.getvalue(), r"forwarding to http://127.0.0.1:\d+/v1/batch: "
                                                 r"500 down; 1 failed attempt\(s\) in a row")
        self.assertIn("again, after 4 failed attempt(s)", self.stderr.getvalue())

    @soak
    def test_429_waits_for_retry_after(self):
        times = []

        def respond(receiver, user, events):
            times.append(time.monotonic())
            if len(times) == 1:
                return 429, {"Retry-After": "1"}, b"slow down"
            return 200, {}, b"{}"

        receiver = FakeReceiver(self, respond)
        writer = self.writer()
        self.write(writer, range(3))
        forwarder = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: forwarder.sent == 3))
        self.assertGreaterEqual(times[1] - times[0], 0.95)   # not the 0.05 s backoff

    def test_a_clock_set_back_past_the_backlog_still_ages_it(self):
        # The attack pass: the backlog's age was now less the oldest unsent receivedAt,
        # which a clock set back an hour put in the future: 0 s, and /health said ok through
        # that hour of an outage. Then it is the time since all was sent, by the monotonic
        # clock.
        receiver, down = receiver_down(self)
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer, clock=lambda: T0 + 100, alert=0.2)
        self.write(writer, [200])   # received at T0 + 200, after the clock's now
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 1))
        self.assertTrue(wait_until(lambda: forwarder.status()["degraded"], timeout=5))
        self.assertGreater(forwarder.status()["backlog_seconds"], 0.2)
        down.clear()
        self.assertTrue(wait_until(lambda: not forwarder.status()["degraded"]))

    def test_401_pauses_says_so_loudly_and_resumes_when_the_key_works(self):
        allowed = set()

        def respond(receiver, user, events):
            return (200, {}, b"{}") if user in allowed else (401, {}, b"bad key")

        receiver = FakeReceiver(self, respond)
        writer = self.writer()
        self.write(writer, range(5))
        forwarder = self.forwarder(receiver.url, writer, configured_keys=("K",))
        self.assertTrue(wait_until(lambda: forwarder.receiver.paused_key == "K"))
        status = forwarder.status()
        self.assertTrue(status["degraded"])
        self.assertEqual((status["paused_write_key"], status["lines_behind"]), ("K", 5))
        self.assertIn("is PAUSED: it refused writeKey K (401 bad key)", self.stderr.getvalue())
        allowed.add("K")
        self.assertTrue(wait_until(lambda: forwarder.sent == 5))
        self.assertIsNone(forwarder.status()["paused_write_key"])
        self.assertEqual(self.rejects(), [])

    def test_a_pause_for_the_forward_write_key_names_it_on_stderr_too(self):
        # The attack pass: /health named it, but the PAUSED line on stderr showed it.
        secret = "S3cretForwardKey"
        receiver = FakeReceiver(self, lambda receiver, user, events: (401, {}, b"bad key"))
        writer = self.writer()
        self.write(writer, [0])
        forwarder = self.forwarder(receiver.url, writer, write_key=secret)
        self.assertTrue(wait_until(lambda: forwarder.receiver.paused_key == secret))
        self.assertIn("is PAUSED: it refused writeKey (--forward-write-key) (401 bad key)",
                      self.stderr.getvalue())
        self.assertNotIn(secret, self.stderr.getvalue())

    def test_an_answer_cut_in_the_forward_write_key_shows_none_of_it(self):
        # The attack pass on a298b2d: the answer quoted the key across the 200 characters
        # last_error keeps of it, and the part shown, not the whole key, went unreplaced:
        # /health showed anyone the key's first 15 characters (and a key with a space in it
        # whole, as the answer's runs of spaces were made one first).
        secret = "S3cretForwardKey  longer"
        for status, field in ((401, "last_error"), (404, "receiver_fault")):
            with self.subTest(status=status):
                receiver = FakeReceiver(self, lambda receiver, user, events, status=status: (
                    status, {}, b"x" * 170 + b" no source for " + user.encode()))
                self.dir = temp_dir(self, "pixel-forward-")
                writer = self.writer()
                self.write(writer, [0])
                forwarder = self.forwarder(receiver.url, writer, batch_events=1,
                                           write_key=secret)
                self.assertTrue(wait_until(lambda: forwarder.status()[field]))
                shown = json.dumps(forwarder.status())
                self.assertIn("no source for (--forward-w", shown)   # named, cut after
                self.assertNotIn(secret[:4], shown)
                forwarder.stop(5)

    @soak
    def test_kept_alive_connections_closed_by_the_receiver_cost_no_retry(self):
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            200, {"then-close": "1"} if len(receiver.posts) % 2 else {}, b"{}"))
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer)
        for number in range(6):
            self.write(writer, [number])
            self.assertTrue(wait_until(lambda: forwarder.sent == number + 1))
        self.assertEqual(forwarder.receiver.failed_attempts, 0)
        self.assertEqual(len(receiver.posts), 6)

    def test_redirects_and_garbage_are_retried_never_followed(self):
        answers = iter([(302, {"Location": "http://elsewhere.invalid/"}, b""),
                        (404, {}, b"no such path")])
        receiver = FakeReceiver(self, lambda receiver, user, events: next(
            answers, (200, {}, b"{}")))
        writer = self.writer()
        self.write(writer, range(2))
        forwarder = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: forwarder.sent == 2))
        self.assertEqual(forwarder.receiver.failed_attempts, 2)
        self.assertEqual(len(receiver.taken), 2)

    def test_lines_it_cannot_send_go_to_the_rejects_log(self):
        receiver = FakeReceiver(self)
        writer = self.writer()
        self.write(writer, [0])
        big = b'{"writeKey":"K","big":"' + b"x" * (pixel.FORWARD_READ + 10) + b'"}\n'
        writer.write([b"not json\n", b'{"no":"key"}\n', big])
        self.write(writer, [1])
        forwarder = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m0", "m1"])
        self.assertEqual([(line["reason"], line["detail"]) for line in self.rejects()],
                         [("forward_unreadable", "not JSON"),
                          ("forward_unreadable", "no writeKey"),
                          ("forward_unreadable", "a line of %d bytes" % len(big))])

    def test_a_file_ending_in_a_torn_line(self):
        receiver = FakeReceiver(self)
        path = os.path.join(self.dir, "old.jsonl")
        with open(path, "wb") as handle:   # what a crash before version 1 could leave
            handle.write(log_event(0) + log_event(1) + b'{"writeKey":"K","tor')
        rejects = pixel.LogWriter(os.path.join(self.dir, "rejects.jsonl"))
        self.addCleanup(rejects.close)
        forwarder = pixel.Forwarder(pixel.Receiver(receiver.url), rejects,
                                    reporter=self.reporter)
        forwarder.add_files([path], path + ".backfill")
        self.addCleanup(forwarder.close)
        self.assertTrue(forwarder.run())
        self.assertEqual(receiver.ids(), ["m0", "m1"])
        self.assertEqual([(line["reason"], line["detail"], line["line"])
                          for line in self.rejects()],
                         [("forward_unreadable", "no newline", '{"writeKey":"K","tor')])


class ForwardingSeams(ForwardingCase):
    """Issue 19: one tenant's key or one receiver's fault is not everyone's problem; every
    message names the URL posted to."""

    def receiver_that_holds_posts(self, timeout):
        """A pixel.Receiver posting to a FakeReceiver that answers no post until the test ends."""
        release = threading.Event()
        self.addCleanup(release.set)
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            release.wait(10), (200, {}, b"{}"))[1])
        sender = pixel.Receiver(receiver.url, timeout=timeout, reporter=self.reporter)
        self.addCleanup(sender.close)
        return sender

    def test_a_refused_event_waits_for_room_in_the_rejects_log_and_is_set_aside_once(self):
        # A receiver refused m3 while the rejects log's disk was full: no test had reached
        # that wait. m3 must neither be dropped nor passed by the checkpoint; what follows
        # it waits, in order; a stop ends the wait, and a restart sets m3 aside once.
        full = mount_tmpfs(self, 1 << 20)
        self.rejects_writer = pixel.LogWriter(os.path.join(full, "rejects.jsonl"),
                                              reporter=self.reporter)
        self.addCleanup(self.rejects_writer.close)
        filler = fill_disk(self, full)
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (400, {}, b'{"error":"no"}') if any(event["messageId"] == "m3" for event in events)
            else (200, {}, b"{}")))
        writer = self.writer()
        self.write(writer, range(10))
        forwarder = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: self.rejects_writer.failed >= 3))
        self.assertEqual(receiver.ids(), ["m0", "m1", "m2"])
        self.assertEqual(forwarder.status()["lines_behind"], 7)
        offset = forward_checkpoint(writer.path)[1]
        self.assertLess(offset, os.path.getsize(writer.path))
        self.assertIn("cannot write %s" % self.rejects_writer.path, self.stderr.getvalue())
        started = time.monotonic()
        forwarder.stop(5)   # mid-wait: at once, the checkpoint still before m3
        self.assertLess(time.monotonic() - started, 1.0)
        forwarder.close()
        self.assertEqual(forward_checkpoint(writer.path)[1], offset)
        os.remove(filler)
        restarted = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: restarted.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(10) if number != 3])
        with open(self.rejects_writer.path) as handle:
            self.assertEqual([(line["reason"], line["event"]["messageId"]) for line in
                              map(json.loads, handle)], [("forward_rejected", "m3")])

    def test_a_post_is_cut_at_its_deadline_through_a_rotation_storm(self):
        # Each file the writer opens wakes the post's watchdog to save the checkpoint; a
        # rotation a few milliseconds kept it waking, and it never looked at the deadline.
        sender = self.receiver_that_holds_posts(timeout=5)
        sender.timeout = 0.3   # the post's deadline; its socket's own stays 5 s
        sender.between = lambda: (time.sleep(0.005), sender.woken.set())
        sender.woken.set()
        started = time.monotonic()
        with self.assertRaises(socket.timeout):
            sender.post("K", gzip.compress(b'{"batch":[]}'))
        self.assertLess(time.monotonic() - started, 2)

    def test_a_look_that_fails_during_a_post_is_said_in_one_line(self):
        # The post's watchdog runs the forwarder's look when the writer opens a file; a bug
        # there ended that thread with a traceback, and no deadline cut the post any more.
        sender = self.receiver_that_holds_posts(timeout=0.3)
        sender.between = lambda: 1 / 0
        sender.woken.set()
        with unittest.mock.patch("threading.excepthook") as traceback, \
                self.assertRaises(socket.timeout):
            sender.post("K", gzip.compress(b'{"batch":[]}'))
        self.assertEqual(traceback.call_count, 0)
        self.assertIn("pixel: forwarder error: ZeroDivisionError: division by zero",
                      self.stderr.getvalue())

    def test_an_unconfigured_key_refused_is_set_aside_and_sent_again_later(self):
        accepted = {"K"}
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (200, {}, b"{}") if user in accepted else (401, {}, b"invalid write key")))
        writer = self.writer()
        self.write(writer, range(20))
        self.write(writer, [20], key="junk")   # anyone can send a pixel with any key
        self.write(writer, range(21, 121))
        forwarder = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 120, timeout=5))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(121)
                                          if number != 20])
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        status = forwarder.status()
        self.assertEqual((status["paused_write_key"], status["degraded"], status["refused"]),
                         (None, False, 1))
        (line,) = self.rejects()
        self.assertEqual((line["reason"], line["event"]["messageId"], line["event"]["writeKey"]),
                         ("forward_unauthorized", "m20", "junk"))
        self.assertIn("%s/v1/batch refused writeKey junk: 401 invalid write key" % receiver.url,
                      line["detail"])
        self.assertIn("refused writeKey junk", self.stderr.getvalue())
        # Once the key works, `pixel.py forward` sends what the rejects log holds again;
        # lines of other reasons hold no event to send, and are skipped.
        rejects = os.path.join(self.dir, "rejects.jsonl")
        with open(rejects, "a") as handle:
            handle.write('{"reason":"invalid_json","method":"GET","path":"/v1/pixel/track",'
                         '"query":"data=%%%","receivedAt":"2026-11-26T12:40:13.178Z"}\n'
                         '{"reason":"forward_unreadable","detail":"not JSON","line":"x",'
                         '"receivedAt":"2026-11-26T12:40:13.178Z"}\n')
        accepted.add("junk")
        same = subprocess.run([sys.executable, PIXEL_RUN, "forward", "--to", receiver.url,
                               "--rejects", rejects, rejects], capture_output=True, text=True,
                              timeout=60)
        self.assertEqual(same.returncode, 2)   # its own refusals would be read back
        self.assertIn("give --rejects another file", same.stderr)
        again = subprocess.run([sys.executable, PIXEL_RUN, "forward", "--to", receiver.url,
                                rejects], capture_output=True, text=True, timeout=60)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("1 event(s) sent", again.stdout)
        self.assertIn("2 rejects-log line(s) with no event to send skipped", again.stdout)
        self.assertEqual(receiver.ids()[120:], ["m20"])
        self.assertEqual(receiver.taken[120], json.loads(log_event(20, key="junk")))
        self.assertEqual(receiver.posts[-1][1], "junk")

    def test_a_configured_key_refused_still_pauses_and_loses_nothing(self):
        allowed = set()
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (200, {}, b"{}") if user in allowed else (403, {}, b"forbidden")))
        writer = self.writer()
        self.write(writer, range(3), key="J")
        forwarder = self.forwarder(receiver.url, writer, write_key="ALL")   # --forward-write-key
        self.assertTrue(wait_until(lambda: forwarder.receiver.paused_key == "ALL"))
        self.assertTrue(forwarder.status()["degraded"])
        self.assertIn("forwarding to %s/v1/batch is PAUSED: it refused writeKey ALL"
                      % receiver.url, self.stderr.getvalue())
        allowed.add("ALL")
        self.assertTrue(wait_until(lambda: forwarder.sent == 3))
        self.assertEqual(receiver.ids(), ["m0", "m1", "m2"])
        self.assertEqual(self.rejects(), [])

    def test_a_receiver_refusing_everything_is_doubted_not_believed(self):
        down = threading.Event()
        down.set()
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (400, {}, b"<html>400 The plain HTTP request was sent to HTTPS port</html>")
            if down.is_set() else (200, {}, b"{}")))
        writer = self.writer()
        self.write(writer, range(120))
        forwarder = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: forwarder.receiver.failed_attempts >= 3))
        status = forwarder.status()
        self.assertTrue(status["degraded"])
        self.assertIn("400 <html>400 The plain HTTP request", status["receiver_fault"])
        self.assertEqual([line["event"]["messageId"] for line in self.rejects()],
                         ["m0", "m1", "m2"])
        self.assertEqual(self.stderr.getvalue().count("is taken to be at fault"), 1)
        down.clear()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(3, 120)])
        self.assertEqual(len(self.rejects()), 3)
        status = forwarder.status()
        self.assertEqual((status["degraded"], status["receiver_fault"], status["sent"]),
                         (False, None, 117))
        self.assertIn("it takes events again", self.stderr.getvalue())

    def test_runs_of_poisoned_events_among_good_ones_are_still_set_aside(self):
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (400, {}, b"poison") if any(event["properties"].get("poison") for event in events)
            else (200, {}, b"{}")))
        writer = self.writer()
        poisoned = {10, 11, 40, 41, 42, 43, 44, 99}   # two, five in a row, the last one
        forwarder = self.forwarder(receiver.url, writer, start=False)
        for number in range(100):
            self.write(writer, [number], properties={"poison": number in poisoned})
        forwarder.start()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(100)
                                          if number not in poisoned])
        self.assertEqual([(line["reason"], line["event"]["messageId"])
                          for line in self.rejects()],
                         [("forward_rejected", "m%d" % number) for number in sorted(poisoned)])
        # Five in a row looked for a moment like a receiver refusing everything, until it
        # took an event after them.
        self.assertEqual((forwarder.receiver.failed_attempts, forwarder.status()["degraded"]),
                         (1, False))
        self.assertIn("it took an event after refusing those before it, each alone: they go "
                      "to the rejects log", self.stderr.getvalue())

    def test_a_receiver_refusing_every_key_is_doubted_not_believed(self):
        # A WAF or an auth gateway in front of the receiver answers 403 (or 401) to every
        # batch whatever its key, as does a receiving pixel whose --write-key lists none of
        # the sender's keys (item 10's own setup): item 2's receiver at fault, through
        # another status. Each key is one no one configured, so each batch was set aside as
        # forward_unauthorized: the whole backlog went to the rejects log, /health said ok,
        # and stderr named only the first key (the message's key is the same for all).
        down = threading.Event()
        down.set()
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (403, {}, b"Request blocked") if down.is_set() else (200, {}, b"{}")))
        writer = self.writer()
        for tenant in range(6):
            self.write(writer, range(20 * tenant, 20 * tenant + 20), key="K%d" % tenant)
        forwarder = self.forwarder(receiver.url, writer, batch_events=10)
        def held_up():   # (degraded alone could be the old events' backlog age)
            status = forwarder.status()
            return status["degraded"] and (status["receiver_fault"] or
                                           status["paused_write_key"])

        self.assertTrue(wait_until(held_up, timeout=5), "%d of 120 events written off, "
                        "/health %s" % (len(self.rejects()), forwarder.status()))
        self.assertLessEqual(len(self.rejects()), 30, "more than a few written off")
        down.clear()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        written_off = {line["event"]["messageId"] for line in self.rejects()}
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(120)
                                          if "m%d" % number not in written_off])
        self.assertFalse(forwarder.status()["degraded"])

    def test_a_backfill_whose_last_events_are_refused_still_ends(self):
        # The last 5 events of the files are ones the receiver refuses, each alone: 3 are
        # written off, the 4th is held and the receiver doubted. A live forwarder clears
        # the doubt when a later event is taken; a backfill has no later event, and probed
        # the same held events with backoff for ever: `pixel.py forward` never exited.
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (400, {}, b"poison") if any(event["properties"].get("poison") for event in events)
            else (200, {}, b"{}")))
        path = os.path.join(self.dir, "events.jsonl.1")
        with open(path, "wb") as handle:
            handle.write(b"".join(log_event(number, properties={"poison": number >= 10})
                                  for number in range(15)))
        rejects = pixel.LogWriter(os.path.join(self.dir, "rejects.jsonl"))
        self.addCleanup(rejects.close)
        forwarder = pixel.Forwarder(pixel.Receiver(receiver.url, timeout=2, gives_up=True,
                                                   backoff=(0.02, 0.1), reporter=self.reporter),
                                    rejects, reporter=self.reporter)
        self.addCleanup(forwarder.close)
        checkpoint = os.path.join(self.dir, "backfill.json")
        forwarder.add_files([path], checkpoint)
        ended = threading.Event()
        thread = threading.Thread(target=lambda: (forwarder.run(), ended.set()), daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        self.addCleanup(forwarder.stop)
        self.assertTrue(ended.wait(10), "still probing after %d posts" % len(receiver.posts))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(10)])
        # None is lost: each refused event is in the rejects log, or after the checkpoint.
        with open(path, "rb") as handle:
            unsent = handle.read()[pixel.read_checkpoint(checkpoint)["offset"]:]
        self.assertEqual({line["event"]["messageId"] for line in self.rejects()} |
                         {json.loads(line)["messageId"] for line in unsent.splitlines()},
                         {"m%d" % number for number in range(10, 15)})

    @soak
    def test_a_run_longer_than_a_probe_round_does_not_stall_forwarding(self):
        # Without --write-key anyone can send events; 104 in a row that the receiver
        # refuses, each alone (its own rule, stricter than pixel's), are taken for a
        # receiver at fault after the 3rd. Each probe round then sends the same first 100
        # held events, all refused, and never reaches the event after them that it would
        # take: forwarding stopped for good, for every tenant. Before issue 19 the run was
        # set aside and the good events behind it sent.
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (400, {}, b"poison") if any(event["properties"].get("poison") for event in events)
            else (200, {}, b"{}")))
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer, start=False)
        for number in range(124):
            self.write(writer, [number], properties={"poison": number < 104})
        forwarder.start()
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 20, timeout=15),
                        "%d posts, none of the 20 good events taken" % len(receiver.posts))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(104, 124)])
        self.assertEqual(len(self.rejects()), 104)

    def test_a_run_refused_up_to_a_change_of_key_does_not_stall_small_batches(self):
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (400, {}, b"poison") if any(event["properties"].get("poison") for event in events)
            else (200, {}, b"{}")))
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer, batch_events=2, start=False)
        for number in range(13):   # A's 4 to 9 refused, then B's: batches of 2, one key each
            self.write(writer, [number], key="A" if number < 10 else "B",
                       properties={"poison": 4 <= number <= 9})
        forwarder.start()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m0", "m1", "m2", "m3", "m10", "m11", "m12"])
        self.assertEqual([line["event"]["messageId"] for line in self.rejects()],
                         ["m%d" % number for number in range(4, 10)])
        self.assertEqual([(user, [event["messageId"] for event in document["batch"]])
                          for _, user, document, _ in receiver.posts
                          if document["batch"][0]["messageId"] == "m10"], [("B", ["m10"])])
        self.assertFalse(forwarder.status()["degraded"])

    def test_nothing_at_the_url_is_said_with_the_url_posted_to(self):
        answers = iter([(404, {}, b"Not Found"), (405, {}, b"Method Not Allowed")])
        receiver = FakeReceiver(self, lambda receiver, user, events: next(
            answers, (200, {}, b"{}")))
        writer = self.writer()
        self.write(writer, range(2))
        forwarder = self.forwarder(receiver.url + "/wrong", writer, backoff=(0.3, 0.4))
        self.assertTrue(wait_until(lambda: "forwarding to %s/wrong/v1/batch: 404 Not Found: "
                                   "nothing at this URL takes batches" % receiver.url
                                   in self.stderr.getvalue()))
        status = forwarder.status()
        self.assertTrue(status["degraded"])
        self.assertIn("nothing at this URL takes batches", status["receiver_fault"])
        self.assertTrue(wait_until(lambda: forwarder.sent == 2))
        self.assertEqual((forwarder.receiver.failed_attempts, forwarder.status()["degraded"]), (2, False))
        self.assertIn("forwarding to %s/wrong/v1/batch again" % receiver.url,
                      self.stderr.getvalue())

    def test_a_stop_is_not_a_fault(self):
        release = threading.Event()
        self.addCleanup(release.set)
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            release.wait(20), (200, {}, b"{}"))[1])
        writer = self.writer()
        self.write(writer, [0])
        forwarder = self.forwarder(receiver.url, writer, timeout=10)
        self.assertTrue(wait_until(lambda: len(receiver.posts) == 1))
        forwarder.stop(5)
        self.assertFalse(forwarder.thread.is_alive())
        self.assertEqual((self.stderr.getvalue(), forwarder.receiver.failed_attempts,
                          forwarder.receiver.last_error), ("", 0, None))

    def test_a_bug_in_the_loop_is_said_and_forwarding_starts_again(self):
        # _run_on_thread: an exception no branch expects ended the thread, and forwarding
        # with it, while /health still said a forwarder ran.
        receiver = FakeReceiver(self)
        writer = self.writer()
        self.write(writer, range(5))
        forwarder = self.forwarder(receiver.url, writer, start=False, backoff=(0.01, 0.05))
        real, calls = forwarder._next_batch, []

        def next_batch():
            calls.append(None)
            return 1 / 0 if len(calls) == 1 else real()
        forwarder._next_batch = next_batch
        forwarder.start()
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 5, timeout=5))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(5)])
        self.assertRegex(self.stderr.getvalue(), r"\Apixel: forwarder error: ZeroDivisionError: "
                         r"division by zero \(line \d+\); retrying in 0 s\n\Z")
        self.assertTrue(forwarder.thread.is_alive())

    def test_a_hold_cuts_a_post_that_runs_past_hold_wait_and_it_is_sent_again(self):
        # An erase holds the forwarder: a post still unanswered after HOLD_WAIT is cut, the
        # files closed, and the batch, never acknowledged, sent again after resume().
        receiver, held, hold = receiver_holding(self, "m0")
        self.addCleanup(hold.set)
        writer = self.writer()
        self.write(writer, range(5))
        forwarder = self.forwarder(receiver.url, writer, timeout=10)
        self.assertTrue(held.wait(10))
        with unittest.mock.patch("pixel.HOLD_WAIT", 0.1):
            started = time.monotonic()
            forwarder.hold()
            self.assertLess(time.monotonic() - started, 1.0)
        self.assertFalse(forwarder.thread.is_alive())
        self.assertEqual(forward_checkpoint(writer.path)[1], 0)   # not past the cut batch
        hold.set()   # the cut post's handler takes it all the same
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 5))
        forwarder.resume()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(5)] * 2)


class ForwardingThroughRotation(ForwardingCase):
    """Everything written reaches the receiver once and in order, through pixel's own
    rotation with --keep, an outside mv and an outside rm of the live log."""

    def test_rotation_with_keep_waits_for_the_forwarder(self):
        receiver, down = receiver_down(self)
        writer = self.writer(max_bytes=1000, keep=1)
        forwarder = self.forwarder(receiver.url, writer)
        for number in range(60):
            self.write(writer, [number])
        rotated = pixel.pixel_rotations(writer.path)
        self.assertGreater(len(rotated), 5, "every unsent file is kept, past --keep 1")
        status = forwarder.status()
        self.assertEqual(status["lines_behind"], 60)
        self.assertEqual(status["files_behind"], len(rotated))
        self.assertEqual(status["bytes_behind"], sum(map(os.path.getsize, rotated)) +
                         os.path.getsize(writer.path))
        self.assertIn("past --keep 1: the forwarder has not sent all of it yet",
                      self.stderr.getvalue())
        down.clear()
        self.assertTrue(wait_until(lambda: forwarder.sent == 60, timeout=15))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(60)])
        self.write(writer, range(60, 70))   # the next rotations delete what was sent
        self.assertTrue(wait_until(lambda: forwarder.sent == 70))
        self.assertLessEqual(len(pixel.pixel_rotations(writer.path)), 3)
        self.assertEqual(forwarder.status()["files_behind"], 0)

    def test_an_outside_mv_and_rm_of_the_live_log(self):
        receiver = FakeReceiver(self)
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer, start=False)
        self.write(writer, range(0, 10))
        os.rename(writer.path, writer.path + ".1")        # logrotate's create, no HUP
        self.write(writer, range(10, 20))                 # still the renamed file: grace
        writer.reopen()
        self.write(writer, range(20, 30))
        os.remove(writer.path)                            # an operator's rm
        self.write(writer, range(30, 40))
        forwarder.start()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        # The rm'd file's lines are read through the forwarder's own descriptor.
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(40)])

    def test_copytruncate_starts_the_file_again_and_says_so(self):
        receiver = FakeReceiver(self)
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(5))
        self.assertTrue(wait_until(lambda: forwarder.sent == 5))
        os.truncate(writer.path, 0)   # logrotate's copytruncate, after its copy
        self.write(writer, [5])
        self.assertTrue(wait_until(lambda: forwarder.sent == 6))
        self.assertIn("%s was cut shorter under the forwarder (copytruncate?): what it held "
                      "past byte %d, as far as was sent, is in the copy alone (`pixel.py forward "
                      "--to URL COPY` sends the copy, from its start)" % (
                          writer.path, 5 * len(log_event(0))), self.stderr.getvalue())
        # The writer's committed end follows the cut (the attack pass: /health said 11,110
        # lines behind for good), at its next look at the path.
        time.sleep(2 * pixel.PATH_CHECK_INTERVAL)   # what is tested is that look
        self.write(writer, [6])
        self.assertTrue(wait_until(lambda: forwarder.sent == 7))
        self.assertEqual(writer.committed()[1], os.path.getsize(writer.path))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0 and
                                   forwarder.status()["bytes_behind"] == 0))

    def test_a_line_another_process_appended_leaves_none_of_ours_unsent(self):
        # Found by the attack pass on a298b2d, older than it: the writer's end counted its own
        # bytes alone, and the forwarder read the live file only to it: after an `echo >>` of
        # one line, m8-m9, answered, were not sent until the next write, and that write's
        # lines in turn.
        receiver = FakeReceiver(self)
        writer = self.writer(max_bytes=100000)
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(5))
        self.assertTrue(wait_until(lambda: forwarder.sent == 5))
        with open(writer.path, "ab") as handle:   # another process: echo >>
            handle.write(log_event(100))
        self.write(writer, range(5, 10))
        self.assertTrue(wait_until(lambda: forwarder.sent == 11))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in (*range(5), 100,
                                                                         *range(5, 10))])
        end = os.path.getsize(writer.path)
        self.assertEqual(writer.committed()[1], end)
        with open(writer.path, "ab") as handle:   # half a line, no line: not to be sent yet
            handle.write(b'{"half a')
        self.assertEqual(writer.committed()[1], end)
        self.assertFalse(wait_until(lambda: forwarder.status()["bytes_behind"], timeout=0.2))

    def test_a_copytruncate_takes_its_unsent_lines_out_of_the_backlog(self):
        # m5-m14, unsent, went with the cut to the copy (as it says), and /health said 10
        # lines behind for good, with nothing left to send.
        receiver, down = receiver_down(self)
        down.clear()
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer, batch_events=1)
        self.write(writer, range(5))
        self.assertTrue(wait_until(lambda: forwarder.sent == 5))
        down.set()
        self.write(writer, range(5, 15))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 10))
        os.truncate(writer.path, 0)   # logrotate's copytruncate, after its copy
        self.write(writer, [15, 16])
        down.clear()
        self.assertTrue(wait_until(lambda: forwarder.sent == 7))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0 and
                                   forwarder.status()["bytes_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in (*range(5), 15, 16)])

    def test_a_copytruncate_the_file_outgrew_before_the_forwarder_looked_loses_nothing(self):
        # The attack pass: grown past the forwarder's offset again (m6-m25 after m0-m5), the
        # file was taken as uncut, and sent from that offset: m6-m11, never sent, nor said.
        receiver, held, hold = receiver_holding(self, "m5")
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer, batch_events=1)
        self.write(writer, range(6))
        self.assertTrue(held.wait(10))   # m5 in flight
        os.truncate(writer.path, 0)   # logrotate's copytruncate, after its copy
        self.write(writer, range(6, 26))
        hold.set()
        self.assertTrue(wait_until(lambda: forwarder.sent == 26))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(26)])
        self.assertIn("was cut shorter under the forwarder", self.stderr.getvalue())
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))

    def test_a_copytruncate_under_a_batch_in_flight_counts_it_behind(self):
        # The attack pass on ef2e8b4: the batch read before the cut (m0-m9) is sent from memory;
        # counted again at the cut, /health said 0 behind while 13 were, and for good after.
        receiver, down = receiver_down(self)
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(10))
        self.assertTrue(wait_until(lambda: receiver.posts))   # read, and refused
        os.truncate(writer.path, 0)
        # Its looks during the backoff see the cut file, sent to its end so far as it knows
        # (a soak run here: /health then said 3 behind).
        self.assertTrue(wait_until(lambda: writer.cuts == 1))
        self.write(writer, range(10, 13))
        self.assertFalse(wait_until(lambda: forwarder.status()["lines_behind"] != 13,
                                    timeout=0.3))
        down.clear()
        self.assertTrue(wait_until(lambda: forwarder.sent == 13))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(13)])
        self.write(writer, [13])
        self.assertTrue(wait_until(lambda: forwarder.sent == 14))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertFalse(wait_until(lambda: forwarder.status()["lines_behind"] != 0,
                                    timeout=0.3))

    def test_a_rotated_file_cut_by_hand_leaves_no_count_behind_once_all_is_sent(self):
        # The attack pass: 20 unsent lines of a rotated file truncated by hand stayed in
        # /health's lines_behind for good. Once all is sent, nothing is behind, whatever.
        receiver, down = receiver_down(self)
        writer = self.writer(max_bytes=1000)
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(12))   # rotated twice or more
        rotated = pixel.pixel_rotations(writer.path)
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 12))
        os.truncate(rotated[-1], 0)
        down.clear()
        self.assertTrue(wait_until(lambda: forwarder.status()["bytes_behind"] == 0))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        sent = forwarder.sent
        self.write(writer, [12])
        self.assertTrue(wait_until(lambda: forwarder.sent == sent + 1))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))

    def cut_and_rotated_under_m10(self, restart):
        """(receiver, forwarder): m0-m9 sent (by a forwarder stopped since, with `restart`), m10
        in flight as the file is cut, m11-m39 written after it, rotating it, then m10 taken."""
        receiver, held, hold = receiver_holding(self, "m10")
        writer = self.writer(max_bytes=4000)
        forwarder = self.forwarder(receiver.url, writer, batch_events=1)
        self.write(writer, range(10))
        self.assertTrue(wait_until(lambda: forwarder.sent == 10))
        if restart:
            forwarder.stop(5)
            forwarder.close()
            forwarder = self.forwarder(receiver.url, writer, batch_events=1)
        self.write(writer, [10])
        self.assertTrue(held.wait(10))
        os.truncate(writer.path, 0)
        for number in range(11, 40):
            self.write(writer, [number])
        self.assertTrue(pixel.pixel_rotations(writer.path))
        hold.set()
        return receiver, forwarder

    def test_a_copytruncate_then_a_rotation_before_the_forwarder_looked_loses_nothing(self):
        # The third attack pass: cut while m10 was in flight, then written past its offset and
        # rotated by pixel before the forwarder looked: sent on from its offset as a rotated
        # file, m11-m21 were never sent, nor said.
        receiver, forwarder = self.cut_and_rotated_under_m10(restart=False)
        self.assertTrue(wait_until(lambda: forwarder.sent == 40))
        self.assertEqual(sorted(receiver.ids(), key=lambda id: int(id[1:])),
                         ["m%d" % number for number in range(40)])
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))

    def test_a_copytruncate_then_a_rotation_after_a_restart_loses_nothing(self):
        # The fourth attack pass: resumed from its checkpoint, the file's head as sent was not
        # known, and the same cut and rotation lost m11-m21 again.
        receiver, forwarder = self.cut_and_rotated_under_m10(restart=True)
        self.assertTrue(wait_until(lambda: forwarder.sent == 30))
        self.assertEqual(sorted(receiver.ids(), key=lambda id: int(id[1:])),
                         ["m%d" % number for number in range(40)])

    def test_a_head_read_past_what_was_sent_is_not_kept(self):
        # The third attack pass: a file's head, read while a short write's lines were in it
        # (taken back a moment later), was kept; parked, the file was not found again by it,
        # said to be gone, its unsent events lost, and --keep deleted it.
        lines = b"".join(log_event(number) for number in range(20))   # past 4096 bytes
        path = write_file(self.dir, "events.jsonl.20261205T000000.000Z", lines[:3000])
        log = pixel.LogFile(os.open(path, os.O_RDONLY), (os.stat(path).st_dev,
                                                         os.stat(path).st_ino), path, 1000)
        self.addCleanup(log.close)
        with open(path, "ab") as handle:   # a short write's, under the writer's lock
            handle.write(b'{"taken back":"' + b"x" * 2000)
        log.head(min(os.path.getsize(path), 4096))   # a look at it meanwhile
        os.truncate(path, 3000)
        with open(path, "ab") as handle:
            handle.write(lines[3000:])
        log.park()
        self.assertTrue(log.unpark())   # found again by its name: its head is its own

class ForwardingRestarts(ForwardingCase):
    """A new Forwarder over the same log resumes from the checkpoint."""

    def sent_then_stopped(self, count):
        """(receiver, writer): `count` events sent, then the forwarder stopped."""
        receiver = FakeReceiver(self)
        writer = self.writer(max_bytes=2000)
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(count))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        forwarder.stop(5)
        forwarder.close()
        return receiver, writer

    def sent_ten_then_thirty_more(self):
        """(receiver, writer): 10 events sent, the forwarder stopped, 30 more written while
        none runs (several rotations)."""
        receiver, writer = self.sent_then_stopped(10)
        self.write(writer, range(10, 40))
        return receiver, writer

    def test_resumes_where_the_checkpoint_says(self):
        receiver, writer = self.sent_ten_then_thirty_more()
        second = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: second.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(40)])

    def test_files_rotated_after_a_clock_set_back_are_not_skipped(self):
        # A restart finds the files rotated since its checkpoint by mtime: after the clock
        # was set back an hour, every one of them looked older than the checkpoint.
        receiver, writer = self.sent_ten_then_thirty_more()
        self.assertGreater(len(pixel.pixel_rotations(writer.path)), 2)
        back = time.time() - 3600
        for path in pixel.pixel_rotations(writer.path) + [writer.path]:
            os.utime(path, (back, back))
        second = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: len(receiver.taken) >= 40))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(40)])
        self.assertNotIn("the file the checkpoint names", self.stderr.getvalue())
        self.assertTrue(wait_until(lambda: second.status()["lines_behind"] == 0))

    def test_the_checkpoints_file_moved_to_another_name_is_still_sent(self):
        # An outside mv of the log to a name no rotation gives (then a kill -9 before the
        # forwarder had sent it all): a restart finds that file by its identity, not its name.
        receiver, writer = self.sent_then_stopped(5)
        self.write(writer, range(5, 10))   # unsent, in the checkpoint's file
        writer.close()   # killed; moved meanwhile; started again
        os.rename(writer.path, os.path.join(self.dir, "kept-by-hand.jsonl"))
        writer = self.writer(max_bytes=2000)
        self.write(writer, range(10, 40))
        second = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: second.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(40)])
        self.assertNotIn("the file the checkpoint names", self.stderr.getvalue())

    def test_a_file_that_took_the_checkpoints_inode_is_not_sent(self):
        # The checkpoint's file deleted (a cross-device mv is a copy and an rm), and another
        # file in the folder given its inode, as ext4 does at once: found by identity, but
        # its head is not the checkpoint's, so not one line of it goes to the receiver.
        receiver, writer = self.sent_ten_then_thirty_more()
        checkpoint_path = pixel.state_path(writer.path, "forward")
        checkpoint = pixel.read_checkpoint(checkpoint_path)
        for rotated in pixel.pixel_rotations(writer.path):
            if os.stat(rotated).st_ino == checkpoint["inode"]:
                os.remove(rotated)
        notes = os.path.join(self.dir, "notes.jsonl")
        with open(notes, "wb") as handle:
            handle.write(log_event(99, userId="private") * 3)
        status = os.stat(notes)
        pixel.write_checkpoint(checkpoint_path, dict(checkpoint, device=status.st_dev,
                                                     inode=status.st_ino))
        second = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: second.status()["lines_behind"] == 0))
        self.assertNotIn("m99", receiver.ids())
        self.assertIn("the file the checkpoint names", self.stderr.getvalue())

    def answered_around_an_outside_mv(self, count, moved_at, *argv):
        """(receiver, its `down` switch, process, log path): a real pixel answers `count`
        pixels while the receiver refuses (503); an outside mv renames its log to
        kept-by-hand.jsonl and makes a new one before the `moved_at`th."""
        receiver, down = receiver_down(self)
        path = os.path.join(self.dir, "events.jsonl")
        process, port = start_pixel(self, "--log", path, "--forward", receiver.url, *argv)
        for number in range(count):
            if number == moved_at:
                os.rename(path, os.path.join(self.dir, "kept-by-hand.jsonl"))
                open(path, "ab").close()
                time.sleep(2 * PROCESS_PATH_CHECK)   # pixel looks at its path this often
            fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=u&event=e&messageId=m%d"
                      % number)
        self.assertTrue(wait_until(lambda: receiver.posts))   # refused, so none sent
        return receiver, down, process, path

    def all_sent_after_a_kill_9(self, receiver, down, process, path, count, *argv):
        """kill -9 of `process`; started again with the receiver taking all, the `count`
        pixels answered arrive in order."""
        process.kill()
        process.wait()
        down.clear()
        start_pixel(self, "--log", path, "--forward", receiver.url, *argv)
        self.assertTrue(wait_until(lambda: len(receiver.taken) >= count, timeout=15))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(count)])

    def test_killed_after_an_outside_mv_it_sends_the_moved_file_when_started_again(self):
        # 5 pixels, the mv, 5 more, kill -9. Started again with the receiver taking them,
        # all 10 arrive, the moved file's first.
        receiver, down, process, path = self.answered_around_an_outside_mv(10, 5)
        self.assertEqual(read_bytes(path).count(b"\n"), 5)
        self.all_sent_after_a_kill_9(receiver, down, process, path, 10)

    def test_killed_after_an_outside_mv_behind_a_rotation_it_sends_the_moved_file_too(self):
        # As above, but the checkpoint names an older file, rotated by --max-bytes: a restart
        # found that one by its name and the files rotated since, but not the live file moved
        # to a name no rotation gives, whose events the receiver never got.
        receiver, down, process, path = self.answered_around_an_outside_mv(
            12, 8, "--max-bytes", "1000")
        self.assertTrue(pixel.pixel_rotations(path))
        moved = os.path.join(self.dir, "kept-by-hand.jsonl")
        self.assertIn(b'"m7"', read_bytes(moved))
        # The checkpoint names it within a FORWARD_POLL of the mv, though the receiver keeps
        # refusing (a kill -9 sooner than that still loses it).
        self.assertTrue(wait_until(lambda: moved_inodes(path) == [
            os.stat(moved).st_ino, os.stat(path).st_ino], 5))
        self.all_sent_after_a_kill_9(receiver, down, process, path, 12, "--max-bytes", "1000")

    def test_killed_after_an_outside_mv_and_no_pixel_since_it_sends_the_moved_file(self):
        # The mv with nothing at the path and no pixel after it: pixel goes on writing the
        # moved file (MOVED_GRACE), and takes a new one only when the next pixel comes. The
        # checkpoint listed files moved by hand only then, so a kill -9 before it lost their
        # events; it now lists the live file too, behind a backlog, before any mv.
        receiver, down, process, path = self.answered_around_an_outside_mv(
            12, None, "--max-bytes", "1000")
        self.assertTrue(pixel.pixel_rotations(path))
        moved = os.path.join(self.dir, "kept-by-hand.jsonl")
        self.assertTrue(wait_until(lambda: moved_inodes(path) == [os.stat(path).st_ino], 5))
        os.rename(path, moved)
        self.all_sent_after_a_kill_9(receiver, down, process, path, 12, "--max-bytes", "1000")

    def test_killed_after_its_first_file_is_moved_back_it_sends_the_rotated_ones_between(self):
        # mv events.jsonl a.jsonl; the next file rotates (--max-bytes); mv the live one away
        # and a.jsonl back. The checkpoint names a.jsonl again, now the live file, its last
        # write newer than the rotated file's: a restart skipped that file as sent (9 of 23
        # lost in an attack pass). The files between are listed, and sent first.
        receiver, down = receiver_down(self)
        path, first, other = (os.path.join(self.dir, name)
                              for name in ("events.jsonl", "a.jsonl", "c.jsonl"))
        process, port = start_pixel(self, "--log", path, "--forward", receiver.url,
                                    "--max-bytes", "1000")
        sent = iter(range(100))

        def answer(count):
            for number in itertools.islice(sent, count):
                fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=u&event=e&messageId=m%d"
                          % number)

        def moved(*pairs):
            for source, target in pairs:
                os.rename(source, target)
            if not os.path.exists(path):
                open(path, "ab").close()
            time.sleep(2 * PROCESS_PATH_CHECK)   # pixel looks at its path this often

        answer(2)
        inode = os.stat(path).st_ino
        moved((path, first))
        answer(6)
        self.assertTrue(pixel.pixel_rotations(path))
        moved((path, other), (first, path))
        answer(2)
        self.assertIn(b'"m9"', read_bytes(path))
        self.assertEqual(os.stat(path).st_ino, inode)
        self.assertTrue(wait_until(lambda: set(moved_inodes(path)) >= {
            os.stat(name).st_ino for name in pixel.pixel_rotations(path) + [other]}, 5))
        process.kill()
        process.wait()
        down.clear()
        start_pixel(self, "--log", path, "--forward", receiver.url, "--max-bytes", "1000")
        self.assertTrue(wait_until(lambda: len(receiver.taken) >= 10, timeout=15))
        time.sleep(0.3)   # nothing more, nor again
        self.assertEqual(sorted(receiver.ids(), key=lambda id: int(id[1:])),
                         ["m%d" % number for number in range(10)])

    def test_a_live_file_moved_by_hand_behind_the_checkpoint_is_sent_in_its_place(self):
        lines = [log_event(number) for number in range(30)]
        receiver, down, moved = self.moved_behind_the_checkpoint(lines)
        self.assertEqual(read_bytes(moved).count(b"\n"), 3)   # m22-m24: before the move
        self.sent_after_a_restart(["m%d" % number for number in range(30)])
        self.assertNotIn("gone", self.stderr.getvalue())

    def test_a_moved_file_is_never_put_before_the_checkpoints_file(self):
        # Placed by its last write among the files found, but never ahead of the one the
        # checkpoint names, whose predecessors a restart skips: an older mtime (a clock set
        # back, a touch) must not make it one of those.
        path, kept = (os.path.join(self.dir, name) for name in ("events.jsonl", "kept.jsonl"))
        names = [pixel.rotation_target(path, T0 + number) for number in (0, 10)]
        for number, name in enumerate(names + [path, kept]):
            with open(name, "wb") as handle:
                handle.write(log_event(number))
        checkpoint_file, moved = os.stat(names[1]), os.stat(kept)
        os.utime(names[0], ns=(checkpoint_file.st_mtime_ns + 10**9,) * 2)
        os.utime(kept, ns=(checkpoint_file.st_mtime_ns - 5 * 10**9,) * 2)
        head = "%08x" % zlib.crc32(read_bytes(kept)[:20])
        checkpoint = {"device": checkpoint_file.st_dev, "inode": checkpoint_file.st_ino,
                      "offset": 0, "head_bytes": 0, "head": "00000000",
                      "mtime_ns": checkpoint_file.st_mtime_ns,
                      "moved": [{"device": moved.st_dev, "inode": moved.st_ino,
                                 "head_bytes": 20, "head": head}]}
        live = os.stat(path)
        files = pixel.rotated_since(path, (live.st_dev, live.st_ino), checkpoint)
        self.addCleanup(lambda: [log.close() for log in files])
        self.assertEqual([os.path.basename(log.name) for log in files],
                         [os.path.basename(name) for name in names] + ["kept.jsonl"])

    def test_moved_entries_that_name_nothing_or_another_file_send_nothing(self):
        # Hand-edited, or an inode the moved file's deletion gave another file: passed over.
        receiver, writer = self.sent_ten_then_thirty_more()
        notes = os.path.join(self.dir, "notes.jsonl")
        with open(notes, "wb") as handle:
            handle.write(log_event(99, userId="private") * 3)
        status = os.stat(notes)
        checkpoint_path = pixel.state_path(writer.path, "forward")
        checkpoint = pixel.read_checkpoint(checkpoint_path)
        pixel.write_checkpoint(checkpoint_path, dict(checkpoint, moved=[
            5, None, "x", {"device": "1"}, {"device": 1, "inode": 2, "head_bytes": 5000,
                                            "head": ""},
            {"device": status.st_dev, "inode": status.st_ino, "head_bytes": 10,
             "head": "00000000"}]))
        second = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: second.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(40)])
        pixel.write_checkpoint(checkpoint_path, dict(checkpoint, moved={"a": 1}))
        second.stop(5)
        second.close()
        self.forwarder(receiver.url, writer)   # not a list: no traceback either
        self.assertNotIn("error", self.stderr.getvalue())

    def test_a_file_opened_during_a_post_is_named_before_the_post_ends(self):
        # A kill -9 during a slow post, just after a rotation, then the new live file moved
        # by hand while pixel was down: the checkpoint named that file only after the post
        # (a save from the forwarder's thread), and a restart never found it.
        posting, release = threading.Event(), threading.Event()

        def slow(receiver, user, events):
            posting.set()
            release.wait(10)
            return 200, {}, b"{}"
        receiver = FakeReceiver(self, slow)
        self.addCleanup(release.set)
        writer = self.writer(max_bytes=1000)
        forwarder = self.forwarder(receiver.url, writer, timeout=20)
        self.write(writer, [0])
        self.assertTrue(posting.wait(10))
        for number in range(1, 15):   # past 1000 bytes: a rotated file and a new live one
            self.write(writer, [number])
        self.assertTrue(pixel.pixel_rotations(writer.path))
        live = os.stat(writer.path).st_ino
        self.assertTrue(wait_until(lambda: live in moved_inodes(writer.path), timeout=1),
                        "not named while the post hangs")
        checkpoint = pixel.state_path(writer.path, "forward")
        killed = read_bytes(checkpoint)   # what a kill -9 now leaves
        release.set()
        forwarder.stop(5)
        forwarder.close()
        writer.close()
        with open(checkpoint, "wb") as handle:
            handle.write(killed)
        os.rename(writer.path, os.path.join(self.dir, "aside.jsonl"))
        self.sent_after_a_restart(["m%d" % number for number in range(15)])

    def test_a_file_opened_during_a_backoff_is_named_at_once(self):
        # In a backoff, the checkpoint was saved once a FORWARD_POLL: made long here.
        receiver, down = receiver_down(self)
        writer = self.writer(max_bytes=1000)
        self.write(writer, [0])
        with unittest.mock.patch("pixel.FORWARD_POLL", 30):
            forwarder = self.forwarder(receiver.url, writer, backoff=(30, 30))
            self.assertTrue(wait_until(lambda: forwarder.receiver.backoff == 30))
            for number in range(1, 15):   # past 1000 bytes: a rotated file and a new live one
                self.write(writer, [number])
            live = os.stat(writer.path).st_ino
            self.assertTrue(wait_until(lambda: live in moved_inodes(writer.path), timeout=1),
                            "not named during the backoff")
            forwarder.stop(5)
            self.assertFalse(forwarder.thread.is_alive(), "a stop waits out the backoff")

    def test_a_live_file_moved_while_pixel_is_down_is_sent_after_the_restart(self):
        # No process saw this mv: the checkpoint's list of the live file behind a backlog
        # finds it (before, m25-m29 stayed on disk, unsent, with nothing said).
        lines = [log_event(number) for number in range(30)]
        receiver, down, _ = self.moved_behind_the_checkpoint(lines)
        os.rename(os.path.join(self.dir, "events.jsonl"),
                  os.path.join(self.dir, "moved-while-down.jsonl"))
        self.sent_after_a_restart(["m%d" % number for number in range(30)])
        self.assertNotIn("gone", self.stderr.getvalue())

    def behind_rotated_files(self, count):
        """(receiver, down, writer): the receiver refusing, and a checkpoint at the first of
        the files --max-bytes 1000 rotated while `count` events were written, one at a time."""
        receiver, down = receiver_down(self)
        writer = self.writer(max_bytes=1000)
        self.forwarder(receiver.url, writer, start=False).close()   # saved: the first file
        for number in range(count):
            self.write(writer, [number])
        self.assertGreaterEqual(len(pixel.pixel_rotations(writer.path)), count // 7)
        return receiver, down, writer

    def test_a_file_opened_while_the_backlog_is_counted_is_saved_before_the_count_ends(self):
        # A start counts the backlog first: seconds, over thousands of files. The checkpoint
        # named a file the writer opened meanwhile only after the count, so a kill -9 in it
        # lost that file, if it was moved by hand, whole (an attack's storm of mv and kill -9:
        # 6,525 of 25,129 events). Here the kill -9 comes after the count's first file.
        receiver, down, writer = self.behind_rotated_files(30)
        forwarder = self.forwarder(receiver.url, writer, start=False)
        checkpoint, saved, count = pixel.state_path(writer.path, "forward"), [], pixel.count_unsent

        def counting(*args):
            if not saved:   # an mv and a SIGHUP: a new live file, written to
                self.move_aside(writer)
                self.write(writer, [30])
            saved.append(read_bytes(checkpoint))
            return count(*args)

        with unittest.mock.patch("pixel.count_unsent", counting):
            forwarder._look()
        self.assertGreaterEqual(len(saved), 3)
        forwarder.close()
        with open(checkpoint, "wb") as handle:   # as a kill -9 after the first file left it
            handle.write(saved[1])
        os.rename(writer.path, os.path.join(self.dir, "aside-too.jsonl"))   # moved by hand too
        writer.reopen()
        down.clear()
        self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: len(receiver.taken) >= 31))
        self.assertEqual(sorted(receiver.ids()), sorted("m%d" % number for number in range(31)))

    def test_a_restart_behind_many_parked_files_counts_them_without_a_look_at_each(self):
        # A restart behind thousands of files parks all but MAX_OPEN_LOG_FILES. Counting
        # them listed the folder once for each (found by name, its listing was made first
        # all the same) and walked the queue for files moved meanwhile once for each: 3,000
        # files took 4.3 s, 7.1 s with the looks, during which nothing was forwarded.
        receiver, _, writer = self.behind_rotated_files(600)
        with unittest.mock.patch.object(pixel, "MAX_OPEN_LOG_FILES", 4):
            forwarder = self.forwarder(receiver.url, writer, start=False)
            with unittest.mock.patch("os.listdir", wraps=os.listdir) as listings, \
                    unittest.mock.patch.object(pixel.LogQueue, "moves_to_save", autospec=True,
                                               side_effect=pixel.LogQueue.moves_to_save) as looks:
                forwarder._look()
        self.assertEqual(forwarder.status()["lines_behind"], 600)
        self.assertLessEqual(looks.call_count, 2)
        self.assertLessEqual(listings.call_count, 2)

    def test_a_rotation_storm_takes_a_tenth_of_a_counts_time_in_looks(self):
        # Under load, --max-bytes 2000 opened a file every few ms, and each look walked a
        # queue of thousands: a restart's count, which holds forwarding, was not done after
        # 60 s (an attack's); 2.0 and 5.2 s now. Here a look takes 50 ms, the count 3 s.
        now, looks, files = [0.0], [], itertools.count()
        writer = types.SimpleNamespace(committed=lambda: (next(files), 0, 0))

        def look():
            looks.append(now[0])
            now[0] += 0.05

        maybe = pixel.on_new_files(writer, look, clock=lambda: now[0])
        for _ in range(3000):
            maybe()
            now[0] += 0.001
        self.assertEqual(looks[0], 0.0)   # the first file opened is saved at once
        self.assertLessEqual(len(looks) * 0.05 / now[0], 0.12)
        self.assertGreaterEqual(len(looks), 2)

    def test_a_count_looks_at_once_then_only_for_a_new_file(self):
        # A file the writer opened between _look's own check and the count's start was named
        # in the checkpoint only after the next file, or the count's end.
        now, looks, identity = [0.0], [], [1]
        writer = types.SimpleNamespace(committed=lambda: (identity[0], 0, 0))
        maybe = pixel.on_new_files(writer, lambda: looks.append(identity[0]),
                                   clock=lambda: now[0])
        maybe()
        now[0] += 1
        maybe()
        self.assertEqual(looks, [1])
        identity[0] = 2
        now[0] += 1
        maybe()
        self.assertEqual(looks, [1, 2])

    def test_a_moved_file_parked_at_a_restart_is_still_named_by_its_checkpoint(self):
        # A restart behind more than MAX_OPEN_LOG_FILES files parks the later ones, the moved
        # one among them. The next save dropped it from the checkpoint, so a second restart
        # (another kill -9) never found it.
        lines = [log_event(number) for number in range(30)]
        receiver, down, moved = self.moved_behind_the_checkpoint(lines)
        with unittest.mock.patch.object(pixel, "MAX_OPEN_LOG_FILES", 1):
            writer = self.writer(max_bytes=1000)
            second = self.forwarder(receiver.url, writer)
            self.assertEqual([os.path.basename(log.name) for log in second.queue.files
                              if log.fd is None and not log.named], ["kept-by-hand.jsonl"])
            second._save(second.queue.files[0])   # as a batch sent or a file finished would
            second.stop(5)
            second.close()
            writer.close()
        self.sent_after_a_restart(["m%d" % number for number in range(30)])

    def test_a_parked_moved_file_is_sent_in_its_turn_and_one_gone_is_passed(self):
        # Gone: its turn came with the file still parked; the save of the moved list named
        # it in the checkpoint and failed on its descriptor (TypeError), every 60 s for good.
        # Renamed again while parked: looked for only under names like its first.
        for change in ("none", "gone", "renamed"):
            with self.subTest(change=change):
                self.dir = temp_dir(self)
                lines = [log_event(number) for number in range(30)]
                receiver, down, moved = self.moved_behind_the_checkpoint(lines)
                gone = change == "gone"
                with unittest.mock.patch.object(pixel, "MAX_OPEN_LOG_FILES", 1):
                    writer = self.writer(max_bytes=1000)
                    forwarder = self.forwarder(receiver.url, writer)
                    inode = os.stat(moved).st_ino
                    if gone:   # once counted behind (a flaky failure: it stayed behind)
                        self.assertTrue(wait_until(
                            lambda: forwarder.status()["lines_behind"] is not None))
                        os.unlink(moved)
                    elif change == "renamed":   # beside another program's FIFO: not opened
                        os.rename(moved, os.path.join(self.dir, "renamed-again.jsonl"))
                        fifo = os.path.join(self.dir, "a-fifo")
                        os.mkfifo(fifo)
                        writing = threading.Thread(target=lambda: open(fifo, "wb").close())
                        writing.start()
                        self.addCleanup(writing.join)
                        self.addCleanup(lambda: os.close(os.open(fifo, os.O_RDONLY |
                                                                 os.O_NONBLOCK)))
                    down.clear()
                    self.assertTrue(wait_until(
                        lambda: forwarder.status()["lines_behind"] == 0, 5))
                    forwarder.stop(5)
                if change == "renamed":
                    self.assertTrue(writing.is_alive(), "the FIFO was opened")
                if gone:   # said as a moved file, under the name it was found by
                    self.assertIn("a file moved by hand, last seen as %s (inode %d) is gone"
                                  % (moved, inode), self.stderr.getvalue())
                self.assertEqual(receiver.ids(), ["m%d" % number for number in range(30)
                                                  if not gone or number not in (22, 23, 24)])
                self.assertNotIn("error", self.stderr.getvalue())

    def test_files_swapped_back_while_pixel_is_down_are_both_sent(self):
        # The live log moved aside, a new one written; then, pixel down, the new one moved
        # away and the old one put back: the checkpoint's file is the live one again, and
        # the file it listed, found ahead of it, was skipped (5 of 10 lost, nothing said).
        receiver, down, writer, forwarder, aside = self.moved_aside_and_a_new_file()
        self.assertTrue(wait_until(lambda: moved_inodes(writer.path) == [
            os.stat(writer.path).st_ino]))
        forwarder.stop(5)
        forwarder.close()
        writer.close()
        os.rename(writer.path, os.path.join(self.dir, "newer.jsonl"))
        os.rename(aside, writer.path)
        receiver = FakeReceiver(self)   # as sent_after_a_restart
        second = self.forwarder(receiver.url, self.writer())
        self.assertTrue(wait_until(lambda: second.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in [5, 6, 7, 8, 9] +
                                          [0, 1, 2, 3, 4]])   # the one listed first
        self.assertNotIn("gone", self.stderr.getvalue())

    def test_a_file_moved_back_while_pixel_is_down_leaves_no_rotated_file_behind(self):
        # As above, the new file rotated first (--max-bytes): the rotated files, found by
        # their last write before the checkpoint's file, now the live one, were skipped as
        # sent (an attack pass: 45 of 55 lost, nothing said, lines_behind 0).
        receiver, down = receiver_down(self)
        writer = self.writer(max_bytes=1000)
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(5))
        aside = self.move_aside(writer)
        for number in range(5, 20):
            self.write(writer, [number])
        self.assertGreaterEqual(len(pixel.pixel_rotations(writer.path)), 2)
        self.assertTrue(wait_until(lambda: os.stat(writer.path).st_ino in
                                   moved_inodes(writer.path)))   # listed: a backlog
        forwarder.stop(5)   # no "moved" list of rotated files: the move back comes later
        forwarder.close()
        writer.close()
        os.rename(writer.path, os.path.join(self.dir, "newer.jsonl"))
        os.rename(aside, writer.path)
        self.sent_after_a_restart(["m%d" % number for number in
                                                   list(range(5, 20)) + list(range(5))])
        self.assertNotIn("gone", self.stderr.getvalue())

    def test_files_deleted_before_their_turn_leave_the_backlog(self):
        # Rotated during the run, parked past MAX_OPEN_LOG_FILES, deleted by someone else
        # before their turn: said gone, but lines_behind kept their lines for good (81 in an
        # attack pass): only files there at the start were taken off.
        receiver, down = receiver_down(self)
        with unittest.mock.patch.object(pixel, "MAX_OPEN_LOG_FILES", 2):
            writer = self.writer(max_bytes=300)   # an event a file
            forwarder = self.forwarder(receiver.url, writer)
            self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
            for number in range(10):
                self.write(writer, [number])
            self.assertEqual(forwarder.status()["lines_behind"], 10)
            parked = pixel.pixel_rotations(writer.path)[2:6]
            for path in parked[:3]:
                os.unlink(path)
            with open(parked[3], "rb") as plain:   # gzipped, as cron or logrotate would
                with gzip.open(parked[3] + ".gz", "wb") as packed:
                    packed.write(plain.read())
            os.unlink(parked[3])
            down.clear()
            self.assertTrue(wait_until(lambda: len(receiver.taken) == 6))
            self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
            self.write(writer, [10])
            self.assertTrue(wait_until(lambda: len(receiver.taken) == 7))
            self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(self.stderr.getvalue().count("is gone before"), 4)
        # The gzipped one is said to be, with how to send it (the attack pass).
        self.assertEqual(self.stderr.getvalue().count(
            "(gzipped since: `pixel.py forward --to URL %s.gz` sends it, from its start)"
            % parked[3]), 1)

    def test_a_parked_file_is_told_from_a_later_one_on_its_reused_inode(self):
        for live in (True, False):
            with self.subTest(live=live):
                self.dir = temp_dir(self)
                self.parked_file_and_a_later_one_on_its_inode(live)

    def parked_file_and_a_later_one_on_its_inode(self, live):
        # A parked rotated file, deleted, its inode reused by a later file: found by its
        # identity, that file was sent in its place, out of order, the deleted one's loss
        # unsaid, and lines_behind kept its lines for good (an attack pass: 30); taken for
        # the parked one moved back, it was sent from that one's end. Here the later file
        # is the parked one's inode, moved out, written anew, and moved in at the log's name
        # (the live file moved aside first), or given a later rotated name.
        receiver, down = receiver_down(self)
        with unittest.mock.patch.object(pixel, "MAX_OPEN_LOG_FILES", 2):
            writer = self.writer(max_bytes=300)   # an event a file
            forwarder = self.forwarder(receiver.url, writer)
            for number in range(6):
                self.write(writer, [number])
            self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 6))
            parked = pixel.pixel_rotations(writer.path)[3]
            away = os.path.join(temp_dir(self), "away.jsonl")
            os.rename(parked, away)
            with open(away, "wb") as handle:
                handle.write(log_event(100))
            if live:
                self.move_aside(writer)
                os.rename(away, writer.path)
                writer.reopen()
            else:
                os.rename(away, pixel.rotation_target(writer.path, time.time()))
            down.clear()
            self.assertTrue(wait_until(lambda: "is gone before" in self.stderr.getvalue() and
                                       forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m0", "m1", "m2", "m4", "m5"] + ["m100"] * live)
        self.assertIn(parked + " (inode", self.stderr.getvalue())

    def test_the_backlog_is_counted_again_during_an_outage(self):
        # A file gone before its turn that was written since the count (the live file then)
        # took off only the lines counted in it (an attack pass: 6 behind, none unsent); one
        # never counted made the forwarder count again, but only between batches, so through
        # an outage lines_behind was null, and /metrics' backlog 0.
        taking = set()   # the first messageIds of the batches taken
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (200, {}, b"{}") if events[0]["messageId"] in taking else (503, {}, b"")))
        patcher = unittest.mock.patch.object(pixel, "MAX_OPEN_LOG_FILES", 2)
        patcher.start()
        self.addCleanup(patcher.stop)
        writer = self.writer(max_bytes=400)   # two events a file
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(3))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 3))
        forwarder.stop(5)
        forwarder.close()
        forwarder = self.forwarder(receiver.url, writer)   # counts m2 in the live file
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 3))
        for number in range(3, 12):
            self.write(writer, [number])   # m3 into that file too, then it rotates
        self.assertEqual(forwarder.status()["lines_behind"], 12)
        os.unlink(pixel.pixel_rotations(writer.path)[1])   # m2, m3; parked
        metrics = pixel.Metrics()
        metrics.value("pixel_unknown", "gauge", "Not known yet.", lambda: None)
        pixel.register_forwarder(forwarder, metrics)
        taking.add("m0")
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 8 and
                                   forwarder.receiver.failed_attempts > 1))
        self.assertIn("\npixel_forward_backlog_events 8\n", metrics.render())
        self.assertNotIn("\npixel_unknown ", metrics.render())   # no sample: not 0
        taking.update("m%d" % number for number in range(4, 12))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in [0, 1] + list(
            range(4, 12))])
        self.assertEqual(self.stderr.getvalue().count("is gone before"), 1)

    def test_the_backlog_after_an_erase_holds_the_forwarder(self):
        # resume() counts again in a new queue, but the lines done before it were taken off
        # that count too: lines_behind read 0 with 3 unsent.
        receiver, down = receiver_down(self)
        down.clear()
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(5))
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 5))
        forwarder.hold()
        down.set()
        forwarder.resume()
        self.write(writer, range(5, 8))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 3))
        down.clear()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(8)])

    def held(self):
        """A forwarder that has sent m0 to m2 of a writer's, then held as an erase holds it:
        (receiver, writer, forwarder)."""
        receiver = FakeReceiver(self)
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(3))
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 3))
        forwarder.hold()
        return receiver, writer, forwarder

    def assert_all_sent(self, receiver, forwarder, count):
        self.assertTrue(wait_until(lambda: len(receiver.taken) >= count and
                                   forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(count)])

    def test_a_live_log_moved_by_hand_while_an_erase_holds_the_forwarder_is_sent(self):
        # The files the writer opened while an erase held the forwarder were known nowhere:
        # rotate_now() dropped the writer's list of them, and the checkpoint was older. One
        # moved by hand meanwhile (no rotation's name) was never sent (an attack pass: a
        # pixel under load, an mv loop and erases, 4,086 events never forwarded).
        receiver = FakeReceiver(self)
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(2))
        self.write(writer, [2], userId="alice")
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 3))
        forwarder.hold()
        rotated = writer.rotate_now()     # the erase's request (EraseDesk._rotate)
        self.write(writer, range(3, 6))   # into the next live file
        self.move_aside(writer)           # moved by hand, and a new live file
        self.write(writer, range(6, 9))
        # The erase replaces the rotated file, all sent: no "moved by hand ... gone" of it.
        pixel.erase_file(rotated, pixel.People(["alice"]), apply=True,
                         checkpoints=pixel.checkpoints_beside([rotated]))
        forwarder.resume()
        self.assert_all_sent(receiver, forwarder, 9)
        self.assertNotIn("moved by hand", self.stderr.getvalue())

    def test_a_file_moved_by_hand_while_held_without_a_rotation_is_sent(self):
        # An erase of rotated files alone (the live log was mv'd away when its glob ran)
        # holds the forwarder and asks for no rotation: the files the writer opened meanwhile
        # were dropped at resume, and one of them moved by hand never sent (the attack's load
        # run again: 470 to 787 events, in 3 to 5 whole files).
        receiver, writer, forwarder = self.held()
        self.move_aside(writer)           # the checkpoint's file: found by its identity
        self.write(writer, range(3, 6))   # into a file opened while held ...
        os.rename(writer.path, os.path.join(self.dir, "aside-2.jsonl"))   # ... moved by hand
        writer.reopen()
        self.write(writer, range(6, 9))
        forwarder.resume()
        self.assert_all_sent(receiver, forwarder, 9)

    def test_a_file_moved_by_hand_while_held_is_sent_after_a_resume_that_failed(self):
        # A resume() that failed (its checkpoint could not be written; a dup() out of
        # descriptors) had taken the writer's files left, and dropped them: the one moved by
        # hand was never sent once a later resume() worked (an attack pass: 21 of 81 lost).
        receiver, writer, forwarder = self.held()
        writer.rotate_now()               # the erase's request (EraseDesk._rotate)
        self.write(writer, range(3, 6))   # into the next live file ...
        self.move_aside(writer)           # ... moved by hand, and a new live file
        self.write(writer, range(6, 9))
        blocker = pixel.state_path(writer.path, "forward") + ".tmp"
        os.mkdir(blocker)                 # the checkpoint cannot be written
        with self.assertRaises(OSError):
            forwarder.resume()
        os.rmdir(blocker)
        with unittest.mock.patch("os.dup", side_effect=OSError(errno.EMFILE, "too many")):
            with self.assertRaises(OSError):
                forwarder.resume()
        self.write(writer, range(9, 12))
        forwarder.resume()
        self.assert_all_sent(receiver, forwarder, 12)
        self.assertIsNone(writer.left)    # forgotten once saved: nothing sent twice

    def test_an_empty_file_left_while_held_is_neither_lost_nor_another_file(self):
        # An empty file the writer left while held (reopened, then moved by hand) was listed
        # with an empty head: deleted, it was said lost; another file on its inode, here an
        # operator's copy of a sent log, was sent whole (an attack pass: 21 events twice).
        receiver, writer, forwarder = self.held()
        sent = writer.rotate_now()        # the erase's request (EraseDesk._rotate)
        self.write(writer, range(3, 6))
        self.move_aside(writer)           # a new live file, left empty:
        empty = os.path.join(self.dir, "empty.jsonl")
        os.rename(writer.path, empty)
        writer.reopen()
        inode = os.stat(empty).st_ino
        os.remove(empty)
        with open(sent, "rb") as handle:
            copy = handle.read()
        for number in range(300):         # the inode taken again, if the file system will
            path = os.path.join(self.dir, "copy-%d.jsonl" % number)
            with open(path, "wb") as handle:
                handle.write(copy)
            if os.stat(path).st_ino == inode:
                break
            os.remove(path)
        self.write(writer, range(6, 9))
        forwarder.resume()
        self.assertTrue(wait_until(lambda: len(receiver.taken) >= 9 and
                                   forwarder.status()["lines_behind"] == 0))
        time.sleep(0.2)
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(9)])
        self.assertNotIn("moved by hand", self.stderr.getvalue())

    def test_a_live_log_moved_by_hand_just_before_an_erase_holds_the_forwarder_is_sent(self):
        # The same for a file the writer opened, and that was moved by hand, after the
        # forwarder's last save and before the hold: hold() closed the queue that knew of
        # it without saving, and resume() followed the checkpoint, which did not.
        receiver = FakeReceiver(self)
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer, start=False)   # no look since
        self.write(writer, range(3))
        self.move_aside(writer)
        self.write(writer, range(3, 6))
        os.rename(writer.path, os.path.join(self.dir, "aside-2.jsonl"))   # moved by hand too
        writer.reopen()
        self.write(writer, range(6, 9))
        forwarder.hold()
        writer.rotate_now()               # the erase's request (EraseDesk._rotate)
        forwarder.resume()
        self.assert_all_sent(receiver, forwarder, 9)

    def test_a_file_moved_back_and_reopened_is_not_followed_by_its_rotated_files_again(self):
        # The rule above (files written since the checkpoint go first when its file is live
        # again) fired when its file was moved back and reopened (SIGHUP) while running, and
        # saved as live since: a restart sent the rotated files between again (an attack
        # pass: 27 duplicates). Since the save, for a file live when saved.
        receiver = FakeReceiver(self)
        writer = self.writer(max_bytes=1000)
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(3))
        aside = self.move_aside(writer)
        self.write(writer, range(3, 20))
        self.assertGreaterEqual(len(pixel.pixel_rotations(writer.path)), 2)
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        os.rename(writer.path, os.path.join(self.dir, "newer.jsonl"))
        os.rename(aside, writer.path)
        writer.reopen()
        self.assertTrue(wait_until(lambda: forward_checkpoint(writer.path)[0] ==
                                   os.stat(writer.path).st_ino))
        forwarder.stop(5)
        forwarder.close()
        writer.close()
        self.sent_after_a_restart([])   # all sent before

    def test_a_file_moved_back_while_down_loses_nothing_whatever_its_checkpoint_says(self):
        # Saved when its file was live, then that file rotated with no save since (a kill
        # -9 during a slow post), then moved back while pixel was down: the files written
        # since were taken for sent (an attack pass: 156 of 261 lost). So too with a
        # checkpoint of an older pixel (no "live"), or a hand-edited one (210 of 320).
        for live in ("as saved", "missing", None, "yes"):
            with self.subTest(live=live):
                self.dir = temp_dir(self)
                receiver, down = receiver_down(self)
                writer = self.writer(max_bytes=1000)
                forwarder = self.forwarder(receiver.url, writer)
                self.write(writer, range(3))
                inode = os.stat(writer.path).st_ino
                forwarder.stop(5)   # its checkpoint names the live file, "live": true
                forwarder.close()
                for number in range(3, 20):
                    self.write(writer, [number])
                writer.close()
                path = pixel.state_path(writer.path, "forward")
                checkpoint = pixel.read_checkpoint(path)
                self.assertIs(checkpoint.pop("live"), True)
                if live != "missing":
                    checkpoint["live"] = True if live == "as saved" else live
                pixel.write_checkpoint(path, checkpoint)
                os.rename(writer.path, pixel.rotation_target(writer.path, time.time()))
                os.rename(next(name for name in pixel.pixel_rotations(writer.path)
                               if os.stat(name).st_ino == inode), writer.path)
                receiver = FakeReceiver(self)
                forwarder = self.forwarder(receiver.url, self.writer(max_bytes=1000))
                self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
                self.assertEqual(sorted(receiver.ids()), sorted("m%d" % number
                                                                for number in range(20)))

    def test_an_older_pixels_checkpoint_is_said_to_list_no_file_moved_by_hand(self):
        # The upgrade pass: 1.0's and early 2.0's checkpoints list no log file moved by hand
        # (one moved aside with a SIGHUP), so 2.1 started on one never sent it, silently.
        writer = self.writer()
        self.write(writer, range(2))
        forwarder = self.forwarder(FakeReceiver(self).url, writer)
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        forwarder.stop(5)
        forwarder.close()
        self.assertNotIn("older pixel's", self.stderr.getvalue())
        path = pixel.state_path(writer.path, "forward")
        checkpoint = pixel.read_checkpoint(path)
        del checkpoint["live"]
        for name, document in (("a checkpoint that lists moved files", dict(
                checkpoint, moved=[])), ("one it cannot read", "{garbage"), ("1.0's", None)):
            with self.subTest(name):
                self.stderr.seek(0)
                self.stderr.truncate()
                if document is None:
                    pixel.write_checkpoint(path, checkpoint)
                elif isinstance(document, dict):
                    pixel.write_checkpoint(path, document)
                else:
                    with open(path, "w") as handle:
                        handle.write(document)
                forwarder = self.forwarder(FakeReceiver(self).url, writer)
                forwarder.stop(5)
                forwarder.close()
                said = "the checkpoint %s is an older pixel's" % path
                (self.assertIn if document is None else self.assertNotIn)(
                    said, self.stderr.getvalue())

    def test_a_new_file_is_in_the_checkpoint_before_the_next_look(self):
        # A file the writer opened (a rotation here) joined the checkpoint at the forwarder's
        # next look, FORWARD_POLL later: a kill -9 meanwhile, then that file moved away while
        # pixel was down, and its events were never sent (a fuzz run: 6 of 270 lost). Its
        # opening wakes the forwarder now; a minute's poll shows that it does.
        patcher = unittest.mock.patch.object(pixel, "FORWARD_POLL", 60)
        patcher.start()
        self.addCleanup(patcher.stop)
        writer = self.writer(max_bytes=400)   # two events a file
        forwarder = self.forwarder(FakeReceiver(self).url, writer)
        self.write(writer, range(3))   # m2 into a new file
        live = os.stat(writer.path)
        self.assertTrue(wait_until(lambda: forward_checkpoint(writer.path) == (
            live.st_ino, live.st_size)))   # m2 sent, and the checkpoint past it
        self.write(writer, [3])   # not sent: the forwarder waits out its poll
        forwarder.stop(5)   # as a kill -9: the checkpoint is what a batch left
        forwarder.close()
        writer.close()
        os.rename(writer.path, os.path.join(self.dir, "away.jsonl"))
        self.sent_after_a_restart(["m3"])

    def test_a_file_gone_before_its_turn_is_not_remembered_as_sent_whole(self):
        # A file moved back, rotated, parked, and gone before its turn was remembered as
        # sent whole with a head of 0 bytes, which any file on its inode matched: a new file
        # on the reused inode, at the log's name, was sent from the old offset (an attack
        # pass: 9 lost). Here the gone file is moved out of the folder and comes back as
        # that new file: file systems reuse inodes when they please.
        receiver, down = receiver_down(self)
        patcher = unittest.mock.patch.object(pixel, "MAX_OPEN_LOG_FILES", 2)
        patcher.start()
        self.addCleanup(patcher.stop)
        writer = self.writer(max_bytes=300)   # an event a file
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, [0])
        inode = os.stat(writer.path).st_ino
        aside = self.move_aside(writer)
        self.write(writer, [1])
        os.rename(writer.path, os.path.join(self.dir, "b.jsonl"))
        os.rename(aside, writer.path)
        writer.reopen()   # on from its end
        for number in range(2, 8):
            self.write(writer, [number])   # rotated, then parked
        away = os.path.join(temp_dir(self), "away.jsonl")
        os.rename(next(path for path in pixel.pixel_rotations(writer.path)
                       if os.stat(path).st_ino == inode), away)
        down.clear()
        self.assertTrue(wait_until(lambda: "is gone before" in self.stderr.getvalue() and
                                   forwarder.status()["lines_behind"] == 0))
        with open(away, "wb") as handle:   # the same inode, as a new file
            handle.writelines(log_event(number) for number in range(100, 105))
        os.rename(away, writer.path)
        writer.reopen()
        self.write(writer, [105])
        self.assertTrue(wait_until(lambda: "m105" in receiver.ids()))
        self.assertEqual(receiver.ids()[-6:], ["m%d" % number for number in range(100, 106)])

    def test_files_sent_whole_are_remembered_past_many_rotations(self):
        # Moved back after 40 rotations (the memory of files sent whole held 32), or once
        # the writer had closed its descriptor (rotated again before the forwarder looked):
        # sent again from its first line.
        for closed in (False, True):
            with self.subTest(closed=closed):
                self.dir = temp_dir(self)
                receiver = FakeReceiver(self)
                writer = self.writer(max_bytes=300)
                forwarder = self.forwarder(receiver.url, writer)
                self.write(writer, range(3))
                aside = self.move_aside(writer)
                for number in range(3, 43):
                    self.write(writer, [number])
                self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
                os.rename(aside, writer.path)
                with unittest.mock.patch.object(pixel, "MAX_OPEN_LOG_FILES", 0 if closed
                                                else pixel.MAX_OPEN_LOG_FILES):
                    writer.reopen()   # over 300 bytes: rotated at the next write, and
                    self.write(writer, [43])   # (closed) its descriptor parked by the writer
                self.write(writer, [44])
                self.assertTrue(wait_until(lambda: len(receiver.taken) >= 45))
                self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
                self.assertEqual(receiver.ids(), ["m%d" % number for number in range(45)])

    def test_a_moved_entry_naming_the_checkpoints_own_file_sends_it_once(self):
        # Hand-edited; its file moved by hand too: found as the checkpoint's and as a moved
        # one, it was sent twice.
        lines = [log_event(number) for number in range(30)]
        receiver, down, moved = self.moved_behind_the_checkpoint(lines)
        log = os.path.join(self.dir, "events.jsonl")
        path = pixel.state_path(log, "forward")
        checkpoint = pixel.read_checkpoint(path)
        os.rename(pixel.pixel_rotations(log)[0], os.path.join(self.dir, "first-by-hand.jsonl"))
        own = {field: checkpoint[field] for field in ("device", "inode", "head_bytes", "head")}
        pixel.write_checkpoint(path, dict(checkpoint, moved=checkpoint["moved"] + [own]))
        self.sent_after_a_restart(["m%d" % number for number in range(30)])

    def test_a_moved_file_gone_before_the_restart_is_said(self):
        # Deleted, or moved out of the log's folder: its unsent events are lost to the
        # receiver, and pixel says so as it does for the checkpoint's own file.
        lines = [log_event(number) for number in range(30)]
        receiver, down, moved = self.moved_behind_the_checkpoint(lines)
        inode = os.stat(moved).st_ino
        os.unlink(moved)
        self.sent_after_a_restart(["m%d" % number for number in range(30)
                                                   if number not in (22, 23, 24)])
        self.assertIn("1 file(s) moved by hand from %s (inode %d) are gone" % (
            os.path.join(self.dir, "events.jsonl"), inode), self.stderr.getvalue())
        self.assertIn("their unsent events are lost", self.stderr.getvalue())

    def test_no_checkpoint_starts_at_the_live_files_first_line(self):
        receiver = FakeReceiver(self)
        writer = self.writer(max_bytes=2000)
        self.write(writer, range(20))
        with open(writer.path, "rb") as handle:
            live = [json.loads(line)["messageId"] for line in handle]
        self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: len(receiver.taken) == len(live)))
        self.assertEqual(receiver.ids(), live)

    def test_a_checkpoint_naming_a_deleted_file_starts_at_the_next_one(self):
        receiver = FakeReceiver(self)
        writer = self.writer(max_bytes=2000)
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(3))
        self.assertTrue(wait_until(lambda: forwarder.sent == 3))
        forwarder.stop(5)
        forwarder.close()
        self.write(writer, range(3, 30))
        os.remove(pixel.pixel_rotations(writer.path)[0])   # the file the checkpoint names, rotated
        second = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: second.status()["lines_behind"] == 0))
        self.assertIn("the file the checkpoint names", self.stderr.getvalue())
        remaining = []
        for path in pixel.pixel_rotations(writer.path) + [writer.path]:
            with open(path, "rb") as handle:
                remaining += [json.loads(line)["messageId"] for line in handle]
        self.assertEqual(receiver.ids()[3:], remaining)

    def test_a_garbled_checkpoint_sends_every_file_from_its_start(self):
        receiver = FakeReceiver(self)
        writer = self.writer(max_bytes=2000)
        self.write(writer, range(20))
        with open(state_file(writer.path), "w") as handle:
            handle.write("{garbage")
        self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 20))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(20)])
        self.assertIn("cannot read the checkpoint", self.stderr.getvalue())

    def full_disk_at_m5(self, before_filling=lambda checkpoint: None):
        """(receiver, writer, forwarder, checkpoint path, filler): m0-m4 sent, m5-m9 written,
        and the tmpfs filled (after `before_filling(checkpoint)`) as m5's batch is answered."""
        folder = mount_tmpfs(self, 256 * 1024)
        receiver, held, hold = receiver_holding(self, "m5")
        writer = pixel.LogWriter(os.path.join(folder, "events.jsonl"), readable=True,
                                 reporter=self.reporter)
        self.addCleanup(writer.close)
        self.write(writer, range(5))
        forwarder = self.forwarder(receiver.url, writer, batch_events=1)
        self.assertTrue(wait_until(lambda: forwarder.sent == 5))
        self.write(writer, range(5, 10))
        self.assertTrue(held.wait(10))
        checkpoint = pixel.state_path(writer.path, "forward")
        before_filling(checkpoint)
        filler = fill_disk(self, folder)   # the lines are on disk, a new checkpoint won't fit
        hold.set()
        return receiver, writer, forwarder, checkpoint, filler

    def test_a_full_disk_for_the_checkpoint_holds_forwarding_until_it_can_be_saved(self):
        # The durability pass: forwarding went on with the checkpoint frozen, and a restart
        # then sent 1,341 events again. A batch is sent only with the one before it saved:
        # here no checkpoint is left to write over (removed by hand), and no new one fits.
        receiver, writer, forwarder, checkpoint, filler = self.full_disk_at_m5(os.remove)
        self.assertTrue(wait_until(lambda: forwarder.sent == 6))
        self.assertTrue(wait_until(lambda: "cannot write the checkpoint" in
                                   self.stderr.getvalue()))
        self.assertIn("forwarding waits until it can", self.stderr.getvalue())
        self.assertFalse(wait_until(lambda: forwarder.sent > 6, timeout=0.5))
        self.assertIsNone(pixel.read_checkpoint(checkpoint))
        # No copy left: a retry's may be there for an instant (CI on 3.13 caught one), never
        # for good.
        self.assertTrue(wait_until(lambda: os.path.basename(checkpoint) + ".tmp" not in
                                   os.listdir(os.path.dirname(checkpoint))))
        os.remove(filler)
        self.assertTrue(wait_until(lambda: forwarder.sent == 10))
        self.assertTrue(wait_until(lambda: pixel.read_checkpoint(checkpoint)["offset"] ==
                                   len(b"".join(log_event(number) for number in range(10)))))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(10)])

    def test_a_full_disk_takes_the_checkpoint_written_over_in_place(self):
        # It waited for space, and with --keep none came: the backlog filling the disk was the
        # files it would have sent. The old checkpoint's blocks hold the new one.
        receiver, writer, forwarder, checkpoint, filler = self.full_disk_at_m5()
        inode = os.stat(checkpoint).st_ino
        self.assertTrue(wait_until(lambda: forwarder.sent == 10))
        self.assertTrue(wait_until(lambda: pixel.read_checkpoint(checkpoint)["offset"] ==
                                   len(b"".join(log_event(number) for number in range(10)))))
        self.assertEqual(os.stat(checkpoint).st_ino, inode)   # written over, not replaced
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(10)])
        self.assertNotIn("cannot write the checkpoint", self.stderr.getvalue())
        with open(filler, "ab", buffering=0) as handle, self.assertRaises(OSError) as raised:
            handle.write(b"\0" * 4096)   # the disk is still full
        self.assertEqual(raised.exception.errno, errno.ENOSPC)

    def test_a_checkpoint_is_written_over_only_within_the_blocks_it_has(self):
        folder = mount_tmpfs(self, 256 * 1024)
        path = os.path.join(folder, "checkpoint.json")
        pixel.write_checkpoint(path, {"offset": 1, "names": "x" * 100})
        fill_disk(self, folder)
        with self.assertRaises(OSError):   # a forwarder's alone: an erase's states are replaced
            pixel.write_checkpoint(path, {"offset": 2})

        def write(path, document):
            pixel.write_checkpoint(path, document, in_place=True)

        write(path, {"offset": 2})   # shorter: padded with spaces
        with open(path) as handle:
            self.assertEqual(json.load(handle), {"offset": 2})
        write(path, {"offset": 3, "names": "y" * 3000})   # the page holds it
        with self.assertRaises(OSError) as raised:   # past its one page: old or new, never torn
            write(path, {"offset": 4, "names": "z" * 5000})
        self.assertEqual(raised.exception.errno, errno.ENOSPC)
        with open(path) as handle:
            self.assertEqual(json.load(handle), {"offset": 3, "names": "y" * 3000})
        self.assertEqual(sorted(os.listdir(folder)), ["checkpoint.json", "filler"])   # no .tmp

    def test_a_forwarders_checkpoint_has_room_to_grow_on_a_full_disk(self):
        # The attack pass: 40 files moved by hand (mv, then a SIGHUP) during an outage on a
        # full disk grew the checkpoint's list of them past its one page: forwarding stopped.
        folder = mount_tmpfs(self, 256 * 1024)
        path = os.path.join(folder, "checkpoint.json")
        pixel.write_checkpoint(path, {"offset": 1}, in_place=True)
        fill_disk(self, folder)
        moved = [{"inode": number, "name": "/var/lib/pixel/moved-%d.jsonl" % number}
                 for number in range(150)]   # 9 KB
        pixel.write_checkpoint(path, {"offset": 2, "moved": moved}, in_place=True)
        with open(path) as handle:
            self.assertEqual(json.load(handle), {"offset": 2, "moved": moved})

    def test_a_backlog_that_filled_the_disk_is_deleted_as_it_is_sent(self):
        # --keep deleted only at a rotation, and a full disk rotates nothing (a small live
        # file, each write refused): sent at last, the backlog stayed, and so did the full disk.
        folder = mount_tmpfs(self, 256 * 1024)
        receiver, down = receiver_down(self)
        writer = pixel.LogWriter(os.path.join(folder, "events.jsonl"), readable=True,
                                 reporter=self.reporter, max_bytes=16384, keep=1)
        self.addCleanup(writer.close)
        forwarder = self.forwarder(receiver.url, writer)
        lines = 4 * (16384 // len(log_event(0))) + 1   # 4 files rotated, a line in the live one
        self.write(writer, range(lines))
        self.assertEqual(len(pixel.pixel_rotations(writer.path)), 4)   # none sent: kept
        fill_disk(self, folder)
        while writer.write([log_event(lines)]):   # till the live file's last page is full:
            lines += 1                            # far from --max-bytes, no rotation
        self.assertLess(os.path.getsize(writer.path), 8192)
        down.clear()
        self.assertTrue(wait_until(lambda: forwarder.sent == lines))
        self.assertTrue(wait_until(lambda: len(pixel.pixel_rotations(writer.path)) == 1))
        self.assertIn("(--keep 1)", self.stderr.getvalue())
        self.assertEqual(writer.write([log_event(lines + 1)]), 1)   # room again
        self.assertTrue(wait_until(lambda: forwarder.sent == lines + 1))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(lines)] +
                         ["m%d" % (lines + 1)])

    def test_a_log_cut_shorter_than_its_checkpoint_loses_nothing_written_after_the_cut(self):
        # A power cut lost the log's last lines after they were sent: the checkpoint stands
        # past the file's end. Forwarding goes on from the end, and sends each line written
        # there since; from the old offset it would skip them, or read from mid-line.
        receiver, writer = self.forwarded_then_stopped(range(40))
        writer.close()
        cut = len(b"".join(log_event(number) for number in range(30)))
        self.assertGreater(cut, 4096)   # the checkpoint's head is all still there
        os.truncate(writer.path, cut)
        writer = self.writer()
        restarted = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: "shorter than the checkpoint" in
                                   self.stderr.getvalue()))
        self.assertIn("pixel: %s is shorter than the checkpoint says (%d < %d bytes): "
                      "forwarding from its end\n" % (writer.path, cut, len(b"".join(
                          log_event(number) for number in range(40)))), self.stderr.getvalue())
        self.write(writer, range(40, 50))
        self.assertTrue(wait_until(lambda: restarted.status()["lines_behind"] == 0 and
                                   len(receiver.taken) == 50))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(50)])
        self.assertEqual(self.rejects(), [])


class ForwardingAttacked(ForwardingCase):
    """What an attacker pass against the forwarder found, each held by a test."""

    def test_a_restart_before_the_first_batch_loses_nothing(self):
        receiver, down = receiver_down(self)
        writer = self.writer(max_bytes=1000)
        first = self.forwarder(receiver.url, writer)
        self.write(writer, range(20))   # several rotations, none of it sent
        first.stop(5)
        first.close()
        receiver = FakeReceiver(self)   # as sent_after_a_restart
        second = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: second.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(20)])

    def test_no_checkpoint_can_be_written_no_forwarding(self):
        writer = self.writer()
        os.makedirs(pixel.state_path(writer.path, "forward"))   # where the checkpoint goes
        with self.assertRaises(OSError):
            self.forwarder("http://127.0.0.1:9", writer, start=False)

    def test_a_long_backlog_of_small_files_holds_few_descriptors(self):
        receiver, down = receiver_down(self)
        writer = self.writer(max_bytes=200, keep=2)
        forwarder = self.forwarder(receiver.url, writer)
        files = 150 if SOAK else 90   # more than it may hold open, with the writer's
        for number in range(files):   # a rotated file each, none of them sent
            self.write(writer, [number])
        self.assertGreater(len(pixel.pixel_rotations(writer.path)),
                           2 * pixel.MAX_OPEN_LOG_FILES + 3)
        # Every descriptor of the log's files in this process: the writer's own, those it
        # keeps for the forwarder to take, and the forwarder's, each bounded.
        held = [fd for fd in os.listdir("/proc/self/fd") if fd_target(fd).startswith(writer.path)]
        self.assertLessEqual(len(held), 2 * pixel.MAX_OPEN_LOG_FILES + 3)
        forwarder.status()   # it takes the files from the writer
        # One is renamed by someone else while it waits closed: found by its identity.
        parked = next(log for log in list(forwarder.queue.files)[1:-1] if log.fd is None)
        os.rename(parked.name, writer.path + ".1")
        down.clear()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0,
                                   timeout=30))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(files)])

    def moved_by_hand(self, writer, count):
        """`count` files of a line each moved by hand to by-hand-N.jsonl, then a line in the
        live file: events m0 to m<count>."""
        for number in range(count):
            self.write(writer, [number])
            os.rename(writer.path, os.path.join(self.dir, "by-hand-%d.jsonl" % number))
            writer.reopen()
        self.write(writer, [count])

    def test_files_moved_by_hand_in_an_outage_are_parked_too(self):
        # Each kept a descriptor open until it was sent: 40 mvs, 40 more (an attack pass).
        receiver, down = receiver_down(self)
        with unittest.mock.patch.object(pixel, "MAX_OPEN_LOG_FILES", 2):
            writer = self.writer()
            forwarder = self.forwarder(receiver.url, writer)
            self.moved_by_hand(writer, 6)
            forwarder.status()   # it takes the files from the writer
            self.assertEqual(len([log for log in forwarder.queue.files if log.fd is not None]), 2)
            os.rename(os.path.join(self.dir, "by-hand-3.jsonl"), os.path.join(self.dir, "x"))
            down.clear()
            self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(7)])

    def test_files_moved_by_hand_past_the_checkpoint_s_list_are_said(self):
        # 1,269 files moved by hand in an outage, then a kill -9: the 269 past the list were
        # never sent, and nothing said so (an attack pass).
        receiver, down = receiver_down(self)
        with unittest.mock.patch.object(pixel, "MAX_MOVED_FILES", 3):
            writer = self.writer()
            forwarder = self.forwarder(receiver.url, writer)
            self.moved_by_hand(writer, 3)
            forwarder.status()   # it takes the files from the writer
            live = os.stat(writer.path).st_ino   # listed, 0 being the checkpoint's own
            self.assertTrue(wait_until(lambda: len(moved_inodes(writer.path)) == 3 and
                                       moved_inodes(writer.path)[-1] == live))
            for number in (3, 4):   # the live file, then the next, moved as well: the list
                os.rename(writer.path, os.path.join(self.dir, "by-hand-%d.jsonl" % number))
                writer.reopen()     # is full, so it does not change and no save says so
                self.write(writer, [number + 1])
            forwarder.status()
            self.assertTrue(wait_until(lambda: re.search(   # once an interval: 4 files or 5
                r"the checkpoint lists 3 of the [45] unsent files .* the other [12], if moved "
                r"by hand, are not forwarded", self.stderr.getvalue())))
            self.assertEqual(moved_inodes(writer.path), [os.stat(os.path.join(
                self.dir, "by-hand-%d.jsonl" % number)).st_ino for number in (1, 2, 3)])
            down.clear()
            self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(6)])

    def test_a_file_moved_back_over_the_live_log_is_written_to(self):
        # mv events.jsonl aside; a new live file; mv aside events.jsonl. The writer's reopen
        # met the flock of the forwarder's own descriptor of that file: "another process
        # writes it", and what was answered next was not written (20 of 30, an attack pass).
        receiver, down, writer, forwarder, aside = self.moved_aside_and_a_new_file()
        # Its earlier entry was read to the file's end, events written after the move back
        # too, and those were sent again from the later entry (11 and 7 of 30): it now ends
        # where the later one starts.
        forwarder.status()   # it takes the files from the writer
        os.rename(aside, writer.path)
        time.sleep(2 * pixel.PATH_CHECK_INTERVAL)   # the writer looks at its path this often
        self.write(writer, [10])
        forwarder.status()   # ... and the file moved back
        self.write(writer, range(11, 15))
        self.assertEqual(read_bytes(writer.path).count(b"\n"), 10)
        self.assertNotIn("another process", self.stderr.getvalue())
        down.clear()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.write(writer, [15])   # sent too, though the file was sent to its end before
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 16))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in [0, 1, 2, 3, 4, 10, 5, 6,
                                                                         7, 8, 9, 11, 12, 13,
                                                                         14, 15]])

    def test_a_file_sent_whole_then_moved_back_goes_on_from_its_end(self):
        # Moved back once all of it was sent: it was sent again from its first line (2,001
        # duplicates of 2,016 in an attack pass).
        receiver, down, writer, forwarder, aside = self.moved_aside_and_a_new_file()
        down.clear()
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        os.rename(aside, writer.path)
        time.sleep(2 * pixel.PATH_CHECK_INTERVAL)   # the writer looks at its path this often
        self.write(writer, [10])
        self.assertTrue(wait_until(lambda: len(receiver.taken) >= 11))
        time.sleep(0.3)   # and nothing again
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(11)])

    def test_a_restart_with_a_long_backlog_parks_what_it_cannot_hold(self):
        receiver, down = receiver_down(self)
        writer = self.writer(max_bytes=200)
        first = self.forwarder(receiver.url, writer)
        files = 100 if SOAK else 60   # more than MAX_OPEN_LOG_FILES
        for number in range(files):
            self.write(writer, [number])
        first.stop(5)
        first.close()
        receiver, down = receiver_down(self)   # as sent_after_a_restart
        second = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: second.status()["lines_behind"] == files))
        self.assertLessEqual(sum(log.fd is not None for log in second.queue.files),
                             pixel.MAX_OPEN_LOG_FILES + 1)
        down.clear()
        self.assertTrue(wait_until(lambda: second.status()["lines_behind"] == 0, timeout=30))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(files)])

    def test_a_file_that_cannot_be_duplicated_stays_open_for_writing(self):
        receiver = FakeReceiver(self)
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, [0])
        os.rename(writer.path, writer.path + ".1")
        with unittest.mock.patch("os.dup", side_effect=OSError(errno.EMFILE, "Too many")):
            with self.assertRaises(OSError):
                writer.reopen()
            self.write(writer, [1])   # still to the file it had: the forwarder reads it
        writer.reopen()
        self.write(writer, [2])
        self.assertTrue(wait_until(lambda: forwarder.sent == 3))
        self.assertEqual(receiver.ids(), ["m0", "m1", "m2"])

    def test_json_nested_past_the_recursion_limit(self):
        deep = b'{"writeKey":"K","a":' + b"[" * 100000 + b"]" * 100000 + b"}"
        receiver = FakeReceiver(self)
        writer = self.writer()
        self.write(writer, [0])
        writer.write([b"[" * 100000 + b"]" * 100000 + b"\n"])
        self.write(writer, [1])
        with open(state_file(writer.path), "wb") as handle:
            handle.write(b"[" * 100000 + b"]" * 100000)
        forwarder = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["m0", "m1"])
        self.assertEqual([(line["reason"], line["detail"]) for line in self.rejects()],
                         [("forward_unreadable", "nested too deep")])
        self.assertIn("cannot read the checkpoint", self.stderr.getvalue())
        self.assertIsNone(pixel.logged_client_id(deep))
        self.assertEqual(pixel.logged_client_ids([writer.path], 10),
                         [pixel.dedupe_key("K", "m0"), pixel.dedupe_key("K", "m1")])

    def test_a_garbage_log_does_not_hold_up_the_start(self):
        path = os.path.join(self.dir, "garbage.jsonl")
        with open(path, "wb") as handle:
            handle.write(b"x\n" * 4000000 + log_event(1))
        started = time.monotonic()
        self.assertEqual(pixel.logged_client_ids([path], 100), [pixel.dedupe_key("K", "m1")])
        self.assertLess(time.monotonic() - started, 2.0)   # about 2,200 lines looked at

    def test_gzipped_archives_read_once_and_broken_ones_refused_by_name(self):
        receiver = FakeReceiver(self)
        whole = os.path.join(self.dir, "whole.jsonl.gz")
        data = b"".join(log_event(number, properties={"pad": "%06d" % number * 50})
                        for number in range(4000))
        with open(whole, "wb") as handle:
            handle.write(gzip.compress(data))
        cut = os.path.join(self.dir, "cut.jsonl.gz")
        with open(cut, "wb") as handle:
            handle.write(gzip.compress(b"".join(log_event(number)
                                                for number in range(4000, 4010)))[:-20])
        rejects = pixel.LogWriter(os.path.join(self.dir, "rejects.jsonl"))
        self.addCleanup(rejects.close)
        forwarder = pixel.Forwarder(pixel.Receiver(receiver.url), rejects,
                                    reporter=self.reporter)
        checkpoint = os.path.join(self.dir, "backfill")
        with open(checkpoint, "w") as handle:   # a "done" that is not a list
            handle.write('{"device": -1, "inode": -1, "offset": 0, "mtime_ns": 0, '
                         '"head_bytes": 0, "done": 5}')
        forwarder.add_files([whole, cut], checkpoint)
        self.addCleanup(forwarder.close)
        seeks = []
        real_seek = forwarder.queue.files[0].archive.seek
        forwarder.queue.files[0].archive.seek = lambda offset: seeks.append(offset) or \
            real_seek(offset)
        self.assertTrue(forwarder.run())
        self.assertLessEqual(len(seeks), 2, "read once, not from the top for each batch")
        ids = receiver.ids()
        self.assertEqual(ids[:4000], ["m%d" % number for number in range(4000)])
        self.assertEqual(ids[4000:], ["m%d" % number for number in range(4000, 4000 +
                                                                         len(ids) - 4000)])
        rejects = [(line["reason"], line["detail"]) for line in self.rejects()]
        self.assertEqual(rejects[:-1], [("forward_unreadable", "no newline")])   # cut through
        self.assertEqual(rejects[-1][0], "forward_truncated")
        self.assertIn("cut.jsonl.gz cannot be read past byte", rejects[-1][1])

    def test_a_write_key_with_a_colon_arrives_whole(self):
        receiver = FakeReceiver(self)
        writer = self.writer()
        self.write(writer, [0], key="key:with:colons")
        forwarder = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: forwarder.sent == 1))
        self.assertEqual(receiver.taken[0]["writeKey"], "key:with:colons")

    @soak
    def test_a_dripping_answer_is_cut_at_the_timeout_and_a_stop_is_at_once(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self.addCleanup(listener.close)
        done = threading.Event()
        self.addCleanup(done.set)

        def drip():
            while not done.is_set():
                try:
                    sock, _ = listener.accept()
                except OSError:
                    return
                sock.recv(65536)
                try:
                    for byte in b"HTTP/1.1 100 Continue\r\n\r\n" * 1000:
                        if done.wait(0.05):
                            break
                        sock.sendall(bytes([byte]))
                except OSError:
                    pass
                sock.close()

        threading.Thread(target=drip, daemon=True).start()
        writer = self.writer()
        self.write(writer, [0])
        forwarder = self.forwarder("http://127.0.0.1:%d" % listener.getsockname()[1], writer,
                                   timeout=0.5)
        self.assertTrue(wait_until(lambda: forwarder.receiver.failed_attempts >= 2))
        self.assertIn("no whole answer within 0.5 s", forwarder.receiver.last_error)
        started = time.monotonic()
        forwarder.stop(5)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertFalse(forwarder.thread.is_alive())

    @soak
    def test_retry_after_0_is_not_a_loop(self):
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            429, {"Retry-After": "0"}, b""))
        writer = self.writer()
        self.write(writer, [0])
        forwarder = self.forwarder(receiver.url, writer)
        time.sleep(1)
        self.assertLessEqual(len(receiver.posts), 1 / 0.05 + 1)
        self.assertGreater(forwarder.receiver.failed_attempts, 1)

    def test_a_live_log_named_gz_is_read_as_it_is(self):
        receiver = FakeReceiver(self)
        writer = pixel.LogWriter(os.path.join(self.dir, "events.gz"), readable=True)
        self.addCleanup(writer.close)
        self.write(writer, [0])
        forwarder = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: forwarder.sent == 1))

    def test_checkpoint_numbers_out_of_range(self):
        path = os.path.join(self.dir, "checkpoint")
        base = {"device": 1, "inode": 2, "offset": 3, "mtime_ns": 4, "head_bytes": 3}
        for field, value in (("head_bytes", 10 ** 30), ("head_bytes", -5), ("offset", -1),
                             ("head_bytes", 4097)):
            with self.subTest(field=field, value=value):
                with open(path, "w") as handle:
                    json.dump(dict(base, **{field: value}), handle)
                with self.assertRaises(ValueError):
                    pixel.read_checkpoint(path)

    def test_what_only_has_a_rotated_files_name_is_passed_over_at_a_restart(self):
        # A folder and a FIFO named as pixel's rotation names its files, made after the
        # checkpoint: the restart opened each as a file to send, and the forwarder did not
        # start (a FIFO would have blocked it).
        receiver, writer = self.forwarded_then_stopped(range(5))
        os.mkdir(writer.path + ".20261118T110640.250Z")
        os.mkfifo(writer.path + ".20261118T110640.251Z")
        self.write(writer, range(5, 10))
        restarted = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: restarted.status()["lines_behind"] == 0 and
                                   len(receiver.taken) == 10))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(10)])
        self.assertEqual(self.stderr.getvalue(), "")

    @soak
    def test_a_stop_while_a_line_of_gigabytes_is_measured_comes_at_once(self):
        # 16 GiB of NULs with no newline (a hole: no disk used) appended to the live file
        # after m0-m2, then a rotation: the forwarder measures that "line", a MiB a read, to
        # set it aside (seconds). A stop must end the measuring at once, the checkpoint still
        # before it, nothing of it sent or set aside.
        receiver = FakeReceiver(self)
        writer = self.writer()
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(3))
        start = os.path.getsize(writer.path)
        self.assertTrue(wait_until(lambda: forward_checkpoint(writer.path)[1] == start))
        try:
            os.truncate(writer.path, start + (16 << 30))
        except OSError as error:
            self.skipTest("no sparse 16 GiB file here: %s" % error)
        with open(writer.path, "ab") as handle:   # as an `echo >>`, past the hole
            handle.write(b"\n" + log_event(3))
        rotated = writer.rotate_now()
        self.write(writer, range(4, 6))
        time.sleep(0.2)   # into the measuring, which takes seconds
        self.assertEqual(receiver.ids(), ["m0", "m1", "m2"])
        started = time.monotonic()
        forwarder.stop(5)
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertFalse(forwarder.thread.is_alive())
        self.assertEqual(forward_checkpoint(writer.path), (os.stat(rotated).st_ino, start))
        self.assertEqual(receiver.ids(), ["m0", "m1", "m2"])
        self.assertEqual(self.stderr.getvalue(), "")
        self.assertEqual(os.path.getsize(self.rejects_writer.path), 0)


# The globs users write for a log's files (a shipper's, the README's backfill), and a
# recursive one. fnmatch's `*` matches a leading dot, as Go's and Rust's globs do.
LOG_GLOBS = ("events.jsonl*", "events.jsonl.2*", "*.jsonl", "*.jsonl.gz")


def files_a_glob_finds(folder, pattern):
    """The regular files in `folder` or below it whose names match `pattern`, relative to
    `folder`: what <folder>/<pattern> and <folder>/**/<pattern> find between them."""
    found = set()
    for root, _, names in os.walk(folder):
        for name in names:
            if fnmatch.fnmatchcase(name, pattern):
                found.add(os.path.relpath(os.path.join(root, name), folder))
    return found


class StateFiles(ForwardingCase):
    """The forwarder's checkpoint lives where no glob of the log's files finds it, and an
    upgrade picks up the one version 1.0 left beside the log."""

    def test_no_glob_of_the_logs_files_finds_the_checkpoint(self):
        receiver = FakeReceiver(self)
        writer = self.writer(max_bytes=2000)
        forwarder = self.forwarder(receiver.url, writer)
        self.write(writer, range(30))
        self.assertTrue(wait_until(lambda: forwarder.status()["lines_behind"] == 0))
        self.assertTrue(os.path.isfile(pixel.state_path(writer.path, "forward")))
        logs = {os.path.basename(path) for path in pixel.pixel_rotations(writer.path) + [writer.path]}
        for pattern in LOG_GLOBS:
            with self.subTest(pattern):
                self.assertLessEqual(files_a_glob_finds(self.dir, pattern),
                                     logs | {"rejects.jsonl"})

    def test_an_old_checkpoint_beside_the_log_is_moved_and_goes_on_from_there(self):
        receiver = FakeReceiver(self)
        writer = self.writer()
        first = self.forwarder(receiver.url, writer)
        self.write(writer, range(10))
        self.assertTrue(wait_until(lambda: first.sent == 10))
        first.stop(5)
        first.close()
        checkpoint = pixel.state_path(writer.path, "forward")
        legacy = writer.path + ".forward"   # where version 1.0 kept it
        os.replace(checkpoint, legacy)
        with open(legacy + ".tmp", "w") as handle:   # and what a kill -9 mid-write left
            handle.write('{"device": ')
        shutil.rmtree(os.path.dirname(checkpoint))
        self.write(writer, range(10, 20))
        second = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: second.sent == 10))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(20)])
        self.assertEqual(sorted(os.listdir(self.dir)), [".pixel", "events.jsonl",
                                                        "rejects.jsonl"])
        # Saved just after the count goes up: wait for it, not for the count.
        self.assertTrue(wait_until(lambda: pixel.read_checkpoint(checkpoint)["offset"] ==
                                   os.path.getsize(writer.path)))
        self.assertIn("moved the checkpoint %s to %s" % (legacy, checkpoint),
                      self.stderr.getvalue())


class GzipArchives(unittest.TestCase):
    """pixel.GzipReader on real files: whatever zcat recovers of a damaged archive."""

    def setUp(self):
        self.dir = temp_dir(self)

    def read_all(self, data):
        path = os.path.join(self.dir, "archive.gz")
        with open(path, "wb") as handle:
            handle.write(data)
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        reader = pixel.GzipReader(fd)
        blocks = []
        while True:
            block = reader.read(7000)
            if not block:
                return b"".join(blocks), reader.damage
            blocks.append(block)

    def test_members_one_after_another_and_zero_padding(self):
        first, second = b"first\n" * 10000, b"second\n" * 10000
        self.assertEqual(self.read_all(gzip.compress(first) + gzip.compress(second) +
                                       b"\0" * 1000), (first + second, None))
        self.assertEqual(self.read_all(gzip.compress(b"")), (b"", None))

    def test_what_inflates_before_the_damage_is_kept(self):
        data = b"".join(log_event(number) for number in range(2000))
        compressed = gzip.compress(data)
        half = len(compressed) // 2
        before_half = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(compressed[:half])
        self.assertGreater(len(before_half), len(data) // 3)
        flipped = compressed[:half] + bytes([compressed[half] ^ 0xff]) + \
            compressed[half + 1:]
        bad_check = compressed[:-8] + bytes(4) + compressed[-4:]
        corrupt = r"^corrupt gzip data, found at byte (\d+) of the file \((.+)\)$"
        for name, damaged, whole, found in (
                ("cut in half", compressed[:half], False, None),
                ("a corrupt byte", flipped, False, (half, len(flipped), None)),
                ("a wrong checksum", bad_check, True,   # its last byte says so
                 (len(compressed) - 8, len(compressed) - 4, "incorrect data check")),
                ("junk after the end", compressed + b"junk", True,   # its second byte
                 (len(compressed), len(compressed) + 2, "incorrect header check"))):
            with self.subTest(name):
                inflated, said = self.read_all(damaged)
                self.assertTrue(inflated.startswith(before_half))
                if whole:
                    self.assertEqual(inflated, data)
                if found is None:
                    self.assertEqual(said, "cut short: the file ends at byte %d, inside the "
                                           "gzip data" % half)
                    self.assertTrue(data.startswith(inflated))
                    continue
                byte, reason = re.match(corrupt, said).groups()
                self.assertTrue(found[0] <= int(byte) < found[1], said)
                if found[2]:
                    self.assertEqual(reason, found[2])

    def test_seeking_back_starts_over_and_forward_reads_on(self):
        data = b"".join(log_event(number) for number in range(500))
        path = os.path.join(self.dir, "archive.gz")
        with open(path, "wb") as handle:
            handle.write(gzip.compress(data))
        fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        reader = pixel.GzipReader(fd)
        for offset in (5000, 100, 0, len(data) - 10, 7):
            with self.subTest(offset):
                reader.seek(offset)
                self.assertEqual(reader.read(50), data[offset:offset + 50])
        stopping = threading.Event()
        stopping.set()   # a SIGTERM while a backfill inflates its way to its checkpoint
        with self.assertRaises(InterruptedError):
            pixel.GzipReader(fd, stopping).seek(5000)


# ---------------------------------------------------------------------------------------------
# One contract, three transports: the built-in server, make_wsgi_app under wsgiref (stdlib)
# and under gunicorn.


# and under gunicorn. Each case is sent over a real socket and its answer and log lines
# compared; a transport passes when every case holds.

def _gzip_json(document):
    return gzip.compress(json.dumps(document).encode())


BASIC_K = "Basic " + base64.b64encode(b"k:").decode()
CONTRACT_CASES = [
    # name, method, target, headers, body, status, content type, lines written to the
    # events and rejects logs, what the answer's body must be (None: not checked)
    ("docs pixel", "GET", "/v1/pixel/track?data=" + DOCS_DATA, {}, None,
     200, "image/gif", 1, 0, pixel.GIF),
    ("dot-notation page", "GET", "/v1/pixel/page?anonymousId=a&properties.url=u&writeKey=k",
     {}, None, 200, "image/gif", 1, 0, pixel.GIF),
    ("broken pixel still gets its GIF", "GET", "/v1/pixel/identify?data=%%%", {}, None,
     200, "image/gif", 0, 1, pixel.GIF),
    ("pixel without a user", "GET", "/v1/pixel/track?writeKey=k&event=e", {}, None,
     200, "image/gif", 0, 1, pixel.GIF),
    ("HEAD records nothing", "HEAD", "/v1/pixel/track?data=" + DOCS_DATA, {}, None,
     200, "image/gif", 0, 0, b""),
    ("POST to a pixel", "POST", "/v1/pixel/track", {"Content-Type": "text/plain"}, b"x",
     405, "text/plain; charset=utf-8", 0, 0, b"Method Not Allowed\n"),
    ("no such pixel", "GET", "/v1/pixel/bogus?writeKey=k&userId=u", {}, None,
     404, "text/plain; charset=utf-8", 0, 0, b"Not Found\n"),
    ("no such path", "GET", "/favicon.ico", {}, None,
     404, "text/plain; charset=utf-8", 0, 0, b"Not Found\n"),
    ("health", "GET", "/health", {}, None, 200, "application/json", 0, 0, None),
    ("API track with Basic auth", "POST", "/v1/track",
     {"Authorization": BASIC_K, "Content-Type": "application/json"},
     b'{"userId":"u","event":"Order Completed"}', 200, "application/json", 1, 0,
     b'{"success": true}\n'),
    ("API gzip identify", "POST", "/v1/identify",
     {"Content-Encoding": "gzip", "Content-Type": "application/json"},
     _gzip_json({"writeKey": "k", "userId": "u", "traits": {"a": 1}}),
     200, "application/json", 1, 0, b'{"success": true}\n'),
    ("API batch with one bad item", "POST", "/v1/batch", {"Content-Type": "application/json"},
     json.dumps({"writeKey": "k", "batch": [{"type": "track", "userId": "u", "event": "a"},
                                            {"type": "track", "userId": "u"},
                                            {"type": "page", "anonymousId": "x"}]}).encode(),
     200, "application/json", 2, 1, b'{"success": true}\n'),
    ("API body that is not JSON", "POST", "/v1/track", {"Content-Type": "application/json"},
     b"{nope", 400, "application/json", 0, 1,
     b'{"success": false, "error": "invalid_json"}\n'),
    ("API body over 576 KiB", "POST", "/v1/batch", {"Content-Type": "application/json"},
     b" " * (pixel.MAX_BODY_BYTES + 1), 400, "application/json", 0, 1,
     b'{"success": false, "error": "body_too_large"}\n'),
    ("GET to the API", "GET", "/v1/track", {}, None,
     405, "text/plain; charset=utf-8", 0, 0, b"Method Not Allowed\n"),
]


class Contract:
    """The contract cases against one transport; subclasses say how to start it."""

    def start_transport(self):   # -> (port, events path, rejects path)
        raise NotImplementedError

    def setUp(self):
        self.dir = temp_dir(self)
        self.port, self.events_path, self.rejects_path = self.start_transport()

    def count(self, path):
        if not os.path.exists(path):
            return 0
        with open(path, "rb") as handle:
            data = handle.read()
        self.assertTrue(data == b"" or data.endswith(b"\n"))
        return len(data.splitlines())

    def test_contract_cases(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        self.addCleanup(connection.close)
        for name, method, target, headers, body, status, content_type, events, rejects, \
                answer in CONTRACT_CASES:
            with self.subTest(name):
                before = self.count(self.events_path), self.count(self.rejects_path)
                connection.close()   # a fresh connection: some answers end theirs
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                # Written before the answer: counted right after it, with no wait.
                after = self.count(self.events_path), self.count(self.rejects_path)
                self.assertEqual(response.status, status)
                self.assertEqual(response.getheader("Content-Type"), content_type)
                self.assertEqual((after[0] - before[0], after[1] - before[1]),
                                 (events, rejects))
                if answer is not None:
                    self.assertEqual(data, answer)
                if status == 405:
                    self.assertEqual(response.getheader("Allow"),
                                     "GET, HEAD" if "pixel" in target else "POST, OPTIONS")
                if content_type == "image/gif":
                    self.assertEqual(response.getheader("Content-Length"), "43")
                    self.assertEqual(response.getheader("Cache-Control"),
                                     "no-cache, no-store, must-revalidate")
        with open(self.events_path, "rb") as handle:
            logged = [json.loads(line) for line in handle]
        self.assertEqual([event["type"] for event in logged],
                         ["track", "page", "track", "identify", "track", "page"])
        for event in logged:
            pixel.validate(event["type"], event)
            self.assertEqual(event["context"]["ip"], "127.0.0.1")
        self.assertEqual(logged[0]["properties"], DOCS_PAYLOAD["properties"])
        self.assertEqual(logged[2]["writeKey"], "k")   # from Basic auth
        with open(self.rejects_path, "rb") as handle:
            reasons = [json.loads(line)["reason"] for line in handle]
        self.assertEqual(reasons, ["invalid_base64", "no_user_anon_id", "event_not_defined",
                                   "invalid_json", "body_too_large"])
        health = json.loads(self.fetch("/health"))
        self.assertEqual((health["status"], health["accepted"], health["rejected"]),
                         ("ok", 6, 5))

    def test_a_path_with_a_trailing_slash_as_analytics_java_sends_it(self):
        # Analytics.java's default path is "/v1/import/", and AnalyticsClient gives up on a
        # 404: every batch it sent was lost.
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        self.addCleanup(connection.close)
        body = json.dumps({"batch": [{"type": "track", "userId": "u", "event": "e",
                                      "messageId": "java-1"}], "sentAt": "2026-12-04T00:00:00Z",
                           "writeKey": "K", "sequence": 1}).encode()
        for method, target, headers in [
                ("POST", "/v1/import/", {"Content-Type": "application/json; charset=UTF-8",
                                         "Authorization": BASIC_K}),
                ("POST", "/v1/track/", {"Content-Type": "application/json"})]:
            with self.subTest(target):
                connection.request(method, target, body=body if "import" in target else
                                   b'{"writeKey":"K","userId":"u","event":"e"}', headers=headers)
                response = connection.getresponse()
                response.read()
                self.assertEqual(response.status, 200)
        self.assertEqual((self.count(self.events_path), self.count(self.rejects_path)), (2, 0))

    chunked = True   # whether the transport reads a chunked body (wsgiref cannot end one)

    def post_chunked(self, target, body, headers=b"", framed=None):
        """POST `body` in chunks (or as `framed`), and the status and JSON answer. A
        transport that refuses chunked bodies is sent the head alone: it answers and closes
        before reading one."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=20) as sock:
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         b"Transfer-Encoding: chunked\r\n%s\r\n%s" % (
                             target, headers, b"" if not self.chunked else
                             framed or chunked(body, 8192)))
            reply = b""
            while not reply.endswith(b"}\n"):
                reply += sock.recv(65536) or self.fail("closed after %r" % reply)
        return int(reply[9:12]), json.loads(reply.partition(b"\r\n\r\n")[2])

    def test_a_chunked_batch_as_segments_android_sdk_sends_it(self):
        # POST /v1/import, gzip, chunked: analytics-android's ConnectionFactory.upload().
        batch = _gzip_json({"batch": [{"type": "track", "userId": "u", "event": "Opened",
                                       "messageId": "android-1"}]})
        status, answer = self.post_chunked(b"/v1/import", batch, b"Authorization: %s\r\n"
                                           b"Content-Encoding: gzip\r\n" % BASIC_K.encode())
        if self.chunked:
            self.assertEqual((status, answer), (200, {"success": True}))
            self.assertEqual((self.count(self.events_path), self.count(self.rejects_path)),
                             (1, 0))
        else:   # refused in words, and the refusal on record
            self.assertEqual((status, answer["error"]), (411, "length_required"))
        # Over the cap once decoded from its chunks
        status, answer = self.post_chunked(b"/v1/batch", b" " * pixel.MAX_BODY_BYTES + b"{}")
        self.assertEqual((status, answer["error"]), (400, "body_too_large") if self.chunked
                         else (411, "length_required"))
        # Framing the server refuses: refused alike, by the host's decoder under WSGI
        status, answer = self.post_chunked(b"/v1/track", None, framed=b"0x5\r\nhello\r\n0\r\n\r\n")
        self.assertEqual((status, answer["error"]), (400, "bad_framing") if self.chunked
                         else (411, "length_required"))
        with open(self.rejects_path, "rb") as handle:
            self.assertEqual([json.loads(line)["reason"] for line in handle],
                             ["body_too_large", "bad_framing"] if self.chunked
                             else ["length_required"] * 3)

    def test_rudderstack_routes_and_the_query_key(self):
        # The same on every transport: what RudderStack's browser SDK sends, and a writeKey
        # taken from the query when neither the body nor Basic auth names one.
        origin = {"Origin": "https://shop.example.com"}
        event = {"type": "track", "event": "e", "anonymousId": "a", "messageId": "rs-beacon"}
        cases = [
            ("beacon", "POST", "/beacon/v1/batch?writeKey=qk",
             dict(origin, **{"Content-Type": "text/plain;charset=UTF-8"}),
             json.dumps({"batch": [event], "sentAt": "2026-11-27T10:00:05.000Z"}).encode(),
             200, 1),
            ("API with the key in the query", "POST", "/v1/track?writeKey=qk", {},
             json.dumps(dict(event, messageId="rs-query")).encode(), 200, 1),
            ("source config preflight", "OPTIONS", "/sourceConfig/?writeKey=qk",
             dict(origin, **{"Access-Control-Request-Method": "GET",
                             "Access-Control-Request-Headers": "authorization"}), None, 204, 0),
            ("source config", "GET", "/sourceConfig/?p=npm&writeKey=qk", origin, None, 200, 0),
            ("ad-block check", "HEAD", "/sourceConfig/?view=ad",
             dict(origin, Authorization=BASIC_K), None, 200, 0),
            ("error report", "POST", "/rsaMetrics", origin, b'{"errors":[]}', 200, 0)]
        answers = {}
        for name, method, target, headers, body, status, written in cases:
            with self.subTest(name):
                before = self.count(self.events_path)
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
                try:
                    connection.request(method, target, body=body, headers=headers)
                    response = connection.getresponse()
                    answers[name] = response.read()
                finally:
                    connection.close()
                self.assertEqual(response.status, status)
                self.assertEqual(response.getheader("Access-Control-Allow-Origin"),
                                 origin["Origin"] if "Origin" in headers else None)
                self.assertEqual(self.count(self.events_path) - before, written)
        source = json.loads(answers["source config"])["source"]
        self.assertEqual((source["writeKey"], source["enabled"]), ("qk", True))
        self.assertEqual(answers["ad-block check"], b"")
        with open(self.events_path, "rb") as handle:
            logged = [json.loads(line) for line in handle]
        self.assertEqual([(event["messageId"], event["writeKey"]) for event in logged],
                         [("rs-beacon", "qk"), ("rs-query", "qk")])
        self.assertEqual(self.count(self.rejects_path), 0)

    def test_a_percent_escaped_path_is_routed_as_decoded(self):
        # A WSGI host decodes PATH_INFO before pixel sees it; the built-in server must agree,
        # or one transport records a pixel that another answers with a 404.
        for path, status in [("/v1/pixel/%74rack", 200), ("/v1%2Fpixel/track", 200),
                             ("/v1/pixel/%74rac", 404)]:
            with self.subTest(path):
                before = self.count(self.events_path)
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
                try:
                    connection.request("GET", path + "?writeKey=k&userId=u&event=e")
                    response = connection.getresponse()
                    response.read()
                finally:
                    connection.close()
                self.assertEqual(response.status, status)
                self.assertEqual(self.count(self.events_path) - before, status == 200)

    def fetch(self, target):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            connection.request("GET", target)
            return connection.getresponse().read()
        finally:
            connection.close()


class ContractBuiltIn(Contract, unittest.TestCase):
    def start_transport(self):
        events = pixel.LogWriter(os.path.join(self.dir, "events.jsonl"))
        rejects = pixel.LogWriter(os.path.join(self.dir, "rejects.jsonl"))
        self.addCleanup(events.close)
        self.addCleanup(rejects.close)
        server = pixel.PixelServer(("127.0.0.1", 0), app_over(events, rejects))
        return serve_in_thread(self, server), events.path, rejects.path


class _QuietWsgiHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


class ContractWsgiref(Contract, unittest.TestCase):
    chunked = False

    def start_transport(self):
        events = os.path.join(self.dir, "events.jsonl")
        app = pixel.make_wsgi_app(log=events)
        self.addCleanup(app.close)
        server = wsgiref.simple_server.make_server("127.0.0.1", 0, app,
                                                   handler_class=_QuietWsgiHandler)
        thread = threading.Thread(target=server.serve_forever, args=(SERVE_POLL,), daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(thread.join, 10)
        self.addCleanup(server.shutdown)
        return server.server_address[1], events, os.path.join(self.dir, "rejects.jsonl")

    def test_a_raw_utf8_query_is_read_as_utf8(self):
        # Not percent-escaped, as some mail clients send it: WSGI hands it over as Latin-1.
        # (The built-in server reads it so too; gunicorn is not asked here.)
        with socket.create_connection(("127.0.0.1", self.port), timeout=20) as sock:
            sock.sendall("GET /v1/pixel/track?writeKey=k&userId=u&event=\u00e9t\u00e9%20\u2713"
                         " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode("utf-8"))
            self.assertEqual(read_response(sock.makefile("rb"))[2], pixel.GIF)
        with open(self.events_path, "rb") as handle:
            self.assertEqual([json.loads(line)["event"] for line in handle],
                             ["\u00e9t\u00e9 \u2713"])


class WsgiForked(unittest.TestCase):
    @unittest.skipUnless(hasattr(os, "fork"), "fork")
    def test_a_process_forked_after_the_app_was_made_writes_and_says_so_once(self):
        # As gunicorn --preload forks its workers (WsgiUnderGunicorn, where gunicorn is):
        # the child's events are written, and it says once, not at each request, that its
        # forwarder and erase's desk stayed in the parent; the parent says nothing.
        events = os.path.join(temp_dir(self), "events.jsonl")
        app = pixel.make_wsgi_app(log=events)
        self.addCleanup(app.close)

        def get(number):
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/pixel/track",
                       "QUERY_STRING": "writeKey=K&userId=u&event=e&messageId=m%d" % number,
                       "REMOTE_ADDR": "192.0.2.1", "wsgi.input": io.BytesIO()}
            statuses = []
            body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
            return statuses[0], body

        read_end, write_end = os.pipe()
        with warnings.catch_warnings():   # 3.12's: fork() with the app's erase thread running
            warnings.simplefilter("ignore", DeprecationWarning)
            child = os.fork()
        if child == 0:   # the worker: its stderr is the pipe
            try:
                os.close(read_end)
                sys.stderr = open(write_end, "w", buffering=1)
                answers = [get(number) for number in range(3)]
                os._exit(0 if answers == [("200 OK", pixel.GIF)] * 3 else 3)
            finally:
                os._exit(4)
        os.close(write_end)
        said, deadline = b"", time.monotonic() + 30
        while time.monotonic() < deadline:   # a child that hangs must not hang the suite
            if select.select([read_end], [], [], deadline - time.monotonic())[0]:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                said += chunk
        else:
            os.kill(child, signal.SIGKILL)
        os.close(read_end)
        said = said.decode()
        self.assertEqual(os.waitpid(child, 0)[1], 0)
        self.assertEqual(said, "pixel: make_wsgi_app ran in process %d, and this worker %d was "
                         "forked from it (gunicorn --preload, uWSGI without --lazy-apps): "
                         "forwarding and `pixel.py erase` do not work here; build the app in "
                         "the worker\n" % (os.getpid(), child))
        stderr = io.StringIO()
        with unittest.mock.patch("sys.stderr", stderr):
            self.assertEqual(get(3), ("200 OK", pixel.GIF))
        self.assertEqual(stderr.getvalue(), "")
        with open(events) as handle:
            self.assertEqual([json.loads(line)["messageId"] for line in handle],
                             ["m0", "m1", "m2", "m3"])


def gunicorn_command():
    """gunicorn from the interpreter's own folder (.ci/run's venv) or the PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    return beside if os.access(beside, os.X_OK) else shutil.which("gunicorn")


def start_gunicorn(test, folder, app, *flags):
    """gunicorn serving `app` (its APP_MODULE argument) with `flags`, on a socket this test
    made (gunicorn's fd:// bind), so there is no port to guess; killed when `test` ends.
    Returns the process, its port, and the file (in `folder`) that holds its output."""
    gunicorn = gunicorn_command()
    need(gunicorn, "gunicorn")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    test.addCleanup(listener.close)
    output = open(os.path.join(folder, "gunicorn.log"), "w+")
    test.addCleanup(output.close)
    process = subprocess.Popen(
        [gunicorn, "--bind", "fd://%d" % listener.fileno()] + list(flags) +
        ["--chdir", HERE, app], pass_fds=[listener.fileno()], stdout=output, stderr=output)
    test.addCleanup(process.wait)
    test.addCleanup(process.kill)
    return process, listener.getsockname()[1], output


def wait_for_gunicorn(test, port, output):
    """Requests queue in the backlog until a worker has booted; wait for one answer."""
    def answers():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /favicon.ico HTTP/1.0\r\n\r\n")
                return sock.recv(12).startswith(b"HTTP/1")
        except OSError:
            return False

    if not wait_until(answers, timeout=30):
        output.seek(0)
        test.fail("gunicorn never answered:\n" + output.read())


class ContractGunicorn(Contract, unittest.TestCase):
    """The app under gunicorn, one worker with threads."""

    def start_transport(self):
        events = os.path.join(self.dir, "events.jsonl")
        _, port, output = start_gunicorn(self, self.dir, "pixel:make_wsgi_app(log=%r)" % events,
                                         "--workers", "1", "--threads", "4")
        wait_for_gunicorn(self, port, output)
        return port, events, os.path.join(self.dir, "rejects.jsonl")


class WsgiUnderGunicorn(unittest.TestCase):
    """What make_wsgi_app promises about /metrics and worker processes, under gunicorn."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.log = os.path.join(self.dir, "events.jsonl")

    def test_metrics_only_with_a_token(self):
        for options, statuses in (("", (404, 404)), (", metrics_token='t0ken'", (401, 200))):
            with self.subTest(options):
                folder = temp_dir(self)
                _, port, output = start_gunicorn(
                    self, folder, "pixel:make_wsgi_app(log=%r%s)" % (
                        os.path.join(folder, "events.jsonl"), options),
                    "--workers", "1", "--threads", "2")
                wait_for_gunicorn(self, port, output)
                self.assertEqual((get_status(port, "/metrics")[0],
                                  get_status(port, "/metrics",
                                             {"Authorization": "Bearer t0ken"})[0]), statuses)

    def test_a_worker_forked_after_the_app_was_made_says_what_does_not_work(self):
        # The WSGI host pass: under gunicorn --preload (and uWSGI without --lazy-apps) the
        # app is made before the fork, threads do not cross it, and `pixel.py erase` did
        # nothing, silently. Events are still written; the worker says what does not work.
        _, port, output = start_gunicorn(self, self.dir, "pixel:make_wsgi_app(log=%r)"
                                         % self.log, "--workers", "1", "--preload")
        wait_for_gunicorn(self, port, output)
        self.assertEqual(get_status(port, "/v1/pixel/track?writeKey=K&userId=u&event=e")[0],
                         200)
        self.assertTrue(wait_until(lambda: "was forked from it (gunicorn --preload" in
                                   read_text(output.name)))
        self.assertEqual(len(read_text(self.log).splitlines()), 1)
        # Made in the worker, as without --preload: nothing to say.
        folder = temp_dir(self)
        _, port, output = start_gunicorn(self, folder, "pixel:make_wsgi_app(log=%r)" %
                                         os.path.join(folder, "events.jsonl"), "--workers", "1")
        wait_for_gunicorn(self, port, output)
        get_status(port, "/v1/pixel/track?writeKey=K&userId=u&event=e")
        self.assertNotIn("forked", read_text(output.name))

    @soak   # 25 s: the second worker waits WSGI_LOCK_WAIT for the log before it gives up
    def test_two_workers_on_one_log_stop_gunicorn_with_one_reason(self):
        process, _, output = start_gunicorn(self, self.dir,
                                            "pixel:make_wsgi_app(log=%r)" % self.log,
                                            "--workers", "2")
        self.assertEqual(process.wait(60), 3)   # gunicorn's status: a worker failed to boot
        output.seek(0)
        text = output.read()
        self.assertNotIn("Traceback", text)
        # The wait said as it starts, then why the worker cannot boot.
        self.assertEqual([line for line in text.splitlines() if "pixel" in line],
                         ["pixel: %s: another process holds it; waiting up to %.0f s for it to "
                          "let go" % (self.log, pixel.WSGI_LOCK_WAIT),
                          "pixel: make_wsgi_app: cannot open %s: another process writes it (it "
                          "holds its flock); %s" % (self.log, pixel.WSGI_BUSY)], text)

    def test_a_reload_keeps_serving(self):
        # gunicorn's SIGHUP boots the new worker before the old one has let go of the files;
        # a request the old one is still reading keeps it from letting go at once.
        process, port, output = start_gunicorn(self, self.dir,
                                               "pixel:make_wsgi_app(log=%r)" % self.log,
                                               "--workers", "1", "--threads", "2")
        wait_for_gunicorn(self, port, output)

        def booted():
            output.seek(0)
            return re.findall(r"Booting worker with pid: (\d+)", output.read())

        fetch_gif(port, "/v1/pixel/track?writeKey=k&userId=u&event=before")
        body = b'{"writeKey":"k","userId":"u","event":"during"}'
        slow = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.addCleanup(slow.close)
        slow.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        process.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: len(booted()) == 2, timeout=30))
        # The new worker now waits for the files; the old code's died of it at once.
        self.assertFalse(wait_until(lambda: process.poll() is not None, timeout=1.0))
        slow.sendall(body[10:])
        self.assertTrue(slow.recv(12).startswith(b"HTTP/1.1 200"))
        slow.close()
        wait_for_gunicorn(self, port, output)
        fetch_gif(port, "/v1/pixel/track?writeKey=k&userId=u&event=after")
        output.seek(0)
        self.assertIsNone(process.poll(), output.read())
        with open(self.log) as handle:
            self.assertEqual([json.loads(line)["event"] for line in handle],
                             ["before", "during", "after"])

    @soak   # 18 s: a client slower than the old 5 s wait, then a wait for no exit
    def test_a_reload_during_a_slow_request_keeps_serving(self):
        # gunicorn lets the old worker finish its requests for up to --graceful-timeout
        # (30 s); a mobile client, or anyone, can take longer than WSGI_LOCK_WAIT (5 s) to
        # send a body. The new worker then gives up on the files with status 3, which
        # gunicorn takes for a worker that cannot boot: it halts, old worker and all.
        process, port, output = start_gunicorn(self, self.dir,
                                               "pixel:make_wsgi_app(log=%r)" % self.log,
                                               "--workers", "1", "--threads", "2")
        wait_for_gunicorn(self, port, output)
        body = b'{"writeKey":"k","userId":"u","event":"during"}'
        slow = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.addCleanup(slow.close)
        slow.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])

        def said():
            output.seek(0)
            return output.read()

        process.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: said().count("Booting worker") == 2, timeout=30))
        # The slow client finishes 8 s into the new worker's wait for the files (past the
        # 5 s it once was; the new worker would say so if it gave up): gunicorn's own
        # --timeout (30 s) bounds how long a worker may take to boot, and so the wait.
        self.assertLess(8, pixel.WSGI_LOCK_WAIT)
        self.assertFalse(wait_until(lambda: "make_wsgi_app:" in said(), timeout=8), said())
        slow.sendall(body[10:])
        self.assertTrue(slow.recv(12).startswith(b"HTTP/1.1 200"))
        self.assertFalse(wait_until(lambda: process.poll() is not None, timeout=10),
                         "gunicorn exited with %s:\n%s" % (process.poll(), said()[-1500:]))
        fetch_gif(port, "/v1/pixel/track?writeKey=k&userId=u&event=after")

    def test_two_workers_with_their_own_files_as_the_line_says(self):
        with open(os.path.join(self.dir, "per_worker.py"), "w") as handle:
            handle.write("import os\nimport pixel\napplication = pixel.make_wsgi_app("
                         "log=os.path.join(%r, 'events-%%d.jsonl' %% os.getpid()), "
                         "rejects=os.path.join(%r, 'rejects-%%d.jsonl' %% os.getpid()))\n"
                         % (self.dir, self.dir))
        _, port, output = start_gunicorn(self, self.dir, "per_worker:application",
                                         "--workers", "2", "--pythonpath",
                                         "%s,%s" % (self.dir, HERE))

        def logs():
            return sorted(name for name in os.listdir(self.dir) if name.startswith("events-"))

        self.assertTrue(wait_until(lambda: len(logs()) == 2, timeout=30), logs())
        wait_for_gunicorn(self, port, output)
        sent, answered = ["w-%d" % number for number in range(200)], []

        def client(ids):
            for message_id in ids:
                answered.append(fetch_gif(port, "/v1/pixel/track?writeKey=k&userId=u&event=e"
                                                "&messageId=" + message_id) == pixel.GIF)

        threads = [threading.Thread(target=client, args=(sent[start::8],))
                   for start in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        logged = []
        for name in logs():
            with open(os.path.join(self.dir, name)) as handle:
                logged += [json.loads(line)["messageId"] for line in handle]
        self.assertEqual(answered, [True] * len(sent))
        self.assertEqual(sorted(logged), sorted(sent))


def wsgi_start_error(test, **options):
    """What make_wsgi_app(**options) says when it refuses to start: (exit status, stderr)."""
    stderr = io.StringIO()
    with unittest.mock.patch("sys.stderr", stderr):
        with test.assertRaises(SystemExit) as caught:
            app = pixel.make_wsgi_app(**options)
            app.close()
    return caught.exception.code, stderr.getvalue()


class WsgiMetrics(unittest.TestCase):
    """/metrics under make_wsgi_app, served by wsgiref on a real socket: a 404 unless a
    metrics_token or public_metrics=True asks for it."""

    def serve(self, **options):
        folder = temp_dir(self)
        app = pixel.make_wsgi_app(log=os.path.join(folder, "events.jsonl"), **options)
        self.addCleanup(app.close)
        server = wsgiref.simple_server.make_server("127.0.0.1", 0, app,
                                                   handler_class=_QuietWsgiHandler)
        thread = threading.Thread(target=server.serve_forever, args=(SERVE_POLL,), daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(thread.join, 10)
        self.addCleanup(server.shutdown)
        return server.server_address[1]

    def test_not_served_unless_asked_for(self):
        port = self.serve()
        self.assertEqual(get_status(port, "/metrics"), (404, b"Not Found\n"))
        self.assertEqual(get_status(port, "/health")[0], 200)

    def test_with_a_token(self):
        for public in (False, True):   # a token given is a token required
            with self.subTest(public_metrics=public):
                port = self.serve(metrics_token="s3cret-token", public_metrics=public)
                self.assertEqual(get_status(port, "/metrics")[0], 401)
                self.assertEqual(get_status(port, "/metrics",
                                            {"Authorization": "Bearer wrong"})[0], 401)
                status, body = get_status(port, "/metrics",
                                          {"Authorization": "Bearer s3cret-token"})
                self.assertEqual(status, 200)
                self.assertIn(b"pixel_events_total", body)

    def test_public_when_asked(self):
        status, body = get_status(self.serve(public_metrics=True), "/metrics")
        self.assertEqual(status, 200)
        self.assertIn(b"pixel_build_info", body)

    def test_a_token_that_cannot_be_sent_is_refused_in_one_line(self):
        folder = temp_dir(self)
        status, stderr = wsgi_start_error(self, log=os.path.join(folder, "events.jsonl"),
                                          metrics_token="two words")
        self.assertEqual(status, 3)
        self.assertRegex(stderr, r"\Apixel: make_wsgi_app: metrics_token: not a bearer token "
                                 r".*\n\Z")
        self.assertEqual(os.listdir(folder), [])


def get_status(port, target, headers=None):
    """(status, body) of a GET on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class BrokenStream:
    """A WSGI host's wsgi.input whose chunk decoder refuses what the client sent, as
    werkzeug's does (OSError) or gunicorn's (its ParseException, an Exception)."""

    def __init__(self, error):
        self.error = error

    def read(self, size=-1):
        raise self.error


class WsgiStart(unittest.TestCase):
    """make_wsgi_app's start, on files: one line and SystemExit(3) for what it cannot use,
    nothing left behind, and the command line's start-up repairs."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.log = os.path.join(self.dir, "events.jsonl")

    def test_a_rejects_log_it_cannot_open_leaves_no_events_log(self):
        status, stderr = wsgi_start_error(
            self, log=self.log, rejects=os.path.join(self.dir, "missing", "rejects.jsonl"))
        self.assertEqual(status, 3)
        self.assertRegex(stderr, r"\Apixel: make_wsgi_app: cannot open .*missing/rejects\.jsonl:"
                                 r" No such file or directory; make its folder first\n\Z")
        self.assertEqual(os.listdir(self.dir), [])

    @unittest.mock.patch("pixel.WSGI_LOCK_WAIT", 0.2)
    def test_files_another_worker_holds(self):
        held = os.open(self.log, os.O_WRONLY | os.O_CREAT)   # flocked as a worker's would be
        self.addCleanup(os.close, held)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        status, stderr = wsgi_start_error(self, log=self.log)
        self.assertEqual(status, 3)
        # The wait said at once (the newcomer's 25 s of nothing), then why it ended.
        self.assertEqual(stderr.count("\n"), 2, stderr)
        self.assertTrue(stderr.startswith("pixel: %s: another process holds it; waiting up to "
                                          "0 s for it to let go\n" % self.log), stderr)
        self.assertIn("pixel: make_wsgi_app: cannot open %s: another process writes it" %
                      self.log, stderr)
        self.assertIn("gunicorn --workers 1 --threads 8", stderr)
        self.assertIn("make_wsgi_app(log=..., rejects=...)", stderr)
        self.assertNotIn("--log", stderr)

    def test_one_file_for_both_logs(self):
        status, stderr = wsgi_start_error(self, log=self.log, rejects=self.log)
        self.assertEqual(status, 3)
        self.assertRegex(stderr, r"\Apixel: make_wsgi_app: the events log and the rejects log "
                                 r"must be different files .*: both are .*events\.jsonl\n\Z")
        self.assertEqual(os.listdir(self.dir), [])

    def test_options_the_command_line_would_refuse(self):
        for options, message in (({"public_url": "ftp://x"}, "public_url: not an http(s) URL"),
                                 ({"allow_origins": ["shop"]}, "allow_origin: not an origin"),
                                 ({"trusted_proxies": ["10.0.0.300"]},
                                  "trusted_proxy: not an IP address or network")):
            with self.subTest(options):
                status, stderr = wsgi_start_error(self, log=self.log, **options)
                self.assertEqual(status, 3)
                self.assertRegex(stderr, r"\Apixel: make_wsgi_app: %s.*\n\Z" % re.escape(message))
                self.assertEqual(os.listdir(self.dir), [])

    def test_options_of_the_wrong_kind_fail_at_start_in_one_line(self):
        # max_bytes as the command line writes it ("10M") started, then every write after
        # the first raised TypeError (a 500 under a WSGI server, the event lost); one key
        # given as a string became an allowlist of its letters ("K" was accepted); a count
        # given as text was a traceback.
        app = pixel.make_wsgi_app(log=self.log, max_bytes="10M")
        self.addCleanup(app.close)
        for number in range(3):
            statuses = []
            body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/pixel/track",
                                 "QUERY_STRING": "writeKey=k&userId=u&event=e%d" % number,
                                 "REMOTE_ADDR": "192.0.2.1", "wsgi.url_scheme": "http"},
                                lambda status, headers: statuses.append(status)))
            self.assertEqual((statuses, body), (["200 OK"], pixel.GIF))
        with open(self.log) as handle:
            self.assertEqual([json.loads(line)["event"] for line in handle],
                             ["e0", "e1", "e2"])
        folder = temp_dir(self)
        for options, message in (
                ({"write_keys": "KEY"}, "write_key: takes a list, not a string"),
                ({"trusted_proxies": "10.0.0.0/8"}, "trusted_proxy: takes a list"),
                ({"write_keys": ["good", ""]}, "write_key: must not be empty"),
                ({"keep": -1}, "keep: must be 0 or more"),
                ({"dedupe_window": "many"}, "dedupe_window: "),
                ({"max_bytes": "ten"}, "max_bytes: not a size")):
            with self.subTest(options):
                status, stderr = wsgi_start_error(
                    self, log=os.path.join(folder, "events.jsonl"), **options)
                self.assertEqual(status, 3)
                self.assertRegex(stderr, r"\Apixel: make_wsgi_app: %s.*\n\Z"
                                 % re.escape(message))
                self.assertEqual(os.listdir(folder), [])

    def test_behind_a_proxy_on_a_unix_socket(self):
        # gunicorn --bind unix:... gives REMOTE_ADDR "": trusted_proxy=["unix"] believes the
        # proxy's X-Forwarded-For (and X-Forwarded-Proto) from that peer, as from a TCP one.
        app = pixel.make_wsgi_app(log=self.log, trusted_proxy=["unix"])
        self.addCleanup(app.close)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/pixel/track",
                   "QUERY_STRING": "writeKey=k&userId=u&event=e", "REMOTE_ADDR": "",
                   "HTTP_X_FORWARDED_FOR": "203.0.113.7", "wsgi.url_scheme": "http"}
        self.assertEqual(b"".join(app(environ, lambda status, headers: None)), pixel.GIF)
        settings = json.loads(b"".join(app(dict(
            environ, PATH_INFO="/v1/projects/k/settings", QUERY_STRING="",
            HTTP_X_FORWARDED_PROTO="https", HTTP_HOST="h.example"),
            lambda status, headers: None)))
        self.assertEqual(settings["integrations"]["Segment.io"]["protocol"], "https")
        # No REMOTE_ADDR at all, or None (gunicorn's for a PROXY protocol LOCAL header on a
        # TCP listener), is no peer known: not a unix socket's, and not trusted.
        for remote in ({}, {"REMOTE_ADDR": None}):
            without = {name: value for name, value in environ.items() if name != "REMOTE_ADDR"}
            self.assertEqual(b"".join(app(dict(without, **remote),
                                          lambda status, headers: None)), pixel.GIF)
        with open(self.log) as handle:
            self.assertEqual([json.loads(line)["context"].get("ip") for line in handle],
                             ["203.0.113.7", None, None])
        self.assertRaisesRegex(ValueError, "not an IP address or network",
                               pixel.configure, trusted_proxy=["unix2"])

    def test_chunked_bodies_where_the_host_ends_them(self):
        # Without wsgi.input_terminated a chunked body has no known end: 411, with CORS
        # headers for an allowed origin; with it, read up to the cap as the server does.
        app = pixel.make_wsgi_app(log=self.log, allow_origin=["https://shop.example"])
        self.addCleanup(app.close)
        event = b'{"writeKey":"k","userId":"u","event":"e"}'
        for origin, terminated, body, expected in [
                ("https://shop.example", False, event, ("411 Length Required", "length_required")),
                ("https://evil.example", False, event, ("403 Forbidden", "origin_not_allowed")),
                ("https://shop.example", True, event, ("200 OK", None)),
                ("https://shop.example", True, b" " * pixel.MAX_BODY_BYTES + event,
                 ("400 Bad Request", "body_too_large")),
                # The host's decoder refuses the framing
                ("https://shop.example", True, OSError("Missing chunk terminating newline"),
                 ("400 Bad Request", "bad_framing")),
                ("https://shop.example", True, Exception("Invalid chunk size: '0x5'"),
                 ("400 Bad Request", "bad_framing")),
                # Framings parse_head refuses are refused alike (the attack pass)
                ("https://shop.example", "gzip, chunked", event, ("400 Bad Request", "bad_framing")),
                ("https://shop.example", "length too", event, ("400 Bad Request", "bad_framing")),
                ("https://shop.example", "spaced length", event, ("200 OK", None))]:
            answers, environ = [], {
                "REQUEST_METHOD": "POST", "PATH_INFO": "/v1/t", "REMOTE_ADDR": "127.0.0.1",
                "HTTP_TRANSFER_ENCODING": "chunked", "HTTP_ORIGIN": origin,
                "wsgi.input": io.BytesIO(body) if isinstance(body, bytes) else BrokenStream(body),
                "wsgi.input_terminated": terminated}
            if terminated == "gzip, chunked":
                environ["HTTP_TRANSFER_ENCODING"] = terminated
            elif terminated == "length too":
                environ["CONTENT_LENGTH"] = str(len(body))
            elif terminated == "spaced length":   # as wsgiref hands on "Content-Length: 41 "
                del environ["HTTP_TRANSFER_ENCODING"]
                environ["CONTENT_LENGTH"] = "%d \t" % len(body)
            body = b"".join(app(environ, lambda status, headers: answers.append(
                (status, dict(headers)))))
            status, headers = answers[0]
            self.assertEqual((status, json.loads(body).get("error")), expected)
            self.assertEqual(headers.get("Access-Control-Allow-Origin"),
                             None if "evil" in origin else origin)
        with open(self.log) as handle:
            self.assertEqual([json.loads(line)["event"] for line in handle], ["e", "e"])
        with open(os.path.join(self.dir, "rejects.jsonl")) as handle:
            self.assertEqual([json.loads(line)["reason"] for line in handle], [
                "length_required", "origin_not_allowed", "body_too_large"] + ["bad_framing"] * 4)

    def test_what_uwsgi_hands_over(self):
        # The WSGI host pass: with a large buffer, uWSGI's http-socket drops QUERY_STRING for
        # a 30-40 KB pixel URL and keeps REQUEST_URI (the event was lost, a no_write_key line);
        # and a Content-Length body cut short raises OSError from its wsgi.input, which gave
        # a traceback and a 500.
        app = pixel.make_wsgi_app(log=self.log)
        self.addCleanup(app.close)
        query = "writeKey=K&userId=u&event=e&properties.pad=" + "x" * 30000
        answers = []
        for environ in ({"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/pixel/track",
                         "REQUEST_URI": "/v1/pixel/track?" + query, "REMOTE_ADDR": "127.0.0.1"},
                        {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/track",
                         "CONTENT_LENGTH": "41", "REMOTE_ADDR": "127.0.0.1",
                         "wsgi.input": BrokenStream(OSError("error during read(41) on "
                                                            "wsgi.input"))}):
            b"".join(app(environ, lambda status, headers: answers.append(status)))
        self.assertEqual(answers, ["200 OK", "400 Bad Request"])
        with open(self.log) as handle:
            self.assertEqual([len(json.loads(line)["properties"]["pad"]) for line in handle],
                             [30000])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "rejects.jsonl")) and
                         read_text(os.path.join(self.dir, "rejects.jsonl")))

    def test_the_keywords_of_version_1_0_still_work(self):
        app = pixel.make_wsgi_app(log=self.log, write_keys=["K"], record_ip=False,
                                  trusted_proxies=["10.0.0.0/8"],
                                  allow_origins=["https://a.example"])
        self.addCleanup(app.close)
        for key in ("K", "other"):
            app({"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/pixel/track",
                 "QUERY_STRING": "writeKey=%s&userId=u&event=e" % key,
                 "REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7"},
                lambda status, headers: None)
        with open(self.log) as handle:
            self.assertEqual([(event["writeKey"], event["context"].get("ip"))
                              for event in map(json.loads, handle)], [("K", None)])
        self.assertEqual(app.app.allow_origins, ("https://a.example",))

    def test_a_hosts_own_error_reading_a_length_body_is_its_to_answer_not_a_400(self):
        # OSError is a body cut short (uWSGI), answered 400; anything else raised reading a
        # Content-Length body is the host's fault, and goes back to it (its 500 and log).
        app = pixel.make_wsgi_app(log=self.log)
        self.addCleanup(app.close)
        with self.assertRaisesRegex(RuntimeError, "the host's bug"):
            app({"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/track", "CONTENT_LENGTH": "41",
                 "REMOTE_ADDR": "127.0.0.1", "wsgi.input": BrokenStream(
                     RuntimeError("the host's bug"))}, lambda status, headers: None)
        self.assertEqual(read_text(self.log) if os.path.exists(self.log) else "", "")

    def test_two_apps_of_one_process_on_one_file_are_refused_at_once(self):
        # The importer: two apps, each with its own log, share the default rejects.jsonl.
        # The second waited 25 s for "another process", itself, then exited.
        first = pixel.make_wsgi_app(log=self.log)
        self.addCleanup(first.close)
        started = time.monotonic()
        status, stderr = wsgi_start_error(self, log=os.path.join(self.dir, "web.jsonl"))
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(status, 3)
        self.assertEqual(stderr, "pixel: make_wsgi_app: cannot open %s: this process writes "
                                 "it already (another make_wsgi_app or pixel in it): give "
                                 "each its own log and rejects\n"
                         % os.path.join(self.dir, "rejects.jsonl"))
        self.assertEqual(sorted(os.listdir(self.dir)), ["events.jsonl", "rejects.jsonl"])

    def test_closed_or_dropped_an_app_lets_go_of_its_files(self):
        # The importer: a request after close() was answered and opened the log again, which
        # it then held; an app dropped unclosed kept its threads and files for good.
        pixel_get = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/pixel/track",
                     "QUERY_STRING": "writeKey=k&userId=u&event=e", "REMOTE_ADDR": "192.0.2.1"}
        app = pixel.make_wsgi_app(log=self.log)
        app.close()
        answers = []
        self.assertEqual(b"".join(app(pixel_get, lambda status, headers: answers.append(
            status))), b"Service Unavailable\n")
        self.assertEqual(answers, ["503 Service Unavailable"])
        app.close()   # twice: nothing more
        threads = threading.active_count()
        for _ in range(3):   # each one opens at once: the one before let go
            with unittest.mock.patch("sys.stderr", io.StringIO()):   # nothing at port 9
                app = pixel.make_wsgi_app(log=self.log, forward="http://127.0.0.1:9")
                self.assertEqual(b"".join(app(pixel_get, lambda status, headers: None)),
                                 pixel.GIF)
                del app
                gc.collect()
        self.assertTrue(wait_until(lambda: threading.active_count() <= threads))
        self.assertEqual(pixel.WRITTEN_HERE, set())
        with open(self.log) as handle:
            self.assertEqual(len(handle.readlines()), 3)
        # A writer closed by its app refuses a write that comes late, and reopens nothing.
        writer = pixel.LogWriter(self.log)
        writer.close()
        with unittest.mock.patch("sys.stderr", io.StringIO()):
            self.assertEqual(writer.write([b"{}\n"]), 0)
        self.assertEqual((writer.failed, writer._fd), (1, None))

    def test_a_value_of_the_wrong_python_type_is_named_as_such(self):
        # The newcomer: log=123 was "must not be empty: 123", max_bytes=1.5e6 "must be 0 or
        # more: 1500000.0", no_ip=1 "not a yes/no value: 1".
        for options, message in (({"log": 123}, "log: takes text, not int: 123"),
                                 ({"write_key": ["K", 7]}, "write_key: takes text, not int: 7"),
                                 ({"max_bytes": 1.5e6}, "max_bytes: takes a whole number, "
                                                        "not float: 1500000.0"),
                                 ({"no_ip": 1}, "no_ip: takes True or False, not int: 1"),
                                 ({"forward_timeout": True}, "forward_timeout: takes a number, "
                                                             "not bool: True"),
                                 # Text keeps the check's own words.
                                 ({"no_ip": "maybe"}, "no_ip: not a yes/no value: 'maybe'"),
                                 ({"keep": "-1"}, "keep: must be 0 or more: -1")):
            with self.subTest(options):
                with self.assertRaises(ValueError) as caught:
                    pixel.configure(**options)
                self.assertEqual(str(caught.exception), message)

    def test_a_writer_on_a_log_this_process_writes_says_so(self):
        # The newcomer's own LogWriter beside a mounted app, on its log: the error blamed
        # "another process".
        app = pixel.make_wsgi_app(log=self.log)
        self.addCleanup(app.close)
        with self.assertRaises(OSError) as caught:
            pixel.LogWriter(self.log)
        self.assertEqual(caught.exception.errno, errno.EBUSY)
        self.assertIn("this process writes it already", str(caught.exception))
        self.assertNotIn("another process", str(caught.exception))

    def test_an_app_dropped_in_a_reference_cycle_lets_go_for_the_next(self):
        # The newcomer's app factory under unittest: each test's Flask app (a cycle) mounts
        # pixel on the same log; the one dropped was still held, so the next was refused.
        class Site:
            def __init__(site, log):
                site.me, site.pixel = site, pixel.make_wsgi_app(log=log)

        gc.disable()   # the collector's own run must not hide it
        self.addCleanup(gc.enable)
        Site(self.log)
        site = Site(self.log)
        self.addCleanup(site.pixel.close)
        self.assertEqual(b"".join(site.pixel(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/v1/pixel/track", "REMOTE_ADDR": "192.0.2.1",
             "QUERY_STRING": "writeKey=k&userId=u&event=e"}, lambda status, headers: None)),
            pixel.GIF)
        with open(self.log) as handle:
            self.assertEqual(len(handle.readlines()), 1)

    def test_python_values_a_flag_cannot_give(self):
        # The importer: None skipped the checks (forward_alert=None made /health a 500,
        # dedupe_window=None turned dedupe off), a pathlib.Path was "empty", write_key=[]
        # allowed any key, and a window of 10**9 died of MemoryError at start.
        defaults = {option.name: option.default for option in pixel.OPTIONS}
        config = pixel.configure(log=pathlib.Path(self.log), forward_alert=None,
                                 dedupe_window=None, rejects=None, write_key=None)
        self.assertEqual((config.log, config.forward_alert, config.dedupe_window,
                          config.write_key), (self.log, defaults["forward_alert"],
                                              pixel.DEFAULT_DEDUPE_WINDOW, []))
        # An empty list is a list left out, as it was (the attack on the first fix: code
        # that built one from an unset variable stopped starting).
        self.assertEqual(pixel.configure(write_key=[], trusted_proxy=[]).write_key, [])
        self.assertEqual(pixel.configure(dedupe_window=10 ** 7).dedupe_window, 10 ** 7)
        status, stderr = wsgi_start_error(self, log=self.log, dedupe_window=10 ** 9)
        self.assertEqual(status, 3)
        self.assertIn("dedupe_window: must be between 0 and 16777216", stderr)
        status, out, err = main_in_this_process(["--dedupe-window", "100000000"])
        self.assertEqual(status, 2)
        self.assertIn("must be between 0 and 16777216", err)

    def test_a_torn_tail_is_kept_in_the_rejects_log(self):
        with open(self.log, "wb") as handle:
            handle.write(b'{"type":"track"}\n{"type":"tr')
        stderr = io.StringIO()
        with unittest.mock.patch("sys.stderr", stderr):
            app = pixel.make_wsgi_app(log=self.log)
        app.close()
        with open(self.log, "rb") as handle:
            self.assertEqual(handle.read(), b'{"type":"track"}\n')
        with open(os.path.join(self.dir, "rejects.jsonl"), "rb") as handle:
            (line,) = [json.loads(line) for line in handle]
        self.assertEqual((line["reason"], line["body"]), ("torn_tail", '{"type":"tr'))
        self.assertIn("ended in a torn line", stderr.getvalue())


# ---------------------------------------------------------------------------------------------
# Real clients that .ci/run installs: Chromium, Segment's Python and Node SDKs


# Tools that .ci/run installs. Outside CI a test that needs one is skipped; with
# PIXEL_REQUIRE_TOOLS=1 (set by .ci/run) a missing tool is a failure instead.
REQUIRE_TOOLS = os.environ.get("PIXEL_REQUIRE_TOOLS") == "1"


def need(available, what):
    if not available:
        if REQUIRE_TOOLS:
            raise AssertionError("%s is missing, and PIXEL_REQUIRE_TOOLS=1" % what)
        raise unittest.SkipTest("not installed: %s (.ci/run installs it)" % what)


class BrowserSdk(unittest.TestCase):
    """Segment's browser SDK, @segment/analytics-next from npm, in headless Chromium on a
    page from a second origin (examples/analytics_next.js drives it over the DevTools
    protocol): identify, track, page, screen, group and alias, each on disk exactly once,
    in standard and batching delivery; and nothing from an origin that is not allowed."""

    TYPES = ["alias", "group", "identify", "page", "screen", "track"]

    def run_sdk(self, mode, allowed=True):
        modules = os.environ.get("PIXEL_NODE_MODULES", "")
        need(os.path.isdir(os.path.join(modules, "@segment", "analytics-next")) and
             os.path.isdir(os.path.join(modules, "ws")), "@segment/analytics-next and ws")
        need(shutil.which("node"), "node")
        need(shutil.which("chromium"), "chromium")
        self.dir = temp_dir(self)
        with socket.socket() as probe:   # the page's port, which --allow-origin must name
            probe.bind(("127.0.0.1", 0))
            page_port = probe.getsockname()[1]
        origin = "http://127.0.0.1:%d" % (page_port if allowed else 1)
        _, port = start_pixel(self, "--log", os.path.join(self.dir, "events.jsonl"),
                              "--allow-origin", origin)
        result = subprocess.run(
            ["node", os.path.join(HERE, "examples", "analytics_next.js"),
             "http://127.0.0.1:%d" % port, mode, str(page_port)],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        report = json.loads(result.stdout)
        print("analytics-next", report["sdkVersion"], mode, file=sys.stderr)
        logs = []
        for name in ("events.jsonl", "rejects.jsonl"):
            path = os.path.join(self.dir, name)
            with open(path, "rb") if os.path.exists(path) else io.BytesIO() as handle:
                logs.append([json.loads(line) for line in handle])
        return report, logs[0], logs[1]

    def assertEachCallOnce(self, report, events, rejects):
        self.assertEqual(sorted(event["type"] for event in events), self.TYPES)
        self.assertEqual(len({event["messageId"] for event in events}), 6)
        for event in events:
            pixel.validate(event["type"], event)
            self.assertTrue(event["messageId"].startswith("ajs-next-"))
            self.assertEqual(event["context"]["library"]["name"], "analytics.js")
            self.assertIn("originalTimestamp", event)
        self.assertEqual(rejects, [])
        self.assertEqual(report["failedRequests"], [])
        self.assertEqual([error for error in report["consoleErrors"] if "CORS" in str(error)],
                         [])

    def test_standard_delivery(self):
        self.assertEachCallOnce(*self.run_sdk("standard"))

    def test_batching_delivery_flushed_on_pagehide(self):
        self.assertEachCallOnce(*self.run_sdk("batching"))

    def test_settings_loaded_from_pixel_as_the_readme_says(self):
        # AnalyticsBrowser.load({writeKey, cdnURL: pixel}): the other modes give the SDK its
        # settings inline, so pixel's settings document was never what a browser followed.
        report, events, rejects = self.run_sdk("cdn")
        self.assertEachCallOnce(report, events, rejects)
        self.assertIn(("GET", "/v1/projects/AJS_NEXT_KEY/settings", 200),
                      [(request["method"], request["path"], request["status"])
                       for request in report["requests"]])

    def test_an_origin_that_is_not_allowed_writes_nothing(self):
        report, events, rejects = self.run_sdk("disallowed", allowed=False)
        self.assertEqual(events, [])
        self.assertTrue(report["failedRequests"], "the browser saw no CORS failure")
        # Only the metrics post, which needs no preflight, reaches pixel: refused too.
        self.assertEqual({(record["reason"], record["path"]) for record in rejects},
                         {("origin_not_allowed", "/v1/m")} if rejects else set())


class RudderStackBrowserSdk(unittest.TestCase):
    """RudderStack's browser SDK, @rudderstack/analytics-js 3.x from npm (its bundled UMD
    build), in headless Chromium on a page from a second origin with pixel as its data plane
    (examples/rudderstack.js drives it over the DevTools protocol): identify, track, page,
    group and alias, each on disk exactly once, with its source configuration loaded from
    pixel (configUrl) and with beacon delivery; and nothing from an origin not allowed."""

    TYPES = ["alias", "group", "identify", "page", "track"]
    WRITE_KEY = "RS_BROWSER_KEY"

    def run_sdk(self, mode, allowed=True):
        modules = os.environ.get("PIXEL_NODE_MODULES", "")
        need(os.path.isdir(os.path.join(modules, "@rudderstack", "analytics-js")) and
             os.path.isdir(os.path.join(modules, "ws")), "@rudderstack/analytics-js and ws")
        need(shutil.which("node"), "node")
        need(shutil.which("chromium"), "chromium")
        self.dir = temp_dir(self)
        with socket.socket() as probe:   # the page's port, which --allow-origin must name
            probe.bind(("127.0.0.1", 0))
            page_port = probe.getsockname()[1]
        origin = "http://127.0.0.1:%d" % (page_port if allowed else 1)
        # With an allowlist, so that the source configuration must find the SDK's key.
        _, port = start_pixel(self, "--log", os.path.join(self.dir, "events.jsonl"),
                              "--allow-origin", origin, "--write-key", self.WRITE_KEY)
        result = subprocess.run(
            ["node", os.path.join(HERE, "examples", "rudderstack.js"),
             "http://127.0.0.1:%d" % port, mode, str(page_port)],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        report = json.loads(result.stdout)
        print("@rudderstack/analytics-js", report["sdkVersion"], mode, file=sys.stderr)
        logs = []
        for name in ("events.jsonl", "rejects.jsonl"):
            path = os.path.join(self.dir, name)
            with open(path, "rb") if os.path.exists(path) else io.BytesIO() as handle:
                logs.append([json.loads(line) for line in handle])
        return report, logs[0], logs[1]

    def assertEachCallOnce(self, report, events, rejects):
        self.assertTrue(report["ready"], report)
        self.assertEqual(report["calls"], ["identify", "track", "page", "group", "alias"])
        self.assertEqual(sorted(event["type"] for event in events), self.TYPES, events)
        self.assertEqual(len({event["messageId"] for event in events}), 5)
        for event in events:
            pixel.validate(event["type"], event)
            self.assertEqual(event["writeKey"], self.WRITE_KEY)
            self.assertEqual(event["context"]["library"]["name"], "RudderLabs JavaScript SDK")
            self.assertIn("originalTimestamp", event)
        self.assertEqual(rejects, [])
        # A page left as it loads cancels a document of its own (a loaded CI run): not ours.
        self.assertEqual([request for request in report["failedRequests"] if not (
            request.get("type") == "Document" and request.get("canceled"))], [])
        self.assertEqual(report["consoleErrors"], [])
        self.assertEqual(report["offOriginRequests"], [])

    def test_source_config_from_pixel(self):
        report, events, rejects = self.run_sdk("config")
        self.assertEachCallOnce(report, events, rejects)
        # The HEAD is sendAdblockPage's check: an answer that fails it would have the SDK
        # think itself blocked, and add an "ad-block page request" page to later calls.
        answered = {(request["method"], request["path"].partition("?")[0], request["status"])
                    for request in report["requests"]}
        self.assertLessEqual({("OPTIONS", "/sourceConfig/", 204), ("GET", "/sourceConfig/", 200),
                              ("HEAD", "/sourceConfig/", 200), ("POST", "/v1/track", 200)},
                             answered)

    def test_beacon_delivery_flushed_on_page_leave(self):
        report, events, rejects = self.run_sdk("beacon")
        self.assertEachCallOnce(report, events, rejects)
        # Nothing went by XHR: the events came in the beacon, keyed by its query alone.
        self.assertEqual([request for request in report["requests"]
                          if request["method"] == "POST"], [])

    def test_an_origin_that_is_not_allowed_writes_nothing(self):
        report, events, rejects = self.run_sdk("disallowed", allowed=False)
        self.assertEqual((events, rejects), ([], []))
        self.assertFalse(report["ready"])
        self.assertIn("PreflightMissingAllowOriginHeader",
                      {request.get("corsError") for request in report["failedRequests"]})


class Browser(ServerCase):
    """Headless Chromium opens examples/email.html, as a mail client renders it."""

    def test_chromium_renders_the_email(self):
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        need(chromium, "chromium")
        with open(os.path.join(HERE, "examples", "email.html"), encoding="utf-8") as handle:
            email = handle.read().replace("127.0.0.1:8000", "127.0.0.1:%d" % self.port)
        # Report what the browser made of each image; an email has no script, the test does.
        probe = ("<script>window.addEventListener('load', function () {"
                 "document.body.setAttribute('data-probe', JSON.stringify({ua: navigator.userAgent,"
                 " images: Array.prototype.map.call(document.images, function (i) {"
                 " return [i.complete, i.naturalWidth, i.naturalHeight]; })})); });</script>")
        page = os.path.join(self.dir, "email.html")
        with open(page, "w", encoding="utf-8") as handle:
            handle.write(email.replace("</body>", probe + "</body>"))
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--user-data-dir=" + os.path.join(self.dir, "profile"),
             "--virtual-time-budget=10000", "--dump-dom", "file://" + page],
            capture_output=True, text=True, timeout=120)
        match = re.search(r"data-probe=\"([^\"]*)\"", result.stdout)
        self.assertTrue(match, result.stdout[-500:] + result.stderr[-2000:])
        import html
        probe = json.loads(html.unescape(match.group(1)))
        self.assertEqual(probe["images"], [[True, 1, 1]] * 3, "an image did not decode as 1x1")
        events = self.lines()
        self.assertEqual(sorted(event["type"] for event in events), ["page", "track"])
        for event in events:
            self.assertEqual(event["context"]["userAgent"], probe["ua"])
            self.assertIn("Chrome", probe["ua"])
        page_event = next(event for event in events if event["type"] == "page")
        self.assertEqual(page_event["properties"], {"url": "https://example.com/daily",
                                                    "campaign": "2026-11-26"})
        self.assertEqual(page_event["context"]["campaign"], {"source": "newsletter"})
        track = next(event for event in events if event["type"] == "track")
        self.assertEqual(track["event"], "Email Opened")
        (reject,) = self.lines("rejects.jsonl")
        self.assertEqual((reject["reason"], reject["userAgent"]), ("event_not_defined",
                                                                   probe["ua"]))


class SegmentSdk(ServerCase):
    """Segment's own Python SDK, pointed at pixel.py, with gzip off and on."""

    def test_segment_analytics_python(self):
        try:
            from segment.analytics.client import Client
            from segment.analytics.version import VERSION
        except ImportError:
            Client = None
        need(Client, "segment-analytics-python")
        errors = []
        for gzip_on in (False, True):
            client = Client("SDK_KEY", host="http://127.0.0.1:%d" % self.port, gzip=gzip_on,
                            sync_mode=True, max_retries=0,
                            on_error=lambda error, batch: errors.append(repr(error)))
            suffix = "-gzip" if gzip_on else ""
            client.track("u1", "Order Completed" + suffix, {"revenue": 42})
            client.identify("u1", {"email": "peek@email.poke"})
            client.page("u1", "Docs", "Pricing" + suffix, {"url": "https://x.io/pricing"})
            client.screen("u1", "App", "Home" + suffix)
            client.group("u1", "g1", {"name": "Pokemon"})
            client.alias("p1", "u1")
            client.flush()
        self.assertEqual(errors, [])
        events = self.lines()
        self.assertEqual(sorted(event["type"] for event in events),
                         sorted(["track", "identify", "page", "screen", "group", "alias"] * 2))
        for event in events:
            pixel.validate(event["type"], event)
            self.assertEqual(event["writeKey"], "SDK_KEY")
            self.assertIn("library", event["context"])
            self.assertIn("sentAt", event)
        self.assertEqual(self.lines("rejects.jsonl"), [])
        print("segment-analytics-python", VERSION, file=sys.stderr)


class NodeSdk(ServerCase):
    """Segment's Node SDK, @segment/analytics-node, through examples/node_sdk.js."""

    def test_segment_analytics_node(self):
        modules = os.environ.get("PIXEL_NODE_MODULES", "")
        need(shutil.which("node") and os.path.isdir(os.path.join(
            modules, "@segment", "analytics-node")), "node with @segment/analytics-node "
             "(PIXEL_NODE_MODULES)")
        result = subprocess.run(
            ["node", os.path.join(HERE, "examples", "node_sdk.js"),
             "http://127.0.0.1:%d" % self.port],
            capture_output=True, text=True, timeout=60, env=dict(os.environ, NODE_PATH=modules))
        self.assertEqual(result.returncode, 0, result.stderr)
        events = self.lines()
        self.assertEqual(sorted(event["type"] for event in events),
                         sorted(["track", "identify", "page", "screen", "group", "alias"]))
        for event in events:
            pixel.validate(event["type"], event)
            self.assertEqual(event["writeKey"], "NODE_KEY")
            self.assertEqual(event["context"]["library"]["name"], "@segment/analytics-node")
        self.assertEqual(self.lines("rejects.jsonl"), [])
        print(result.stdout.strip(), file=sys.stderr)


SEED_LINE = (b"GET /v1/pixel/track?userId=user_123&event=Email Opened&properties.subject=The "
             b"Electric Daily&writeKey=YOUR_WRITE_KEY HTTP/1.1")


class RawSpaces(ServerCase):
    """Segment's raw example with literal spaces, and the rule that takes it, under the
    attacker's treatment: only pixel routes, strict everything else."""

    server_options = {"request_timeout": 5.0, "idle_timeout": 5.0}

    def test_the_seeds_example_gets_its_gif_and_is_logged(self):
        reply = self.raw(SEED_LINE + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(pixel.GIF))
        (event,) = self.lines()
        self.assertEqual((event["event"], event["userId"], event["properties"]),
                         ("Email Opened", "user_123", {"subject": "The Electric Daily"}))
        self.assertEqual(self.lines("rejects.jsonl"), [])

    def test_head_answers_and_records_nothing(self):
        reply = self.raw(b"HEAD" + SEED_LINE[3:] + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, body, _ = read_response(io.BytesIO(reply))
        self.assertEqual((status, headers["content-length"]), (200, "43"))
        self.assertTrue(reply.endswith(b"\r\n\r\n"), reply[-60:])
        self.assertEqual(self.lines(), [])

    def test_pipelined_and_kept_alive(self):
        spaced = b"GET /v1/pixel/track?writeKey=k&userId=u&event=Open %d HTTP/1.1\r\nHost: x\r\n\r\n"
        plain = b"GET /v1/pixel/track?writeKey=k&userId=u&event=Open%%20%d HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(spaced % 1 + plain % 2 + spaced % 3)   # one write: pipelined
            stream = sock.makefile("rb")
            for _ in range(3):
                status, headers, body, _ = read_response(stream)
                self.assertEqual((status, body), (200, pixel.GIF))
            for number in (4, 5):   # and then kept alive, a request at a time
                sock.sendall(spaced % number)
                status, headers, body, _ = read_response(stream)
                self.assertEqual((status, body), (200, pixel.GIF))
        self.assertEqual([event["event"] for event in self.lines()],
                         ["Open %d" % number for number in range(1, 6)])

    def test_a_slow_client(self):
        # The line dripped in pieces, one split inside a run of spaces: the head reader
        # waits for the whole head, whatever it holds.
        request = SEED_LINE.replace(b"Email Opened", b"Email   Opened") + \
            b"\r\nHost: x\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            for start in range(0, len(request), 17):
                sock.sendall(request[start:start + 17])
                time.sleep(0.01)   # a slow client is one that takes time
            reply = sock.makefile("rb").read()
        self.assertTrue(reply.endswith(pixel.GIF), reply[:60])
        self.assertEqual(self.lines()[0]["event"], "Email Opened")

    def test_anything_else_with_spaces_stays_a_400(self):
        for line in (b"GET /v1/pixel/ track?event=A B HTTP/1.1",
                     b"GET /v1/pixel/track ?event=A B HTTP/1.1",
                     b"GET /health?a=b c HTTP/1.1", b"POST /v1/track?a=b c HTTP/1.1",
                     b"GET /v1/pixel/track?event=A B HTTP/1.1 ",
                     b"GET\t/v1/pixel/track?event=A B\tHTTP/1.1",
                     b"GET " + b" " * 65000 + b"HTTP/1.1"):
            with self.subTest(line[:40]):
                reply = self.raw(line + b"\r\nHost: x\r\n\r\n" +
                                 b"GET /v1/pixel/track?writeKey=k&userId=u&event=smuggled "
                                 b"HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply[:60])
                self.assertEqual(reply.count(b"HTTP/1.1 "), 1)   # the rest is never read
        self.assertEqual(self.lines(), [])
        self.assertQuietStderr()

    def test_64_kib_of_spaces(self):
        start = b"GET /v1/pixel/track?writeKey=k&userId=u&event=Email"
        end = b"Opened HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        reply = self.raw(start + b" " * (pixel.MAX_LINE - len(start) - 20) + end)
        self.assertTrue(reply.endswith(pixel.GIF), reply[:60])
        self.assertEqual([event["event"] for event in self.lines()], ["Email Opened"])
        # Past the limit: a pixel still gets its GIF, and the rejects log says why.
        reply = self.raw(start + b" " * pixel.MAX_LINE + end)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(pixel.GIF))
        self.assertEqual(len(self.lines()), 1)
        self.assertEqual(self.lines("rejects.jsonl")[-1]["reason"], "uri_too_long")

    def test_the_smuggling_rules_still_hold(self):
        # A pixel's head HTTP/1.1 refuses: the GIF, a rejects line, and nothing after it read.
        for name, head, reason in (
                ("two framings", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                 "bad_framing"),
                ("two lengths", b"Content-Length: 5\r\nContent-Length: 6\r\n", "bad_framing"),
                ("obs-fold", b"X-A: b\r\n c\r\n", "bad_header"),
                ("a space before a colon", b"X-A : b\r\n", "bad_header")):
            with self.subTest(name):
                reply = self.raw(SEED_LINE + b"\r\nHost: x\r\n" + head + b"\r\nGET /health "
                                 b"HTTP/1.1\r\nHost: x\r\n\r\n")
                self.assertTrue(reply.startswith(b"HTTP/1.1 200 ") and
                                reply.endswith(pixel.GIF), reply[:60])
                self.assertEqual(reply.count(b"HTTP/1.1 "), 1)
                self.assertEqual(self.lines("rejects.jsonl")[-1]["reason"], reason)
        # A small body nobody asked for is read and dropped, never taken for a request.
        body = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        reply = self.raw(SEED_LINE + b"\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) +
                         body + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(reply.count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual(reply.count(b'"status"'), 1)
        self.assertEqual(len(self.lines()), 1)

    def test_many_clients_at_once(self):
        def client(number):
            connection = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            with connection, connection.makefile("rb") as stream:
                for round in range(20):
                    connection.sendall(b"GET /v1/pixel/track?writeKey=k&userId=u%d&event=A B "
                                       b"C HTTP/1.1\r\nHost: x\r\n\r\n" % number)
                    self.assertEqual(read_response(stream)[2], pixel.GIF)

        threads = [threading.Thread(target=client, args=(number,)) for number in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        events = self.lines()
        self.assertEqual(len(events), 160)
        self.assertEqual({event["event"] for event in events}, {"A B C"})


class RawSpacesUnderWsgi(unittest.TestCase):
    """Behind a WSGI server the server reads the request line, and refuses a target with
    spaces before pixel sees it (the README says so): nothing is logged."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.log = os.path.join(self.dir, "events.jsonl")

    def send(self, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(SEED_LINE + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.makefile("rb").read()

    def wsgiref_port(self):
        """The port of a wsgiref server of pixel's app, stopped at the end."""
        app = pixel.make_wsgi_app(log=self.log)
        self.addCleanup(app.close)
        server = wsgiref.simple_server.make_server("127.0.0.1", 0, app,
                                                   handler_class=_QuietWsgiHandler)
        thread = threading.Thread(target=server.serve_forever, args=(SERVE_POLL,), daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(thread.join, 10)
        self.addCleanup(server.shutdown)
        return server.server_address[1]

    def test_wsgiref(self):
        reply = self.send(self.wsgiref_port())
        self.assertTrue(reply.startswith(b"HTTP/1.0 400 Bad request syntax"), reply[:60])
        self.assertEqual(read_bytes(self.log), b"")

    def test_a_fragment_is_dropped_as_the_built_in_server_drops_it(self):
        # wsgiref hands "...#frag&userId=x" over in QUERY_STRING: the pixel was refused
        # (duplicate_key) there and logged by the built-in server.
        with socket.create_connection(("127.0.0.1", self.wsgiref_port()), timeout=10) as sock:
            sock.sendall(b"GET /v1/pixel/track?writeKey=k&userId=u&event=e#top&userId=v "
                         b"HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = sock.makefile("rb").read()
        self.assertTrue(reply.endswith(pixel.GIF), reply[:60])
        (event,) = [json.loads(line) for line in read_bytes(self.log).splitlines()]
        self.assertEqual((event["userId"], event["event"]), ("u", "e"))

    def test_gunicorn(self):
        _, port, output = start_gunicorn(self, self.dir, "pixel:make_wsgi_app(log=%r)" % self.log,
                                         "--workers", "1", "--threads", "2")
        wait_for_gunicorn(self, port, output)
        reply = self.send(port)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 Bad Request"), reply[:60])
        self.assertIn(b"Invalid HTTP Version", reply)
        self.assertEqual(read_bytes(self.log), b"")


# ---------------------------------------------------------------------------------------------
# Layer 4: pixel.py as a process: kill -9, signals, limits, start-up errors


class Process(unittest.TestCase):
    def setUp(self):
        self.dir = temp_dir(self, "pixel-proc-")
        self.log = os.path.join(self.dir, "events.jsonl")

    def start(self, *extra, interpreter_flags=(), program=(PIXEL_RUN,), cwd=None):
        process = subprocess.Popen(
            [sys.executable] + list(interpreter_flags) + list(program) +
            ["--host", "127.0.0.1", "--port", "0", "--log", self.log,
             "--rejects", os.path.join(self.dir, "rejects.jsonl")] + list(extra),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
        self.addCleanup(self.reap, process)
        line = process.stdout.readline()
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)/ writing events to (\S+)",
                          line)
        self.assertTrue(match, repr(line))
        self.assertEqual(match.group(2), self.log)
        return process, int(match.group(1))

    @staticmethod
    def reap(process):
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()

    @soak   # over a second: a start's compile or warm-up, or a grace waited out
    def test_it_listens_once_it_can_answer(self):
        # The dedupe window's warm-up reads the log's end at start (about a second for
        # 40 MB here, 0.3 s for these 13 MB); a client that connects meanwhile is refused
        # and retries, rather than connected and kept waiting for it.
        with open(self.log, "wb") as handle:
            handle.write(b"".join(b'{"type":"track","writeKey":"k","userId":"u","event":"e",'
                                  b'"messageId":"m-%07d","receivedAt":"2026-11-18T11:06:40.'
                                  b'250Z","context":{"ip":"203.0.113.7"}}\n' % number
                                  for number in range(100000)))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, PIXEL_PY, "--port", str(port), "--log",
                                    self.log], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (process.kill(), process.wait()))
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.connect()
                break
            except ConnectionRefusedError:
                self.assertIsNone(process.poll())
                time.sleep(0.005)
        connected = time.monotonic()
        connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e")
        self.assertEqual(connection.getresponse().read(), pixel.GIF)
        answered = time.monotonic()
        connection.close()
        self.assertLess(answered - connected, (connected - started) / 2,
                        "connected %.2f s after the start, answered %.2f s later"
                        % (connected - started, answered - connected))

    def test_kill_9_under_load_loses_no_answered_event(self):
        process, port = self.start()
        answered, lock, stop = set(), threading.Lock(), threading.Event()

        def client(worker):
            number = 0
            while not stop.is_set():
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    while not stop.is_set():
                        message_id = "%d-%d" % (worker, number)
                        number += 1
                        connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e"
                                                  "&messageId=" + message_id)
                        if connection.getresponse().read() == pixel.GIF:
                            with lock:
                                answered.add(message_id)
                except (OSError, http.client.HTTPException):
                    return   # killed under us
                finally:
                    connection.close()

        threads = [threading.Thread(target=client, args=(worker,)) for worker in range(8)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(answered) >= 500, timeout=30)
        process.kill()
        process.wait()
        stop.set()
        for thread in threads:
            thread.join()
        with open(self.log, "rb") as handle:
            data = handle.read()
        self.assertTrue(data.endswith(b"\n"), "torn last line")
        logged = [json.loads(line)["messageId"] for line in data.splitlines()]
        self.assertGreaterEqual(len(answered), 500)
        self.assertEqual(len(logged), len(set(logged)))
        self.assertEqual(answered - set(logged), set(), "answered but not on disk")

    def rss_mib(self, process):
        with open("/proc/%d/status" % process.pid) as handle:
            return int(re.search(r"VmRSS:\s+(\d+) kB", handle.read()).group(1)) / 1024

    @unittest.skipUnless(os.path.exists("/proc/self/status"), "reads RSS from /proc")
    @soak
    def test_400_slowloris_connections_do_not_starve_real_clients(self):
        process, port = self.start("--request-timeout", "3")
        drippers = [socket.create_connection(("127.0.0.1", port)) for _ in range(400)]
        peaks = []

        def real_client():
            fetch_gif(port, "/v1/pixel/track?writeKey=k&userId=u&event=real")
            peaks.append(self.rss_mib(process))

        latencies, cut = slowloris(drippers, [], real_client)
        peak = max(peaks)
        with open(self.log) as handle:
            logged = sum(1 for line in handle if '"event":"real"' in line)
        self.assertEqual(logged, len(latencies))
        self.assertLess(max(latencies), 1.0, latencies)
        self.assertLess(peak, 200)
        self.assertEqual(cut, 400, "every dripping connection is cut after --request-timeout")

    @soak   # over a second: a start's compile or warm-up, or a grace waited out
    def test_rss_at_rest_and_with_1000_idle_connections(self):
        # -S: pixel.py's own footprint, without what this machine's site-packages load at
        # every start (a .pth file here imports certifi: about 2 MiB in every process).
        # Run as a script, pixel.py is compiled at each start, and the heap keeps what the
        # compiler used (about 15 MiB for this file): at most 45 MiB. Compiled once, as the
        # README installs it on a VM (py_compile, then python3 -m pixel), it takes 30.
        script, _ = self.start(interpreter_flags=["-S"], program=(PIXEL_PY,))   # compiles
        as_a_script = self.rss_mib(script)
        self.reap(script)
        app = temp_dir(self, "pixel-app-")
        shutil.copy(PIXEL_PY, app)
        subprocess.run([sys.executable, "-m", "py_compile", "pixel.py"], cwd=app, check=True)
        process, port = self.start(interpreter_flags=["-S"], program=["-m", "pixel"], cwd=app)
        at_rest = self.rss_mib(process)
        idle = []
        for _ in range(1000):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/health")
            connection.getresponse().read()
            idle.append(connection)
        loaded = self.rss_mib(process)
        health = json.loads(self.fetch(port, "/health"))
        for connection in idle:
            connection.close()
        self.assertGreaterEqual(health["connections"], 1000)
        self.assertLess(as_a_script, 45)
        self.assertLess(at_rest, 30)
        self.assertLess(loaded, 100)

    def fetch(self, port, target):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", target)
            return connection.getresponse().read()
        finally:
            connection.close()

    def test_sigterm_finishes_and_exits_0(self):
        process, port = self.start()
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        idle.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e")
        self.assertEqual(idle.getresponse().read(), pixel.GIF)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(10), 0)
        self.assertLess(time.monotonic() - started, 5, "an idle connection held up the stop")
        self.assertIn("pixel stopped: 1 events written", process.stdout.read())
        self.assertEqual(process.stderr.read(), "")
        idle.close()

    def test_signals_once_it_stops_are_ignored_until_it_exits(self):
        # A second SIGTERM, a Ctrl-C or logrotate's SIGHUP while it closed its logs killed it
        # (-15, -2 with a traceback, -1), the handlers put back too early.
        process, port = self.start()
        process.send_signal(signal.SIGTERM)
        self.assertIn("pixel stopped", process.stdout.readline())
        for name in ("SIGTERM", "SIGINT", "SIGHUP"):
            process.send_signal(getattr(signal, name))
        self.assertEqual(process.wait(10), 0)
        self.assertEqual(process.stderr.read(), "")

    def test_main_imported_gives_the_callers_handlers_back(self):
        mine = lambda signum, frame: None
        for name in ("SIGTERM", "SIGINT", "SIGHUP"):
            self.addCleanup(signal.signal, getattr(signal, name),
                            signal.signal(getattr(signal, name), mine))
        stdout = io.StringIO()

        def stop_once_it_listens():   # it says so once its handlers are in place
            wait_until(lambda: "listening on" in stdout.getvalue())
            os.kill(os.getpid(), signal.SIGTERM)

        # A handler set in C reads as None, which signal.signal() cannot set again: left.
        real = signal.signal
        from_c = lambda signum, handler: (lambda before: None if signum == signal.SIGHUP
                                          and before is mine else before)(real(signum, handler))
        kill = threading.Thread(target=stop_once_it_listens)
        kill.start()
        with unittest.mock.patch("sys.stdout", stdout), \
                unittest.mock.patch("pixel.signal.signal", from_c):
            status = pixel.main(["--port", "0", "--log", self.log, "--cpu", "none"], {})
        kill.join()
        self.assertEqual(status, 0, stdout.getvalue())
        self.assertIn("pixel stopped", stdout.getvalue())
        for name in ("SIGTERM", "SIGINT"):
            self.assertIs(signal.getsignal(getattr(signal, name)), mine)
        self.assertIs(signal.getsignal(signal.SIGHUP), signal.SIG_IGN)

    def test_a_sigterm_during_the_start_stops_it_once_it_listens(self):
        # Before serve() took the signals, a SIGTERM killed pixel (-15) with its files made;
        # main() now holds it from the start and serve() stops at once, exit 0. Here the
        # caller's handler stands for the default action: it must not be the one called.
        # A SIGHUP then (logrotate's) killed it too (-1).
        called = []
        mine = lambda signum, frame: called.append(signum)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self.addCleanup(signal.signal, signum, signal.signal(signum, mine))
        real, done = pixel.Pixel, threading.Event()

        def signalled_start(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)

        def stop_if_it_serves():   # the old code served on: stop it, and fail below
            if not done.wait(5):
                os.kill(os.getpid(), signal.SIGTERM)

        stopper = threading.Thread(target=stop_if_it_serves)
        stopper.start()
        stdout = io.StringIO()
        with unittest.mock.patch("sys.stdout", stdout), \
                unittest.mock.patch.object(pixel, "Pixel", signalled_start):
            status = pixel.main(["--port", "0", "--log", self.log, "--cpu", "none"], {})
        done.set()
        stopper.join()
        self.assertEqual((status, called), (0, []), stdout.getvalue())
        self.assertIn("pixel stopped: 0 events written", stdout.getvalue())
        self.assertIs(signal.getsignal(signal.SIGTERM), mine)

    def test_other_signals_do_not_stop_it_and_sighup_reopens(self):
        process, port = self.start()
        for name in ("SIGUSR1", "SIGUSR2", "SIGQUIT"):
            process.send_signal(getattr(signal, name))
        self.assertEqual(self.fetch(port, "/v1/pixel/track?writeKey=k&userId=u&event=one"),
                         pixel.GIF)
        self.assertIsNone(process.poll())
        os.rename(self.log, self.log + ".moved")
        process.send_signal(signal.SIGHUP)
        # The reopen makes the file before any write does.
        self.assertTrue(wait_until(lambda: os.path.exists(self.log)), "SIGHUP reopened nothing")
        self.fetch(port, "/v1/pixel/track?writeKey=k&userId=u&event=two")
        with open(self.log + ".moved") as moved, open(self.log) as live:
            self.assertEqual([json.loads(line)["event"] for line in moved], ["one"])
            self.assertEqual([json.loads(line)["event"] for line in live], ["two"])
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(10), 0)
        self.assertIn("reopened %s" % self.log, process.stderr.read())

    def test_a_torn_tail_is_cut_at_start_up_and_kept_in_the_rejects_log(self):
        with open(self.log, "wb") as handle:
            handle.write(b'{"type":"track","event":"whole"}\n{"type":"track","ev')
        process, port = self.start()
        self.fetch(port, "/v1/pixel/track?writeKey=k&userId=u&event=after")
        with open(self.log) as handle:
            self.assertEqual([json.loads(line)["event"] for line in handle],
                             ["whole", "after"])
        with open(os.path.join(self.dir, "rejects.jsonl")) as handle:
            (record,) = [json.loads(line) for line in handle]
        self.assertEqual((record["reason"], record["body"]),
                         ("torn_tail", '{"type":"track","ev'))
        process.kill()
        process.wait()
        self.assertIn("ended in a torn line (19 bytes", process.stderr.read())

    def test_stderr_on_a_full_disk_costs_no_answer(self):
        folder = mount_tmpfs(self, 256 * 1024)
        log = os.path.join(folder, "events.jsonl")
        with open(os.path.join(folder, "stderr.log"), "w") as stderr:
            _, port = start_pixel(self, "--log", log, stderr=stderr)
        fill_disk(self, folder)
        for number in range(20):
            self.assertEqual(self.fetch(port, "/v1/pixel/track?writeKey=k&userId=u&event=e%d"
                                        "&pad=%s" % (number, "x" * 5000)), pixel.GIF)
        health = json.loads(self.fetch(port, "/health"))
        self.assertEqual((health["status"], health["write_errors"] > 0), ("degraded", True))

    def test_logrotate_create_with_a_hup_under_load_loses_nothing(self):
        logrotate = shutil.which("logrotate") or (
            "/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else None)
        need(logrotate, "logrotate")
        process, port = self.start()
        config = os.path.join(self.dir, "logrotate.conf")
        with open(os.path.join(HERE, "examples", "logrotate.conf")) as handle:
            example = handle.read()   # the README's, with this test's files and process
        self.assertIn("    create\n", example)
        with open(config, "w") as handle:
            handle.write(example.replace("/var/lib/pixel/events.jsonl", self.log)
                         .replace("/var/lib/pixel/rejects.jsonl",
                                  os.path.join(self.dir, "rejects.jsonl"))
                         .replace("systemctl reload pixel", "kill -HUP %d" % process.pid))
        answered, lock, stop = set(), threading.Lock(), threading.Event()

        def client(worker):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            number = 0
            while not stop.is_set():
                message_id = "%d-%d" % (worker, number)
                number += 1
                connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e"
                                          "&messageId=" + message_id)
                if connection.getresponse().read() == pixel.GIF:
                    with lock:
                        answered.add(message_id)
            connection.close()

        threads = [threading.Thread(target=client, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        try:
            for rotation in range(5):
                wait_until(lambda: len(answered) >= (300 if SOAK else 100) * (rotation + 1))
                result = subprocess.run([logrotate, "-f", "-s", os.path.join(self.dir, "state"),
                                         config], capture_output=True, text=True, timeout=60)
                self.assertEqual(result.returncode, 0, result.stderr)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        logged = []
        for name in os.listdir(self.dir):
            if name.startswith("events.jsonl"):
                with open(os.path.join(self.dir, name), "rb") as handle:
                    data = handle.read()
                self.assertTrue(data == b"" or data.endswith(b"\n"), name)
                logged += [json.loads(line)["messageId"] for line in data.splitlines()]
        self.assertGreaterEqual(len([name for name in os.listdir(self.dir)
                                     if name.startswith("events.jsonl.")]), 5)
        self.assertEqual(len(logged), len(set(logged)), "a line was written twice")
        self.assertEqual(answered - set(logged), set(), "answered but not on disk")
        self.assertIsNone(process.poll())

    def test_sigint_exits_0(self):
        process, _ = self.start()
        process.send_signal(signal.SIGINT)
        self.assertEqual(process.wait(10), 0)

    def test_log_and_rejects_that_are_one_file_exit_before_listening(self):
        os.symlink(self.log, os.path.join(self.dir, "link.jsonl"))
        os.link(self.log, os.path.join(self.dir, "hard.jsonl")) if os.path.exists(
            self.log) else open(self.log, "w").close()
        if not os.path.exists(os.path.join(self.dir, "hard.jsonl")):
            os.link(self.log, os.path.join(self.dir, "hard.jsonl"))
        for rejects, status, message in (("link.jsonl", 2, "different files"),
                                         ("hard.jsonl", 1, "are the same file")):
            result = subprocess.run([sys.executable, PIXEL_RUN, "--port", "0", "--log", self.log,
                                     "--rejects", os.path.join(self.dir, rejects)],
                                    capture_output=True, text=True, timeout=30)
            self.assertEqual(result.returncode, status, result.stderr)
            self.assertIn(message, result.stderr)
            self.assertEqual(result.stdout, "")

    def test_missing_log_folder_exits_before_listening(self):
        result = subprocess.run([sys.executable, PIXEL_RUN, "--port", "0", "--log",
                                 os.path.join(self.dir, "missing", "events.jsonl")],
                                capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertRegex(result.stderr, r"^pixel: cannot open .*missing/events\.jsonl: "
                                        r"No such file or directory; make its folder first\n$")

    @unittest.skipIf(os.geteuid() == 0, "root can write anywhere")
    def test_unwritable_log_folder_exits_before_listening(self):
        os.chmod(self.dir, 0o500)
        self.addCleanup(os.chmod, self.dir, 0o700)
        result = subprocess.run([sys.executable, PIXEL_RUN, "--port", "0", "--log", self.log],
                                capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 1)
        self.assertIn("Permission denied", result.stderr)

    @unittest.skipUnless(hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1,
                         "needs a machine with two CPUs or more")
    def test_pinned_to_one_cpu_unless_asked_not_to(self):
        def allowed(process):
            with open("/proc/%d/status" % process.pid) as handle:
                return re.search(r"Cpus_allowed_list:\s+(\S+)", handle.read()).group(1)

        process, _ = self.start()
        last = str(sorted(os.sched_getaffinity(0))[-1])
        self.assertEqual(allowed(process), last)
        process.terminate()
        process.wait()
        process, _ = self.start("--cpu", "none")
        self.assertNotEqual(allowed(process), last)

    @unittest.skipUnless(hasattr(os, "sched_getaffinity"), "sched_getaffinity")
    def test_auto_pins_nothing_where_one_cpu_is_allowed(self):
        # taskset -c 2 pixel.py, or a container of one CPU: nothing to choose, none said.
        allowed = os.sched_getaffinity(0)
        self.addCleanup(os.sched_setaffinity, 0, allowed)
        os.sched_setaffinity(0, {max(allowed)})
        self.assertIsNone(pixel.pin_cpu("auto"))
        self.assertEqual(os.sched_getaffinity(0), {max(allowed)})

    def test_cpu_that_is_not_allowed(self):
        # The attack pass: a number past a C long was a traceback (OverflowError).
        for cpu in ("4096", "1180591620717411303424"):
            result = subprocess.run([sys.executable, PIXEL_RUN, "--port", "0", "--log",
                                     self.log, "--cpu", cpu], capture_output=True, text=True,
                                    timeout=30)
            self.assertEqual(result.returncode, 1)
            self.assertRegex(result.stderr, r"^pixel: cannot pin to CPU %s: [^\n]*\n$" % cpu)

    @unittest.skipUnless(os.path.exists("/proc/self/limits"), "reads /proc")
    def test_open_file_limit_is_raised_for_max_connections(self):
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 2200:
            self.skipTest("the hard open-file limit is %d" % hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))   # the child inherits this
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        process, _ = self.start("--max-connections", "2000")
        with open("/proc/%d/limits" % process.pid) as handle:
            limit = re.search(r"Max open files\s+(\d+)", handle.read()).group(1)
        self.assertEqual(int(limit), 2064)

    def test_a_low_hard_file_limit_lowers_the_connection_cap(self):
        # A hard limit of 164 files leaves room for 100 connections, not the default 1024.
        probe = subprocess.Popen(
            [sys.executable, "-c", "import resource, runpy, sys; resource.setrlimit("
             "resource.RLIMIT_NOFILE, (100, 164)); sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')", PIXEL_PY, "--port", "0",
             "--log", self.log, "--cpu", "none"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(self.reap, probe)
        self.assertIn("listening on", probe.stdout.readline())
        probe.terminate()
        probe.wait()
        self.assertIn("the open-file limit is 164, so at most 100 connections are served at "
                      "once, not --max-connections 1024", probe.stderr.read())

    def test_a_stdout_gone_or_full_is_no_reason_to_stop_or_fail(self):
        # The attack pass: its reader gone (`pixel.py | head -1`), the "stopped" line raised
        # BrokenPipeError at SIGTERM (a traceback, exit 1); on /dev/full, the "listening"
        # line did at start, and pixel never served.
        process, _ = self.start()
        process.stdout.close()
        process.terminate()
        self.assertEqual(process.wait(10), 0)
        self.assertNotIn("Traceback", process.stderr.read())
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with open(os.devnull if not os.path.exists("/dev/full") else "/dev/full", "w") as full:
            process = subprocess.Popen([sys.executable, PIXEL_RUN, "--port", str(port),
                                        "--log", self.log, "--cpu", "none"], stdout=full,
                                       stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        self.assertTrue(wait_until(lambda: process.poll() is not None or
                                   _answers(port, "/health")))
        process.terminate()
        self.assertEqual(process.wait(10), 0)
        self.assertNotIn("Traceback", process.stderr.read())
        process.stderr.close()

    def test_a_stderr_and_stdout_no_one_reads_never_hold_the_server(self):
        # The attack pass: a pipe whose reader stopped (a stalled journald or supervisor)
        # blocked the first message for ever, under the reporter's lock; the accept loop,
        # saying its slots were full, blocked behind it, and SIGTERM could not stop pixel.
        # With stdout full, the "listening" line blocked after the socket was listening.
        def full_pipe():
            read, write = os.pipe()
            self.addCleanup(os.close, read)
            fcntl.fcntl(write, fcntl.F_SETFL, os.O_NONBLOCK)
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(write, b"x" * 4096)
            fcntl.fcntl(write, fcntl.F_SETFL, 0)
            return write
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        stdout, stderr = full_pipe(), full_pipe()
        process = subprocess.Popen([sys.executable, PIXEL_RUN, "--port", str(port), "--log",
                                    self.log, "--cpu", "none", "--max-connections", "2"],
                                   stdout=stdout, stderr=stderr)
        os.close(stdout)
        os.close(stderr)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        self.assertTrue(wait_until(lambda: _answers(port, "/health")))
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.2)   # the third waits for a slot: the accept loop says so, to no one
        for sock in held:
            sock.close()
        self.assertTrue(wait_until(lambda: _answers(port, "/health"), timeout=5))
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as answer:
            # 1, or 2 when the /health after the closes came before pixel saw them
            self.assertRegex(answer.read().decode(), r"pixel_connection_slots_exhausted_total [12]\n")
        process.terminate()
        self.assertEqual(process.wait(10), 0)

    def test_port_in_use(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            result = subprocess.run([sys.executable, PIXEL_RUN, "--port",
                                     str(taken.getsockname()[1]), "--log", self.log],
                                    capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 1)
        self.assertRegex(result.stderr, r"^pixel: cannot listen on 127\.0\.0\.1 port \d+: "
                                        r"Address already in use; another process has it: "
                                        r"stop it, or give another --port\n$")


class FailedStart(unittest.TestCase):
    """pixel.py that cannot start says so in one line and leaves its folder as it found it:
    no log, rejects log or checkpoint created, and logs that were there left untouched."""

    def setUp(self):
        self.dir = temp_dir(self, "pixel-start-")
        self.log = os.path.join(self.dir, "events.jsonl")
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.taken = str(taken.getsockname()[1])

    def run_pixel(self, *argv):
        return subprocess.run([sys.executable, PIXEL_RUN, "--port", "0", "--cpu", "none",
                               "--log", self.log] + list(argv),
                              capture_output=True, text=True, timeout=30)

    @soak
    def test_each_failure_creates_no_file(self):
        elsewhere = temp_dir(self)
        not_pem = os.path.join(elsewhere, "cert.pem")
        with open(not_pem, "w") as handle:
            handle.write("not a certificate\n")
        # A folder where the forwarder's checkpoint is first written: it cannot start.
        checkpoint_tmp = os.path.relpath(pixel.state_path(self.log, "forward") + ".tmp",
                                         self.dir)
        for name, argv, status, message, made in (
                ("port in use", ["--port", self.taken], 1, "cannot listen on 127.0.0.1 port "
                 + self.taken + ": Address already in use", None),
                ("port in use, forwarding", ["--port", self.taken, "--forward",
                                             "http://127.0.0.1:9"], 1, "cannot listen", None),
                ("a CPU it may not use", ["--cpu", "4096"], 1, "cannot pin to CPU 4096", None),
                ("a host sockets cannot encode", ["--host", "\u202e"], 2,
                 "is not an address or a host name", None),
                ("a certificate that does not load", ["--certfile", not_pem, "--keyfile",
                                                      not_pem], 1, not_pem, None),
                ("a forwarder that cannot start", ["--forward", "http://127.0.0.1:9"], 1,
                 "cannot forward", checkpoint_tmp),
                ("a rejects log it cannot open", ["--rejects", os.path.join(
                    self.dir, "missing", "rejects.jsonl")], 1, "cannot open", None),
                ("a bad flag combination", ["--certfile", not_pem], 2, "go together", None)):
            with self.subTest(name):
                if made:
                    os.makedirs(os.path.join(self.dir, made))
                result = self.run_pixel(*argv)
                self.assertEqual(result.returncode, status, result.stderr)
                self.assertEqual(result.stdout, "")
                self.assertIn(message, result.stderr.splitlines()[-1])
                if status == 1:
                    self.assertRegex(result.stderr, r"\Apixel: [^\n]*\n\Z")
                top = made.split(os.sep)[0] if made else None
                self.assertEqual(os.listdir(self.dir), [top] if made else [])
                if made:   # and nothing was left beside what the test made in it
                    self.assertEqual(os.listdir(os.path.dirname(os.path.join(self.dir, made))),
                                     [os.path.basename(made)])
                    shutil.rmtree(os.path.join(self.dir, top))

    def test_logs_that_were_there_are_left_as_they_were(self):
        rejects = os.path.join(self.dir, "rejects.jsonl")
        for path, data in ((self.log, b'{"type":"track"}\n'), (rejects, b'{"reason":"x"}\n')):
            with open(path, "wb") as handle:
                handle.write(data)
        before = {name: (os.stat(os.path.join(self.dir, name)).st_ino,
                         read_bytes(os.path.join(self.dir, name)))
                  for name in os.listdir(self.dir)}
        result = self.run_pixel("--port", self.taken, "--forward", "http://127.0.0.1:9")
        self.assertEqual(result.returncode, 1)
        self.assertEqual({name: (os.stat(os.path.join(self.dir, name)).st_ino,
                                 read_bytes(os.path.join(self.dir, name)))
                          for name in os.listdir(self.dir)}, before)
        os.remove(rejects)   # one log there, the other not: only what was there stays
        result = self.run_pixel("--port", self.taken)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(os.listdir(self.dir), ["events.jsonl"])
        self.assertEqual(read_bytes(self.log), b'{"type":"track"}\n')

    @soak   # over a second: a start's compile or warm-up, or a grace waited out
    def test_a_port_taken_while_it_warms_up_fails_in_one_line_and_creates_no_file(self):
        # The port is bound at start but listened on only after the dedupe window's warm-up.
        # Another socket bound with SO_REUSEADDR and not yet listening (a second pixel
        # starting) lets the bind by; if it listens first, pixel's own listen() is refused.
        with open(self.log, "wb") as handle:
            handle.write(b"".join(b'{"type":"track","writeKey":"k","userId":"u","event":"e",'
                                  b'"messageId":"m-%07d"}\n' % number
                                  for number in range(100000)))
        before = read_bytes(self.log)
        for name, argv in (("logging", []), ("forwarding", ["--forward", "http://127.0.0.1:9"])):
            with self.subTest(name):
                other = socket.socket()
                self.addCleanup(other.close)
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                other.bind(("127.0.0.1", 0))
                process = subprocess.Popen(
                    [sys.executable, PIXEL_PY, "--port", str(other.getsockname()[1]), "--cpu",
                     "none", "--log", self.log] + argv, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
                self.addCleanup(lambda: (process.kill(), process.communicate()))
                rejects = os.path.join(self.dir, "rejects.jsonl")
                # the rejects log is made after the bind and before the warm-up
                self.assertTrue(wait_until(lambda: os.path.exists(rejects)))
                other.listen()
                stdout, stderr = process.communicate(timeout=30)
                self.assertEqual(process.returncode, 1, stderr)
                self.assertEqual(stdout, "")
                self.assertRegex(stderr, r"\Apixel: cannot listen on 127.0.0.1 port \d+: "
                                         r"Address already in use; another process has it: "
                                         r"stop it, or give another --port\n\Z")
                self.assertEqual(os.listdir(self.dir), ["events.jsonl"])
                self.assertEqual(read_bytes(self.log), before)

    def test_a_backfill_that_cannot_read_its_file_creates_no_rejects_log(self):
        result = subprocess.run([sys.executable, PIXEL_RUN, "forward", "--to",
                                 "http://127.0.0.1:9", os.path.join(self.dir, "gone.jsonl")],
                                capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 1)
        self.assertIn("gone.jsonl", result.stderr)
        self.assertEqual(os.listdir(self.dir), [])


def main_in_this_process(argv, environ=None):
    """(status, stdout, stderr) of pixel.main(argv, environ) run here: a command's checks and
    output without a process's start (0.1-0.2 s of CPU each)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with unittest.mock.patch("sys.stdout", stdout), unittest.mock.patch("sys.stderr", stderr):
        try:
            status = pixel.main(argv, environ)
        except SystemExit as exit:   # argparse's, for a bad command line
            status = exit.code
    return status, stdout.getvalue(), stderr.getvalue()


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def slowloris(drippers, silent, real_client, seconds=4.5):
    """Send a byte every 0.5 s on each of `drippers` while `real_client()` runs every 0.1 s
    for `seconds`; then see which slow connections (drippers and `silent` ones) the server
    cut. Returns (the real client's latencies, how many were cut)."""
    stop = threading.Event()

    def drip():
        while not stop.wait(0.5):
            for sock in drippers:
                try:
                    sock.send(b"G")
                except (OSError, ValueError):
                    continue   # cut off by the server, as it should be

    dripping = threading.Thread(target=drip)
    dripping.start()
    latencies = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            begin = time.monotonic()
            real_client()
            latencies.append(time.monotonic() - begin)
            time.sleep(0.1)
    finally:
        stop.set()
        dripping.join()
    cut = 0
    for sock in drippers + silent:
        sock.settimeout(2)
        try:
            cut += sock.recv(1) == b""
        except OSError:
            cut += 1
        sock.close()
    return latencies, cut


def read_text(path):
    with open(path) as handle:
        return handle.read()


def fetch_gif(port, target):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", target)
        body = connection.getresponse().read()
    finally:
        connection.close()
    assert body == pixel.GIF, body
    return body


def fd_target(fd):
    """What this process's descriptor `fd` (a name in /proc/self/fd) is open on; "" if it was
    closed since it was listed (listdir's own, another thread's): 3.8's realpath raised."""
    try:
        return os.readlink("/proc/self/fd/" + fd)
    except OSError:
        return ""


def _answers(port, target):
    """Whether a server on `port` answers GET `target` with 200."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", target)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def fetch_json(port, target):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", target)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


class FaultProxy:
    """Stands between pixel A's forwarder and pixel B: passes batches on to B (at
    `self.target`, a port), answers 400 to any batch holding an event with
    properties.poison, and injects faults by request number: a 500, a 429 with
    Retry-After, a hang past the forwarder's timeout. hold() makes the next passed-on batch
    wait, after B has answered it, until release(); release(drop=True) then answers 502, as
    if B had died before answering."""

    def __init__(self, test, faults):
        self.faults = dict(faults)   # request number -> "500", "429", "hang"
        self.target = None
        self.requests = 0
        self.lock = threading.Lock()
        self.holding = None          # (held, release, drop) events while armed
        proxy = self

        class Handler(AnswerHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                batch = json.loads(gzip.decompress(body))["batch"]
                if any(event.get("properties", {}).get("poison") for event in batch):
                    return self.answer(400, b'{"error":"poisoned"}')
                with proxy.lock:   # faults are numbered among batches without poison
                    proxy.requests += 1
                    fault = proxy.faults.pop(proxy.requests, None)
                if fault == "500":
                    return self.answer(500, b"injected")
                if fault == "429":
                    return self.answer(429, b"injected", [("Retry-After", "1")])
                if fault == "hang":
                    time.sleep(2.5)   # A's --forward-timeout is 1 s
                    self.close_connection = True
                    return None
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", proxy.target,
                                                            timeout=10)
                    connection.request("POST", self.path, body, {
                        name: self.headers[name] for name in
                        ("Content-Type", "Content-Encoding", "Authorization")})
                    response = connection.getresponse()
                    status, answer = response.status, response.read()
                    connection.close()
                except OSError:
                    return self.answer(502, b"B is down")
                holding, proxy.holding = proxy.holding, None
                if holding is not None:
                    held, release, drop = holding
                    held.set()
                    release.wait(30)
                    if drop.is_set():
                        return self.answer(502, b"B died before answering")
                return self.answer(status, answer)

        self.server = serve_quietly(test, Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]

    def hold(self):
        self.holding = (threading.Event(), threading.Event(), threading.Event())
        return self.holding


@soak
class ForwardingUnderFaults(unittest.TestCase):
    """The issue's fault test, with real processes: pixel A forwards to pixel B through a
    FaultProxy while clients send to A; A is killed with kill -9 mid-batch and restarted;
    B is killed with kill -9 after writing a batch it never answered and stays down 10 s;
    the proxy answers 500, 429, 400 for one poisoned event, and hangs; A rotates at 4 KB
    with --keep 2 throughout. Afterwards every event A answered is in B's log exactly once,
    the poisoned one in A's rejects log instead, and /health's backlog matched the log."""

    def setUp(self):
        self.dir = temp_dir(self, "pixel-faults-")
        for side in ("a", "b"):
            os.mkdir(os.path.join(self.dir, side))

    def start(self, side, *extra):
        folder = os.path.join(self.dir, side)
        stderr = open(os.path.join(folder, "stderr"), "a")
        self.addCleanup(stderr.close)
        return start_pixel(self, "--log", os.path.join(folder, "events.jsonl"), *extra,
                           stderr=stderr)

    def health(self, port):
        return fetch_json(port, "/health")

    def unsent_by_the_log(self):
        """(lines, bytes) after A's checkpoint, counted from A's files themselves."""
        folder = os.path.join(self.dir, "a")
        checkpoint = pixel.read_checkpoint(pixel.state_path(os.path.join(
            folder, "events.jsonl"), "forward"))
        files = []
        for name in os.listdir(folder):
            if name == "events.jsonl" or ROTATED.search(name):
                status = os.stat(os.path.join(folder, name))
                files.append((name != "events.jsonl", status.st_mtime_ns, name, status))
        files.sort(key=lambda entry: (not entry[0], entry[1], entry[2]))
        lines = size = 0
        started = False
        self.assertTrue(any(status.st_ino == checkpoint["inode"] for *_, status in files),
                        "the checkpoint names a file that is gone")
        for _, _, name, status in files:
            offset = 0
            if (status.st_dev, status.st_ino) == (checkpoint["device"], checkpoint["inode"]):
                log = pixel.LogFile.open(os.path.join(folder, name))
                if log.head(checkpoint["head_bytes"]) == checkpoint["head"]:   # not a reuse
                    started, offset = True, checkpoint["offset"]
                log.close()
            if started:
                with open(os.path.join(folder, name), "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
                lines += data.count(b"\n")
                size += len(data)
        return lines, size

    def test_nothing_lost_nothing_twice(self):
        b, b_port = self.start("b", "--write-key", "FWD")
        proxy = FaultProxy(self, {3: "500", 5: "429", 7: "hang"})
        proxy.target = b_port
        a_args = ("--forward", proxy.url, "--forward-write-key", "FWD", "--forward-timeout",
                  "1", "--max-bytes", "4K", "--keep", "2")
        a, a_port = self.start("a", *a_args)
        ports = [a_port]
        sent, answered, lock = set(), set(), threading.Lock()
        paused, stop = threading.Event(), threading.Event()

        def client(worker):
            number = 0
            while not stop.is_set():
                if paused.is_set():
                    time.sleep(0.01)
                    continue
                message_id = "w%d-%d" % (worker, number)
                number += 1
                with lock:
                    sent.add(message_id)
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", ports[-1], timeout=5)
                    if number % 2:
                        connection.request("GET", "/v1/pixel/track?writeKey=K&userId=u&event=e"
                                                  "&messageId=" + message_id)
                        ok = connection.getresponse().read() == pixel.GIF
                    else:
                        connection.request("POST", "/v1/track", json.dumps(
                            {"writeKey": "K", "userId": "u", "event": "e",
                             "messageId": message_id}), {"Content-Type": "application/json"})
                        ok = connection.getresponse().status == 200
                    connection.close()
                except (OSError, http.client.HTTPException):
                    ok = False   # A is down: not answered
                if ok:
                    with lock:
                        answered.add(message_id)
                time.sleep(0.01)

        clients = [threading.Thread(target=client, args=(worker,)) for worker in range(3)]
        for thread in clients:
            thread.start()
        self.addCleanup(stop.set)
        connection = http.client.HTTPConnection("127.0.0.1", a_port, timeout=5)
        connection.request("POST", "/v1/track", json.dumps(
            {"writeKey": "K", "userId": "u", "event": "e", "messageId": "poison",
             "properties": {"poison": True}}), {"Content-Type": "application/json"})
        self.assertEqual(connection.getresponse().status, 200)
        connection.close()
        # 500, 429, 400 and the hang come first; then kill -9 A holding a batch B took.
        self.assertTrue(wait_until(lambda: proxy.requests >= 12, timeout=40))
        held, release, drop = proxy.hold()
        self.assertTrue(held.wait(20))
        a.kill()
        a.wait()
        release.set()
        a, a_port = self.start("a", *a_args)
        ports.append(a_port)
        # Now kill -9 B with a batch written but never answered, and keep it down 10 s.
        self.assertTrue(wait_until(lambda: self.health(a_port)["forward"]["sent"] > 20,
                                   timeout=40))
        held, release, drop = proxy.hold()
        self.assertTrue(held.wait(20))
        b.kill()
        b.wait()
        drop.set()
        release.set()
        down_at = time.monotonic()
        time.sleep(3)
        paused.set()   # a still moment: /health's backlog against A's own files
        time.sleep(0.3)
        forward = self.health(a_port)["forward"]
        self.assertEqual((forward["lines_behind"], forward["bytes_behind"]),
                         self.unsent_by_the_log())
        self.assertGreater(forward["lines_behind"], 0)
        self.assertIsNotNone(forward["last_error"])
        paused.clear()
        time.sleep(max(0, 10 - (time.monotonic() - down_at)))
        b, b_port = self.start("b", "--write-key", "FWD")
        proxy.target = b_port
        time.sleep(2)
        stop.set()
        for thread in clients:
            thread.join()
        self.assertTrue(wait_until(lambda: self.health(a_port)["forward"]["lines_behind"] == 0,
                                   timeout=90), self.health(a_port))
        with open(os.path.join(self.dir, "b", "events.jsonl")) as handle:
            received = [json.loads(line) for line in handle]
        ids = [event["messageId"] for event in received]
        self.assertEqual(len(ids), len(set(ids)), "a duplicate in B's log")
        # The events carried K; B, which takes only FWD, had it from Basic auth alone.
        self.assertTrue(all(event["writeKey"] == "FWD" for event in received))
        self.assertEqual(answered - set(ids), set(), "answered by A, missing in B")
        self.assertEqual(set(ids) - sent, set())
        self.assertNotIn("poison", ids)
        with open(os.path.join(self.dir, "a", "rejects.jsonl")) as handle:
            refused = [json.loads(line) for line in handle]
        self.assertEqual([(line["reason"], line["event"]["messageId"]) for line in refused],
                         [("forward_rejected", "poison")])
        self.assertGreater(len(answered), 500)
        self.assertEqual(proxy.faults, {}, "every fault was injected")
        # The batch B wrote before its kill -9 came again, and the restarted B knew it.
        self.assertGreater(self.health(b_port)["deduped"], 0)
        # B took each batch only through Basic auth: A's lines carry no other key.
        with open(os.path.join(self.dir, "b", "rejects.jsonl")) as handle:
            self.assertEqual(handle.read(), "")
        print("\nforwarded %d events through 500, 429, 400, a hang, kill -9 of A and of B"
              % len(ids), file=sys.stderr)


class Metrics(unittest.TestCase):
    """A pixel.py process that took traffic, rotated and forwarded, scraped; the answer
    checked by Prometheus's own promtool, and its counters against the logs."""

    @soak
    def test_promtool_accepts_it_and_the_counters_match_the_logs(self):
        need(shutil.which("promtool"), "promtool (Debian's prometheus package)")
        folder = temp_dir(self, "pixel-metrics-")
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (400, {}, b"no") if any(event.get("event") == "poison" for event in events)
            else (200, {}, b"{}")))
        process, port = start_pixel(self, "--log", os.path.join(folder, "events.jsonl"),
                                    "--max-bytes", "2K", "--forward", receiver.url,
                                    "--metrics-token", "t0k3n")
        for number in range(40):
            kind = ("track", "page", "identify")[number % 3]
            fetch_gif(port, "/v1/pixel/%s?writeKey=k&userId=u&event=%s&messageId=m%d"
                      % (kind, "poison" if number == 7 else "e", number))
        for query in ("writeKey=k", "userId=u&event=e", "data=%%%"):
            fetch_gif(port, "/v1/pixel/track?" + query)
        polls = []

        def sent():
            polls.append(port)
            return fetch_json(port, "/health")["forward"]["lines_behind"] == 0

        self.assertTrue(wait_until(sent))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/metrics", headers={"Authorization": "Bearer t0k3n"})
        response = connection.getresponse()
        text = response.read().decode()
        connection.close()
        self.assertEqual(response.status, 200)
        check = subprocess.run(["promtool", "check", "metrics"], input=text,
                               capture_output=True, text=True, timeout=60)
        self.assertEqual((check.returncode, check.stdout + check.stderr), (0, ""))
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        lines = {"events": [], "rejects": []}
        for name in os.listdir(folder):
            log = "events" if name.startswith("events.jsonl") else "rejects"
            if not name.startswith(log + ".jsonl"):
                continue
            with open(os.path.join(folder, name)) as handle:
                lines[log] += [json.loads(line) for line in handle]
        for log in lines:
            self.assertEqual(samples['pixel_written_lines_total{log="%s"}' % log],
                             len(lines[log]))
        for kind in ("track", "page", "identify"):
            self.assertEqual(samples['pixel_events_total{type="%s"}' % kind],
                             sum(event["type"] == kind for event in lines["events"]))
        reasons = collections.Counter(line["reason"] for line in lines["rejects"])
        self.assertEqual({name: value for name, value in samples.items()
                          if name.startswith("pixel_rejections_total")},
                         {'pixel_rejections_total{reason="%s"}' % reason: count
                          for reason, count in reasons.items()})
        self.assertEqual(reasons["forward_rejected"], 1)
        rotated = [name for name in os.listdir(folder)
                   if name.startswith("events.jsonl.") and ROTATED.search(name)]
        self.assertGreater(len(rotated), 1)
        self.assertEqual(samples['pixel_rotations_total{log="events"}'], len(rotated))
        self.assertEqual(samples["pixel_forward_sent_events_total"], 39)
        self.assertEqual(samples["pixel_forward_backlog_events"], 0)
        requests = 43 + len(polls)   # the scrape itself is counted once it is answered
        self.assertEqual(samples["pixel_request_duration_seconds_count"], requests)
        self.assertEqual(samples['pixel_request_duration_seconds_bucket{le="+Inf"}'], requests)

    def test_the_readme_rules_and_scrape_config(self):
        need(shutil.which("promtool"), "promtool (Debian's prometheus package)")
        with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
            section = handle.read().split("## Metrics")[1].split("\n## ")[0]
        config, rules = re.findall(r"```yaml\n(.*?)```", section, re.S)
        folder = temp_dir(self, "pixel-promtool-")
        paths = {}
        for name, text in (("prometheus.yml", config), ("pixel.rules.yml", rules),
                           ("pixel-metrics-token", "t0k3n\n")):
            paths[name] = os.path.join(folder, name)
            with open(paths[name], "w") as handle:
                handle.write(text.replace("/etc/prometheus/", folder + "/"))
        for command in (["check", "rules", paths["pixel.rules.yml"]],
                        ["check", "config", paths["prometheus.yml"]]):
            result = subprocess.run(["promtool"] + command, capture_output=True, text=True,
                                    timeout=60)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(len(re.findall(r"^\s+- alert: ", rules, re.M)), 3)


def bind_mount(test, source, target):
    """mount --bind `source` onto `target` (a file onto a file, or a folder onto a folder),
    undone at cleanup even when the test fails: a real mount point, whose rename or unlink
    the kernel refuses (EBUSY), and from which a rename is cross-device (EXDEV: mv copies
    and deletes), as no mock could. Skips where mount is missing or not permitted."""
    try:
        result = subprocess.run(["mount", "--bind", source, target], capture_output=True,
                                text=True, timeout=30)
    except FileNotFoundError:
        test.skipTest("no mount here (util-linux)")
    if result.returncode:
        test.skipTest("cannot mount --bind here (%s)" % result.stderr.strip())
    test.addCleanup(subprocess.run, ["umount", "-l", target], capture_output=True)


def made_folder(*parts):
    path = os.path.join(*parts)
    os.makedirs(path)
    return path


@soak
class BindMounts(unittest.TestCase):
    """A log that a container or host bind-mounts, as a file or a folder, under a real
    pixel.py process that rotates (--max-bytes) and forwards; and the mv of a log onto or
    off such a mount, which crosses devices (EXDEV): mv copies the file, then deletes it.
    Soak: 1.6 s of processes; BindMountedWriter holds the fix in the plain run."""

    def setUp(self):
        self.dir = temp_dir(self, "pixel-bind-")
        self.stderr_path = os.path.join(self.dir, "stderr.txt")

    def start(self, log, receiver, *argv):
        with open(self.stderr_path, "a") as stderr:
            return start_pixel(self, "--log", log, "--max-bytes", "1000", "--forward",
                               receiver.url, *argv, stderr=stderr)

    def said(self):
        return read_text(self.stderr_path).splitlines()

    def answer(self, port, numbers):
        for number in numbers:
            fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=u&event=e&messageId=m%d"
                      % number)

    def hup(self, process, count):
        """SIGHUP, and wait for the `count`th "reopened" line: the logs reopened."""
        process.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: sum("reopened" in line for line in self.said())
                                   == count, 5))

    def ids_in(self, paths):
        return sorted((event["messageId"] for path in paths
                       for event in map(json.loads, read_bytes(path).splitlines())),
                      key=lambda id: int(id[1:]))

    def test_a_bind_mounted_log_file_is_written_on_and_forwarded_saying_so_once(self):
        # A file mounted on its own can be neither renamed nor removed (EBUSY): each rotation
        # fails. pixel writes on past --max-bytes, says so once (not a traceback, not a line
        # a request), and through a SIGHUP and a restart forwards every answered event once.
        source, logs = made_folder(self.dir, "disk"), made_folder(self.dir, "logs")
        log = os.path.join(logs, "events.jsonl")
        open(os.path.join(source, "events.jsonl"), "ab").close()
        open(log, "ab").close()
        bind_mount(self, os.path.join(source, "events.jsonl"), log)
        receiver = FakeReceiver(self)
        process, port = self.start(log, receiver)
        self.answer(port, range(10))
        self.hup(process, 1)
        self.answer(port, range(10, 20))
        self.assertTrue(wait_until(lambda: len(receiver.taken) >= 20, 5))
        process.terminate()
        self.assertEqual(process.wait(10), 0)
        process, port = self.start(log, receiver)   # it starts on the mount point, too
        self.answer(port, range(20, 25))
        self.assertTrue(wait_until(lambda: len(receiver.taken) >= 25, 5))
        self.assertEqual(fetch_json(port, "/health")["write_errors"], 0)
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(25)])
        self.assertEqual(self.ids_in([os.path.join(source, "events.jsonl")]),
                         ["m%d" % number for number in range(25)])
        self.assertGreater(os.path.getsize(log), 4000)   # past --max-bytes: never rotated
        self.assertEqual(pixel.pixel_rotations(log), [])
        busy = "pixel: cannot rotate %s: Device or resource busy (a file mounted on its own " \
            "cannot be renamed: mount its folder); writing on past --max-bytes" % log
        self.assertEqual(self.said(), [
            busy, "pixel: reopened %s and %s (SIGHUP)" % (log, os.path.join(logs,
                                                                            "rejects.jsonl")),
            busy])   # once a start: at most once in 10 s (BindMountedWriter)

    def moved_across_a_mount(self, log, moved_to):
        """A pixel writing `log` answers 24 pixels while its receiver holds the first batch;
        after the 12th, `mv` moves its live file to `moved_to`, across a mount (a copy, then a
        delete of the original); after the 18th, a SIGHUP. Then the receiver takes all: each
        event arrives once, in order, and each is on disk once, in `moved_to` or the log's."""
        receiver, held, hold = receiver_holding(self, "m0")
        process, port = self.start(log, receiver)
        self.answer(port, range(12))
        self.assertTrue(held.wait(5))   # m1-m11 wait in the file mv deletes
        inode = os.stat(log).st_ino
        moved = subprocess.run(["mv", log, moved_to], capture_output=True, text=True)
        self.assertEqual((moved.returncode, moved.stderr), (0, ""))
        self.assertNotEqual(os.stat(moved_to).st_ino, inode)   # copied: EXDEV, not renamed
        self.answer(port, range(12, 18))
        self.hup(process, 1)
        self.answer(port, range(18, 24))
        hold.set()
        self.assertTrue(wait_until(lambda: len(receiver.taken) >= 24, 5))
        time.sleep(0.2)   # nothing more, nor again
        expected = ["m%d" % number for number in range(24)]
        self.assertEqual(receiver.ids(), expected)
        self.assertGreaterEqual(len(pixel.pixel_rotations(log)), 2)
        self.assertEqual(self.ids_in([moved_to, log] + pixel.pixel_rotations(log)), expected)
        self.assertEqual([line for line in self.said() if "reopened" not in line], [])
        self.assertEqual(fetch_json(port, "/health")["write_errors"], 0)

    def test_a_log_moved_off_a_bind_mounted_folder_is_sent_whole_once(self):
        # In a bind-mounted folder, rotation works as in any folder. mv of the live file off
        # the mount is a copy and a delete: the events written before the delete are sent
        # from pixel's descriptor of the deleted file, those after it go to a new file.
        source, logs = made_folder(self.dir, "disk"), made_folder(self.dir, "logs")
        bind_mount(self, source, logs)
        self.moved_across_a_mount(os.path.join(logs, "events.jsonl"),
                                  os.path.join(made_folder(self.dir, "aside"), "moved.jsonl"))

    def test_a_log_moved_onto_a_bind_mounted_folder_is_sent_whole_once(self):
        source, mounted = made_folder(self.dir, "disk"), made_folder(self.dir, "mounted")
        bind_mount(self, source, mounted)
        self.moved_across_a_mount(os.path.join(made_folder(self.dir, "logs"), "events.jsonl"),
                                  os.path.join(mounted, "moved.jsonl"))


class BindMountedWriter(unittest.TestCase):
    """The LogWriter alone on a file bind-mounted on its own, whose rename fails each time."""

    def test_a_rotation_that_cannot_rename_is_said_once_an_interval(self):
        # 200 writes, a clock's half second apart, all past --max-bytes: each second a
        # rotation is tried, and fails; 100 s say it 10 times, not 100 or 200.
        folder = temp_dir(self, "pixel-bind-")
        path, source = os.path.join(folder, "events.jsonl"), os.path.join(folder, "disk.jsonl")
        for name in (path, source):
            open(name, "ab").close()
        bind_mount(self, source, path)
        now, stderr = [T0], io.StringIO()
        writer = pixel.LogWriter(path, max_bytes=300, clock=lambda: now[0],
                                 reporter=pixel.Reporter(stderr, clock=lambda: now[0]))
        self.addCleanup(writer.close)
        renames = []
        real_rename = os.rename

        def rename(*args):
            renames.append(args)
            return real_rename(*args)

        with unittest.mock.patch("os.rename", rename):
            for number in range(200):
                self.assertEqual(writer.write([log_event(number)]), 1)
                now[0] += 0.5
        self.assertEqual(read_bytes(source).count(b"\n"), 200)
        self.assertEqual((len(renames), writer.rotations), (100, 0))
        lines = stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 10)
        self.assertTrue(all("Device or resource busy (a file mounted on its own" in line
                            for line in lines), lines)


_PROMETHEUS_SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)'
                                r'(\{[a-zA-Z_]\w*="(?:[^"\\\n]|\\[\\"n])*"'
                                r'(?:,[a-zA-Z_]\w*="(?:[^"\\\n]|\\[\\"n])*")*\})? (\S+)\Z')


def prometheus_samples(test, text):
    """{(name, labels): value} of `text`, checked against Prometheus's text format 0.0.4:
    one HELP and TYPE a family, before its samples; each sample of a family declared, its
    labels quoted and escaped, its value a number, no series twice."""
    test.assertTrue(text.endswith("\n"), text[-200:])
    kinds, samples = {}, {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            test.assertRegex(line, r"\A# HELP [a-zA-Z_:][a-zA-Z0-9_:]* ")
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE "):].split(" ")
            test.assertNotIn(name, kinds)
            test.assertIn(kind, ("counter", "gauge", "histogram", "summary", "untyped"))
            kinds[name] = kind
        else:
            match = _PROMETHEUS_SAMPLE.match(line)
            test.assertIsNotNone(match, line)
            name, labels, value = match.groups()
            family = name if name in kinds else re.sub(r"_(bucket|sum|count)\Z", "", name)
            test.assertIn(family, kinds, line)
            test.assertNotIn((name, labels), samples, line)
            samples[name, labels] = float(value)   # a ValueError if no number
    return samples


def exchange(port, data, timeout=5):
    """(status, headers, body) of the one answer a server on `port` sends to `data` on a
    fresh connection, read to its close, with nothing after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        stream = sock.makefile("rb")
        status, headers, body, _ = read_response(stream)
        rest = stream.read()
        stream.close()
    if rest:
        raise AssertionError("more after the answer: %r" % rest[:200])
    return status, headers, body


class PublicHealth(unittest.TestCase):
    """/health (always open) and /metrics (open unless --metrics-token) of a pixel.py
    exposed to anyone, attacked: what they show, and what hostile requests get back."""

    SECRETS = ("S3cretForwardKey", "t0k3n-for-metrics")   # --forward-write-key, --metrics-token

    def start(self, receiver, *argv, stderr=subprocess.DEVNULL):
        self.dir = temp_dir(self, "pixel-health-")
        return start_pixel(self, "--log", os.path.join(self.dir, "events.jsonl"), "--forward",
                           receiver.url, "--forward-write-key", self.SECRETS[0],
                           "--metrics-token", self.SECRETS[1], "--write-key", "K", *argv,
                           stderr=stderr)

    def assertNoSecret(self, data):
        for secret in self.SECRETS:
            self.assertNotIn(secret.encode(), data)

    def test_the_forward_write_key_is_named_never_shown(self):
        # A receiver that refuses --forward-write-key (401: paused) or is no receiver (404:
        # receiver_fault), quoting the key: /health answered anyone with the key itself, in
        # paused_write_key and last_error. Segment's server source takes events under it.
        secret = self.SECRETS[0]
        for status, field in ((401, "paused_write_key"), (404, "receiver_fault")):
            with self.subTest(status=status):
                receiver = FakeReceiver(self, lambda receiver, user, events, status=status: (
                    status, {}, b"no source for writeKey " + user.encode()))
                _, port = self.start(receiver)
                fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=u&event=e")
                self.assertTrue(wait_until(lambda: fetch_json(port, "/health")["forward"][
                    field], 5))
                self.assertEqual(receiver.posts[0][1], secret)   # sent under it, still
                forward = fetch_json(port, "/health")["forward"]
                self.assertIn("no source for writeKey (--forward-write-key)",
                              forward["last_error"])
                if status == 401:
                    self.assertEqual(forward["paused_write_key"], "(--forward-write-key)")
                for request in (b"GET /health", b"HEAD /health", b"GET /metrics"):
                    answer = exchange(port, request + b" HTTP/1.1\r\nHost: a\r\nConnection: "
                                      b"close\r\nAuthorization: Bearer %s\r\n\r\n"
                                      % self.SECRETS[1].encode())
                    self.assertEqual(answer[0], 200)
                    self.assertNoSecret(b"%r" % (answer,))

    def test_hostile_requests_during_rotations_and_a_sighup_get_well_formed_answers(self):
        # Four clients send each request below over and over, while slow clients hold
        # connections open, pixels rotate the log and a SIGHUP reopens it: each answer is
        # whole, /health's JSON, /metrics' Prometheus text, any other a fixed text; none
        # quotes a secret; stderr says nothing but the SIGHUP's line.
        receiver = FakeReceiver(self)
        stderr = tempfile.TemporaryFile("w+")
        self.addCleanup(stderr.close)
        process, port = self.start(receiver, "--max-bytes", "1000", stderr=stderr)
        bearer = b"Authorization: Bearer %s\r\n" % self.SECRETS[1].encode()
        close = b"Host: a\r\nConnection: close\r\n"
        cases = [   # (request, status, what the body is)
            (b"GET /health HTTP/1.1\r\n" + close + b"\r\n", 200, "health"),
            (b"GET /health?x HTTP/1.1\r\n" + close + b"\r\n", 200, "health"),
            (b"GET /health?" + b"%00%ff%22%0d%0a<x>&a=b&a=" * 300 + b" HTTP/1.1\r\n" + close
             + b"\r\n", 200, "health"),
            (b"GET /health HTTP/1.1\r\n" + close + b"User-Agent: \xff\xfe<x>" + b"u" * 8000
             + b"\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n", 200, "health"),
            (b"GET http://elsewhere/health HTTP/1.1\r\n" + close + b"\r\n", 200, "health"),
            (b"GET /health HTTP/1.0\r\n\r\n", 200, "health"),
            (b"HEAD /health HTTP/1.1\r\n" + close + b"\r\n", 200, ""),
            (b"GET /metrics HTTP/1.1\r\n" + close + bearer + b"\r\n", 200, "metrics"),
            (b"GET /metrics?x=%22} HTTP/1.1\r\n" + close + bearer + b"\r\n", 200, "metrics"),
            (b"HEAD /metrics HTTP/1.1\r\n" + close + bearer + b"\r\n", 200, ""),
            (b"GET /metrics HTTP/1.1\r\n" + close + b"\r\n", 401, "Unauthorized"),
            (b"GET /metrics HTTP/1.1\r\n" + close + bearer[:-2] + b"X\r\n\r\n", 401,
             "Unauthorized"),
            (b"GET /health/ HTTP/1.1\r\n" + close + b"\r\n", 404, "Not Found"),
            (b"GET /x/../health HTTP/1.1\r\n" + close + b"\r\n", 404, "Not Found"),
            (b"POST /health HTTP/1.1\r\n" + close + b"Content-Length: 2\r\n\r\nab", 405,
             "Method Not Allowed"),
            (b"OPTIONS /metrics HTTP/1.1\r\n" + close + b"\r\n", 405, "Method Not Allowed"),
            (b"TRACE /health HTTP/1.1\r\n" + close + b"\r\n", 405, "Method Not Allowed"),
            (b"GET /health?" + b"a" * 70000 + b" HTTP/1.1\r\n" + close + b"\r\n", 414,
             http.HTTPStatus(414).phrase),   # "URI Too Long" from Python 3.13
            (b"GET /health HTTP/1.1\r\n" + close + b"X: " + b"y" * 70000 + b"\r\n\r\n", 431,
             "Request Header Fields Too Large"),
            (b"GET /health HTTP/1.1\r\n" + close + b"X: y\r\n" * 500 + b"\r\n", 431,
             "Request Header Fields Too Large"),
            (b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", 400,
             "Bad Request"),
            (b"GET /health\r\n\r\n", 400, "Bad Request"),
        ]
        slow = []
        for _ in range(5):   # a head begun, never ended
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.addCleanup(sock.close)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n")
            slow.append(sock)
        problems, rounds, done = [], [], threading.Event()

        def check(request, expected, body_is):
            status, headers, body = exchange(port, request)
            self.assertEqual(status, expected)
            self.assertNoSecret(b"%r%r" % (headers, body))
            if body_is == "health":
                self.assertIn(json.loads(body)["status"], ("ok", "degraded"))
            elif body_is == "metrics":
                prometheus_samples(self, body.decode("utf-8"))
            else:   # a HEAD's empty body, or the status's own phrase
                self.assertEqual(body, body_is.encode() + b"\n" if body_is else b"")
                self.assertGreater(int(headers["content-length"]), 0)

        def client():
            while True:   # each request at least once
                for case in cases:
                    try:
                        check(*case)
                    except (AssertionError, OSError, ValueError) as error:
                        problems.append((case[0][:40], repr(error)[:300]))
                rounds.append(1)
                if done.is_set():
                    return

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            for number in range(30):
                fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=u&event=e&messageId=m%d"
                          % number)
                if number == 15:
                    process.send_signal(signal.SIGHUP)
        finally:
            done.set()
            for thread in clients:
                thread.join(30)
        self.assertEqual(problems, [])
        self.assertGreaterEqual(len(rounds), 4)
        self.assertGreaterEqual(len(pixel.pixel_rotations(os.path.join(self.dir,
                                                                       "events.jsonl"))), 3)
        self.assertTrue(wait_until(lambda: prometheus_samples(self, exchange(
            port, cases[7][0])[2].decode())["pixel_forward_sent_events_total", None] == 30, 5))
        self.assertEqual(len(receiver.taken), 30)

        def said():
            stderr.seek(0)
            return stderr.read().splitlines()

        self.assertTrue(wait_until(said, 5))
        self.assertEqual(len(said()), 1, said())
        self.assertRegex(said()[0], r"\Apixel: reopened .* \(SIGHUP\)\Z")


def make_certificates(folder):
    """A throwaway CA and a certificate it signed for 127.0.0.1, made with openssl, with the
    extensions Python 3.13's default context demands (VERIFY_X509_STRICT)."""
    def run(*argv):
        subprocess.run(["openssl"] + list(argv), cwd=folder, check=True,
                       capture_output=True, timeout=60)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=pixel test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(folder, "san.txt"), "w") as handle:
        handle.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                     "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                     "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.txt")
    return [os.path.join(folder, name) for name in ("ca.pem", "server.pem", "server.key")]


_CERTIFICATES = []


def copied_certificates(folder):
    """make_certificates' three files copied into `folder`: made once a run (three openssl
    runs a test otherwise), for tests that need a pair, not a new CA."""
    if not _CERTIFICATES:
        made = tempfile.mkdtemp(prefix="pixel-certificates-")
        atexit.register(shutil.rmtree, made, True)
        _CERTIFICATES.extend(make_certificates(made))
    return [shutil.copy(path, folder) for path in _CERTIFICATES]


class ForwardOverTls(unittest.TestCase):
    def test_a_receiver_with_a_private_ca(self):
        import ssl
        need(shutil.which("openssl"), "openssl")
        folder = temp_dir(self, "pixel-tls-")
        ca, certificate, key = copied_certificates(folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        receiver = FakeReceiver(self, context=context)
        untrusting, port = start_pixel(self, "--log", os.path.join(folder, "u.jsonl"),
                                       "--rejects", os.path.join(folder, "u-rejects.jsonl"),
                                       "--forward", receiver.url)
        trusting, trusting_port = start_pixel(self, "--log", os.path.join(folder, "t.jsonl"),
                                              "--rejects", os.path.join(folder, "t-rej.jsonl"),
                                              "--forward", receiver.url, "--forward-ca", ca)
        for target in (port, trusting_port):
            connection = http.client.HTTPConnection("127.0.0.1", target, timeout=10)
            connection.request("GET", "/v1/pixel/track?writeKey=K&userId=u&event=e&"
                                      "messageId=tls-%d" % target)
            self.assertEqual(connection.getresponse().read(), pixel.GIF)
            connection.close()
        self.assertTrue(wait_until(lambda: receiver.ids() == ["tls-%d" % trusting_port]))
        self.assertEqual(receiver.posts[0][1], "K")

        def forward_state():
            return fetch_json(port, "/health")["forward"]

        self.assertTrue(wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in
                                   (forward_state()["last_error"] or "")))
        self.assertIn("for a private CA's certificate: --forward-ca FILE",
                      forward_state()["last_error"])
        self.assertEqual(forward_state()["lines_behind"], 1)
        self.assertEqual(receiver.ids(), ["tls-%d" % trusting_port])
        # A backfill stops at once, saying how (the newcomer's retried for ever), and is
        # sent by the same command with --ca.
        backfill = [sys.executable, PIXEL_RUN, "forward", "--to", receiver.url,
                    os.path.join(folder, "u.jsonl")]
        result = subprocess.run(backfill, capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", result.stderr)
        self.assertIn("for a private CA's certificate: --ca FILE", result.stderr)
        result = subprocess.run(backfill + ["--ca", ca], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sorted(receiver.ids()), sorted(["tls-%d" % trusting_port,
                                                         "tls-%d" % port]))


class ForwardingSeamsProcess(unittest.TestCase):
    """Issue 19's forwarding items through pixel.py itself: the keys main() hands the
    forwarder, the URL as given, a stop, and `pixel.py forward`'s share of each."""

    def setUp(self):
        self.dir = temp_dir(self, "pixel-seams-")

    def hanging_receiver(self):
        release = threading.Event()
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            release.wait(30), (200, {}, b"{}"))[1])
        self.addCleanup(release.set)   # before the receiver's own cleanups: LIFO
        return receiver

    def backfill(self, url, *argv):
        return subprocess.Popen([sys.executable, PIXEL_RUN, "forward", "--to", url] +
                                list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def log_file(self, name, lines):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as handle:
            handle.write(b"".join(lines))
        return path

    def test_a_sigterm_is_not_reported_as_a_receiver_fault(self):
        receiver = self.hanging_receiver()
        process, port = start_pixel(self, "--log", os.path.join(self.dir, "events.jsonl"),
                                    "--forward", receiver.url, stderr=subprocess.PIPE)
        self.addCleanup(process.stderr.close)
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=u&event=e")
        self.assertTrue(wait_until(lambda: len(receiver.posts) == 1))   # in flight
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(10), 0)
        self.assertLess(time.monotonic() - started, 3)
        stderr = process.stderr.read()
        self.assertNotIn("no whole answer", stderr)
        self.assertNotIn("forwarding to", stderr)

    def test_a_sigterm_stops_a_backfill_at_once_and_quietly(self):
        receiver = self.hanging_receiver()
        path = self.log_file("events.jsonl.1", [log_event(0)])
        process = self.backfill(receiver.url, path)
        self.addCleanup(process.kill)
        self.assertTrue(wait_until(lambda: len(receiver.posts) == 1))
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
        self.assertEqual(process.returncode, 1)
        self.assertLess(time.monotonic() - started, 3, "waited for the post's timeout")
        self.assertNotIn("no whole answer", stderr)
        self.assertIn("run the same command again", stdout)

    def test_the_write_keys_configured_pause_and_others_are_set_aside(self):
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (401, {}, b"unknown key") if user in ("J", "junk") else (200, {}, b"{}")))
        log = os.path.join(self.dir, "events.jsonl")
        process, port = start_pixel(self, "--log", log, "--write-key", "K", "--write-key", "J",
                                    "--forward", receiver.url)
        for number, key in enumerate(("K", "J", "K")):
            fetch_gif(port, "/v1/pixel/track?writeKey=%s&userId=u&event=e&messageId=m%d"
                      % (key, number))
        self.assertTrue(wait_until(lambda: fetch_json(port, "/health")["forward"][
            "paused_write_key"] == "J"))
        self.assertEqual(receiver.ids(), ["m0"])   # m2 waits behind J's: the order is kept
        self.assertEqual(fetch_json(port, "/health")["status"], "degraded")
        with open(os.path.join(self.dir, "rejects.jsonl")) as handle:
            self.assertEqual(handle.read(), "")
        # `pixel.py forward` sets aside a key it was not given, and goes on.
        path = self.log_file("old.jsonl", [log_event(10), log_event(11, key="junk"),
                                           log_event(12)])
        backfill = self.backfill(receiver.url, "--rejects", os.path.join(self.dir, "r.jsonl"),
                                 path)
        stdout, stderr = backfill.communicate(timeout=60)
        self.assertEqual(backfill.returncode, 0, stderr)
        self.assertIn("2 event(s) sent to %s, 1 refused (written to %s)" % (
            receiver.url, os.path.join(self.dir, "r.jsonl")), stdout)
        self.assertIn("which is not one of --write-key: its events", stderr)   # the flag it has
        self.assertEqual(receiver.ids()[-2:], ["m10", "m12"])
        with open(os.path.join(self.dir, "r.jsonl")) as handle:
            self.assertEqual([(line["reason"], line["event"]["messageId"]) for line in
                              map(json.loads, handle)], [("forward_unauthorized", "m11")])

    def test_a_url_given_with_v1_batch_is_posted_to_once(self):
        receiver = FakeReceiver(self)
        process, port = start_pixel(self, "--log", os.path.join(self.dir, "events.jsonl"),
                                    "--forward", receiver.url + "/v1/batch/")
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=u&event=e&messageId=m0")
        self.assertTrue(wait_until(lambda: receiver.ids() == ["m0"]))
        self.assertEqual(receiver.posts[0][0], "/v1/batch")
        self.assertEqual(fetch_json(port, "/health")["forward"]["target"], receiver.url)

    def test_a_backfill_to_a_url_with_nothing_there_stops_and_names_it(self):
        receiver = FakeReceiver(self, lambda receiver, user, events: (404, {}, b"Not Found"))
        path = self.log_file("events.jsonl.1", [log_event(0)])
        process = self.backfill(receiver.url + "/api", "--write-key", "K", path)
        stdout, stderr = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 1)
        self.assertEqual(len(receiver.posts), 1, "retried a 404")
        self.assertIn("%s/api/v1/batch answered 404 Not Found: nothing at this URL takes "
                      "batches" % receiver.url, stderr)


def listen_refused(test, **options):
    """What pixel.listen(configure(**options)) refuses with, on port 0 pinned to no CPU, in
    this process: its StartupError's words. What listen changes in the process is put back."""
    test.addCleanup(threading.stack_size, threading.stack_size())
    limits = pixel.resource.getrlimit(pixel.resource.RLIMIT_NOFILE)
    test.addCleanup(pixel.resource.setrlimit, pixel.resource.RLIMIT_NOFILE, limits)
    with test.assertRaises(pixel.StartupError) as caught:
        pixel.listen(pixel.configure(port=0, cpu="none", **options),
                     pixel.Reporter(io.StringIO()))
    return str(caught.exception)


class Tls(unittest.TestCase):
    """--certfile and --keyfile: HTTPS from pixel.py itself, with a throwaway CA."""

    def setUp(self):
        import ssl
        need(shutil.which("openssl"), "openssl")
        self.dir = temp_dir(self, "pixel-https-")
        self.ca, certificate, key = copied_certificates(self.dir)
        self.certfile = os.path.join(self.dir, "live.pem")
        self.keyfile = os.path.join(self.dir, "live.key")
        shutil.copy(certificate, self.certfile)
        shutil.copy(key, self.keyfile)
        self.ssl = ssl

    def start(self, *extra):
        self.stderr = open(os.path.join(self.dir, "stderr"), "w+")
        self.addCleanup(self.stderr.close)
        return start_pixel(self, "--log", os.path.join(self.dir, "events.jsonl"),
                           "--certfile", self.certfile, "--keyfile", self.keyfile,
                           *extra, stderr=self.stderr)

    def https(self, port, target, ca=None):
        context = self.ssl.create_default_context(cafile=ca or self.ca)
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                                 context=context)
        try:
            connection.request("GET", target)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def test_a_pixel_over_https_and_plain_http_refused_cleanly(self):
        process, port = self.start()
        self.assertEqual(self.https(port, "/v1/pixel/track?writeKey=k&userId=u&event=e"),
                         (200, pixel.GIF))
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /v1/pixel/track?writeKey=k&userId=u&event=e HTTP/1.1\r\n"
                     b"Host: x\r\n\r\n")
        status, headers, body, _ = read_response(sock.makefile("rb"))
        self.assertEqual((status, body), (400, b"This port speaks HTTPS: use https://.\n"))
        self.assertEqual(sock.recv(1), b"")   # and closed
        sock.close()
        context = self.ssl.create_default_context(cafile=self.ca)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                self.assertEqual(tls.selected_alpn_protocol(), None)
                self.assertIn(tls.version(), ("TLSv1.2", "TLSv1.3"))
        health = json.loads(self.https(port, "/health")[1])
        self.assertEqual((health["accepted"], health["tls_handshake_failures"]), (1, 1))
        with open(os.path.join(self.dir, "events.jsonl")) as handle:
            self.assertEqual(len(handle.readlines()), 1)

    @unittest.skipUnless(os.path.exists("/proc/self/stat"), "reads /proc")
    def test_connections_fit_the_open_file_limit_with_two_descriptors_each(self):
        # The attack pass: a TLS connection holds two descriptors, but the cap was counted
        # at one. 79 idle clients took every descriptor of 164, below the 100 slots, so none
        # was evicted: accept() failed in a loop at 100% CPU and new clients timed out.
        process = subprocess.Popen(
            [sys.executable, "-c", "import resource, runpy, sys; resource.setrlimit("
             "resource.RLIMIT_NOFILE, (100, 164)); sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')", PIXEL_PY, "--port", "0",
             "--cpu", "none", "--log", os.path.join(self.dir, "events.jsonl"), "--certfile",
             self.certfile, "--keyfile", self.keyfile, "--max-connections", "100",
             "--idle-timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.addCleanup(Process.reap, process)
        port = int(re.search(r":(\d+)/", process.stdout.readline()).group(1))
        context = self.ssl.create_default_context(cafile=self.ca)
        held = []
        for number in range(90):   # past the 50 slots: the longest idle are closed for them
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
            held[-1].sendall(b"GET /v1/pixel/track?writeKey=k&userId=u&event=e&messageId=m%d "
                             b"HTTP/1.1\r\nHost: x\r\n\r\n" % number)
            self.assertTrue(held[-1].recv(4096).startswith(b"HTTP/1.1 200 OK"), number)
        self.addCleanup(lambda: [sock.close() for sock in held])

        def cpu_seconds():
            with open("/proc/%d/stat" % process.pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu_seconds()
        self.assertEqual(self.https(port, "/v1/pixel/track?writeKey=k&userId=u&event=e&"
                                          "messageId=last"), (200, pixel.GIF))
        time.sleep(0.5)   # a spinning accept() would spend all of it
        self.assertLess(cpu_seconds() - before, 0.3)
        process.terminate()
        self.assertEqual(process.wait(10), 0)
        self.assertIn("the open-file limit is 164, so at most 50 connections are served at "
                      "once", process.stderr.read())
        with open(os.path.join(self.dir, "events.jsonl")) as handle:
            self.assertEqual(len(handle.readlines()), 91)

    def test_the_settings_document_over_https_says_https(self):
        process, port = self.start()
        context = self.ssl.create_default_context(cafile=self.ca)
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                                 context=context)
        self.addCleanup(connection.close)
        connection.request("GET", "/v1/projects/K/settings")
        response = connection.getresponse()
        destination = json.loads(response.read())["integrations"]["Segment.io"]
        self.assertEqual((response.status, destination["protocol"], destination["apiHost"]),
                         (200, "https", "127.0.0.1:%d/v1" % port))
        self.assertEqual(response.getheader("Cache-Control"), "no-store")

    def test_plain_http_gets_a_content_length_that_counts_its_body(self):
        process, port = self.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while True:   # everything until the server closes, not what the header promises
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head + b"\r\n").group(1)
        self.assertEqual(int(length), len(body))
        self.assertEqual(body, b"This port speaks HTTPS: use https://.\n")

    def test_plain_http_that_does_not_start_with_a_letter(self):
        process, port = self.start()
        for start in (b"\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"1234\r\n\r\n"):
            with self.subTest(start):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(start)
                    status, _, body, _ = read_response(sock.makefile("rb"))
                    self.assertEqual(status, 400)

    @soak
    def test_tls_connections_are_evicted_and_stopped_like_plain_ones(self):
        process, port = self.start("--max-connections", "2", "--idle-timeout", "8",
                                   "--request-timeout", "1")
        context = self.ssl.create_default_context(cafile=self.ca)
        kept = []
        for _ in range(2):   # two idle kept-alive connections take both slots
            connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                                     context=context)
            connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=kept")
            self.assertEqual(connection.getresponse().read(), pixel.GIF)
            kept.append(connection)
        started = time.monotonic()
        self.assertEqual(self.https(port, "/health")[0], 200)
        self.assertLess(time.monotonic() - started, 1.0, "an idle one was closed to make room")
        stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
        for sock in stalled:
            sock.sendall(b"\x16\x03\x01")   # a handshake that goes no further
        started = time.monotonic()
        self.assertEqual(self.https(port, "/health")[0], 200)
        self.assertLess(time.monotonic() - started, 1.0, "a stalled handshake was closed")
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(10), 0)
        self.assertLess(time.monotonic() - started, 2.5, "a stop waits one timeout at most")
        for connection in kept:
            connection.close()
        for sock in stalled:
            sock.close()

    def test_a_certificate_path_that_is_not_a_file_is_refused_on_reload(self):
        process, port = self.start()
        os.remove(self.certfile)
        os.mkfifo(self.certfile)   # an open() of it would wait for a writer for ever
        for _ in range(3):
            process.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "not a regular file" in
                                   read_text(self.stderr.name)))
        self.assertEqual(self.https(port, "/health")[0], 200)
        with open("/proc/%d/status" % process.pid) as handle:
            threads = int(re.search(r"Threads:\s+(\d+)", handle.read()).group(1))
        self.assertLess(threads, 8, "no reload left waiting")

    @soak
    def test_a_stalled_handshake_holds_its_slot_no_longer_than_the_request_timeout(self):
        process, port = self.start("--request-timeout", "1")
        silent = socket.create_connection(("127.0.0.1", port))
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"\x16\x03\x01\x02\x00\x01")   # the start of a ClientHello
        started = time.monotonic()
        for sock in (silent, partial):
            sock.settimeout(5)
            try:
                self.assertEqual(sock.recv(100), b"")
            except ConnectionResetError:
                pass   # cut off, as it should be
            sock.close()
        self.assertLess(time.monotonic() - started, 2.5)
        self.assertEqual(json.loads(self.https(port, "/health")[1])["tls_handshake_failures"],
                         2)
        self.assertEqual(self.stderr.tell(), 0, "a failed handshake is counted, not printed")

    def test_sighup_loads_a_new_pair_and_a_bad_one_keeps_the_old(self):
        process, port = self.start()
        renewed = temp_dir(self, "pixel-renewed-")
        new_ca, new_certificate, new_key = make_certificates(renewed)
        shutil.copy(new_certificate, self.certfile)
        shutil.copy(new_key, self.keyfile)
        process.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: self.reloaded(port, new_ca)))
        with self.assertRaises(self.ssl.SSLError):
            self.https(port, "/health")   # the old CA no longer vouches for what it serves
        with open(self.certfile, "w") as handle:
            handle.write("not a certificate\n")
        process.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "still using the certificate and key loaded before" in
                                   read_text(self.stderr.name)))
        self.assertEqual(self.https(port, "/health", ca=new_ca)[0], 200)

    def bad_pairs(self):
        """(case, certfile, keyfile, what pixel must say) for pairs that cannot load, each
        made by openssl: a certificate that is not PEM (text, DER), a key that does not match,
        an encrypted key, the two swapped, a file that cannot be read."""
        folder = temp_dir(self, "pixel-bad-tls-")

        def made(name, *argv):
            path = os.path.join(folder, name)
            subprocess.run(["openssl"] + list(argv) + ["-out", path], check=True,
                           capture_output=True, timeout=60)
            return path

        other_key = made("other.key", "genpkey", "-algorithm", "EC", "-pkeyopt",
                         "ec_paramgen_curve:prime256v1")
        encrypted = made("encrypted.key", "pkey", "-in", self.keyfile, "-aes256",
                         "-passout", "pass:secret")
        der = made("server.der", "x509", "-in", self.certfile, "-outform", "DER")
        # An RSA key for this ECDSA certificate: OpenSSL says NO_CERTIFICATE_ASSIGNED, not
        # KEY_VALUES_MISMATCH. What Windows exports: PKCS#12, DER too, but no x509 or pkey
        # -inform DER reads it.
        rsa_key = made("rsa.key", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                       "rsa_keygen_bits:2048")
        bundle = made("server.p12", "pkcs12", "-export", "-in", self.certfile, "-inkey",
                      self.keyfile, "-passout", "pass:")
        text = os.path.join(folder, "text.pem")
        with open(text, "w") as handle:
            handle.write("not a certificate\n")
        missing = os.path.join(folder, "missing.key")
        huge = os.path.join(folder, "huge.key")   # OpenSSL read all 130 MB, at every SIGHUP
        with open(huge, "wb") as handle:
            handle.write(b"-----BEGIN PRIVATE KEY-----\n")
            handle.truncate(pixel.MAX_PEM_BYTES + 1)
        cases = [("not PEM", text, self.keyfile, text + " is not a PEM certificate"),
                 ("huge", self.certfile, huge, "%s is %d bytes, more than a PEM private key "
                  "needs" % (huge, pixel.MAX_PEM_BYTES + 1)),
                 ("DER", der, self.keyfile, der + " is DER, not PEM"),
                 ("mismatch", self.certfile, other_key, "the key %s does not match the "
                  "certificate %s" % (other_key, self.certfile)),
                 ("a key of another type", self.certfile, rsa_key, "the key %s does not match "
                  "the certificate %s" % (rsa_key, self.certfile)),
                 ("PKCS#12", bundle, self.keyfile, "%s is a PKCS#12 bundle (.p12, .pfx), not "
                  "PEM: take the chain and the key out of it (openssl pkcs12 -in %s -nokeys"
                  % (bundle, bundle)),
                 ("encrypted", self.certfile, encrypted, encrypted + " is encrypted with a "
                  "passphrase"),
                 ("swapped", self.keyfile, self.certfile, self.keyfile + " holds a private "
                  "key, not a certificate"),
                 ("missing", self.certfile, missing, "cannot read %s: No such file" % missing)]
        if os.geteuid() != 0:   # root reads a file whatever its mode
            unreadable = shutil.copy(self.keyfile, os.path.join(folder, "unreadable.key"))
            os.chmod(unreadable, 0)
            cases.append(("unreadable", self.certfile, unreadable,
                          "cannot read %s: Permission denied" % unreadable))
        return cases

    def test_an_empty_or_damaged_pem_file_is_named_with_what_is_wrong(self):
        def damaged(path, mark):   # its PEM lines kept, what they hold not DER
            with open(path) as handle:
                lines = handle.read().splitlines()
            name = os.path.join(self.dir, "damaged-" + os.path.basename(path))
            with open(name, "w") as handle:
                handle.write("\n".join([lines[0], base64.b64encode(b"\x30\x82" + b"x" * 60)
                                        .decode(), lines[-1]]) + "\n")
            self.assertIn(mark, lines[0])
            return name

        empty = os.path.join(self.dir, "empty.pem")
        with open(empty, "w") as handle:
            handle.write("\n \n")
        certificate = damaged(self.certfile, "CERTIFICATE")
        key = damaged(self.keyfile, "PRIVATE KEY")
        for case, certfile, keyfile, said in [
                ("an empty certificate", empty, self.keyfile, "%s is empty" % empty),
                ("an empty key", self.certfile, empty, "%s is empty" % empty),
                ("a damaged certificate", certificate, self.keyfile,
                 "%s holds a damaged PEM certificate (OpenSSL: " % certificate),
                ("a damaged key", self.certfile, key,
                 "%s holds a damaged or unsupported private key (OpenSSL: " % key)]:
            with self.subTest(case):
                with self.assertRaises(ValueError) as caught:
                    pixel.load_tls(certfile, keyfile)
                self.assertTrue(str(caught.exception).startswith(said), str(caught.exception))
        # The start says it in one line, before it makes any file.
        said = listen_refused(self, log=os.path.join(self.dir, "events.jsonl"),
                              certfile=self.certfile, keyfile=key)
        self.assertTrue(said.startswith("cannot serve HTTPS: %s holds a damaged" % key), said)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "events.jsonl")))

    @soak
    def test_a_pair_that_cannot_load_says_which_file_and_why(self):
        for case, certfile, keyfile, said in self.bad_pairs():
            with self.subTest(case):
                with self.assertRaises(ValueError) as caught:
                    pixel.load_tls(certfile, keyfile)
                self.assertIn(said, str(caught.exception))
                result = subprocess.run(
                    [sys.executable, PIXEL_RUN, "--port", "0", "--cpu", "none",
                     "--log", os.path.join(self.dir, "events.jsonl"),
                     "--certfile", certfile, "--keyfile", keyfile],
                    capture_output=True, text=True, timeout=30)
                self.assertEqual(result.returncode, 1)
                self.assertEqual(result.stderr.splitlines(),
                                 ["pixel: cannot serve HTTPS: " + str(caught.exception)])
                self.assertNotIn("PEM lib", result.stderr)

    @soak   # 1.3 s: a SIGHUP and a look for each of its bad pairs
    def test_a_pair_that_cannot_load_on_sighup_says_which_file_and_why(self):
        process, port = self.start()
        good = {path: read_text(path) for path in (self.certfile, self.keyfile)}
        for case, certfile, keyfile, said in self.bad_pairs():
            with self.subTest(case):
                sources = {}
                for source, live in ((certfile, self.certfile), (keyfile, self.keyfile)):
                    if os.path.exists(source):
                        with open(source, "rb") as handle:
                            sources[live] = handle.read()
                for live in (self.certfile, self.keyfile):
                    os.remove(live)
                    if live in sources:
                        with open(live, "wb") as handle:
                            handle.write(sources[live])
                with self.assertRaises(ValueError) as caught:   # the same words, live paths
                    pixel.load_tls(self.certfile, self.keyfile)
                self.assertIn(said.replace(certfile, "").replace(keyfile, ""),
                              str(caught.exception).replace(self.certfile, "")
                              .replace(self.keyfile, ""))
                before = len(read_text(self.stderr.name))
                try:
                    process.send_signal(signal.SIGHUP)
                    # CI once read the line before its newline: print() wrote them apart.
                    self.assertTrue(wait_until(lambda: "loaded before\n" in
                                               read_text(self.stderr.name)[before:]))
                    self.assertIn("pixel: cannot reload TLS: %s; still using the certificate "
                                  "and key loaded before\n" % caught.exception,
                                  read_text(self.stderr.name)[before:])
                    self.assertEqual(self.https(port, "/health")[0], 200)
                finally:   # one case's failure is not the next case's
                    for path, text in good.items():
                        with open(path, "w") as handle:
                            handle.write(text)
        self.assertNotIn("PEM lib", read_text(self.stderr.name))

    def reloaded(self, port, ca):
        try:
            return self.https(port, "/health", ca=ca)[0] == 200
        except self.ssl.SSLError:
            return False

    @soak
    def test_slowloris_over_tls_does_not_starve_real_clients(self):
        process, port = self.start("--request-timeout", "3")
        context = self.ssl.create_default_context(cafile=self.ca)
        drippers = []
        for _ in range(150):   # a whole handshake, then a request a byte at a time
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            drippers.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
        stallers = [socket.create_connection(("127.0.0.1", port)) for _ in range(150)]

        def real_client():
            self.assertEqual(self.https(port, "/v1/pixel/track?writeKey=k&userId=u&"
                                              "event=real"), (200, pixel.GIF))

        latencies, cut = slowloris(drippers, stallers, real_client)
        self.assertLess(max(latencies), 1.0, latencies)
        self.assertEqual(cut, 300, "every slow connection is cut after --request-timeout")
        with open(os.path.join(self.dir, "events.jsonl")) as handle:
            self.assertEqual(sum('"event":"real"' in line for line in handle), len(latencies))


class SystemdUnits(unittest.TestCase):
    """The README's units pass systemd-analyze verify, with nothing to say."""

    def test_the_readme_units_verify(self):
        need(shutil.which("systemd-analyze"), "systemd-analyze (Debian's systemd package)")
        with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
            unit, template_start = re.findall(r"```ini\n(.*?)```", handle.read(), re.S)
        # pixel@.service as the README makes it: the unit, its capability lines removed, this
        # ExecStart instead of its own.
        self.assertRegex(template_start, r"\AExecStart=[^\n]*\n\Z")
        template = "".join(template_start if line.startswith("ExecStart=") else line
                           for line in unit.splitlines(True)
                           if not line.startswith(("AmbientCapabilities=",
                                                   "CapabilityBoundingSet=")))
        self.assertNotIn("CAP_NET_BIND_SERVICE", template)
        units = [unit, template]
        folder = temp_dir(self, "pixel-units-")
        for name, unit in zip(("pixel.service", "pixel@.service"), units):
            self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", unit)
            for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                           "PrivateTmp=yes", "RestrictAddressFamilies=",
                           "SystemCallFilter=@system-service", "StateDirectory=pixel"):
                self.assertIn(option, unit)
            path = os.path.join(folder, name)
            with open(path, "w") as handle:
                handle.write(unit)
            target = path if "@" not in name else os.path.join(folder, "pixel@0.service")
            if target != path:
                os.symlink(path, target)
            result = subprocess.run(["systemd-analyze", "verify", target],
                                    capture_output=True, text=True, timeout=60)
            self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))
            command = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.M).group(1)
                                  .replace("%i", "0"))
            self.assertEqual(command[:3], ["/usr/bin/python3", "-m", "pixel"])
            self.assertIn("WorkingDirectory=/opt/pixel\n", unit)   # where -m finds it
            args = pixel.parse_args(command[3:], {})   # the flags pixel.py would be given
            self.assertTrue(args.log.startswith("/var/lib/pixel/"))


class NginxInFront(unittest.TestCase):
    """examples/nginx.conf, the README's proxy, in front of pixel over TLS: the client's own
    address recorded (not one it put in X-Forwarded-For), a 64 KiB pixel URL taken, a HEAD
    not made an open, a gzipped batch posted, the settings document by the Host and scheme
    nginx passes on, and nginx's own access log left empty."""

    def test_the_example_config_in_front_of_pixel(self):
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        need(nginx, "nginx (Debian's nginx package)")
        need(shutil.which("openssl"), "openssl")
        folder = temp_dir(self, "pixel-nginx-")
        authority, certificate, key = make_certificates(folder)
        log = os.path.join(folder, "events.jsonl")
        _, port = start_pixel(self, "--log", log, "--trusted-proxy", "127.0.0.1")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            front = probe.getsockname()[1]
        with open(os.path.join(HERE, "examples", "nginx.conf")) as handle:
            example = handle.read()   # the README's, with this test's port and certificate
        example = example.replace("127.0.0.1:8000", "127.0.0.1:%d" % port).replace(
            "listen 443", "listen 127.0.0.1:%d" % front).replace(
            "/etc/letsencrypt/live/pixel.example.com/fullchain.pem", certificate).replace(
            "/etc/letsencrypt/live/pixel.example.com/privkey.pem", key)
        temporary = " ".join("%s_temp_path %s;" % (kind, os.path.join(folder, kind))
                             for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(os.path.join(folder, "nginx.conf"), "w") as handle:
            handle.write("%spid nginx.pid;\nevents {}\nhttp {\naccess_log access.log; %s\n%s}\n"
                         % ("user root;\n" if os.geteuid() == 0 else "", temporary, example))
        import ssl
        server = subprocess.Popen([nginx, "-p", folder, "-c", "nginx.conf", "-e", "error.log",
                                   "-g", "daemon off;"], stderr=subprocess.PIPE, text=True)
        self.addCleanup(server.stderr.close)   # last: after the wait
        self.addCleanup(server.wait)
        self.addCleanup(server.terminate)
        context = ssl.create_default_context(cafile=authority)

        def ask(method, path, body=None, headers=()):
            # From 127.0.0.5, a client address that is neither the proxy's nor its claim.
            connection = http.client.HTTPSConnection("127.0.0.1", front, timeout=10,
                                                     context=context,
                                                     source_address=("127.0.0.5", 0))
            try:
                connection.request(method, path, body, dict(headers))
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        def listening():
            try:
                return ask("GET", "/health")[0] == 200
            except OSError:
                self.assertIsNone(server.poll(), "nginx exited")
                return False

        wait_until(listening, timeout=20)
        pad = "%78" * 20000   # a URL of 60 KB (nginx's default takes 8 KB), an event of 20
        self.assertEqual(ask("GET", "/v1/pixel/track?writeKey=K&userId=u1&event=Email%20Opened&"
                                    "messageId=m1&properties.pad=" + pad,
                             headers={"X-Forwarded-For": "9.9.9.9"}), (200, pixel.GIF))
        self.assertEqual(ask("HEAD", "/v1/pixel/track?writeKey=K&userId=u2&event=e&"
                                     "messageId=m2")[0], 200)
        batch = gzip.compress(json.dumps({"batch": [
            {"type": "track", "userId": "u3", "event": "e", "messageId": "m3"}]}).encode())
        self.assertEqual(ask("POST", "/v1/batch", batch, {
            "Content-Type": "application/json", "Content-Encoding": "gzip",
            "Authorization": "Basic " + base64.b64encode(b"K:").decode()})[0], 200)
        status, body = ask("GET", "/v1/projects/K/settings")   # by Host and X-Forwarded-Proto
        destination = json.loads(body)["integrations"]["Segment.io"]
        self.assertEqual((status, destination["apiHost"], destination["protocol"]),
                         (200, "127.0.0.1/v1", "https"))
        with open(log) as handle:
            events = [json.loads(line) for line in handle]
        self.assertEqual([event["messageId"] for event in events], ["m1", "m3"],
                         "the HEAD is no open, and nothing is logged twice")
        self.assertEqual([event["context"]["ip"] for event in events], ["127.0.0.5"] * 2)
        self.assertEqual(events[0]["properties"]["pad"], "x" * 20000)
        self.assertEqual(os.path.getsize(os.path.join(folder, "access.log")), 0,
                         "nginx's own log would keep the pixels' ids")


@soak
class RsyslogShipping(unittest.TestCase):
    """rsyslog's imfile, a shipper that follows files by inode, reads pixel's events log
    while pixel rotates it under load: no event missing, none twice."""


    def test_imfile_reads_every_line_once_across_rotations(self):
        rsyslogd = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin")
        need(rsyslogd, "rsyslogd (Debian's rsyslog package)")
        folder = temp_dir(self, "pixel-rsyslog-")
        work = os.path.join(folder, "work")
        os.mkdir(work)
        log, out = os.path.join(folder, "events.jsonl"), os.path.join(folder, "shipped.jsonl")
        config = os.path.join(folder, "rsyslog.conf")
        with open(os.path.join(HERE, "examples", "rsyslog.conf")) as handle:
            example = handle.read()   # the README's, with this test's files
        with open(config, "w") as handle:
            handle.write('global(workDirectory="%s")\n' % work +
                         example.replace("/var/lib/pixel/events.jsonl", log)
                         .replace("/var/log/shipped/pixel.jsonl", out))
        process, port = start_pixel(self, "--log", log, "--max-bytes", "100K")
        shipper = subprocess.Popen([rsyslogd, "-n", "-f", config, "-i",
                                    os.path.join(folder, "rsyslogd.pid")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.addCleanup(shipper.stderr.close)   # last: after the wait
        self.addCleanup(shipper.wait)
        self.addCleanup(shipper.terminate)
        answered = []

        def client(worker):   # about 600 events a second in all: a rotation a second
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for number in range(600):
                message_id = "w%d-%d" % (worker, number)
                connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e&"
                                          "messageId=" + message_id)
                if connection.getresponse().read() == pixel.GIF:
                    answered.append(message_id)
                time.sleep(0.006)
            connection.close()

        threads = [threading.Thread(target=client, args=(worker,)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rotated = [name for name in os.listdir(folder) if ROTATED.search(name)]
        self.assertGreaterEqual(len(rotated), 3)

        def shipped():
            if not os.path.exists(out):
                return []
            with open(out) as handle:
                return [json.loads(line)["messageId"] for line in handle]

        wait_until(lambda: len(shipped()) >= len(answered), timeout=20)
        ids = shipped()
        self.assertEqual(set(answered) - set(ids), set(), "missing in what rsyslog read")
        self.assertEqual(len(ids), len(set(ids)), "read twice")
        print("\nrsyslog imfile: %d events through %d rotations, none missing, none twice"
              % (len(ids), len(rotated)), file=sys.stderr)


class Backfill(unittest.TestCase):
    """`pixel.py forward --to URL FILE...`: sends files once, in order, and exits."""

    def setUp(self):
        self.dir = temp_dir(self, "pixel-backfill-")
        self.files = []
        for part, numbers in enumerate((range(0, 150), range(150, 300))):
            path = os.path.join(self.dir, "events.jsonl.%d" % part)
            data = b"".join(log_event(number) for number in numbers)
            if part:
                path += ".gz"
                data = gzip.compress(data)
            with open(path, "wb") as handle:
                handle.write(data)
            self.files.append(path)

    def forward(self, url, *extra, **options):
        return subprocess.run([sys.executable, PIXEL_RUN, "forward", "--to", url] +
                              list(extra) + self.files, capture_output=True, text=True,
                              timeout=60, **options)

    def test_sends_once_and_a_second_run_sends_nothing(self):
        receiver = FakeReceiver(self)
        result = self.forward(receiver.url, "--batch", "40")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("pixel forward: 300 event(s) sent to %s, 0 refused\n" % receiver.url,
                      result.stdout)   # and no "written to" a file it did not write
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(300)])
        self.assertEqual(max(len(document["batch"]) for _, _, document, _ in receiver.posts),
                         40)
        again = self.forward(receiver.url)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("0 event(s) sent", again.stdout)
        self.assertEqual(again.stderr.count("already sent, skipped"), 2)
        self.assertEqual(len(receiver.taken), 300)

    def test_interrupted_it_goes_on_where_it_stopped(self):
        hold = threading.Event()

        def respond(receiver, user, events):
            if len(receiver.posts) == 3:
                hold.wait(20)
            return 200, {}, b"{}"

        receiver = FakeReceiver(self, respond)
        process = subprocess.Popen([sys.executable, PIXEL_RUN, "forward", "--to", receiver.url,
                                    "--batch", "50"] + self.files, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        self.addCleanup(process.kill)
        self.assertTrue(wait_until(lambda: len(receiver.posts) == 3))
        process.kill()   # kill -9 with a batch in flight
        process.communicate()
        hold.set()
        result = self.forward(receiver.url, "--batch", "50")
        self.assertEqual(result.returncode, 0, result.stderr)
        ids = receiver.ids()
        self.assertEqual(sorted(set(ids), key=lambda m: int(m[1:])),
                         ["m%d" % number for number in range(300)])
        self.assertLessEqual(len(ids), 300 + 50, "at most the batch in flight twice")

    def test_a_refused_write_key_stops_it_with_status_1(self):
        receiver = FakeReceiver(self, lambda receiver, user, events: (403, {}, b"forbidden"))
        result = self.forward(receiver.url, "--write-key", "K")   # configured: the run stops
        self.assertEqual(result.returncode, 1)
        self.assertIn("refused writeKey K: 403 forbidden; check --write-key or the receiver's keys",
                      result.stderr)
        self.assertIn("run the same command again", result.stdout)

    def test_bad_arguments(self):
        for extra, said in ((["--batch", "0"], "--batch: "), (["--ca", "/nonexistent"], "--ca"),
                            (["--timeout", "nan"], "--timeout: ")):
            with self.subTest(extra):
                status, _, stderr = main_in_this_process(
                    ["forward", "--to", "http://127.0.0.1:9"] + extra + self.files)
                self.assertEqual(status, 2)
                self.assertIn(said, stderr)
        status, _, stderr = main_in_this_process(["forward", "--to", "http://127.0.0.1:9",
                                                  os.path.join(self.dir, "missing")])
        self.assertEqual(status, 1)
        self.assertIn("No such file", stderr)

    @unittest.skipIf(os.geteuid() != 0, "only root can give a folder away")
    def test_run_as_root_it_leaves_a_state_folder_the_services_user_can_write_in(self):
        # The newcomer: a backfill run with sudo made .pixel root's, and the service,
        # started as its own user with --forward, could not save its checkpoint and exited.
        # erase's ledger and request make the folder the same way.
        receiver = FakeReceiver(self)
        os.chown(self.dir, 65534, 65534)
        result = self.forward(receiver.url)
        self.assertEqual(result.returncode, 0, result.stderr)
        folder = os.path.join(self.dir, pixel.STATE_FOLDER)
        self.assertEqual(os.stat(folder)[4:6], (65534, 65534))
        shutil.rmtree(folder)
        status, _, stderr = main_in_this_process(["erase", "--user-id", "nobody-at-all",
                                                  "--apply", self.files[0]])
        self.assertEqual(status, 0, stderr)
        self.assertEqual(os.stat(folder)[4:6], (65534, 65534))
        # Its ledger too (the newcomer: root's, 0600, so the service's user's erase could
        # neither append to it nor read it with --ledger).
        self.assertEqual(os.stat(os.path.join(folder, "erase-ledger.json"))[4:6],
                         (65534, 65534))
        # A folder root owns and a group writes (2775): the group can write in .pixel too (the
        # attack pass: the service, in that group, could not).
        shutil.rmtree(folder)
        os.chown(self.dir, 0, 65534)
        os.chmod(self.dir, 0o2775)
        self.assertEqual(self.forward(receiver.url).returncode, 0)
        self.assertEqual((os.stat(folder).st_gid, os.stat(folder).st_mode & 0o7777),
                         (65534, 0o2775))
        # Root writes no state through a link that folder's user put at its name: the ledger
        # and a checkpoint's temporary file, linked to a file of root's, are refused.
        precious = os.path.join(temp_dir(self), "passwd")
        with open(precious, "w") as handle:
            handle.write("root:x:0:0\n")
        os.remove(os.path.join(folder, "backfill.events.jsonl.0.json"))   # to send again
        for name in ("erase-ledger.json", "backfill.events.jsonl.0.json.tmp"):
            os.symlink(precious, os.path.join(folder, name))
        status, _, stderr = main_in_this_process(["erase", "--user-id", "nobody-at-all",
                                                  "--apply", self.files[0]])
        self.assertEqual(status, 1)
        self.assertIn("cannot write the ledger", stderr)
        result = self.forward(receiver.url, "--write-key", "K")
        self.assertIn("cannot write the checkpoint %s: Too many levels of symbolic links"
                      % os.path.join(folder, "backfill.events.jsonl.0.json"), result.stderr)
        # Nor through a link that user made at .pixel, forward-rejects.jsonl or a log file
        # erase is named (the next attack pass: root's ledger landed in a root-only folder).
        def planted(name, target):
            if os.path.lexists(os.path.join(self.dir, name)):
                os.unlink(os.path.join(self.dir, name))
            os.symlink(target, os.path.join(self.dir, name))
            os.lchown(os.path.join(self.dir, name), 65534, 65534)

        shutil.rmtree(folder)
        planted(".pixel", temp_dir(self))
        self.assertIn("a symbolic link another user made", self.forward(receiver.url).stderr)
        os.unlink(folder)
        planted("forward-rejects.jsonl", precious)
        result = self.forward(receiver.url)
        self.assertEqual(result.returncode, 2)
        self.assertIn("a symbolic link another user made", result.stderr)
        planted("events.jsonl.9", precious)
        status, _, stderr = main_in_this_process(["erase", "--user-id", "root", "--apply",
                                                  os.path.join(self.dir, "events.jsonl.9")])
        self.assertEqual(status, 1)
        self.assertIn("a symbolic link another user made", stderr)
        with open(precious) as handle:
            self.assertEqual(handle.read(), "root:x:0:0\n")
        with open(precious) as handle:
            self.assertEqual(handle.read(), "root:x:0:0\n")

    def forward_these(self, url, *argv, timeout=60):
        return subprocess.run([sys.executable, PIXEL_RUN, "forward", "--to", url] + list(argv),
                              capture_output=True, text=True, timeout=timeout)

    def write_log(self, path, numbers, mode="wb"):
        with open(path, mode) as handle:
            handle.write(b"".join(log_event(number) for number in numbers))

    def test_the_readmes_backfill_runs_beside_the_server_that_wrote_the_files(self):
        # The README's command, from cron beside the running server (or the WSGI app, for
        # which it is the only way to forward): its default --rejects is rejects.jsonl
        # beside the first file, which the server holds with its flock.
        receiver = FakeReceiver(self)
        folder = temp_dir(self)
        log = os.path.join(folder, "events.jsonl")
        start_pixel(self, "--log", log)
        rotated = log + ".20261120T000000.000Z"
        self.write_log(rotated, range(3))
        result = self.forward_these(receiver.url, rotated)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(receiver.ids(), ["m0", "m1", "m2"])

    def test_a_backfill_to_another_receiver_is_not_skipped_as_sent(self):
        # The checkpoint is named after the first FILE alone, and records the target it
        # sent to without ever reading it back: the same files sent to a second receiver
        # (a move from Segment to RudderStack, a second destination) were all "already
        # sent, skipped", 0 events sent, status 0.
        first, second = FakeReceiver(self), FakeReceiver(self)
        self.assertEqual(self.forward(first.url).returncode, 0)
        result = self.forward(second.url)
        if result.returncode == 0:
            self.assertEqual(second.ids(), ["m%d" % number for number in range(300)],
                             result.stdout + result.stderr)
        else:   # or a refusal that names what the checkpoint is for
            self.assertIn(first.url, result.stderr)

    def test_a_backfill_that_fails_to_start_leaves_nothing_beside_its_files(self):
        # Issue 19 item 17, for `pixel.py forward`: its empty rejects log was removed on a
        # failed start, but the .pixel/ folder it had made for its checkpoint stayed.
        folder = temp_dir(self)
        notes = os.path.join(folder, "notes.txt")
        with open(notes, "w") as handle:
            handle.write("not an event log\n")
        log = os.path.join(folder, "events.jsonl.1")
        self.write_log(log, range(3))
        for case, argv, said in (
                ("not an event log", [notes], "not a pixel event log"),
                ("a rejects log it cannot open",
                 ["--rejects", os.path.join(folder, "missing", "r.jsonl"), log],
                 "No such file or directory")):
            with self.subTest(case):
                result = self.forward_these("http://127.0.0.1:9", *argv)
                self.assertEqual(result.returncode, 1)
                self.assertIn(said, result.stderr)
                self.assertEqual(sorted(os.listdir(folder)), ["events.jsonl.1", "notes.txt"])

    def test_a_new_file_on_the_inode_of_one_sent_before_is_sent(self):
        receiver = FakeReceiver(self)
        path = os.path.join(self.dir, "events.jsonl.1")   # logrotate's: a new file each day
        self.write_log(path, range(10))
        inode = os.stat(path).st_ino
        result = self.forward_these(receiver.url, path)
        self.assertEqual(result.returncode, 0, result.stderr)
        os.remove(path)
        # A file system hands a freed inode to a new file soon: make files until one has it.
        candidates = []
        for number in range(200):
            candidate = os.path.join(self.dir, "new.%d" % number)
            self.write_log(candidate, range(100, 110))
            if os.stat(candidate).st_ino == inode:
                os.rename(candidate, path)
                break
            candidates.append(candidate)
        for candidate in candidates:
            os.remove(candidate)
        if not os.path.exists(path):
            self.skipTest("this file system gave none of 200 new files the freed inode")
        self.assertEqual(os.stat(path).st_ino, inode)
        result = self.forward_these(receiver.url, path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("already sent", result.stderr)
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(10)] +
                         ["m%d" % number for number in range(100, 110)])

    def test_an_inode_version_1_0_sent_is_not_taken_for_a_file_written_since(self):
        # Item 3 after an upgrade: version 1.0 listed each file sent by device:inode alone,
        # and such an entry is still taken at its word, so a new file on a reused inode is
        # skipped, for good, in every install that backfilled before. A file written after
        # that checkpoint was last written cannot be the one the entry meant; and that time
        # is version 1.0's last save, not a later run's.
        receiver = FakeReceiver(self)
        first, second = (os.path.join(self.dir, "events.jsonl.%d" % number)
                         for number in (1, 2))
        self.write_log(first, range(10))
        self.write_log(second, range(10, 20))
        statuses = [os.stat(path) for path in (first, second)]
        with open(first + ".backfill", "w") as handle:   # as version 1.0 left it, a day ago
            json.dump({"path": "old", "device": 1, "inode": 1, "offset": 500,
                       "head_bytes": 500, "head": "00000000",
                       "mtime_ns": statuses[0].st_mtime_ns - 86400 * 10 ** 9,
                       "updated": pixel.format_time(statuses[0].st_mtime - 86400),
                       "target": receiver.url,
                       "done": ["%d:%d" % (status.st_dev, status.st_ino)
                                for status in statuses]}, handle)
        result = self.forward_these(receiver.url, first)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("already sent", result.stderr)
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(10)])
        result = self.forward_these(receiver.url, first, second)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr.count("already sent, skipped"), 1)
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(20)])

    def test_a_log_that_grew_since_it_was_sent_sends_only_what_is_new(self):
        receiver = FakeReceiver(self)
        path = os.path.join(self.dir, "events.jsonl")
        self.write_log(path, range(10))
        self.assertEqual(self.forward_these(receiver.url, path).returncode, 0)
        self.write_log(path, range(10, 15), mode="ab")
        result = self.forward_these(receiver.url, path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("sent up to byte %d before" % len(b"".join(
            log_event(number) for number in range(10))), result.stderr)
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(15)])

    def test_the_readme_command_run_twice_sends_no_state_of_its_own(self):
        receiver = FakeReceiver(self)
        folder = os.path.join(self.dir, "logs")
        os.mkdir(folder)
        logs = {"events.jsonl.20261120T000000.000Z": range(0, 5),
                "events.jsonl.20261121T000000.000Z": range(5, 10)}
        for name, numbers in logs.items():
            self.write_log(os.path.join(folder, name), numbers)
        readme = re.search(r"python3 pixel.py forward .*\\\n\s+(/var/lib/pixel/\S+)",
                           read_text(os.path.join(HERE, "README.md")))
        self.assertEqual(readme.group(1), "/var/lib/pixel/events.jsonl.2026112*")
        command = "%s %s forward --to %s --write-key K %s/events.jsonl.2026112*" % (
            shlex.quote(sys.executable), shlex.quote(PIXEL_PY), receiver.url,
            shlex.quote(folder))
        for run in range(2):
            result = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                                    timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr.count("already sent, skipped"), 2)
        self.assertEqual([event.get("messageId") for event in receiver.taken],
                         ["m%d" % number for number in range(10)])
        for pattern in LOG_GLOBS:
            with self.subTest(pattern):
                self.assertLessEqual(files_a_glob_finds(folder, pattern),
                                     set(logs) | {"forward-rejects.jsonl"})

    def test_an_old_checkpoint_beside_the_first_file_is_moved_not_sent(self):
        receiver = FakeReceiver(self)
        self.assertEqual(self.forward(receiver.url).returncode, 0)
        checkpoint = pixel.state_path(self.files[0], "backfill")
        legacy = self.files[0] + ".backfill"   # where version 1.0 kept it
        os.replace(checkpoint, legacy)
        # As a glob passes them: events.jsonl.0, events.jsonl.0.backfill, events.jsonl.1.gz
        result = self.forward_these(receiver.url, "--write-key", "K", self.files[0], legacy,
                                    self.files[1])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("moved the checkpoint %s to %s" % (legacy, checkpoint), result.stderr)
        self.assertEqual(result.stderr.count("already sent, skipped"), 2)
        self.assertEqual(len(receiver.taken), 300)
        self.assertFalse(os.path.exists(legacy))

    @soak
    def test_files_that_are_not_event_logs_are_refused_before_anything_is_sent(self):
        receiver = FakeReceiver(self)
        checkpoint = os.path.join(self.dir, "checkpoint")
        pixel.write_checkpoint(checkpoint, {"device": 1, "inode": 2, "offset": 0,
                                            "mtime_ns": 0, "head_bytes": 0, "head": "0",
                                            "done": ["1:2"]})
        other = os.path.join(self.dir, "package.json")
        with open(other, "w") as handle:
            json.dump({"name": "x", "version": "1"}, handle)
        binary = os.path.join(self.dir, "events.jsonl.5.zst")
        with open(binary, "wb") as handle:
            handle.write(b"\x28\xb5\x2f\xfd\x00\x58\x61\x00\x00" + bytes(range(256)))
        for path, why in ((checkpoint, "it is a pixel checkpoint"),
                          (other, 'JSON, but none of its first lines is an event'),
                          (binary, "binary data, not lines of JSON")):
            with self.subTest(path):
                for argv in ([path], ["--write-key", "K", self.files[0], path]):
                    result = self.forward_these(receiver.url, *argv)
                    self.assertEqual(result.returncode, 1)
                    self.assertRegex(result.stderr, r"^pixel: cannot forward %s: not a pixel "
                                                    r"event log \(%s.*\)\n\Z"
                                     % (re.escape(path), re.escape(why)))
                    self.assertEqual(receiver.posts, [])
        rejects = os.path.join(self.dir, "old-rejects.jsonl")   # to send again: taken
        with open(rejects, "w") as handle:
            handle.write('{"reason":"no_write_key","method":"GET","path":"/v1/pixel/track",'
                         '"query":"","receivedAt":"2026-11-20T00:00:00.000Z"}\n')
        result = self.forward_these(receiver.url, rejects)
        self.assertNotIn("not a pixel event log", result.stderr)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_a_gzip_cut_in_half_sends_every_whole_line_before_the_cut(self):
        receiver = FakeReceiver(self)
        data = b"".join(log_event(number, properties={"pad": "%04d" % number * 20})
                        for number in range(2000))
        compressed = gzip.compress(data)
        path = os.path.join(self.dir, "events.jsonl.2.gz")
        with open(path, "wb") as handle:
            handle.write(compressed[:len(compressed) // 2])
        if shutil.which("zcat"):
            recovered = subprocess.run(["zcat", path], capture_output=True).stdout
        else:
            recovered = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(
                compressed[:len(compressed) // 2])
        whole = recovered[:recovered.rfind(b"\n") + 1]
        self.assertGreater(whole.count(b"\n"), 900)
        result = self.forward_these(receiver.url, path)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(receiver.ids(), [json.loads(line)["messageId"]
                                          for line in whole.splitlines()])
        self.assertIn("1 file(s) could not be read to their end", result.stdout)
        self.assertIn("pixel: %s cannot be read past byte %d (inflated): cut short" % (
            path, len(recovered)), result.stderr)
        with open(os.path.join(self.dir, "forward-rejects.jsonl")) as handle:
            rejects = [json.loads(line) for line in handle]
        self.assertEqual([line["reason"] for line in rejects],
                         ["forward_unreadable", "forward_truncated"])
        self.assertEqual(rejects[0]["line"], recovered[len(whole):].decode())
        self.assertIn("%s cannot be read past byte %d" % (path, len(recovered)),
                      rejects[1]["detail"])

    def test_a_text_file_named_gz_is_sent_as_it_is(self):
        receiver = FakeReceiver(self)
        path = os.path.join(self.dir, "events.jsonl.3.gz")
        self.write_log(path, range(20))
        result = self.forward_these(receiver.url, path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("%s is not gzipped: sending it as it is" % path, result.stderr)
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(20)])

    def test_what_is_not_a_regular_file_is_refused_at_once(self):
        fifo = os.path.join(self.dir, "fifo")
        os.mkfifo(fifo)
        for argv, line in (
                (["/dev/zero"], "cannot forward /dev/zero: not a regular file "
                                "(a character device)"),
                ([self.dir], "cannot forward %s: not a regular file (a directory)"
                             % self.dir),
                ([fifo], "cannot forward %s: not a regular file (a FIFO)" % fifo),
                ([self.files[0], fifo], "cannot forward %s: not a regular file (a FIFO)"
                                        % fifo),
                (["--checkpoint", fifo, self.files[0]],
                 "cannot read the checkpoint %s: not a regular file (a FIFO)" % fifo)):
            with self.subTest(argv):
                started = time.monotonic()
                result = self.forward_these("http://127.0.0.1:9", *argv, timeout=20)
                self.assertLess(time.monotonic() - started, 10)
                self.assertEqual((result.returncode, result.stderr),
                                 (1, "pixel: %s\n" % line))

    @soak
    def test_a_sigterm_while_it_counts_a_huge_backlog_stops_it_at_once(self):
        if not os.path.exists("/proc/self/io"):
            self.skipTest("no /proc/<pid>/io here to see the count under way")
        receiver = FakeReceiver(self)
        path = os.path.join(self.dir, "events.jsonl.9")
        self.write_log(path, [0])
        try:
            os.truncate(path, 1024 ** 4)   # sparse: a TiB of zeros to count lines in
        except OSError as error:
            self.skipTest("no sparse 1 TiB file here: %s" % error)
        process = subprocess.Popen([sys.executable, PIXEL_RUN, "forward", "--to", receiver.url,
                                    path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)

        def counting():
            try:
                with open("/proc/%d/io" % process.pid) as handle:
                    read = int(re.search(r"rchar: (\d+)", handle.read()).group(1))
            except (OSError, AttributeError):   # gone, or not readable
                return False
            return read > 256 * 1024 ** 2

        self.assertTrue(wait_until(counting, 20))
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        stdout, stderr = process.communicate(timeout=10)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(process.returncode, 1)
        self.assertIn("stopped before the end", stdout)
        self.assertNotIn("Traceback", stderr)
        self.assertEqual(receiver.posts, [])


class NotRegularFiles(unittest.TestCase):
    """A FIFO where pixel expects a file would block its open for ever, before any signal
    handler is installed; a directory ends in a traceback. Each is refused at once."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.fifo = os.path.join(self.dir, "fifo")
        os.mkfifo(self.fifo)

    def test_the_servers_log_rejects_and_forward_ca(self):
        log = os.path.join(self.dir, "events.jsonl")
        for argv, status, line in (
                (["--log", self.fifo], 1, "cannot open %s: not a regular file (a FIFO)"
                                          % self.fifo),
                (["--log", log, "--rejects", self.fifo], 1,
                 "cannot open %s: not a regular file (a FIFO)" % self.fifo),
                (["--log", log, "--forward", "https://127.0.0.1:9", "--forward-ca",
                  self.fifo], 2, "not a regular file (a FIFO)")):
            with self.subTest(argv):
                result = subprocess.run([sys.executable, PIXEL_RUN, "--port", "0", "--cpu",
                                         "none"] + argv, capture_output=True, text=True,
                                        timeout=20)
                self.assertEqual(result.returncode, status)
                self.assertIn(line, result.stderr)
                self.assertNotIn("Traceback", result.stderr)

    def test_a_fifo_named_like_a_rotated_file_is_passed_over(self):
        log = os.path.join(self.dir, "events.jsonl")
        with open(log, "wb") as handle:
            handle.write(log_event(1))
        rotated = log + ".20261120T000000.000Z"
        os.mkfifo(rotated)
        found = []
        thread = threading.Thread(target=lambda: found.append(
            pixel.logged_client_ids([log, rotated], 10)), daemon=True)
        thread.start()
        thread.join(10)
        self.assertEqual(found, [[pixel.dedupe_key("K", "m1")]])

    def test_a_fifo_where_a_checkpoint_is_written_is_refused(self):
        checkpoint = os.path.join(self.dir, "checkpoint")
        os.rename(self.fifo, checkpoint + ".tmp")
        raised = []

        def write():
            try:
                pixel.write_checkpoint(checkpoint, {"device": 1})
            except OSError as error:
                raised.append(error.strerror)

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        thread.join(10)
        self.assertEqual(raised, ["not a regular file (a FIFO)"])


class GracefulStop(unittest.TestCase):
    """SIGTERM answers every request the process has taken: those in the kernel's listen
    queue, and a connection that has not sent its request yet; only connections kept alive
    between requests are closed."""

    def test_the_listen_queue_and_a_silent_client_are_served(self):
        folder = temp_dir(self, "pixel-stop-")
        log = os.path.join(folder, "events.jsonl")
        process, port = start_pixel(self, "--log", log, "--request-timeout", "8")
        silent = socket.create_connection(("127.0.0.1", port))
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        kept.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=kept")
        self.assertEqual(kept.getresponse().read(), pixel.GIF)
        # The silent one, the kept-alive one, and the one asking.
        self.assertTrue(wait_until(lambda: fetch_json(port, "/health")["connections"] == 3))
        process.send_signal(signal.SIGSTOP)
        queued = []
        for number in range(30):   # accepted by the kernel, not by pixel: the listen queue
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /v1/pixel/track?writeKey=k&userId=u&event=queued&messageId=q%d "
                         b"HTTP/1.1\r\nHost: x\r\n\r\n" % number)
            queued.append(sock)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        time.sleep(0.5)   # the stop is under way: the silent client now sends its request
        silent.sendall(b"GET /v1/pixel/track?writeKey=k&userId=u&event=silent HTTP/1.1\r\n"
                       b"Host: x\r\n\r\n")
        status, headers, body, _ = read_response(silent.makefile("rb"))
        self.assertEqual((status, body, headers["connection"]), (200, pixel.GIF, "close"))
        for sock in queued:
            sock.settimeout(10)
            status, headers, body, _ = read_response(sock.makefile("rb"))
            self.assertEqual((status, body, headers["connection"]), (200, pixel.GIF, "close"))
            sock.close()
        silent.close()
        with self.assertRaises((http.client.HTTPException, OSError)):
            kept.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=late")
            kept.getresponse().read()   # closed between requests: a client sends it again
        kept.close()
        self.assertEqual(process.wait(20), 0)
        with open(log) as handle:
            events = [json.loads(line)["event"] for line in handle]
        self.assertEqual(sorted(events), ["kept"] + ["queued"] * 30 + ["silent"])


    def test_an_upload_waiting_between_two_chunks_is_finished(self):
        # The attack pass: a body read with nothing buffered, at a chunk's end, was taken
        # for a connection kept alive between requests, and a stop cut it.
        folder = temp_dir(self, "pixel-stop-")
        log = os.path.join(folder, "events.jsonl")
        process, port = start_pixel(self, "--log", log, "--request-timeout", "8")
        body = json.dumps({"writeKey": "k", "batch": [
            {"type": "track", "userId": "u", "event": "uploaded"}]}).encode()

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                         b"\r\n\r\n" + chunked(body[:20])[:-5])   # not its last chunk
            process.send_signal(signal.SIGTERM)
            self.assertTrue(wait_until(lambda: not listening()))   # the stop is under way
            sock.sendall(chunked(body[20:]))
            status, _, answer, _ = read_response(sock.makefile("rb"))
        # (Whether it says Connection: close depends on whether its head was read before the
        # signal: a race of this test's, not what it tests.)
        self.assertEqual((status, answer), (200, b'{"success": true}\n'))
        self.assertEqual(process.wait(20), 0)
        with open(log) as handle:
            self.assertEqual([json.loads(line)["event"] for line in handle], ["uploaded"])

    def test_a_kept_alive_connection_that_sent_empty_lines_is_closed_at_once(self):
        # The attack pass: after a stray CRLF (which some clients send after a body), a
        # kept-alive connection waited as if inside a request, and a stop waited it out.
        folder = temp_dir(self, "pixel-stop-")
        log = os.path.join(folder, "events.jsonl")
        process, port = start_pixel(self, "--log", log, "--request-timeout", "8")
        idle = []
        for number in range(3):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /v1/pixel/track?writeKey=k&userId=u&event=e HTTP/1.1\r\n"
                         b"Host: x\r\n\r\n" + b"\r\n" * (number + 1))
            self.assertEqual(read_response(sock.makefile("rb"))[2], pixel.GIF)
            idle.append(sock)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(20), 0)
        self.assertLess(time.monotonic() - started, 4)   # not the request timeout (8 s)
        for sock in idle:
            self.assertEqual(sock.recv(10), b"")
            sock.close()

class ReusePort(unittest.TestCase):
    """Two processes on one port (--reuse-port), each with its own log."""

    def test_a_system_without_so_reuseport_is_said_in_words(self):
        # Windows, say: the socket module has no SO_REUSEPORT at all.
        if not hasattr(socket, "SO_REUSEPORT"):
            self.skipTest("no SO_REUSEPORT here either")
        self.addCleanup(setattr, socket, "SO_REUSEPORT", socket.SO_REUSEPORT)
        del socket.SO_REUSEPORT
        said = listen_refused(self, log=os.path.join(temp_dir(self), "events.jsonl"),
                              reuse_port=True)
        self.assertEqual(said, "--reuse-port: this system has no SO_REUSEPORT")

    def test_a_second_process_on_the_same_log_is_refused(self):
        folder = temp_dir(self, "pixel-reuse-")
        log = os.path.join(folder, "events.jsonl")
        first, port = start_pixel(self, "--reuse-port", "--log", log)
        second = subprocess.run([sys.executable, PIXEL_RUN, "--reuse-port", "--port", str(port),
                                 "--cpu", "none", "--log", log], capture_output=True,
                                text=True, timeout=30)
        self.assertEqual(second.returncode, 1)
        self.assertIn("cannot open %s: another process writes it" % log, second.stderr)
        third = subprocess.run([sys.executable, PIXEL_RUN, "--reuse-port", "--port", str(port),
                                "--cpu", "none", "--log", log + "-2"], capture_output=True,
                               text=True, timeout=30)   # its default rejects log: the same
        self.assertEqual(third.returncode, 1)
        self.assertIn("rejects.jsonl: another process writes it", third.stderr)
        fetch_gif(port, "/v1/pixel/track?writeKey=k&userId=u&event=e")

    @soak
    def test_two_processes_share_a_port_and_one_stops_under_traffic(self):
        folder = temp_dir(self, "pixel-reuse-")
        logs = [os.path.join(folder, "events-%d.jsonl" % number) for number in (1, 2)]
        first, port = start_pixel(self, "--reuse-port", "--log", logs[0],
                                  "--rejects", logs[0] + ".rejects")
        second, second_port = start_pixel(self, "--reuse-port", "--port", str(port),
                                          "--log", logs[1], "--rejects", logs[1] + ".rejects")
        self.assertEqual(second_port, port)
        answered, failed, lock, stop = [], [], threading.Lock(), threading.Event()

        def client(worker, count=None):
            number = 0
            while not stop.is_set() and (count is None or number < count):
                message_id = "w%d-%d" % (worker, number)
                number += 1
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:   # one connection a request: the kernel picks a process for each
                    connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=e&"
                                              "messageId=" + message_id)
                    ok = connection.getresponse().read() == pixel.GIF
                except (OSError, http.client.HTTPException) as error:
                    ok = False
                    with lock:
                        failed.append((message_id, repr(error)))
                finally:
                    connection.close()
                if ok:
                    with lock:
                        answered.append(message_id)

        threads = [threading.Thread(target=client, args=(worker, 500)) for worker in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual((len(answered), failed), (2000, []))
        shares = []
        for log in logs:
            with open(log) as handle:
                shares.append([json.loads(line)["messageId"] for line in handle])
        self.assertTrue(all(len(share) > 200 for share in shares), [len(s) for s in shares])
        self.assertEqual(sorted(shares[0] + shares[1]), sorted(answered))
        # Now one stops while four clients keep sending: no request may fail. Linux resets
        # what reaches a closing listener's queue in the instant before it closes, unless
        # net.ipv4.tcp_migrate_req hands it to the other process: the README says to set
        # it where several run, and so does this test where it may (CI runs as root).
        migrate = "/proc/sys/net/ipv4/tcp_migrate_req"
        try:
            with open(migrate) as handle:
                before = handle.read().strip()
            with open(migrate, "w") as handle:
                handle.write("1")
        except OSError:
            self.skipTest("cannot set %s here, as the README says to" % migrate)
        def restore():
            with open(migrate, "w") as handle:
                handle.write(before)

        self.addCleanup(restore)
        answered.clear()
        threads = [threading.Thread(target=client, args=(worker,)) for worker in range(4, 8)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        first.send_signal(signal.SIGTERM)
        self.assertEqual(first.wait(20), 0)
        time.sleep(1)
        stop.set()
        for thread in threads:
            thread.join()
        self.assertEqual(failed, [])
        logged = []
        for log in logs:
            with open(log) as handle:
                logged += [json.loads(line)["messageId"] for line in handle]
        self.assertEqual(len(logged), len(set(logged)))
        self.assertLessEqual(set(answered), set(logged))
        print("\n--reuse-port: %d then %d pixels, none failed, through a SIGTERM of one "
              "process" % (2000, len(answered)), file=sys.stderr)


class RunAsAScript(unittest.TestCase):
    """python3 pixel.py runs under any name, and reads the standard library's modules, not
    those of the folder it is started from."""

    def test_any_file_name_and_no_shadowing_from_the_working_folder(self):
        folder = temp_dir(self, "pixel-reexec-")
        copy = os.path.join(folder, "collector")   # a copy need not end in .py
        shutil.copy(PIXEL_PY, copy)
        elsewhere = temp_dir(self, "pixel-cwd-")
        with open(os.path.join(elsewhere, "json.py"), "w") as handle:
            handle.write("raise SystemExit(7)\n")
        for script in (copy, PIXEL_PY):
            with self.subTest(script):
                result = subprocess.run([sys.executable, script, "--version"], cwd=elsewhere,
                                        capture_output=True, text=True, timeout=30)
                self.assertEqual((result.returncode, result.stdout.strip()),
                                 (0, "pixel " + pixel.__version__), result.stderr)


class ImportStartsNothing(unittest.TestCase):
    def test_import_has_no_side_effects(self):
        folder = temp_dir(self, "pixel-import-")
        result = subprocess.run(
            [sys.executable, "-c", "import sys, threading; sys.path.insert(0, %r); import pixel;"
             " print(threading.active_count(), threading.stack_size())" % HERE],
            cwd=folder, capture_output=True, text=True, timeout=30,
            env=dict(os.environ, PIXEL_PORT="nonsense"))
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "1 0\n", ""))
        self.assertEqual(os.listdir(folder), [])


class MachineRangesProcess(unittest.TestCase):
    """--machine-ranges in a running pixel.py: a file that does not load stops the start in
    one line naming it and its line, leaving no file; SIGHUP loads the files again."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.log = os.path.join(self.dir, "logs", "events.jsonl")
        os.makedirs(os.path.dirname(self.log))

    def test_a_start_that_cannot_load_them(self):
        bad = write_file(self.dir, "egress.csv", "172.224.226.0/27,GB,GB-EN,London,\n"
                                                 "172.224.226.999/27,GB,GB-EN,London,\n")
        missing = os.path.join(self.dir, "missing.csv")
        for argv, environ, message in (
                (["--machine-ranges", "apple_mpp=" + bad], {}, "%s line 2: " % bad),
                (["--machine-ranges", "scanner=" + missing], {}, "cannot read %s" % missing),
                ([], {"PIXEL_MACHINE_RANGES": "scanner=" + missing}, "cannot read %s" % missing),
                (["--machine-ranges", "scanner=" + self.dir], {}, "a directory")):
            with self.subTest(argv=argv, environ=environ):
                status, _, stderr = main_in_this_process(
                    ["--port", "0", "--cpu", "none", "--log", self.log] + argv, environ)
                self.assertEqual(status, 1, stderr)
                self.assertRegex(stderr, r"\Apixel: cannot load the machine ranges: [^\n]*\n\Z")
                self.assertIn(message, stderr)
                self.assertEqual(os.listdir(os.path.dirname(self.log)), [])
        status, stderr = wsgi_start_error(self, log=self.log,
                                          machine_ranges=["apple_mpp=" + bad])
        self.assertEqual(status, 3)
        self.assertEqual(stderr, "pixel: make_wsgi_app: cannot load the machine ranges: %s "
                                 "line 2: '172.224.226.999/27' is not a CIDR (not an address): "
                                 "each line starts with one, such as 172.224.226.0/27 or "
                                 "2a02:26f7::/48\n" % bad)
        self.assertEqual(os.listdir(os.path.dirname(self.log)), [])

    def test_sighup_reloads_them(self):
        ranges = write_file(self.dir, "ranges.csv", "10.0.0.0/8,elsewhere\n")
        process, port = start_pixel(self, "--log", self.log, "--machine-ranges",
                                    "apple_mpp=" + ranges, stderr=subprocess.PIPE)
        said = queue.Queue()
        listener = threading.Thread(target=lambda: [said.put(line) for line in process.stderr],
                                    daemon=True)
        listener.start()

        def machine(number):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=%d" % number,
                               headers={"User-Agent": "Mozilla/5.0"})
            self.assertEqual(connection.getresponse().read(), pixel.GIF)
            connection.close()
            with open(self.log, "rb") as handle:
                return json.loads(handle.read().splitlines()[-1])["context"].get("machine")

        def hup(text, expected):
            os.replace(write_file(self.dir, "next.csv", text), ranges)
            process.send_signal(signal.SIGHUP)
            line = said.get(timeout=10)   # the logs' reopen, then the ranges'
            while "machine ranges" not in line:
                line = said.get(timeout=10)
            self.assertIn(expected, line)

        self.assertIsNone(machine(1))
        hup("127.0.0.0/8,loopback\n", "reloaded the machine ranges (SIGHUP): apple_mpp 1")
        self.assertEqual(machine(2), "apple_mpp")
        hup("127.0.0.0/8\n127.0.0.0/33\n", "cannot reload the machine ranges, so the ranges "
                                           "loaded before stay in use: %s line 2: " % ranges)
        self.assertEqual(machine(3), "apple_mpp")
        os.remove(ranges)
        process.send_signal(signal.SIGHUP)
        line = said.get(timeout=10)
        while "machine ranges" not in line:
            line = said.get(timeout=10)
        self.assertIn("cannot read %s" % ranges, line)
        self.assertEqual(machine(4), "apple_mpp")
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(30), 0)
        listener.join(10)
        process.stderr.close()


def write_log(folder, name, lines, compress=False):
    data = b"".join(line + b"\n" for line in lines)
    return write_file(folder, name, gzip.compress(data) if compress else data)


class ReportCommand(unittest.TestCase):
    """`pixel.py report` as a process, on real files: plain, gzipped, stdin, a torn last
    line, a checkpoint among them, a damaged archive."""

    def setUp(self):
        self.dir = temp_dir(self)
        self.opens = [logged("u%d" % (number % 5), machine="apple_mpp" if number % 3 == 0
                             else None, day="2026-11-%02d" % (18 + number % 2),
                             properties={"campaign": "spring" if number < 6 else "summer"})
                      for number in range(10)]

    def report(self, *argv, stdin=None):
        """(status, stdout, stderr) of `pixel.py report ARGV`: through main() in this process,
        or, to read `stdin`, a process of its own (the tests below start one each for what
        only a process shows: a closed pipe, a full disk, SIGINT)."""
        if stdin is None:
            return main_in_this_process(["report"] + list(argv))
        result = subprocess.run([sys.executable, PIXEL_RUN, "report"] + list(argv),
                                input=stdin, capture_output=True, timeout=60, cwd=self.dir)
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    def test_plain_gzipped_stdin_torn_and_a_checkpoint(self):
        live = write_log(self.dir, "events.jsonl", self.opens[:4] + [b'{"type":"track","us'])
        archive = write_log(self.dir, "events.jsonl.20261118T000000.000Z.gz", self.opens[4:8],
                            compress=True)
        checkpoint = pixel.state_path(live, "forward")
        os.makedirs(os.path.dirname(checkpoint))
        pixel.write_checkpoint(checkpoint, {"device": 1, "inode": 2, "offset": 3,
                                            "mtime_ns": 4, "head_bytes": 0, "head": ""})
        stdin = gzip.compress(b"".join(line + b"\n" for line in self.opens[8:9]))
        status, out, err = self.report("--format", "json", "--by", "properties.campaign",
                                       live, archive, checkpoint, "-", stdin=stdin)
        self.assertEqual(status, 0, err)
        self.assertEqual([json.loads(line) for line in out.splitlines()], [
            {"key": "spring", "events": 6, "users": 5, "machine": 2, "events_no_machine": 4,
             "users_no_machine": 4},
            {"key": "summer", "events": 3, "users": 3, "machine": 1, "events_no_machine": 2,
             "users_no_machine": 2}])
        self.assertEqual(err, "pixel: report: skipped 2 line(s) that are not events (torn, not "
                              "JSON, or not an event: a checkpoint, say)\n")
        status, out, err = self.report("-", stdin=b"".join(line + b"\n" for line in self.opens))
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.splitlines()[1].split(), ["Email", "Opened", "10", "5", "4", "6",
                                                       "5"])

    def test_formats_and_filters(self):
        log = write_log(self.dir, "events.jsonl", self.opens + [
            logged("x", event="Clicked"), logged("y", kind="page", event=None, day="2026-11-30")])
        status, out, err = self.report("--format", "csv", "--daily", "--event", "Email Opened",
                                       "--since", "2026-11-19", "--by", "properties.campaign",
                                       log)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "key,day,events,users,machine,events_no_machine,users_no_machine\n"
                              "spring,,3,3,1,2,2\nspring,2026-11-19,3,3,1,2,2\n"
                              "summer,,2,2,1,1,1\nsummer,2026-11-19,2,2,1,1,1\n")
        # A campaign name a pixel URL made up is not a formula in a spreadsheet.
        hostile = write_log(self.dir, "hostile.jsonl", [
            logged("u", properties={"campaign": name}) for name in
            ("=HYPERLINK(\"http://x\")", "+1", "-1", "@SUM(A1)", "\tx", "plain",
             "\x1b[31mred", "=\x1b[2J", "ok\u202egnp.exe")])   # ... nor a terminal's escape
        status, out, err = self.report("--format", "csv", "--by", "properties.campaign", hostile)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(sorted(line.split(",")[0] for line in out.splitlines()[1:]),
                         sorted(['"\'=HYPERLINK(""http://x"")"', "'=\\x1b[2J", "'\tx", "'+1",
                                 "'-1", "'@SUM(A1)", "\\x1b[31mred", "plain",
                                 "ok\\u202egnp.exe"]))
        status, out, err = self.report("--type", "page", "--until", "2026-11-29", log)
        self.assertEqual([line.split() for line in out.splitlines()[1:]],
                         [["total", "0", "0", "0", "0", "0"]])
        status, out, err = self.report("--daily", log)
        lines = out.splitlines()
        self.assertEqual(lines[2].split()[-1], "#" * 24 + "." * 16, out)
        self.assertEqual(lines[-1], "(bars: # events not labelled machine, . machine events)")

    def test_a_damaged_archive_and_files_that_cannot_be_read(self):
        whole = gzip.compress(b"".join(logged("u%d" % number) + b"\n" for number in range(2000)))
        cut = write_file(self.dir, "cut.gz", whole[:len(whole) // 2])
        status, out, err = self.report("--format", "json", cut)
        self.assertEqual(status, 1)
        self.assertIn("pixel: report: cannot read %s to its end: " % cut, err)
        self.assertGreater(json.loads(out)["events"], 500)   # what came before is counted
        for path, message in ((os.path.join(self.dir, "missing"), "No such file"),
                              (self.dir, "Is a directory")):
            with self.subTest(path):
                status, out, err = self.report(path)
                self.assertEqual(status, 1)
                self.assertIn(message, err)
                self.assertTrue(out.startswith("event "), out)

    def test_bad_command_lines(self):
        for argv, message in ((["--since", "yesterday", "x"], "not a date"),
                              (["--by", "properties..campaign", "x"], "not a dotted field"),
                              (["--type", "click", "x"], "invalid choice"),
                              (["--format", "xml", "x"], "invalid choice"),
                              ([], "the following arguments are required: FILE")):
            with self.subTest(argv):
                status, out, err = self.report(*argv)
                self.assertEqual((status, out), (2, ""))
                self.assertIn("usage: pixel.py report", err)
                self.assertIn(message, err)

    def test_a_reader_that_stops_early(self):
        lines = [logged("u", event="e%d" % number) for number in range(20000)]
        process = subprocess.Popen([sys.executable, PIXEL_RUN, "report",
                                    write_log(self.dir, "e.jsonl", lines)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        process.stdout.readline()
        process.stdout.close()   # `| head -1`
        stderr = process.stderr.read()
        process.stderr.close()
        self.assertEqual((process.wait(30), stderr), (0, b""))

    def test_a_full_disk_under_stdout(self):
        log = write_log(self.dir, "e.jsonl", [logged("u", event="e%d" % number)
                                              for number in range(2000)])
        with open("/dev/full", "wb") as full:
            result = subprocess.run([sys.executable, PIXEL_RUN, "report", log], stdout=full,
                                    stderr=subprocess.PIPE, timeout=60)
        self.assertEqual((result.returncode, result.stderr),
                         (1, b"pixel: report: cannot write the report: No space left on "
                             b"device\n"))

    def test_sigint_stops_it_quietly(self):
        # A shell's background job starts with SIGINT ignored, and Python keeps an ignored
        # SIGINT ignored: the child gets the default, as a terminal's Ctrl-C finds it.
        process = subprocess.Popen([sys.executable, PIXEL_RUN, "report", "/dev/zero"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                    signal.SIG_DFL))
        self.addCleanup(process.kill)

        def reading():   # in the read loop: report opens its files first (CI once caught
            try:           # it there: "stopped while reading the files"), then 256 MiB read
                with open("/proc/%d/io" % process.pid) as handle:
                    return int(handle.read().split("rchar:")[1].split()[0]) > 256 << 20
            except (OSError, IndexError):   # gone, or no such counter here
                return False
        self.assertTrue(wait_until(reading))
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
        self.assertEqual((process.returncode, stdout), (130, b""))
        self.assertEqual(stderr, b"pixel: report: stopped while reading /dev/zero; nothing "
                                 b"is reported\n")

    def test_a_cr_in_a_key_is_no_row_of_its_own(self):
        # The report attack: csv quotes \n but not \r, and a row split at a bare CR put a
        # formula first on a row of its own, past the quote that guards a cell's start.
        import csv
        log = write_log(self.dir, "e.jsonl", [logged("u", properties={"campaign": name})
                                              for name in ("spring\r=2+5", "\r=1", "a\nb")])
        status, out, err = self.report("--format", "csv", "--by", "properties.campaign", log)
        self.assertEqual((status, err), (0, ""))
        self.assertNotIn("\r", out)
        rows = list(csv.reader(io.StringIO(out)))
        self.assertEqual(sorted(row[0] for row in rows[1:]), ["\\r=1", "a\nb", "spring\\r=2+5"])

    def test_files_renamed_while_it_reads_are_each_counted_once(self):
        # logrotate (events.jsonl to .1, .1 to .2) while a report of events.jsonl* ran: the
        # live file was read twice, and the old .1 never. Every file is opened before one is
        # read; here a FIFO first holds the read back while the test rotates the other two.
        fifo = os.path.join(self.dir, "first")
        os.mkfifo(fifo)
        live = write_log(self.dir, "events.jsonl", [logged("live%d" % n) for n in range(3)])
        old = write_log(self.dir, "events.jsonl.1", [logged("old%d" % n) for n in range(2)])
        process = subprocess.Popen([sys.executable, PIXEL_RUN, "report", "--format", "json",
                                    fifo, live, old], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        self.addCleanup(process.kill)
        writer = os.open(fifo, os.O_WRONLY)   # the report's open of the FIFO returns

        def holds(path):
            folder = "/proc/%d/fd" % process.pid
            try:
                return any(os.readlink(os.path.join(folder, fd)) == path
                           for fd in os.listdir(folder))
            except OSError:
                return False
        self.assertTrue(wait_until(lambda: holds(old), timeout=10))
        os.replace(live, old)
        write_log(self.dir, "events.jsonl", [])
        os.write(writer, logged("fifo") + b"\n")
        os.close(writer)
        out, err = process.communicate(timeout=30)
        self.assertEqual((process.returncode, err), (0, b""))
        self.assertEqual((json.loads(out)["events"], json.loads(out)["users"]), (6, 6))
        # A file named twice, or by a link, is one file.
        link = os.path.join(self.dir, "link")
        os.symlink(old, link)
        status, out, err = self.report("--format", "json", old, link, old)
        self.assertEqual((status, json.loads(out)["events"]), (0, 3))
        self.assertEqual(err, "pixel: report: %s is %s again: counted once\n" * 2
                         % (link, old, old, old))

    def test_what_it_cannot_read_is_said_and_never_counted_as_nothing(self):
        import bz2
        import lzma
        data = b"".join(logged("u%d" % n) + b"\n" for n in range(500))
        for name, packed in (("e.xz", lzma.compress(data)), ("e.bz2", bz2.compress(data)),
                             ("e.zst", b"\x28\xb5\x2f\xfd" + os.urandom(50))):
            with self.subTest(name):
                path = write_file(self.dir, name, packed)
                status, out, err = self.report(path)
                self.assertEqual(status, 1)
                self.assertIn("cannot read %s: packed with " % path, err)
        # A pipe that hands over gzip's first byte alone was read as text: 0 of 500, exit 0.
        for packed in (gzip.compress(data), data):
            process = subprocess.Popen([sys.executable, PIXEL_RUN, "report", "--format", "json",
                                        "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            self.addCleanup(process.kill)
            process.stdin.write(packed[:1])
            process.stdin.flush()
            time.sleep(0.3)   # the report's first read takes the one byte
            out, err = process.communicate(packed[1:], timeout=30)
            self.assertEqual((process.returncode, err), (0, b""))
            self.assertEqual(json.loads(out)["events"], 500)
        # No stdin, no stdout, an ASCII stdout: a line each, no traceback.
        log = write_log(self.dir, "e.jsonl", [logged("u", properties={"campaign": "caf\u00e9"})])
        for shell, environ, wanted in (
                ('"$@" report - <&-', {}, "cannot read stdin: stdin is closed"),
                ('"$@" report %s >&-' % log, {}, "stdout is closed"),
                ('"$@" report --by properties.campaign %s' % log, {"PYTHONIOENCODING": "ascii"},
                 "")):
            with self.subTest(shell):
                result = subprocess.run(["bash", "-c", shell, "bash", sys.executable, PIXEL_RUN],
                                        capture_output=True, timeout=30,
                                        env=dict(os.environ, **environ))
                self.assertNotIn(b"Traceback", result.stderr)
                self.assertIn(wanted.encode(), result.stderr)
                self.assertEqual(result.returncode, 1 if wanted else 0)
        self.assertIn(b"caf\\xe9", result.stdout)

    def test_more_files_than_the_open_file_limit(self):
        # The attack on opening every file first: under ulimit -n 128, 200 files gave 124
        # counted and 76 "Too many open files". Past the limit a file is opened when read.
        import resource
        paths = [write_log(self.dir, "e.%d" % number, [logged("u%d" % number)])
                 for number in range(200)]
        result = subprocess.run(
            [sys.executable, PIXEL_RUN, "report", "--format", "json"] + paths + paths[-1:],
            capture_output=True, text=True, timeout=60,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 128)))
        self.assertEqual(result.stderr, "pixel: report: %s is %s again: counted once\n"
                         % (paths[-1], paths[-1]))
        self.assertEqual((result.returncode, json.loads(result.stdout)["events"]), (0, 200))
        # ... nor with 50 descriptors its caller handed down (129 counted, 21 errors).
        inherited = [os.open(paths[0], os.O_RDONLY) for _ in range(50)]
        self.addCleanup(lambda: [os.close(fd) for fd in inherited])
        result = subprocess.run(
            [sys.executable, PIXEL_RUN, "report", "--format", "json"] + paths,
            capture_output=True, text=True, timeout=60, pass_fds=inherited,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)))
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(json.loads(result.stdout)["events"], 200)
        # ... nor, with the limit reached, a gzipped file first (the third attack: gzip's
        # import found no descriptor free, and the file was not read).
        packed = write_log(self.dir, "a.jsonl.gz", [logged("z%d" % n) for n in range(10)],
                           compress=True)
        result = subprocess.run(
            [sys.executable, PIXEL_RUN, "report", "--format", "json", packed] + paths[:30],
            capture_output=True, text=True, timeout=60, pass_fds=inherited,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(json.loads(result.stdout)["events"], 40)

    def test_a_file_read_then_renamed_to_one_opened_later_is_counted_once(self):
        # The third attack: past the open-file limit, a file read and closed was remembered by
        # its ctime, which a rename changes: renamed to a later name, it was counted twice.
        import resource
        live = write_log(self.dir, "events.jsonl", [logged("live%d" % n) for n in range(10)])
        fillers = [write_log(self.dir, "f%02d" % n, [logged("f%d" % n)]) for n in range(7)]
        fifo = os.path.join(self.dir, "pause")
        os.mkfifo(fifo)
        rotated = write_log(self.dir, "events.jsonl.1", [logged("old%d" % n) for n in range(5)])
        process = subprocess.Popen(   # 8 opened at once; the FIFO and .1 when read
            [sys.executable, PIXEL_RUN, "report", "--format", "json", live] + fillers +
            [fifo, rotated], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)))
        self.addCleanup(process.kill)

        writer = []   # its open returns once the report opens the FIFO: the eight are read
        opener = threading.Thread(target=lambda: writer.append(os.open(fifo, os.O_WRONLY)))
        opener.start()
        opener.join(30)
        self.addCleanup(lambda: writer or os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)))
        self.assertTrue(writer, "the report never reached the FIFO")
        os.replace(live, rotated)   # a rotation: the old .1 is gone, the read live file is .1
        os.close(writer[0])
        out, err = process.communicate(timeout=30)
        self.assertEqual((process.returncode, json.loads(out)["events"]), (0, 17), err)
        self.assertIn("%s is %s again: counted once" % (rotated, live), err)

    def test_times_finer_than_a_millisecond_are_cut_as_dates_cut_them(self):
        log = write_log(self.dir, "e.jsonl", [
            logged("late", receivedAt="2026-12-01T23:59:59.9996Z"),
            logged("next", receivedAt="2026-12-02T00:00:00.000Z")])
        for argv, users in ((["--until", "2026-12-01"], 1),
                            (["--until", "2026-12-01T23:59:59.9995Z"], 1),
                            (["--since", "2026-12-02"], 1)):
            with self.subTest(argv):
                status, out, err = self.report("--format", "json", *argv, log)
                self.assertEqual((status, err), (0, ""))
                self.assertEqual(json.loads(out)["users"], users)
        status, out, err = self.report("--format", "json", "--daily", log)
        self.assertEqual([json.loads(line)["day"] for line in out.splitlines()],
                         [None, "2026-12-01", "2026-12-02"])
        # pixel's own receivedAt is compared as text, unparsed (half the speed otherwise).
        with unittest.mock.patch.object(pixel, "parse_time", side_effect=AssertionError):
            self.assertEqual(pixel._received_text("2026-12-01T23:59:59.999Z"),
                             "2026-12-01T23:59:59.999Z")

    @soak
    def test_memory_grows_with_users_not_lines(self):
        # The same 2,000 users in a 10 MB log and in a 60 MB one, and a 30 MB line with
        # no newline: the peak RSS of each run, in KiB.
        lines = [logged("user-%d" % (number % 2000), properties={"pad": "p" * 400})
                 for number in range(20000)]
        small = write_log(self.dir, "small.jsonl", lines)
        large = write_log(self.dir, "large.jsonl", lines * 6)
        line = write_file(self.dir, "line.jsonl", b"x" * (30 << 20))
        script = ("import resource, sys; sys.path.insert(0, %r); import pixel; "
                  "status = pixel.report_files(sys.argv[1:]); "
                  "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
                  % HERE)
        peaks = []
        for path in (small, large, line):
            result = subprocess.run([sys.executable, "-c", script, path], capture_output=True,
                                    text=True, timeout=120)
            peaks.append(int(result.stderr.splitlines()[-1]))
        self.assertLess(peaks[1] - peaks[0], 8 * 1024, peaks)
        self.assertLess(peaks[2] - peaks[0], 8 * 1024, peaks)


# ---------------------------------------------------------------------------------------------
# The README, checked against the code


class Shape(unittest.TestCase):
    """What issue 20 asks of the file's shape, held: no class over 250 lines, an __all__ of
    at most 20 names, help(pixel) under 1,000 lines, no line over 99 characters, sections
    that call only those above them, and nothing imported from outside the standard library."""

    @classmethod
    def setUpClass(cls):
        with open(pixel.__file__, encoding="utf-8") as handle:
            cls.source = handle.read()
        cls.tree = ast.parse(cls.source)   # once: a parse of pixel.py takes 0.15 s here
        cls.nodes = list(ast.walk(cls.tree))

    def test_classes_and_lines(self):
        long = [(node.name, node.end_lineno - node.lineno + 1) for node in self.nodes
                if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno >= 250]
        self.assertEqual(long, [])
        self.assertEqual([number for number, line in enumerate(self.source.splitlines(), 1)
                          if len(line) > 99], [])

    def test_surface(self):
        self.assertLessEqual(len(pixel.__all__), 20)
        self.assertEqual([name for name in pixel.__all__ if not hasattr(pixel, name)], [])
        self.assertLess(len(pydoc.render_doc(pixel, renderer=pydoc.plaintext).splitlines()),
                        1000)

    def test_each_section_calls_only_the_ones_above_it(self):
        # Issue 20: "nothing earlier calling into a later section", as the docstring says.
        lines = self.source.splitlines()
        rules = [number for number, line in enumerate(lines, 1) if line.startswith("# ----")]
        section = {}   # a top-level name: the number of its section
        for node in self.tree.body:
            for target in ([node] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
                           getattr(node, "targets", [])):
                section[getattr(target, "name", getattr(target, "id", None))] = \
                    bisect.bisect(rules, node.lineno)
        later = []
        for node in self.tree.body:
            names = [sub for sub in ast.walk(node) if isinstance(sub, (ast.Name, ast.arg))]
            local = {getattr(sub, "id", None) or sub.arg for sub in names   # a parameter or a
                     if isinstance(getattr(sub, "ctx", ast.Store()), ast.Store)}   # variable
            here = bisect.bisect(rules, node.lineno)
            later += [(sub.lineno, sub.id) for sub in names if isinstance(sub, ast.Name)
                      and section.get(sub.id, 0) > here and sub.id not in local]
        self.assertGreater(len(rules), 15)
        self.assertEqual(later, [])

    def test_no_top_level_name_bound_again_far_from_its_first(self):
        # A second _ID_FIELDS, 2,250 lines below the first, made validate check previousId.
        # Rebinding a few lines on (a namedtuple's __doc__, a fallback) reads as one thing.
        first, far = {}, []
        for node in self.tree.body:
            targets = [node] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [
                sub for target in getattr(node, "targets", []) for sub in ast.walk(target)
                if isinstance(sub, ast.Name)]
            for target in targets:
                name = getattr(target, "name", getattr(target, "id", None))
                if node.lineno - first.setdefault(name, node.lineno) > 5:
                    far.append((name, first[name], node.lineno))
        self.assertEqual(far, [])

    @unittest.skipIf(sys.version_info < (3, 10), "sys.stdlib_module_names is 3.10's")
    def test_stdlib_only(self):
        imported = {alias.name.partition(".")[0] for node in self.nodes
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.partition(".")[0] for node in self.nodes
                     if isinstance(node, ast.ImportFrom) and node.module}
        self.assertEqual(imported - sys.stdlib_module_names, set())

    def test_readme_of_at_most_650_lines_of_at_most_100_characters(self):
        # A line packed past 100 characters met the count and not the reading time: 22 were,
        # up to 410 characters (rewrapped, 671 lines). Code, tables and headings are exempt,
        # and so is a single token, a long link.
        with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
            lines, code, long = handle.read().splitlines(), False, []
        for number, line in enumerate(lines, 1):
            code = code != line.startswith("```")
            if not (code or line.startswith(("```", "|", "#"))) and len(line) > 100 and \
                    " " in line.strip():
                long.append(number)
        self.assertLessEqual(len(lines), 650)
        self.assertEqual(long, [])


class ReadmeIsTrue(unittest.TestCase):
    """The README's examples, tables and commands, checked against the code."""

    @classmethod
    def setUpClass(cls):
        with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
            cls.readme = handle.read()

    def blocks(self, language):
        return re.findall(r"```%s\n(.*?)```" % language, self.readme, re.S)

    def test_the_erase_commands_reach_every_file_pixel_writes(self):
        # A backfill keeps the events its receiver refused, whole, in forward-rejects.jsonl:
        # the README's globs must reach that file, and still match where there is none.
        commands = [line for line in self.readme.splitlines()
                    if line.startswith("python3 pixel.py erase ")]
        self.assertEqual(len(commands), 2)
        names = ["events.jsonl", "events.jsonl.20261201T000000.000Z", "rejects.jsonl"]
        # and a pixel@ unit's files, each process's own (Install on a VM)
        for extra in ([], ["forward-rejects.jsonl"],
                      ["events-0.jsonl", "events-1.jsonl.20261201T000000.000Z",
                       "rejects-0.jsonl"]):
            with self.subTest(extra=extra):
                folder = temp_dir(self)
                for name in names + extra:
                    with open(os.path.join(folder, name), "w") as handle:
                        for user in ("025pikachu025", "a", "b", "c"):
                            handle.write(json.dumps({"type": "track", "userId": user,
                                                     "event": "e", "writeKey": "K"}) + "\n")
                for command in commands:
                    result = subprocess.run(
                        command.replace("/var/lib/pixel/", folder + "/").replace(
                            "python3 pixel.py", "%s %s" % (shlex.quote(sys.executable),
                                                           shlex.quote(PIXEL_RUN))),
                        shell=True, capture_output=True, text=True, timeout=60)
                    self.assertEqual(result.returncode, 0, result.stderr)
                for name in names + extra:
                    with open(os.path.join(folder, name)) as handle:
                        self.assertNotIn("025pikachu025", handle.read(), name)

    def test_python_examples_run(self):
        ran = 0
        for block in self.blocks("python"):
            if "import segment" in block or "from flask" in block:
                continue   # need a server, Segment's SDK or Flask: ReadmeWsgi and .ci/run
            exec(compile(block, "README.md", "exec"), {})
            ran += 1
        self.assertGreater(ran, 0)

    def test_img_snippet_and_docs_pixel_are_accepted(self):
        import html
        snippets = self.blocks("html")
        events = []
        for snippet in snippets:
            # Fill the ESP merge tags (*|UNIQID|*, {{user_id}}, {{ user_id }}) as a send would.
            filled = re.sub(r"\*\|[A-Z_]+\|\*|\{\{ ?[a-z_]+ ?\}\}", "v123", snippet)
            for match in re.finditer(r'src="https://[^/]+([^"]+)"', filled):
                path, _, query = html.unescape(match.group(1)).partition("?")
                events.append(pixel.pixel_event(path.rsplit("/", 1)[1], query, received_at=T0))
        self.assertGreaterEqual(len(events), 5)
        self.assertEqual(events[0]["properties"], {"subject": "The Electric Daily"})
        self.assertTrue(all(event["userId"] == "v123" for event in events[1:]))
        docs = re.search(r"`(/v1/pixel/track\?data=[^`]+)`", self.readme).group(1)
        self.assertEqual(docs, "/v1/pixel/track?data=" + DOCS_DATA)

    def test_sample_lines_match_what_the_server_writes(self):
        sample, reject = [json.loads(block) for block in self.blocks("json")]
        event = pixel.pixel_event("track", "data=" + DOCS_DATA, received_at=T0,
                                  ip="203.0.113.7", user_agent=sample["context"]["userAgent"])
        # "Opened in Outlook": the recorder adds the label a pixel fetch gets.
        self.assertEqual(pixel.fetch_labels(sample["context"]["userAgent"], {}),
                         ("outlook", None))
        event["context"]["mailClient"] = "outlook"
        self.assertEqual(list(event), list(sample))
        self.assertEqual({k: v for k, v in event.items() if k != "messageId"},
                         {k: v for k, v in sample.items() if k != "messageId"})
        self.assertEqual(list(reject), ["reason", "method", "path", "query", "ip", "userAgent",
                                        "receivedAt"])
        with self.assertRaises(pixel.Rejected) as caught:
            pixel.pixel_event("track", reject["query"], received_at=T0)
        self.assertEqual(caught.exception.reason, reject["reason"])

    def test_the_tour_shows_the_line_its_curl_writes(self):
        tour = self.readme.split("## A 60-second tour")[1].split("\n## ")[0]
        target = re.search(r"'http://127\.0\.0\.1:8000(/[^?]+)\?([^']+)'", tour)
        shown = json.loads(tour.split("$ cat events.jsonl\n")[1].split("\n")[0])
        folder = temp_dir(self)
        made = make_pixel(self, folder)
        made.app.answer(pixel.ROUTES[target.group(1)], request(
            path=target.group(1), query=target.group(2), peer="127.0.0.1",
            headers={"user-agent": shown["context"]["userAgent"]}))
        with open(os.path.join(folder, "events.jsonl"), "rb") as handle:
            (written,) = [json.loads(line) for line in handle]
        for event in (written, shown):
            for field in ("messageId", "receivedAt", "timestamp"):
                event.pop(field)
        self.assertEqual(list(written), list(shown))
        self.assertEqual(written, shown)   # with curl's label: "machine": "scanner"

    def test_the_tours_count_is_what_its_loop_writes(self):
        # The newcomer pass: the tour counted curl's fetches, labelled scanner, as people.
        tour = self.readme.split("## A 60-second tour")[1].split("\n## ")[0]
        agent = re.search(r"\$ mail='([^']+)'", tour).group(1)
        users = re.search(r"for user in ([^;]+);", tour).group(1).split()
        path, query = re.search(r'"http://127\.0\.0\.1:8000(/[^?]+)\?([^"]+)"', tour).groups()
        shown = int(tour.split("events.jsonl\n")[-1].split("\n")[0])
        folder = temp_dir(self)
        made = make_pixel(self, folder)
        for user in users + ["curl"]:   # and one that is no person
            made.app.answer(pixel.ROUTES[path], request(
                path=path, query=query.replace("$user", user),
                headers={"user-agent": agent if user != "curl" else "curl/7.88.1"}))
        with open(os.path.join(folder, "events.jsonl"), "rb") as handle:
            events = [json.loads(line) for line in handle]
        self.assertEqual(len(events), 4)
        people = {event["userId"] for event in events if event["properties"]["campaign"] ==
                  "spring-sale" and event["context"].get("machine") is None}
        self.assertEqual(len(people), shown)   # the jq line's filter, in Python
        self.assertIn(".context.machine == null", tour)

    def test_every_reason_is_documented_and_every_documented_reason_exists(self):
        section = self.readme.split("## The rejects log")[1].split("\n## ")[0]
        documented = set(re.findall(r"`([a-z0-9_]+)`", "\n".join(
            line.split("|")[1] for line in section.splitlines() if line.startswith("| `"))))
        self.assertEqual(documented, set(pixel.REASONS))

    def test_every_reason_the_code_names_is_in_the_table(self):
        # Read from pixel.py's syntax tree: the literal reason of every Rejected(...), the
        # values of the module's field -> reason tables that validate() raises from, and
        # the reason of every HeadError whose status (414, 431) writes a rejects line.
        with open(PIXEL_PY, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        tables = {node.targets[0].id: [value.value for value in node.value.values]
                  for node in tree.body if isinstance(node, ast.Assign) and
                  isinstance(node.targets[0], ast.Name) and
                  node.targets[0].id in ("_OBJECT_FIELDS", "_STRING_FIELDS")}
        named, forwarded = set(), []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "refuse" and isinstance(node.args[2], ast.Constant):
                named.add(node.args[2].value)   # App.refuse(route, request, reason, status)
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id in ("Rejected", "_BadBody"):
                reason = node.args[0]
                if isinstance(reason, ast.Constant):
                    named.add(reason.value)
                else:
                    forwarded.append(ast.unparse(reason) if hasattr(ast, "unparse") else "")
            elif node.func.id == "HeadError" and (node.args[0].value in (414, 431) or
                                                  node.args[1].value in
                                                  pixel._ROUTED_HEAD_ERRORS):
                named.add(node.args[1].value)
            elif node.func.id == "HeadError":
                self.assertIn(node.args[0].value, (400, 505))
        named.update(tables["_OBJECT_FIELDS"] + tables["_STRING_FIELDS"])
        self.assertEqual(named, set(pixel.REASONS))
        # The only reasons not written out are the ones passed along from those above.
        self.assertLessEqual(set(forwarded), {"reason", "error.reason", ""})

    def test_every_test_the_security_table_names_exists(self):
        section = self.readme.split("## Security and privacy")[1].split("\n## ")[0]
        rows = [line.split("|") for line in section.splitlines() if line.startswith("| ")]
        named = [name for row in rows[2:] for name in re.findall(r"`([A-Za-z_.0-9]+)`", row[3])]
        self.assertGreater(len(named), 20)
        module = sys.modules[__name__]
        for name in named:
            if name == "Properties" and hypothesis is None:
                continue   # defined only where hypothesis is installed (.ci/run's venv)
            with self.subTest(name):
                target = module
                for part in name.split("."):
                    target = getattr(target, part)   # AttributeError: no such test

    def test_options_table_matches_the_parser(self):
        parser = pixel.build_parser({})
        flags = {option for action in parser._actions for option in action.option_strings
                 if option.startswith("--") and option != "--help"}
        section = self.readme.split("## Options")[1].split("\n## ")[0]
        rows = [line.split("|") for line in section.splitlines() if line.startswith("| `--")]
        self.assertEqual({row[1].strip().strip("`") for row in rows}, flags)
        for row in rows:
            variable = re.search(r"PIXEL_[A-Z_]+", row[2])
            if variable:
                self.assertIn(variable.group(), parser.format_help())
        args = pixel.parse_args([], {})
        for flag, value in (("--host", args.host), ("--port", args.port), ("--log", args.log),
                            ("--max-connections", args.max_connections)):
            row = next(row for row in rows if row[1].strip() == "`%s`" % flag)
            self.assertEqual(row[3].strip().strip("`"), str(value))

    def test_the_soak_tests_counted(self):
        tests, suites = [], [unittest.TestLoader().loadTestsFromModule(   # not -k's
            sys.modules[__name__])]
        while suites:
            for test in suites.pop():
                (suites if isinstance(test, unittest.TestSuite) else tests).append(test)
        count = sum(getattr(type(test), "soak", False) is True or getattr(
            getattr(test, test._testMethodName), "soak", False) for test in tests)
        said = re.search(r"`PIXEL_SOAK=1` adds (\d+) long", self.readme)
        self.assertEqual(int(said.group(1)), count)

    def test_the_two_commands(self):
        self.assertIn("```sh\npython3 pixel.py\n```", self.readme)
        self.assertIn("```sh\npython3 -m unittest -v\n```", self.readme)
        with open(os.path.join(HERE, ".ci", "run"), encoding="utf-8") as handle:
            self.assertIn("python3 -m unittest -v", handle.read())


class ReadmeWsgi(unittest.TestCase):
    """The README's WSGI section, run as written: the Flask mount and both commands."""

    @classmethod
    def setUpClass(cls):
        with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
            cls.section = handle.read().split("## Inside an existing web application")[1] \
                .split("\n## ")[0]

    def setUp(self):
        self.dir = temp_dir(self)

    def logged(self):
        with open(os.path.join(self.dir, "events.jsonl"), "rb") as handle:
            return [json.loads(line) for line in handle]

    def test_it_names_every_option_make_wsgi_app_takes(self):
        sentence = self.section.split("`make_wsgi_app(**options)`")[1].split("(lists")[0]
        self.assertEqual(re.findall(r"`([a-z_]+)`", sentence),
                         [option.name for option in pixel.OPTIONS if option.scope != "server"])

    def test_the_reload_wait(self):
        self.assertIn("waits up to %g s" % pixel.WSGI_LOCK_WAIT, self.section)

    def test_flask_mount(self):
        try:
            import flask
        except ImportError:
            flask = None
        need(flask, "flask")
        (block,) = re.findall(r"```python\n(.*?)```", self.section, re.S)
        namespace = {"__name__": "readme_flask"}
        cwd = os.getcwd()
        os.chdir(self.dir)   # the example's log is relative
        try:
            exec(compile(block, "README.md", "exec"), namespace)
        finally:
            os.chdir(cwd)
        client = namespace["app"].test_client()
        self.assertEqual(client.get("/").data, b"the rest of your site")
        answer = client.get("/collect/v1/pixel/track?writeKey=YOUR_WRITE_KEY&userId=u"
                            "&event=Opened", environ_base={"REMOTE_ADDR": "198.51.100.4"})
        self.assertEqual((answer.status_code, answer.data), (200, pixel.GIF))
        self.assertEqual(client.get("/collect/v1/pixel/track?writeKey=other&userId=u"
                                    "&event=Opened").data, pixel.GIF)
        self.assertEqual(client.get("/collect/elsewhere").status_code, 404)
        (event,) = self.logged()
        self.assertEqual((event["event"], event["context"]["ip"]), ("Opened", "198.51.100.4"))
        with open(os.path.join(self.dir, "rejects.jsonl"), "rb") as handle:
            self.assertEqual(json.loads(handle.read())["reason"], "invalid_write_key")

    def command(self, starts_with):
        (block,) = re.findall(r"```sh\n(.*?)```", self.section, re.S)
        (line,) = [line for line in block.splitlines() if line.startswith(starts_with)]
        with socket.socket() as probe:   # a free port; the commands name a fixed one
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return shlex.split(line.replace("8000", str(port))), port

    def run_command(self, argv, port):
        environment = dict(os.environ, PYTHONPATH=HERE)
        process = subprocess.Popen(argv, cwd=self.dir, env=environment,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)

        def pixel_answers():
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=cmd")
                return connection.getresponse().read() == pixel.GIF
            except OSError:   # not listening yet
                return False
            finally:
                connection.close()
        self.assertTrue(wait_until(pixel_answers, timeout=30), " ".join(argv))
        self.assertEqual(self.logged()[0]["event"], "cmd")

    def test_wsgiref_command(self):
        argv, port = self.command("python3 -c")
        argv[0] = sys.executable
        self.run_command(argv, port)

    def test_gunicorn_command(self):
        gunicorn = gunicorn_command()
        need(gunicorn, "gunicorn")
        argv, port = self.command("gunicorn ")
        argv[0] = gunicorn
        self.run_command(argv, port)
        # A pixel's request line may be 64 KiB; gunicorn's own limit is 4 KiB unless told.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(connection.close)
        connection.request("GET", "/v1/pixel/track?writeKey=k&userId=u&event=long"
                                  "&properties.pad=" + "x" * 10000)
        self.assertEqual(connection.getresponse().read(), pixel.GIF)
        self.assertEqual(self.logged()[-1]["properties"]["pad"], "x" * 10000)



class ReadmeOpens(unittest.TestCase):
    """The README's email section and report section (issue 21), run as written."""

    @classmethod
    def setUpClass(cls):
        with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
            readme = handle.read()
        cls.email = readme.split("**In an email template**")[1].split("\n## ")[0]
        cls.report = readme.split("## Counting opens: `pixel.py report`")[1].split("\n## ")[0]

    def test_unique_opens_and_every_open(self):
        sources = [html.unescape(match.group(1))
                   for block in re.findall(r"```html\n(.*?)```", self.email, re.S)
                   for match in re.finditer(r'src="https://[^/]+([^"]+)"', block)]
        unique, every = [source for source in sources if "{{message_id}}" in source]
        self.assertNotIn("messageId", every)
        folder = temp_dir(self)
        made = make_pixel(self, folder)
        for source in (unique, every):
            filled = source.replace("{{user_id}}", "u1").replace("{{message_id}}", "send-7")
            path, _, query = filled.partition("?")
            for agent in ("Mozilla/5.0", APPLE_MAIL):   # Apple's fetch, then the person's
                answer = made.app.answer(pixel.route_for(path), request(
                    path=path, query=query, headers={"user-agent": agent}))
                self.assertIs(answer, pixel.GIF_ANSWER)
        with open(os.path.join(folder, "events.jsonl"), "rb") as handle:
            events = [json.loads(line) for line in handle]
        self.assertEqual([(event.get("messageId") == "send-7",
                           event.get("properties", {}).get("sendId")) for event in events],
                         [(True, None), (False, "send-7"), (False, "send-7")])

    def test_the_report_example(self):
        (command,) = re.findall(r"```sh\n(.*?)\n```", self.report, re.S)
        (expected,) = re.findall(r"```text\n(.*?)```", self.report, re.S)
        argv = shlex.split(command)
        self.assertEqual(argv[:3], ["python3", "pixel.py", "report"])
        folder = temp_dir(self)
        log = os.path.join(folder, "events.jsonl")
        load_bench("opens").write_event_log(log, 0.1, users=400, campaigns=3, days=7)
        stdout = io.StringIO()
        self.assertEqual(pixel.report_files([log if word == "events.jsonl*" else word
                                             for word in argv[3:]], stdout=stdout), 0)
        self.assertEqual(stdout.getvalue(), expected)

    def test_the_costs_are_measured_numbers(self):
        with open(os.path.join(HERE, "bench", "README.md"), encoding="utf-8") as handle:
            bench = handle.read().split("## Machine opens")[1]
        self.assertIn("bench/README.md", self.email)
        table = bench.split("| | |\n| --- | --- |\n")[1].split("\n\n")[0]
        costs = [line.split("|")[2].strip() for line in table.splitlines()]
        self.assertEqual(len(costs), 4)
        for cost, unit in zip(costs, (" s", " µs", " µs", " over")):
            self.assertRegex(cost, r"\A\d[\d.-]*\d" + unit)
        self.assertRegex(self.report, r"at [\d-]+\s+MB/s")
        self.assertIn("python3 bench/opens.py", bench)
        with open(os.path.join(HERE, "bench", "opens.py"), encoding="utf-8") as handle:
            sections = re.search(r"choices=\(([^)]*)\)", handle.read()).group(1)
        self.assertEqual(re.findall(r'"(\w+)"', sections),
                         ["ranges", "labels", "keepalive", "report"])


# --------------------------------------------------------------------------------------------
# Forgetting a person (issue 22): --suppress, and `pixel.py erase`

def digest(text):
    return "sha256:" + __import__("hashlib").sha256(text.encode()).hexdigest()


PEOPLE_CASES = [
    # name, entries, payload, named
    ("a userId", ["alice"], {"userId": "alice"}, True),
    ("trimmed on both sides", [" alice\t"], {"userId": "  alice "}, True),
    ("exact: no other case", ["alice"], {"userId": "Alice"}, False),
    ("exact: no substring", ["alice"], {"userId": "alice2"}, False),
    ("an anonymousId", ["a-1"], {"anonymousId": "a-1"}, True),
    ("an alias's previousId", ["old"], {"userId": "new", "previousId": "old"}, True),
    ("a number id", ["123"], {"userId": 123}, True),
    ("a float id, as the log has it", ["1.5"], {"userId": 1.5}, True),
    ("true is no id", ["True"], {"userId": True}, False),
    ("an address, lower-cased", ["Alice@Example.COM"],
     {"userId": "u", "traits": {"email": " alice@example.com "}}, True),
    ("an address in context.traits", ["alice@example.com"],
     {"userId": "u", "context": {"traits": {"email": "ALICE@example.com"}}}, True),
    ("an address in properties", ["alice@example.com"],
     {"userId": "u", "properties": {"email": "Alice@Example.com"}}, True),
    ("an address as the userId", ["alice@example.com"], {"userId": "Alice@Example.com"}, True),
    ("an address elsewhere is not looked at", ["alice@example.com"],
     {"userId": "u", "properties": {"contact": "alice@example.com"}}, False),
    ("an id in an email field is not an id", ["alice"],
     {"userId": "u", "traits": {"email": "alice"}}, False),
    ("an id in properties is not looked at", ["alice"],
     {"userId": "u", "properties": {"userId": "alice"}}, False),
    ("a digest of an id", [digest("alice")], {"anonymousId": "alice"}, True),
    ("a digest, its hex in capitals", [digest("alice").upper().replace("SHA256", "sha256")],
     {"userId": "alice"}, True),
    ("a digest of an address, lower-cased", [digest("alice@example.com")],
     {"userId": "u", "traits": {"email": "ALICE@example.com"}}, True),
    ("text that looks like JSON", ['{"userId":"x"}'], {"userId": '{"userId":"x"}'}, True),
    ("a regular expression is only text", [".*"], {"userId": "alice"}, False),
    ("a glob is only text", ["*"], {"userId": "alice"}, False),
    ("null is only text", ["null"], {"userId": None}, False),
    ("nobody", [], {"userId": "alice"}, False),
]


class PeopleMatching(unittest.TestCase):
    def test_cases(self):
        for name, entries, payload, named in PEOPLE_CASES:
            with self.subTest(name):
                self.assertEqual(pixel.People(entries).named_in(payload), named)

    def test_bad_entries(self):
        for entry, message in (("", "an empty identifier"), ("  \t", "an empty identifier"),
                               ("x" * 1025, "an identifier of 1025 characters (at most 1024)"),
                               ("sha256:abc", "is not sha256: and 64 hex digits"),
                               ("sha256:" + "g" * 64, "is not sha256: and 64 hex digits")):
            with self.subTest(entry=entry[:20]):
                with self.assertRaises(ValueError) as caught:
                    pixel.People([entry])
                self.assertIn(message, str(caught.exception))

    def test_all_of_a_quote_is_looked_at_or_it_is_taken_as_naming(self):
        # A request is looked at to MAX_RAW_VALUES values, but a 16 KiB quote can hold more:
        # what is written or kept by an erase is looked at to its end, else taken as naming.
        many = short_pairs(2100)
        text = many + "&userId=alice"
        self.assertLess(len(text), pixel.MAX_REJECT_RAW)
        people = pixel.People(["alice"])
        self.assertTrue(people.named_in_raw(text, quoted=True))
        self.assertTrue(people.named_in_reject({"reason": "too_many_params", "query": text}))
        self.assertTrue(pixel.line_names(people, text.encode())[0])
        self.assertFalse(people.named_in_raw(many, quoted=True))
        self.assertIsNone(list(pixel.raw_values(many, budget=50))[-1])   # not all looked at
        with unittest.mock.patch("pixel.raw_values", lambda text, budget: iter(["u", None])):
            self.assertTrue(people.named_in_raw(many, quoted=True))
            self.assertFalse(people.named_in_raw(many))
        # A longer text than a quote (a forwarder's refused event, whole): a value a
        # character. This one, 57 KB escaped, holds 16,566: carol's, never alice's.
        compatibility = [chr(code) for code in range(0xF900, 0xFA6E)]   # NFKC changes them
        tokens = compatibility + [chr(0x4E00 + number) for number in range(7804)]
        event = {"type": "track", "userId": "carol", "event": "Search",
                 "properties": {"tokens": " ".join(tokens)}}
        self.assertFalse(people.named_in_reject({"reason": "forward_rejected", "event": event}))

    def test_digested_names_nobody_in_plain(self):
        people = pixel.People(["alice", "Bob@Example.com", digest("carol")])
        self.assertEqual(people.digested(), sorted([digest("alice"), digest("bob@example.com"),
                                                    digest("carol")]))
        self.assertEqual(pixel.identifier_digest("alice"), digest("alice"))

    def test_raw_input_decoded_as_a_client_could_have_encoded_it(self):
        people = pixel.People(["alice", "bob@example.com", "José"])
        for raw, named in (
                ("writeKey=k&userId=alice&evnt=x", True),
                ("writeKey=k&userId=al%69ce", True),
                ("writeKey=k&traits.email=BOB%40example.com", True),
                ("data=" + b64({"writeKey": "k", "userId": "alice", "event": 5}), True),
                ("data=" + b64({"userId": "alice"}, alphabet="urlsafe", pad=False), True),
                ("data=" + urllib.parse.quote(b64({"userId": "Jos\u00e9"})), True),
                ('{"batch":[{"userId":"alice"', True),   # JSON cut short
                ('{"userId": "alice"}', True),
                ("userId=alice2&event=x", False),
                ("writeKey=alice-key&userId=u", False),
                ("data=" + b64({"userId": "alicia"}), False),
                ("", False)):
            with self.subTest(raw=raw[:40]):
                self.assertEqual(people.named_in_raw(raw), named)

    def test_raw_input_is_bounded(self):
        # Base64 inside base64 inside percent-escapes, 10,000 values: a budget, not a hang.
        raw = "&".join("k%d=%s" % (number, b64({"v": b64({"w": number})}))
                       for number in range(10000))
        started = time.monotonic()
        self.assertFalse(pixel.People(["alice"]).named_in_raw(raw))
        self.assertLess(time.monotonic() - started, 5)

    def test_a_rejects_line(self):
        people = pixel.People(["alice"])
        self.assertTrue(people.named_in_reject({"reason": "forward_rejected",
                                                "event": {"userId": "alice"}}))
        self.assertTrue(people.named_in_reject({"reason": "invalid_json",
                                                "body": '{"userId":"alice",'}))
        self.assertTrue(people.named_in_reject({"reason": "forward_unreadable",
                                                "line": '{"type":"track","userId":"alice"'}))
        self.assertFalse(people.named_in_reject({"reason": "invalid_json",
                                                 "query": "userId=bob", "userAgent": "x"}))


class SuppressFile(unittest.TestCase):
    def setUp(self):
        self.dir = temp_dir(self)

    def test_one_identifier_a_line(self):
        path = write_file(self.dir, "suppress.txt", b"\xef\xbb\xbf  # people who asked\n\n"
                          b"alice\r\n  Bob@Example.com  \n" + digest("carol").encode() + b"\n"
                          b"# not: dave\n")
        people = pixel.read_people(path)
        self.assertEqual((people.ids, people.emails, len(people)),
                         ({"alice"}, {"bob@example.com"}, 3))

    def test_a_bad_line_is_named(self):
        for content, message in ((b"alice\n\xff\xfe\n", "line 2: not UTF-8"),
                                 (b"alice\nsha256:12\n", "line 2: 'sha256:12' is not sha256"),
                                 (b"x" * 5000, "line 1: longer than 4096 bytes"),
                                 (b"a\n" + b"y" * 1100 + b"\n", "line 2: an identifier of 1100"),
                                 # The attack pass: each whole line was one id, who was nobody.
                                 (b"victim1   # GDPR ticket 123\n", "line 1: a # after white"),
                                 (b"# ok\nv@x.com\t# 124\n", "line 2: a # after white")):
            with self.subTest(message=message):
                path = write_file(self.dir, "bad.txt", content)
                with self.assertRaises(ValueError) as caught:
                    pixel.read_people(path)
                self.assertIn("%s %s" % (path, message), str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            pixel.read_people(write_file(self.dir, "many.txt", b"a\nb\nc\n"), limit=2)
        self.assertIn("line 3: more than 2 identifiers", str(caught.exception))
        os.mkfifo(os.path.join(self.dir, "fifo"))
        with self.assertRaises(OSError):   # never blocks on a FIFO
            pixel.read_people(os.path.join(self.dir, "fifo"))


class Suppressed(RecorderCase):
    """--suppress through the one wiring: answered as recorded, written nowhere, counted."""

    def setUp(self):
        self.suppress = os.path.join(temp_dir(self), "suppress.txt")
        with open(self.suppress, "w") as handle:
            handle.write("alice\nbob@example.com\n")
        self.recorder_options = {"suppress": self.suppress}
        super().setUp()

    def files(self):
        return [self.lines(name) for name in ("events.jsonl", "rejects.jsonl")]

    def health(self):
        return json.loads(self.answer(path="/health").body)

    def test_what_a_refused_query_hides_its_id_in_is_looked_through(self):
        # The attack pass: a query's + for a space, a request line's literal spaces, and the
        # last, unpadded base64 group of a data= that is not JSON leaked the person.
        with open(self.suppress, "a") as handle:
            handle.write("John Smith\n")
        self.pixel.reopen()
        partial = base64.b64encode(b'{"writeKey":"K","event":"Email Opened", "userId":"alice"')
        for query in ("writeKey=K&userId=John+Smith&event=Opened&event=Opened",
                      "writeKey=K&userId=John Smith&event=Email Opened&event=Email Opened",
                      "writeKey=K&properties.a..b=1&userId=+alice+",
                      "data=" + partial.decode().rstrip("=")):
            with self.subTest(query=query):
                self.assertIs(self.answer(query=query), pixel.GIF_ANSWER)
        self.assertEqual(self.files(), [[], []])
        self.assertEqual(self.health()["suppressed"], 4)
        # A + between a base64 run's pieces, or before a time zone, names nobody.
        people = pixel.People(["42", "Zx9a"])
        for text in ("sig=kQ7v+42+Zx9a&x=1", "t=12:00+42:00"):
            self.assertFalse(people.named_in_raw(text, True), text)
        self.assertTrue(pixel.People(["John Smith"]).named_in_raw("a=b&userId=John+Smith&c=d"))

    def test_an_id_with_a_colon_comma_or_semicolon_in_a_refused_request(self):
        # The attack pass: a raw value was looked at only between every separator, so
        # "urn:user:42", "Smith, John" and "k;v" sent unencoded were quoted in rejects.jsonl,
        # and `pixel.py erase` could not find them there either.
        with open(self.suppress, "a") as handle:
            handle.write("urn:user:42\nSmith, John\nk;v\n")
        self.pixel.reopen()
        for query in ("writeKey=K&userId=urn:user:42&properties.a=1&properties.a=2",
                      "writeKey=K&userId=Smith,+John&event=e&event=e",
                      "writeKey=K&a..b=1&anonymousId=k;v"):
            with self.subTest(query=query):
                self.assertIs(self.answer(query=query), pixel.GIF_ANSWER)
        answer = self.answer(method="POST", path="/v1/track",
                             body=b'{"writeKey":"K","userId":"urn:user:42","event":"e",')
        self.assertEqual(answer.status, 200)   # as if recorded
        self.assertEqual(self.files(), [[], []])
        self.assertEqual(self.health()["suppressed"], 4)
        people = pixel.People(["urn:user:42"])
        for line in (b'{"reason":"duplicate_key","query":"userId=urn:user:42&a=1&a=2"}',
                     b'{"reason":"invalid_json","body":"{\\"userId\\":\\"urn:user:42\\",x"}'):
            self.assertTrue(pixel.line_names(people, line)[0], line)
        self.assertFalse(people.named_in_raw("userId=urn:user:420&x=urn:user", True))

    def test_a_refused_batch_item_is_looked_at_whole_not_only_its_quote(self):
        # The attack pass: an item over 32 KB, or of no valid type, was looked at only in its
        # 16 KiB quote, which did not reach alice's userId after her properties.
        for item in ({"type": "track", "event": "e", "properties": {"p": "x" * 33000},
                      "userId": "alice"},
                     {"type": "bogus", "properties": {"p": "x" * 20000}, "userId": "alice"},
                     {"type": "bogus", "userId": "u", "properties": {
                         "p": "x" * 20000, "email": "BOB@example.com"}}):
            with self.subTest(item=str(item)[:40]):
                body = json.dumps({"writeKey": "K", "batch": [item]}).encode()
                self.assertEqual(self.answer(method="POST", path="/v1/batch", body=body).status,
                                 200)
        self.assertEqual(self.files(), [[], []])
        self.assertEqual(self.health()["suppressed"], 3)

    def test_a_request_is_judged_by_one_list_and_a_reload_waits_for_it(self):
        # The attack pass: a batch judged while SIGHUP replaced the list was written in part
        # (1,591 of 4,000 items), and after "reloaded" more of the victim's events came.
        recorder, victim = self.recorder, pixel.People(["victim"])
        before = recorder.people

        class Replaced(pixel.People):   # the reload lands while the first item is judged
            def named_in(self, payload):
                recorder.people = victim
                return before.named_in(payload)
        recorder.people = Replaced(["alice"])
        body = json.dumps({"writeKey": "K", "batch": [
            {"type": "track", "event": "e", "userId": "victim", "messageId": "v%d" % number}
            for number in range(5)]}).encode()
        self.assertEqual(self.answer(method="POST", path="/v1/batch", body=body).status, 200)
        self.assertEqual(len(self.lines()), 5)   # all by the list it began with
        self.assertIs(self.answer(query="writeKey=K&userId=victim&event=e"), pixel.GIF_ANSWER)
        self.assertEqual(len(self.lines()), 5)   # the next request, by the new one
        # Pixel.reopen says "reloaded" once the requests judged by the list before are done.
        recorder.people = before
        before.judging.append(None)   # one under way
        reload = threading.Thread(target=self.pixel.reopen)
        reload.start()
        self.assertFalse(wait_until(lambda: "reloaded --suppress" in self.stderr.getvalue(),
                                    timeout=0.2))
        before.judging.pop()
        reload.join(5)
        self.assertIn("reloaded --suppress (SIGHUP): 2 identifier(s)\n", self.stderr.getvalue())

    def test_a_second_reload_waits_for_every_older_list_and_none_is_missed(self):
        # The second attack pass: two SIGHUPs 50 ms apart, and the second said "reloaded" at
        # once, waiting only for the list just before it, while a batch judged by the first
        # was still writing; and a reload between a request's reading the list and marking
        # itself went unseen.
        first = self.recorder.people
        first.judging.append(None)   # a request judged by the first list, under way
        reloads = [threading.Thread(target=self.pixel.reopen) for _ in range(2)]
        for reload in reloads:
            reload.start()
        self.assertFalse(wait_until(lambda: "reloaded --suppress" in self.stderr.getvalue(),
                                    timeout=0.2))
        first.judging.pop()
        for reload in reloads:
            reload.join(5)
        self.assertEqual(self.stderr.getvalue().count("reloaded --suppress (SIGHUP): 2 "
                                                      "identifier(s)\n"), 2)
        recorder, victim = self.recorder, pixel.People(["victim"])

        class ReloadedBetween(collections.deque):   # the reload lands just before the mark
            def append(self, item):
                recorder.people = victim
                super().append(item)
        recorder.people.judging = ReloadedBetween()
        self.assertIs(self.answer(query="writeKey=K&userId=victim&event=e"), pixel.GIF_ANSWER)
        self.assertEqual(self.files(), [[], []])   # judged by the list that then stood

    def test_pixels_named_are_answered_and_written_nowhere(self):
        for query in ("writeKey=k&userId=alice&event=Opened",
                      "writeKey=k&userId=u&event=Opened&traits.email=BOB@example.com",
                      "data=" + b64({"writeKey": "k", "anonymousId": " alice ", "event": "e"}),
                      "writeKey=k&userId=alice",                 # would be event_not_defined
                      "writeKey=k&userId=alice&a..b=1",           # would be invalid_key
                      "data=" + b64({"userId": "alice"})[:-3] + "!!",   # invalid_base64
                      "writeKey=k&userId=al%69ce&event=%ZZ"):
            with self.subTest(query=query[:40]):
                self.assertIs(self.answer(query=query), pixel.GIF_ANSWER)
        self.assertIs(self.answer(query="writeKey=k&userId=carol&event=Opened"),
                      pixel.GIF_ANSWER)
        events, rejects = self.files()
        self.assertEqual([event["userId"] for event in events], ["carol"])
        self.assertEqual(rejects, [])
        health = self.health()
        self.assertEqual((health["suppressed"], health["accepted"], health["rejected"]),
                         (7, 1, 0))
        metrics = self.answer(path="/metrics").body.decode()
        self.assertIn("\npixel_suppressed_events_total 7\n", metrics)

    def test_api_batches_keep_everyone_else(self):
        body = json.dumps({"writeKey": "k", "batch": [
            {"type": "track", "userId": "alice", "event": "e"},
            {"type": "track", "userId": "carol", "event": "e"},
            {"type": "track", "userId": "dave"},                       # refused: no event
            {"type": "track", "userId": "alice"},                      # suppressed, not refused
            {"type": "identify", "userId": "u", "traits": {"email": "bob@example.com"}},
            {"type": "nope", "userId": "alice"}]}).encode()
        answer = self.answer(method="POST", path="/v1/batch", body=body,
                             headers={"content-type": "application/json"})
        self.assertEqual(answer.status, 200)
        events, rejects = self.files()
        self.assertEqual([event["userId"] for event in events], ["carol"])
        self.assertEqual([(line["reason"], "alice" in json.dumps(line)) for line in rejects],
                         [("event_not_defined", False)])
        self.assertEqual(self.health()["suppressed"], 4)

    def test_an_id_past_a_requests_first_values_but_inside_its_quote(self):
        # More than MAX_RAW_VALUES values before the id, all inside the 16 KiB quoted.
        many = short_pairs(2100)
        self.assertIs(self.answer(query=many + "&writeKey=k&userId=alice&event=e"),
                      pixel.GIF_ANSWER)   # too_many_params
        # invalid_json, the body quoted; with --anonymize-ip such a body is left out whole
        quoted = not self.recorder.anonymize_ip
        for body in (many + "&userId=alice", many + "&userId=carol"):
            answer = self.answer(method="POST", path="/v1/batch", body=body.encode(),
                                 headers={"content-type": "application/json"})
            self.assertEqual(answer.status, 200 if quoted and "alice" in body else 400)
        events, rejects = self.files()
        self.assertEqual((events, [line["reason"] for line in rejects]),
                         ([], ["invalid_json"] * (2 - quoted)))
        self.assertEqual(["carol" in line["body"] for line in rejects], [quoted] * (2 - quoted))
        self.assertNotIn("alice", json.dumps(rejects))
        self.assertEqual(self.health()["suppressed"], 1 + quoted)

    def test_an_api_body_that_does_not_parse(self):
        for body in (b'{"userId":"alice","type":"track"', b'{"userId":"alice"' + b"," * 10):
            answer = self.answer(method="POST", path="/v1/track", body=body,
                                 headers={"content-type": "application/json"})
            self.assertEqual(answer.status, 200)
        answer = self.answer(method="POST", path="/v1/track", body=b'{"userId":"carol"',
                             headers={"content-type": "application/json"})
        self.assertEqual(answer.status, 400)
        self.assertEqual([line["reason"] for line in self.files()[1]], ["invalid_json"])

    def test_a_large_item_or_body_that_names_them(self):
        # Over 32 KB, refused whole: its thousands of values are more than the raw look's
        # budget, and the rejects line would quote the person's id from its first bytes.
        event = {"type": "track", "userId": "alice", "event": "Order Completed",
                 "properties": {"products": ["sku-%05d" % number for number in range(5000)]}}
        for path, body in (("/v1/batch", {"batch": [event]}), ("/v1/track", event)):
            answer = self.answer(method="POST", path=path, body=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
            self.assertEqual(answer.status, 200, path)
        self.assertEqual(self.files(), [[], []])
        self.assertEqual(self.health()["suppressed"], 2)

    @soak
    def test_a_refused_body_costs_about_what_an_accepted_one_does(self):
        # The raw look runs with the GIL held, on what a client sends to be refused: it
        # must cost about what recording a valid batch of that size does (within 3 times),
        # not seconds.
        def cost(body):
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                self.answer(method="POST", path="/v1/batch", body=body,
                            headers={"content-type": "application/json"})
                best = min(best, time.perf_counter() - started)
            return best

        valid = json.dumps({"writeKey": "k", "batch": [
            {"type": "track", "userId": "u%d" % number, "event": "e"}
            for number in range(7000)]}).encode()
        nested = b'{"userId":"bob"}' * 13000
        for _ in range(3):
            nested = base64.b64encode(nested)
        item = base64.b64encode(base64.b64encode(b"x" * 20)).decode()
        for name, body in (
                ("base64 in base64 in base64", nested),
                ("items that are base64", json.dumps({"batch": [
                    item + "%05d" % number for number in range(9000)]}).encode())):
            with self.subTest(name):
                self.assertLess(len(body), 512000)
                self.assertLess(cost(body), 3 * cost(valid))

    def test_never_in_the_dedupe_window(self):
        query = "writeKey=k&userId=alice&event=e&messageId=m1"
        self.assertIs(self.answer(query=query), pixel.GIF_ANSWER)
        with open(self.suppress, "w") as handle:
            handle.write("# nobody\n")
        self.pixel.reopen()   # SIGHUP
        self.assertIs(self.answer(query=query), pixel.GIF_ANSWER)
        self.assertEqual([event["messageId"] for event in self.files()[0]], ["m1"])
        self.assertEqual((self.health()["deduped"], self.health()["suppressed"]), (0, 1))

    def test_a_reload_that_fails_keeps_the_list(self):
        with open(self.suppress, "wb") as handle:
            handle.write(b"carol\n\xff\n")
        self.pixel.reopen()
        self.assertIn("cannot reload --suppress, so the list loaded before stays in use: %s "
                      "line 2: not UTF-8" % self.suppress, self.stderr.getvalue())
        self.answer(query="writeKey=k&userId=alice&event=e")
        self.answer(query="writeKey=k&userId=carol&event=e")
        self.assertEqual([event["userId"] for event in self.files()[0]], ["carol"])
        with open(self.suppress, "w") as handle:
            handle.write("carol\n")
        self.pixel.reopen()
        self.assertIn("reloaded --suppress (SIGHUP): 1 identifier(s)", self.stderr.getvalue())
        self.answer(query="writeKey=k&userId=alice&event=e")
        self.answer(query="writeKey=k&userId=carol&event=e")
        self.assertEqual([event["userId"] for event in self.files()[0]], ["carol", "alice"])

    def test_browser_routes_and_anonymized_rejects(self):
        body = json.dumps({"writeKey": "k", "userId": "alice", "event": "e",
                           "context": {"ip": "203.0.113.9"}}).encode()
        for path in ("/v1/t", "/v1/track"):
            answer = self.answer(method="POST", path=path, body=body,
                                 headers={"content-type": "text/plain",
                                          "origin": "https://shop.example.com"})
            self.assertEqual(answer.status, 200, path)
        self.assertEqual(self.files(), [[], []])


class ClockSetBack(unittest.TestCase):
    """The wall clock stepped back (NTP after a boot with the clock ahead): the kernel stamps
    later writes earlier, and the forwarder, which found rotated files by their last write
    where not all had pixel's names, skipped answered events for good (the attack pass)."""

    def setUp(self):
        self.folder = temp_dir(self)
        self.log = os.path.join(self.folder, "events.jsonl")
        self.receiver, self.down = receiver_down(self)
        self.down.clear()

    def run_pixel(self, first, count, **options):
        """A forwarding pixel that takes `count` events (m<first>...) and is stopped, the
        receiver down for them: their writes stamped an hour back."""
        made = make_pixel(self, self.folder, forward=self.receiver.url, **options)
        made.start()
        self.open(made, 0, first)
        checkpoint = pixel.state_path(self.log, "forward")
        self.assertTrue(wait_until(lambda: len(self.receiver.taken) == first and (
            pixel.read_checkpoint(checkpoint) or {}).get("offset") == os.path.getsize(self.log)))
        self.down.set()
        since = time.time()
        self.open(made, first, count)
        made.close()
        for name in os.listdir(self.folder):
            path = os.path.join(self.folder, name)
            if os.path.isfile(path) and os.stat(path).st_mtime >= since:
                os.utime(path, (since - 3600,) * 2)

    def open(self, made, first, count):
        for number in range(first, first + count):
            made.app.answer(pixel.ROUTES["/v1/pixel/track"], request(
                query="writeKey=K&userId=u&event=Opened&messageId=m%d" % number))

    def assert_all_sent(self, count, **options):
        self.down.clear()
        made = make_pixel(self, self.folder, forward=self.receiver.url, **options)
        made.start()
        self.assertTrue(wait_until(lambda: {"m%d" % number for number in range(count)} <=
                                   set(self.receiver.ids()), timeout=15), self.receiver.ids())

    def test_the_log_renamed_by_logrotate_while_pixel_was_down(self):
        # The checkpoint's own file, written since it was saved, was taken for one older
        # than the checkpoint and skipped: "gone from its folder", 3 of 3 lost.
        self.run_pixel(3, 3)
        os.rename(self.log, self.log + ".1")
        self.assert_all_sent(6)

    def test_pixels_own_rotations_beside_a_newer_logrotate_file(self):
        # The attack on the fix: the log renamed .1 by logrotate once the clock had passed
        # the step, pixel's rotations after the checkpoint's file were sorted by last write
        # before it, and dropped with what it had sent: 15 of 30 lost.
        made = make_pixel(self, self.folder, forward=self.receiver.url, max_bytes=1000)
        made.start()
        self.open(made, 0, 1)
        self.assertTrue(wait_until(lambda: len(self.receiver.taken) == 1))
        self.down.set()
        self.open(made, 1, 29)
        made.close()
        os.rename(self.log, self.log + ".1")
        checkpoint = pixel.read_checkpoint(pixel.state_path(self.log, "forward"))
        rotations = pixel.pixel_rotations(self.log)
        self.assertGreater(len(rotations), 2)
        now = time.time() - 60   # the later, the earlier their writes: stepped back twice
        for number, path in enumerate(rotations):
            mine = os.stat(path).st_ino == checkpoint["inode"]
            os.utime(path, ((now if mine else now - 3600 - number),) * 2)
        self.assert_all_sent(30, max_bytes=1000)
        self.assertEqual(self.receiver.ids()[:30], ["m%d" % number for number in range(30)])

    def test_pixels_own_rotations_beside_an_old_logrotate_file(self):
        # One name not pixel's (an old logrotate .1) made every file be judged by its last
        # write: the rotations written after the step back were skipped, 3 of 9 lost.
        write_file(self.folder, "events.jsonl.1", logged("u", messageId="old") + b"\n")
        os.utime(self.log + ".1", (time.time() - 30 * 86400,) * 2)
        self.run_pixel(7, 9, max_bytes=1000)
        self.assertGreater(len(pixel.pixel_rotations(self.log)), 1)
        self.assert_all_sent(16, max_bytes=1000)


class KeepWithoutForward(unittest.TestCase):
    OPTIONS = dict(max_bytes=1000, keep=1)

    def open(self, made, first, count):
        for number in range(first, first + count):
            made.app.answer(pixel.ROUTES["/v1/pixel/track"], request(
                query="writeKey=K&userId=u&event=Opened&messageId=m%d" % number))

    def test_a_start_without_forward_keeps_the_backlog_a_forwarding_run_left(self):
        # The attack pass: a pixel run with --forward while its receiver was down, then
        # started once without --forward (with --keep 1): its first rotation deleted every
        # unsent file, and the next run with --forward lost 20 of 25 events, saying they
        # were "moved by hand".
        folder, _ = self.backlog_left()
        self.assertGreater(len(glob.glob(os.path.join(folder, "events.jsonl?*"))), 2)
        stderr = io.StringIO()
        self.assert_backlog_sent(folder, pixel.Reporter(stderr))
        self.assertIn("names events not yet forwarded", stderr.getvalue())

    def test_an_erase_meanwhile_keeps_the_backlog_all_the_same(self):
        # Its files replaced by an erase (new inodes), the backlog was no longer known by
        # identity, and --keep deleted it: 4 of 16 events were left for the receiver.
        folder = temp_dir(self)
        receiver, down = receiver_down(self)
        options = self.OPTIONS
        made = make_pixel(self, folder, forward=receiver.url, **options)
        made.start()
        for number in range(20):
            made.app.answer(pixel.ROUTES["/v1/pixel/track"], request(
                query="writeKey=K&userId=%s&event=Opened&messageId=m%d"
                % ("gone" if number % 5 == 0 else "u", number)))
        made.close()
        made = make_pixel(self, folder, **options)
        made.start()
        erase = subprocess.run([sys.executable, PIXEL_RUN, "erase", "--user-id", "gone",
                                "--apply"] + sorted(glob.glob(made.events.path + "*")),
                               capture_output=True, text=True, timeout=120)
        self.assertEqual(erase.returncode, 0, erase.stderr)
        # Once the erase is done, the backlog is known again by its new files: --keep
        # deletes what is rotated from here on, and none of it.
        self.assertTrue(wait_until(lambda: made.events.pinned is not None))
        backlog = len(pixel.pixel_rotations(made.events.path))   # the erase rotated the
        self.assertEqual(len(made.events.pinned), backlog)   # live file, the backlog's end
        self.open(made, 20, 20)   # the backlog stays, and one more (--keep 1)
        self.assertEqual(len(pixel.pixel_rotations(made.events.path)), backlog + 1)
        made.close()
        made = make_pixel(self, folder, forward=receiver.url, **options)
        made.start()
        down.clear()
        kept = ["m%d" % number for number in range(20) if number % 5]
        self.assertTrue(wait_until(lambda: len(receiver.taken) >= 16, timeout=15))
        self.assertEqual(receiver.ids()[:16], kept)

    def test_a_caught_up_checkpoint_keeps_nothing_more(self):
        folder = temp_dir(self)
        receiver = FakeReceiver(self)
        options = self.OPTIONS
        made = make_pixel(self, folder, forward=receiver.url, **options)
        made.start()
        self.open(made, 0, 20)
        self.assertTrue(wait_until(lambda: made.forwarder.status()["lines_behind"] == 0))
        made.close()
        stderr = io.StringIO()
        made = make_pixel(self, folder, reporter=pixel.Reporter(stderr), **options)
        self.open(made, 20, 20)
        self.assertNotIn("not yet forwarded", stderr.getvalue())
        self.assertEqual(len(pixel.pixel_rotations(made.events.path)), 1)

    def backlog_left(self):
        """The folder of a forwarding run whose receiver (self.receiver) was down, and its
        checkpoint's file."""
        folder = temp_dir(self)
        self.receiver, self.down = receiver_down(self)
        made = make_pixel(self, folder, forward=self.receiver.url, **self.OPTIONS)
        made.start()
        self.open(made, 0, 20)
        made.close()
        checkpoint = pixel.read_checkpoint(pixel.state_path(made.events.path, "forward"))
        first, = [path for path in pixel.pixel_rotations(made.events.path)
                  if os.stat(path).st_ino == checkpoint["inode"]]
        return folder, first

    def assert_backlog_sent(self, folder, reporter=None):
        """After a run without --forward, then one with it: the receiver got the backlog."""
        made = make_pixel(self, folder, reporter=reporter, **self.OPTIONS)
        self.open(made, 20, 20)   # rotates: --keep deletes what was rotated since, not more
        made.close()
        made = make_pixel(self, folder, forward=self.receiver.url, **self.OPTIONS)
        made.start()
        self.down.clear()
        self.assertTrue(wait_until(lambda: len(self.receiver.taken) >= 20, timeout=15))
        self.assertEqual(self.receiver.ids()[:20], ["m%d" % number for number in range(20)])

    def test_restarts_without_forward_keep_the_backlog_and_no_more(self):
        # The attack on 6ea743e: each restart kept --keep's newest files of the run before
        # too, 2 more a restart. The backlog ends in the file live when forwarding stopped.
        folder, _ = self.backlog_left()
        backlog = len(glob.glob(os.path.join(folder, "events.jsonl?*"))) + 1   # and the live
        for run in range(3):
            made = make_pixel(self, folder, **self.OPTIONS)
            self.open(made, 100 + 20 * run, 20)
            made.close()
            with self.subTest(run=run):   # the backlog, and the newest rotation (--keep 1)
                self.assertEqual(len(glob.glob(os.path.join(folder, "events.jsonl?*"))),
                                 backlog + 1)
        self.assert_backlog_sent(folder)

    def test_an_inode_given_again_does_not_end_the_backlog_early(self):
        # The attack on f042100: the kept state named the backlog's end by inode alone. An
        # erase (or an rm) frees that number, and a later erase's copy of an EARLIER rotation
        # may get it: the backlog ended there, and --keep deleted 26 of 30 unsent events.
        # The state now holds the file's first bytes too: here it names an earlier file's
        # inode with the end's bytes, as such a reuse would leave it.
        folder, first = self.backlog_left()
        made = make_pixel(self, folder, **self.OPTIONS)   # saves the kept state
        made.close()
        kept = pixel.state_path(made.events.path, "kept")
        with open(kept) as handle:
            state = json.load(handle)
        earlier = os.stat(first)
        self.assertNotEqual(state["file"], [earlier.st_dev, earlier.st_ino])
        state["file"] = [earlier.st_dev, earlier.st_ino]
        pixel.write_checkpoint(kept, state)
        self.assert_backlog_sent(folder)

    def test_a_file_that_cannot_be_read_keeps_the_whole_backlog(self):
        # The review of 5edf985: the newest file, unreadable (EIO), counted as one with no
        # line, so the backlog ended in an older file and --keep deleted the newer's unsent
        # events. A file that cannot be read now keeps every file: more, never less.
        self.assertIsNone(pixel._first_bytes("/proc/self/mem"))   # a read at 0: EIO
        self.assertEqual(pixel._first_bytes(os.path.join(temp_dir(self), "gone")), b"")
        folder, _ = self.backlog_left()
        first_bytes = pixel._first_bytes
        with unittest.mock.patch("pixel._first_bytes", lambda path: None if os.path.basename(
                path) == "events.jsonl" else first_bytes(path)):
            self.assert_backlog_sent(folder)

    def test_a_checkpoint_where_version_1_0_kept_it_keeps_the_backlog_too(self):
        # The attack on f042100: a backlog left by version 1.0's forwarder, its checkpoint
        # <log>.forward beside the log, which only the next run with --forward adopts: a start
        # without --forward after the upgrade found no checkpoint in .pixel/, --keep 1 deleted
        # the backlog, and the receiver got none of its 20 events.
        folder, _ = self.backlog_left()
        log = os.path.join(folder, "events.jsonl")
        os.replace(pixel.state_path(log, "forward"), log + ".forward")
        self.assert_backlog_sent(folder)

    def test_the_checkpoints_own_file_moved_by_hand_keeps_the_rest_of_the_backlog(self):
        # The attack pass: its file moved aside (an outside mv) while pixel was down, the
        # checkpoint named no rotation, and --keep deleted all the files after it, which the
        # next run with --forward would have sent (it finds a file moved by hand): 18 of 20.
        folder, first = self.backlog_left()
        os.rename(first, os.path.join(folder, "aside.jsonl"))
        self.assert_backlog_sent(folder)

    def test_an_erase_killed_after_its_rename_keeps_the_backlog(self):
        # The attack pass: a kill -9 of erase between its rename and the checkpoint's last
        # save leaves the old inode named, the new one "replaced": all 20 were deleted.
        folder, first = self.backlog_left()
        where = pixel.state_path(os.path.join(os.path.realpath(folder), "events.jsonl"),
                                 "forward")
        checkpoint = pixel.read_checkpoint(where)
        shutil.copy2(first, first + ".new")
        os.replace(first + ".new", first)   # the erase's new file: another inode
        checkpoint["replaced"] = dict(
            inode=os.stat(first).st_ino, offset=checkpoint["offset"],
            head_bytes=checkpoint["head_bytes"], head=checkpoint["head"])
        pixel.write_checkpoint(where, checkpoint)
        self.assert_backlog_sent(folder)


class SuppressedWhileForwarding(unittest.TestCase):
    def test_an_event_refused_after_its_person_was_suppressed_is_written_nowhere(self):
        # The attack pass: alice's event, logged before she was listed, then refused by the
        # receiver, was written to rejects.jsonl after the list said to record nothing of her.
        folder, listed, refused = temp_dir(self), threading.Event(), threading.Event()
        suppress = write_file(folder, "suppress.txt", b"nobody\n")

        def respond(receiver, user, events):
            if any(event["userId"] == "alice" for event in events):
                refused.set()
                listed.wait(10)
                return 400, {}, b'{"error":"no alice"}'
            return 200, {}, b"{}"

        receiver = FakeReceiver(self, respond)
        made = make_pixel(self, folder, forward=receiver.url, suppress=suppress,
                          forward_batch=1)
        made.start()
        answer = made.app.answer(pixel.ROUTES["/v1/pixel/track"], request(
            query="writeKey=K&userId=alice&event=Opened"))
        self.assertIs(answer, pixel.GIF_ANSWER)
        self.assertTrue(refused.wait(10))
        write_file(folder, "suppress.txt", b"alice\n")
        made.reopen()   # a SIGHUP
        listed.set()
        made.app.answer(pixel.ROUTES["/v1/pixel/track"], request(
            query="writeKey=K&userId=bob&event=Opened"))
        self.assertTrue(wait_until(lambda: receiver.ids() and len(receiver.taken) == 1))
        self.assertEqual(receiver.taken[0]["userId"], "bob")
        self.assertTrue(wait_until(lambda: made.forwarder.status()["lines_behind"] == 0))
        self.assertFalse(os.path.exists(os.path.join(folder, "rejects.jsonl")) and
                         os.path.getsize(os.path.join(folder, "rejects.jsonl")))
        health = json.loads(made.app.answer(pixel.ROUTES["/health"], request(path="/health"))
                            .body)
        self.assertEqual(health["suppressed"], 1)


    def test_what_the_forwarder_sets_aside_is_looked_through_however_it_is_made(self):
        # The attack pass: a line nested 980 deep (pixel writes none: a log made by hand or by
        # an older version) raised RecursionError here, and the forwarder stopped for good; a
        # line that is JSON but no object ("alice") was written whole.
        folder = temp_dir(self)
        made = make_pixel(self, folder, suppress=write_file(folder, "s.txt", b"alice\n"))
        rejects = pixel.SuppressingRejects(made.rejects, made.recorder)
        refused = pixel.Rejected("forward_rejected", "400")
        def parses(depth):
            try:
                return json.loads("[" * depth + "]" * depth) is not None
            except RecursionError:
                return False

        most = max(depth for depth in range(100, 5000, 100) if parses(depth))
        most = max(depth for depth in range(most, most + 100) if parses(depth))
        lines = []
        for depth in (*range(most - 4, most + 2), 5000):   # the rejects line is a level more
            deep = '{"userId":"%s","properties":' + "[" * depth + "1" + "]" * depth + "}"
            lines += [(deep % "alice").encode(), (deep % "bob").encode()]
        lines += [b'"alice"', b'["alice",1]', b'"bob"']
        for line in lines:
            with self.subTest(line=line[:30]):
                self.assertEqual(rejects.write([pixel.forward_reject_line(refused, line, T0)]),
                                 1)
        with open(os.path.join(folder, "rejects.jsonl"), "rb") as handle:
            written = handle.read().splitlines()
        self.assertEqual(len(written), 8)   # bob's seven, and "bob"
        self.assertFalse([line for line in written if b"alice" in line])
        self.assertEqual(made.recorder.suppressed.total(), 9)


class SuppressedAnonymizing(Suppressed):
    def setUp(self):
        super().setUp()
        self.pixel.close()
        self.pixel = make_pixel(self, self.dir, reporter=pixel.Reporter(self.stderr),
                                clock=lambda: T0, suppress=self.suppress, anonymize_ip=True)
        self.recorder, self.app = self.pixel.recorder, self.pixel.app


def person_lines(user, count, start=0, **fields):
    """`count` event lines as pixel writes them, of `user`, messageIds <user>-<n>."""
    return [pixel.encode_line(pixel.build_event("track", dict(
        {"writeKey": "K", "userId": user, "event": "Email Opened",
         "messageId": "%s-%d" % (user, number)}, **fields), received_at=T0 + number))
        for number in range(start, start + count)]


class EraseFiles(unittest.TestCase):
    """`pixel.py erase` on files no pixel writes: plain, gzipped, rejects logs, a dry run,
    the ledger, --follow, --max-share, and what it refuses."""

    def setUp(self):
        self.dir = temp_dir(self, "pixel-erase-")

    def erase(self, *argv):
        stdout, stderr = io.StringIO(), io.StringIO()
        with unittest.mock.patch("sys.stderr", stderr):
            try:
                status = pixel.erase_command(list(argv), stdout=stdout)
            except SystemExit as exit:
                status = exit.code
        return status, stdout.getvalue(), stderr.getvalue()

    def log(self, name, lines, compress=False):
        return write_log(self.dir, name, [line.rstrip(b"\n") for line in lines],
                         compress=compress)

    def read(self, path):
        with open(path, "rb") as handle:
            data = handle.read()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data

    def test_a_copy_whose_close_fails_is_removed_all_the_same(self):
        # The attack on a simplification: the copy was removed after its close, which an NFS
        # or FUSE write-back error can fail, leaving a copy of everyone else's lines behind.
        path = self.log("events.jsonl", person_lines("alice", 6) + person_lines("bob", 4))
        close = os.close

        def failing_close(fd):
            copy = os.readlink("/proc/self/fd/%d" % fd).endswith(".tmp")
            close(fd)
            if copy:
                raise OSError(errno.EIO, "write-back failed")

        with unittest.mock.patch("os.close", failing_close):   # alice is 6 of 10: refused
            status, out, err = self.erase("--user-id", "alice", "--apply", path)
        self.assertEqual(status, 1, (out, err))
        self.assertEqual([name for name in os.listdir(self.dir) if name.endswith(".tmp")], [])

    def test_an_archive_a_backfill_sent_is_known_as_sent_once_erase_replaced_it(self):
        # The backfill's checkpoint lists the archive by its size and first bytes on disk:
        # erase adds the new file's, so a second backfill sends none of it again.
        receiver = FakeReceiver(self)
        lines = [line for pair in zip(person_lines("bob", 5), person_lines("alice", 5))
                 for line in pair]
        archive = self.log("events.jsonl.20261118T000000.000Z.gz", lines, compress=True)
        later = self.log("events.jsonl.20261119T000000.000Z", person_lines("bob", 2, start=5))
        # The archive first: the checkpoint's position is in the later file, not in it.
        backfill = [sys.executable, PIXEL_RUN, "forward", "--to", receiver.url, archive, later]
        subprocess.run(backfill, check=True, capture_output=True, timeout=60)
        self.assertEqual(len(receiver.taken), 12)
        status, out, err = self.erase("--user-id", "alice", "--apply", "--max-share", "1",
                                      archive)
        self.assertEqual((status, err), (0, ""), out)
        self.assertEqual(self.read(archive), b"".join(person_lines("bob", 5)))
        subprocess.run(backfill, check=True, capture_output=True, timeout=60)
        self.assertEqual(len(receiver.taken), 12, receiver.ids())

    def test_a_copy_a_killed_erase_left_behind_is_removed_and_a_live_ones_kept(self):
        path = self.log("events.jsonl", person_lines("alice", 2) + person_lines("bob", 8))
        beyond = (1 << 22) + 1   # past the largest pid_max Linux allows: no process has it
        dead = write_file(self.dir, ".events.jsonl.erase-%d.tmp" % beyond, b"x")
        alive = write_file(self.dir, ".events.jsonl.erase-1.tmp", b"x")   # init's: alive
        status, out, err = self.erase("--user-id", "alice", "--apply", path)
        self.assertEqual((status, err), (0, ""), out)
        self.assertEqual((os.path.exists(dead), os.path.exists(alive)), (False, True))

    def test_a_ctrl_c_stops_it_saying_so_with_the_file_whole(self):
        path = self.log("events.jsonl", person_lines("alice", 2) + person_lines("bob", 8))
        scan = pixel.FileErasure.scan

        def interrupted(erasure, write=None):   # the key pressed while it copies
            if write is not None:
                write(b'{"type":"track"')
                raise KeyboardInterrupt
            return scan(erasure, write)

        with unittest.mock.patch("pixel.FileErasure.scan", interrupted):
            status, out, err = self.erase("--user-id", "alice", "--apply", path)
        self.assertEqual((status, err), (130, "pixel: erase: stopped before it was done: run it "
                                               "again\n"), out)
        self.assertEqual(self.read(path), b"".join(person_lines("alice", 2) +
                                                   person_lines("bob", 8)))
        self.assertEqual([name for name in os.listdir(self.dir) if name.endswith(".tmp")], [])
        self.assertFalse(pixel.erase_at_work(path))

    def test_a_file_written_while_its_copy_is_synced_is_left_as_it_is(self):
        # The copy is checked against the file again after its fsync, the slow part: a line
        # a process appends meanwhile must not be lost to the rename.
        path = self.log("events.jsonl", person_lines("alice", 2) + person_lines("bob", 8))
        late = person_lines("carol", 1, start=9)[0]
        fsync, written = os.fsync, []

        def fsync_while_a_line_is_written(fd):
            copy = ".events.jsonl.erase-%d.tmp" % os.getpid()
            if os.readlink("/proc/self/fd/%d" % fd).endswith(copy) and not written:
                with open(path, "ab") as handle:
                    written.append(handle.write(late))
            fsync(fd)

        with unittest.mock.patch("os.fsync", fsync_while_a_line_is_written):
            status, out, err = self.erase("--user-id", "alice", "--apply", path)
        self.assertEqual(status, 1, (out, err))
        self.assertIn("it changed while it was read: is a process writing it?", err)
        self.assertEqual(self.read(path), b"".join(person_lines("alice", 2) +
                                                   person_lines("bob", 8)) + late)
        self.assertEqual([name for name in os.listdir(self.dir) if name.endswith(".tmp")], [])

    def test_lines_another_tool_wrote_again_are_parsed_not_passed_by(self):
        # The attack pass: the first look searched for an id as pixel escapes it, so a copy
        # of a log jq or PHP wrote again ("al\u0069ce", "a\/b", "\u00E9") kept its lines.
        lines = person_lines("carol", 5) + [
            b'{"type":"track","userId":"al\\u0069ce","event":"e"}\n',
            b'{"type":"track","userId":"dan\\/1","event":"e"}\n',
            b'{"type":"track","userId":"\\u00C9ve","event":"e"}\n',
            '{"type":"track","userId":"jos\u00e9","event":"e"}\n'.encode()]   # jq -c: UTF-8
        path = self.log("copy.jsonl", lines)
        status, _, stderr = self.erase("--user-id", "alice", "--user-id", "dan/1",
                                       "--user-id", "\u00c9ve", "--user-id", "jos\u00e9",
                                       "--apply", path)
        self.assertEqual(status, 0, stderr)
        self.assertEqual(self.read(path), b"".join(person_lines("carol", 5)))

    def test_a_ledger_line_the_disk_cuts_short_is_cut_off(self):
        # The attack pass: a nearly full disk took part of a ledger line; the next run's line
        # was glued to it, and `erase --ledger` refused the whole ledger for good. Here the
        # disk is RLIMIT_FSIZE, in a child, with SIGXFSZ ignored.
        ledger = os.path.join(self.dir, ".pixel", "erase-ledger.json")
        pixel._append_ledger(ledger, pixel.People(["alice"]), "done", [])
        size = os.path.getsize(ledger)
        script = (
            "import errno, os, resource, signal, sys; sys.path.insert(0, %r); import pixel\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (%d, resource.RLIM_INFINITY))\n"
            "try:\n"
            "    pixel._append_ledger(%r, pixel.People(['bob']), 'started', ['f'] * 100)\n"
            "except OSError as error:\n"
            "    print(errno.errorcode[error.errno])\n" % (HERE, size + 100, ledger))
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=30)
        self.assertEqual(result.stdout.strip(), "ENOSPC", result.stderr)
        self.assertEqual(os.path.getsize(ledger), size)
        pixel._append_ledger(ledger, pixel.People(["carol"]), "done", [])
        self.assertEqual(pixel.ledger_ids(ledger)["ids"], sorted(
            pixel.identifier_digest(name) for name in ("alice", "carol")))

    def test_an_erase_whose_done_line_the_disk_cuts_short_says_its_ledger_says_started(self):
        # The erase is done, but its ledger's "done" line does not fit (RLIMIT_FSIZE, in a
        # child, as above): said, exit 1, and the ledger ends with the whole "started" line,
        # which names the person (`erase --ledger` reads it), never with a piece of a line.
        path = self.log("events.jsonl", person_lines("alice", 3) + person_lines("bob", 2))
        ledger = os.path.join(self.dir, ".pixel", "erase-ledger.json")
        pixel._append_ledger(ledger, pixel.People(["carol"]), "done", [
            {"path": "/var/lib/pixel/events.jsonl.%d" % number, "status": "erased"}
            for number in range(60)])   # a ledger larger than the log, which is copied
        size = os.path.getsize(ledger)
        started = os.path.join(temp_dir(self), "started.json")
        pixel._append_ledger(started, pixel.People(["bob"]), "started", [], pixel.People(["bob"]))
        script = (
            "import resource, signal, sys; sys.path.insert(0, %r); import pixel\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (%d, resource.RLIM_INFINITY))\n"
            "sys.exit(pixel.main(['erase', '--user-id', 'bob', '--apply', %r]))\n" % (
                HERE, size + os.path.getsize(started) + 16, path))   # a pid's digits may differ
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=60)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(result.stderr, "pixel: erase: cannot write the ledger %s: No space "
                         "left on device; its last line says started\n" % ledger)
        self.assertEqual(self.read(path), b"".join(person_lines("alice", 3)))
        with open(ledger, "rb") as handle:
            lines = handle.read().split(b"\n")
        self.assertEqual(lines[-1], b"")
        self.assertEqual([json.loads(line)["status"] for line in lines[:-1]], ["done", "started"])
        self.assertEqual(pixel.ledger_ids(ledger)["ids"], sorted(
            pixel.identifier_digest(name) for name in ("bob", "carol")))

    @unittest.skipIf(pixel.fcntl is None, "flock")
    def test_a_rotated_file_is_not_erased_while_its_pixel_cannot_be_held(self):
        # A rotated file named alone, of a log a running pixel writes (a LogWriter's flock
        # here): that pixel's forwarder must be held first. Another erase at work on the live
        # log (its request, of a live process) keeps it from being asked: the rotated file is
        # refused, whole, not erased behind the forwarder's back (which would send it again).
        log = self.log("events.jsonl", person_lines("alice", 2))
        rotated = self.log("events.jsonl.20261118T000000.000Z",
                           person_lines("bob", 2) + person_lines("alice", 2))
        writer = pixel.LogWriter(log)
        self.addCleanup(writer.close)
        other = pixel.EraseRequest(log, pixel.Reporter(io.StringIO()))
        other.claim()
        self.addCleanup(pixel.EraseRequest.finish, [other])
        status, out, err = self.erase("--user-id", "bob", "--apply", rotated)
        self.assertEqual(status, 1, (out, err))
        self.assertEqual(err, "pixel: erase: %s: another erase (pid %d) is at work on it: not "
                         "erased\n" % (rotated, os.getpid()))
        self.assertEqual(self.read(rotated), b"".join(person_lines("bob", 2) +
                                                      person_lines("alice", 2)))

    @unittest.skipIf(pixel.fcntl is None, "flock")
    def test_a_log_whose_pixel_never_answers_is_refused_after_the_wait_not_erased(self):
        # A pixel older than 2.1 (here a LogWriter's flock, and no EraseDesk) writes the log:
        # after ERASE_WAIT the log is refused, whole, and erase exits 1; never rewritten
        # under a pixel that still appends to it (its lines would go to the replaced file).
        log = self.log("events.jsonl", person_lines("alice", 2) + person_lines("bob", 2))
        writer = pixel.LogWriter(log)
        self.addCleanup(writer.close)
        with unittest.mock.patch("pixel.ERASE_WAIT", 0.1):
            status, out, err = self.erase("--user-id", "bob", "--apply", log)
        self.assertEqual(status, 1, (out, err))
        self.assertEqual(err, "pixel: erase: %s: the pixel that holds it did not answer the "
                         "erase request in 0 s (is it older than 2.1? If the file was moved by "
                         "hand and pixel still forwards it, name pixel's live log too): not "
                         "erased\n" % log)
        self.assertEqual(self.read(log), b"".join(person_lines("alice", 2) +
                                                  person_lines("bob", 2)))
        self.assertEqual(writer.write([b'{"n":1}\n']), 1)
        self.assertFalse(os.path.exists(pixel.erase_request_path(log)))

    def test_a_full_disk_at_the_end_of_an_erase_is_said_not_a_traceback(self):
        # The attack pass: the "done" state of a request, written when the disk was full,
        # raised out of erase_command; the request is removed all the same, so the pixel
        # holding its forwarder for it goes on.
        folder = mount_tmpfs(self, 64 * 1024)
        log = os.path.join(folder, "events.jsonl")
        with open(log, "w"):
            pass
        stderr = io.StringIO()
        request = pixel.EraseRequest(log, pixel.Reporter(stderr))
        request.claim()
        with open(os.path.join(folder, "filler"), "wb", buffering=0) as handle:
            with self.assertRaises(OSError):   # ENOSPC, once full
                while True:
                    handle.write(b"x" * 4096)
        pixel.EraseRequest.finish([request])
        self.assertIn("erase: cannot write %s: No space left on device" % request.path,
                      stderr.getvalue())
        self.assertFalse(os.path.exists(request.path))

    def test_a_holder_that_lets_go_between_its_looks_is_not_taken_for_a_backfill(self):
        # Erase tries an exclusive flock, then a shared one to tell a backfill (shared) from a
        # pixel (exclusive). A pixel that let go in between was reported as "a pixel.py
        # forward is sending it", and the file was not erased (exit 1).
        path = self.log("kept.jsonl", person_lines("alice", 2) + person_lines("bob", 2))
        holder = os.open(path, os.O_RDONLY)
        fcntl.flock(holder, fcntl.LOCK_EX)
        looks = pixel._flock_shared

        def letting_go(fd):
            os.close(holder)   # the pixel ends, just before the second look
            return looks(fd)

        with unittest.mock.patch("pixel._flock_shared", letting_go):
            status, _, err = self.erase("--user-id", "alice", "--apply", path)
        self.assertEqual((status, err), (0, ""))
        self.assertNotIn(b"alice", self.read(path))
        # One that shares it (a backfill) and stays is still refused by name.
        backfill = pixel.LogFile.open(path)
        self.addCleanup(backfill.close)
        self.assertTrue(backfill.share())
        status, _, err = self.erase("--user-id", "bob", "--apply", path)
        self.assertEqual(status, 1)
        self.assertIn("a pixel.py forward is sending it", err)

    def test_dry_run_then_apply_on_plain_and_gzipped_files(self):
        others = person_lines("bob", 30)
        mixed = [line for pair in itertools.zip_longest(others, person_lines("alice", 10))
                 for line in pair if line]
        plain = self.log("events.jsonl.20261118T000000.000Z", mixed)
        packed = self.log("events.jsonl.1.gz", mixed, compress=True)
        os.chmod(plain, 0o640)
        os.utime(plain, ns=(1_700_000_000_000_000_000, 1_700_000_000_123_456_789))
        before = self.read(plain)
        status, out, err = self.erase("--user-id", "alice", plain, packed)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "%s: would erase 10 of 40 line(s)\n%s: would erase 10 of 40 "
                              "line(s)\ndry run: nothing changed; --apply erases\nuserIds to "
                              "delete at Segment or RudderStack too (their deletion APIs take "
                              "userIds): alice\n" % (plain, packed))
        self.assertEqual(self.read(plain), before)
        identity = os.stat(plain).st_ino
        status, out, err = self.erase("--user-id", "alice", "--apply", plain, packed)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("%s: erased 10 of 40 line(s)\n" % plain, out)
        expected = b"".join(line for line in others)
        self.assertEqual(self.read(plain), expected)
        self.assertEqual(self.read(packed), expected)   # a whole, valid gzip
        status = os.stat(plain)
        self.assertNotEqual(status.st_ino, identity)   # replaced, not written over
        self.assertEqual((oct(status.st_mode & 0o777), status.st_mtime_ns),
                         ("0o640", 1_700_000_000_123_456_789))
        self.assertEqual([name for name in os.listdir(self.dir) if name.startswith(".")],
                         [".pixel"])   # no copy left behind
        identity = os.stat(plain).st_ino
        status, out, err = self.erase("--user-id", "alice", "--apply", plain)
        self.assertIn("%s: erased 0 of 30 line(s)" % plain, out)
        self.assertEqual(os.stat(plain).st_ino, identity)   # nothing to erase: not replaced

    def test_the_ledger_holds_no_plain_id_and_erases_again_after_a_restore(self):
        lines = person_lines("bob", 5) + person_lines("alice", 2, email="x") + [
            pixel.encode_line(pixel.build_event("identify", {
                "writeKey": "K", "userId": "u9", "traits": {"email": "Alice@Example.com"}},
                received_at=T0))]
        path = self.log("events.jsonl", lines)
        backup = self.read(path)
        status, out, err = self.erase("--user-id", "alice", "--email", "alice@example.com",
                                      "--apply", path)
        self.assertEqual((status, err), (0, ""))
        ledger = os.path.join(self.dir, ".pixel", "erase-ledger.json")
        with open(ledger) as handle:
            text = handle.read()
        self.assertNotIn("alice", text.lower())
        started, done = [json.loads(line) for line in text.splitlines()]
        self.assertEqual((started["status"], done["status"]), ("started", "done"))
        self.assertEqual(done["ids"], sorted([digest("alice"), digest("alice@example.com")]))
        self.assertEqual(done["files"], [{"path": path, "lines": 8, "erased": 3, "as_text": 0,
                                          "status": "erased"}])
        self.assertIn("userIds to delete at Segment or RudderStack too (their deletion APIs "
                      "take userIds): alice, u9\n", out)
        with open(path, "wb") as handle:   # a backup restored
            handle.write(backup)
        status, out, err = self.erase("--ledger", ledger, "--apply", path)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(self.read(path), b"".join(person_lines("bob", 5)))

    def test_a_truncated_form_of_an_address_is_never_another_persons_id_again(self):
        # The attack pass on this stop: the ledger held erin.10.4.4.4@x.com's truncated form
        # (--anonymize-ip's quote of it, erin.10.4.4.0@x.com) among its ids, and a rerun after
        # a restore erased the event of another person, whose address that is. The ledger
        # holds it apart now: matched, as the first run matched it, in what is quoted alone.
        erin, other = "erin.10.4.4.4@x.com", "erin.10.4.4.0@x.com"
        events = person_lines("erin", 1, traits={"email": erin}) + person_lines(
            "erin-0", 1, traits={"email": other}) + person_lines("bob", 1)
        quoted = [b'{"reason":"event_not_defined","method":"GET","path":"/v1/pixel/track",'
                  b'"query":"writeKey=k&traits.email=erin.10.4.4.0%40x.com",'
                  b'"receivedAt":"2026-11-18T11:06:40.250Z"}']   # as --anonymize-ip quotes
        paths = [self.log("events.jsonl", events), self.log("rejects.jsonl", quoted)]
        backups = [self.read(path) for path in paths]
        for run in (["--email", erin], ["--ledger", os.path.join(self.dir, ".pixel",
                                                                  "erase-ledger.json")]):
            with self.subTest(run[0]):
                for path, backup in zip(paths, backups):   # the first file, or a restore
                    with open(path, "wb") as handle:
                        handle.write(backup)
                status, out, err = self.erase(*run + ["--apply"] + paths)
                self.assertEqual((status, err), (0, ""))
                self.assertEqual((self.read(paths[0]), self.read(paths[1])),
                                 (b"".join(events[1:]), b""))

    def test_rejects_logs_and_lines_that_are_not_json(self):
        rejects = [
            b'{"reason":"event_not_defined","method":"GET","path":"/v1/pixel/track",'
            b'"query":"writeKey=k&userId=al%69ce","receivedAt":"2026-11-18T11:06:40.250Z"}',
            b'{"reason":"invalid_json","method":"POST","path":"/v1/batch","body":"{\\"batch\\"'
            b':[{\\"userId\\":\\"alice\\"","receivedAt":"2026-11-18T11:06:40.250Z"}',
            b'{"reason":"invalid_base64","method":"GET","path":"/v1/pixel/track","query":'
            b'"data=' + b64({"userId": "alice"}).encode() + b'!","receivedAt":"x"}',
            b'{"reason":"forward_rejected","detail":"400","event":' + person_lines("alice", 1)[0]
            .rstrip(b"\n") + b',"receivedAt":"x"}',
            b'{"reason":"event_not_defined","method":"GET","path":"/v1/pixel/track",'
            b'"query":"writeKey=k&userId=bob","receivedAt":"2026-11-18T11:06:40.250Z"}',
            b'{"type":"track","userId":"alice","event":"torn',          # a torn line
            b'{"type":"track","userId":"alicia","event":"torn'] + \
            [line.rstrip(b"\n") for line in person_lines("bob", 6)]
        path = self.log("rejects.jsonl.20261118T000000.000Z", rejects)
        status, out, err = self.erase("--user-id", "alice", "--apply", path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("erased 5 of 13 line(s) (1 matched as text: not JSON)", out)
        self.assertEqual(self.read(path).splitlines(), [rejects[4], rejects[6]] + rejects[7:])

    def test_follow_links_anonymous_ids_and_aliases(self):
        lines = [
            logged("alice", kind="identify", anonymous="a-1"),
            logged("alice", anonymous="a-2"),
            logged(None, kind="page", anonymous="a-1"),         # only the anonymousId
            logged("carol", kind="alias", previousId="a-3"),    # another person's alias
            logged("alice", kind="alias", previousId="old-alice"),
            logged(None, anonymous="old-alice"),
            logged("bob", anonymous="a-9"),
            logged(None, kind="page", anonymous="a-9"),
            logged("alice"), logged("alice")]
        path = self.log("events.jsonl", lines)
        status, out, err = self.erase("--user-id", "alice", "--follow", path)
        self.assertEqual(out.splitlines()[:3], [
            "--follow: anonymousId a-1 (1 event(s))", "--follow: anonymousId a-2 (1 event(s))",
            "--follow: previousId old-alice (1 event(s))"])
        self.assertIn("left alone (see stderr), matching 7 of 10 line(s)", out)   # > 0.5
        status, out, err = self.erase("--user-id", "alice", "--follow", "--max-share", "1", path)
        self.assertIn("would erase 7 of 10 line(s)", out)
        status, out, err = self.erase("--user-id", "alice", path)
        self.assertIn("would erase 5 of 10 line(s)", out)

    def test_follow_passes_by_a_torn_line_and_files_it_cannot_read(self):
        # Each file that cannot be read is named by its own erase, which fails; the rest go on.
        path = self.log("events.jsonl", [
            b'{"type":"track","userId":"alice","anonymousId":"a-torn',   # first: not the end
            logged("alice", anonymous="a-1"), logged(None, anonymous="a-1"), logged("bob")])
        archive = gzip.compress((logged("alice", anonymous="a-2") + b"\n") * 2)
        damaged = write_file(self.dir, "events.jsonl.20261101T000000.000Z.gz", archive[:-12])
        missing = os.path.join(self.dir, "missing.jsonl")
        status, out, err = self.erase("--user-id", "alice", "--follow", "--max-share", "1",
                                      path, damaged, missing)
        self.assertEqual(status, 1)
        self.assertEqual(out.splitlines()[0], "--follow: anonymousId a-1 (1 event(s))")
        self.assertIn("events.jsonl: would erase 3 of 4 line(s)", out)
        self.assertEqual([line.split(": cannot erase it: ")[0] for line in err.splitlines()],
                         ["pixel: erase: " + damaged, "pixel: erase: " + missing])

    def follow_alice(self, lines, *who):
        """erase --user-id alice (or `who`) --follow's dry run over `lines`: its stdout."""
        path = self.log("events.jsonl", lines)
        status, out, err = self.erase(*(who or ("--user-id", "alice")), "--follow",
                                      "--max-share", "1", path)
        self.assertEqual((status, err), (0, ""))
        return out

    def test_follow_reads_every_event_type_and_aliases_both_ways(self):
        # The second attack pass: a page with both ids linked nothing, and an alias to a new
        # userId was erased, its userId listed for deletion, but that userId's events kept.
        out = self.follow_alice([logged("alice", kind="page", anonymous="anon-P"),
                                 logged(None, kind="page", anonymous="anon-P"),
                                 logged("new-alice", kind="alias", previousId="alice"),
                                 logged("new-alice", event="Later"),
                                 logged("bob")])
        self.assertEqual(out.splitlines()[:2], ["--follow: anonymousId anon-P (1 event(s))",
                                                "--follow: userId new-alice (1 event(s))"])
        self.assertIn("would erase 4 of 5 line(s)", out)
        self.assertIn("take userIds): alice, new-alice\n", out)

    def test_follow_goes_on_through_a_former_userid(self):
        # The second attack pass: an anonymousId linked to a former userId that an alias
        # names was not followed, so that browser's anonymous events stayed.
        out = self.follow_alice([logged("alice", kind="alias", previousId="old-alice"),
                                 logged("old-alice", anonymous="anon-OLD"),
                                 logged(None, kind="page", anonymous="anon-OLD"),
                                 logged("bob", anonymous="anon-B")])
        self.assertEqual(out.splitlines()[:2], ["--follow: anonymousId anon-OLD (1 event(s))",
                                                "--follow: previousId old-alice (1 event(s))"])
        self.assertIn("would erase 3 of 4 line(s)", out)

    def test_follow_takes_a_long_alias_chain_whole_or_erases_nothing(self):
        # The attack pass: after 4 rounds --follow stopped, silently: erasing c8 of anon0 ->
        # c1 -> ... -> c8 took c4-c8 only, and the alias c3 -> c4 with them, so that no run
        # after could find the rest. It now follows 16 rounds, and past them erases nothing.
        def chain(length):
            lines, previous = [logged(None, anonymous="anon0")], "anon0"
            for number in range(1, length + 1):
                lines += [logged("c%d" % number, kind="alias", previousId=previous),
                          logged("c%d" % number)]
                previous = "c%d" % number
            return lines + [logged("bob%d" % number) for number in range(2 * length + 1)]

        # 16 links, anon0 the last: the attack on the fix found it refused, one round short.
        path = self.log("events.jsonl", chain(16))
        status, out, err = self.erase("--user-id", "c16", "--follow", "--apply", path)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("erased 33 of 66 line(s)", out)
        self.assertNotIn(b"anon0", self.read(path))
        path = self.log("events.jsonl", chain(17))
        before = self.read(path)
        status, out, err = self.erase("--user-id", "c17", "--follow", "--apply", path)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "pixel: erase: --follow: aliases link on past 16 rounds (to "
                              "anon0): nothing erased; name those too with --user-id\n")
        self.assertEqual(self.read(path), before)

    def test_follow_goes_on_from_an_addresss_userid(self):
        # The attack pass: --email E --follow erased the identify with E in its traits and
        # nothing else (--follow followed userIds only), though it printed the identify's
        # userId for deletion upstream: that person's other events stayed, their one link
        # to E gone. An address in properties.email is whom an event is about: not followed.
        out = self.follow_alice([logged("u9", kind="identify", anonymous="anon9",
                                        traits={"email": "Bob@X.com"}),
                                 logged("u9"), logged(None, kind="page", anonymous="anon9"),
                                 logged("u9", kind="alias", previousId="anon9"),
                                 logged("carol", event="Invite Sent",
                                        properties={"email": "bob@x.com"}),
                                 logged("carol"), logged("dave")], "--email", "bob@x.com")
        self.assertEqual(out.splitlines()[:3], ["--follow: anonymousId anon9 (1 event(s))",
                                                "--follow: previousId anon9 (1 event(s))",
                                                "--follow: userId u9 (2 event(s))"])
        self.assertIn("would erase 5 of 7 line(s)", out)   # u9's four and carol's invite
        self.assertIn("(their deletion APIs take userIds): u9\n", out)   # not carol
        # The attack on the fix: a sign-up before its account (an identify with the address
        # and an anonymousId alone) was erased, and its anonymousId's events kept; a userId
        # People cannot hold as such ("sha256:abc", which any client may send) raised.
        out = self.follow_alice([logged(None, kind="identify", anonymous="anZ",
                                        traits={"email": "zoe@x.com"}),
                                 logged(None, kind="page", anonymous="anZ"),
                                 logged("sha256:abc", kind="identify",
                                        context={"traits": {"email": "zoe@x.com"}}),
                                 logged("sha256:abc"), logged("u%s" % ("x" * 1500),
                                                             kind="alias", previousId="sha256:abc"),
                                 logged("u%s" % ("x" * 1500)), logged("dave")],
                                "--email", "zoe@x.com")
        self.assertIn("would erase 6 of 7 line(s)", out)
        path = self.log("events.jsonl", [logged("u9"), logged(None, anonymous="anon9")])
        status, out, err = self.erase("--anonymous-id", "anon9", "--follow", path)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.splitlines()[0], "--follow: nothing to follow from: it follows "
                                              "--user-id, --email and a --ledger's userIds")

    def test_follow_keeps_another_persons_events_on_a_shared_browser(self):
        # The attack pass: alice and bob on one browser (no reset() between them). Following
        # alice's anonymousId must not erase bob's identified events, nor list bob for
        # deletion upstream, nor put browser-1 in the ledger as a full id for --ledger.
        # An alias's previousId is alice's own former userId: its events go whatever else
        # they hold (the attack pass on the first version of this fix).
        bobs_refused = json.dumps({"reason": "forward_rejected", "event": json.loads(
            logged("bob", event="Refused", anonymous="browser-1"))}).encode()
        lines = [logged("alice", kind="identify", anonymous="browser-1"),
                 logged("alice", anonymous="browser-1"),
                 logged("bob", kind="identify", anonymous="browser-1"),
                 logged("bob", event="Order Completed", anonymous="browser-1"),
                 logged(None, kind="page", anonymous="browser-1"),
                 logged("alice", kind="alias", previousId="old-alice"),
                 logged("old-alice", anonymous="browser-9"),
                 logged("carol", anonymous="browser-2")]
        path = self.log("events.jsonl", lines)
        # So is a refused pixel query or API body of bob's that quotes the browser's id; one
        # with no userId is the browser's, and goes.
        refused = [json.dumps({"reason": "event_not_defined", field: quoted}).encode()
                   for field, quoted in (
                       ("query", "userId=bob&anonymousId=browser-1&writeKey=K"),
                       ("body", '{"userId": "bob", "anonymousId": "browser-1"}'),
                       ("body", '{"batch": [{"userId": "bob", "anonymousId": "browser-1"}]}'),
                       ("query", "anonymousId=browser-1&writeKey=K"))]
        rejects = self.log("rejects.jsonl", [bobs_refused] + refused)
        status, out, err = self.erase("--user-id", "alice", "--follow", "--apply",
                                      "--max-share", "1", path, rejects)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("--follow: an event with another userId is kept", out)
        self.assertIn("events.jsonl: erased 5 of 8 line(s)", out)
        self.assertIn("rejects.jsonl: erased 1 of 5 line(s)", out)
        self.assertEqual(self.read(rejects).splitlines(),
                         [bobs_refused] + refused[:3])
        self.assertIn("take userIds): alice, old-alice\n", out)
        kept = [json.loads(line) for line in self.read(path).splitlines()]
        self.assertEqual([(event.get("userId"), event["type"]) for event in kept],
                         [("bob", "identify"), ("bob", "track"), ("carol", "track")])
        ledger = os.path.join(self.dir, ".pixel", "erase-ledger.json")
        with open(ledger) as handle:
            last = json.loads(handle.read().splitlines()[-1])
        self.assertEqual((last["ids"], last["followed"]), (   # old-alice's browser too
            sorted([digest("alice"), digest("old-alice")]),
            sorted([digest("browser-1"), digest("browser-9")])))
        # A hand-made ledger line whose ids are a string, not a list, is refused, not read a
        # letter at a time.
        bad = os.path.join(self.dir, "bad-ledger.json")
        for field in ("ids", "followed"):
            with open(bad, "w") as handle:
                handle.write(json.dumps(dict(last, **{field: digest("alice")})) + "\n")
            status, out, err = self.erase("--ledger", bad, path)
            self.assertEqual(status, 2, field)
            self.assertIn("bad-ledger.json line 1: not an erase ledger line", err)
        # ... and one that holds an empty id, a number or a bad digest names its line too.
        for field, value, message in (
                ("followed", [""], "line 2: an empty identifier"),
                ("ids", [digest("alice"), 7], "line 2: not an erase ledger line"),
                ("ids", ["sha256:00"], "line 2: 'sha256:00' is not sha256: and 64 hex")):
            with open(bad, "w") as handle:
                handle.write(json.dumps(last) + "\n" + json.dumps(dict(last, **{field: value})))
            status, out, err = self.erase("--ledger", bad, path)
            self.assertEqual(status, 2, field)
            self.assertIn("bad-ledger.json " + message, err)
        # A backup restored, then erased again from the ledger: the same lines go.
        self.assertEqual(self.log("events.jsonl", lines), path)
        status, out, err = self.erase("--ledger", ledger, "--apply", "--max-share", "1", path)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual([json.loads(line) for line in self.read(path).splitlines()], kept)

    def test_the_first_look_agrees_with_the_parse(self):
        # The KELVIN SIGN lower-cases to an ASCII k: the parse (and --suppress) take
        # "\u212aate@example.com" for kate@example.com, so the look before it must too.
        lines = person_lines("bob", 3) + person_lines(
            "u7", 1, properties={"email": "\u212aate@Example.com"}) + person_lines(
            "\u212aate@example.com", 1)
        path = self.log("events.jsonl", lines)
        people = pixel.People(["kate@example.com"])
        self.assertEqual([pixel.line_names(people, line.rstrip(b"\n"))[0] for line in lines],
                         [False] * 3 + [True, True])
        status, out, err = self.erase("--email", "kate@example.com", path)
        self.assertIn("would erase 2 of 5 line(s)", out)

    def test_every_flag_takes_a_digest(self):
        # --help: "sha256:HEX of it too", so that no plain address need be typed.
        lines = person_lines("bob", 3) + person_lines("u7", 1, properties={
            "email": "Alice@Example.com"})
        path = self.log("events.jsonl", lines)
        for flag, value in (("--email", "alice@example.com"), ("--user-id", "u7"),
                            ("--anonymous-id", "u7")):
            with self.subTest(flag):
                status, out, err = self.erase(flag, digest(value), path)
                self.assertEqual((status, err), (0, ""))
                self.assertIn("would erase 1 of 4 line(s)", out)

    def test_max_share_leaves_a_file_alone(self):
        path = self.log("events.jsonl", person_lines("null", 6) + person_lines("bob", 4))
        before = self.read(path)
        status, out, err = self.erase("--user-id", "null", "--apply", path)
        self.assertEqual(status, 1)
        self.assertEqual(err, "pixel: erase: %s: 6 of its 10 lines match, more than --max-share "
                              "0.5: not erased (an id as common as that is likely a mistake; if "
                              "all are this person's, --max-share 1 erases them)\n" % path)
        self.assertIn("%s: left alone (see stderr), matching 6 of 10 line(s)" % path, out)
        self.assertEqual(self.read(path), before)
        with open(os.path.join(self.dir, ".pixel", "erase-ledger.json")) as handle:
            self.assertEqual(json.loads(handle.read().splitlines()[-1])["status"], "partial")
        status, out, err = self.erase("--user-id", "null", "--apply", "--max-share", "0.6",
                                      path)
        self.assertEqual((status, err), (0, ""))

    def test_an_id_with_an_address_in_it_is_erased_as_anonymize_ip_quotes_it(self):
        # An attack pass: with --anonymize-ip a rejects line quotes alice.10.1.2.3@example.com
        # as alice.10.1.2.0@example.com, and an erase of her found nothing and exited 0.
        made = make_pixel(self, self.dir, anonymize_ip=True)
        track = pixel.ROUTES["/v1/pixel/track"]
        for user in ["alice.10.1.2.3@example.com"] + ["bob"] * 8:
            made.app.answer(track, request(query="writeKey=K&userId=%s&evnt=x" % user))
        body = json.dumps({"writeKey": "K", "batch": [{
            "type": "track", "userId": "u1", "event": "e", "timestamp": "bad",
            "properties": {"email": "erin.10.4.4.4@example.com"}}]}).encode()
        made.app.answer(pixel.ROUTES["/v1/batch"], request(
            "POST", "/v1/batch", body=body, headers={"content-type": "application/json"}))
        made.close()
        rejects = os.path.join(self.dir, "rejects.jsonl")
        quoted = self.read(rejects)
        self.assertEqual((quoted.count(b"alice.10.1.2.0@"), quoted.count(b"erin.10.4.4.0@"),
                          quoted.count(b".3@"), quoted.count(b".4@")), (1, 1, 0, 0))
        status, out, err = self.erase("--user-id", "alice.10.1.2.3@example.com", "--email",
                                      "erin.10.4.4.4@example.com", "--apply", rejects)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("erased 2 of 10 line(s)", out)
        self.assertEqual([pixel.decode_query(json.loads(line)["query"])["userId"]
                          for line in self.read(rejects).splitlines()], ["bob"] * 8)
        # The README's erase again after restoring a backup, from the ledger's digests alone:
        # they hold the truncated forms too (the attack: 0 of 10, exit 0).
        with open(rejects, "wb") as handle:
            handle.write(quoted)
        status, out, err = self.erase("--ledger", os.path.join(self.dir, ".pixel",
                                                               "erase-ledger.json"),
                                      "--apply", rejects)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("erased 2 of 10 line(s)", out)

    def test_a_file_of_fewer_lines_than_min_share_lines_is_not_judged_by_its_share(self):
        # An attack pass: the live log an erase had just rotated held 3 lines, 2 of them the
        # person's, and was left alone; --max-share 1, the only way past, lifts the guard
        # from every file.
        # A file of MIN_SHARE_LINES is judged: test_max_share_leaves_a_file_alone.
        self.assertEqual(pixel.MIN_SHARE_LINES, 10)
        rotated = self.log("events.jsonl.20261118T000000.000Z", person_lines("alice", 5) +
                           person_lines("bob", 4))
        live = self.log("events.jsonl", person_lines("alice", 2, start=5) +
                        person_lines("bob", 1, start=4))
        status, out, err = self.erase("--user-id", "alice", "--apply", rotated, live)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("%s: erased 5 of 9 line(s)" % rotated, out)
        self.assertIn("%s: erased 2 of 3 line(s)" % live, out)

    def test_hostile_names_and_command_lines(self):
        path = self.log("events.jsonl", person_lines("bob", 4) + person_lines(".*", 1) +
                        person_lines("*", 1) + person_lines('{"a":1}', 1))
        for name in (".*", "*", '{"a":1}'):
            status, out, err = self.erase("--user-id", name, path)
            self.assertIn("would erase 1 of 7 line(s)", out, name)
        for argv, message in (
                (["--user-id", "", path], "an empty identifier"),
                (["--user-id", "x" * 2000, path], "an identifier of 2000 characters"),
                (["--email", "bob", path], "--email 'bob' is not an address"),
                ([path], "name someone"),
                (["--user-id", "u"], "the following arguments are required: FILE"),
                (["--max-share", "0", "--user-id", "u", path], "must be above 0"),
                (["--max-share", "nan", "--user-id", "u", path], "must be above 0"),
                (["--ledger", path, path], "line 1: not an erase ledger line")):
            with self.subTest(argv=argv[:2]):
                status, out, err = self.erase(*argv)
                self.assertEqual(status, 2)
                self.assertIn(message, err)
        status, out, err = self.erase("--user-id", "bob", "--apply", "--max-share", "1",
                                      os.path.join(self.dir, "missing"), self.dir, path)
        self.assertEqual(status, 1)
        self.assertIn("missing: No such file or directory: not erased", err)
        self.assertIn("%s: not a regular file (a directory): not erased" % self.dir, err)
        self.assertIn("%s: erased 4 of 7 line(s)" % path, out)

    def test_a_rotated_file_deleted_since_the_shell_named_it_is_not_a_failure(self):
        # --keep deletes the oldest rotated file between the shell's glob and erase's look:
        # nothing of anyone is left in it, so `erase --apply events.jsonl*` still exits 0.
        path = write_log(self.dir, "events.jsonl", [line.rstrip(b"\n") for line in
                                                    person_lines("bob", 1) +
                                                    person_lines("alice", 3)])
        gone = os.path.join(self.dir, "events.jsonl.20250101T000000.000Z")
        for apply in ([], ["--apply"]):
            with self.subTest(apply=apply):
                status, out, err = self.erase("--user-id", "bob", *apply, gone, path)
                self.assertEqual(status, 0, err)
                self.assertIn("%s: gone since it was named (--keep deletes the oldest): "
                              "nothing in it to erase" % gone, err)
                self.assertIn("%s: %s 1 of " % (path, "erased" if apply else "would erase"),
                              out)
        # A name no glob of a log here could have given is a mistake, said and exit 1: not
        # beside a log, or in the future, or not older than every rotated file left (--keep
        # deletes the oldest). Older than those left, it is gone.
        stamp = lambda seconds: time.strftime("%Y%m%dT%H%M%S.000Z", time.gmtime(seconds))
        write_log(self.dir, "events.jsonl." + stamp(time.time() - 86400), [b"{}"])
        gone_too = os.path.join(self.dir, "events.jsonl." + stamp(time.time() - 2 * 86400))
        status, out, err = self.erase("--user-id", "bob", gone_too, path)
        self.assertEqual(status, 0, err)
        self.assertIn("%s: gone since it was named" % gone_too, err)
        # Gzipped since the glob (a cron's gzip): the person is still in its .gz, not gone.
        with open(gone_too + ".gz", "wb") as handle:
            handle.write(gzip.compress(person_lines("bob", 1)[0]))
        status, out, err = self.erase("--user-id", "bob", "--apply", gone_too, path)
        self.assertEqual(status, 1, err)
        self.assertIn("%s: gzipped since it was named: run erase again with %s.gz: not erased"
                      % (gone_too, gone_too), err)
        os.remove(gone_too + ".gz")
        for typo in (os.path.join(self.dir, "event.jsonl.20261201T000000.000Z"),
                     os.path.join(self.dir + "-not", "events.jsonl.20261201T000000.000Z"),
                     os.path.join(self.dir, "events.jsonl." + stamp(time.time() - 3600)),
                     os.path.join(self.dir, "events.jsonl." + stamp(time.time() - 86400) + "-1"),
                     os.path.join(self.dir, "events.jsonl." + stamp(time.time() + 86400))):
            for apply in ([], ["--apply"]):
                with self.subTest(typo=typo, apply=apply):
                    status, out, err = self.erase("--user-id", "bob", *apply, typo, path)
                    self.assertEqual(status, 1, err)
                    self.assertIn("No such file or directory", err)
        with open(os.path.join(self.dir, ".pixel", "erase-ledger.json")) as handle:
            ledger = [json.loads(line) for line in handle]
        self.assertEqual(ledger[1]["files"][0], {"path": gone, "status": "gone"})
        self.assertEqual(ledger[-1]["status"], "partial")

    def test_a_symlinked_log_is_erased_where_it_lives(self):
        real = os.path.join(self.dir, "real")
        os.mkdir(real)
        target = write_log(real, "events.jsonl.1", [line.rstrip(b"\n") for line in
                                                    person_lines("bob", 3) +
                                                    person_lines("alice", 1)])
        link = os.path.join(self.dir, "events.jsonl.1")
        os.symlink(target, link)
        status, out, err = self.erase("--user-id", "alice", "--apply", link)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("erased 1 of 4 line(s)", out)
        self.assertTrue(os.path.islink(link))   # still the link the operator made
        self.assertEqual(self.read(target), b"".join(person_lines("bob", 3)))

    def test_a_file_compressed_but_not_with_gzip_is_not_called_done(self):
        # logrotate's compresscmd may be xz, bzip2 or zstd: erase cannot read those, and
        # must not report such a file as erased, its person still in it.
        import bz2
        import lzma
        data = b"".join(person_lines("bob", 30) + person_lines("alice", 3))
        for name, packed in (("events.jsonl.1.xz", lzma.compress(data)),
                             ("events.jsonl.2.bz2", bz2.compress(data)),
                             ("events.jsonl.3.zst", b"\x28\xb5\x2f\xfd" + os.urandom(200))):
            path = write_file(self.dir, name, packed)
            for apply in ((), ("--apply",)):
                with self.subTest(name=name, apply=apply):
                    status, out, err = self.erase("--user-id", "alice", *apply, path)
                    self.assertEqual(status, 1)
                    self.assertIn("pixel: erase: %s: cannot erase it: " % path, err)
                    self.assertEqual(self.read_raw(path), packed)

    def test_a_damaged_archive_is_left_as_it_is(self):
        whole = gzip.compress(b"".join(person_lines("alice", 3000)))
        path = write_file(self.dir, "events.jsonl.2.gz", whole[:len(whole) // 2])
        status, out, err = self.erase("--user-id", "alice", "--apply", "--max-share", "1", path)
        self.assertEqual(status, 1)
        self.assertIn("%s: cannot erase it: " % path, err)
        self.assertEqual(self.read_raw(path), whole[:len(whole) // 2])
        self.assertEqual(sorted(os.listdir(self.dir)), [".pixel", "events.jsonl.2.gz"])

    def read_raw(self, path):
        with open(path, "rb") as handle:
            return handle.read()

    def test_a_full_disk_leaves_the_file_as_it_is(self):
        folder = mount_tmpfs(self, 256 * 1024)
        path = write_log(folder, "events.jsonl", [line.rstrip(b"\n") for line in
                                                  person_lines("bob", 300) +
                                                  person_lines("alice", 10)])
        before = self.read_raw(path)
        filler = fill_disk(self, folder)
        # Nothing can be written: not the request, not the ledger, not the copy.
        status, out, err = self.erase("--user-id", "alice", "--apply", path)
        self.assertEqual((status, out), (1, ""))
        self.assertIn("%s: No space left on device: not erased\n" % path, err)
        self.assertEqual(self.read_raw(path), before)
        # Room for the request, but not for the copy; the ledger beside the first file.
        with open(filler, "r+b") as handle:
            handle.truncate(os.path.getsize(filler) - 32 * 1024)
        first = self.log("events.jsonl", person_lines("bob", 2))
        status, out, err = self.erase("--user-id", "alice", "--apply", first, path)
        self.assertEqual(status, 1)
        self.assertEqual(err, "pixel: erase: %s: cannot erase it: No space left on device\n"
                         % path)
        self.assertEqual(self.read_raw(path), before)
        self.assertFalse([name for name in os.listdir(folder) if name.endswith(".tmp")])
        with open(os.path.join(self.dir, ".pixel", "erase-ledger.json")) as handle:
            done = json.loads(handle.read().splitlines()[-1])
        self.assertEqual((done["status"], done["files"][1]),
                         ("partial", {"path": path, "status": "failed"}))


class EraseCheckpoints(ForwardingCase):
    """A forwarder's checkpoint follows the files erase replaces: it goes on where it was,
    in the new file, and sends every other event once."""

    def held_by_an_erase_at_start(self):
        """(receiver, writer, forwarder, erase request): m0-m4 written; a pixel's forwarder
        and EraseDesk started while an erase (this process) is at work on the log."""
        receiver = FakeReceiver(self)
        writer = self.writer()
        self.write(writer, range(5))
        request = pixel.EraseRequest(writer.path, self.reporter)
        request.claim()
        self.addCleanup(pixel.EraseRequest.finish, [request])
        forwarder = self.forwarder(receiver.url, writer, start=False)
        desk = pixel.EraseDesk([writer], forwarder, self.reporter)
        with unittest.mock.patch("pixel.ERASE_POLL", 0.5):   # its first look: after this
            desk.start()
        self.addCleanup(desk.stop)
        return receiver, writer, forwarder, request

    @soak
    def test_a_pixel_started_during_an_erase_forwards_only_once_the_erase_has_ended(self):
        # EraseDesk.start holds the forwarder while an erase replaces its files; the erase
        # ending before the desk's first look must still let it go (else: held for ever).
        receiver, writer, forwarder, request = self.held_by_an_erase_at_start()
        self.assertTrue(forwarder.status()["held"])
        self.assertEqual(receiver.posts, [])
        pixel.EraseRequest.finish([request])   # before the desk's first look
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 5, timeout=5))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(5)])
        self.assertTrue(wait_until(lambda: forwarder.held is None))
        self.assertEqual(pixel.pixel_rotations(writer.path), [])   # it answered no request
        self.assertEqual(self.stderr.getvalue(), "")

    @soak
    def test_a_resume_whose_checkpoint_cannot_be_written_is_said_and_tried_again(self):
        # The checkpoint made immutable (chattr +i): resume() cannot save where it starts,
        # says so, stays held with its files closed, and resumes at a later look.
        receiver, writer, forwarder, request = self.held_by_an_erase_at_start()
        checkpoint = pixel.state_path(writer.path, "forward")
        chattr(self, "i", checkpoint)
        pixel.EraseRequest.finish([request])
        self.assertTrue(wait_until(lambda: "cannot answer" in self.stderr.getvalue()))
        self.assertEqual(self.stderr.getvalue(), "pixel: cannot answer an erase request: "
                         "cannot forward again after the erase: Operation not permitted\n")
        self.assertIsNotNone(forwarder.held)
        self.assertEqual(receiver.posts, [])
        subprocess.run(["chattr", "-i", checkpoint], check=True)
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 5, timeout=5))
        self.assertEqual(receiver.ids(), ["m%d" % number for number in range(5)])
        self.assertTrue(wait_until(lambda: forward_checkpoint(writer.path)[1] ==
                                   os.path.getsize(writer.path)))

    def test_a_checkpoint_whose_done_list_is_not_all_text(self):
        # A backfill's checkpoint edited by hand, or written by something else: erase passes
        # over what is not a fingerprint rather than stopping with a traceback.
        document = {"device": 1, "inode": 2, "offset": 0,
                    "done": [5, None, {"a": 1}, ["1:3"], "9:9:x:y"]}
        self.assertIsNone(pixel.replaced_checkpoint(document, (1, 3), (1, 4), None,
                                                    "/nonexistent", archive=False))

    def test_a_forwarder_goes_on_in_the_new_file(self):
        receiver = FakeReceiver(self)
        writer = self.writer(max_bytes=4000)
        forwarder = self.forwarder(receiver.url, writer, start=False)
        lines = [line for pair in zip(person_lines("bob", 40), person_lines("alice", 40))
                 for line in pair]
        self.assertTrue(writer.write(lines[:20]))
        forwarder.start()
        self.assertTrue(wait_until(lambda: forwarder.sent == 20))   # taken, and checkpointed
        forwarder.stop(5)
        forwarder.close()
        self.assertTrue(writer.write(lines[20:]))   # rotated past 4000 bytes, several times
        writer.close()
        files = [os.path.join(self.dir, name) for name in os.listdir(self.dir)
                 if name.startswith("events.jsonl")]
        stdout = io.StringIO()
        with unittest.mock.patch("sys.stderr", io.StringIO()):
            self.assertEqual(pixel.erase_command(["--user-id", "alice", "--apply",
                                                  "--max-share", "1"] + files,
                                                 stdout=stdout), 0)
        writer = self.writer(max_bytes=4000)
        self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 50))
        time.sleep(0.3)
        ids = receiver.ids()
        self.assertEqual(ids[:20], ["%s-%d" % (user, number // 2) for number, user in
                                    zip(range(20), itertools.cycle(("bob", "alice")))])
        self.assertEqual(ids[20:], ["bob-%d" % number for number in range(10, 40)])


    def test_a_file_moved_by_hand_that_erase_replaced_is_found_after_it(self):
        lines = [line for pair in zip(person_lines("bob", 15), person_lines("alice", 15))
                 for line in pair]
        receiver, down, moved = self.moved_behind_the_checkpoint(lines)
        files = [os.path.join(self.dir, name) for name in os.listdir(self.dir)
                 if name.startswith("events.jsonl")] + [moved]
        inode = os.stat(moved).st_ino
        with unittest.mock.patch("sys.stderr", io.StringIO()):
            self.assertEqual(pixel.erase_command(["--user-id", "alice", "--apply",
                                                  "--max-share", "1"] + files,
                                                 stdout=io.StringIO()), 0)
        self.assertNotEqual(os.stat(moved).st_ino, inode)
        live = os.path.join(self.dir, "events.jsonl")   # erased and listed too
        self.assertEqual(sorted(moved_inodes(live)),
                         sorted([os.stat(moved).st_ino, os.stat(live).st_ino]))
        down.clear()
        writer = self.writer(max_bytes=1000)
        second = self.forwarder(receiver.url, writer)
        self.assertTrue(wait_until(lambda: second.status()["lines_behind"] == 0))
        self.assertEqual(receiver.ids(), ["bob-%d" % number for number in range(15)])


class EraseUnrotatable(unittest.TestCase):
    def test_an_erase_stops_when_the_pixel_cannot_rotate_its_live_log(self):
        # rotate_now said None, "empty", when its rename failed: the erase went on, said it
        # was done, and left the person in the live log. Here the log is a bind mount, which
        # cannot be renamed (EBUSY); a full inode table fails the next file's open the same way.
        log = os.path.join(temp_dir(self), "events.jsonl")
        backing = os.path.join(temp_dir(self), "backing.jsonl")
        open(backing, "wb").close()
        open(log, "wb").close()
        result = subprocess.run(["mount", "--bind", backing, log], capture_output=True,
                                text=True)
        if result.returncode:
            self.skipTest("cannot bind-mount here (%s)" % result.stderr.strip())
        self.addCleanup(subprocess.run, ["umount", "-l", log])
        process, port = start_pixel(self, "--log", log, stderr=subprocess.PIPE)
        for user in ("alice", "bob"):
            fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=%s&event=e" % user)
        erase = subprocess.Popen([sys.executable, PIXEL_RUN, "erase", "--user-id", "alice",
                                  "--apply", log], stderr=subprocess.PIPE, text=True,
                                 stdout=subprocess.DEVNULL)
        erased = erase.communicate(timeout=60)[1]
        self.assertEqual(erase.returncode, 1, erased)
        # ... and why (the attack pass on a298b2d: said for a write's rotation, not this one)
        self.assertIn("the pixel that writes it cannot rotate %s: Device or resource busy (a "
                      "file mounted on its own cannot be renamed: mount its folder)" % log, erased)
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=carol&event=e")
        with open(log, "rb") as handle:
            self.assertEqual([json.loads(line)["userId"] for line in handle],
                             ["alice", "bob", "carol"])
        process.terminate()
        said = process.communicate(timeout=30)[1]
        self.assertIn("an erase (pid %d) stops: cannot rotate %s: Device or resource busy"
                      % (erase.pid, log), said)
        self.assertNotIn("run it again", said)   # it would fail again: a newcomer's pass


class EraseBesideAGzip(unittest.TestCase):
    """A gzip of a rotated file (logrotate's compress, a cron, an operator) at each moment of
    an erase of it, run where the erase is then (a hook in a call erase makes): the real
    gzip; and, where one must be caught between its steps, those steps as gzip 1.12 takes
    them (the .gz made, filled from the file it opened, then the file removed by its name,
    whichever file is there by then). At every moment, a file erase calls erased holds none
    of the person, no one else's line is lost from the file and its .gz together, and a file
    not done exits 1, named."""

    MOMENTS = ("after erase held it, before its look", "as erase opens it to copy",
               "just before the replace", "just after the replace")

    def setUp(self):
        if shutil.which("gzip") is None:
            self.skipTest("needs gzip")
        self.lines = person_lines("bob", 6) + person_lines("alice", 4)
        random.Random(5).shuffle(self.lines)
        self.whole = b"".join(self.lines)
        self.bobs = b"".join(line for line in self.lines if b'"bob"' in line)
        self.finish = lambda: None

    def write(self):
        self.dir = temp_dir(self, "pixel-erase-")
        self.path = os.path.join(self.dir, "events.jsonl.20261118T000000.000Z")
        with open(self.path, "wb") as handle:
            handle.write(self.whole)

    def gzip(self):
        subprocess.run(["gzip", self.path], check=True, capture_output=True, timeout=30)

    def begin_gzip(self):
        """gzip's first step: the file opened, its .gz made (O_EXCL); the rest (finish)
        once the erase has returned."""
        source = open(self.path, "rb")
        self.addCleanup(source.close)
        packed = open(self.path + ".gz", "xb")
        self.addCleanup(packed.close)

        def finish():
            packed.write(gzip.compress(source.read()))
            packed.close()
            os.remove(self.path)   # by its name: the new file, if erase put one there
        self.finish = finish

    def erase(self, moment, gzip_then):
        """erase --apply of the file with `gzip_then` run at `moment`: (status, stdout,
        stderr, whether the file held the person when erase returned)."""
        erase_file, open_log_stream, replace = (
            pixel.erase_file, pixel.open_log_stream, os.replace)

        def before_the_look(*args, **options):
            gzip_then()
            return erase_file(*args, **options)

        def opened_to_copy(*args):
            opened = open_log_stream(*args)
            gzip_then()
            return opened

        def replacing(source, target):
            if target == self.path and moment == "just before the replace":
                gzip_then()
            replace(source, target)
            if target == self.path and moment == "just after the replace":
                gzip_then()

        hook = dict(zip(self.MOMENTS, (
            ("pixel.erase_file", before_the_look), ("pixel.open_log_stream", opened_to_copy),
            ("os.replace", replacing), ("os.replace", replacing))))[moment]
        with unittest.mock.patch(*hook):
            status, out, err = main_in_this_process(["erase", "--user-id", "alice", "--apply",
                                                     self.path])
        held = os.path.exists(self.path) and b'"alice"' in read_bytes(self.path)
        return status, out, err, held

    def files(self):
        """(The file, its .gz unpacked), None for one not there."""
        return tuple(unpack(read_bytes(path)) if os.path.exists(path) else None
                     for path, unpack in ((self.path, bytes),
                                          (self.path + ".gz", gzip.decompress)))

    def assert_kept_and_said(self, status, out, err, held):
        """What holds at every moment (see the class)."""
        self.assertNotIn("Traceback", err)
        left = collections.Counter(line for data in self.files() if data
                                   for line in data.splitlines(keepends=True))
        for line in self.bobs.splitlines(keepends=True):
            self.assertGreaterEqual(left[line], 1, "bob's line lost")
        if "%s: erased" % self.path in out:
            self.assertFalse(held, "said erased, but the file held alice")
        if any(b'"alice"' in line for line in left):
            self.assertEqual(status, 1, (out, err))
            self.assertIn("erase: %s: " % self.path, err)
        self.assertEqual([name for name in os.listdir(self.dir) if name.endswith(".tmp")], [])
        ledger = os.path.join(self.dir, ".pixel", "erase-ledger.json")
        if os.path.exists(ledger):
            with open(ledger) as handle:
                last = json.loads(handle.read().splitlines()[-1])
            self.assertEqual(last["status"], "partial" if status else "done")

    def test_a_whole_gzip_at_each_moment_of_an_erase(self):
        # Done before the look, or during the copy: the file is gone, its .gz whole. Done
        # before the replace: erase's copy is put at the name gzip removed, beside the .gz.
        # Done after it: the .gz is of the new file, but erase cannot tell, and says so.
        gzipped = "gzipped since it was named: run erase again with %s.gz"
        began = "erased, but a gzip of it began meanwhile, from the old file: erase %s.gz once"
        whole, bobs = self.whole, self.bobs
        for moment, said, files in zip(self.MOMENTS, (gzipped, gzipped, began, began), (
                (None, whole), (None, whole), (bobs, whole), (None, bobs))):
            with self.subTest(moment):
                self.write()
                status, out, err, held = self.erase(moment, self.gzip)
                self.assert_kept_and_said(status, out, err, held)
                self.assertEqual(status, 1)
                self.assertIn(said % self.path, err)
                self.assertEqual(self.files(), files)

    def test_a_gzip_begun_at_each_moment_of_an_erase(self):
        # Begun before the replace's last look, the file is left whole: once the gzip is
        # done, its .gz is all there is, person included, and erase said not erased.
        # Begun between that look and the rename, or after it, erase says the gzip began.
        beside = "%s.gz is beside it: a gzip of it may be under way"
        began = "%s: erased, but a gzip of it began meanwhile, from the old file"
        for moment, said, packed in zip(self.MOMENTS, (beside, beside, began, began), (
                self.whole, self.whole, self.whole, self.bobs)):
            with self.subTest(moment):
                self.write()
                status, out, err, held = self.erase(moment, self.begin_gzip)
                self.assert_kept_and_said(status, out, err, held)
                self.finish()
                self.assert_kept_and_said(status, out, err, held)
                self.assertEqual(status, 1)
                self.assertIn(said % self.path, err)
                if said == beside:   # seen at its look, unread; or at the replace, read
                    self.assertIn("%s: left alone (see stderr), %s\n" % (
                        self.path, "unread" if moment == self.MOMENTS[0] else
                        "matching 4 of 10 line(s)"), out)
                self.assertEqual(self.files(), (None, packed))

    def test_erase_and_gzip_as_processes_one_after_the_other(self):
        # gzip done between the shell's glob and erase: said, exit 1, then erased as the
        # .gz. And gzip of a file erase has just replaced: the .gz holds no one erased.
        self.write()
        self.gzip()
        erase = [sys.executable, PIXEL_RUN, "erase", "--user-id", "alice", "--apply"]
        result = subprocess.run(erase + [self.path], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(result.stderr, "pixel: erase: %s: gzipped since it was named: run "
                         "erase again with %s.gz: not erased\n" % (self.path, self.path))
        self.assertEqual(self.files(), (None, self.whole))
        result = subprocess.run(erase + [self.path + ".gz"], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(self.files(), (None, self.bobs))
        self.write()
        result = subprocess.run(erase + [self.path], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.gzip()
        self.assertEqual(self.files(), (None, self.bobs))


class EraseFollowedAgain(unittest.TestCase):
    """`erase --follow` run again with the ledger of the first: after more was logged (the
    ledger holds digests only: it follows on from those), and after a first one killed."""

    def setUp(self):
        self.dir = temp_dir(self, "pixel-erase-")
        self.first = [logged("alice", kind="identify", anonymous="a-1"),
                      logged(None, kind="page", anonymous="a-1"),
                      logged("alice", kind="alias", previousId="old-alice"),
                      logged("old-alice", anonymous="b-9"), logged(None, anonymous="b-9"),
                      logged("bob", anonymous="x"), logged("carol")]
        # Logged since: alice's browsers, new and old, old-alice's new browser (the alias
        # that named old-alice erased), and alice's new userId, whose browser is new too.
        self.since = [logged("alice", anonymous="a-2"), logged(None, anonymous="a-2"),
                      logged(None, anonymous="a-1"), logged("old-alice", anonymous="b-7"),
                      logged(None, anonymous="b-7"),
                      logged("alice-new", kind="alias", previousId="alice"),
                      logged("alice-new", anonymous="a-3"), logged(None, anonymous="a-3"),
                      logged("dave", anonymous="d")]
        self.ledger = os.path.join(self.dir, ".pixel", "erase-ledger.json")

    def ledger_lines(self):
        with open(self.ledger) as handle:
            return [json.loads(line) for line in handle]

    def test_a_second_run_follows_on_from_the_ids_the_first_found(self):
        path = write_log(self.dir, "events.jsonl", self.first)
        status, out, err = main_in_this_process(["erase", "--user-id", "alice", "--follow",
                                                 "--apply", "--max-share", "1", path])
        self.assertEqual((status, err), (0, ""))
        first = self.ledger_lines()[-1]
        self.assertEqual((first["ids"], first["followed"]), (
            sorted(map(digest, ["alice", "old-alice"])), sorted(map(digest, ["a-1", "b-9"]))))
        with open(path, "ab") as handle:
            handle.write(b"".join(line + b"\n" for line in self.since))
        kept = [logged("bob", anonymous="x"), logged("carol"), logged("dave", anonymous="d")]
        for again in (["--ledger", self.ledger], ["--ledger", self.ledger, "--user-id", "alice"]):
            with self.subTest(again):
                copy = write_file(temp_dir(self), "events.jsonl", read_bytes(path))
                status, out, err = main_in_this_process(
                    ["erase", "--follow", "--apply", "--max-share", "1"] + again + [copy])
                self.assertEqual((status, err), (0, ""))
                self.assertIn("%s: erased 8 of 11 line(s)" % copy, out)
                self.assertEqual(read_bytes(copy).splitlines(), kept)
                self.assertIn("--follow: anonymousId b-7 (1 event(s))", out)
                self.assertIn("(their deletion APIs take userIds): alice, alice-new, "
                              "old-alice\n", out)
                ledger = os.path.join(os.path.dirname(copy), ".pixel", "erase-ledger.json")
                with open(ledger) as handle:
                    started, done = [json.loads(line) for line in handle]
                self.assertEqual([started["status"], done["status"]], ["started", "done"])
                for line in (started, done):
                    self.assertEqual((line["ids"], line["followed"]), (
                        sorted(map(digest, ["alice", "alice-new", "old-alice"])),
                        sorted(map(digest, ["a-1", "a-2", "a-3", "b-7", "b-9"]))))
                self.assertEqual(done["files"], [{"path": copy, "lines": 11, "erased": 8,
                                                  "as_text": 0, "status": "erased"}])

    def test_a_run_again_follows_from_the_userids_alone_never_past_the_first(self):
        # The attack pass on f269f42, which followed from every id a ledger names: an
        # --anonymous-id's rerun with --follow took bob's events through an alias whose
        # previousId was that id, which the first erase had not followed. A ledger now names
        # its userIds apart, and an older one, without them, starts --follow from none.
        lines = [logged(None, anonymous="anon-fam"), logged(None, anonymous="anon-fam"),
                 logged("bob", kind="alias", previousId="anon-fam"),
                 logged("bob", anonymous="phone"), logged(None, anonymous="phone"),
                 logged("carol")]
        path = write_log(self.dir, "events.jsonl", lines)
        erase = ["erase", "--follow", "--apply", "--max-share", "1"]
        status, out, err = main_in_this_process(erase + ["--anonymous-id", "anon-fam", path])
        self.assertEqual((status, err), (0, ""))
        self.assertIn("%s: erased 3 of 6 line(s)" % path, out)   # the alias names it too
        with open(self.ledger) as handle:
            entries = [json.loads(line) for line in handle]
        self.assertEqual([entry["user_ids"] for entry in entries], [[], []])
        older = os.path.join(self.dir, "older.json")   # as 2.1.0 wrote it
        with open(older, "w") as handle:
            for entry in entries:
                handle.write(json.dumps({key: value for key, value in entry.items()
                                         if key != "user_ids"}) + "\n")
        for ledger in (self.ledger, older):
            with self.subTest(ledger=os.path.basename(ledger)):
                write_log(self.dir, "events.jsonl", lines)   # a backup restored
                status, out, err = main_in_this_process(erase + ["--ledger", ledger, path])
                self.assertEqual((status, err), (0, ""))
                self.assertIn("%s: erased 3 of 6 line(s)" % path, out)
                self.assertEqual(read_bytes(path).splitlines(), lines[3:])

    def test_a_run_again_after_a_kill_9_before_the_replace_finishes_the_job(self):
        # Killed with its copy of the second file written and synced, before the rename:
        # the first file erased, the second whole, the ledger's last line "started". The
        # run again from that ledger alone erases the rest and says done.
        names = [write_log(self.dir, "events.jsonl.2026111%dT000000.000Z" % day, lines)
                 for day, lines in ((7, self.first), (8, self.since))]
        stopped = os.path.join(self.dir, "stopped")
        script = (
            "import os, sys, time; sys.path.insert(0, %r); import pixel\n"
            "replace = os.replace\n"
            "def stop_before(source, target):\n"
            "    if target == %r:\n"
            "        open(%r, 'w').close()\n"
            "        time.sleep(60)\n"
            "    replace(source, target)\n"
            "os.replace = stop_before\n"
            "sys.exit(pixel.main(['erase', '--user-id', 'alice', '--follow', '--apply',\n"
            "                     '--max-share', '1', %r, %r]))\n" % (
                HERE, names[1], stopped, names[0], names[1]))
        eraser = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        self.addCleanup(eraser.wait)
        self.addCleanup(eraser.kill)
        self.assertTrue(wait_until(lambda: os.path.exists(stopped), 30))
        eraser.kill()
        eraser.wait()
        copy = os.path.join(self.dir, ".%s.erase-%d.tmp" % (os.path.basename(names[1]),
                                                            eraser.pid))
        self.assertTrue(os.path.exists(copy))
        self.assertEqual(read_bytes(names[0]).splitlines(),
                         [logged("bob", anonymous="x"), logged("carol")])
        self.assertEqual(read_bytes(names[1]).splitlines(), self.since)
        killed = self.ledger_lines()
        self.assertEqual([line["status"] for line in killed], ["started"])
        status, out, err = main_in_this_process(["erase", "--ledger", self.ledger, "--follow",
                                                 "--apply", "--max-share", "1"] + names)
        self.assertEqual((status, err), (0, ""))
        self.assertFalse(os.path.exists(copy))
        self.assertEqual(read_bytes(names[0]).splitlines(),
                         [logged("bob", anonymous="x"), logged("carol")])
        self.assertEqual(read_bytes(names[1]).splitlines(), [logged("dave", anonymous="d")])
        lines = self.ledger_lines()
        self.assertEqual([line["status"] for line in lines], ["started", "started", "done"])
        self.assertEqual(lines[1]["pid"], lines[2]["pid"])
        self.assertNotEqual(lines[0]["pid"], lines[2]["pid"])
        self.assertEqual([(entry["path"], entry["erased"], entry["status"])
                          for entry in lines[2]["files"]],
                         [(names[0], 0, "erased"), (names[1], 8, "erased")])
        self.assertEqual(lines[2]["ids"], sorted(map(digest, ["alice", "alice-new",
                                                              "old-alice"])))


class ErasePixelProcess(unittest.TestCase):
    """`pixel.py erase --apply` beside a running pixel.py that takes traffic, rotates and
    forwards: nobody else's answered event is lost or written twice, each is forwarded once,
    and none of the erased person's is forwarded once the erase has begun; kill -9 of
    either side."""

    def setUp(self):
        self.dir = temp_dir(self, "pixel-erase-")
        self.log = os.path.join(self.dir, "events.jsonl")

    def start(self, receiver, *argv, stderr=subprocess.DEVNULL):
        process, port = start_pixel(self, "--log", self.log, "--forward", receiver.url,
                                    "--forward-batch", "50", *argv, stderr=stderr)
        return process, port

    def erase(self, *argv, wait=True):
        process = subprocess.Popen([sys.executable, PIXEL_RUN, "erase"] + list(argv),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(process.stderr.close)
        self.addCleanup(process.stdout.close)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        if not wait:
            return process
        out, err = process.communicate(timeout=120)
        return process.returncode, out, err

    def files(self):
        return sorted(os.path.join(self.dir, name) for name in os.listdir(self.dir)
                      if name.startswith(("events.jsonl", "rejects.jsonl")))

    def logged_users(self):
        found = collections.Counter()
        for path in self.files():
            if os.path.basename(path).startswith("events"):
                with open(path, "rb") as handle:
                    for line in handle:
                        event = json.loads(line)
                        found[(event["userId"], event["messageId"])] += 1
        return found

    @soak
    @unittest.skipUnless(os.path.isdir("/proc/self/fd"), "reads /proc")
    def test_rotated_files_named_alone_hold_the_forwarder_too(self):
        # The attack pass: behind more than MAX_OPEN_LOG_FILES rotated files, the forwarder
        # closes (parks) some, to find again by inode. Erase named those alone, found them
        # free, replaced them without the pixel holding its forwarder, and their unsent events
        # of everyone else were never sent (2,880 of 4,761). Held files waited 60 s each.
        receiver, down = receiver_down(self)
        process, port = self.start(receiver, "--max-bytes", "100")   # a line a file
        users = ("alice", "bob", "carol")
        for number in range(60):
            fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=%s&event=e&messageId=m%d"
                      % (users[number % 3], number))
        rotated = [path for path in self.files() if ".jsonl.2" in path]
        self.assertGreater(len(rotated), pixel.MAX_OPEN_LOG_FILES + 4)

        def held():
            folder = "/proc/%d/fd" % process.pid
            return {os.path.realpath(os.path.join(folder, fd)) for fd in os.listdir(folder)}

        self.assertTrue(wait_until(lambda: len(set(rotated) - held()) > 2))
        parked = sorted(set(rotated) - held())
        status, out, err = self.erase("--user-id", "bob", "--apply", "--max-share", "1",
                                      *(parked + sorted(set(rotated) & held())[:2]))
        self.assertEqual(status, 0, err)
        self.assertEqual(out.count(": erased "), len(parked) + 2)
        down.clear()
        wanted = {"m%d" % number for number in range(60) if number % 3 != 1}
        self.assertTrue(wait_until(lambda: wanted <= set(receiver.ids()), 60))
        ids = receiver.ids()
        self.assertEqual(len(ids), len(set(ids)), "none twice")
        sent_bobs = {int(name[1:]) for name in set(ids) - wanted}
        erased = [number for number in sent_bobs if any(
            "m%d\"" % number in read_bytes(path).decode() for path in parked)]
        self.assertEqual(erased, [], "none of bob's from the files erased")

    def test_a_log_moved_by_hand_named_before_the_live_log_is_erased_at_once(self):
        # The pixel's forwarder still holds kept.jsonl, and its flock. Named first (a shell's
        # glob may sort it so), erase asked for it a pixel that does not write it, waited
        # 60 s for an answer, and exited 1 with it not erased.
        receiver, _ = receiver_down(self)
        process, port = self.start(receiver)
        track = "/v1/pixel/track?writeKey=K&userId=%s&event=e"
        for user in ("bob", "alice", "bob"):
            fetch_gif(port, track % user)
        kept = os.path.join(self.dir, "a-kept.jsonl")
        os.rename(self.log, kept)
        open(self.log, "ab").close()
        time.sleep(2 * PROCESS_PATH_CHECK)   # pixel looks at its path this often
        for user in ("alice", "bob"):
            fetch_gif(port, track % user)
        started = time.monotonic()
        status, out, err = self.erase("--user-id", "bob", "--apply", "--max-share", "1", kept,
                                      self.log)
        self.assertEqual(status, 0, err)
        self.assertLess(time.monotonic() - started, 20)
        self.assertEqual([json.loads(line)["userId"] for line in read_bytes(kept).splitlines()],
                         ["alice"])

    @soak
    def test_keep_deletes_no_unsent_file_under_load_through_an_erase(self):
        # An attacker's run: --keep 1, a slow receiver, one erase. Files the writer had handed
        # to the forwarder and it had yet to pin were deleted unsent: 36-774 answered events
        # a run, reached neither the receiver nor the disk.
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            time.sleep(0.05), (200, {}, b"{}"))[1])
        process, port = self.start(receiver, "--max-bytes", "2K", "--keep", "1",
                                   "--forward-batch", "20")
        answered, stop = [], threading.Event()

        def client(tag):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for number in itertools.count():
                if stop.is_set():
                    break
                user = "%s-%d" % (tag, number)
                connection.request("GET", "/v1/pixel/track?writeKey=K&userId=%s&event=e" % user)
                if connection.getresponse().read() == pixel.GIF:
                    answered.append(user)
            connection.close()

        clients = [threading.Thread(target=client, args=(tag,)) for tag in "ab"]
        for thread in clients:
            thread.start()
        try:
            self.assertTrue(wait_until(lambda: len(answered) > 4000, 60))
            status, out, err = self.erase("--user-id", "a-5", "--apply",
                                          *sorted(glob.glob(self.log + "*")))
            self.assertTrue(wait_until(lambda: len(answered) > 8000, 60))
        finally:
            stop.set()
            for thread in clients:
                thread.join()
        with receiver.lock:
            forwarded = {event["userId"] for event in receiver.taken}
        on_disk = {user for user, _ in self.logged_users()}   # no write now: no rotation
        lost = [user for user in answered if user != "a-5" and user not in forwarded | on_disk]
        self.assertEqual(lost, [])
        self.assertEqual(status, 0, err)

    @soak
    def test_under_traffic_rotation_and_a_receiver_that_goes_away(self):
        down = threading.Event()
        receiver = FakeReceiver(self, lambda receiver, user, events: (
            (503, {}, b"later") if down.is_set() else (200, {}, b"{}")))
        process, port = self.start(receiver, "--max-bytes", "20K")
        answered, stop = [], threading.Event()

        def traffic(user):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            number = 0
            while not stop.is_set():
                connection.request("GET", "/v1/pixel/track?writeKey=K&userId=%s&event=e&"
                                   "messageId=%s-%d" % (user, user, number))
                if connection.getresponse().read() == pixel.GIF:
                    answered.append("%s-%d" % (user, number))
                number += 1
            connection.close()

        def alice(first, count):
            for number in range(first, first + count):
                fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=alice&event=e&messageId="
                          "alice-%d" % number)

        senders = [threading.Thread(target=traffic, args=(user,)) for user in ("bob", "carol")]
        for sender in senders:
            sender.start()
        alice(0, 20)   # forwarded before the erase: for the receiver's deletion API
        self.assertTrue(wait_until(lambda: len(receiver.taken) > 300, 30))
        down.set()     # from here a backlog grows, alice's events in it
        alice(20, 20)
        self.assertTrue(wait_until(lambda: len(answered) > len(receiver.taken) + 300, 30))
        before = len(receiver.taken)
        status, out, err = self.erase("--user-id", "alice", "--apply", *self.files())
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(sum(int(count) for count in re.findall(r"erased (\d+) of", out)), 40)
        self.assertIn("(their deletion APIs take userIds): alice\n", out)
        self.assertTrue(wait_until(lambda: len(answered) > before + 1000, 30))
        stop.set()
        for sender in senders:
            sender.join()
        down.clear()
        logged = self.logged_users()
        self.assertEqual(set(logged.values()), {1})   # nothing written twice
        self.assertEqual({number for _, number in logged}, set(answered))   # none lost
        self.assertTrue(wait_until(lambda: len(receiver.taken) == len(answered) + 20, 60))
        time.sleep(0.3)
        ids = receiver.ids()
        self.assertEqual(sorted(number for number in ids if not number.startswith("alice")),
                         sorted(answered))   # every other event once
        self.assertEqual(sorted(number for number in ids[:before] if
                                number.startswith("alice")), sorted(
            "alice-%d" % number for number in range(20)))
        self.assertFalse([number for number in ids[before:] if number.startswith("alice")])

    def test_keep_deletes_no_unsent_file_while_the_forwarder_is_held(self):
        # --keep spares the rotated files the forwarder has not sent; an erase holds the
        # forwarder, and its rotation must not take that as "all sent".
        receiver = FakeReceiver(self, lambda receiver, user, events: (503, {}, b"later"))
        process, port = self.start(receiver, "--max-bytes", "4K", "--keep", "1")
        sent = ["bob-%d" % number for number in range(60)]
        for number in sent:
            fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=bob&event=e&messageId=" + number)
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=alice&event=e&messageId=alice-0")
        self.assertGreater(len(self.files()), 3)   # kept past --keep 1: not sent yet
        status, out, err = self.erase("--user-id", "alice", "--apply", self.log)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(sorted(number for _, number in self.logged_users()), sorted(sent))

    @soak
    def test_a_symlinked_live_log(self):
        # The pixel writes where the link points (LogWriter: realpath), and looks for an
        # erase's request beside that file.
        real = os.path.join(self.dir, "real")
        os.mkdir(real)
        os.symlink(os.path.join(real, "events.jsonl"), self.log)
        receiver = FakeReceiver(self)
        process, port = self.start(receiver)
        for user in ("alice", "bob"):
            fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=%s&event=e" % user)
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 2))
        eraser = self.erase("--user-id", "alice", "--apply", self.log, wait=False)
        out, err = eraser.communicate(timeout=30)
        self.assertEqual((eraser.returncode, err), (0, ""))
        self.assertIn("erased 1 of 2 line(s)", out)
        kept = [os.path.join(real, name) for name in os.listdir(real)
                if name.startswith("events.jsonl.")]
        with open(kept[0], "rb") as handle:
            self.assertEqual([json.loads(line)["userId"] for line in handle], ["bob"])
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=carol&event=e")
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 3))

    @unittest.skipIf(pixel.fcntl is None, "flock")
    def test_erase_takes_no_flock_of_a_pixels_next_file(self):
        # Under load, erase's looks at the live log (_running_log: one for each file named,
        # hundreds) flocked the file a pixel's rotation had just made, before the pixel did:
        # the pixel's own flock failed, and the lines it wrote then with it (answered pixels,
        # 1-28 a run, neither on disk nor forwarded).
        rotated = write_log(self.dir, "events.jsonl.20261118T000000.000Z",
                            [line.rstrip(b"\n") for line in person_lines("bob", 3)])
        open(self.log, "ab").close()   # made by the pixel's rotation; its flock comes next
        pixels = os.open(self.log, os.O_RDWR)
        self.addCleanup(os.close, pixels)
        real, refused = fcntl.flock, []

        def flock(fd, operation):   # the pixel takes its flock while erase holds one
            real(fd, operation)
            if fd != pixels and not operation & fcntl.LOCK_UN and \
                    os.path.samestat(os.fstat(fd), os.fstat(pixels)):
                try:
                    pixel._flock(pixels, self.log)
                except OSError as error:
                    refused.append(error)
                else:
                    real(pixels, fcntl.LOCK_UN)

        requests, locks = [], {}
        self.addCleanup(lambda: [os.close(fd) for fd in locks.values()])
        self.addCleanup(pixel.EraseRequest.finish, requests)
        with unittest.mock.patch.object(pixel.fcntl, "flock", flock), \
                unittest.mock.patch.object(pixel, "NEXT_FILE_GRACE", 60), \
                unittest.mock.patch.object(pixel.EraseRequest, "wait_ready", lambda *_: None):
            self.assertEqual(pixel._running_log(rotated), self.log)
            self.assertEqual(pixel._hold_for_erase(self.log, requests, locks, pixel.Reporter()),
                             [rotated])   # as the pixel answers (mocked here)
        self.assertEqual(refused, [])

    @unittest.skipIf(pixel.fcntl is None, "flock")
    def test_a_log_rotated_under_erases_look_is_not_taken_for_free(self):
        # wait_ready asks _flock_free whether the pixel has let go of its log. It opened the
        # live file, the pixel rotated it (and let go of it), and the flock it took then was
        # read as "the pixel has ended": erase held that rotated file as the live log, then
        # refused both, "a running pixel still writes it" (exit 1; once in 40 runs under load).
        write_log(self.dir, "events.jsonl", [line.rstrip(b"\n") for line in
                                             person_lines("bob", 3)])
        rotated, real_open = self.log + ".20261118T000000.000Z", pixel.open_file

        def open_file(path, *args, **kwargs):
            fd = real_open(path, *args, **kwargs)
            if path == self.log and not os.path.exists(rotated):   # the pixel's rotation
                os.rename(self.log, rotated)
                open(self.log, "ab").close()
            return fd

        locks = {}
        self.addCleanup(lambda: [os.close(fd) for fd in locks.values()])
        with unittest.mock.patch.object(pixel, "open_file", open_file):
            self.assertFalse(pixel._flock_free(self.log, locks))
        self.assertEqual(locks, {})

    def test_a_backfill_does_not_start_on_a_file_being_erased(self):
        rotated = write_log(self.dir, "events.jsonl.20261118T000000.000Z",
                            [line.rstrip(b"\n") for line in person_lines("bob", 3)])
        requests, locks = [], {}   # held as erase holds the files it works on
        self.assertEqual(pixel._hold_for_erase(rotated, requests, locks, pixel.Reporter()),
                         [rotated])
        self.addCleanup(lambda: [os.close(fd) for fd in locks.values()])
        self.addCleanup(pixel.EraseRequest.finish, requests)
        run = subprocess.run([sys.executable, PIXEL_RUN, "forward", "--to",
                              "http://127.0.0.1:9/", rotated], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertIn("pixel.py erase is at work on it", run.stderr)
        pixel.EraseRequest.finish(requests)   # and once it is done, it is sent
        [os.close(locks.pop(path)) for path in list(locks)]
        receiver = FakeReceiver(self)
        run = subprocess.run([sys.executable, PIXEL_RUN, "forward", "--to", receiver.url,
                              rotated], capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(len(receiver.taken), 3)

    def test_a_live_log_whose_one_rotated_file_a_backfill_sends_is_erased_but_that_one(self):
        # Erasing a live log holds each of its rotated files; one a pixel.py forward holds
        # (its shared flock) is refused, and the others are still erased: one archive being
        # backfilled must not keep a person in all the rest.
        receiver = FakeReceiver(self)
        process, port = self.start(receiver)
        sent, other = (os.path.join(self.dir, "events.jsonl.20261118T00000%d.000Z" % number)
                       for number in (0, 1))
        for path in (sent, other):
            write_log(self.dir, os.path.basename(path), [line.rstrip(b"\n") for line in
                                                         person_lines("bob", 3) +
                                                         person_lines("alice", 1)])
        backfill = pixel.LogFile.open(sent)   # as pixel.py forward holds what it sends
        self.addCleanup(backfill.close)
        self.assertTrue(backfill.share())
        status, out, err = self.erase("--user-id", "alice", "--apply", self.log)
        self.assertEqual(status, 1, out)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn(os.path.basename(sent), err)
        self.assertIn("a pixel.py forward is sending it", err)
        self.assertNotIn(b"alice", read_bytes(other))
        self.assertIn(b"alice", read_bytes(sent))
        with open(os.path.join(self.dir, ".pixel", "erase-ledger.json")) as handle:
            entry = json.loads(handle.read().splitlines()[-1])
        self.assertEqual(entry["status"], "partial")
        self.assertIn(other, [file["path"] for file in entry["files"]])

    @soak
    def test_a_backfill_at_work_sends_nothing_erased_after_the_erase(self):
        # pixel.py forward reads the files it was given through descriptors it holds: an
        # erase that replaces them under it must not let it send the old copies on.
        erased = threading.Event()
        late = []

        def respond(receiver, user, events):
            if erased.is_set():
                late.extend(event["messageId"] for event in events
                            if event["userId"] == "alice")
            time.sleep(0.05)
            return 200, {}, b"{}"

        receiver = FakeReceiver(self, respond)
        lines = [line for pair in zip(person_lines("bob", 300), person_lines("alice", 300))
                 for line in pair]
        rotated = write_log(self.dir, "events.jsonl.20261118T000000.000Z",
                            [line.rstrip(b"\n") for line in lines])
        backfill = subprocess.Popen([sys.executable, PIXEL_RUN, "forward", "--to", receiver.url,
                                     "--batch", "10", rotated], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: backfill.poll() is None and backfill.kill())
        self.assertTrue(wait_until(lambda: len(receiver.posts) >= 2, 30))
        status, out, err = self.erase("--user-id", "alice", "--apply", "--max-share", "0.5",
                                      rotated)
        if status == 0:
            erased.set()
        backfill.wait(120)
        self.assertEqual(late, [], "sent after the erase said %r" % out)
        # It refuses, naming the backfill (its shared flock), and works once that ended.
        self.assertEqual(status, 1, out)
        self.assertIn("a pixel.py forward is sending it", err)
        status, out, err = self.erase("--user-id", "alice", "--apply", "--max-share", "0.5",
                                      rotated)
        self.assertEqual((status, err), (0, ""), out)
        with open(rotated, "rb") as handle:
            self.assertNotIn(b"alice", handle.read())

    @soak
    def test_kill_9_of_the_erase_mid_apply(self):
        receiver = FakeReceiver(self)
        process, port = self.start(receiver)
        rotated = os.path.join(self.dir, "events.jsonl.20261118T000000.000Z")
        lines = [line for pair in zip(person_lines("bob", 40000), person_lines("alice", 40000))
                 for line in pair]
        write_log(self.dir, os.path.basename(rotated), [line.rstrip(b"\n") for line in lines])
        before = os.stat(rotated).st_ino
        for number in range(10):
            fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=bob&event=live%d" % number)
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 10))
        eraser = self.erase("--user-id", "alice", "--apply", self.log, rotated, wait=False)
        temporary = os.path.join(self.dir, ".%s.erase-%d.tmp" % (os.path.basename(rotated),
                                                                   eraser.pid))
        self.assertTrue(wait_until(lambda: os.path.exists(temporary), 30))
        eraser.kill()
        eraser.wait()
        with open(rotated, "rb") as handle:   # whole and old: the rename never came
            self.assertEqual(handle.read(), b"".join(lines))
        self.assertEqual(os.stat(rotated).st_ino, before)
        # The pixel sees the erase gone, goes on forwarding, and says so.
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=bob&event=after")
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 11, 10))
        status, out, err = self.erase("--user-id", "alice", "--apply", rotated, "--max-share",
                                      "0.5")
        self.assertEqual((status, err), (0, ""))
        self.assertFalse(os.path.exists(temporary))   # the copy left behind is removed
        with open(rotated, "rb") as handle:
            self.assertEqual(handle.read(), b"".join(person_lines("bob", 40000)))
        self.assertEqual(len(receiver.taken), 11)   # the old file was never the live one

    @soak   # over a second: a start's compile or warm-up, or a grace waited out
    def test_an_erase_that_ends_undone_is_said_once_by_the_pixel(self):
        # One that exits 1 (a file refused) ends as "stopped", not "done": the pixel goes on
        # forwarding, as after a killed erase, and says to run it again, once for both logs.
        receiver = FakeReceiver(self)
        stderr = open(os.path.join(self.dir, "stderr"), "w+")
        self.addCleanup(stderr.close)
        process, port = self.start(receiver, stderr=stderr)
        for user in ["alice"] * 2 + ["bob"] * (pixel.MIN_SHARE_LINES - 2):   # a share judged
            fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=%s&event=e" % user)
        self.assertTrue(wait_until(lambda: len(receiver.taken) == pixel.MIN_SHARE_LINES))
        eraser = self.erase("--user-id", "alice", "--apply", "--max-share", "0.1", self.log,
                            os.path.join(self.dir, "rejects.jsonl"), wait=False)
        out, err = eraser.communicate(timeout=60)
        self.assertEqual(eraser.returncode, 1, err)
        said = "an erase (pid %d) ended before it was done: run it again" % eraser.pid
        self.assertTrue(wait_until(lambda: said in read_text(stderr.name), 10))
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=bob&event=after")
        self.assertTrue(wait_until(lambda: len(receiver.taken) == pixel.MIN_SHARE_LINES + 1,
                                   10))
        self.assertEqual(read_text(stderr.name).count(said), 1)
        # Ctrl-C mid-way: one line, no traceback, and the pixel says the same.
        with unittest.mock.patch("pixel.erase_file", side_effect=KeyboardInterrupt), \
                unittest.mock.patch("sys.stderr", io.StringIO()) as erase_stderr:
            self.assertEqual(pixel.erase_command(["--user-id", "alice", "--apply", self.log],
                                                 stdout=io.StringIO()), 130)
        self.assertEqual(erase_stderr.getvalue(),
                         "pixel: erase: stopped before it was done: run it again\n")
        said = "an erase (pid %d) ended before it was done: run it again" % os.getpid()
        self.assertTrue(wait_until(lambda: said in read_text(stderr.name), 10))

    def test_kill_9_of_the_pixel_while_it_is_asked(self):
        receiver = FakeReceiver(self)
        process, port = self.start(receiver)
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=alice&event=e")
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=bob&event=e")
        os.kill(process.pid, signal.SIGSTOP)   # it cannot answer
        eraser = self.erase("--user-id", "alice", "--apply", self.log, wait=False)
        self.assertTrue(wait_until(lambda: os.path.exists(
            pixel.erase_request_path(self.log)), 10))
        process.kill()
        out, err = eraser.communicate(timeout=30)
        self.assertEqual((eraser.returncode, err), (0, ""))
        self.assertIn("%s: erased 1 of 2 line(s)" % self.log, out)
        self.assertFalse(os.path.exists(pixel.erase_request_path(self.log)))

    # The next four play a running pixel's side on a thread, slowly, so that erase's looks
    # fall in the gaps of its rotation (LogWriter._rotate: rename the log, make the next
    # file, flock it, let go of the old one), and run erase's _hold_for_erase beside it.

    def pixel_holding_the_log(self):
        """Alice's line in the log, flocked as a running pixel holds it; its descriptors."""
        with open(self.log, "wb") as handle:
            handle.write(log_event(1, userId="alice"))
        self.held, self.rotated = [os.open(self.log, os.O_RDONLY)], []
        pixel.fcntl.flock(self.held[0], pixel.fcntl.LOCK_EX)
        self.addCleanup(lambda: [os.close(fd) for fd in self.held])

    def rotate(self, gap=0.0, flock=True):
        """The pixel's rotation, `gap` s between each step; False if erase took the next
        file's flock before the pixel could."""
        self.rotated.append(pixel.rotation_target(self.log, time.time() + len(self.rotated)))
        os.rename(self.log, self.rotated[-1])
        time.sleep(gap)
        self.held.append(os.open(self.log, os.O_WRONLY | os.O_CREAT, 0o644))
        time.sleep(gap)
        return not flock or self.flock_next()

    def flock_next(self):
        try:
            pixel.fcntl.flock(self.held[-1], pixel.fcntl.LOCK_EX | pixel.fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.close(self.held.pop(-2))
        return True

    def answer_as_the_desk(self):
        """Answer erase's request as the pixel's EraseDesk does, once erase has made it."""
        request = pixel.erase_request_path(self.log)
        answer = lambda state: pixel.write_checkpoint(pixel.erase_answer_path(self.log), {
            "id": pixel.read_state(request)["id"], "pid": os.getpid(), "state": state,
            "rotated": self.rotated[-1]})
        answer("ready")
        if wait_until(lambda: (pixel.read_state(request) or {}).get("state") == "done"):
            answer("resumed")

    def hold_beside(self, pixel_side):
        """(_hold_for_erase's files for the log, the descriptors it holds), `pixel_side` on
        a thread meanwhile."""
        side = threading.Thread(target=pixel_side)
        side.start()
        requests, locks = [], {}
        self.addCleanup(lambda: [os.close(fd) for fd in locks.values()])
        try:
            return pixel._hold_for_erase(self.log, requests, locks, pixel.Reporter()), locks
        finally:
            pixel.EraseRequest.finish(requests)
            side.join()

    def requested(self):
        return wait_until(lambda: os.path.exists(pixel.erase_request_path(self.log)))

    def test_a_log_caught_between_its_rotation_and_the_next_file_is_waited_for(self):
        # An erase that looked between the rename and the next file found nothing at the
        # path, and said "not erased" (1 time in ~40); one between the next file and its
        # flock would have taken the pixel's new file.
        self.pixel_holding_the_log()
        taken = []

        def pixel_side():
            if self.requested():
                taken.append(not self.rotate(gap=0.3))   # erase looks every 0.05 s
                self.answer_as_the_desk()

        found, _ = self.hold_beside(pixel_side)
        self.assertEqual((taken, found), ([False], self.rotated))

    def test_a_log_the_pixel_rotates_while_erase_claims_it_stays_the_pixels(self):
        # erase opens the log, makes its request (syncs: milliseconds), then flocks what it
        # opened. A rotation by --max-bytes meanwhile left that file free: erase took the
        # pixel for gone and rewrote the file at the path, the one the pixel writes now
        # (an attacker lost 8-10 answered events so). Here the pixel rotates inside
        # erase's claim(), then answers the request, rotating again.
        self.pixel_holding_the_log()
        real_claim = pixel.EraseRequest.claim
        rotated_once = threading.Event()   # not self.rotated: it grows before the rename

        def claim_while_the_pixel_rotates(request):
            real_claim(request)
            if not self.rotated:   # the live log's claim, not its rotated files'
                self.rotate()
                rotated_once.set()

        def pixel_side():
            if rotated_once.wait(10):
                self.rotate()
                self.answer_as_the_desk()

        with unittest.mock.patch("pixel.EraseRequest.claim", claim_while_the_pixel_rotates):
            found, _ = self.hold_beside(pixel_side)
        self.assertEqual(len(self.rotated), 2)
        self.assertEqual(found, self.rotated)   # never the live file the pixel writes

    @unittest.mock.patch("pixel.NEXT_FILE_GRACE", 0.1)
    def test_a_pixel_gone_after_making_the_next_file_before_it_answered(self):
        # A new file at the path, never flocked, and no answer: erase waited its 60 s and
        # erased nothing. Once the file is NEXT_FILE_GRACE old and free, it is no one's.
        self.pixel_holding_the_log()

        def pixel_side():
            if self.requested():
                self.rotate(flock=False)
            os.close(self.held.pop(0))   # killed: its flocks go

        started = time.monotonic()
        found, _ = self.hold_beside(pixel_side)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(found, [self.log] + self.rotated)

    def test_a_pixels_next_file_not_yet_flocked_is_not_taken(self):
        # A third attacker stopped a pixel (SIGSTOP) inside its rotation, after it made its
        # next file and before it flocked it: erase took that file as no one's at once,
        # later rewrote the log by name, and lost answered events. An empty file made in
        # the last second is waited for; erase_file erases only the file erase holds.
        self.pixel_holding_the_log()
        self.rotate(flock=False)   # stopped here, by --max-bytes
        taken = []

        def pixel_side():
            time.sleep(0.3)   # SIGCONT
            taken.append(not self.flock_next())
            if self.requested():
                self.rotate()
                self.answer_as_the_desk()

        found, locks = self.hold_beside(pixel_side)
        self.assertEqual((taken, found), ([False], self.rotated))
        # ... and a file at the path that is not the one held is not erased by its name.
        other = pixel.rotation_target(self.log, time.time() + 10)
        with open(other, "wb") as handle:
            handle.write(log_event(2, userId="alice") + log_event(3, userId="bob"))
        erasure, problem = pixel.erase_file(other, pixel.People(["alice"]), apply=True,
                                            held=locks[os.path.realpath(self.rotated[0])])
        self.assertEqual(problem, "not the file erase holds, which a pixel renamed: run "
                                  "erase again")
        self.assertIn(b"alice", read_bytes(other))

    @soak   # over a second: a start's compile or warm-up, or a grace waited out
    def test_a_pixel_gone_between_its_rename_and_the_next_file(self):
        # Nothing comes to the path (a kill -9 inside rotate_now): erase waited its 60 s,
        # then blamed an old pixel. The rotated file, no longer held, is erased, and said.
        with open(self.log, "wb") as handle:
            handle.write(log_event(1, userId="alice") + log_event(2, userId="bob"))
        held = os.open(self.log, os.O_RDONLY)
        pixel.fcntl.flock(held, pixel.fcntl.LOCK_EX)
        self.addCleanup(lambda: held is None or os.close(held))
        rotated = pixel.rotation_target(self.log, time.time())
        eraser = self.erase("--user-id", "alice", "--apply", self.log, wait=False)
        self.assertTrue(wait_until(lambda: os.path.exists(pixel.erase_request_path(self.log))))
        os.rename(self.log, rotated)
        os.close(held)   # the pixel's end lets go of its flock
        held = None
        started = time.monotonic()
        out, err = eraser.communicate(timeout=30)
        self.assertLess(time.monotonic() - started, pixel.NEXT_FILE_GRACE + 2)
        self.assertEqual(eraser.returncode, 0, err)
        self.assertIn("nothing has been at %s for 1 s since the pixel renamed it" % self.log, err)
        self.assertIn("%s: erased 1 of 2 line(s)" % rotated, out)

    def test_a_live_log_between_its_rename_and_the_next_file_is_waited_for(self):
        # A glob taken under load named the live log in the instant a rotation had renamed it
        # and not yet made the next file: erase said "No such file" and exited 1. A log with
        # rotated files beside it is waited for (milliseconds; here 0.4 s, after erase looked).
        rotated = pixel.rotation_target(self.log, time.time())
        with open(rotated, "wb") as handle:
            handle.write(log_event(0, userId="bob") + log_event(1, userId="alice"))
        eraser = self.erase("--user-id", "alice", "--apply", self.log, rotated, wait=False)
        time.sleep(0.4)
        with open(self.log + ".next", "wb") as handle:
            handle.write(log_event(2, userId="alice") + log_event(3, userId="bob"))
        os.rename(self.log + ".next", self.log)
        out, err = eraser.communicate(timeout=30)
        self.assertEqual(eraser.returncode, 0, err)
        self.assertIn("%s: erased 1 of 2 line(s)" % self.log, out)
        self.assertIn("%s: erased 1 of 2 line(s)" % rotated, out)

    def test_what_killed_erases_left_for_files_gone_since_is_swept(self):
        # A kill -9 of erase leaves a request for each rotated file it held; once --keep
        # deletes the file, no erase of it will ever come to remove that request.
        with open(self.log, "wb") as handle:
            handle.write(log_event(1, userId="alice") + log_event(2, userId="bob"))
        dead = subprocess.Popen(["true"])
        dead.wait()
        state = os.path.join(self.dir, ".pixel")
        os.makedirs(state)
        left = {"erase.events.jsonl.20261201T000000.000Z.json": {"pid": dead.pid},
                "erase-answer.events.jsonl.20261201T000000.000Z.json": {"pid": dead.pid},
                "erase.events.jsonl.20261201T000001.000Z.json.%d" % dead.pid: {},
                "erase.events.jsonl.20261201T000002.000Z.json": {"pid": os.getpid()},
                "forward.events.jsonl.json": {}}
        for name, document in left.items():
            pixel.write_checkpoint(os.path.join(state, name), document)
        self.assertEqual(self.erase("--user-id", "alice", self.log)[0], 0)   # a dry run
        self.assertEqual(len(os.listdir(state)), 5)
        status, _, err = self.erase("--user-id", "alice", "--apply", self.log)
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(sorted(os.listdir(state)), [
            "erase-ledger.json", "erase.events.jsonl.20261201T000002.000Z.json",
            "forward.events.jsonl.json"])   # an erase alive still, and not erase's

    @unittest.skipUnless(os.path.exists("/proc/self/stat"), "reads /proc")
    def test_kill_9_of_the_pixel_after_it_rotated_for_the_erase(self):
        for reaped in (True, False):
            with self.subTest(reaped=reaped):
                self.kill_the_pixel_after_it_rotated(reaped)

    def kill_the_pixel_after_it_rotated(self, reaped):
        receiver = FakeReceiver(self)
        process, port = self.start(receiver)
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=alice&event=e")
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=bob&event=e")
        eraser = self.erase("--user-id", "alice", "--apply", self.log, wait=False)
        self.assertTrue(wait_until(lambda: os.path.exists(
            pixel.erase_request_path(self.log)), 10))
        eraser.send_signal(signal.SIGSTOP)   # it has not read the answer yet
        self.assertTrue(wait_until(lambda: (pixel.read_state(pixel.erase_answer_path(
            self.log)) or {}).get("state") == "ready", 10))
        process.kill()   # rotated, answered, and gone before erase looked
        if reaped:
            process.wait()
        else:   # a zombie until its parent waits, which kill(pid, 0) still finds: erase
            self.assertTrue(wait_until(lambda: process_state(process.pid) == "Z"))   # waited
        eraser.send_signal(signal.SIGCONT)   # ERASE_WAIT (60 s) for it to answer again
        out, err = eraser.communicate(timeout=pixel.ERASE_WAIT / 4)
        self.assertEqual((eraser.returncode, err), (0, ""))
        for path in self.files():
            with open(path, "rb") as handle:
                self.assertNotIn(b"alice", handle.read(), path)

    @soak
    def test_one_erase_at_a_time_and_requests_that_are_not(self):
        receiver = FakeReceiver(self)
        process, port = self.start(receiver, stderr=subprocess.PIPE)
        self.addCleanup(process.stderr.close)
        request = pixel.erase_request_path(self.log)
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=bob&event=0")
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 1))
        # What a running pixel finds where a request would be: none of it is one.
        sleeper = subprocess.Popen(["sleep", "30"])
        self.addCleanup(sleeper.wait)
        self.addCleanup(sleeper.kill)
        for content, stale in (
                (b"{not json", False), (b"[1,2]", False), (b"x" * 200000, False),
                (b'{"pid": "1"}', True),   # removed, as an erase's that has ended
                (json.dumps({"pid": 1, "started": 1, "state": "asked"}).encode(), True),
                (json.dumps({"pid": 999999999, "state": "asked"}).encode(), True),
                (json.dumps({"pid": sleeper.pid, "started": 0}).encode(), True)):
            with open(request, "wb") as handle:
                handle.write(content)
            count = len(receiver.taken)
            fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=bob&event=x")
            self.assertTrue(wait_until(lambda: len(receiver.taken) > count and
                                       os.path.exists(request) != stale, 5), content[:20])
        os.remove(request) if os.path.exists(request) else None
        os.mkfifo(request)
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=bob&event=fifo")
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 9, 5))
        os.remove(request)
        # Two erases at once: the second is refused, naming the first, and changes nothing.
        first = self.erase("--user-id", "bob", "--apply", "--max-share", "1",
                           self.log, wait=False)
        self.assertTrue(wait_until(lambda: os.path.exists(request)))
        first.send_signal(signal.SIGSTOP)
        status, out, err = self.erase("--user-id", "bob", "--apply", self.log)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "pixel: erase: %s: another erase (pid %d) is at work on it: not "
                              "erased\n" % (self.log, first.pid))
        first.send_signal(signal.SIGCONT)
        out_first, err_first = first.communicate(timeout=60)
        self.assertEqual((first.returncode, err_first), (0, ""))
        self.assertRegex(out_first, r"events\.jsonl\.\d{8}T\d{6}\.\d{3}Z: erased 9 of 9 ")
        health = fetch_json(port, "/health")
        self.assertNotIn("held", health["forward"])
        process.kill()
        said = process.stderr.read()
        self.assertNotIn("Traceback", said)
        self.assertEqual(said.count("pixel: an erase (pid "), 4, said)   # the stale ones

    @soak
    def test_a_pixel_started_during_an_erase_waits_for_it(self):
        receiver = FakeReceiver(self)
        lines = [line for pair in zip(person_lines("bob", 30000), person_lines("alice", 300))
                 for line in pair] + person_lines("bob", 29700, start=300)
        write_log(self.dir, "events.jsonl", [line.rstrip(b"\n") for line in lines])
        eraser = self.erase("--user-id", "alice", "--apply", self.log, wait=False)
        request = pixel.erase_request_path(self.log)
        self.assertTrue(wait_until(lambda: os.path.exists(os.path.join(
            self.dir, ".events.jsonl.erase-%d.tmp" % eraser.pid)), 30))
        process, port = self.start(receiver)   # waits for the erase's flock, then starts
        out, err = eraser.communicate(timeout=60)
        self.assertEqual((eraser.returncode, err), (0, ""))
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=bob&messageId=new&event=e")
        self.assertFalse(os.path.exists(request))
        with open(self.log, "rb") as handle:
            kept = handle.read().splitlines(True)
        self.assertEqual(b"".join(kept[:-1]), b"".join(person_lines("bob", 30000)))
        self.assertEqual(json.loads(kept[-1])["messageId"], "new")


class EraseUnderWsgi(unittest.TestCase):
    """The erase desk runs in a WSGI worker too: an erase beside make_wsgi_app's files."""

    @soak
    def test_beside_the_wsgi_app(self):
        folder = temp_dir(self)
        receiver = FakeReceiver(self)
        log = os.path.join(folder, "events.jsonl")
        with unittest.mock.patch("sys.stderr", io.StringIO()):
            app = pixel.make_wsgi_app(log=log, forward=receiver.url)
        self.addCleanup(app.close)
        server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_QuietWsgiHandler)
        threading.Thread(target=server.serve_forever, args=(SERVE_POLL,), daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        port = server.server_address[1]
        for user in ("alice", "bob", "alice", "carol"):
            fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=%s&event=e" % user)
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 4))
        stdout = io.StringIO()
        with unittest.mock.patch("sys.stderr", io.StringIO()) as stderr:
            status = pixel.erase_command(["--user-id", "alice", "--apply", log], stdout=stdout)
        self.assertEqual((status, stderr.getvalue()), (0, ""))
        rotated = re.search(r"^(\S+): erased 2 of 4 line\(s\)$", stdout.getvalue(), re.M)
        self.assertIsNotNone(rotated, stdout.getvalue())
        self.assertRegex(rotated.group(1), r"events\.jsonl\.\d{8}T\d{6}\.\d{3}Z$")
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=dave&event=e")
        self.assertTrue(wait_until(lambda: len(receiver.taken) == 5))
        self.assertEqual(receiver.taken[-1]["userId"], "dave")


class SuppressProcess(unittest.TestCase):
    """--suppress in pixel.py: a list that does not load stops the start, naming the file
    and the line, and makes no file; SIGHUP loads it again."""

    def test_a_start_that_cannot_load_it_and_a_sighup(self):
        folder = temp_dir(self)
        log = os.path.join(folder, "logs", "events.jsonl")
        os.makedirs(os.path.dirname(log))
        bad = write_file(folder, "suppress.txt", b"alice\n\xff\n")
        result = subprocess.run([sys.executable, PIXEL_RUN, "--port", "0", "--cpu", "none",
                                 "--log", log, "--suppress", bad], capture_output=True,
                                text=True, timeout=30)
        self.assertEqual((result.returncode, result.stderr),
                         (1, "pixel: cannot load --suppress: %s line 2: not UTF-8\n" % bad))
        self.assertEqual(os.listdir(os.path.dirname(log)), [])
        status, stderr = wsgi_start_error(self, log=log, suppress=bad)
        self.assertEqual((status, stderr), (3, "pixel: make_wsgi_app: cannot load --suppress: "
                                               "%s line 2: not UTF-8\n" % bad))
        good = write_file(folder, "people.txt", "carol\n")
        process, port = start_pixel(self, "--log", log, "--suppress", good,
                                    stderr=subprocess.PIPE)
        self.addCleanup(process.stderr.close)
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=alice&event=1")
        os.replace(write_file(folder, "next.txt", "alice\n"), good)
        process.send_signal(signal.SIGHUP)
        said = [process.stderr.readline(), process.stderr.readline()]
        self.assertIn("pixel: reloaded --suppress (SIGHUP): 1 identifier(s)\n", said)
        fetch_gif(port, "/v1/pixel/track?writeKey=K&userId=alice&event=2")
        self.assertEqual(fetch_json(port, "/health")["suppressed"], 1)
        with open(log, "rb") as handle:
            self.assertEqual([json.loads(line)["event"] for line in handle], ["1"])

    def test_usr1_usr2_and_quit_during_the_start_are_ignored(self):
        # The attack pass: they were ignored only once serving, so while a long list loaded
        # they killed pixel (-10, -12, -3), which the README says they never do.
        folder = temp_dir(self)
        people = write_file(folder, "people.txt", "".join("person-%d\n" % number
                                                          for number in range(100000)))
        process = subprocess.Popen([sys.executable, PIXEL_RUN, "--port", "0", "--cpu", "none",
                                    "--log", os.path.join(folder, "events.jsonl"),
                                    "--suppress", people], stdout=subprocess.PIPE, text=True,
                                   # not ignored already: under nohup, SIGHUP is from the start
                                   preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
        self.addCleanup(process.stdout.close)
        self.addCleanup(lambda: process.poll() is None and process.kill())

        def hup_ignored():   # SigIgn in /proc, bit signum - 1: main() runs, the list loads
            with open("/proc/%d/status" % process.pid) as handle:
                mask = int(re.search(r"SigIgn:\s*([0-9a-f]+)", handle.read()).group(1), 16)
            return mask >> (signal.SIGHUP - 1) & 1
        self.assertTrue(wait_until(hup_ignored))
        for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
            process.send_signal(signum)
        line = process.stdout.readline()
        self.assertIn("listening", line, "ended with %s" % process.poll())
        port = int(re.search(r":(\d+)/", line).group(1))
        self.assertTrue(_answers(port, "/health"))
        process.terminate()
        self.assertEqual(process.wait(10), 0)

    def test_a_storm_of_sighups_costs_a_reload_or_two(self):
        # The attack pass: each SIGHUP ran a reload of its own, each on a thread reading
        # the whole list: 50 in a second cut answers by 95% and left 320 MiB more RSS.
        folder = temp_dir(self)
        people = write_file(folder, "people.txt", "".join("person-%d\n" % number
                                                          for number in range(30000)))
        process, port = start_pixel(self, "--log", os.path.join(folder, "events.jsonl"),
                                    "--suppress", people, stderr=subprocess.PIPE)
        self.addCleanup(process.stderr.close)
        said = []
        reader = threading.Thread(target=lambda: said.extend(process.stderr), daemon=True)
        reader.start()
        self.addCleanup(reader.join, 10)   # first: the reader ends at the stderr's end
        self.addCleanup(lambda: process.kill() or process.wait())
        for _ in range(30):
            process.send_signal(signal.SIGHUP)
        reloaded = lambda: len([line for line in said if "reloaded --suppress" in line])
        self.assertTrue(wait_until(lambda: reloaded() >= 1))
        self.assertFalse(wait_until(lambda: reloaded() > 2, timeout=0.3), said)
        self.assertTrue(_answers(port, "/health"))


if __name__ == "__main__":
    unittest.main()

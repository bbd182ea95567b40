"""The work every Python peer does per request, written the way an application developer would.

A Segment pixel request is `GET /v1/pixel/<type>?<query>`. The query carries the payload either
as `data=<base64 of a JSON object>` (Segment's documented form) or as plain parameters whose
dotted names nest (`properties.url=...` becomes {"properties": {"url": ...}}). A payload with a
writeKey and a userId or anonymousId becomes one JSON line: the payload plus type, messageId,
receivedAt and context.ip / context.userAgent. Anything else is dropped. Either way the client
gets the same 43-byte transparent GIF that pixel.py and nginx's empty_gif send.

No peer shares code with pixel.py: they are what pixel.py is compared against.
"""

import base64
import datetime
import json
import uuid
from urllib.parse import parse_qsl

GIF = bytes.fromhex(
    "474946383961" "01000100" "800000"   # GIF89a, a 1x1 screen with a 2-colour table
    "000000" "ffffff"                    # the table: black, white
    "21f904" "0100000000"                # graphic control extension: colour 0 is transparent
    "2c" "0000000001000100" "00"         # one 1x1 image at 0,0
    "02" "02" "4401" "00"                # its LZW data
    "3b")                                # trailer


def _payload_from_query(query):
    """The payload dict a pixel query carries; raises ValueError when it is not one."""
    payload = {}
    encoded = None
    for name, value in parse_qsl(query):
        if name == "data":
            encoded = value
            continue
        *parents, leaf = name.split(".")
        branch = payload
        for parent in parents:
            branch = branch.setdefault(parent, {})
            if not isinstance(branch, dict):
                raise ValueError("%s is both a value and an object" % parent)
        branch[leaf] = value
    if encoded is not None:
        # Segment's docs use URL-safe base64 without padding; put the padding back.
        decoded = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        if not isinstance(decoded, dict):
            raise ValueError("data is not a JSON object")
        payload.update(decoded)
    return payload


def event_line(event_type, query, ip, user_agent):
    """The log line (str, newline-terminated) for one pixel request, or None to drop it."""
    try:
        payload = _payload_from_query(query)
    except ValueError:   # bad base64, bad JSON, bad UTF-8 or clashing dotted names
        return None
    if not payload.get("writeKey") or not (payload.get("userId") or payload.get("anonymousId")):
        return None
    payload["type"] = event_type
    payload.setdefault("messageId", str(uuid.uuid4()))
    payload["receivedAt"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    context = payload.get("context")
    if not isinstance(context, dict):
        context = payload["context"] = {}
    context.setdefault("ip", ip)
    context.setdefault("userAgent", user_agent)
    return json.dumps(payload) + "\n"

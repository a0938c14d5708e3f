"""Schemathesis hooks for phxkv's API: how to send its NDJSON bodies.

The streaming keep-alive (POST /v1/leases/keepalive/stream) takes one JSON
keep-alive request per line; a generated request body is sent as one line.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    return (json.dumps(value) + "\n").encode("utf-8")

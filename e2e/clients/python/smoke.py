"""A short smoke test of a Python client generated from openapi/phxkv.json.

Run by run.sh against a fresh dev cluster: put, get, a compare-and-swap
that conflicts, a listing, a transaction, a watch, and a lease (grant, a
key attached, keep-alive, a lock, revoke), each through the
generated package (`phxkv_client`), so that the document stays good enough
for clients in other languages. Exits non-zero with one line on failure.
"""

import base64
import json
import sys
import threading

from phxkv_client import Client
from phxkv_client.api.kv import get_key, list_, put_key, txn
from phxkv_client.api.leases import grant, keep_alive, keep_alive_stream, lease_status, lock, revoke
from phxkv_client.models import (
    ErrorResponse,
    GrantRequest,
    GrantResponse,
    KeepAliveRequest,
    KeepAliveResponse,
    LeaseStatus,
    LockRequest,
    LockResponse,
    RevokeResponse,
    ListResponse,
    PutResponse,
    TxnRequest,
    TxnResult,
    WatchEvent,
)
from phxkv_client.types import File


def check(condition, message):
    if not condition:
        print(f"python client smoke: FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def value(text):
    data = text.encode()
    return File(payload=data, mime_type="application/octet-stream")


def main(base):
    client = Client(base_url=base, raise_on_unexpected_status=True, timeout=10.0)

    # Put, then get the bytes back with the key's metadata in the headers.
    put = put_key.sync_detailed("smoke/a", client=client, body=value("one"))
    check(put.status_code == 200, f"PUT smoke/a answered {put.status_code}")
    check(isinstance(put.parsed, PutResponse), f"PUT smoke/a parsed as {put.parsed!r}")
    first = put.parsed
    check(first.version == 1, f"a new key has version 1, not {first.version}")
    got = get_key.sync_detailed("smoke/a", client=client)
    check(got.status_code == 200, f"GET smoke/a answered {got.status_code}")
    check(got.content == b"one", f"GET smoke/a read {got.content!r}")

    # Compare-and-swap: the right version writes, a stale one conflicts.
    swapped = put_key.sync_detailed(
        "smoke/a", client=client, body=value("two"), if_version=1
    )
    check(swapped.status_code == 200, f"CAS with the right version answered {swapped.status_code}")
    stale = put_key.sync_detailed(
        "smoke/a", client=client, body=value("three"), if_version=1
    )
    check(stale.status_code == 409, f"CAS with a stale version answered {stale.status_code}, not 409")
    check(
        isinstance(stale.parsed, ErrorResponse),
        f"the conflict is not an ErrorResponse: {stale.content!r}",
    )
    got = get_key.sync_detailed("smoke/a", client=client)
    check(got.content == b"two", f"after the conflict smoke/a reads {got.content!r}, not 'two'")

    # A listing of the prefix.
    put_key.sync_detailed("smoke/b", client=client, body=value("bee"))
    listed = list_.sync_detailed(client=client, prefix="smoke/")
    check(isinstance(listed.parsed, ListResponse), f"GET /v1/kv parsed as {listed.parsed!r}")
    keys = [base64.b64decode(kv.key).decode() for kv in listed.parsed.kvs]
    check(keys == ["smoke/a", "smoke/b"], f"the listing of smoke/ is {keys}")

    # A watch from the current revision sees the next put. The event stream
    # is read through the generated client's own HTTP client.
    start = listed.parsed.revision + 1
    seen = []

    def watch():
        http = client.get_httpx_client()
        with http.stream(
            "GET", "/v1/watch", params={"prefix": "smoke/", "start_revision": start},
            timeout=10.0,
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line[len("data:"):]))
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    # A transaction: a put, through the generated models.
    request = TxnRequest.from_dict(
        {"compare": [], "success": [{"put": {"key": "smoke/c", "value": "sea"}}], "failure": []}
    )
    done = txn.sync_detailed(client=client, body=request)
    check(done.status_code == 200, f"POST /v1/txn answered {done.status_code}: {done.content!r}")
    check(isinstance(done.parsed, TxnResult), f"the transaction parsed as {done.parsed!r}")
    check(done.parsed.succeeded, "a transaction without comparisons succeeds")

    watcher.join(timeout=10)
    check(seen, "the watch saw no event")
    event = WatchEvent.from_dict(seen[0])
    check(event.key_utf8 == "smoke/c", f"the watch's first event is {seen[0]}")

    # A lease: grant it, attach a key, renew it, lock with it, revoke it;
    # its keys go with it.
    granted = grant.sync_detailed(client=client, body=GrantRequest(ttl_secs=30))
    check(isinstance(granted.parsed, GrantResponse), f"the grant parsed as {granted.content!r}")
    lease = granted.parsed.id
    attached = put_key.sync_detailed("smoke/leased", client=client, body=value("x"), lease=lease)
    check(attached.status_code == 200, f"PUT with a lease answered {attached.status_code}")
    renewed = keep_alive.sync_detailed(lease, client=client)
    check(isinstance(renewed.parsed, LeaseStatus), f"the keep-alive parsed as {renewed.content!r}")
    check(renewed.parsed.remaining_ms > 25_000, f"a renewed 30 s lease has {renewed.parsed.remaining_ms} ms left")
    # The streaming keep-alive, one line each way.
    streamed = keep_alive_stream.sync_detailed(client=client, body=KeepAliveRequest(ids=[lease, 7]))
    check(isinstance(streamed.parsed, KeepAliveResponse), f"the streamed keep-alive parsed as {streamed.content!r}")
    check(streamed.parsed.missing == [7], f"the streamed keep-alive's missing leases are {streamed.parsed.missing}")
    status = lease_status.sync_detailed(lease, client=client, keys=True)
    keys = [base64.b64decode(k).decode() for k in status.parsed.keys]
    check(keys == ["smoke/leased"], f"the lease's keys are {keys}")
    locked = lock.sync_detailed("smoke-lock", client=client, body=LockRequest(lease=lease, wait_ms=0))
    check(isinstance(locked.parsed, LockResponse), f"the lock parsed as {locked.content!r}")
    check(locked.parsed.fencing_token > 0, "a lock has a fencing token")
    gone = revoke.sync_detailed(lease, client=client)
    check(isinstance(gone.parsed, RevokeResponse), f"the revoke parsed as {gone.content!r}")
    check(gone.parsed.deleted == 2, f"the revoke deleted {gone.parsed.deleted} keys, not 2 (the key and the lock)")
    after = get_key.sync_detailed("smoke/leased", client=client)
    check(after.status_code == 404, f"a revoked lease's key answers {after.status_code}")
    missing = keep_alive.sync_detailed(lease, client=client)
    check(missing.status_code == 404, f"a keep-alive of a revoked lease answered {missing.status_code}")
    check(isinstance(missing.parsed, ErrorResponse), f"the 404 is not an ErrorResponse: {missing.content!r}")

    print("python client smoke: ok (put, get, CAS conflict, list, txn, watch, lease, lock)")


if __name__ == "__main__":
    main(sys.argv[1])

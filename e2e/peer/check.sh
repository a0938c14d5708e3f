#!/usr/bin/env bash
# Checks the peer API's OpenAPI document (openapi/phxkv-peer.json):
#
# 1. the document itself is valid OpenAPI 3.1 (openapi-spec-validator);
# 2. every body the code builds in server/tests/peer_protocol.rs (one of
#    each message, command, reply and error) validates against the schema
#    of its name in the document (JSON Schema 2020-12, as OpenAPI 3.1 uses).
#
# So the document describes what nodes really send, and another
# implementation can rely on it. Installs the validator into a cached venv.
set -euo pipefail

VALIDATOR_VERSION=0.7.2
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/phxkv
venv=$cache/venv-openapi-spec-validator-$VALIDATOR_VERSION
doc=$repo/openapi/phxkv-peer.json

log() { printf 'peer-doc: %s\n' "$*" >&2; }

if [[ ! -x $venv/bin/openapi-spec-validator ]]; then
    log "installing openapi-spec-validator $VALIDATOR_VERSION into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "openapi-spec-validator==$VALIDATOR_VERSION"
fi

log "validating $doc"
"$venv/bin/openapi-spec-validator" "$doc"

samples=$(mktemp -d)
trap 'rm -rf "$samples"' EXIT
log "writing sample bodies"
# --workspace, not -p phxkv-server: the same features as the workspace's
# test build, whose artifacts are then reused instead of built again.
(cd "$repo" && PHXKV_PEER_SAMPLES=$samples cargo test --release --quiet --locked \
    --workspace --test peer_protocol >/dev/null)

"$venv/bin/python" - "$doc" "$samples" <<'PY'
import json, pathlib, sys
from jsonschema import Draft202012Validator

doc = json.loads(pathlib.Path(sys.argv[1]).read_text())
samples = sorted(pathlib.Path(sys.argv[2]).glob("*.json"))
if not samples:
    sys.exit("peer-doc: no samples were written")
failed = 0
for path in samples:
    name = path.name.split(".")[0]
    if name not in doc["components"]["schemas"]:
        print(f"peer-doc: {path.name}: no schema named {name}")
        failed += 1
        continue
    body = json.loads(path.read_text())
    # A top-level list is a list of the named schema (a batch of messages).
    item = {"$ref": f"#/components/schemas/{name}"}
    schema = {"type": "array", "items": item} if isinstance(body, list) else item
    schema["components"] = doc["components"]
    errors = list(Draft202012Validator(schema).iter_errors(body))
    for e in errors[:3]:
        where = "/".join(str(p) for p in e.absolute_path)
        print(f"peer-doc: {path.name} at /{where}: {e.message}")
    failed += bool(errors)
print(f"peer-doc: {len(samples) - failed} of {len(samples)} sample bodies match the document")
sys.exit(1 if failed else 0)
PY

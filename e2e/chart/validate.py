#!/usr/bin/env python3
"""Validates Kubernetes manifests offline, refusing any kind it cannot check.

The kubernetes-validate command only warns about a kind missing from its
bundled schemas and still exits 0, so a custom resource, or a built-in kind
under a removed apiVersion, would pass unseen. This script uses the same
library for the built-in kinds and adds:

- custom resources of the CRDs given with --crd, validated against their
  openAPIV3Schema as the API server would with strict field validation
  (unknown fields rejected unless x-kubernetes-preserve-unknown-fields);
  CEL rules (x-kubernetes-validations) are not evaluated;
- ServiceMonitors and PrometheusRules (monitoring.coreos.com/v1), handed to
  monitoring.mjs, which checks them with the prometheus-operator models
  published on npm;
- --expect KIND=N, to assert how many documents of a kind were rendered;
- --markdown-block NAME, to check the YAML block that follows an HTML comment
  `<!-- NAME ... -->` in a Markdown file (the README's sample manifest).

Usage:
  validate.py [-k 1.33 ...] [--crd FILE ...] [--node-modules DIR]
              [--expect KIND=N ...] [--markdown-block NAME [--print]] FILE|-
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
from collections import Counter
from typing import Any

import jsonschema
import kubernetes_validate.utils as kv
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
PROMETHEUS_OPERATOR = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


class Invalid(Exception):
    """A document that does not validate, with a message naming the field."""


def load_documents(path: str, markdown_block: str | None) -> list[dict]:
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    if markdown_block:
        text = extract_block(text, markdown_block, path)
    return [d for d in yaml.safe_load_all(text) if d]


def extract_block(markdown: str, name: str, path: str) -> str:
    """The fenced code block right after `<!-- name -->` (the comment may
    go on after the name, e.g. to say what checks the block)."""
    m = re.search(
        r"<!--\s*" + re.escape(name) + r"\b[^>]*-->\s*\n```[a-z]*\n(.*?)\n```",
        markdown,
        re.DOTALL,
    )
    if not m:
        raise SystemExit(f"{path}: no fenced block after <!-- {name} -->")
    return m.group(1)


def structural_to_jsonschema(s: Any) -> Any:
    """Turns a CRD's OpenAPI v3 (structural) schema into a JSON Schema
    (draft 4 keywords) with the API server's rules: nullable, int-or-string,
    preserve-unknown-fields, and unknown fields rejected."""
    if not isinstance(s, dict):
        return s
    out: dict[str, Any] = {}
    for key, value in s.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "format", "example", "externalDocs"):
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: structural_to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = structural_to_jsonschema(value) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [structural_to_jsonschema(v) for v in value]
        else:
            out[key] = copy.deepcopy(value)
    if s.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    preserve = s.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in s and "additionalProperties" not in s and not preserve:
        out["additionalProperties"] = False
    if s.get("nullable"):
        # The other keywords only constrain values of their own type, so
        # widening type and enum is enough to let null through.
        if "type" in out:
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = types + ["null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
    return out


class CustomResources:
    """JSON Schemas of the served versions of the given CRDs."""

    def __init__(self, crd_files: list[str]):
        self.schemas: dict[tuple[str, str], dict] = {}
        for path in crd_files:
            for crd in yaml.safe_load_all(open(path, encoding="utf-8")):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group = crd["spec"]["group"]
                kind = crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    if not version.get("served"):
                        continue
                    schema = version.get("schema", {}).get("openAPIV3Schema")
                    if schema is None:
                        raise SystemExit(f"{path}: {kind} {version['name']} has no openAPIV3Schema")
                    converted = structural_to_jsonschema(schema)
                    # The API server validates apiVersion, kind and metadata
                    # itself; the CRD's schema may leave them unspecified.
                    props = converted.setdefault("properties", {})
                    for field in ("apiVersion", "kind", "metadata"):
                        props.setdefault(field, {})
                    self.schemas[(f"{group}/{version['name']}", kind)] = converted

    def validate(self, doc: dict) -> bool:
        schema = self.schemas.get((doc.get("apiVersion"), doc.get("kind")))
        if schema is None:
            return False
        name = (doc.get("metadata") or {}).get("name", "")
        if not DNS_SUBDOMAIN.match(name or ""):
            raise Invalid(f"metadata.name: {name!r} is not a valid object name")
        errors = sorted(jsonschema.Draft4Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            raise Invalid("; ".join(f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors))
        return True


def validate_monitoring(docs: list[dict], node_modules: str | None) -> list[str]:
    """Error messages, one per invalid ServiceMonitor or PrometheusRule
    (empty when all pass)."""
    if not docs:
        return []
    if not node_modules:
        return ["monitoring.coreos.com/v1: no validator (pass --node-modules)"]
    proc = subprocess.run(
        ["node", os.path.join(HERE, "monitoring.mjs"), node_modules],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode not in (0, 1):
        return [f"monitoring.coreos.com/v1: validator failed: {proc.stderr.strip()}"]
    return [line for line in proc.stdout.splitlines() if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="manifests (multi-document YAML), or - for stdin")
    ap.add_argument("-k", "--kubernetes-version", action="append", dest="versions",
                    help="validate built-in kinds against this version (repeatable)")
    ap.add_argument("--crd", action="append", default=[], help="a CRD whose custom resources to validate")
    ap.add_argument("--node-modules", help="node_modules holding @kubernetes-models/prometheus-operator")
    ap.add_argument("--expect", action="append", default=[], metavar="KIND=N",
                    help="fail unless exactly N documents of KIND are present")
    ap.add_argument("--markdown-block", metavar="NAME", help="validate the YAML block after <!-- NAME -->")
    ap.add_argument("--print", action="store_true",
                    help="with --markdown-block: print the block instead of validating it")
    args = ap.parse_args()
    versions = args.versions or ["1.33"]
    if args.print:
        if not args.markdown_block:
            ap.error("--print needs --markdown-block")
        text = open(args.file, encoding="utf-8").read()
        print(extract_block(text, args.markdown_block, args.file))
        return 0

    docs = load_documents(args.file, args.markdown_block)
    custom = CustomResources(args.crd)
    failures: list[str] = []
    monitors: list[dict] = []

    for doc in docs:
        ident = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        if (doc.get("apiVersion"), doc.get("kind")) in PROMETHEUS_OPERATOR:
            monitors.append(doc)
            continue
        try:
            if custom.validate(doc):
                print(f"ok    {ident} (CRD schema)")
                continue
            for version in versions:
                kv.validate(doc, version, strict=True)
            print(f"ok    {ident} (Kubernetes {', '.join(versions)})")
        except Invalid as e:
            failures.append(f"{ident}: {e}")
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            failures.append(f"{ident} (Kubernetes {e.version}): {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            failures.append(f"{ident}: {e.message}, and no --crd defines it")

    monitor_errors = validate_monitoring(monitors, args.node_modules)
    failures.extend(monitor_errors)
    if monitors and not monitor_errors:
        for doc in monitors:
            print(f"ok    {doc['kind']}/{doc['metadata']['name']} (prometheus-operator models)")

    counts = Counter(doc.get("kind") for doc in docs)
    for expectation in args.expect:
        kind, _, n = expectation.partition("=")
        if counts[kind] != int(n):
            failures.append(f"expected {n} {kind} document(s), found {counts[kind]}")

    for failure in failures:
        print(f"FAIL  {failure}")
    if not docs:
        print("FAIL  no documents")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Checks that the chart grants the operator exactly the API access its
code uses: the rendered Roles and ClusterRoles against the table that
`phxkv-operator rbac` prints (operator/src/access.rs, which the operator's
tests hold to the calls it makes).

Each rule is expanded into (scope, apiGroup, resource, verb, resourceName)
tuples; the two sets must be equal. Scopes: "watched" is the operator's
ClusterRole (or, with --watch-namespace, its Role there), "own" the Role
<operator>-leader-election in the release namespace, "cluster" the
ClusterRole <operator>-<namespace>-crd. Every role must be bound to the
operator's ServiceAccount. Wildcards are refused outright.

Usage:
  rbac.py RENDERED.yaml TABLE.json --operator NAME --namespace NS
          [--watch-namespace NS] [--service-account NAME]
Exit status 1, with every difference listed, when they differ.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml


def expand(scope: str, rule: dict, where: str, errors: list[str]) -> set[tuple]:
    out = set()
    names = rule.get("resourceNames") or [""]
    for field in ("apiGroups", "resources", "verbs", "resourceNames"):
        if "*" in (rule.get(field) or []):
            errors.append(f"{where}: a wildcard in {field}")
    if rule.get("nonResourceURLs"):
        errors.append(f"{where}: nonResourceURLs")
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            for verb in rule.get("verbs") or []:
                for name in names:
                    out.add((scope, group, resource, verb, name))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("table")
    ap.add_argument("--operator", required=True, help="the operator's name (Role names)")
    ap.add_argument("--namespace", required=True, help="the release namespace")
    ap.add_argument("--watch-namespace", default="")
    ap.add_argument("--service-account", default="", help="default: the operator's name")
    args = ap.parse_args()
    sa = args.service_account or args.operator

    docs = [d for d in yaml.safe_load_all(open(args.rendered, encoding="utf-8")) if d]
    errors: list[str] = []

    # Which role is which scope: (kind, name, namespace) -> scope.
    roles = {}
    if args.watch_namespace:
        roles[("Role", args.operator, args.watch_namespace)] = "watched"
    else:
        roles[("ClusterRole", args.operator, None)] = "watched"
    roles[("Role", f"{args.operator}-leader-election", args.namespace)] = "own"
    roles[("ClusterRole", f"{args.operator}-{args.namespace}-crd", None)] = "cluster"

    granted: set[tuple] = set()
    found = set()
    for d in docs:
        kind = d.get("kind")
        if kind not in ("Role", "ClusterRole"):
            continue
        meta = d.get("metadata") or {}
        key = (kind, meta.get("name"), meta.get("namespace") if kind == "Role" else None)
        if key not in roles:
            errors.append(f"{kind} {meta.get('namespace') or ''}/{meta.get('name')}: not a role the operator should have")
            continue
        found.add(key)
        for i, rule in enumerate(d.get("rules") or []):
            granted |= expand(roles[key], rule, f"{kind} {meta.get('name')} rule {i}", errors)

    # Every role found is bound to the operator's ServiceAccount.
    for kind, name, ns in found:
        bound = False
        for d in docs:
            if d.get("kind") != f"{kind}Binding":
                continue
            meta = d.get("metadata") or {}
            ref = d.get("roleRef") or {}
            if ref.get("kind") != kind or ref.get("name") != name:
                continue
            if kind == "Role" and meta.get("namespace") != ns:
                continue
            if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa
                   and s.get("namespace") == args.namespace for s in d.get("subjects") or []):
                bound = True
        if not bound:
            errors.append(f"{kind} {name}: not bound to ServiceAccount {args.namespace}/{sa}")

    wanted: set[tuple] = set()
    for rule in json.load(open(args.table, encoding="utf-8")):
        wanted |= expand(rule["scope"], rule, f"table rule {rule['resources']}", errors)

    def show(t: tuple) -> str:
        scope, group, resource, verb, name = t
        return f"{scope}: {verb} {resource}{'.' + group if group else ''}{' ' + name if name else ''}"

    for t in sorted(granted - wanted):
        errors.append(f"granted but not used by the operator: {show(t)}")
    for t in sorted(wanted - granted):
        errors.append(f"used by the operator but not granted: {show(t)}")

    for e in errors:
        print(f"FAIL {e}")
    if errors:
        return 1
    print(f"ok: {len(granted)} permissions in {len(found)} roles, as the operator's table lists")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Checks of the chart's alerting rules and Grafana dashboard.

Subcommands:

  rules RENDER --out DIR [--tests FILE...]
      Takes the PrometheusRule out of a chart render, checks that every
      alert has a severity, a summary, a description and a runbook, and
      writes its rule groups to DIR/rules.yaml (for `promtool check rules`
      and the annotation tests) and, without annotations, to
      DIR/rules-expr.yaml (for the expression tests). With --tests, fails
      unless every alert has, in those promtool test files, a case where it
      fires and one where it stays silent, and unless every alert they name
      exists.

  scrape --bin PHXKV --out FILE
      Starts `phxkv dev --secure` with one replica on free loopback ports,
      writes, reads, and saves what its /metrics serves: the names the real
      exporter uses, for `queries` (TLS on, so its series are there too).

  queries RENDER --namespace NS --exposition FILE --operator-source FILE
          --node-modules DIR
      Parses every query of the rules and of the dashboard (its panels and
      template variables) with the PromQL grammar (promql.mjs), checks the
      dashboard's structure, and fails on a syntax error, on a metric the
      exporters do not serve, and on a selector not scoped to a namespace
      (the release's for rules, a dashboard variable for panels).

The known metrics: the phxkv server's from a real scrape (`scrape`); the
operator's from operator/src/metrics.rs (it needs a Kubernetes API server to
run, and registers its labelled series on first use anyway); and the few
that other exporters provide, listed in EXTERNAL_METRICS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))

# Series from outside phxkv that the rules and dashboard use: Prometheus's
# own scrape health, and kubelet's volume statistics (served by every
# kubelet, scraped by the usual Kubernetes monitoring stacks).
EXTERNAL_METRICS = {
    "up",
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
}
SEVERITIES = {"critical", "warning", "info"}
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook")
# Grafana's interval variables, given a value so the query parses.
GRAFANA_INTERVALS = re.compile(r"\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}")
DATASOURCE = "${datasource}"


class Failed(Exception):
    """A check that did not pass; the message says which and why."""


def load_render(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def the_one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        raise Failed(f"expected one {kind} in the render, found {len(found)}")
    return found[0]


# --- rules -------------------------------------------------------------------


def alerts_of(spec: dict) -> list[dict]:
    return [r for g in spec.get("groups", []) for r in g.get("rules", []) if "alert" in r]


def check_alert_fields(alerts: list[dict]) -> list[str]:
    problems = []
    for rule in alerts:
        name = rule["alert"]
        severity = (rule.get("labels") or {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"{name}: severity label {severity!r} is not one of {sorted(SEVERITIES)}")
        annotations = rule.get("annotations") or {}
        for key in REQUIRED_ANNOTATIONS:
            if not str(annotations.get(key, "")).strip():
                problems.append(f"{name}: no {key} annotation")
    return problems


def test_coverage(alert_names: set[str], test_files: list[str]) -> list[str]:
    """Every alert needs a case where it fires and one where it does not;
    every alert the tests name must exist (promtool passes a test expecting
    silence from an alert that is not there)."""
    fires: set[str] = set()
    silent: set[str] = set()
    named: set[str] = set()
    for path in test_files:
        with open(path, encoding="utf-8") as f:
            suite = yaml.safe_load(f)
        for test in suite.get("tests", []):
            for case in test.get("alert_rule_test", []):
                name = case["alertname"]
                named.add(name)
                (fires if case.get("exp_alerts") else silent).add(name)
    problems = [f"{n}: no test where it fires" for n in sorted(alert_names - fires)]
    problems += [f"{n}: no test where it stays silent" for n in sorted(alert_names - silent)]
    problems += [f"{n}: tested but not among the rules" for n in sorted(named - alert_names)]
    return problems


def cmd_rules(args: argparse.Namespace) -> None:
    rule = the_one(load_render(args.render), "PrometheusRule")
    spec = rule["spec"]
    alerts = alerts_of(spec)
    if not alerts:
        raise Failed("the PrometheusRule has no alerts")
    problems = check_alert_fields(alerts)
    if args.tests:
        problems += test_coverage({a["alert"] for a in alerts}, args.tests)
    if problems:
        raise Failed("; ".join(problems))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "rules.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    bare = json.loads(json.dumps(spec))
    for r in alerts_of(bare):
        r.pop("annotations", None)
    with open(os.path.join(args.out, "rules-expr.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(bare, f, sort_keys=False)
    print(f"{len(alerts)} alerts: {', '.join(a['alert'] for a in alerts)}")


# --- scrape ------------------------------------------------------------------


def free_port_pair() -> int:
    """A port P with P and P+100 free (phxkv dev's client and peer ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 100 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 100))
            except OSError:
                continue
        return port
    raise Failed("no free pair of loopback ports")


def http(method: str, url: str, body: bytes | None = None, cafile: str | None = None,
         token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def cmd_scrape(args: argparse.Namespace) -> None:
    port = free_port_pair()
    # --secure, so that the TLS series (certificate expiry) are served too.
    base = f"https://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory() as data:
        cafile = os.path.join(data, "tls", "ca.crt")
        proc = subprocess.Popen(
            [args.bin, "dev", "--data-dir", data, "--secure", "--nodes", "1", "--port", str(port),
             "--log-format", "json"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise Failed(f"phxkv dev exited with {proc.returncode}: {log.read().decode(errors='replace')[-2000:]}")
                try:
                    if os.path.exists(cafile) and http("GET", f"{base}/readyz", cafile=cafile)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise Failed("phxkv dev was not ready within 60 s")
                time.sleep(0.2)
            # A write and reads, so the per-route request series exist
            # (--secure turns auth on: the admin token is the cluster token).
            with open(os.path.join(data, "cluster-token")) as f:
                token = f.read().strip()
            for method, body in (("PUT", b"v"), ("GET", None), ("DELETE", None)):
                status, text = http(method, f"{base}/v1/kv/observability-check", body,
                                    cafile=cafile, token=token)
                if status != 200:
                    raise Failed(f"{method} /v1/kv/observability-check: {status} {text[:200]!r}")
            status, exposition = http("GET", f"{base}/metrics", cafile=cafile)
            if status != 200:
                raise Failed(f"GET /metrics: {status}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    with open(args.out, "wb") as f:
        f.write(exposition)
    print(f"scraped {len(exposition_names(exposition.decode()))} series names from phxkv dev")


# --- queries -----------------------------------------------------------------


def exposition_names(text: str) -> set[str]:
    """The sample names in a Prometheus or OpenMetrics text exposition."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def operator_metric_names(path: str) -> set[str]:
    """The series names operator/src/metrics.rs registers: the registry's
    prefix, each registered name, and the suffixes its type gets."""
    with open(path, encoding="utf-8") as f:
        src = f.read()
    prefix = re.search(r'Registry::with_prefix\("(\w+)"\)', src)
    struct = re.search(r"struct Inner \{(.*?)\n\}", src, re.S)
    registered = re.findall(r'\.register\(\s*"(\w+)",\s*"(?:[^"\\]|\\.)*",\s*inner\.(\w+)\.clone\(\)', src)
    if not (prefix and struct and registered):
        raise Failed(f"{path}: cannot find the registry prefix, struct Inner or the registrations")
    fields = dict(re.findall(r"(\w+):\s*([^\n]+?),\s*\n", struct.group(1)))
    names = set()
    for name, field in registered:
        kind = fields.get(field, "")
        full = f"{prefix.group(1)}_{name}"
        if "Histogram" in kind:
            names |= {f"{full}_bucket", f"{full}_sum", f"{full}_count"}
        elif "Counter" in kind:
            names.add(f"{full}_total")
        elif "Gauge" in kind:
            names.add(full)
        else:
            raise Failed(f"{path}: the type of field {field!r} ({kind!r}) is not a counter, gauge or histogram")
    return names


def dashboard_queries(dashboard: dict) -> tuple[list[dict], list[str]]:
    """The dashboard's queries as {where, expr, scope}, and its structural
    problems."""
    problems: list[str] = []
    queries: list[dict] = []
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no datasource variable of type datasource for prometheus")
    for name in ("namespace", "cluster"):
        if name not in variables:
            problems.append(f"no {name} variable")
    for name, var in variables.items():
        if var.get("type") != "query":
            continue
        if (var.get("datasource") or {}).get("uid") != DATASOURCE:
            problems.append(f"variable {name}: data source is not {DATASOURCE}")
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", query or "")
        if not m:
            problems.append(f"variable {name}: {query!r} is not label_values(<selector>, <label>)")
            continue
        queries.append({"where": f"variable {name}", "expr": m.group(1), "scope": "variable"})

    ids: set[int] = set()

    def visit(panels: list[dict]) -> None:
        for panel in panels:
            pid, title = panel.get("id"), panel.get("title")
            where = f"panel {pid} ({title})"
            if pid in ids:
                problems.append(f"{where}: duplicate id")
            ids.add(pid)
            gp = panel.get("gridPos") or {}
            if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")) or gp["x"] + gp["w"] > 24:
                problems.append(f"{where}: bad gridPos {gp}")
            if panel.get("type") == "row":
                visit(panel.get("panels", []))
                continue
            if not title:
                problems.append(f"{where}: no title")
            if (panel.get("datasource") or {}).get("uid") != DATASOURCE:
                problems.append(f"{where}: data source is not {DATASOURCE}")
            targets = panel.get("targets") or []
            if not targets:
                problems.append(f"{where}: no queries")
            refs = [t.get("refId") for t in targets]
            if len(set(refs)) != len(refs):
                problems.append(f"{where}: duplicate refId")
            for t in targets:
                if (t.get("datasource") or {}).get("uid") != DATASOURCE:
                    problems.append(f"{where} {t.get('refId')}: data source is not {DATASOURCE}")
                if not t.get("expr"):
                    problems.append(f"{where} {t.get('refId')}: no expr")
                    continue
                queries.append({"where": f"{where} {t.get('refId')}", "expr": t["expr"], "scope": "panel"})

    visit(dashboard.get("panels", []))
    if not queries:
        problems.append("no queries at all")
    return queries, problems


def parse_queries(queries: list[dict], node_modules: str) -> list[dict]:
    items = [{"where": q["where"], "expr": GRAFANA_INTERVALS.sub("5m", q["expr"])} for q in queries]
    proc = subprocess.run(
        ["node", os.path.join(HERE, "promql.mjs"), node_modules],
        input=json.dumps(items), capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise Failed(f"promql.mjs failed: {proc.stderr.strip()}")
    parsed = json.loads(proc.stdout)
    for q, p in zip(queries, parsed):
        p["scope"] = q["scope"]
    return parsed


def scoped(selector: dict, scope: str, namespace: str) -> bool:
    """Whether a selector is limited to one namespace: the release's in a
    rule, one chosen by a dashboard variable in a panel."""
    for m in selector["matchers"]:
        if m["label"] != "namespace":
            continue
        if scope == "rule":
            return m["op"] == "=" and m["value"] == namespace
        return m["op"] in ("=", "=~") and m["value"] in ("$namespace", "$operator")
    return scope == "variable"


def cmd_queries(args: argparse.Namespace) -> None:
    docs = load_render(args.render)
    rules = the_one(docs, "PrometheusRule")
    configmap = the_one(docs, "ConfigMap")
    queries = [
        {"where": f"alert {r['alert']}", "expr": str(r["expr"]), "scope": "rule"}
        for r in alerts_of(rules["spec"])
    ]
    files = configmap.get("data") or {}
    if len(files) != 1:
        raise Failed(f"the dashboard ConfigMap holds {len(files)} files, expected one")
    (fname, text), = files.items()
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError as e:
        raise Failed(f"{fname} is not JSON: {e}") from e
    panel_queries, problems = dashboard_queries(dashboard)
    queries += panel_queries

    with open(args.exposition, encoding="utf-8") as f:
        server = exposition_names(f.read())
    if not any(n.startswith("phxkv_") for n in server):
        raise Failed(f"{args.exposition} holds no phxkv_ series")
    known = server | operator_metric_names(args.operator_source) | EXTERNAL_METRICS

    used: set[str] = set()
    for q in parse_queries(queries, args.node_modules):
        for e in q["errors"]:
            problems.append(f"{q['where']}: {e} in {q['expr']!r}")
        for sel in q["selectors"]:
            metric = sel["metric"]
            if metric is None:
                continue
            used.add(metric)
            if metric not in known:
                problems.append(f"{q['where']}: {metric} is not served by phxkv, its operator or {sorted(EXTERNAL_METRICS)}")
            if not scoped(sel, q["scope"], args.namespace):
                problems.append(f"{q['where']}: {metric} is not limited to a namespace")
    if problems:
        raise Failed("\n  ".join([""] + problems))
    print(f"{len(queries)} queries ({len(panel_queries)} in the dashboard) parse and use {len(used)} known metrics")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rules")
    r.add_argument("render")
    r.add_argument("--out", required=True)
    r.add_argument("--tests", nargs="*", default=[])
    s = sub.add_parser("scrape")
    s.add_argument("--bin", required=True)
    s.add_argument("--out", required=True)
    q = sub.add_parser("queries")
    q.add_argument("render")
    q.add_argument("--namespace", required=True)
    q.add_argument("--exposition", required=True)
    q.add_argument("--operator-source", required=True)
    q.add_argument("--node-modules", required=True)
    args = ap.parse_args()
    try:
        {"rules": cmd_rules, "scrape": cmd_scrape, "queries": cmd_queries}[args.cmd](args)
    except Failed as e:
        print(f"FAIL  {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

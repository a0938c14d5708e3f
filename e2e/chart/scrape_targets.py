"""Which Services the release's cluster ServiceMonitor scrapes.

Usage: scrape_targets.py CHART_RENDER OPERATOR_RENDER

Reads the ServiceMonitor named after the release's PaxosKV from the chart's
render and the Services from the operator's render of that PaxosKV, and
applies the selection Prometheus Operator does (namespace, matchLabels,
endpoint port name). Exits non-zero unless exactly one Service matches:
more than one means every pod is scraped more than once.
"""

import sys

import yaml


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def main():
    chart, operator = load(sys.argv[1]), load(sys.argv[2])
    pkv = next(d for d in chart if d["kind"] == "PaxosKV")
    name = pkv["metadata"]["name"]
    monitor = next(
        d for d in chart if d["kind"] == "ServiceMonitor" and d["metadata"]["name"] == name
    )
    spec = monitor["spec"]
    if spec["selector"].get("matchExpressions"):
        sys.exit("matchExpressions are not evaluated here")
    want = spec["selector"].get("matchLabels", {})
    namespaces = spec.get("namespaceSelector", {}).get("matchNames")
    ports = {e["port"] for e in spec["endpoints"]}
    matched = []
    for svc in (d for d in operator if d["kind"] == "Service"):
        meta = svc["metadata"]
        if namespaces is not None and meta.get("namespace") not in namespaces:
            continue
        labels = meta.get("labels", {})
        if any(labels.get(k) != v for k, v in want.items()):
            continue
        if not ports & {p.get("name") for p in svc["spec"].get("ports", [])}:
            continue
        matched.append(meta["name"])
    print(f"ServiceMonitor {name} selects Services: {', '.join(matched) or 'none'}")
    if len(matched) != 1:
        sys.exit(1)


if __name__ == "__main__":
    main()

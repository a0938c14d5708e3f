// Validates Prometheus Operator objects (ServiceMonitors, PrometheusRules;
// a JSON array on stdin) with the prometheus-operator models published on
// npm as @kubernetes-models/prometheus-operator, generated from the
// upstream CRDs. They check types, required fields, enums and patterns,
// but not unknown fields. Prints one line per invalid document; exits 1 if
// there was any.
//
// Usage: node monitoring.mjs <node_modules dir> < docs.json
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const nodeModules = process.argv[2];
if (!nodeModules) {
  console.error("usage: monitoring.mjs <node_modules dir>");
  process.exit(2);
}
const KINDS = ["ServiceMonitor", "PrometheusRule"];
const models = {};
for (const kind of KINDS) {
  const path = join(nodeModules, `@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/${kind}.js`);
  models[kind] = (await import(pathToFileURL(path).href))[kind];
}

let failed = false;
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  const name = `${doc?.kind}/${doc?.metadata?.name}`;
  try {
    const Model = models[doc?.kind];
    if (!Model) throw new Error(`no model for kind ${doc?.kind}`);
    new Model(doc).validate();
  } catch (e) {
    failed = true;
    console.log(`${name}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);

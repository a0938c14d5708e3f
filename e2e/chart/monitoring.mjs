// Validates ServiceMonitor documents (a JSON array on stdin) with the
// prometheus-operator models published on npm as
// @kubernetes-models/prometheus-operator, generated from the upstream CRD.
// They check types, required fields, enums and patterns, but not unknown
// fields. Prints one line per invalid document; exits 1 if there was any.
//
// Usage: node servicemonitor.mjs <node_modules dir> < docs.json
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const nodeModules = process.argv[2];
if (!nodeModules) {
  console.error("usage: servicemonitor.mjs <node_modules dir>");
  process.exit(2);
}
const model = join(
  nodeModules,
  "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
);
const { ServiceMonitor } = await import(pathToFileURL(model).href);

let failed = false;
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  try {
    new ServiceMonitor(doc).validate();
  } catch (e) {
    failed = true;
    console.log(`ServiceMonitor/${doc?.metadata?.name}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);

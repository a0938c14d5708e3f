// Parses PromQL expressions with the Prometheus project's own grammar
// (@prometheus-io/lezer-promql, the parser behind Prometheus's query
// editor) and reports, for each, its syntax errors and the vector
// selectors it uses: the metric name and the label matchers.
//
// Input on stdin: a JSON array of {"where": ..., "expr": ...}. Output on
// stdout: the same array, each item with "errors" (a list of messages)
// and "selectors" ([{"metric", "matchers": [{"label", "op", "value"}]}]);
// "metric" is null for a selector with no name (a name matched by a regex
// on __name__ cannot be checked, and is reported as an error).
//
// Usage: node promql.mjs <node_modules dir> < exprs.json
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const nodeModules = process.argv[2];
if (!nodeModules) {
  console.error("usage: promql.mjs <node_modules dir>");
  process.exit(2);
}
const { parser } = await import(
  pathToFileURL(join(nodeModules, "@prometheus-io/lezer-promql/dist/index.es.js")).href
);

// A string literal's value: PromQL strings are Go-style, and the ones
// in label matchers here need no more than JSON's unescaping.
function unquote(text) {
  if (text.startsWith("`")) return text.slice(1, -1);
  if (text.startsWith("'")) return JSON.parse(`"${text.slice(1, -1).replace(/"/g, '\\"')}"`);
  return JSON.parse(text);
}

function analyse(expr) {
  const errors = [];
  const selectors = [];
  const tree = parser.parse(expr);
  tree.iterate({
    enter(node) {
      if (node.type.isError) {
        errors.push(`syntax error at offset ${node.from}: ${JSON.stringify(expr.slice(Math.max(0, node.from - 20), node.from + 20))}`);
        return;
      }
      if (node.name !== "VectorSelector") return;
      let metric = null;
      const matchers = [];
      const sel = node.node;
      for (let child = sel.firstChild; child; child = child.nextSibling) {
        if (child.name === "Identifier") metric = expr.slice(child.from, child.to);
        if (child.name !== "LabelMatchers") continue;
        for (let m = child.firstChild; m; m = m.nextSibling) {
          const label = m.getChild("LabelName") ?? m.getChild("QuotedLabelName");
          const op = m.getChild("MatchOp");
          const value = m.getChild("StringLiteral");
          if (!label || !op || !value) continue;
          let name = expr.slice(label.from, label.to);
          if (label.name === "QuotedLabelName") name = unquote(name);
          matchers.push({ label: name, op: expr.slice(op.from, op.to), value: unquote(expr.slice(value.from, value.to)) });
        }
      }
      const byName = matchers.find((m) => m.label === "__name__");
      if (metric === null && byName) {
        if (byName.op === "=") metric = byName.value;
        else errors.push(`selector matches __name__ with ${byName.op}: its metrics cannot be checked`);
      }
      if (metric === null && !byName) errors.push("a selector without a metric name");
      selectors.push({ metric, matchers });
    },
  });
  return { errors, selectors };
}

const items = JSON.parse(readFileSync(0, "utf8"));
console.log(JSON.stringify(items.map((item) => ({ ...item, ...analyse(item.expr) }))));

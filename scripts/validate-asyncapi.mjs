// Validates an AsyncAPI document with @asyncapi/parser (the official parser, also behind the
// AsyncAPI CLI and Studio). Prints every diagnostic; exits 1 when any is an error.
//
//   node scripts/validate-asyncapi.mjs [docs/asyncapi.yaml]
import { readFileSync } from "node:fs";
import { DiagnosticSeverity, Parser } from "@asyncapi/parser";

const path = process.argv[2] ?? "docs/asyncapi.yaml";
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(path, "utf8"), { source: path });
const severities = ["error", "warning", "information", "hint"];
for (const diagnostic of diagnostics) {
  const where = diagnostic.path.join("/");
  console.log(`${severities[diagnostic.severity]} ${diagnostic.code} at /${where}: ${diagnostic.message}`);
}
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).length;
if (document === undefined || errors > 0) {
  console.log(`${path}: INVALID (${errors} errors)`);
  process.exit(1);
}
console.log(
  `${path}: valid AsyncAPI ${document.version()}, ${document.channels().length} channels, ` +
    `${document.operations().length} operations, ${document.messages().length} messages`,
);

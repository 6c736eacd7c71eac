// Loads every .proto file under proto/ with @grpc/proto-loader (protobufjs), the parser most
// Node gRPC clients use, so that the contracts stay readable by more than protoc and buf.
// Prints one line per file and exits non-zero on the first file it cannot load.
//
//   node clients/ts/load-protos.mjs [proto-root]
import { readdirSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as protoLoader from "@grpc/proto-loader";

const here = fileURLToPath(new URL(".", import.meta.url));
const root = resolve(process.argv[2] ?? join(here, "..", "..", "proto"));

function protoFiles(dir) {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((entry) => {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) return protoFiles(path);
      return entry.name.endsWith(".proto") ? [path] : [];
    })
    .sort();
}

const files = protoFiles(root).map((path) => relative(root, path));
if (files.length === 0) {
  console.error(`no .proto files under ${root}`);
  process.exit(1);
}
let failed = 0;
for (const file of files) {
  try {
    // includeDirs: proto/ holds ours and the vendored buf/validate and google/rpc files; the
    // well-known google/protobuf types come with protobufjs.
    const definition = protoLoader.loadSync(file, { includeDirs: [root] });
    console.log(`ok ${file} (${Object.keys(definition).length} definitions)`);
  } catch (error) {
    failed += 1;
    console.log(`FAILED ${file}: ${error.message}`);
  }
}
console.log(`${files.length - failed}/${files.length} files loaded`);
process.exit(failed === 0 ? 0 : 1);

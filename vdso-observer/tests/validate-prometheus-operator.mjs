// Validates the Prometheus Operator objects among Kubernetes objects (a JSON
// array on stdin) against the operator's schemas, as the npm package
// @kubernetes-models/prometheus-operator carries them (MODELS: its directory).
// Prints `valid KIND/NAME` or `invalid KIND/NAME: why` a line; exits 1 on any
// invalid or unknown object.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [models] = process.argv.slice(2);
const v1 = await import(pathToFileURL(`${models}/monitoring.coreos.com/v1/index.js`));
let failed = false;
for (const object of JSON.parse(readFileSync(0, "utf8"))) {
  if (!object.apiVersion.startsWith("monitoring.coreos.com/")) continue;
  const name = `${object.kind}/${object.metadata.name}`;
  const Model = v1[object.kind];
  if (!Model) {
    console.log(`invalid ${name}: no schema for this kind`);
    failed = true;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`valid ${name}`);
  } catch (error) {
    console.log(`invalid ${name}: ${error.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);

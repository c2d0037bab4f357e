// Applies, with sbio.js's applyPatch, the JSON Patches a real sbio server sent
// (recorded by tests/test_live_delta.py's property test):
//   node tests/node/apply_recorded_patches.js patches.json
// patches.json: [{old, patch, new}, ...]. Exit 0 when every patch turns `old`
// into exactly `new` and leaves `old` unchanged. Not a node --test file: the
// Python test runs it with its recording.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const sbio = require(path.join(__dirname, "..", "..", "static", "sbio.js"));

const records = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
let failures = 0;
records.forEach((rec, i) => {
  const before = sbio._canonical(rec.old);
  let got;
  try {
    got = sbio.applyPatch(rec.old, rec.patch);
  } catch (err) {
    failures++;
    console.log(`#${i}: ${err.message}: ${JSON.stringify(rec)}`);
    return;
  }
  if (sbio._canonical(got) !== sbio._canonical(rec.new)) {
    failures++;
    console.log(`#${i}: got ${JSON.stringify(got)}, want ${JSON.stringify(rec.new)}`);
  }
  if (sbio._canonical(rec.old) !== before) {
    failures++;
    console.log(`#${i}: applyPatch changed its input`);
  }
});
console.log(failures ? `${failures} of ${records.length} patches failed` : `${records.length} patches applied`);
process.exit(failures ? 1 : 0);

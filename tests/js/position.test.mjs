// The subscribe-position rule as data (tests/vectors/positions.json) against triows.js's
// checkPosition: the same vectors tests/core/test_position_vectors.py runs against
// triows/_core/tracking.py's check_position.
// Run: node --test tests/js/  (no bundler, no packages)
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { checkPosition } from "../../triows/static/triows.js";

const { vectors } = JSON.parse(readFileSync(new URL("../vectors/positions.json", import.meta.url), "utf8"));

for (const vector of vectors) {
  test(vector.rule, () => {
    const call = () => checkPosition(vector.since, vector.epoch, vector.rewind);
    if (vector.error === null) call();
    else assert.throws(call, { name: "TypeError", message: vector.error });
  });
}

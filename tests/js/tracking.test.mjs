// The tracker rules as data (tests/vectors/tracking.json) against triows.js's Tracker: the
// same vectors tests/core/test_tracking_vectors.py runs against triows/_core/tracking.py.
// Run: node --test tests/js/  (no bundler, no packages)
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Tracker } from "../../triows/static/triows.js";

const vectors = JSON.parse(readFileSync(new URL("../vectors/tracking.json", import.meta.url), "utf8")).vectors;

/** Same events in the same order, compared on the keys the vector gives. */
function checkEvents(got, expected, where) {
  assert.equal(got.length, expected.length, `${where}: got ${JSON.stringify(got)}`);
  const shown = got.map((event, n) => Object.fromEntries(Object.keys(expected[n]).map((key) => [key, event[key] ?? null])));
  assert.deepEqual(shown, expected, `${where}: got ${JSON.stringify(got)}`);
}

function run(vector) {
  const tracker = new Tracker();
  vector.steps.forEach((step, number) => {
    const where = `step ${number} ${JSON.stringify(step)}`;
    if ("track" in step) tracker.track(step.track);
    else if ("untrack" in step) tracker.untrack(step.untrack);
    else if ("welcome" in step) tracker.addClientId(step.welcome);
    else if ("sent" in step) tracker.expectAck(step.sent.id, step.sent.channel);
    else if ("frame" in step) checkEvents(tracker.receive(step.frame), step.events, where);
    else if ("resume" in step) {
      for (const [channel, expected] of Object.entries(step.resume)) {
        assert.deepEqual(tracker.resumeFrom(channel), expected, where);
      }
    } else throw new Error(`unknown step ${where}`);
  });
}

for (const vector of vectors) {
  const only = vector.only ?? ["js"];
  test(vector.name, { skip: only.includes("js") ? false : vector.why }, () => run(vector));
}

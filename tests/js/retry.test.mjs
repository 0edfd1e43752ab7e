// The pacing and retry rules as data (tests/vectors/retry.json) against triows.js's Pacer,
// Attempts and refusalStatus: the same vectors tests/core/test_retry_vectors.py runs against
// triows/_core/retry.py and close_codes.py.
// Run: node --test tests/js/  (no bundler, no packages)
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Attempts, Pacer, isDisconnect, refusalStatus } from "../../triows/static/triows.js";

const vectors = JSON.parse(readFileSync(new URL("../vectors/retry.json", import.meta.url), "utf8"));

function runPacer(config, steps) {
  const pacer = new Pacer(config.window, config.base, config.cap, () => config.random);
  steps.forEach((step, number) => {
    const where = `step ${number} ${JSON.stringify(step)}`;
    if ("add" in step) for (const key of step.add) pacer.add(key);
    else if ("take" in step) assert.deepEqual(pacer.take(), step.take, where);
    else if ("answered" in step) assert.equal(pacer.answered(step.answered), step.result ?? true, where);
    else if ("refused" in step) assert.equal(pacer.refused(step.refused), step.wait, where);
    else if ("resume" in step) pacer.resume();
    else if ("discard" in step) assert.equal(pacer.discard(step.discard), step.result, where);
    else if ("restart" in step) pacer.restart();
    else if ("size" in step) assert.equal(pacer.length, step.size, where);
    else throw new Error(`unknown step ${where}`);
  });
}

function runAttempts(config, steps) {
  const fresh = () =>
    new Attempts({
      base: config.base,
      cap: config.cap,
      maxAttempts: config.max_attempts,
      tokenFunction: config.token === "function",
      connectTimeout: config.connect_timeout,
      now: 0,
      random: () => config.random,
    });
  let attempts = fresh();
  steps.forEach((step, number) => {
    const where = `step ${number} ${JSON.stringify(step)}`;
    if (step.new) {
      attempts = fresh();
      return;
    }
    const { refused_for_now: refusedForNow, ...rest } = step.ended;
    const verdict = attempts.ended({ ...rest, refusedForNow }, step.at);
    const shown = Object.fromEntries(Object.keys(step.verdict).map((key) => [key, verdict[key] ?? null]));
    assert.deepEqual(shown, step.verdict, `${where}: got ${JSON.stringify(verdict)}`);
  });
}

for (const vector of vectors.vectors) {
  test(vector.name, () => ("pacer" in vector ? runPacer(vector.pacer, vector.steps) : runAttempts(vector.attempts, vector.steps)));
}

test("refusals as close codes carry their HTTP status, in the documented ranges", () => {
  for (const { status, code, reconnect } of vectors.refusals) {
    assert.equal(refusalStatus(code), status, `code ${code}`);
    assert.equal(code >= 4000 && code < 4500, reconnect, `code ${code}`);
    assert.equal(code >= 4500 && code < 5000, !reconnect, `code ${code}`);
  }
});

test("server closes reported as disconnects, before the welcome as after it", () => {
  for (const { code, welcomed, reported, reconnect } of vectors.disconnects) {
    assert.equal(isDisconnect(code), reported, `code ${code} (welcomed: ${welcomed})`);
    assert.equal(code === null || !(code >= 4500 && code < 5000), reconnect, `code ${code}`);
  }
});

// triows.js's client against a scripted server (tests/js/fake.mjs), in virtual time.
// Run: node --test tests/js/  (tests/test_js.py runs it under pytest)
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "../../triows/static/triows.js";
import { FakeSocket, advance, settle, useFakes } from "./fake.mjs";

const URL = "ws://server.test/";

function client(options = {}) {
  const c = connect(URL, { WebSocket: FakeSocket, ...options });
  const events = [];
  for (const type of ["message", "gap", "recovered", "error", "state"]) c.on(type, (detail) => events.push({ type, ...detail }));
  return { c, events, of: (type) => events.filter((e) => e.type === type) };
}

async function opened(options = {}) {
  const made = client(options);
  await settle();
  FakeSocket.made.at(-1).open();
  await settle();
  return { ...made, ws: FakeSocket.made.at(-1) };
}

const subscribed = (channel, seq, extra = {}) => ({ type: "subscribed", channel, seq, epoch: "e1", ...extra });
const message = (channel, seq) => ({ type: "message", channel, seq, data: seq, from: "other", id: `e1:${seq}`, timestamp: 0 });

// -- 1. reconnect storms ----------------------------------------------------------------------

test("after a connection that worked, the reconnect waits a random time, not 0", async (t) => {
  useFakes(t, { random: 0.5 });
  const { ws } = await opened({ backoffBase: 1 });
  ws.gone(1001, "Server shutting down");
  await advance(0.49);
  assert.equal(FakeSocket.made.length, 1, "no reconnect before the jittered delay");
  await advance(0.02);
  assert.equal(FakeSocket.made.length, 2);
});

test("the clients of a server that went away come back spread out, not at once", async (t) => {
  useFakes(t, { random: null }); // real randomness: this is about the spread
  const clients = [];
  for (let n = 0; n < 20; n++) clients.push((await opened({ backoffBase: 1 })).ws);
  const before = FakeSocket.made.length;
  for (const ws of clients) ws.gone(1001, "Server shutting down");
  const at = [];
  for (let step = 0; step < 150 && FakeSocket.made.length < before + 20; step++) {
    const count = FakeSocket.made.length;
    await advance(0.01);
    for (let n = count; n < FakeSocket.made.length; n++) at.push(step);
  }
  assert.equal(at.length, 20);
  // Full jitter over [0, 1 s]: 20 draws in 10 ms slots. All in a few slots would take a
  // one-in-billions draw; the old client put all 20 in the first one.
  assert.ok(new Set(at).size >= 8, `reconnects at ${at}`);
  assert.ok(Math.max(...at) - Math.min(...at) >= 30, `reconnects at ${at}`);
});

test("a resubscribe refused for now (503) keeps counting failures: backoff grows, maxAttempts ends it", async (t) => {
  useFakes(t, { random: 1 });
  const { c, of } = client({ backoffBase: 1, backoffCap: 100, maxAttempts: 3 });
  c.subscribe("news");
  await settle();
  const delays = [];
  let last = 0;
  for (let round = 0; round < 3; round++) {
    const ws = FakeSocket.made.at(-1);
    ws.open();
    await settle();
    const frame = ws.of("subscribe")[0];
    ws.receive({ type: "error", id: frame.id, code: 503, message: "Redis is unreachable" });
    await settle();
    assert.equal(ws.closedWith?.code, 4000);
    const count = FakeSocket.made.length;
    let waited = 0;
    while (FakeSocket.made.length === count && c.state !== "closed" && waited < 20) {
      await advance(0.1, 0.1);
      waited += 0.1;
    }
    delays.push(Math.round(waited * 10) / 10);
    last = FakeSocket.made.length;
  }
  assert.deepEqual(delays.slice(0, 2), [1, 2], "full jitter's cap doubles: 1 s, then 2 s");
  assert.equal(c.state, "closed", "maxAttempts counts refusals too");
  assert.equal(last, 3);
  assert.match(of("error").at(-1).message, /gave up after 3 attempts/);
});

test("a rate-limited resubscribe (429) is retried on the same connection, not by reconnecting", async (t) => {
  useFakes(t, { random: 0.5 });
  const { c } = client({ backoffBase: 0.5 });
  const channels = ["a", "b", "c", "d"];
  for (const channel of channels) c.subscribe(channel);
  await settle();
  const ws = FakeSocket.made[0];
  ws.open();
  await settle();
  const answered = new Set();
  // The server's bucket: two subscribes now, then one a second.
  let tokens = 2;
  let served = 0;
  for (let second = 0; second < 30 && answered.size < 4; second++) {
    for (const frame of ws.of("subscribe").slice(served)) {
      served += 1;
      if (tokens >= 1) {
        tokens -= 1;
        answered.add(frame.channel);
        ws.receive(subscribed(frame.channel, 0, { id: frame.id }));
      } else {
        ws.receive({ type: "error", id: frame.id, code: 429, message: "subscribe rate limit" });
      }
      await settle();
    }
    await advance(0.25, 0.05);
    if (second % 4 === 3) tokens = Math.min(2, tokens + 1);
  }
  assert.deepEqual([...answered].sort(), channels);
  assert.equal(FakeSocket.made.length, 1, "one connection throughout");
  assert.equal(c.state, "open");
  assert.ok(ws.of("subscribe").length < 20, `${ws.of("subscribe").length} subscribes sent`);
});

test("resubscribes go out a window at a time", async (t) => {
  useFakes(t);
  const { c } = client({ resubscribeWindow: 16 });
  for (let n = 0; n < 40; n++) c.subscribe(`ch${n}`);
  await settle();
  const ws = FakeSocket.made[0];
  ws.open();
  await settle();
  assert.equal(ws.of("subscribe").length, 16);
  for (const frame of ws.of("subscribe").slice(0, 4)) ws.receive(subscribed(frame.channel, 0, { id: frame.id }));
  assert.equal(ws.of("subscribe").length, 20, "each reply lets one more out");
  for (let n = 4; n < 40; n++) {
    const frame = ws.of("subscribe")[n];
    ws.receive(subscribed(frame.channel, 0, { id: frame.id }));
  }
  assert.equal(ws.of("subscribe").length, 40);
  assert.deepEqual(new Set(ws.of("subscribe").map((f) => f.channel)).size, 40);
});

// -- 2. subscribe() applies its reply at once -------------------------------------------------

test("messages in the same read as the subscribe reply meet the cursor the reply set", async (t) => {
  useFakes(t);
  const { c, ws, of } = await opened();
  const reply = c.subscribe("busy");
  const frame = ws.of("subscribe")[0];
  // Node's ws hands a whole read over synchronously: reply and messages, no await between.
  ws.receive(subscribed("busy", 50, { id: frame.id }));
  ws.receive(message("busy", 51));
  ws.receive(message("busy", 52));
  assert.equal((await reply).seq, 50);
  assert.deepEqual(of("gap"), []);
  assert.deepEqual(of("message").map((m) => m.seq), [51, 52]);
});

// -- 3. late acks ---------------------------------------------------------------------------

test("an ack that comes after the publish timed out still counts: its seq is no gap", async (t) => {
  useFakes(t);
  const { c, ws, of } = await opened();
  c.subscribe("c");
  ws.receive(subscribed("c", 0, { id: ws.of("subscribe")[0].id }));
  const outcome = c.publish("c", "mine", { timeout: 1 }).then(
    () => "acked",
    (error) => error.message,
  );
  await advance(1.1);
  assert.match(await outcome, /no ack for publish/);
  ws.receive({ type: "ack", id: ws.of("publish")[0].id, seq: 1 });
  ws.receive(message("c", 2));
  assert.deepEqual(of("gap"), []);
  assert.deepEqual(of("message").map((m) => m.seq), [2]);
});

// -- 4. token source ------------------------------------------------------------------------

test("a token that never comes is a failed attempt after connectTimeout, then tried again", async (t) => {
  useFakes(t, { random: 0 });
  let calls = 0;
  const { c, of } = client({
    token: () => (++calls === 1 ? "first" : new Promise(() => {})),
    connectTimeout: 2,
  });
  await settle();
  FakeSocket.made[0].open();
  await settle();
  FakeSocket.made[0].gone(1006);
  await advance(1.9);
  assert.equal(c.state, "reconnecting");
  await advance(0.2);
  assert.match(of("error")[0].message, /token: no token within 2s/);
  await advance(0.1);
  assert.equal(calls, 3, "asked again after the backoff");
  assert.equal(FakeSocket.made.length, 1, "never connected without a token");
});

test("a token source that fails is a failed attempt, never an anonymous connection", async (t) => {
  useFakes(t, { random: 0 });
  let calls = 0;
  const { of } = client({
    token: async () => {
      calls += 1;
      if (calls < 3) throw new Error("token service down");
      return "tok";
    },
  });
  await advance(1);
  assert.equal(of("error").filter((e) => /token service down/.test(e.message)).length, 2);
  assert.equal(FakeSocket.made.length, 1);
  assert.equal(FakeSocket.made[0].url, `${URL}?refusal=close&token=tok`);
});

// -- 5. burst flush -------------------------------------------------------------------------

test("the offline queue goes out a window of unacked publishes at a time", async (t) => {
  useFakes(t);
  const { c } = client({ publishWindow: 16 });
  const acks = [];
  for (let n = 0; n < 100; n++) c.publish("c", n).then((seq) => acks.push(seq));
  await settle();
  const ws = FakeSocket.made[0];
  ws.open();
  await settle();
  assert.equal(ws.of("publish").length, 16);
  for (let n = 0; n < 100; n++) {
    ws.receive({ type: "ack", id: ws.of("publish")[n].id, seq: n + 1 });
    assert.ok(ws.of("publish").length <= n + 17);
  }
  await settle();
  assert.equal(acks.length, 100);
  assert.deepEqual(ws.of("publish").map((f) => f.data), [...Array(100).keys()]);
});

// -- 6. smaller -----------------------------------------------------------------------------

test("publish() on a closed client rejects like the other methods, it does not throw", async (t) => {
  useFakes(t);
  const { c } = await opened();
  await c.close();
  let returned;
  assert.doesNotThrow(() => (returned = c.publish("c", 1)));
  await assert.rejects(returned, /client is closed/);
  await assert.rejects(c.subscribe("c"), /client is closed/);
});

test("a refused subscribe() is not followed, nor resubscribed after a reconnect", async (t) => {
  useFakes(t);
  const { c, ws } = await opened();
  const refused = c.subscribe("secret");
  ws.receive({ type: "error", id: ws.of("subscribe")[0].id, code: 403, message: "not allowed" });
  await assert.rejects(refused, /not allowed/);
  ws.gone(1006);
  await advance(1);
  FakeSocket.made.at(-1).open();
  await settle();
  assert.deepEqual(FakeSocket.made.at(-1).of("subscribe"), []);
});

test("the client ids kept are bounded however often it reconnects", async (t) => {
  useFakes(t, { random: 0 });
  const { c } = await opened();
  for (let n = 0; n < 40; n++) {
    FakeSocket.made.at(-1).gone(1006);
    await advance(0.05);
    FakeSocket.made.at(-1).open();
    await settle();
  }
  assert.equal(c.connects, 41);
  assert.ok(c._tracker.myIds.length <= 16);
});

test("an error reply leaves no timer behind", async (t) => {
  useFakes(t);
  const { c, ws } = await opened();
  const before = c._timers.size;
  const refused = c.publish("c", 1);
  ws.receive({ type: "error", id: ws.of("publish")[0].id, code: 403, message: "no" });
  await assert.rejects(refused, /no/);
  const presence = c.presence("c");
  ws.receive({ type: "error", id: ws.sent.at(-1).id, code: 400, message: "no presence" });
  await assert.rejects(presence, /no presence/);
  assert.equal(c._timers.size, before);
});

test("the echo of an own publish carries its message id", async (t) => {
  useFakes(t);
  const { c, ws, of } = await opened({ echo: true });
  c.subscribe("c");
  ws.receive(subscribed("c", 4, { id: ws.of("subscribe")[0].id }));
  const seq = c.publish("c", "hi");
  await settle();
  ws.receive({ type: "ack", id: ws.of("publish")[0].id, seq: 5 });
  assert.equal(await seq, 5);
  assert.deepEqual(
    of("message").map(({ seq, id, own }) => ({ seq, id, own })),
    [{ seq: 5, id: "e1:5", own: true }],
  );
});

// -- 7. refused handshakes --------------------------------------------------------------------

test("a 401 (as Node's ws reports it) stops the client and says so; queued publishes fail", async (t) => {
  useFakes(t);
  const { c, of } = client({ token: "bad" });
  const queued = c.publish("c", "typed while connecting").then(() => null, (error) => error);
  await settle();
  FakeSocket.made[0].refuse("Unexpected server response: 401");
  await settle();
  assert.equal(c.state, "closed");
  assert.equal(of("error")[0].code, 401);
  assert.match((await queued).message, /HTTP 401/);
  await advance(60);
  assert.equal(FakeSocket.made.length, 1, "no retry");
});

test("a publish that times out before it is sent again leaves no expected ack behind", async (t) => {
  useFakes(t);
  const { c, ws } = await opened();
  const outcome = c.publish("c", 1, { timeout: 5 }).then(() => "acked", (error) => error.message);
  assert.equal(ws.of("publish").length, 1);
  ws.gone(1006); // sent, no ack: queued again for the next connection
  await advance(5.1);
  assert.match(await outcome, /no ack/);
  assert.equal(c._tracker.expected.size, 0);
  assert.equal(c._publishes.length, 0);
});

// -- refusals as close codes (the browser learns the real refusal) ----------------------------

test("it asks for refusals as close codes, and one that no retry fixes (4501) stops it", async (t) => {
  useFakes(t);
  const { c, of } = client({ token: "bad" });
  const queued = c.publish("c", "typed while connecting").then(() => null, (error) => error);
  await settle();
  assert.match(FakeSocket.made[0].url, /[?&]refusal=close(&|$)/);
  FakeSocket.made[0].refuseWithClose(4501, "HTTP 401: invalid token");
  await settle();
  assert.equal(c.state, "closed");
  assert.equal(of("error")[0].code, 401);
  assert.match(of("error")[0].message, /HTTP 401 \(HTTP 401: invalid token\)/);
  assert.match((await queued).message, /HTTP 401/);
  await advance(60);
  assert.equal(FakeSocket.made.length, 1, "no retry");
});

test("a disconnect before the welcome (a revoke during the handshake) is told, and 4601 stops it", async (t) => {
  useFakes(t);
  const { c, of } = client();
  const told = [];
  c.on("disconnected", (detail) => told.push(detail));
  c.on("error", () => {});
  await settle();
  FakeSocket.made[0].refuseWithClose(4601, "token revoked"); // accepted, closed before welcome
  await settle();
  assert.deepEqual(told, [{ code: 4601, reason: "token revoked", reconnect: false }]);
  assert.deepEqual([c.closeCode, c.closeReason], [4601, "token revoked"]);
  assert.equal(c.state, "closed");
  assert.equal(of("error")[0].code, 4601);
  await advance(60);
  assert.equal(FakeSocket.made.length, 1, "no retry");
  // A refusal as a close code is a refusal, not a disconnect: no "disconnected".
  const other = client({ token: "bad" });
  const refusedTold = [];
  other.c.on("disconnected", (detail) => refusedTold.push(detail));
  await settle();
  FakeSocket.made.at(-1).refuseWithClose(4501, "HTTP 401: invalid token");
  await settle();
  assert.deepEqual(refusedTold, []);
  assert.equal(other.c.closeCode, null);
});

test("a reconnect-allowed disconnect before the welcome (4000) is told, and it connects again", async (t) => {
  useFakes(t, { random: 1 });
  const { c } = client({ backoffBase: 0.1, backoffCap: 0.4 });
  const told = [];
  c.on("disconnected", (detail) => told.push(detail));
  c.on("error", () => {});
  await settle();
  FakeSocket.made[0].refuseWithClose(4000, "come back");
  await settle();
  assert.deepEqual(told, [{ code: 4000, reason: "come back", reconnect: true }]);
  await advance(1);
  assert.equal(FakeSocket.made.length, 2);
  FakeSocket.made[1].open();
  await settle();
  assert.equal(c.state, "open");
});

test("transient refusals (4429, 4453) and failures with no status are retried with backoff, never a stop", async (t) => {
  useFakes(t, { random: 1 });
  // The server answers /ready with 200 all along: that no longer makes a failure a refusal.
  t.mock.method(globalThis, "fetch", async () => ({ status: 200 }));
  const { c } = client({ backoffBase: 0.1, backoffCap: 0.4, connectTimeout: 1000 });
  const refusals = [
    (ws) => ws.refuseWithClose(4429, "HTTP 429: too many connections from this address"),
    (ws) => ws.refuseWithClose(4453, "HTTP 503: server at capacity"),
    (ws) => ws.refuse(), // a browser's view of any failure: no status at all
    (ws) => ws.refuse("connect ECONNREFUSED 127.0.0.1:1"),
  ];
  for (let round = 0; round < 12; round++) {
    await settle();
    refusals[round % refusals.length](FakeSocket.made.at(-1));
    await advance(0.41);
  }
  assert.notEqual(c.state, "closed");
  assert.equal(FakeSocket.made.length, 13);
  FakeSocket.made.at(-1).open();
  await settle();
  assert.equal(c.state, "open");
});

test("the first connection is bounded as a whole by connectTimeout, as in triows.client", async (t) => {
  useFakes(t, { random: 1 });
  const { c, of } = client({ backoffBase: 1, connectTimeout: 5 });
  const opened = c.waitOpen().then(() => "open", (error) => error.message);
  for (let n = 0; n < 10 && c.state !== "closed"; n++) {
    await settle();
    FakeSocket.made.at(-1).refuse();
    await advance(2);
  }
  assert.equal(c.state, "closed");
  assert.match(await opened, /no connection to ws:\/\/server.test\/ within 5s/);
  assert.ok(FakeSocket.made.length <= 4, `${FakeSocket.made.length} attempts`);
});

// -- a token function that hands one stale token ----------------------------------------------

test("with a token function one 401 is a failed attempt: a fresh token is asked for", async (t) => {
  useFakes(t, { random: 0 });
  const tokens = ["stale", "fresh"];
  const { c } = client({ token: () => tokens.shift() ?? "fresh" });
  await settle();
  FakeSocket.made[0].refuse("Unexpected server response: 401");
  await advance(0.1);
  assert.notEqual(c.state, "closed");
  assert.match(FakeSocket.made[1].url, /token=fresh/);
  FakeSocket.made[1].open();
  await settle();
  assert.equal(c.state, "open");
});

test("with a token function two 401s in a row stop the client", async (t) => {
  useFakes(t, { random: 0 });
  const { c, of } = client({ token: () => "always-bad" });
  await settle();
  FakeSocket.made[0].refuse("Unexpected server response: 401");
  await advance(0.1);
  FakeSocket.made[1].refuseWithClose(4501, "HTTP 401: bad signature");
  await advance(0.1);
  assert.equal(c.state, "closed");
  assert.equal(of("error").at(-1).code, 401);
  assert.equal(FakeSocket.made.length, 2);
});

// -- a server that closes right after the welcome -----------------------------------------------

test("closes with an error right after the welcome (1013, 1011, 1008) grow the backoff; maxAttempts ends them", async (t) => {
  useFakes(t, { random: 1 });
  const { c, of } = client({ backoffBase: 1, backoffCap: 100, maxAttempts: 4 });
  const delays = [];
  for (const code of [1013, 1011, 1008, 1013]) {
    await settle();
    const ws = FakeSocket.made.at(-1);
    ws.open();
    await settle();
    ws.gone(code, "bye");
    await settle();
    const count = FakeSocket.made.length;
    let waited = 0;
    while (FakeSocket.made.length === count && c.state !== "closed" && waited < 50) {
      await advance(0.5, 0.5);
      waited += 0.5;
    }
    delays.push(waited);
  }
  assert.deepEqual(delays.slice(0, 3), [1, 2, 4]);
  assert.equal(c.state, "closed");
  assert.match(of("error").at(-1).message, /gave up after 4 attempts/);
});

// -- the subscription limit, told apart from the rate limit --------------------------------------

test("a resubscribe over --max-subscriptions (429, limit: subscriptions) is forgotten and reported, not retried", async (t) => {
  useFakes(t, { random: 0.5 });
  const { c, of } = client();
  for (const channel of ["a", "b"]) c.subscribe(channel);
  await settle();
  const ws = FakeSocket.made[0];
  ws.open();
  await settle();
  const [a, b] = ws.of("subscribe");
  ws.receive(subscribed("a", 0, { id: a.id }));
  ws.receive({ type: "error", id: b.id, code: 429, limit: "subscriptions", message: "subscription limit of 1 channels reached" });
  await advance(30);
  assert.equal(ws.of("subscribe").length, 2, "not sent again");
  assert.deepEqual(of("error").map((e) => [e.code, e.channel]), [[429, "b"]]);
  assert.deepEqual([...c._channels], ["a"]);
});

// -- publishes refused for now are sent again ---------------------------------------------------

test("a publish refused with 429 (never numbered) is sent again with its id after a pause, not rejected", async (t) => {
  useFakes(t, { random: 1 });
  const { c, ws } = await opened({ backoffBase: 0.5 });
  c.subscribe("c");
  ws.receive(subscribed("c", 0, { id: ws.of("subscribe")[0].id }));
  const outcomes = [1, 2, 3].map((n) => c.publish("c", n).then((seq) => seq, (error) => error.message));
  await settle();
  const [p1, p2, p3] = ws.of("publish");
  ws.receive({ type: "ack", id: p1.id, seq: 1 });
  ws.receive({ type: "error", id: p2.id, code: 429, message: "publish rate limit" });
  ws.receive({ type: "error", id: p3.id, code: 429, message: "publish rate limit" });
  await advance(0.49);
  assert.equal(ws.of("publish").length, 3, "a pause first");
  await advance(0.02);
  assert.deepEqual(ws.of("publish").slice(3).map((f) => f.id), [p2.id], "one at a time, the same id");
  ws.receive({ type: "ack", id: p2.id, seq: 2 });
  await settle();
  assert.deepEqual(ws.of("publish").slice(4).map((f) => f.id), [p3.id]);
  ws.receive({ type: "ack", id: p3.id, seq: 3 });
  assert.deepEqual(await Promise.all(outcomes), [1, 2, 3]);
});

test("after a reconnect the resubscribes go out before the queued publishes", async (t) => {
  useFakes(t, { random: 0 });
  const { c, ws } = await opened();
  c.subscribe("c");
  ws.receive(subscribed("c", 0, { id: ws.of("subscribe")[0].id }));
  ws.gone(1006);
  c.publish("c", "queued");
  await advance(0.1);
  const again = FakeSocket.made.at(-1);
  again.open();
  await settle();
  assert.deepEqual(again.sent.map((f) => f.type), ["subscribe", "publish"]);
});

// -- smaller ------------------------------------------------------------------------------------

test("close() leaves no timer behind once the socket is closed", async (t) => {
  useFakes(t);
  const { c, ws } = await opened();
  let fired = 0;
  const realSetTimeout = globalThis.setTimeout;
  const pending = new Set();
  t.mock.method(globalThis, "setTimeout", (fn, ms) => {
    const timer = realSetTimeout(() => (pending.delete(timer), fired++, fn()), ms);
    pending.add(timer);
    return timer;
  });
  t.mock.method(globalThis, "clearTimeout", (timer) => pending.delete(timer));
  ws.close = function (code, reason) {
    this.closedWith = { code, reason };
    this.gone(code, reason); // the server answers the close at once
  };
  await c.close();
  assert.equal(pending.size, 0, "a timer outlives close()");
  assert.equal(fired, 0);
});

test("presence() while offline rejects at once, as triows.client raises", async (t) => {
  useFakes(t);
  const { c, ws } = await opened();
  ws.gone(1006);
  const started = Date.now();
  await assert.rejects(c.presence("chat"), /not connected/);
  assert.equal(Date.now() - started, 0);
});

test("a subscribe the server does not answer in time rejects, is not followed, and is undone on the server", async (t) => {
  useFakes(t);
  const { c, ws } = await opened({ requestTimeout: 2 });
  const outcome = c.subscribe("slow").then(() => "subscribed", (error) => error.message);
  await advance(2.1);
  assert.match(await outcome, /no answer to subscribe slow within 2s/);
  assert.deepEqual([...c._channels], []);
  assert.deepEqual(ws.of("unsubscribe").map((f) => f.channel), ["slow"]);
  ws.gone(1006);
  await advance(1);
  FakeSocket.made.at(-1).open();
  await settle();
  assert.deepEqual(FakeSocket.made.at(-1).of("subscribe"), [], "not resubscribed");
});

test("channels unsubscribed while their resubscribe waits make room for the next, not a stall", async (t) => {
  useFakes(t, { random: 1 });
  const { c } = client({ backoffBase: 0.5 });
  for (const channel of ["a", "b", "c"]) c.subscribe(channel);
  await settle();
  const ws = FakeSocket.made[0];
  ws.open();
  await settle();
  const [a, b, cc] = ws.of("subscribe");
  ws.receive(subscribed("a", 0, { id: a.id }));
  for (const frame of [b, cc]) ws.receive({ type: "error", id: frame.id, code: 429, message: "subscribe rate limit" });
  c.unsubscribe("b"); // during the pause (its reply does not matter here)
  await advance(0.6);
  assert.deepEqual(ws.of("subscribe").slice(3).map((f) => f.channel), ["c"]);
});

// -- issue 22: rewind, history, info, what the server does to a client ------------------------

test("subscribe with rewind: the rewound messages come first, once; a reconnect resumes instead", async (t) => {
  useFakes(t);
  const { c, ws, of } = await opened();
  const done = c.subscribe("chat", { rewind: 2 });
  await settle();
  const sent = ws.of("subscribe")[0];
  assert.equal(sent.rewind, 2);
  ws.receive({ ...subscribed("chat", 10, { rewound: 2 }), id: sent.id });
  ws.receive(message("chat", 9));
  ws.receive(message("chat", 10));
  ws.receive(message("chat", 10));
  ws.receive(message("chat", 11));
  await done;
  assert.deepEqual(of("message").map((m) => m.seq), [9, 10, 11]);
  ws.gone(1006);
  await advance(2);
  const next = FakeSocket.made.at(-1);
  next.open();
  await settle();
  const again = next.of("subscribe")[0];
  assert.equal(again.rewind, undefined);
  assert.equal(again.since, 11);
});

test("subscribe from a position (load state, then subscribe): a resume from it, or every held message", async (t) => {
  useFakes(t);
  const { c, ws, of } = await opened();
  const done = c.subscribe("orders", { since: 7, epoch: "e1" });
  await settle();
  const sent = ws.of("subscribe")[0];
  assert.deepEqual([sent.since, sent.epoch, sent.rewind], [7, "e1", undefined]);
  ws.receive({ ...subscribed("orders", 9, { recovered: true }), id: sent.id });
  for (const seq of [7, 8, 9, 9, 10]) ws.receive(message("orders", seq));
  await done;
  assert.deepEqual(of("message").map((m) => m.seq), [8, 9, 10]);
  // Its history expired meanwhile: the exact gap, then what is held.
  const late = c.subscribe("late", { since: 2, epoch: "e1" });
  await settle();
  const asked = ws.of("subscribe")[1];
  ws.receive({ ...subscribed("late", 9, { recovered: false, gap: [3, 5] }), id: asked.id });
  await late;
  assert.deepEqual(of("gap").map((g) => [g.channel, g.first, g.last]), [["late", 3, 5]]);
  // Never numbered when read: every message history holds.
  const fresh = c.subscribe("fresh", { since: 0, epoch: null });
  await settle();
  const first = ws.of("subscribe")[2];
  assert.deepEqual([first.since, first.rewind], [undefined, Number.MAX_SAFE_INTEGER]);
  ws.receive({ ...subscribed("fresh", 2, { rewound: 2 }), id: first.id });
  await fresh;
  await assert.rejects(c.subscribe("bad", { since: 3, epoch: null }), TypeError);
  // A position the server would refuse, or one that means nothing: refused here, nothing sent,
  // the channel not followed (it was subscribed live, without its position, silently).
  const sentBefore = ws.of("subscribe").length;
  await assert.rejects(c.subscribe("odd", { since: 1.5, epoch: "e1" }), { name: "TypeError", message: /'since' must be an integer/ });
  await assert.rejects(c.subscribe("odd", { since: "7", epoch: "e1" }), { name: "TypeError", message: /'since' must be an integer/ });
  await assert.rejects(c.subscribe("odd", { epoch: "e1" }), { name: "TypeError", message: "an epoch needs its since" });
  await assert.rejects(c.subscribe("fresh", { rewind: -1 }), { name: "TypeError", message: /'rewind' must be an integer/ });
  await settle();
  assert.equal(ws.of("subscribe").length, sentBefore);
});

test("history asks a page and answers the server's reply; presence and joins carry info", async (t) => {
  useFakes(t);
  const { c, ws } = await opened();
  const page = c.history("chat", { limit: 2, reverse: true, since: 9 });
  await settle();
  const asked = ws.of("history")[0];
  assert.deepEqual({ ...asked, id: undefined }, { type: "history", channel: "chat", limit: 2, reverse: true, since: 9, id: undefined });
  ws.receive({ type: "history", channel: "chat", epoch: "e1", seq: 12, messages: [message("chat", 8), message("chat", 7)], id: asked.id });
  const got = await page;
  assert.equal(got.seq, 12);
  assert.deepEqual(got.messages.map((m) => m.seq), [8, 7]);
  const joins = [];
  c.on("join", (event) => joins.push(event));
  const sub = c.subscribe("room");
  await settle();
  ws.receive({ ...subscribed("room", 0), id: ws.of("subscribe")[0].id });
  await sub;
  ws.receive({ type: "join", channel: "room", clientId: "x", userId: "alice", info: { name: "Alice" } });
  assert.deepEqual(joins[0].info, { name: "Alice" });
});

test("the server's subscribe, unsubscribe and disconnect are told to the application", async (t) => {
  useFakes(t);
  const { c, ws, of } = await opened();
  const told = [];
  for (const type of ["subscribed", "unsubscribed", "disconnected"]) c.on(type, (detail) => told.push({ type, ...detail }));
  ws.receive(subscribed("news", 4, { server: true }));
  ws.receive(message("news", 5));
  assert.deepEqual(told, [{ type: "subscribed", channel: "news", server: true }]);
  assert.deepEqual(of("message").map((m) => m.seq), [5]);
  ws.receive({ type: "unsubscribed", channel: "news", reason: "plan expired" });
  assert.deepEqual(told.at(-1), { type: "unsubscribed", channel: "news", reason: "plan expired" });
  ws.receive(message("news", 6));
  assert.equal(of("message").length, 1, "nothing more of a channel the server ended");
  // 4000-4499: said, and the client connects again.
  ws.gone(4000, "come back");
  assert.deepEqual(told.at(-1), { type: "disconnected", code: 4000, reason: "come back", reconnect: true });
  await advance(2);
  const next = FakeSocket.made.at(-1);
  assert.notEqual(next, ws);
  next.open();
  await settle();
  // 4500-4999: said, and it stops.
  next.gone(4600, "banned");
  assert.deepEqual(told.at(-1), { type: "disconnected", code: 4600, reason: "banned", reconnect: false });
  await advance(5);
  assert.equal(c.state, "closed");
  assert.equal(FakeSocket.made.at(-1), next);
  assert.equal(c.closeCode, 4600);
});

// triows.js outside a page, against a real server, for tests/test_browser.py: Node's `ws`
// stands in for the browser's WebSocket. The Python side stops and starts the server when
// this script says STOP / START (and answers "ok" on stdin). Prints one JSON summary.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { connect } from "../../triows/static/triows.js";

const require = createRequire(new URL("../bench/", import.meta.url));
const WebSocket = require("ws");
const [port, token] = process.argv.slice(2);
const url = `ws://127.0.0.1:${port}/`;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const ask = async (what) => {
  process.stdout.write(what + "\n");
  await lines.next();
};
const outcome = async (promise) => promise.then((value) => ({ value }), (error) => ({ error: error.message }));

const summary = { states: [], gaps: [], tokenCalls: 0 };
const client = connect(url, {
  WebSocket,
  token: async () => (summary.tokenCalls++, token),
  backoffBase: 0.05,
  backoffCap: 0.3,
});
client.on("state", ({ state }) => summary.states.push(state));
client.on("gap", (gap) => summary.gaps.push(gap));
await client.waitOpen();
// A bad token: refused with close code 4501 (triows.js asks for refusals as close codes), and
// the client stops, saying so.
const refused = connect(url, { WebSocket, token: "not-a-token", backoffBase: 0.05 });
summary.refusedErrors = [];
refused.on("error", (e) => summary.refusedErrors.push(e.code));
summary.refused = await outcome(refused.waitOpen());
summary.refusedConnects = refused.connects;
await client.subscribe("t");
summary.first = await client.publish("t", "a");

await ask("STOP");
// Offline: a publish waits in the queue, with its id, for the next connection.
const offline = client.publish("t", "b", { timeout: 20 });
const small = connect(url, { WebSocket, token, offlineQueueSize: 1, publishTimeout: 0.5, backoffBase: 0.05, backoffCap: 0.3 });
const waiting = outcome(small.publish("t", "x"));
summary.full = await outcome(small.publish("t", "y"));
summary.timedOut = await waiting;
await ask("START");
summary.offline = await outcome(offline);
summary.afterRestart = await client.publish("t", "c");
await client.close();
await small.close();
summary.finalState = client.state;
summary.closedPublish = await outcome(Promise.resolve().then(() => client.publish("t", "z")));
process.stdout.write(JSON.stringify(summary) + "\n");
process.exit(0);

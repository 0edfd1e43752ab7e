// Load generator for the fan-out benchmark: Node `ws`, a few µs per delivery, so the server
// under test, not the generator, is the bottleneck.
//
//   node loadgen.js fanout <url> <protocol: triows|bare> <subscribers> <warmup s> <measure s> [window]
//   node loadgen.js idle   <url> <protocol> <connections>
//
// fanout: N subscribers on one channel and one publisher. The publisher keeps WINDOW messages
// in flight, a message counting as done once every subscriber has it, so both servers get the
// same closed-loop load (a larger window hides the extra hop of a Redis-backed cluster). Prints "MEASURE_START" / "MEASURE_END" lines (the runner samples the
// server's CPU time at those moments) and then one JSON line of results.
// idle: opens N connections, prints "IDLE_READY", and holds them until stdin closes.
"use strict";
const WebSocket = require("ws");

const [mode, url, protocol, countText, warmupText, measureText, windowText] =
  process.argv.slice(2);
const count = Number(countText);
const WINDOW = Number(windowText || 16);
const PAD = "x".repeat(64);

function open(onMessage) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 1 << 20 });
    let ready = false;
    ws.on("error", (err) => (ready ? console.error("socket error", err.message) : reject(err)));
    ws.on("message", (data) => {
      if (!ready) {
        // triows greets with "welcome", then answers our subscribe with "subscribed".
        const frame = JSON.parse(data);
        if (frame.type === "welcome") {
          ws.send(JSON.stringify({ type: "subscribe", channel: "bench" }));
        } else if (frame.type === "subscribed") {
          ready = true;
          resolve(ws);
        }
        return;
      }
      onMessage(data);
    });
    ws.on("open", () => {
      if (protocol === "bare") {
        ready = true;
        resolve(ws);
      }
    });
  });
}

async function openMany(n, onMessage) {
  const sockets = [];
  for (let i = 0; i < n; i += 200) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + 200); j++) batch.push(open(onMessage));
    sockets.push(...(await Promise.all(batch)));
  }
  return sockets;
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function fanout() {
  const warmup = Number(warmupText) * 1000;
  const measure = Number(measureText) * 1000;
  const sentAt = new Map(); // message number -> performance.now()
  const remaining = new Map(); // message number -> deliveries still expected
  let deliveries = 0;
  let measuring = false;
  let latencies = [];
  let next = 0;
  let publisher;

  function publish() {
    const n = next++;
    sentAt.set(n, performance.now());
    remaining.set(n, count);
    const data = { n, pad: PAD };
    publisher.send(JSON.stringify({ type: "publish", channel: "bench", data, id: n }));
  }

  function onDelivery(raw) {
    // triows delivers {"type":"message","data":...}; the bare server relays the publish
    // frame itself: "data" is where the message number is in both.
    const n = JSON.parse(raw).data.n;
    if (measuring) {
      deliveries++;
      if ((deliveries & 7) === 0) latencies.push(performance.now() - sentAt.get(n));
    }
    const left = remaining.get(n) - 1;
    if (left === 0) {
      remaining.delete(n);
      sentAt.delete(n);
      publish();
    } else {
      remaining.set(n, left);
    }
  }

  await openMany(count, onDelivery);
  publisher = await open(() => {}); // acks and nothing else
  for (let i = 0; i < WINDOW; i++) publish();
  await new Promise((r) => setTimeout(r, warmup));
  latencies = [];
  deliveries = 0;
  measuring = true;
  const start = performance.now();
  console.log("MEASURE_START");
  await new Promise((r) => setTimeout(r, measure));
  measuring = false;
  const elapsed = (performance.now() - start) / 1000;
  console.log("MEASURE_END");
  latencies.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      deliveries,
      seconds: elapsed,
      p50_ms: percentile(latencies, 50),
      p99_ms: percentile(latencies, 99),
    })
  );
  process.exit(0);
}

async function idle() {
  const sockets = await openMany(count, () => {});
  console.log(`IDLE_READY ${sockets.length}`);
  process.stdin.resume();
  process.stdin.on("end", () => process.exit(0));
}

(mode === "idle" ? idle() : fanout()).catch((err) => {
  console.error(err && err.message ? err.message : err);
  process.exit(1);
});

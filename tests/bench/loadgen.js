// Load generator for the fan-out benchmark: Node `ws`, a few µs per delivery, so the server
// under test, not the generator, is the bottleneck.
//
//   node loadgen.js fanout     <url> <protocol: triows|bare|websockets> <subscribers> <warmup s> <measure s> [window]
//   node loadgen.js rpc        <url> <protocol> <clients> <warmup s> <measure s> [pad bytes]
//   node loadgen.js chat       <url> <protocol> <clients> <warmup s> <measure s> <rooms> <per client per s>
//   node loadgen.js handshakes <url> <protocol> <connections> [in flight]
//   node loadgen.js idle       <url> <protocol> <connections>
//   node loadgen.js hold       <url> <protocol> <connections> <local address> [in flight] [channels] [first index]
//   node loadgen.js subscribes <url> triows <connections> [in flight] [resume]
//
// fanout: N subscribers on one channel and one publisher. A negative WINDOW publishes -WINDOW
// messages per second (paced, for latency); otherwise the publisher keeps WINDOW messages
// in flight, a message counting as done once every subscriber has it, so both servers get the
// same closed-loop load (a larger window hides the extra hop of a Redis-backed cluster). Prints "MEASURE_START" / "MEASURE_END" lines (the runner samples the
// server's CPU time at those moments) and then one JSON line of results.
// rpc: N closed-loop clients, each with one request in flight: triows answers a publish (to a
// channel nobody follows) with its ack, the peers echo the frame. Prints MEASURE_* and JSON.
// chat: N clients in ROOMS rooms (client i in room i % ROOMS), each publishing PER CLIENT PER S
// messages (paced, random phase) that every other member of its room receives. triows: each
// client subscribes to its room's channel and publishes with an id (so it gets acks, as
// triows.js does); the peers take the room from the URL path and relay each message to the
// room's other members. Prints MEASURE_* and JSON: publications and deliveries in the window,
// publish→delivery p50/p99.
// handshakes: opens and closes N connections, at most IN FLIGHT at once (default 100);
// MEASURE_START / MEASURE_END bracket the whole run.
// idle: opens N connections, prints "IDLE_READY", and holds them until stdin closes.
// Environment: LOADGEN_DEFLATE=1 offers permessage-deflate (ws's default offer, as browsers make
// it); LOADGEN_PAYLOAD=json publishes ~1 KiB of realistic JSON (trade rows with fresh numbers
// every message) instead of a small padded object. fanout then also reports the bytes its
// subscribers read off their sockets in the measured window (frames and headers, as on the wire).
// hold: like idle, from one local address (the scale mode spreads generators over
// 127.0.0.2-6); prints "HOLD_READY <n>"; each "rtt" line on stdin answers with a JSON line of
// round trips (a triows ping request) on a sample of connections; at stdin's end prints how
// many connections the server closed, then exits. With CHANNELS (the scale mode), connection
// i subscribes to "scale-<i mod CHANNELS>" before it counts as open, and a "deliveries" line
// on stdin answers with how many connections have received a message so far (JSON).
// subscribes: one connection subscribes to "bench" (the node follows it from then on), then N
// more connect and subscribe to it, IN FLIGHT (default 100) at a time; prints one JSON line:
// the whole time, and the time from each subscribe to its "subscribed" (p50, p99, max). With
// "resume", 20 messages are published first and each subscribe resumes from the 10th-last
// (since/epoch: a reconnect storm), which must be recovered.
"use strict";
const WebSocket = require("ws");

const [mode, url, protocol, countText, warmupText, measureText, windowText] =
  process.argv.slice(2);
const localAddress = mode === "hold" ? warmupText : undefined;
// hold with channels: connection i (counted from FIRST INDEX over all generators) subscribes to
// "scale-<i mod CHANNELS>".
const holdChannels = mode === "hold" ? Number(windowText || 0) : 0;
const holdFirst = mode === "hold" ? Number(process.argv[9] || 0) : 0;
let holdNext = 0;
const received = new Map(); // socket -> messages received (hold with channels)
const count = Number(countText);
const WINDOW = Number(windowText || 16);
const PAD = "x".repeat(64);
const DEFLATE = process.env.LOADGEN_DEFLATE === "1";
const REALISTIC = process.env.LOADGEN_PAYLOAD === "json";
const SYMBOLS = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "NFLX"];

// ~1 KiB of JSON as a market-data or activity feed publishes it: the same keys every time, new
// numbers and ids in every message (so no two messages are alike).
function realistic(n) {
  const rows = [];
  for (let i = 0; i < 7; i++) {
    rows.push({
      id: n * 7 + i,
      symbol: SYMBOLS[(n + i) % SYMBOLS.length],
      price: Number((100 + Math.random() * 400).toFixed(2)),
      qty: Math.floor(Math.random() * 5000),
      side: Math.random() < 0.5 ? "buy" : "sell",
      venue: "XNAS",
      ts: Date.now() + i,
    });
  }
  return { n, kind: "trades", rows };
}
let closedAfterOpen = 0;
const closeCodes = {}; // close code -> connections the server closed after they opened

function open(onMessage, channel = "bench", path = "") {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url + path, {
      perMessageDeflate: DEFLATE,
      maxPayload: 1 << 20,
      localAddress,
    });
    let ready = false;
    ws.on("error", (err) => (ready ? console.error("socket error", err.message) : reject(err)));
    ws.on("close", (code) => {
      if (!ready) return reject(new Error(`closed with ${code} before it was ready`));
      closedAfterOpen++; // counted from the start: none may go unnoticed
      closeCodes[code] = (closeCodes[code] || 0) + 1;
    });
    ws.on("message", (data) => {
      if (!ready) {
        // triows greets with "welcome", then answers our subscribe with "subscribed".
        const frame = JSON.parse(data);
        if (frame.type === "welcome" && mode === "hold" && holdChannels) {
          const channel = `scale-${(holdFirst + holdNext++) % holdChannels}`;
          ws.send(JSON.stringify({ type: "subscribe", channel }));
        } else if (frame.type === "welcome" && mode === "hold") {
          ready = true; // idle connections: connected, greeted, subscribed to nothing
          resolve(ws);
        } else if (frame.type === "welcome") {
          ws.send(JSON.stringify({ type: "subscribe", channel }));
        } else if (frame.type === "subscribed") {
          ready = true;
          resolve(ws);
        } else if (frame.type === "error") {
          ws.terminate();
          reject(new Error(JSON.stringify(frame)));
        }
        return;
      }
      onMessage(data);
    });
    ws.on("open", () => {
      if (protocol !== "triows") {
        ready = true;
        resolve(ws);
      }
    });
  });
}

async function openMany(n, onMessage, inFlight = 200) {
  const sockets = [];
  for (let i = 0; i < n; i += inFlight) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + inFlight); j++) batch.push(open(onMessage));
    sockets.push(...(await Promise.all(batch)));
  }
  return sockets;
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

// After `warmup` ms, measure for `measure` ms: setMeasuring(true) resets the counters, and the
// MEASURE_START / MEASURE_END lines let the runner read the server's CPU time. Returns seconds.
async function measureWindow(warmup, measure, setMeasuring) {
  await new Promise((r) => setTimeout(r, warmup));
  setMeasuring(true);
  const start = performance.now();
  console.log("MEASURE_START");
  await new Promise((r) => setTimeout(r, measure));
  setMeasuring(false);
  const elapsed = (performance.now() - start) / 1000;
  console.log("MEASURE_END");
  return elapsed;
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
    const data = REALISTIC ? realistic(n) : { n, pad: PAD };
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
      if (WINDOW > 0) publish();
    } else {
      remaining.set(n, left);
    }
  }

  const subscribers = await openMany(count, onDelivery);
  publisher = await open(() => {}); // acks and nothing else
  const bytesRead = () => subscribers.reduce((sum, ws) => sum + ws._socket.bytesRead, 0);
  let bytesAtStart = 0;
  let bytes = 0;
  if (WINDOW < 0) {
    // Paced: -WINDOW messages per second whatever the deliveries, for latency at a known
    // rate (a closed loop measures queueing as much as cost).
    setInterval(publish, 1000 / -WINDOW);
  } else {
    for (let i = 0; i < WINDOW; i++) publish();
  }
  const elapsed = await measureWindow(warmup, measure, (on) => {
    measuring = on;
    if (on) {
      latencies = [];
      deliveries = 0;
      bytesAtStart = bytesRead();
    } else {
      bytes = bytesRead() - bytesAtStart;
    }
  });
  latencies.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      deliveries,
      bytes,
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

async function rpc() {
  const pad = windowText ? "x".repeat(Number(windowText)) : PAD;
  const warmup = Number(warmupText) * 1000;
  const measure = Number(measureText) * 1000;
  let replies = 0;
  let measuring = false;
  let latencies = [];
  const clients = [];
  for (let i = 0; i < count; i++) {
    let sentAt = 0;
    let n = 0;
    const client = {};
    client.send = () => {
      sentAt = performance.now();
      n++;
      const frame =
        protocol === "triows"
          ? { type: "publish", channel: "rpc", data: { n, pad }, id: n }
          : { n, pad };
      client.ws.send(JSON.stringify(frame));
    };
    client.ws = await open(() => {
      if (measuring) {
        replies++;
        if ((replies & 7) === 0) latencies.push(performance.now() - sentAt);
      }
      client.send();
    });
    clients.push(client);
  }
  for (const client of clients) client.send();
  const elapsed = await measureWindow(warmup, measure, (on) => {
    measuring = on;
    if (on) {
      latencies = [];
      replies = 0;
    }
  });
  latencies.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      replies,
      seconds: elapsed,
      p50_ms: percentile(latencies, 50),
      p99_ms: percentile(latencies, 99),
    })
  );
  process.exit(0);
}

function openAndClose() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.on("error", reject);
    ws.on("open", () => ws.close(1000));
    ws.on("close", () => resolve());
  });
}

async function handshakes() {
  const inFlight = Number(warmupText || 100);
  let started = 0;
  let failed = 0;
  console.log("MEASURE_START");
  const start = performance.now();
  async function worker() {
    while (started < count) {
      started++;
      await openAndClose().catch(() => failed++);
    }
  }
  await Promise.all(Array.from({ length: inFlight }, worker));
  const elapsed = (performance.now() - start) / 1000;
  console.log("MEASURE_END");
  console.log(JSON.stringify({ connections: count - failed, failed, seconds: elapsed }));
  process.exit(0);
}

async function openWithRetries(attempts) {
  // A server busy with thousands of handshakes may time some out: retry as a client would.
  for (let attempt = 1; ; attempt++) {
    try {
      return await open(() => {});
    } catch (err) {
      if (attempt >= attempts) throw err;
      await new Promise((r) => setTimeout(r, Math.random() * 1000 * attempt));
    }
  }
}

async function hold() {
  const sockets = [];
  let next = 0;
  async function opener() {
    while (next < count) {
      next++;
      sockets.push(await openWithRetries(10));
    }
  }
  await Promise.all(Array.from({ length: Number(measureText || 100) }, opener));
  const pending = new Map(); // socket -> [resolve, sentAt]
  for (const ws of sockets) {
    received.set(ws, 0);
    ws.on("message", (raw) => {
      const frame = JSON.parse(raw);
      if (frame.type === "message") received.set(ws, received.get(ws) + 1);
      const waiting = pending.get(ws);
      if (waiting && frame.type === "pong") {
        pending.delete(ws);
        waiting[0](performance.now() - waiting[1]);
      }
    });
  }
  // How many connections the server closed while they were being opened.
  console.log(`HOLD_READY ${sockets.length} ${closedAfterOpen}`);
  const lines = require("readline").createInterface({ input: process.stdin });
  lines.on("line", async (line) => {
    if (line === "deliveries") {
      const counts = [...received.values()];
      console.log(
        JSON.stringify({
          connections: counts.length,
          with_message: counts.filter((n) => n > 0).length,
          messages: counts.reduce((a, b) => a + b, 0),
        })
      );
      return;
    }
    const live = sockets.filter((ws) => ws.readyState === WebSocket.OPEN);
    const sample = [];
    for (let i = 0; i < live.length; i += Math.max(1, Math.floor(live.length / 100))) {
      sample.push(live[i]);
    }
    const times = await Promise.all(
      sample.map(
        (ws) =>
          new Promise((resolve) => {
            pending.set(ws, [resolve, performance.now()]);
            ws.send(JSON.stringify({ type: "ping" }));
            setTimeout(() => resolve(null), 10000);
          })
      )
    );
    const ok = times.filter((t) => t !== null).sort((a, b) => a - b);
    console.log(
      JSON.stringify({
        sampled: sample.length,
        answered: ok.length,
        p50_ms: percentile(ok, 50),
        max_ms: ok.length ? ok[ok.length - 1] : null,
        closed: closedAfterOpen,
        close_codes: closeCodes,
        open: live.length,
      })
    );
  });
  lines.on("close", () => {
    console.log(JSON.stringify({ closed: closedAfterOpen }));
    process.exit(0);
  });
}

async function chat() {
  const warmup = Number(warmupText) * 1000;
  const measure = Number(measureText) * 1000;
  const rooms = Number(process.argv[9]);
  const perSecond = Number(process.argv[10]);
  let publications = 0;
  let deliveries = 0;
  let measuring = false;
  let latencies = [];
  const triows = protocol === "triows";
  function onMessage(raw) {
    const frame = JSON.parse(raw);
    let sent;
    if (triows) {
      if (frame.type !== "message") return; // acks
      sent = frame.data.t;
    } else {
      sent = frame.t;
    }
    if (measuring) {
      deliveries++;
      if ((deliveries & 3) === 0) latencies.push(performance.now() - sent);
    }
  }
  const clients = [];
  for (let i = 0; i < count; i += 200) {
    const batch = [];
    for (let j = i; j < Math.min(count, i + 200); j++) {
      const room = `room-${j % rooms}`;
      batch.push(open(onMessage, room, triows ? "" : room).then((ws) => ({ ws, room, n: 0 })));
    }
    clients.push(...(await Promise.all(batch)));
  }
  const period = 1000 / perSecond;
  for (const client of clients) {
    const publish = () => {
      client.n++;
      const data = { t: performance.now(), pad: PAD };
      const frame = triows
        ? { type: "publish", channel: client.room, data, id: client.n }
        : data;
      client.ws.send(JSON.stringify(frame));
      if (measuring) publications++;
    };
    setTimeout(() => setInterval(publish, period), Math.random() * period);
  }
  const elapsed = await measureWindow(warmup, measure, (on) => {
    measuring = on;
    if (on) {
      latencies = [];
      publications = 0;
      deliveries = 0;
    }
  });
  latencies.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      publications,
      deliveries,
      seconds: elapsed,
      p50_ms: percentile(latencies, 50),
      p99_ms: percentile(latencies, 99),
    })
  );
  process.exit(0);
}


async function subscribes() {
  const inFlight = Number(warmupText || 100);
  const resume = measureText === "resume";
  const first = await open(() => {}); // the node follows "bench" from now on
  const sockets = [first];
  const latencies = [];
  let since = null;
  let epoch = null;
  if (resume) {
    // History to resume from: 20 publications; then every subscribe asks for the last 10.
    await new Promise((resolve) => {
      first.on("message", (data) => {
        const frame = JSON.parse(data);
        if (frame.type === "subscribed") epoch = frame.epoch;
        if (frame.type === "ack" && frame.id === 20) {
          since = frame.seq - 10;
          resolve();
        }
      });
      first.send(JSON.stringify({ type: "subscribe", channel: "bench", id: "s" }));
      for (let i = 1; i <= 20; i++) {
        first.send(JSON.stringify({ type: "publish", channel: "bench", data: i, id: i }));
      }
    });
  }
  function openAndSubscribe() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false });
      let sentAt = 0;
      ws.on("error", reject);
      ws.on("message", (data) => {
        const frame = JSON.parse(data);
        if (frame.type === "welcome") {
          sentAt = performance.now();
          const request = { type: "subscribe", channel: "bench" };
          if (resume) Object.assign(request, { since, epoch });
          ws.send(JSON.stringify(request));
        } else if (frame.type === "subscribed") {
          if (resume && !frame.recovered) reject(new Error(JSON.stringify(frame)));
          latencies.push(performance.now() - sentAt);
          resolve(ws);
        } else if (frame.type === "error") {
          reject(new Error(JSON.stringify(frame)));
        }
      });
    });
  }
  console.log("MEASURE_START");
  const start = performance.now();
  let started = 0;
  async function worker() {
    while (started < count) {
      started++;
      sockets.push(await openAndSubscribe());
    }
  }
  await Promise.all(Array.from({ length: inFlight }, worker));
  const elapsed = (performance.now() - start) / 1000;
  console.log("MEASURE_END");
  latencies.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      connections: count,
      seconds: elapsed,
      p50_ms: percentile(latencies, 50),
      p99_ms: percentile(latencies, 99),
      max_ms: latencies[latencies.length - 1],
    })
  );
  for (const ws of sockets) ws.terminate();
  process.exit(0);
}

const modes = { idle, fanout, rpc, handshakes, hold, chat, subscribes };
modes[mode]().catch((err) => {
  console.error(err && err.message ? err.message : err);
  process.exit(1);
});

// Load for the Redis-vs-cluster benchmark (shards.py): publishers on one triows node, subscribers
// on another, many channels, so the fan-out between nodes goes through Redis.
//
//   node shards.js <publish url> <subscribe url> <channels> <publishers> <window> <warmup s> <measure s>
//
// One subscriber per channel on the subscribe node; each publisher owns channels/publishers
// channels and keeps WINDOW publications in flight (closed loop on acks), round robin over
// them. Prints one JSON line: acks and deliveries counted over the measured window.
"use strict";
const WebSocket = require("ws");
const [pubUrl, subUrl, channelsText, publishersText, windowText, warmupText, measureText] =
  process.argv.slice(2);
const CHANNELS = Number(channelsText);
const PUBLISHERS = Number(publishersText);
const WINDOW = Number(windowText);
const PAD = "x".repeat(64);
let counting = false;
let acks = 0;
let deliveries = 0;

function open(url, onFrame) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.on("error", reject);
    ws.on("message", (data) => {
      const frame = JSON.parse(data);
      if (frame.type === "welcome") return resolve(ws);
      onFrame(ws, frame);
    });
  });
}

async function subscriber(channel) {
  let done;
  const ready = new Promise((r) => (done = r));
  const ws = await open(subUrl, (_, frame) => {
    if (frame.type === "subscribed") done();
    else if (frame.type === "message" && counting) deliveries++;
  });
  ws.send(JSON.stringify({ type: "subscribe", channel }));
  await ready;
  return ws;
}

async function publisher(index) {
  const mine = [];
  for (let c = index; c < CHANNELS; c += PUBLISHERS) mine.push(`shard-${c}`);
  let next = 0;
  let id = 0;
  const send = (ws) => {
    const channel = mine[next++ % mine.length];
    ws.send(JSON.stringify({ type: "publish", channel, data: PAD, id: id++ }));
  };
  const ws = await open(pubUrl, (socket, frame) => {
    if (frame.type === "ack") {
      if (counting) acks++;
      send(socket);
    } else if (frame.type === "error") {
      setTimeout(() => send(socket), 5); // 429/503: back off a moment, keep the window
    }
  });
  return () => {
    for (let i = 0; i < WINDOW; i++) send(ws);
  };
}

(async () => {
  const subs = [];
  for (let c = 0; c < CHANNELS; c++) subs.push(await subscriber(`shard-${c}`));
  const starts = [];
  for (let p = 0; p < PUBLISHERS; p++) starts.push(await publisher(p));
  starts.forEach((start) => start());
  await new Promise((r) => setTimeout(r, Number(warmupText) * 1000));
  counting = true;
  const began = process.hrtime.bigint();
  console.log("MEASURE_START");
  await new Promise((r) => setTimeout(r, Number(measureText) * 1000));
  counting = false;
  console.log("MEASURE_END");
  const seconds = Number(process.hrtime.bigint() - began) / 1e9;
  console.log(JSON.stringify({ acks, deliveries, seconds }));
  process.exit(0);
})().catch((err) => {
  console.error(err);
  process.exit(1);
});

// Protocol v1 from Node `ws` (tests/test_interop.py): welcome, subscribe, publish/ack,
// message delivery to a second client, an error frame, ping/pong. Prints "OK" or exits 1.
"use strict";
const WebSocket = require("ws");
const url = process.argv[2];
const fail = (why) => { console.error(why); process.exit(1); };
setTimeout(() => fail("timed out"), 10000);

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const queue = [];
    const waiters = [];
    ws.on("message", (data) => {
      const frame = JSON.parse(data);
      const waiter = waiters.shift();
      waiter ? waiter(frame) : queue.push(frame);
    });
    ws.next = () => new Promise((r) => (queue.length ? r(queue.shift()) : waiters.push(r)));
    ws.on("open", () => resolve(ws));
    ws.on("error", reject);
  });
}

(async () => {
  const a = await open();
  const b = await open();
  const welcome = await a.next();
  if (welcome.type !== "welcome" || !welcome.data.clientId) fail("bad welcome");
  await b.next();
  b.send(JSON.stringify({ type: "subscribe", channel: "interop", id: "s" }));
  const sub = await b.next();
  if (sub.type !== "subscribed" || sub.id !== "s" || sub.seq !== 0) fail("bad subscribed");
  a.send(JSON.stringify({ type: "publish", channel: "interop", data: { é: [1, 2] }, id: 7 }));
  const ack = await a.next();
  if (ack.type !== "ack" || ack.id !== 7 || ack.seq !== 1) fail("bad ack " + JSON.stringify(ack));
  const msg = await b.next();
  if (msg.type !== "message" || msg.seq !== 1 || msg.data["é"][1] !== 2 ||
      msg.from !== welcome.data.clientId) fail("bad message " + JSON.stringify(msg));
  a.send("not json");
  const err = await a.next();
  if (err.type !== "error" || err.code !== 400) fail("bad error");
  a.send(JSON.stringify({ type: "ping", id: "p" }));
  const pong = await a.next();
  if (pong.type !== "pong" || pong.id !== "p") fail("bad pong");
  a.close(1000);
  b.close(1000);
  console.log("OK");
  process.exit(0);
})().catch((e) => fail(String(e)));

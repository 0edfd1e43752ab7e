// The Node `ws` peer of the chat scenarios: the room logic every peer runs. A client's room is
// its URL path; each message it sends is relayed to every other member of that room.
//
//   node room_server.js PORT
"use strict";
const { WebSocketServer } = require("ws");

const rooms = new Map(); // path -> Set of sockets
const server = new WebSocketServer({
  host: "127.0.0.1",
  port: Number(process.argv[2]),
  perMessageDeflate: false,
  maxPayload: 1 << 20,
});
server.on("connection", (ws, request) => {
  const name = request.url;
  let room = rooms.get(name);
  if (!room) rooms.set(name, (room = new Set()));
  room.add(ws);
  ws.on("message", (data, isBinary) => {
    for (const other of room) {
      if (other !== ws && other.readyState === 1) other.send(data, { binary: isBinary });
    }
  });
  ws.on("close", () => {
    room.delete(ws);
    if (!room.size) rooms.delete(name);
  });
  ws.on("error", () => {});
});
process.on("SIGTERM", () => process.exit(0));

// A WebSocket stand-in for triows.js's own tests: the test plays the server. Time is Node's
// mock timers (virtual), randomness is pinned where a test needs it.
import { mock } from "node:test";

export class FakeSocket {
  /** every socket made, in order */
  static made = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0; // CONNECTING
    /** frames the client sent, parsed */
    this.sent = [];
    this.listeners = { close: [] };
    FakeSocket.made.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    this.closedWith = { code, reason };
    this.gone(code === 1000 ? 1000 : 1006, reason);
  }

  addEventListener(type, listener) {
    this.listeners[type]?.push(listener);
  }

  // -- the server's side ---------------------------------------------------------------------

  /** The handshake succeeds and the server says welcome. */
  open(clientId = `client-${FakeSocket.made.indexOf(this)}`) {
    this.readyState = 1;
    this.onopen?.({});
    this.receive({ type: "welcome", data: { clientId, serverId: "s1", timestamp: 0, heartbeat: 30 } });
  }

  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The server accepts the upgrade, then refuses with a close code (`refusal=close`). */
  refuseWithClose(code, reason = "") {
    this.readyState = 1;
    this.onopen?.({});
    this.gone(code, reason);
  }

  /** The handshake is refused; `message` is what Node's `ws` says (browsers say nothing). */
  refuse(message) {
    this.onerror?.(message === undefined ? {} : { message });
    this.gone(1006, "");
  }

  gone(code, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
    for (const listener of this.listeners.close) listener({ code, reason });
  }

  /** Frames of one type the client sent. */
  of(type) {
    return this.sent.filter((frame) => frame.type === type);
  }
}

/** Let promise continuations run (the client awaits between steps). */
export async function settle(rounds = 5) {
  for (let n = 0; n < rounds; n++) await new Promise((resolve) => setImmediate(resolve));
}

/** Virtual time: advance `seconds`, letting promises run at every step. */
export async function advance(seconds, step = 0.01) {
  const steps = Math.round(seconds / step);
  for (let n = 0; n < steps; n++) {
    mock.timers.tick(step * 1000);
    await settle(2);
  }
}

export function useFakes(t, { random = 0.5 } = {}) {
  FakeSocket.made = [];
  mock.timers.enable({ apis: ["setTimeout", "Date"] });
  if (random !== null) mock.method(Math, "random", () => random);
  t.after(() => {
    mock.timers.reset();
    mock.restoreAll();
  });
}

// triows.js: the browser client of a triows server (protocol v1). One ES module, no dependencies.
//
//   import { connect } from "/triows.js";
//   const client = connect("ws://localhost:8080/", { token: () => fetchToken() });
//   client.on("message", (m) => console.log(m.channel, m.seq, m.data));
//   client.on("gap", (g) => console.warn("missed", g.channel, g.first, g.last, g.reason));
//   await client.subscribe("chat");
//   const seq = await client.publish("chat", { text: "hi" });
//
// It mirrors the Python client (triows.client): reconnects with exponential backoff and full
// jitter; resubscribes every channel with since/epoch so the server replays what was missed,
// and reports `recovered`, or an exact `gap` when history no longer holds it; publishes are
// acked through promises, keep their id across resends (the server's dedupe makes a resend
// exactly-once for an authenticated user) and wait in a bounded offline queue; an adaptive
// application-level ping finds dead links the browser does not notice. Docs: docs/browser.md.

/** @typedef {"connecting" | "open" | "reconnecting" | "closed"} State */
/**
 * @typedef {object} Message
 * @property {string} channel
 * @property {*} data
 * @property {number} seq
 * @property {string} id
 * @property {string | null} from
 * @property {number} timestamp
 * @property {boolean} own   true for this client's own publish (see the `echo` option)
 */
/**
 * @typedef {object} Gap  Messages the application will not get. `first`/`last` are the
 *   inclusive seq range when known, both null when the channel's epoch changed.
 * @property {string} channel
 * @property {number | null} first
 * @property {number | null} last
 * @property {string} reason
 */
/** @typedef {{channel: string, epoch: string, seq: number}} Recovered */
/** @typedef {{channel: string, clientId: string, userId: string | null}} Member */
/** @typedef {{channel: string, count: number, members: Member[] | null}} Presence */
/** @typedef {{code: number, message: string, channel?: string}} ServerError */
/**
 * @typedef {object} Options
 * @property {string | (() => string | null | Promise<string | null>)} [token]
 *   sent as the `token` query parameter; a function is called before every connect.
 * @property {number} [backoffBase=0.5]  seconds
 * @property {number} [backoffCap=30]  seconds
 * @property {number | null} [maxAttempts=null]  failed connects in a row before giving up
 * @property {number} [publishTimeout=10]  seconds for an ack
 * @property {number} [requestTimeout=10]  seconds for other replies
 * @property {number} [offlineQueueSize=1000]  publishes waiting for the server
 * @property {number} [pingMin=5]  seconds
 * @property {number} [pingMax=60]  seconds
 * @property {number} [pingTimeout=10]  seconds for a pong
 * @property {number} [connectTimeout=10]  seconds for the welcome
 * @property {boolean} [echo=false]  emit this client's own publishes as `message` events
 *   (with `own: true`) once acked; the server never sends a publisher its own messages
 * @property {typeof WebSocket} [WebSocket]  the WebSocket class (default: the global one)
 */

/** Thrown (as a rejected promise) by publish and requests. */
export class TriowsError extends Error {
  /** @param {string} message @param {number} [code] */
  constructor(message, code = 0) {
    super(message);
    this.name = "TriowsError";
    /** error code from the server (0: client side: timeout, closed, queue full) */
    this.code = code;
  }
}

const RESUBSCRIBE = "resubscribe:";
const TRANSIENT = new Set([429, 500, 503]);

/** Full jitter: a random delay below an exponentially growing cap. */
function backoff(attempt, base, cap) {
  return Math.random() * Math.min(cap, base * 2 ** attempt);
}

/** What the application has seen per channel, so that it gets each message once (see
 *  triows/_core/tracking.py: the same rules). */
class Tracker {
  constructor() {
    /** @type {Map<string, {epoch: string | null, seq: number, own: Set<number>}>} */
    this.cursors = new Map();
    /** @type {Set<string>} */
    this.myIds = new Set();
  }
  track(channel) {
    if (!this.cursors.has(channel)) this.cursors.set(channel, { epoch: null, seq: 0, own: new Set() });
  }
  resumeFrom(channel) {
    const c = this.cursors.get(channel);
    return c && c.epoch !== null ? { since: c.seq, epoch: c.epoch } : null;
  }
  /** @returns {{gap?: Gap, recovered?: boolean}} */
  onSubscribed(frame) {
    const c = this.cursors.get(frame.channel);
    if (!c) return {};
    if (c.epoch === null) {
      c.epoch = frame.epoch;
      c.seq = frame.seq;
      return {};
    }
    if (frame.recovered === true) return { recovered: true };
    if (frame.epoch === c.epoch && Array.isArray(frame.gap)) {
      const [first, last] = frame.gap;
      c.seq = Math.max(c.seq, last);
      for (const s of c.own) if (s <= c.seq) c.own.delete(s);
      return { gap: { channel: frame.channel, first, last, reason: "history expired" } };
    }
    if (frame.epoch === c.epoch && frame.recovered === undefined) return {};
    c.epoch = frame.epoch;
    c.seq = frame.seq;
    c.own.clear();
    return { gap: { channel: frame.channel, first: null, last: null, reason: "epoch changed" } };
  }
  onAck(channel, seq) {
    const c = this.cursors.get(channel);
    if (!c || seq <= c.seq) return;
    c.own.add(seq);
    while (c.own.has(c.seq + 1)) {
      c.seq += 1;
      c.own.delete(c.seq);
    }
  }
  /** @returns {{gap?: Gap, message?: Message}} */
  onMessage(frame) {
    const c = this.cursors.get(frame.channel);
    if (!c || frame.seq <= c.seq) return {};
    if (this.myIds.has(frame.from)) {
      this.onAck(frame.channel, frame.seq);
      return {};
    }
    const result = {};
    const missing = [];
    for (let s = c.seq + 1; s < frame.seq; s++) if (!c.own.has(s)) missing.push(s);
    if (missing.length) {
      result.gap = {
        channel: frame.channel,
        first: missing[0],
        last: missing[missing.length - 1],
        reason: "messages skipped",
      };
    }
    c.seq = frame.seq;
    for (const s of c.own) if (s <= c.seq) c.own.delete(s);
    while (c.own.has(c.seq + 1)) {
      c.seq += 1;
      c.own.delete(c.seq);
    }
    result.message = {
      channel: frame.channel,
      data: frame.data,
      seq: frame.seq,
      id: frame.id || "",
      from: frame.from ?? null,
      timestamp: frame.timestamp || 0,
      own: false,
    };
    return result;
  }
}

export class TriowsClient {
  /** @param {string} url ws:// or wss:// @param {Options} [options] */
  constructor(url, options = {}) {
    if (!/^wss?:\/\//.test(url)) throw new TypeError(`expected a ws:// or wss:// URL, got ${url}`);
    this.url = url;
    this.options = {
      backoffBase: 0.5,
      backoffCap: 30,
      maxAttempts: null,
      publishTimeout: 10,
      requestTimeout: 10,
      offlineQueueSize: 1000,
      pingMin: 5,
      pingMax: 60,
      pingTimeout: 10,
      connectTimeout: 10,
      echo: false,
      ...options,
    };
    /** @type {State} */
    this.state = "connecting";
    /** @type {string | null} */
    this.clientId = null;
    /** @type {string | null} */
    this.serverId = null;
    /** connections made so far */
    this.connects = 0;
    /** the current adaptive ping interval, seconds */
    this.pingInterval = this.options.pingMin;
    this._pongsInARow = 0;
    this._listeners = new Map();
    this._tracker = new Tracker();
    /** @type {Set<string>} channels followed */
    this._channels = new Set();
    /** publishes not sent yet, then sent and waiting for their ack (by id) */
    this._unsent = [];
    this._inflight = new Map();
    /** replies awaited by request id */
    this._waiting = new Map();
    this._ids = 0;
    this._idPrefix = Math.random().toString(36).slice(2, 10);
    this._ws = null;
    /** welcomed on the current socket: publishes may go out */
    this._live = false;
    this._failures = 0;
    this._timers = new Set();
    this._closing = false;
    this._run();
  }

  /**
   * Listen for "message", "gap", "recovered", "join", "leave", "state", "error".
   * @param {string} type @param {(detail: any) => void} listener
   * @returns {() => void} stops listening
   */
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this._listeners.get(type)?.delete(listener);
  }

  /** Resolves once connected; rejects if the client closes first. */
  waitOpen() {
    if (this.state === "open") return Promise.resolve();
    if (this.state === "closed") return Promise.reject(new TriowsError("client is closed"));
    return new Promise((resolve, reject) => {
      const off = this.on("state", ({ state }) => {
        if (state === "open") (off(), resolve());
        if (state === "closed") (off(), reject(new TriowsError("client is closed")));
      });
    });
  }

  /**
   * Follow a channel. Resolves with the server's `subscribed` reply, or at once with null
   * while offline: the subscription is then made (and kept) on every reconnect.
   * @param {string} channel @returns {Promise<object | null>}
   */
  async subscribe(channel) {
    this._checkOpen();
    this._channels.add(channel);
    this._tracker.track(channel);
    if (this.state !== "open") return null;
    const reply = await this._request(this._subscribeFrame(channel));
    if (reply === null) return null; // the connection dropped: made on reconnect
    this._onSubscribed(reply);
    return reply;
  }

  /** @param {string} channel */
  async unsubscribe(channel) {
    this._channels.delete(channel);
    this._tracker.cursors.delete(channel);
    if (this.state === "open") await this._request({ type: "unsubscribe", channel });
  }

  /**
   * Publish; resolves with the message's seq from the server's ack. Rejects with a
   * TriowsError on timeout (the publish may still happen, never twice), a full offline
   * queue, or the server's refusal (with its code).
   * @param {string} channel @param {*} data @param {{timeout?: number}} [options]
   * @returns {Promise<number>}
   */
  publish(channel, data, options = {}) {
    this._checkOpen();
    if (this._unsent.length + this._inflight.size >= this.options.offlineQueueSize) {
      return Promise.reject(
        new TriowsError(`${this.options.offlineQueueSize} publishes already wait for the server`),
      );
    }
    const id = `${this._idPrefix}-${++this._ids}`;
    const frame = JSON.stringify({ type: "publish", channel, data, id });
    return new Promise((resolve, reject) => {
      const item = { id, channel, data, frame, resolve, reject, timer: 0 };
      item.timer = this._after(options.timeout ?? this.options.publishTimeout, () => {
        this._unsent = this._unsent.filter((other) => other !== item);
        this._inflight.delete(id);
        reject(new TriowsError(`no ack for publish ${id} to ${channel}`));
      });
      this._unsent.push(item);
      this._flush();
    });
  }

  /**
   * Who is subscribed to a presence channel (the server's `--presence` patterns).
   * @param {string} channel @returns {Promise<Presence>}
   */
  async presence(channel) {
    this._checkOpen();
    const reply = await this._request({ type: "presence", channel });
    if (reply === null) throw new TriowsError("connection lost");
    return { channel, count: reply.count, members: reply.members };
  }

  /** Close cleanly (code 1000); pending publishes are rejected. */
  close() {
    if (this.state === "closed") return Promise.resolve();
    this._closing = true;
    this._setState("closed");
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    const error = new TriowsError("client closed");
    for (const item of [...this._unsent, ...this._inflight.values()]) {
      clearTimeout(item.timer);
      item.reject(error);
    }
    this._unsent = [];
    this._inflight.clear();
    for (const waiter of this._waiting.values()) waiter(null);
    this._waiting.clear();
    const ws = this._ws;
    if (!ws || ws.readyState >= 2) return Promise.resolve();
    return new Promise((resolve) => {
      ws.addEventListener("close", () => resolve(), { once: true });
      ws.close(1000, "client closed");
      setTimeout(resolve, 2000);
    });
  }

  // -- internals ---------------------------------------------------------------------------

  _emit(type, detail) {
    for (const listener of this._listeners.get(type) ?? []) {
      try {
        listener(detail);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", { state });
  }

  _checkOpen() {
    if (this.state === "closed") throw new TriowsError("client is closed");
  }

  _after(seconds, fn) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, seconds * 1000);
    this._timers.add(timer);
    return timer;
  }

  async _token() {
    const token = this.options.token;
    return typeof token === "function" ? await token() : (token ?? null);
  }

  async _run() {
    while (!this._closing) {
      let url = this.url;
      try {
        const token = await this._token();
        if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
      } catch (error) {
        this._emit("error", { code: 0, message: `token: ${error}` });
      }
      if (this._closing) return;
      const opened = await this._connectOnce(url);
      if (this._closing) return;
      this._failures = opened ? 0 : this._failures + 1;
      const { maxAttempts, backoffBase, backoffCap } = this.options;
      if (maxAttempts !== null && this._failures >= maxAttempts) {
        this._emit("error", { code: 0, message: `gave up after ${this._failures} attempts` });
        this.close();
        return;
      }
      this._setState("reconnecting");
      const delay = opened ? 0 : backoff(this._failures - 1, backoffBase, backoffCap);
      await new Promise((resolve) => this._after(delay, resolve));
    }
  }

  /** One connection, from open to close; resolves with whether it got its welcome. */
  _connectOnce(url) {
    return new Promise((resolve) => {
      const Impl = this.options.WebSocket ?? globalThis.WebSocket;
      let ws;
      try {
        ws = new Impl(url);
      } catch (error) {
        this._emit("error", { code: 0, message: String(error) });
        resolve(false);
        return;
      }
      this._ws = ws;
      let welcomed = false;
      let pingTimer = 0;
      const connectTimer = this._after(this.options.connectTimeout, () => ws.close(4000, "connect timeout"));
      const schedulePing = () => {
        pingTimer = this._after(this.pingInterval, async () => {
          const started = performance.now();
          const pong = await this._request({ type: "ping" }, this.options.pingTimeout);
          if (ws !== this._ws || this._closing) return;
          if (pong === null) {
            this.pingInterval = Math.max(this.options.pingMin, this.pingInterval / 2);
            this._pongsInARow = 0;
            ws.close(4000, "no pong"); // the browser may not notice a dead link for minutes
            return;
          }
          this.lastRtt = performance.now() - started;
          if (++this._pongsInARow >= 3) {
            this.pingInterval = Math.min(this.options.pingMax, this.pingInterval * 2);
            this._pongsInARow = 0;
          }
          schedulePing();
        });
      };
      ws.onmessage = (event) => {
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch {
          return;
        }
        if (!welcomed) {
          if (frame.type !== "welcome") return;
          welcomed = true;
          clearTimeout(connectTimer);
          this._timers.delete(connectTimer);
          this.clientId = frame.data.clientId;
          this.serverId = frame.data.serverId;
          this._tracker.myIds.add(this.clientId);
          this.connects += 1;
          // Resubscribe first: whatever the application sends when it sees "open" (say, a
          // presence request) then reaches the server after the subscriptions.
          this._live = true;
          this._resume();
          this._setState("open");
          schedulePing();
          return;
        }
        this._onFrame(frame);
      };
      ws.onerror = () => {}; // a close event follows, with what is known
      ws.onclose = (event) => {
        clearTimeout(connectTimer);
        clearTimeout(pingTimer);
        this._timers.delete(connectTimer);
        this._timers.delete(pingTimer);
        if (this._ws === ws) {
          this._ws = null;
          this._live = false;
        }
        // Sent but not acked: sent again, with the same ids, on the next connection.
        this._unsent = [...this._inflight.values(), ...this._unsent];
        this._inflight.clear();
        for (const waiter of this._waiting.values()) waiter(null);
        this._waiting.clear();
        if (event.code === 1008 || event.code === 1011 || event.code === 1013) {
          this._emit("error", { code: event.code, message: event.reason || "connection closed" });
        }
        resolve(welcomed);
      };
    });
  }

  _resume() {
    for (const channel of this._channels) {
      const frame = this._subscribeFrame(channel);
      frame.id = RESUBSCRIBE + channel;
      this._send(frame);
    }
    this._flush();
  }

  _subscribeFrame(channel) {
    const frame = { type: "subscribe", channel, id: `${this._idPrefix}-s${++this._ids}` };
    const resume = this._tracker.resumeFrom(channel);
    if (resume) Object.assign(frame, resume);
    return frame;
  }

  _send(frame) {
    if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(frame));
  }

  _flush() {
    if (!this._live || !this._ws || this._ws.readyState !== 1) return;
    while (this._unsent.length) {
      const item = this._unsent.shift();
      this._inflight.set(item.id, item);
      this._ws.send(item.frame);
    }
  }

  /** Send a request with an id; resolves with its reply, or null when the connection drops
   *  or the timeout passes. Error replies reject with a TriowsError. */
  _request(frame, timeout = this.options.requestTimeout) {
    const id = frame.id ?? `${this._idPrefix}-r${++this._ids}`;
    return new Promise((resolve, reject) => {
      const timer = this._after(timeout, () => {
        this._waiting.delete(id);
        resolve(null);
      });
      this._waiting.set(id, (reply) => {
        clearTimeout(timer);
        this._timers.delete(timer);
        if (reply && reply.type === "error") reject(new TriowsError(reply.message, reply.code));
        else resolve(reply);
      });
      this._send({ ...frame, id });
    });
  }

  _onSubscribed(frame) {
    const { gap, recovered } = this._tracker.onSubscribed(frame);
    if (gap) this._emit("gap", gap);
    if (recovered) this._emit("recovered", { channel: frame.channel, epoch: frame.epoch, seq: frame.seq });
  }

  _onFrame(frame) {
    const waiter = frame.id !== undefined ? this._waiting.get(frame.id) : undefined;
    switch (frame.type) {
      case "message": {
        const { gap, message } = this._tracker.onMessage(frame);
        if (gap) this._emit("gap", gap);
        if (message) this._emit("message", message);
        return;
      }
      case "ack": {
        const item = this._inflight.get(frame.id);
        if (!item) return;
        this._inflight.delete(frame.id);
        clearTimeout(item.timer);
        this._timers.delete(item.timer);
        this._tracker.onAck(item.channel, frame.seq);
        if (this.options.echo) {
          this._emit("message", {
            channel: item.channel,
            data: item.data,
            seq: frame.seq,
            id: "",
            from: this.clientId,
            timestamp: Date.now(),
            own: true,
          });
        }
        item.resolve(frame.seq);
        return;
      }
      case "subscribed":
        if (typeof frame.id === "string" && frame.id.startsWith(RESUBSCRIBE)) {
          this._onSubscribed(frame);
          return;
        }
        if (waiter) {
          this._waiting.delete(frame.id);
          waiter(frame);
        } else {
          this._onSubscribed(frame); // the server restarted a channel's numbering
        }
        return;
      case "join":
      case "leave":
        if (this._channels.has(frame.channel)) {
          this._emit(frame.type, { channel: frame.channel, clientId: frame.clientId, userId: frame.userId ?? null });
        }
        return;
      case "error": {
        const item = this._inflight.get(frame.id);
        if (item) {
          this._inflight.delete(frame.id);
          clearTimeout(item.timer);
          item.reject(new TriowsError(frame.message, frame.code));
          return;
        }
        if (typeof frame.id === "string" && frame.id.startsWith(RESUBSCRIBE)) {
          const channel = frame.id.slice(RESUBSCRIBE.length);
          if (TRANSIENT.has(frame.code)) {
            this._ws?.close(4000, "resubscribe refused for now"); // try again, with backoff
          } else {
            this._channels.delete(channel);
            this._tracker.cursors.delete(channel);
            this._emit("error", { code: frame.code, message: frame.message, channel });
          }
          return;
        }
        if (waiter) {
          this._waiting.delete(frame.id);
          waiter(frame);
        } else {
          this._emit("error", { code: frame.code, message: frame.message });
        }
        return;
      }
      case "unsubscribed":
        if (waiter) {
          this._waiting.delete(frame.id);
          waiter(frame);
        } else if (frame.reason) {
          this._channels.delete(frame.channel);
          this._tracker.cursors.delete(frame.channel);
          this._emit("error", { code: 403, message: frame.reason, channel: frame.channel });
        }
        return;
      default:
        if (waiter) {
          this._waiting.delete(frame.id);
          waiter(frame);
        }
    }
  }
}

/**
 * Create a client and start connecting.
 * @param {string} url @param {Options} [options] @returns {TriowsClient}
 */
export function connect(url, options) {
  return new TriowsClient(url, options);
}

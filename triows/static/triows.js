// triows.js: the browser client of a triows server (protocol v1). One ES module, no dependencies.
//
//   import { connect } from "/triows.js";
//   const client = connect("ws://localhost:8080/", { token: () => fetchToken() });
//   client.on("message", (m) => console.log(m.channel, m.seq, m.data));
//   client.on("gap", (g) => console.warn("missed", g.channel, g.first, g.last, g.reason));
//   client.on("error", (e) => console.error(e.code, e.message));
//   await client.subscribe("chat");
//   const seq = await client.publish("chat", { text: "hi" });
//
// It mirrors the Python client (triows.client): reconnects with exponential backoff and full
// jitter (always: also after a connection that worked, so that the clients of a restarted
// server do not all come back at once); resubscribes every channel with since/epoch, a window
// at a time, so the server replays what was missed, and reports `recovered`, or an exact `gap`
// when history no longer holds it; publishes are acked through promises, keep their id across
// resends (the server's dedupe makes a resend exactly-once for an authenticated user), wait in
// a bounded offline queue and go out a window at a time; an adaptive application-level ping
// finds dead links the browser does not notice; a refused handshake (401, 403) stops it.
// Its delivery rules are the Tracker below, written once in docs/delivery.md ("What a client
// does with it") and tested, with the Python tracker, against tests/vectors/tracking.json.
// Docs: docs/browser.md.

/** @typedef {"connecting" | "open" | "reconnecting" | "closed"} State */
/**
 * @typedef {object} Message
 * @property {"message"} type
 * @property {string} channel
 * @property {*} data
 * @property {number} seq
 * @property {string | null} id   the message id (`epoch:seq`)
 * @property {string | null} from
 * @property {number} timestamp
 * @property {boolean} own   true for this client's own publish (see the `echo` option)
 */
/**
 * @typedef {object} Gap  Messages the application will not get. `first`/`last` are the
 *   inclusive seq range when known, both null when the channel's epoch changed.
 * @property {"gap"} type
 * @property {string} channel
 * @property {number | null} first
 * @property {number | null} last
 * @property {string} reason
 */
/** @typedef {{type: "recovered", channel: string, epoch: string, seq: number}} Recovered */
/** @typedef {{channel: string, clientId: string, userId: string | null}} Member */
/** @typedef {{channel: string, count: number, members: Member[] | null}} Presence */
/** @typedef {{code: number, message: string, channel?: string}} ServerError */
/**
 * @typedef {object} Options
 * @property {string | (() => string | null | Promise<string | null>)} [token]
 *   sent as the `token` query parameter; a function is called before every connect, bounded by
 *   `connectTimeout`: one that fails or does not answer in time is a failed attempt.
 * @property {number} [backoffBase=0.5]  seconds
 * @property {number} [backoffCap=30]  seconds
 * @property {number | null} [maxAttempts=null]  failed attempts in a row before giving up
 * @property {number} [publishTimeout=10]  seconds for an ack
 * @property {number} [requestTimeout=10]  seconds for other replies
 * @property {number} [offlineQueueSize=1000]  publishes waiting for the server
 * @property {number} [publishWindow=16]  publishes sent and not acked yet, at most
 * @property {number} [resubscribeWindow=16]  resubscribes awaiting their reply, at most
 * @property {number} [pingMin=5]  seconds
 * @property {number} [pingMax=60]  seconds
 * @property {number} [pingTimeout=10]  seconds for a pong
 * @property {number} [connectTimeout=10]  seconds for the token and then for the welcome
 * @property {boolean} [echo=false]  emit this client's own publishes as `message` events
 *   (with `own: true`) once acked; the server never sends a publisher its own messages
 * @property {typeof WebSocket} [WebSocket]  the WebSocket class (default: the global one)
 * @property {typeof fetch} [fetch]  asks the server's /ready after a refused handshake
 *   (default: the global fetch)
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
/** Resubscribe refusals that mean "not now": the node cannot (Redis away), retried by
 *  reconnecting with growing backoff. A 429 (rate limit) is retried on the same connection. */
const REFUSED_FOR_NOW = new Set([500, 503]);
const RATE_LIMITED = 429;
/** Handshake refusals that no retry can fix (as in triows.client). */
const PERMANENT = new Set([400, 401, 403, 404]);
/** How many handshakes refused while the server accepts others (a browser cannot see the
 *  status) make the client stop. */
const REFUSALS_TO_STOP = 2;
/** As CLIENT_IDS_KEPT and EPOCHS_LEFT_KEPT in triows/_core/tracking.py (the vectors pin them). */
const CLIENT_IDS_KEPT = 16;
const EPOCHS_LEFT_KEPT = 4;

/** Full jitter: a random delay below an exponentially growing cap. */
function backoff(attempt, base, cap) {
  return Math.random() * Math.min(cap, base * 2 ** Math.min(attempt, 62));
}

/** A sequence number as the server writes it (a whole number, 0 or more), else null. */
function seqOf(value) {
  return Number.isInteger(value) && value >= 0 ? value : null;
}

/** A `gap` as [first, last], or null when it is not two seqs in order. */
function rangeOf(value) {
  if (!Array.isArray(value) || value.length !== 2) return null;
  const [first, last] = value.map(seqOf);
  return first === null || last === null || first > last ? null : [first, last];
}

/** Seqs above the cursor that are acked to us become the cursor; those at or below it go. */
function settle(cursor) {
  while (cursor.own.has(cursor.seq + 1)) cursor.seq += 1;
  for (const s of cursor.own) if (s <= cursor.seq) cursor.own.delete(s);
}

/** Exact ranges of first..last still missing: above the cursor, not our own. */
function gaps(channel, cursor, first, last, reason) {
  const found = [];
  let low = Math.max(first, cursor.seq + 1);
  const own = [...cursor.own].filter((s) => s >= low && s <= last).sort((a, b) => a - b);
  for (const s of own) {
    if (s > low) found.push({ type: "gap", channel, first: low, last: s - 1, reason });
    low = s + 1;
  }
  if (low <= last) found.push({ type: "gap", channel, first: low, last, reason });
  return found;
}

/**
 * What the application has seen per channel, so that it gets each message once, in order, or
 * an exact gap. The rules are docs/delivery.md's ("What a client does with it"); this class
 * and triows/_core/tracking.py both pass tests/vectors/tracking.json. Every method returns the
 * events for the application: `message`, `gap` and `recovered` objects (with their `type`).
 */
export class Tracker {
  constructor() {
    /** @type {Map<string, {epoch: string | null, seq: number, own: Set<number>, left: string[]}>} */
    this.cursors = new Map();
    /** client ids of the last connections: replayed messages from them are ours */
    this.myIds = [];
    /** publish id -> channel, from sending until its ack or error (late acks included) */
    this.expected = new Map();
  }
  track(channel) {
    if (!this.cursors.has(channel)) this.cursors.set(channel, { epoch: null, seq: 0, own: new Set(), left: [] });
  }
  untrack(channel) {
    this.cursors.delete(channel);
  }
  tracking(channel) {
    return this.cursors.has(channel);
  }
  addClientId(clientId) {
    this.myIds = this.myIds.filter((id) => id !== clientId);
    this.myIds.push(clientId);
    if (this.myIds.length > CLIENT_IDS_KEPT) this.myIds.shift();
  }
  /** @returns {{since: number, epoch: string} | null} what to resubscribe with */
  resumeFrom(channel) {
    const c = this.cursors.get(channel);
    return c && c.epoch !== null ? { since: c.seq, epoch: c.epoch } : null;
  }
  expectAck(id, channel) {
    this.expected.set(id, channel);
  }
  forgetAck(id) {
    this.expected.delete(id);
  }
  onAck(id, seq) {
    const channel = this.expected.get(id);
    this.expected.delete(id);
    const c = channel === undefined ? undefined : this.cursors.get(channel);
    if (c && seq > c.seq) {
      c.own.add(seq);
      settle(c);
    }
  }
  /** Any frame from the server. */
  receive(frame) {
    switch (frame.type) {
      case "message":
        return this.onMessage(frame);
      case "subscribed":
        return this.onSubscribed(frame);
      case "ack": {
        const seq = seqOf(frame.seq);
        if (seq !== null) this.onAck(frame.id, seq);
        return [];
      }
      case "error":
        this.forgetAck(frame.id);
        return [];
      default:
        return [];
    }
  }
  onSubscribed(frame) {
    const { channel, epoch } = frame;
    const seq = seqOf(frame.seq);
    // malformed: nothing to go by
    if (typeof channel !== "string" || typeof epoch !== "string" || seq === null) return [];
    const c = this.cursors.get(channel);
    if (!c) return [];
    const recovered = frame.recovered ?? null;
    const gap = frame.gap ?? null;
    if (gap !== null && rangeOf(gap) === null) return []; // malformed
    if (c.epoch === null) {
      // the first subscription: live from here
      c.epoch = epoch;
      c.seq = seq;
      settle(c);
      return [];
    }
    if (c.left.includes(epoch)) {
      // A node that has not seen the numbering restart yet: nothing missed, and what it sends
      // of that old numbering is not delivered (onMessage). The cursor stays.
      return recovered === null ? [] : [{ type: "recovered", channel, epoch: c.epoch, seq: c.seq }];
    }
    if (epoch !== c.epoch) {
      // the numbering restarted: what was missed cannot be known
      c.left.push(c.epoch);
      if (c.left.length > EPOCHS_LEFT_KEPT) c.left.shift();
      c.epoch = epoch;
      c.seq = seq;
      c.own.clear();
      return [{ type: "gap", channel, first: null, last: null, reason: "epoch changed" }];
    }
    if (recovered === null) return []; // a plain reply for a channel already followed
    if (gap === null) {
      // The server's notice that the numbering restarted, in the epoch this cursor already
      // has (it learnt it on another node): nothing new.
      if (recovered === false && seq === 0) return [];
      // Recovered, or a node behind our cursor (same epoch: it cannot have messages we
      // missed). The cursor stays: what the node sends up to it are duplicates.
      return [{ type: "recovered", channel, epoch, seq }];
    }
    const [first, last] = rangeOf(gap);
    const found = gaps(channel, c, first, last, "history expired");
    c.seq = Math.max(c.seq, last);
    settle(c);
    return found;
  }
  onMessage(frame) {
    const { channel } = frame;
    const seq = seqOf(frame.seq);
    if (typeof channel !== "string" || seq === null) return []; // malformed
    const c = this.cursors.get(channel);
    // not followed, not subscribed yet (live starts at the reply), or a duplicate
    if (!c || c.epoch === null || seq <= c.seq) return [];
    const id = typeof frame.id === "string" ? frame.id : null;
    // another epoch's message (a node behind a numbering restart)
    if (id !== null && id.includes(":") && id.slice(0, id.lastIndexOf(":")) !== c.epoch) return [];
    const events = gaps(channel, c, c.seq + 1, seq - 1, "messages skipped");
    const own = c.own.has(seq) || this.myIds.includes(frame.from);
    c.seq = seq;
    settle(c);
    if (!own) {
      events.push({
        type: "message",
        channel,
        data: frame.data,
        seq,
        id,
        from: frame.from ?? null,
        timestamp: frame.timestamp || 0,
        own: false,
      });
    }
    return events;
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
      publishWindow: 16,
      resubscribeWindow: 16,
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
    /** why the client closed (null while it is not closed) */
    this.closedReason = null;
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
    /** the current connection's state (see _connectOnce) */
    this._conn = null;
    /** welcomed on the current socket: publishes may go out */
    this._live = false;
    /** failed attempts in a row (a refused resubscribe counts, though welcomed) */
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

  /** Resolves once connected; rejects (with why) if the client closes first. */
  waitOpen() {
    if (this.state === "open") return Promise.resolve();
    if (this.state === "closed") return Promise.reject(this._closedError());
    return new Promise((resolve, reject) => {
      const off = this.on("state", ({ state }) => {
        if (state === "open") (off(), resolve());
        if (state === "closed") (off(), reject(this._closedError()));
      });
    });
  }

  /**
   * Follow a channel. Resolves with the server's `subscribed` reply, or at once with null
   * while offline: the subscription is then made (and kept) on every reconnect. A refusal
   * rejects with the server's code, and the channel is not followed.
   * @param {string} channel @returns {Promise<object | null>}
   */
  async subscribe(channel) {
    this._checkOpen();
    const followed = this._channels.has(channel);
    this._channels.add(channel);
    this._tracker.track(channel);
    if (this.state !== "open") return null;
    try {
      // The reply reaches the tracker in the frame handler, before any message after it.
      return await this._request(this._subscribeFrame(channel));
    } catch (error) {
      if (!followed) this._forget(channel);
      throw error;
    }
  }

  /** @param {string} channel */
  async unsubscribe(channel) {
    this._forget(channel);
    if (this.state === "open") await this._request({ type: "unsubscribe", channel });
  }

  /**
   * Publish; resolves with the message's seq from the server's ack. Rejects with a
   * TriowsError on timeout (the publish may still happen, never twice), a full offline
   * queue, the server's refusal (with its code), or a closed client.
   * @param {string} channel @param {*} data @param {{timeout?: number}} [options]
   * @returns {Promise<number>}
   */
  publish(channel, data, options = {}) {
    if (this.state === "closed") return Promise.reject(this._closedError());
    if (this._unsent.length + this._inflight.size >= this.options.offlineQueueSize) {
      return Promise.reject(
        new TriowsError(`${this.options.offlineQueueSize} publishes already wait for the server`),
      );
    }
    const id = `${this._idPrefix}-${++this._ids}`;
    let frame;
    try {
      frame = JSON.stringify({ type: "publish", channel, data, id });
    } catch (error) {
      return Promise.reject(new TriowsError(`publish data must be JSON: ${error.message}`));
    }
    return new Promise((resolve, reject) => {
      const item = { id, channel, data, frame, resolve, reject, timer: 0 };
      item.timer = this._after(options.timeout ?? this.options.publishTimeout, () => {
        // Not sent on this connection: it will not be (sent on an earlier one, its ack can no
        // longer come; a replay of it names an earlier client id of ours). Sent: its ack is
        // still expected (a late one tells the tracker which seq is ours), and it is resent
        // after a reconnect, as triows.client does.
        if (this._unsent.includes(item)) {
          this._unsent = this._unsent.filter((other) => other !== item);
          this._tracker.forgetAck(id);
        }
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
    return this._stop("client closed");
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

  _closedError() {
    return new TriowsError(this.closedReason === "client closed" ? "client is closed" : `client is closed: ${this.closedReason}`);
  }

  _checkOpen() {
    if (this.state === "closed") throw this._closedError();
  }

  _after(seconds, fn) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, seconds * 1000);
    this._timers.add(timer);
    return timer;
  }

  _clearTimer(timer) {
    clearTimeout(timer);
    this._timers.delete(timer);
  }

  _sleep(seconds) {
    return new Promise((resolve) => this._after(seconds, resolve));
  }

  _forget(channel) {
    this._channels.delete(channel);
    this._tracker.untrack(channel);
  }

  /** Stop for good: reject what is pending with the reason, close the socket. */
  _stop(reason) {
    if (this.state === "closed") return Promise.resolve();
    this._closing = true;
    this.closedReason = reason;
    this._setState("closed");
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    const error = this._closedError();
    for (const item of [...this._unsent, ...this._inflight.values()]) item.reject(error);
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

  /** The token for the next attempt, within connectTimeout; rejects when there is none. */
  _token() {
    const source = this.options.token;
    if (typeof source !== "function") return Promise.resolve(source ?? null);
    const seconds = this.options.connectTimeout;
    return new Promise((resolve, reject) => {
      const timer = this._after(seconds, () => reject(new Error(`no token within ${seconds}s`)));
      Promise.resolve()
        .then(() => source())
        .then(
          (token) => (this._clearTimer(timer), resolve(token)),
          (error) => (this._clearTimer(timer), reject(error)),
        );
    });
  }

  async _run() {
    let refusals = 0;
    while (!this._closing) {
      const outcome = await this._attempt();
      if (this._closing) return;
      this._failures = outcome.welcomed && !outcome.refusedForNow ? 0 : this._failures + 1;
      if (outcome.handshakeFailed) {
        // The handshake failed while the server answers: why, a browser cannot see.
        const status = outcome.status ?? (await this._probe());
        if (this._closing) return;
        if (PERMANENT.has(status)) {
          return this._refused(status, `the server refused the connection: HTTP ${status}`);
        }
        refusals = status === "ready" ? refusals + 1 : 0;
        if (refusals >= REFUSALS_TO_STOP) {
          return this._refused(0, `the server refused the connection ${refusals} times while accepting others: a bad or expired token (401) or a forbidden origin (403)?`);
        }
      } else {
        refusals = 0;
      }
      const { maxAttempts, backoffBase, backoffCap } = this.options;
      if (maxAttempts !== null && this._failures >= maxAttempts) {
        this._emit("error", { code: 0, message: `gave up after ${this._failures} attempts` });
        this._stop(`gave up after ${this._failures} attempts`);
        return;
      }
      this._setState("reconnecting");
      // Always a random wait, also after a connection that worked: the clients of a server
      // that restarted do not all come back in the same instant.
      await this._sleep(backoff(Math.max(0, this._failures - 1), backoffBase, backoffCap));
    }
  }

  _refused(code, message) {
    this._emit("error", { code, message });
    this._stop(message);
  }

  /** One attempt: the token, then a connection from open to close. */
  async _attempt() {
    let token;
    try {
      token = await this._token();
    } catch (error) {
      // No token: a failed attempt (never an anonymous connection instead).
      this._emit("error", { code: 0, message: `token: ${error?.message ?? error}` });
      return { welcomed: false };
    }
    if (this._closing) return { welcomed: false };
    let url = this.url;
    if (token) url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    return this._connectOnce(url);
  }

  /** After a handshake that failed with no status known: does the server accept others?
   *  "ready" when its /ready says 200, else null (down, overloaded, or not readable here). */
  async _probe() {
    const fetcher = this.options.fetch ?? globalThis.fetch;
    if (typeof fetcher !== "function") return null;
    const url = new URL(this.url);
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    url.pathname = "/ready";
    url.search = ""; // never the token
    let timer = 0;
    try {
      const timeout = new Promise((_, reject) => {
        timer = this._after(this.options.connectTimeout, () => reject(new Error("timeout")));
      });
      const response = await Promise.race([fetcher(url.href, { cache: "no-store" }), timeout]);
      return response && response.status === 200 ? "ready" : null;
    } catch {
      return null;
    } finally {
      this._clearTimer(timer);
    }
  }

  /** One connection, from open to close; resolves with how it went: {welcomed,
   *  refusedForNow (a resubscribe was refused for now), handshakeFailed (it never opened),
   *  status (the handshake's HTTP status, when the WebSocket implementation tells)}. */
  _connectOnce(url) {
    return new Promise((resolve) => {
      const Impl = this.options.WebSocket ?? globalThis.WebSocket;
      let ws;
      try {
        ws = new Impl(url);
      } catch (error) {
        this._emit("error", { code: 0, message: String(error) });
        resolve({ welcomed: false });
        return;
      }
      const conn = {
        ws,
        opened: false,
        welcomed: false,
        status: null,
        refusedForNow: false,
        /** channels still to resubscribe, and how many wait for their reply */
        queue: [],
        pending: 0,
        window: this.options.resubscribeWindow,
        retries: 0,
        paused: false,
      };
      this._ws = ws;
      this._conn = conn;
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
      ws.onopen = () => {
        conn.opened = true;
      };
      ws.onmessage = (event) => {
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch {
          return;
        }
        if (!conn.welcomed) {
          if (frame.type !== "welcome") return;
          conn.opened = conn.welcomed = true;
          this._clearTimer(connectTimer);
          this.clientId = frame.data.clientId;
          this.serverId = frame.data.serverId;
          this._tracker.addClientId(this.clientId);
          this.connects += 1;
          // Resubscribe first: whatever the application sends when it sees "open" (say, a
          // presence request) then reaches the server after the first subscriptions.
          this._live = true;
          this._resume(conn);
          this._setState("open");
          schedulePing();
          return;
        }
        this._onFrame(frame, conn);
      };
      ws.onerror = (event) => {
        // Browsers say nothing; Node's `ws` names the handshake's status.
        const found = /server response: (\d{3})/.exec(String(event?.message ?? event?.error?.message ?? ""));
        if (found) conn.status = Number(found[1]);
      };
      ws.onclose = (event) => {
        this._clearTimer(connectTimer);
        this._clearTimer(pingTimer);
        if (this._ws === ws) {
          this._ws = null;
          this._conn = null;
          this._live = false;
        }
        // Sent but not acked: sent again, first and with the same ids, on the next connection.
        this._unsent = [...this._inflight.values(), ...this._unsent];
        this._inflight.clear();
        for (const waiter of this._waiting.values()) waiter(null);
        this._waiting.clear();
        if (event.code === 1008 || event.code === 1011 || event.code === 1013) {
          this._emit("error", { code: event.code, message: event.reason || "connection closed" });
        }
        resolve({
          welcomed: conn.welcomed,
          refusedForNow: conn.refusedForNow,
          handshakeFailed: !conn.opened && !this._closing,
          status: conn.status,
        });
      };
    });
  }

  /** After the welcome: every followed channel again, a window at a time. */
  _resume(conn) {
    conn.queue = [...this._channels];
    this._pump(conn);
    this._flush();
  }

  _pump(conn) {
    while (conn === this._conn && !conn.paused && conn.queue.length && conn.pending < conn.window) {
      const channel = conn.queue.shift();
      if (!this._channels.has(channel)) continue;
      const frame = this._subscribeFrame(channel);
      frame.id = RESUBSCRIBE + channel;
      conn.pending += 1;
      this._send(frame);
    }
  }

  _resubscribed(conn, frame) {
    const channel = frame.id.slice(RESUBSCRIBE.length);
    conn.pending = Math.max(0, conn.pending - 1);
    if (frame.type === "subscribed") {
      this._onSubscribed(frame);
      // Slowly out of a rate limit: the wait learnt stays a while, the window grows back.
      conn.retries = Math.max(0, conn.retries - 1);
      conn.window = Math.min(this.options.resubscribeWindow, conn.window * 2);
    } else if (frame.code === RATE_LIMITED) {
      // Over the server's subscribe rate: again on this connection, one at a time, after a
      // random wait (a new connection would meet the same limit, and livelock).
      conn.queue.push(channel);
      conn.window = 1;
      if (!conn.paused) {
        conn.paused = true;
        const { backoffBase, backoffCap } = this.options;
        this._after(backoff(conn.retries++, backoffBase, backoffCap), () => {
          conn.paused = false;
          this._pump(conn);
        });
      }
    } else if (REFUSED_FOR_NOW.has(frame.code)) {
      conn.refusedForNow = true; // a failed attempt: the backoff grows
      conn.ws.close(4000, "resubscribe refused for now");
      return;
    } else {
      this._forget(channel);
      this._emit("error", { code: frame.code, message: frame.message, channel });
    }
    this._pump(conn);
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

  /** Send queued publishes, up to publishWindow unacked at once. */
  _flush() {
    if (!this._live || !this._ws || this._ws.readyState !== 1) return;
    while (this._unsent.length && this._inflight.size < this.options.publishWindow) {
      const item = this._unsent.shift();
      this._inflight.set(item.id, item);
      this._tracker.expectAck(item.id, item.channel);
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
        this._clearTimer(timer);
        if (reply && reply.type === "error") reject(new TriowsError(reply.message, reply.code));
        else resolve(reply);
      });
      this._send({ ...frame, id });
    });
  }

  _onSubscribed(frame) {
    for (const event of this._tracker.onSubscribed(frame)) this._emit(event.type, event);
  }

  _answer(frame) {
    const waiter = frame.id !== undefined ? this._waiting.get(frame.id) : undefined;
    if (!waiter) return false;
    this._waiting.delete(frame.id);
    waiter(frame);
    return true;
  }

  _onFrame(frame, conn) {
    switch (frame.type) {
      case "message":
        for (const event of this._tracker.onMessage(frame)) this._emit(event.type, event);
        return;
      case "ack": {
        this._tracker.onAck(frame.id, frame.seq); // also a late one: the seq is ours
        const item = this._inflight.get(frame.id);
        if (!item) return;
        this._inflight.delete(frame.id);
        this._clearTimer(item.timer);
        if (this.options.echo) {
          const epoch = this._tracker.resumeFrom(item.channel)?.epoch;
          this._emit("message", {
            type: "message",
            channel: item.channel,
            data: item.data,
            seq: frame.seq,
            id: epoch ? `${epoch}:${frame.seq}` : null,
            from: this.clientId,
            timestamp: Date.now(),
            own: true,
          });
        }
        item.resolve(frame.seq);
        this._flush();
        return;
      }
      case "subscribed":
        if (typeof frame.id === "string" && frame.id.startsWith(RESUBSCRIBE)) {
          this._resubscribed(conn, frame);
          return;
        }
        // Applied here, in the frame handler: a message right behind the reply (in the
        // same read) must meet the cursor the reply set.
        this._onSubscribed(frame);
        this._answer(frame);
        return;
      case "join":
      case "leave":
        if (this._channels.has(frame.channel)) {
          this._emit(frame.type, { channel: frame.channel, clientId: frame.clientId, userId: frame.userId ?? null });
        }
        return;
      case "error": {
        this._tracker.forgetAck(frame.id);
        const item = this._inflight.get(frame.id);
        if (item) {
          this._inflight.delete(frame.id);
          this._clearTimer(item.timer);
          item.reject(new TriowsError(frame.message, frame.code));
          this._flush();
          return;
        }
        if (typeof frame.id === "string" && frame.id.startsWith(RESUBSCRIBE)) {
          this._resubscribed(conn, frame);
          return;
        }
        if (!this._answer(frame)) this._emit("error", { code: frame.code, message: frame.message });
        return;
      }
      case "unsubscribed":
        if (!this._answer(frame) && frame.reason) {
          this._forget(frame.channel);
          this._emit("error", { code: 403, message: frame.reason, channel: frame.channel });
        }
        return;
      default:
        this._answer(frame);
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

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
// finds dead links the browser does not notice. It asks for refusals as close codes
// (`refusal=close`), since a browser cannot see a refused handshake's HTTP status: a refusal
// no retry can fix (401, 403) stops it, others (429, 503) are retried with backoff.
// Its rules are written once in docs/delivery.md and tested, with the Python client's, against
// shared vectors: the Tracker below against tests/vectors/tracking.json, the Pacer and
// Attempts against tests/vectors/retry.json. Docs: docs/browser.md.

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
 * @property {number} [connectTimeout=10]  seconds for the token and then for the welcome;
 *   and for the first connection as a whole (attempts and waits): none by then closes it
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
/** Resubscribe refusals that mean "not now": the node cannot (Redis away), retried by
 *  reconnecting with growing backoff. A 429 (rate limit) is retried on the same connection. */
const REFUSED_FOR_NOW = new Set([500, 503]);
const RATE_LIMITED = 429;
/** Publish refusals after which the publish was not numbered: sent again after a pause. */
const PUBLISH_NOT_NOW = new Set([429, 503]);
/** As triows/_core/close_codes.py: refusals no retry can fix, and the close-code ranges. */
const PERMANENT = new Set([400, 401, 403, 404]);
const isDoNotReconnect = (code) => code >= 4500 && code < 5000;
/** As triows/_core/close_codes.py's is_disconnect (tests/vectors/retry.json "disconnects"):
 *  a server close the client reports ("disconnected"), before the welcome as after it: a code
 *  of 4000-4999 that carries no refusal (4400-4549). */
export const isDisconnect = (code) => code !== null && code >= 4000 && code < 5000 && !(code >= 4400 && code < 4550);
/** As triows/_core/retry.py: closes after a welcome that mean "the connection worked", the
 *  seconds after which any connection worked, and 401s in a row (each with a fresh token from
 *  a token function) that stop the client. */
const WORKED = new Set([null, 1000, 1001, 1005, 1006]);
const STABLE_AFTER = 10;
const UNAUTHORIZED_TO_STOP = 2;
/** As CLIENT_IDS_KEPT and EPOCHS_LEFT_KEPT in triows/_core/tracking.py (the vectors pin them). */
const CLIENT_IDS_KEPT = 16;
const EPOCHS_LEFT_KEPT = 4;

/** Full jitter: a random delay below an exponentially growing cap. */
function backoff(attempt, base, cap, random = Math.random) {
  return random() * Math.min(cap, base * 2 ** Math.min(Math.max(attempt, 0), 62));
}

/** The HTTP status a refusal close code carries (as triows/_core/close_codes.py), else null:
 *  4500 + s - 400 for 400/401/403/404, 4400 + s - 400 for 429, 4450 + s - 500 for a 5xx. */
export function refusalStatus(code) {
  if (code >= 4500 && code < 4550) return PERMANENT.has(400 + code - 4500) ? 400 + code - 4500 : null;
  if (code >= 4400 && code < 4450) return PERMANENT.has(400 + code - 4400) ? null : 400 + code - 4400;
  if (code >= 4450 && code < 4500) return 500 + code - 4450;
  return null;
}

/**
 * Requests that wait for an answer (resubscribes, publishes) go out `window` at a time; a
 * "not now" sends one again later, first, after a pause drawn once per pause. The rules are
 * triows/_core/retry.py's `Pacer`; both pass tests/vectors/retry.json.
 */
export class Pacer {
  constructor(window, base, cap, random = Math.random) {
    if (window < 1) throw new RangeError("the window must be at least 1");
    this.full = this.window = window;
    this.base = base;
    this.cap = cap;
    this.random = random;
    /** pauses in a row (each answer takes one off): the next pause's exponent */
    this.retries = 0;
    this.paused = false;
    this._again = [];
    this._queue = [];
    /** @type {Set<any>} in sending order */
    this._inFlight = new Set();
  }
  get length() {
    return this._again.length + this._queue.length + this._inFlight.size;
  }
  get inFlight() {
    return this._inFlight.size;
  }
  add(key) {
    this._queue.push(key);
  }
  /** Take back a request not sent (or to be sent again); true if it was waiting. */
  discard(key) {
    for (const waiting of [this._again, this._queue]) {
      const at = waiting.indexOf(key);
      if (at >= 0) {
        waiting.splice(at, 1);
        return true;
      }
    }
    return false;
  }
  /** What may go now, in order (now counted in flight); nothing while paused. */
  take() {
    const taken = [];
    if (this.paused) return taken;
    while (this._inFlight.size < this.window && (this._again.length || this._queue.length)) {
      const key = (this._again.length ? this._again : this._queue).shift();
      this._inFlight.add(key);
      taken.push(key);
    }
    return taken;
  }
  /** A final answer (done, or refused for good): true if `key` was in flight. */
  answered(key) {
    if (!this._inFlight.delete(key)) return false;
    this.retries = Math.max(0, this.retries - 1);
    this.window = Math.min(this.full, this.window * 2);
    return true;
  }
  /** "Not now": the wait before resume() when this refusal starts a pause, else null. */
  refused(key) {
    if (!this._inFlight.delete(key)) return null;
    this._again.push(key);
    this.window = 1;
    if (this.paused) return null;
    this.paused = true;
    return backoff(this.retries++, this.base, this.cap, this.random);
  }
  resume() {
    this.paused = false;
  }
  /** A new connection: what was in flight goes first again, in its order; no pause. */
  restart() {
    this._again = [...this._inFlight, ...this._again];
    this._inFlight.clear();
    this.window = this.full;
    this.retries = 0;
    this.paused = false;
  }
}

/**
 * The reconnect rule (triows/_core/retry.py's `Attempts`, same vectors): after each attempt,
 * stop for good (`stop`: "refused", "gave up", "no connection") or wait `wait` seconds.
 */
export class Attempts {
  constructor({ base, cap, maxAttempts, tokenFunction, connectTimeout, now, random = Math.random }) {
    Object.assign(this, { base, cap, maxAttempts, tokenFunction, random });
    /** no first connection by then: stop */
    this.firstDeadline = now + connectTimeout;
    this.connected = false;
    this.failures = 0;
    this._unauthorized = 0;
  }
  /** @param {{welcomed?: boolean, status?: number | null, code?: number | null, refusedForNow?: boolean, lasted?: number}} ending */
  ended({ welcomed = false, status = null, code = null, refusedForNow = false, lasted = 0 }, now) {
    // a refusal as a close code: its HTTP status
    if (status === null && code !== null && !welcomed) status = refusalStatus(code);
    this._unauthorized = status === 401 ? this._unauthorized + 1 : 0;
    this.connected = this.connected || welcomed;
    let refused = PERMANENT.has(status) || isDoNotReconnect(code);
    // The function may have handed one stale token: it gets a second chance.
    if (status === 401 && this.tokenFunction) refused = this._unauthorized >= UNAUTHORIZED_TO_STOP;
    const failed = !welcomed || refusedForNow || (!WORKED.has(code) && lasted < STABLE_AFTER);
    this.failures = failed ? this.failures + 1 : 0;
    const verdict = (extra) => ({ stop: null, wait: 0, failures: this.failures, status, code, ...extra });
    if (refused) return verdict({ stop: "refused" });
    let wait = backoff(this.failures - 1, this.base, this.cap, this.random);
    if (!this.connected) {
      const left = this.firstDeadline - now;
      if (left <= 0) return verdict({ stop: "no connection" });
      wait = Math.min(wait, left);
    }
    if (this.maxAttempts !== null && this.failures >= this.maxAttempts) return verdict({ stop: "gave up" });
    return verdict({ wait });
  }
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

const MAX_EPOCH_LENGTH = 64;

/**
 * Refuse, before anything is sent, a `subscribe` position the server would refuse or that
 * means nothing: the rule of triows/_core/tracking.py's check_position, both passing
 * tests/vectors/positions.json. `undefined` and `null` are "not given". `since` and `rewind`
 * are whole numbers from 0 to Number.MAX_SAFE_INTEGER; `epoch` a string of 1 to 64 characters;
 * a `since` above 0 needs its `epoch` (`since: 0` alone is "a channel never numbered") and an
 * `epoch` needs its `since`. Throws a TypeError with the reason.
 */
export function checkPosition(since, epoch, rewind) {
  for (const [key, value] of [["since", since], ["rewind", rewind]]) {
    if (value != null && !(Number.isInteger(value) && value >= 0 && value <= Number.MAX_SAFE_INTEGER)) {
      throw new TypeError(`'${key}' must be an integer from 0 to ${Number.MAX_SAFE_INTEGER}`);
    }
  }
  // Characters as the server counts them (code points), not UTF-16 units.
  if (epoch != null && !(typeof epoch === "string" && epoch.length > 0 && [...epoch].length <= MAX_EPOCH_LENGTH)) {
    throw new TypeError(`'epoch' must be a string of 1 to ${MAX_EPOCH_LENGTH} characters`);
  }
  if (epoch == null && since != null && since !== 0) throw new TypeError("a position with a seq has an epoch");
  if (epoch != null && since == null) throw new TypeError("an epoch needs its since");
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
  /** Follow from a position read elsewhere (/api/channel): the first reply is a resume. */
  startAt(channel, seq, epoch) {
    this.cursors.set(channel, { epoch, seq, own: new Set(), left: [] });
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
      // the first subscription: live from here (with rewind: before the rewound messages)
      c.epoch = epoch;
      c.seq = seq;
      const rewound = seqOf(frame.rewound);
      if (rewound !== null && rewound <= seq) c.seq = seq - rewound;
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
    /** the close code and reason of the server's last close (4000-4499: the client
     *  reconnects; 4500-4999: it stopped); null until the server closes a connection */
    this.closeCode = null;
    this.closeReason = null;
    /** channel -> rewind asked (sent with its first subscribe, also one made on connect) */
    this._rewind = new Map();
    this._pongsInARow = 0;
    this._listeners = new Map();
    this._tracker = new Tracker();
    /** @type {Set<string>} channels followed */
    this._channels = new Set();
    const { publishWindow, backoffBase, backoffCap } = this.options;
    /** publishes by id, from the call until their ack or error, and their pacing by id */
    this._items = new Map();
    this._publishes = new Pacer(publishWindow, backoffBase, backoffCap);
    /** replies awaited by request id */
    this._waiting = new Map();
    this._ids = 0;
    this._idPrefix = Math.random().toString(36).slice(2, 10);
    this._ws = null;
    /** the current connection's state (see _connectOnce) */
    this._conn = null;
    /** welcomed on the current socket: publishes may go out */
    this._live = false;
    this._timers = new Set();
    this._closing = false;
    this._run();
  }

  /**
   * Listen for "message", "gap", "recovered", "join", "leave", "state", "error",
   * "subscribed" (a subscription the server made: {channel, server: true}), "unsubscribed"
   * (the server ended one: {channel, reason}) and "disconnected" (the server closed the
   * connection: {code, reason, reconnect}).
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
   * Follow a channel. Resolves with the server's `subscribed` reply, or with null while
   * offline (also when the connection drops before the reply): the subscription is then made
   * (and kept) on every reconnect. A refusal rejects with the server's code, and no answer
   * within requestTimeout rejects with code 0; either way the channel is not followed. With
   * `rewind: N` the channel's last N messages (as many as its history holds) come first, as
   * "message" events, then live ones; a reconnect resumes from the last one seen instead.
   * With `since` and `epoch` (a position from /api/channel: "load state, then subscribe")
   * every message after it comes first, or the gap; `since: 0, epoch: null` (a channel never
   * numbered) is every message history holds.
   * @param {string} channel @param {{rewind?: number, since?: number, epoch?: string | null}} [options]
   * @returns {Promise<object | null>}
   */
  async subscribe(channel, options = {}) {
    this._checkOpen();
    const followed = this._channels.has(channel);
    const { since, epoch } = options;
    checkPosition(since, epoch, options.rewind);
    let rewind = options.rewind;
    if (!followed && since != null && epoch == null) {
      rewind = Number.MAX_SAFE_INTEGER; // since 0: never numbered, all that came since is in history
    }
    this._channels.add(channel);
    this._tracker.track(channel);
    if (!followed && epoch != null) this._tracker.startAt(channel, since, epoch);
    else if (!followed && rewind !== undefined) this._rewind.set(channel, rewind);
    if (!this._live) return null;
    try {
      // The reply reaches the tracker in the frame handler, before any message after it.
      return await this._request(this._subscribeFrame(channel));
    } catch (error) {
      if (!followed) {
        this._forget(channel);
        // No answer in time: the server may still subscribe; it is told not to.
        if (error.timeout) this._send({ type: "unsubscribe", channel });
      }
      throw error;
    }
  }

  /** @param {string} channel */
  async unsubscribe(channel) {
    this._forget(channel);
    if (!this._live) return;
    try {
      await this._request({ type: "unsubscribe", channel });
    } catch (error) {
      if (!error.timeout) throw error;
    }
  }

  /**
   * Publish; resolves with the message's seq from the server's ack. Rejects with a
   * TriowsError on timeout (the publish may still happen: exactly once for an authenticated
   * user, at least once for an anonymous one), a full offline queue, the server's refusal
   * (with its code), or a closed client. A publish the server refused for now (429, 503:
   * not numbered) is sent again with its id after a pause, within its timeout.
   * @param {string} channel @param {*} data @param {{timeout?: number}} [options]
   * @returns {Promise<number>}
   */
  publish(channel, data, options = {}) {
    if (this.state === "closed") return Promise.reject(this._closedError());
    if (this._publishes.length >= this.options.offlineQueueSize) {
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
        // Waiting to be sent (again): it will not be (sent on an earlier connection, its ack
        // can no longer come; a replay of it names an earlier client id of ours). In flight:
        // its ack is still expected (a late one tells the tracker which seq is ours), and it
        // is resent after a reconnect, as triows.client does.
        if (this._publishes.discard(id)) {
          this._items.delete(id);
          this._tracker.forgetAck(id);
        }
        reject(new TriowsError(`no ack for publish ${id} to ${channel}`));
      });
      this._items.set(id, item);
      this._publishes.add(id);
      this._flush();
    });
  }

  /**
   * Who is subscribed to a presence channel (the server's `--presence` patterns). Rejects at
   * once while offline, as triows.client raises.
   * @param {string} channel @returns {Promise<Presence>}
   */
  async presence(channel) {
    this._checkOpen();
    if (!this._live) throw new TriowsError("not connected");
    const reply = await this._request({ type: "presence", channel });
    if (reply === null) throw new TriowsError("connection lost");
    return { channel, count: reply.count, members: reply.members };
  }

  /**
   * A page of a channel's history (the token must allow subscribing to it): the messages
   * after `since`, oldest first, or with `reverse` those before `since`, newest first ("load
   * older": `since` = the oldest seq shown). Each message is as it was delivered.
   * @param {string} channel @param {{limit?: number, since?: number, reverse?: boolean}} [options]
   * @returns {Promise<{channel: string, epoch: string | null, seq: number, messages: object[]}>}
   */
  async history(channel, { limit = 100, since, reverse = false } = {}) {
    this._checkOpen();
    if (!this._live) throw new TriowsError("not connected");
    const frame = { type: "history", channel, limit };
    if (since !== undefined && since !== null) frame.since = since;
    if (reverse) frame.reverse = true;
    const reply = await this._request(frame);
    if (reply === null) throw new TriowsError("connection lost");
    return { channel, epoch: reply.epoch ?? null, seq: reply.seq, messages: reply.messages };
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
    this._rewind.delete(channel);
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
    for (const item of this._items.values()) item.reject(error);
    this._items.clear();
    this._publishes = new Pacer(this.options.publishWindow, this.options.backoffBase, this.options.backoffCap);
    for (const waiter of this._waiting.values()) waiter(null);
    this._waiting.clear();
    const ws = this._ws;
    if (!ws || ws.readyState >= 2) return Promise.resolve();
    return new Promise((resolve) => {
      // Bounded, and the bound is cleared once the close comes: no timer outlives it.
      const timer = setTimeout(resolve, 2000);
      ws.addEventListener("close", () => (clearTimeout(timer), resolve()), { once: true });
      ws.close(1000, "client closed");
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

  /** Attempt after attempt, as `Attempts` rules: stop for good, or wait and try again. */
  async _run() {
    const { maxAttempts, backoffBase, backoffCap, connectTimeout, token } = this.options;
    const attempts = new Attempts({
      base: backoffBase,
      cap: backoffCap,
      maxAttempts,
      tokenFunction: typeof token === "function",
      connectTimeout,
      now: Date.now() / 1000,
    });
    while (!this._closing) {
      const ending = await this._attempt();
      if (this._closing) return;
      const verdict = attempts.ended(ending, Date.now() / 1000);
      if (verdict.stop === "refused") {
        const why = verdict.status !== null ? `HTTP ${verdict.status}` : `close ${verdict.code}`;
        return this._refused(verdict.status ?? verdict.code, `the server refused the connection: ${why}${ending.reason ? ` (${ending.reason})` : ""}`);
      }
      if (verdict.stop === "no connection") {
        return this._refused(0, `no connection to ${this.url} within ${connectTimeout}s (connectTimeout)`);
      }
      if (verdict.stop === "gave up") return this._refused(0, `gave up after ${verdict.failures} attempts`);
      this._setState("reconnecting");
      // Always a random wait, also after a connection that worked: the clients of a server
      // that restarted do not all come back in the same instant.
      await this._sleep(verdict.wait);
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
    // Refusals as close codes: a browser cannot see a refused handshake's HTTP status.
    let url = this.url + (this.url.includes("?") ? "&" : "?") + "refusal=close";
    if (token) url += "&token=" + encodeURIComponent(token);
    return this._connectOnce(url);
  }

  /** One connection, from open to close; resolves with how it ended, for `Attempts`:
   *  {welcomed, status (a refused handshake's HTTP status, when the WebSocket implementation
   *  tells), code (the server's close code; null when the client closed), refusedForNow (a
   *  resubscribe was refused for now), reason}. */
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
        welcomed: false,
        status: null,
        refusedForNow: false,
        /** the client closed this socket itself (its close code is not the server's) */
        closedByClient: false,
        /** channels still to resubscribe, paced */
        resubscribes: null,
      };
      const close = (code, reason) => {
        conn.closedByClient = true;
        ws.close(code, reason);
      };
      conn.close = close;
      this._ws = ws;
      this._conn = conn;
      let pingTimer = 0;
      const connectTimer = this._after(this.options.connectTimeout, () => close(4000, "connect timeout"));
      const schedulePing = () => {
        pingTimer = this._after(this.pingInterval, async () => {
          const started = performance.now();
          const pong = await this._request({ type: "ping" }, this.options.pingTimeout).catch(() => null);
          if (ws !== this._ws || this._closing) return;
          if (pong === null) {
            this.pingInterval = Math.max(this.options.pingMin, this.pingInterval / 2);
            this._pongsInARow = 0;
            close(4000, "no pong"); // the browser may not notice a dead link for minutes
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
        if (!conn.welcomed) {
          if (frame.type !== "welcome") return;
          conn.welcomed = true;
          conn.welcomedAt = Date.now() / 1000;
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
        // Browsers say nothing; Node's `ws` names the status of a refusal by HTTP.
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
        this._publishes.restart();
        for (const waiter of this._waiting.values()) waiter(null);
        this._waiting.clear();
        const code = conn.closedByClient ? null : (event.code ?? null);
        if (conn.welcomed && code !== null && !WORKED.has(code)) {
          this._emit("error", { code, message: event.reason || "connection closed" });
        }
        if (isDisconnect(code)) {
          // The server disconnected this client (Server.disconnect, revoke), also before its
          // welcome (a revoke served during the handshake): said, with whether it connects
          // again (the ranges: 4000-4499 yes, 4500-4999 no).
          this.closeCode = code;
          this.closeReason = event.reason || "";
          this._emit("disconnected", { code, reason: this.closeReason, reconnect: code < 4500 });
        }
        resolve({
          welcomed: conn.welcomed,
          status: conn.status,
          code,
          refusedForNow: conn.refusedForNow,
          lasted: conn.welcomed ? Date.now() / 1000 - conn.welcomedAt : 0,
          reason: event.reason || "",
        });
      };
    });
  }

  /** After the welcome: every followed channel again, a window at a time, then publishes. */
  _resume(conn) {
    const { resubscribeWindow, backoffBase, backoffCap } = this.options;
    conn.resubscribes = new Pacer(resubscribeWindow, backoffBase, backoffCap);
    for (const channel of this._channels) conn.resubscribes.add(channel);
    this._pump(conn);
    this._flush();
  }

  _pump(conn) {
    if (conn !== this._conn) return;
    for (let taken = conn.resubscribes.take(); taken.length; taken = conn.resubscribes.take()) {
      for (const channel of taken) {
        if (!this._channels.has(channel)) {
          conn.resubscribes.answered(channel); // unsubscribed meanwhile: room for the next
          continue;
        }
        const frame = this._subscribeFrame(channel);
        frame.id = RESUBSCRIBE + channel;
        this._send(frame);
      }
    }
  }

  _resubscribed(conn, frame) {
    const channel = frame.id.slice(RESUBSCRIBE.length);
    const pacer = conn.resubscribes;
    if (frame.type === "subscribed") {
      this._onSubscribed(frame);
      pacer.answered(channel);
    } else if (frame.code === RATE_LIMITED && frame.limit !== "subscriptions") {
      // Over the server's subscribe rate: again on this connection, after a pause (a new
      // connection would meet the same limit, and livelock).
      const wait = pacer.refused(channel);
      if (wait !== null) {
        this._after(wait, () => {
          pacer.resume();
          this._pump(conn);
        });
      }
    } else if (REFUSED_FOR_NOW.has(frame.code)) {
      pacer.answered(channel);
      conn.refusedForNow = true; // a failed attempt: the backoff grows
      conn.close(4000, "resubscribe refused for now");
      return;
    } else {
      // Refused for good (403; 429 over --max-subscriptions): forgotten, and said.
      pacer.answered(channel);
      this._forget(channel);
      this._emit("error", { code: frame.code, message: frame.message, channel });
    }
    this._pump(conn);
  }

  _subscribeFrame(channel) {
    const frame = { type: "subscribe", channel, id: `${this._idPrefix}-s${++this._ids}` };
    const resume = this._tracker.resumeFrom(channel);
    if (resume) Object.assign(frame, resume);
    else if (this._rewind.has(channel)) frame.rewind = this._rewind.get(channel);
    return frame;
  }

  _send(frame) {
    if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(frame));
  }

  /** Send what the publish pacer lets go: a window of unacked publishes at most. */
  _flush() {
    if (!this._live || !this._ws || this._ws.readyState !== 1) return;
    for (const id of this._publishes.take()) {
      const item = this._items.get(id);
      this._tracker.expectAck(id, item.channel);
      this._ws.send(item.frame);
    }
  }

  /** Send a request with an id; resolves with its reply, or null when the connection drops.
   *  Error replies, and no reply within `timeout`, reject with a TriowsError (the latter
   *  with `timeout` true). */
  _request(frame, timeout = this.options.requestTimeout) {
    const id = frame.id ?? `${this._idPrefix}-r${++this._ids}`;
    return new Promise((resolve, reject) => {
      const timer = this._after(timeout, () => {
        this._waiting.delete(id);
        const what = frame.channel === undefined ? frame.type : `${frame.type} ${frame.channel}`;
        const error = new TriowsError(`no answer to ${what} within ${timeout}s`);
        error.timeout = true;
        reject(error);
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

  /** A publish's ack or error: its promise settles, the pacer lets the next one go. A
   *  refusal for now (not numbered) sends it again, with its id, after a pause. */
  _onPublishAnswer(frame) {
    const item = this._items.get(frame.id);
    if (!item) return false;
    if (frame.type === "error" && PUBLISH_NOT_NOW.has(frame.code)) {
      const wait = this._publishes.refused(frame.id);
      if (wait !== null) {
        this._after(wait, () => {
          this._publishes.resume();
          this._flush();
        });
      }
      return true;
    }
    this._publishes.answered(frame.id);
    this._items.delete(frame.id);
    this._clearTimer(item.timer);
    if (frame.type === "error") {
      item.reject(new TriowsError(frame.message, frame.code));
    } else {
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
    }
    this._flush();
    return true;
  }

  _onFrame(frame, conn) {
    switch (frame.type) {
      case "message":
        for (const event of this._tracker.onMessage(frame)) this._emit(event.type, event);
        return;
      case "ack":
        this._tracker.receive(frame); // also a late one: the seq is ours
        this._onPublishAnswer(frame);
        return;
      case "subscribed":
        if (typeof frame.id === "string" && frame.id.startsWith(RESUBSCRIBE)) {
          this._resubscribed(conn, frame);
          return;
        }
        if (frame.server === true && typeof frame.channel === "string" && !this._channels.has(frame.channel)) {
          // A subscription the server made (Server.subscribe): followed as the app's own.
          this._channels.add(frame.channel);
          this._tracker.track(frame.channel);
          this._onSubscribed(frame);
          this._emit("subscribed", { channel: frame.channel, server: true });
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
          this._emit(frame.type, {
            channel: frame.channel,
            clientId: frame.clientId,
            userId: frame.userId ?? null,
            info: frame.info ?? null,
          });
        }
        return;
      case "error": {
        if (this._items.has(frame.id)) {
          // A refusal for now leaves the ack expected: the publish goes again, same id.
          if (!PUBLISH_NOT_NOW.has(frame.code)) this._tracker.forgetAck(frame.id);
          this._onPublishAnswer(frame);
          return;
        }
        this._tracker.forgetAck(frame.id);
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
          this._emit("unsubscribed", { channel: frame.channel, reason: frame.reason });
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

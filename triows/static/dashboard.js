// The triows dashboard. Plain JavaScript, no dependency, no build step.
//
// Every figure comes through the authenticated HTTP API, with the key the operator typed (kept
// in this tab's sessionStorage only):
//   GET  /stats?history=N         the monitor's ring (the last hour at start), then its newest
//                                 samples once a second; every worker's summary and the total
//   GET  /api/channels            the busiest channels
//   POST /api/channel, /api/history, /api/presence   one channel opened
//   POST /api/publish             the publish form
//   POST /api/connections         a user's or a client's connections
//   POST /api/disconnect, /api/unsubscribe   after a confirmation
// Text from the server (channel names, data, user ids) only ever goes into textContent.
"use strict";

(() => {
  const STORE = "triows.dashboard.key";
  const HOUR = 3600;
  const PAGE = 20; // history messages per page
  const CHANNELS_EVERY = 3; // seconds between two refreshes of an open channel, and at least
  // between two channel listings: a listing reads every channel of every node, so with more
  // than a thousand channels it comes 3 s later per thousand (at most every 5 minutes).
  let listEvery = CHANNELS_EVERY;
  let listedAt = 0;
  const $ = (id) => document.getElementById(id);

  let key = sessionStorage.getItem(STORE);
  let timer = null;
  let ticks = 0;

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // -- the API ---------------------------------------------------------------------------------

  async function api(method, path, body) {
    const headers = { "X-API-Key": key || "" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
      });
    } catch (error) {
      throw new ApiError(0, "the server cannot be reached");
    }
    let value = null;
    try {
      value = await response.json();
    } catch (error) {
      value = null;
    }
    if (response.status === 401) {
      signOut("The server refused the key: enter it again.");
      throw new ApiError(401, (value && value.error) || "wrong API key");
    }
    if (!response.ok) {
      const message = (value && value.error) || `HTTP ${response.status}`;
      throw new ApiError(response.status, message);
    }
    return value;
  }

  // -- units -----------------------------------------------------------------------------------

  const fixed = (value, digits) => (Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(digits));
  function count(value) {
    if (value === null || value === undefined) return "–";
    const n = Number(value);
    if (Math.abs(n) >= 1e6) return `${fixed(n / 1e6, 2)}M`;
    if (Math.abs(n) >= 1e4) return `${fixed(n / 1e3, 1)}k`;
    return Number.isInteger(n) ? String(n) : n.toFixed(1);
  }
  const UNITS = {
    count: (v) => count(v),
    rate: (v) => (v === null || v === undefined ? "–" : `${count(v)}/s`),
    seconds: (v) => {
      if (v === null || v === undefined) return "–";
      if (v < 1) return `${fixed(v * 1000, v < 0.01 ? 2 : 1)} ms`;
      return `${fixed(v, 2)} s`;
    },
    cores: (v) => (v === null || v === undefined ? "–" : `${v.toFixed(2)} cores`),
    bytes: (v) => {
      if (v === null || v === undefined) return "–";
      if (v >= 2 ** 30) return `${(v / 2 ** 30).toFixed(2)} GiB`;
      if (v >= 2 ** 20) return `${fixed(v / 2 ** 20, 1)} MiB`;
      if (v >= 1024) return `${fixed(v / 1024, 1)} KiB`;
      return `${v} B`;
    },
    duration: (v) => {
      if (v === null || v === undefined) return "–";
      if (v < 60) return `${v.toFixed(0)} s`;
      if (v < 3600) return `${Math.floor(v / 60)} min`;
      if (v < 86400) return `${(v / 3600).toFixed(1)} h`;
      return `${(v / 86400).toFixed(1)} d`;
    },
  };

  function element(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  // -- the figures: one series per worker, and the whole server's ------------------------------

  // pid -> points ({t, ...sample}); "total" -> the whole server's points. With one process the
  // total is that process's series itself.
  const series = new Map();
  let workersSeen = new Set();
  let latest = null; // the last /stats answer

  function append(name, point) {
    if (!point || typeof point.time !== "number") return;
    let points = series.get(name);
    if (!points) series.set(name, (points = []));
    if (points.length && point.time <= points[points.length - 1].time) return;
    points.push(point);
    const oldest = point.time - HOUR;
    let drop = 0;
    while (drop < points.length && points[drop].time < oldest) drop += 1;
    if (drop) points.splice(0, drop);
  }

  function take(stats) {
    latest = stats;
    const workers = stats.workers || [];
    const answering = workers.find((w) => w.server_id === stats.server.server_id);
    workersSeen = new Set(workers.map((w) => String(w.pid)));
    for (const sample of stats.monitor.samples) {
      append(answering ? String(answering.pid) : "self", sample);
    }
    for (const worker of workers) {
      if (worker !== answering) append(String(worker.pid), worker);
    }
    if (workers.length > 1) {
      const total = stats.total;
      append("total", { ...total, broker_up: total.broker_state === "up" });
    }
  }

  function totalSeries() {
    if (workersSeen.size > 1) return series.get("total") || [];
    const [only] = workersSeen;
    return series.get(only) || series.get("self") || [];
  }

  // -- charts ----------------------------------------------------------------------------------

  const PALETTE = ["--s0", "--s1", "--s2", "--s3", "--s4", "--s5"];
  // lines: [field, label] of the whole server; perWorker: each worker drawn apart as well.
  const CHARTS = [
    { id: "connections", title: "Connections", unit: "count", lines: [["connections", "all"]], perWorker: true },
    { id: "rates", title: "Publications and deliveries", unit: "rate",
      lines: [["publish_rate", "published"], ["delivery_rate", "delivered"]] },
    { id: "ack", title: "Publish→ack", unit: "seconds", empty: "no WebSocket publish in this window",
      lines: [["ack_p50", "p50"], ["ack_p95", "p95"], ["ack_p99", "p99"]] },
    { id: "lag", title: "Delivery lag", unit: "seconds", empty: "measured through Redis only: none in this window",
      lines: [["lag_p50", "p50"], ["lag_p95", "p95"], ["lag_p99", "p99"]] },
    { id: "loop", title: "Event-loop lag", unit: "seconds", lines: [["loop_lag", "worst"]], perWorker: true },
    { id: "cpu", title: "CPU", unit: "cores", lines: [["cpu", "sum"]], perWorker: true },
    { id: "rss", title: "Memory (RSS)", unit: "bytes", lines: [["rss", "sum"]], perWorker: true },
  ];
  const W = 600;
  const H = 130;
  const SVG = "http://www.w3.org/2000/svg";
  const charts = new Map();

  function buildCharts() {
    const holder = $("charts");
    holder.replaceChildren();
    for (const chart of CHARTS) {
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
      svg.setAttribute("preserveAspectRatio", "none");
      svg.setAttribute("role", "img");
      svg.setAttribute("aria-label", chart.title);
      const now = element("span", { class: "now" });
      const ymax = element("span", { class: "ymax" });
      const start = element("span", {});
      const keys = element("div", { class: "keys" });
      const figure = element(
        "figure",
        { class: "chart", "data-chart": chart.id },
        element("figcaption", {}, element("span", { text: chart.title }), now),
        element("div", { class: "plot" }, svg, ymax),
        element("div", { class: "axis" }, start, element("span", { text: "now" })),
        keys,
      );
      holder.append(figure);
      charts.set(chart.id, { chart, figure, svg, now, ymax, start, keys });
    }
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function pathOf(points, field, from, span, top) {
    let d = "";
    let pen = false;
    let drawn = 0;
    for (const point of points) {
      if (point.time < from) continue;
      const value = point[field];
      if (value === null || value === undefined) {
        pen = false;
        continue;
      }
      const x = ((point.time - from) / span) * W;
      const y = H - 1 - (value / top) * (H - 6);
      d += `${pen ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)}`;
      pen = true;
      drawn += 1;
    }
    return [d, drawn];
  }

  function marks(points, from, span) {
    // Bands where the broker was down or the memory guard refused connections.
    const bands = [];
    for (const [flag, bad, kind] of [["broker_up", false, "down"], ["memory_limited", true, "memory"]]) {
      let begin = null;
      for (let i = 0; i < points.length; i += 1) {
        const point = points[i];
        const on = point[flag] === bad;
        if (on && begin === null) begin = i > 0 ? points[i - 1].time : point.time;
        if (!on && begin !== null) {
          bands.push([kind, begin, point.time]);
          begin = null;
        }
      }
      if (begin !== null) bands.push([kind, begin, points[points.length - 1].time]);
    }
    return bands
      .filter(([, , end]) => end >= from)
      .map(([kind, begin, end]) => {
        const rect = document.createElementNS(SVG, "rect");
        const x = Math.max(0, ((begin - from) / span) * W);
        rect.setAttribute("x", x.toFixed(1));
        rect.setAttribute("y", "0");
        rect.setAttribute("width", Math.max(2, ((end - from) / span) * W - x).toFixed(1));
        rect.setAttribute("height", String(H));
        rect.setAttribute("class", kind);
        return rect;
      });
  }

  function draw() {
    const total = totalSeries();
    $("charts-empty").hidden = total.length > 0;
    if (!total.length) return;
    // The window chosen, or less while the data covers less (a minute at the least).
    const end = total[total.length - 1].time;
    const span = Math.min(Number($("window").value), Math.max(60, end - total[0].time));
    const from = end - span;
    const format = (unit, value) => UNITS[unit](value);
    const workers = workersSeen.size > 1 ? [...workersSeen].sort() : [];
    for (const { chart, figure, svg, now, ymax, start, keys } of charts.values()) {
      const lines = []; // [points, field, label, colour, worker?]
      chart.lines.forEach(([field, label], index) => {
        lines.push([total, field, workers.length ? `${label} (${workers.length} workers)` : label, PALETTE[index], false]);
      });
      if (chart.perWorker) {
        workers.forEach((pid, index) => {
          lines.push([series.get(pid) || [], chart.lines[0][0], `pid ${pid}`, PALETTE[(index + 1) % PALETTE.length], true]);
        });
      }
      let top = 0;
      for (const [points, field] of lines) {
        for (const point of points) {
          if (point.time >= from && typeof point[field] === "number") top = Math.max(top, point[field]);
        }
      }
      top = niceMax(top * 1.05);
      const children = marks(total, from, span);
      for (const fraction of [0.25, 0.5, 0.75]) {
        const grid = document.createElementNS(SVG, "line");
        const y = (H - fraction * (H - 4)).toFixed(1);
        grid.setAttribute("x1", "0");
        grid.setAttribute("x2", String(W));
        grid.setAttribute("y1", y);
        grid.setAttribute("y2", y);
        grid.setAttribute("class", "grid");
        children.push(grid);
      }
      let drawn = 0;
      keys.replaceChildren();
      for (const [points, field, label, colour, worker] of lines) {
        const [d, n] = pathOf(points, field, from, span, top);
        drawn += n;
        const path = document.createElementNS(SVG, "path");
        path.setAttribute("d", d);
        path.setAttribute("class", worker ? "line worker" : "line");
        path.setAttribute("data-field", field);
        path.style.stroke = `var(${colour})`;
        children.push(path);
        const swatch = element("i", {});
        swatch.style.background = `var(${colour})`;
        keys.append(element("span", {}, swatch, label));
      }
      svg.replaceChildren(...children);
      const last = total[total.length - 1];
      const value = last[chart.lines[0][0]];
      now.textContent = chart.lines.map(([field, label]) => `${chart.lines.length > 1 ? `${label} ` : ""}${format(chart.unit, last[field])}`).join(" · ");
      ymax.textContent = drawn || !chart.empty ? format(chart.unit, top) : chart.empty;
      start.textContent = `−${UNITS.duration(span)}`;
      figure.dataset.points = String(drawn);
      figure.dataset.last = String(value ?? "");
      figure.dataset.time = String(last.time);
    }
    $("workers-note").textContent = workers.length
      ? `· dashed: each worker (${workers.length}); before the page opened, only the answering worker's own history is known`
      : "";
  }

  function tiles(stats) {
    const total = stats.total;
    const server = stats.server;
    const items = [
      ["connections", UNITS.count(total.connections)],
      ["published", UNITS.rate(total.publish_rate)],
      ["delivered", UNITS.rate(total.delivery_rate)],
      ["publish→ack p99", UNITS.seconds(total.ack_p99)],
      ["delivery lag p99", UNITS.seconds(total.lag_p99)],
      ["event-loop lag", UNITS.seconds(total.loop_lag)],
      ["CPU", UNITS.cores(total.cpu)],
      ["memory", UNITS.bytes(total.rss)],
      ["channels", UNITS.count(server.channels)],
      ["workers", String(total.workers)],
    ];
    $("tiles").replaceChildren(
      ...items.map(([label, value]) =>
        element("div", { class: "tile", "data-tile": label }, element("div", { class: "label", text: label }), element("div", { class: "value", text: value })),
      ),
    );
    $("server").textContent = `${server.server_id} · up ${UNITS.duration(server.uptime)}`;
    const broker = $("broker");
    const up = total.broker_state === "up";
    broker.textContent = `broker: ${total.broker || server.broker.kind}, ${up ? "up" : "down"}${total.memory_limited ? " · memory limit" : ""}`;
    broker.className = `badge ${up && !total.memory_limited ? "up" : "down"}`;
    broker.title = server.broker.reason || "";
  }

  // -- channels --------------------------------------------------------------------------------

  const published = new Map(); // channel -> [time, published] of the last listing
  let openChannel = null;
  let oldest = null; // the oldest seq shown in the open channel's history
  let newest = null; // and the newest, with its epoch
  let shownEpoch = null;

  async function listChannels() {
    listedAt = ticks;
    let answer;
    try {
      answer = await api("GET", "/api/channels?limit=20");
    } catch (error) {
      $("channels-note").textContent = `channels: ${error.message}`;
      return;
    }
    listEvery = Math.min(300, CHANNELS_EVERY * Math.max(1, Math.ceil(answer.total / 1000)));
    const now = performance.now() / 1000;
    const rows = answer.channels.map((c) => {
      let rate = null;
      const before = published.get(c.channel);
      if (before && typeof c.published === "number" && now > before[0]) rate = Math.max(0, (c.published - before[1]) / (now - before[0]));
      if (typeof c.published === "number") published.set(c.channel, [now, c.published]);
      const open = element("button", { class: "link", type: "button", text: c.channel, onclick: () => openDetail(c.channel) });
      return element(
        "tr",
        { class: c.channel === openChannel ? "open" : "", "data-channel": c.channel },
        element("td", {}, open),
        element("td", { class: "num", text: UNITS.count(c.subscribers) }),
        element("td", { class: "num", text: rate === null ? "–" : UNITS.rate(rate) }),
        element("td", { class: "num", text: UNITS.count(c.seq) }),
        element("td", { text: c.epoch || "–" }),
        element("td", { class: "num", text: c.history === undefined ? "–" : `${UNITS.count(c.history)} msgs` }),
      );
    });
    $("channel-table").tBodies[0].replaceChildren(...rows);
    $("channel-table").hidden = rows.length === 0;
    $("channels-empty").hidden = rows.length > 0;
    $("channels-note").textContent =
      (answer.total > rows.length ? `${rows.length} busiest of ${answer.total} channels, by subscribers. ` : "") +
      (listEvery > CHANNELS_EVERY ? `Listed every ${UNITS.duration(listEvery)} (many channels).` : "");
  }

  function message(item) {
    const data = element("pre", { class: "data", text: JSON.stringify(item.data) });
    const when = item.timestamp ? new Date(item.timestamp).toLocaleTimeString() : "";
    return element(
      "li",
      { "data-seq": String(item.seq) },
      element("span", { class: "seq", text: `#${item.seq}` }),
      element("span", { class: "muted", text: `${when}${item.from ? ` · from ${item.from}` : ""}` }),
      data,
    );
  }

  async function openDetail(channel) {
    openChannel = channel;
    oldest = null;
    newest = null;
    $("channel-detail").hidden = false;
    $("channel-name").textContent = channel;
    $("publish-channel").value = channel;
    $("history").replaceChildren();
    $("older").hidden = true;
    for (const row of $("channel-table").tBodies[0].rows) row.classList.toggle("open", row.dataset.channel === channel);
    await refreshDetail();
    await loadHistory();
  }

  async function refreshDetail() {
    const channel = openChannel;
    if (channel === null) return null;
    let state = null;
    try {
      state = await api("POST", "/api/channel", { channel });
      if (channel !== openChannel) return null;
      $("channel-state").textContent = `epoch ${state.epoch} · last seq ${state.seq} · ${UNITS.count(state.subscribers)} subscribers`;
      if (newest !== null && (state.epoch !== shownEpoch || state.seq > newest)) await loadNewer(state);
    } catch (error) {
      $("channel-state").textContent = `channel state: ${error.message}`;
    }
    try {
      const presence = await api("POST", "/api/presence", { channel });
      if (channel !== openChannel) return state;
      showPresence(presence);
    } catch (error) {
      $("presence").replaceChildren();
      $("presence-empty").hidden = false;
      $("presence-empty").textContent =
        error.status === 400 ? `No presence here: ${error.message}.` : `presence: ${error.message}`;
    }
    return state;
  }

  function showPresence(presence) {
    const members = Array.isArray(presence.members) ? presence.members : [];
    $("presence").replaceChildren(
      ...members.map((member) => {
        const client = member.clientId || "";
        const item = element("li", { "data-client": client }, element("strong", { text: member.userId ?? "anonymous" }), element("span", { class: "muted", text: ` · ${client}` }));
        if (member.info !== undefined && member.info !== null) item.append(element("pre", { class: "data", text: JSON.stringify(member.info) }));
        return item;
      }),
    );
    const empty = $("presence-empty");
    empty.hidden = members.length > 0;
    if (presence.members === null) empty.textContent = `${UNITS.count(presence.count)} members (this channel's presence keeps counts only)`;
    else if (!members.length) empty.textContent = "Nobody here: no client is subscribed to this channel now.";
  }

  async function loadNewer(state) {
    // What was published since the history was shown: prepended, or the page loaded anew
    // when that is more than a page or another epoch.
    const channel = openChannel;
    if (state.epoch !== shownEpoch || state.seq - newest > PAGE) {
      oldest = null;
      newest = null;
      $("history").replaceChildren();
      await loadHistory();
      return;
    }
    let answer;
    try {
      answer = await api("POST", "/api/history", { channel, since: newest, limit: PAGE });
    } catch (error) {
      return; // the next refresh tries again
    }
    if (channel !== openChannel || answer.epoch !== shownEpoch) return;
    const messages = (answer.messages || []).filter((m) => m.seq > newest);
    if (!messages.length) return;
    $("history").prepend(...messages.reverse().map(message));
    newest = messages[0].seq;
    $("history-empty").hidden = true;
  }

  async function loadHistory() {
    // Newest first, a page at a time: `reverse` with `since` = the oldest seq shown.
    const channel = openChannel;
    const body = { channel, limit: PAGE, reverse: true };
    if (oldest !== null) body.since = oldest;
    let answer;
    try {
      answer = await api("POST", "/api/history", body);
    } catch (error) {
      $("history-empty").hidden = false;
      $("history-empty").textContent = `history: ${error.message}`;
      return;
    }
    if (channel !== openChannel) return;
    const messages = answer.messages || [];
    if (newest === null) {
      newest = messages.length ? messages[0].seq : 0;
      shownEpoch = answer.epoch;
    }
    $("history").append(...messages.map(message));
    if (messages.length) oldest = messages[messages.length - 1].seq;
    const shown = $("history").children.length;
    $("history-empty").hidden = shown > 0;
    $("history-empty").textContent = "No messages in this channel's history: publish one with the form below.";
    $("older").hidden = !(messages.length === PAGE && oldest > 1);
  }

  async function publish(event) {
    event.preventDefault();
    const channel = $("publish-channel").value.trim();
    const text = $("publish-data").value;
    let data;
    try {
      data = JSON.parse(text);
    } catch (error) {
      data = text;
    }
    const result = $("publish-result");
    result.className = "";
    result.textContent = "publishing…";
    try {
      const answer = await api("POST", "/api/publish", { channel, data });
      result.textContent = answer.outcome === "unknown" ? `not known yet: ${answer.error}` : `published as #${answer.seq} (epoch ${answer.epoch})`;
      if (channel === openChannel) refreshDetail();
      listChannels();
    } catch (error) {
      result.className = "error";
      result.textContent = `not published: ${error.message}`;
    }
  }

  // -- users and connections -------------------------------------------------------------------

  let lastLookup = null;

  async function lookup(event) {
    if (event) event.preventDefault();
    const kind = $("lookup-kind").value;
    const id = $("lookup-id").value.trim();
    lastLookup = { [kind]: id };
    const result = $("lookup-result");
    let answer;
    try {
      answer = await api("POST", "/api/connections", lastLookup);
    } catch (error) {
      result.className = "error";
      result.textContent = error.message;
      $("lookup-list").replaceChildren();
      return;
    }
    const list = answer.connections;
    result.className = list.length ? "muted" : "empty";
    const where = `on ${answer.nodes} server${answer.nodes === 1 ? "" : "s"}`;
    result.textContent = list.length
      ? `${answer.total} connection${answer.total === 1 ? "" : "s"} of ${kind} ${id} ${where}${answer.total > list.length ? ` (${list.length} shown)` : ""}`
      : `No connection of ${kind} ${id} ${where}: check the id (a user id is the token's sub; anonymous connections are found by client id).`;
    const cards = list.map(card);
    if (kind === "user" && list.length) {
      cards.unshift(element("div", { class: "row" }, element("button", { type: "button", class: "danger", text: `Disconnect every connection of ${id}…`, onclick: () => disconnect({ user: id }, `every connection of user ${id}`) })));
    }
    $("lookup-list").replaceChildren(...cards);
  }

  function card(conn) {
    // An event stream follows its URL's channels: the server can end it, not unsubscribe it.
    const sse = conn.transport === "sse";
    const subs = conn.subscriptions.map((channel) =>
      sse
        ? element("span", { class: "sub" }, channel)
        : element("span", { class: "sub" }, channel, " ", element("button", { type: "button", class: "small", text: "unsubscribe…", "data-unsubscribe": channel, onclick: () => unsubscribe(conn.client, channel) })),
    );
    const fields = [
      ["client", conn.client],
      ["transport", sse ? "Server-Sent Events" : "WebSocket"],
      ["user", conn.user ?? "anonymous"],
      ["address", conn.remote],
      ["connected for", UNITS.duration(conn.connected_for)],
      ["frames in / out", `${UNITS.count(conn.frames_in)} / ${UNITS.count(conn.frames_out)}`],
      ["queued", `${UNITS.count(conn.queued_frames)} frames, ${UNITS.bytes(conn.queued_bytes)}`],
      ["dropped", UNITS.count(conn.dropped)],
      ["server", conn.server_id],
    ];
    const list = element("dl", {});
    for (const [name, value] of fields) list.append(element("dt", { text: name }), element("dd", { text: String(value) }));
    list.append(element("dt", { text: "subscriptions" }), element("dd", {}, subs.length ? element("div", { class: "subs" }, ...subs) : element("span", { class: "empty", text: "none" })));
    return element(
      "div",
      { class: "card conn", "data-client": conn.client },
      list,
      element("button", { type: "button", class: "danger", text: "Disconnect…", "data-disconnect": conn.client, onclick: () => disconnect({ client: conn.client }, `client ${conn.client}`) }),
    );
  }

  function confirmAction(text, withClose) {
    // An in-page confirmation (a <dialog>): resolves to {code, reason} or null.
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-close-fields").hidden = !withClose;
    return new Promise((resolve) => {
      const done = (value) => {
        $("confirm-form").onsubmit = null;
        $("confirm-no").onclick = null;
        dialog.onclose = null;
        if (dialog.open) dialog.close();
        resolve(value);
      };
      $("confirm-form").onsubmit = (event) => {
        event.preventDefault();
        done({ code: Number($("confirm-code").value), reason: $("confirm-reason").value });
      };
      $("confirm-no").onclick = () => done(null);
      dialog.onclose = () => done(null);
      dialog.showModal();
    });
  }

  async function disconnect(target, what) {
    const answer = await confirmAction(`Disconnect ${what}?`, true);
    if (!answer) return;
    try {
      const body = { ...target, reason: answer.reason };
      if (answer.code) body.code = answer.code;
      const done = await api("POST", "/api/disconnect", body);
      $("lookup-result").className = "muted";
      $("lookup-result").textContent = `disconnected ${done.disconnected} connection${done.disconnected === 1 ? "" : "s"} with code ${answer.code}`;
      $("lookup-list").replaceChildren();
    } catch (error) {
      $("lookup-result").className = "error";
      $("lookup-result").textContent = `not disconnected: ${error.message}`;
    }
  }

  async function unsubscribe(client, channel) {
    if (!(await confirmAction(`Unsubscribe client ${client} from ${channel}?`, false))) return;
    try {
      await api("POST", "/api/unsubscribe", { client, channel });
      await lookup();
    } catch (error) {
      $("lookup-result").className = "error";
      $("lookup-result").textContent = `not unsubscribed: ${error.message}`;
    }
  }

  // -- running ---------------------------------------------------------------------------------

  let polling = false; // one poll at a time: a slow answer delays the next, never piles up

  async function tick() {
    if (polling) return;
    polling = true;
    ticks += 1;
    try {
      take(await api("GET", "/stats?history=5"));
      tiles(latest);
      draw();
    } catch (error) {
      if (error.status !== 401) $("server").textContent = `not updated: ${error.message}`;
    }
    polling = false;
    if (ticks - listedAt >= listEvery) listChannels();
    if (ticks % CHANNELS_EVERY === 0 && openChannel !== null) refreshDetail();
  }

  async function start() {
    // The last hour at start; then, once a second, the newest samples.
    const stats = await api("GET", `/stats?history=${HOUR}`);
    $("login").hidden = true;
    $("app").hidden = false;
    $("nav").hidden = false;
    buildCharts();
    take(stats);
    tiles(stats);
    draw();
    listChannels();
    timer = setInterval(tick, 1000);
  }

  function signOut(why) {
    key = null;
    sessionStorage.removeItem(STORE);
    if (timer !== null) clearInterval(timer);
    timer = null;
    series.clear();
    $("app").hidden = true;
    $("nav").hidden = true;
    $("login").hidden = false;
    $("server").textContent = "";
    $("broker").textContent = "";
    $("broker").className = "badge";
    $("login-error").textContent = why || "";
    $("key").focus();
  }

  $("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    key = $("key").value;
    $("login-error").textContent = "";
    try {
      await start();
      sessionStorage.setItem(STORE, key);
      $("key").value = "";
    } catch (error) {
      if (error.status !== 401) $("login-error").textContent = error.message;
      if (error.status === 401) $("login-error").textContent = "The server refused this key.";
    }
  });
  $("forget").addEventListener("click", () => signOut("The key is forgotten."));
  $("publish").addEventListener("submit", publish);
  $("lookup").addEventListener("submit", lookup);
  $("window").addEventListener("change", draw);
  $("older").addEventListener("click", () => loadHistory());
  $("channel-close").addEventListener("click", () => {
    openChannel = null;
    $("channel-detail").hidden = true;
  });

  if (key) start().catch((error) => signOut(error.status === 401 ? "The server refused the key: enter it again." : error.message));
  else signOut("");

  window.triowsDashboard = { series, charts: () => [...charts.keys()] };
})();

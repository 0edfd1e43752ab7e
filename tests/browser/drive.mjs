// Drives chromium for tests/test_browser.py: two pages of the demo chat, controlled through
// stdin commands (one JSON object per line); every answer is one JSON line on stdout.
//
//   {"cmd": "open", "url": "http://127.0.0.1:PORT/demo", "channel": "chat.x"}
//   {"cmd": "say", "page": 0, "text": "hi"}          type into a page and press enter
//   {"cmd": "wait", "seq": N}                        until every page shows seq N (or times out)
//   {"cmd": "cut", "page": 1}                        cut a page's socket (it reconnects)
//   {"cmd": "members"}                               each page's presence list
//   {"cmd": "close", "page": 1}                      close a page
//   {"cmd": "screenshot", "page": 0, "path": "..."}
//   {"cmd": "page", "url": "...", "width": 390, "height": 844, "dark": 1}   one more page; its index
//   {"cmd": "eval", "page": 2, "js": "async (arg) => ...", "arg": ...}   run JS, its result
//   {"cmd": "waitfor", "page": 2, "js": "window.x > 1", "ms": 10000}   until the expression is truthy
//   {"cmd": "reload", "page": 2}                    reload a page (waits for its load)
//   {"cmd": "quit"}
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const pages = [];
const answer = (value) => process.stdout.write(JSON.stringify(value) + "\n");

async function view(page) {
  return page.evaluate(() => ({
    state: document.getElementById("state").textContent,
    seqs: [...document.querySelectorAll("#messages li[data-seq]")].map((li) => Number(li.dataset.seq)),
    texts: [...document.querySelectorAll("#messages li[data-seq]")].map((li) => li.textContent),
    notices: [...document.querySelectorAll("#messages li.notice")].map((li) => li.textContent),
    members: [...document.querySelectorAll("#members li")].map((li) => li.textContent),
    // Messages as their seq, notices as "notice", in the order the page shows them.
    items: [...document.querySelectorAll("#messages li")].map((li) => (li.dataset.seq ? Number(li.dataset.seq) : li.classList.contains("gap") ? "gap" : "notice")),
    clientId: window.triows.clientId,
  }));
}

async function run(command) {
  switch (command.cmd) {
    case "open": {
      for (const name of ["alice", "bob"]) {
        const page = await browser.newPage({ viewport: { width: 900, height: 560 } });
        page.on("pageerror", (error) => answer({ pageerror: String(error) }));
        await page.goto(`${command.url}?name=${name}`);
        await page.fill("#channel", command.channel);
        await page.click("#join");
        await page.waitForFunction(() => document.getElementById("state").textContent === "open");
        pages.push(page);
      }
      for (const page of pages) {
        await page.waitForFunction(() => document.querySelectorAll("#members li").length === 2, null, { timeout: 10000 });
      }
      return { views: await Promise.all(pages.map(view)) };
    }
    case "say":
      await pages[command.page].fill("#text", command.text);
      await pages[command.page].press("#text", "Enter");
      return { ok: true };
    case "wait": {
      const open = pages.filter((page) => !page.isClosed());
      await Promise.all(
        open.map((page) =>
          page
            .waitForFunction(
              (seq) => [...document.querySelectorAll("#messages li[data-seq]")].some((li) => Number(li.dataset.seq) >= seq),
              command.seq,
              { timeout: command.timeout ?? 30000 },
            )
            .catch(() => null),
        ),
      );
      return { views: await Promise.all(open.map(view)) };
    }
    case "cut":
      await pages[command.page].waitForFunction(() => window.triows.state === "open", null, { timeout: 20000 });
      await pages[command.page].evaluate(() => window.triows._ws.close(4000, "cut by the test"));
      return { ok: true };
    case "members":
      return { views: await Promise.all(pages.filter((p) => !p.isClosed()).map(view)) };
    case "close":
      await pages[command.page].close();
      return { ok: true };
    case "screenshot":
      await pages[command.page].screenshot({ path: command.path });
      return { ok: true };
    case "waitmembers":
      await pages[command.page]
        .waitForFunction((n) => document.querySelectorAll("#members li").length === n, command.count, {
          timeout: (command.seconds ?? 10) * 1000,
        })
        .catch(() => null); // the caller sees the view and says what is wrong
      return { views: [await view(pages[command.page])] };
    case "page": {
      const page = await browser.newPage({
        viewport: { width: command.width ?? 900, height: command.height ?? 560 },
        colorScheme: command.dark ? "dark" : "light",
      });
      page.on("pageerror", (error) => answer({ pageerror: String(error) }));
      await page.goto(command.url);
      pages.push(page);
      return { page: pages.length - 1 };
    }
    case "eval":
      return { value: await pages[command.page].evaluate(`(${command.js})(${JSON.stringify(command.arg ?? null)})`) };
    case "waitfor": {
      // Polled through evaluate (the DevTools protocol), not waitForFunction: a page with a
      // content security policy without 'unsafe-eval' (the dashboard) refuses the latter.
      const deadline = Date.now() + (command.ms ?? 10000);
      for (;;) {
        if (await pages[command.page].evaluate(command.js)) return { ok: true };
        if (Date.now() > deadline) throw new Error(`timed out waiting for: ${command.js}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    case "reload":
      await pages[command.page].reload();
      return { ok: true };
    case "quit":
      await browser.close();
      process.exit(0);
    default:
      throw new Error(`unknown command ${command.cmd}`);
  }
}

answer({ ready: true, version: browser.version() });
for await (const line of createInterface({ input: process.stdin })) {
  try {
    answer(await run(JSON.parse(line)));
  } catch (error) {
    answer({ error: String(error && error.stack ? error.stack : error) });
  }
}
await browser.close();

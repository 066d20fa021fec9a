// The dashboard in a real browser: playwright-core driving the system's
// Chromium (nothing downloads a browser). Run by proxy-bin/tests/it/browser.rs,
// which starts the real `vigil`s and origins and passes them in the
// environment; it kills an origin when this script prints `KILL` on stdout
// and answers on stdin. Progress goes to stderr; the last stdout line is
// `RESULT {json}`.
import { chromium } from "playwright-core";
import readline from "node:readline";

const env = process.env;
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(command) {
  process.stdout.write(command + "\n");
  const answer = await lines.next();
  return answer.value;
}
function check(cond, what) {
  if (!cond) throw new Error("FAILED: " + what);
  process.stderr.write("  ok: " + what + "\n");
}

const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run", "--disable-quic"];
const context = await chromium.launchPersistentContext(env.USER_DATA_DIR, {
  executablePath: env.CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1400, height: 900 },
});
const result = {};
try {
  const page = context.pages()[0] || (await context.newPage());
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // Nothing but the admin API: a request elsewhere fails the test.
  const elsewhere = [];
  page.on("request", (r) => { if (!r.url().startsWith("http://" + env.VIGIL_ADMIN + "/")) elsewhere.push(r.url()); });

  await page.goto("http://" + env.VIGIL_ADMIN + "/");
  await page.waitForSelector("body[data-ready='1']", { timeout: 5000 });
  await page.waitForSelector("#conn.live", { timeout: 5000 });
  await page.evaluate(() => { window.__noReload = 1; });
  const [a, b] = [env.SERVER_A, env.SERVER_B];
  const row = (origin, server) => `tr[data-key="${origin}|${server}"]`;
  const rowA = row(env.ORIGIN, a), rowB = row(env.ORIGIN, b);
  check(await page.locator(rowA).count() === 1 && await page.locator(rowB).count() === 1, "both servers have a row");
  await page.waitForFunction((sel) => document.querySelector(sel).className === "ok", rowA, { timeout: 3000 });
  const maintenance = async () => (await (await fetch("http://" + env.VIGIL_ADMIN + "/hosts")).json())
    .origins.find((o) => o.origin === env.ORIGIN).servers.find((s) => s.addr === a).maintenance;

  // A wrong or missing token changes nothing, and the page says why.
  await page.fill("#token", "not-the-token");
  await page.click(rowA + " button.maint");
  await page.waitForSelector("#msg.error", { timeout: 3000 });
  const wrong = await page.textContent("#msg");
  check(/wrong admin token/.test(wrong) && /401/.test(wrong), "a wrong token is refused and the page says so: " + wrong);
  await page.fill("#token", "");
  await page.click(rowA + " button.maint");
  await page.waitForFunction(() => /no admin token given/.test(document.querySelector("#msg").textContent), null, { timeout: 3000 });
  check(true, "a missing token is refused and the page says so");
  check((await maintenance()) === false, "nothing changed");
  check(await page.getAttribute(rowA, "class") === "ok", "the row did not change");

  // The right token, typed: maintenance on, the row changes within one second.
  await page.fill("#token", env.TOKEN);
  const t0 = Date.now();
  await page.click(rowA + " button.maint");
  await page.waitForFunction((sel) => document.querySelector(sel).className === "maint", rowA, { timeout: 1000 });
  result.maintenance_row_ms = Date.now() - t0;
  check(true, `the row shows maintenance ${result.maintenance_row_ms} ms after the click`);
  check(/maintenance/.test(await page.textContent(rowA + " td.status")), "its status says maintenance");
  check(await maintenance() === true, "the server is in maintenance");
  const entry = page.locator("#timeline li[data-type='maintenance']", { hasText: a });
  await entry.first().waitFor({ timeout: 1000 });
  check(/maintenance on/.test(await entry.first().textContent()), "the timeline shows it, newest first");
  check(/^\d\d:\d\d:\d\d\.\d{3}$/.test(await page.textContent("#timeline li:first-child time")), "with a timestamp");
  check(!(await page.evaluate(() => sessionStorage.getItem("vigil.token"))), "the token is not kept unless asked");
  check(!page.url().includes(env.TOKEN), "the token is not in the URL");
  await page.click(rowA + " button.maint");
  await page.waitForFunction((sel) => document.querySelector(sel).className === "ok", rowA, { timeout: 1000 });
  check(true, "maintenance off from the page");

  // A killed origin goes down.
  check(await ask("KILL") === "KILLED", "the test killed " + b);
  const t1 = Date.now();
  await page.waitForFunction((sel) => document.querySelector(sel).className === "bad", rowB, { timeout: 8000 });
  result.kill_row_ms = Date.now() - t1;
  const why = await page.textContent(rowB + " td.status");
  check(/L4 down|L7 unhealthy/.test(why), `the killed server shows down ${result.kill_row_ms} ms after the kill: ${why}`);
  await page.locator("#timeline li", { hasText: b }).first().waitFor({ timeout: 3000 });
  check(true, "its transition is in the timeline");

  // A check detail with markup shows as text.
  const evil = row(env.EVIL_ORIGIN, env.EVIL_SERVER);
  await page.waitForFunction((sel) => /<script>/.test(document.querySelector(sel + " td.status").textContent), evil, { timeout: 5000 });
  check(true, "a <script> in a check detail shows as text");
  check(await page.evaluate(() => window.pwned === undefined), "and runs nothing");
  check(await page.evaluate(() => document.scripts.length === 1 && document.querySelectorAll("main img, main script").length === 0),
    "no element was made from it");

  // Live data: sparklines and result strips from the checks.
  await page.waitForFunction((sel) => document.querySelectorAll(sel + " svg.spark rect").length >= 3, rowA, { timeout: 5000 });
  check(true, "a sparkline and a strip of recent checks");
  await page.waitForFunction(() => /req\/s/.test(document.querySelector("section.origin .rate").textContent), null, { timeout: 4000 });
  check(true, "requests/s and error rate per origin");
  check(await page.evaluate(() => window.__noReload === 1), "every update came by script, no reload");
  await page.screenshot({ path: env.SCREENSHOT, fullPage: true });
  check(true, "screenshot: " + env.SCREENSHOT);
  check(pageErrors.length === 0, "no script errors: " + pageErrors.join("; "));
  check(elsewhere.length === 0, "no request left the admin API: " + elsewhere.join(" "));

  // 1 000 servers.
  const big = await context.newPage();
  const start = Date.now();
  await big.goto("http://" + env.BIG_ADMIN + "/");
  await big.waitForSelector("body[data-ready='1']", { timeout: 20000 });
  result.big_load_ms = Date.now() - start;
  result.big_render_ms = Math.round(await big.evaluate(() => window.vigilRenderMs));
  const rows = await big.locator("tbody tr").count();
  check(rows === Number(env.BIG_SERVERS), `${rows} server rows`);
  await big.waitForSelector("#conn.live", { timeout: 5000 });
  const t2 = Date.now();
  const target = env.BIG_TARGET.split("|");
  await big.evaluate(async (t) => {
    await fetch("/maintenance", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ origin: t[0], server: t[1], on: true }) });
  }, target);
  await big.waitForFunction((sel) => document.querySelector(sel).className === "maint",
    row(target[0], target[1]), { timeout: 2000 });
  result.big_update_ms = Date.now() - t2;
  check(true, `1000 servers: page ready ${result.big_load_ms} ms, first render ${result.big_render_ms} ms, an event applied ${result.big_update_ms} ms`);
} finally {
  await context.close();
}
process.stdout.write("RESULT " + JSON.stringify(result) + "\n");
process.exit(0);

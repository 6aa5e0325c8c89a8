// The dashboard against a server with API tokens, in headless Chromium: it asks for a
// token once, keeps it for the tab, sends it with every call and with the live stream.
// Usage: node token.cjs BASE_URL TOKEN SCREENSHOT
"use strict";
const { chromium } = require("playwright-core");

const [base, token, shot] = process.argv.slice(2);
const T = 30000;

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  try {
    await page.goto(base + "/");
    await page.waitForSelector("#token-dialog[open] #token-input", { timeout: T });
    await page.keyboard.press("Escape");
    check(await page.$("#token-dialog[open]") !== null, "Escape does not dismiss the question");
    await page.fill("#token-input", "short");
    await page.click('#token-form button[type="submit"]');
    check(await page.$("#token-dialog[open] p.notice.error:not([hidden])") !== null, "a malformed token is refused in the page");
    await page.fill("#token-input", token);
    await page.click('#token-form button[type="submit"]');
    await page.waitForSelector('#counts dd[data-state="total"]', { timeout: T });
    check(await page.$("#token-dialog") === null, "the dialog is gone");
    check(await page.evaluate(() => sessionStorage.getItem("taskexec-token")) === token, "kept for the tab");
    // Another page: no second question, and the live stream (fetch with the token) is up.
    await page.click('nav a[data-view="tasks"]');
    await page.waitForSelector("#tasks-table", { timeout: T });
    await page.waitForFunction(() => document.getElementById("live").textContent === "live", null, { timeout: T });
    check(await page.$("#token-dialog") === null, "asked once");
    // A task submitted meanwhile arrives over the stream without a reload.
    await page.evaluate(() => { window.__noReload = true; });
    const id = await page.evaluate(async t => {
      const r = await fetch("/api/v1/tasks", { method: "POST", headers: { "Content-Type": "application/json", Authorization: "Bearer " + t },
        body: JSON.stringify({ problem_id: "token-e2e", parameters: { simulate: { steps: 2, step_seconds: 0.2 } } }) });
      return (await r.json()).id;
    }, token);
    check(typeof id === "string", "the read token cannot submit, so this token must be able to: " + id);
    await page.waitForSelector(`tr[data-task="${id}"] td.st >> text=completed`, { timeout: T });
    check(await page.evaluate(() => window.__noReload === true), "no reload");
    await page.screenshot({ path: shot, fullPage: true });
    check(errors.length === 0, "no page errors: " + errors.join("; "));
    console.log("token e2e: ok");
  } catch (e) {
    try { await page.screenshot({ path: shot, fullPage: true }); } catch (_) {}
    console.error(String(e && e.stack || e));
    console.error("page errors: " + errors.join("; "));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();

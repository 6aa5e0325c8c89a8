// The task page's model calls in headless Chromium: each call of the LLM gateway listed,
// its answer shown, its tokens and logprobs fetched on demand.
// Usage: node llm_calls.cjs BASE_URL TASK_ID EXPECTED_JSON SCREENSHOT
// EXPECTED_JSON: {"calls": n, "answer": "text of call 1", "token_ids": [ids of call 1]}.
"use strict";
const { chromium } = require("playwright-core");

const [base, id, expectedJson, shot] = process.argv.slice(2);
const want = JSON.parse(expectedJson);
const T = 30000;

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  page.on("request", r => { if (!r.url().startsWith(base)) errors.push("request outside the server: " + r.url()); });
  try {
    await page.goto(base + "/#/task/" + id);
    await page.waitForSelector("#llm-calls details.llm-call", { timeout: T });
    const n = await page.$$eval("#llm-calls details.llm-call", els => els.length);
    check(n === want.calls, "one entry per call: " + n);
    const first = page.locator("#llm-calls details.llm-call").first();
    const summary = await first.locator(":scope > summary").textContent();
    check(summary.includes("HTTP 200") && summary.includes("stop"), "the summary says status and finish: " + summary);
    await first.locator(":scope > summary").click();
    const answer = await first.locator("article.msg.assistant pre").textContent();
    check(answer === want.answer, "the answer is shown: " + answer);
    check((await page.$$("table.tokens")).length === 0, "tokens are not loaded before they are asked for");
    await first.locator("button.show-tokens").click();
    await page.waitForSelector("#llm-calls table.tokens tbody tr", { timeout: T });
    const ids = await page.$$eval("#llm-calls table.tokens tbody tr td:nth-child(3)", els => els.map(e => Number(e.textContent)));
    check(JSON.stringify(ids) === JSON.stringify(want.token_ids), "token ids: " + JSON.stringify(ids));
    const lps = await page.$$eval("#llm-calls table.tokens tbody tr td:nth-child(4)", els => els.map(e => e.textContent));
    check(lps.every(x => x === "-0.1250"), "logprobs: " + JSON.stringify(lps));
    await page.screenshot({ path: shot, fullPage: true });
    check(errors.length === 0, "no page errors: " + errors.join("; "));
    console.log("llm calls e2e: ok");
  } catch (e) {
    try { await page.screenshot({ path: shot, fullPage: true }); } catch (_) {}
    console.error(String(e && e.stack || e));
    console.error("page errors: " + errors.join("; "));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();

// End-to-end test of the dashboard in headless Chromium (Debian's, driven by playwright-core).
// Usage: node dashboard.cjs BASE_URL SCREENSHOT_DIR. Exits non-zero with the reason on failure.
"use strict";
const { chromium } = require("playwright-core");
const path = require("path");

const [base, shots] = process.argv.slice(2);
const T = 30000;

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}

async function api(page, method, p, body) {
  return page.evaluate(async ([m, u, b]) => {
    const r = await fetch(u, { method: m, headers: { "Content-Type": "application/json" }, body: b ? JSON.stringify(b) : undefined });
    return r.json();
  }, [method, p, body]);
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  // Nothing may be fetched from anywhere but the server.
  page.on("request", r => { if (!r.url().startsWith(base)) errors.push("request outside the server: " + r.url()); });
  try {
    // Overview: counts, charts, workers.
    await page.goto(base + "/");
    await page.waitForSelector('#counts dd[data-state="total"]', { timeout: T });
    await page.waitForSelector("#charts figure svg", { timeout: T });
    await page.waitForSelector("#overview-workers tbody tr td", { timeout: T });
    await page.screenshot({ path: path.join(shots, "overview.png"), fullPage: true });

    // Keyboard: the first Tab reaches a navigation link.
    await page.keyboard.press("Tab");
    check(await page.evaluate(() => document.activeElement && document.activeElement.tagName === "A"), "Tab focuses a link");

    // Tasks: submit from the form, then watch it go running -> completed without a reload.
    await page.click('nav a[data-view="tasks"]');
    await page.waitForSelector("#tasks-table", { timeout: T });
    await page.evaluate(() => { window.__noReload = true; });
    await page.click("#submit summary");
    await page.fill('#submit-form input[name="problem_id"]', "dashboard-e2e");
    await page.fill('#submit-form textarea[name="parameters"]', '{"simulate": {"steps": 6, "step_seconds": 0.5}}');
    await page.fill('#submit-form textarea[name="metadata"]', '{"from": "e2e"}');
    await page.click('#submit-form button[type="submit"]');
    const link = await page.waitForSelector('p.notice a[href^="#/task/"]', { timeout: T });
    const id = (await link.getAttribute("href")).slice("#/task/".length);
    await page.waitForSelector(`tr[data-task="${id}"] td.st >> text=running`, { timeout: T });
    await page.waitForSelector(`tr[data-task="${id}"] td.st >> text=completed`, { timeout: T });
    check(await page.evaluate(() => window.__noReload === true), "the page was not reloaded");
    const stored = await api(page, "GET", "/api/v1/tasks/" + id);
    check(stored.metadata.from === "e2e" && stored.parameters.simulate.steps === 6, "the form's fields reached the task");
    await page.screenshot({ path: path.join(shots, "tasks.png"), fullPage: true });

    // The task page: timeline, logs, the conversation as a chat, the results dict.
    await page.click(`tr[data-task="${id}"] a`);
    await page.waitForSelector("#conversations .msg", { timeout: T });
    const roles = await page.$$eval("#conversations .msg", els => els.map(e => e.classList[1]));
    check(roles[0] === "system" && roles.includes("assistant") && roles.includes("user"), "chat roles " + roles);
    check((await page.$$("#logs [data-level]")).length > 3, "log lines shown");
    await page.waitForSelector("#results th", { timeout: T });
    check((await page.$$("#timeline li")).length >= 3, "a timeline of three states");
    await page.selectOption("#log-level", "warning");
    await page.waitForFunction(() => [...document.querySelectorAll("#logs [data-level]")].every(e => e.dataset.level === "warning" || e.dataset.level === "error"), null, { timeout: T });
    await page.screenshot({ path: path.join(shots, "task.png"), fullPage: true });

    // Rerun: a new task with the same parameters.
    await page.click("#rerun");
    const rr = await page.waitForSelector('p.notice a[href^="#/task/"]', { timeout: T });
    const rid = (await rr.getAttribute("href")).slice("#/task/".length);
    const re = await api(page, "GET", "/api/v1/tasks/" + rid);
    check(re.problem_id === "dashboard-e2e" && re.parameters.simulate.steps === 6 && re.metadata.rerun_of === id, "rerun copies the task");

    // Cancel a running task from its page; the status changes live.
    const long = await api(page, "POST", "/api/v1/tasks", { problem_id: "dashboard-cancel", parameters: { simulate: { steps: 100, step_seconds: 0.5 } } });
    await page.goto(base + "/#/task/" + long.id);
    await page.waitForSelector("#task-status >> text=running", { timeout: T * 2 });
    await page.click("#cancel");
    await page.waitForSelector("#task-status >> text=cancelled", { timeout: T });

    // Workers: scale from the page.
    await page.click('nav a[data-view="workers"]');
    await page.waitForSelector("#workers-table tbody tr", { timeout: T });
    await page.fill('#scale-form input[name="num_workers"]', "3");
    await page.click('#scale-form button[type="submit"]');
    await page.waitForSelector("#internal-status >> text=Internal workers: 3", { timeout: T });
    await page.waitForFunction(() => document.querySelectorAll("#workers-table tbody tr").length >= 3, null, { timeout: T });
    const st = await api(page, "GET", "/api/v1/workers/internal/status");
    check(st.num_workers === 3, "the server has 3 workers");
    await page.screenshot({ path: path.join(shots, "workers.png"), fullPage: true });

    // Experiments: two sweeps of the same problems, one agent config failing in the second;
    // the page shows progress live, the scoreboard and its chart, and the comparison.
    const spec = (name, outcome) => ({ name, problems: ["k8s_target_port-misconfig-detection-*"],
      agent_configs: [{ name: "steady" }, { name: "trial", simulate: { outcome } }], attempts: 2,
      parameters: { simulate: { steps: 2, step_seconds: 0.3 } } });
    const e1 = await api(page, "POST", "/api/v1/experiments", spec("baseline", "success"));
    const e2 = await api(page, "POST", "/api/v1/experiments", spec("regression", "failure"));
    check(e1.task_count === 12 && e2.task_count === 12, "experiments made 12 tasks each");
    await page.click('nav a[data-view="experiments"]');
    await page.waitForSelector(`tr[data-experiment="${e2.id}"]`, { timeout: T });
    await page.click(`tr[data-experiment="${e2.id}"] a`);
    await page.waitForSelector("#scoreboard-table tbody tr", { timeout: T });
    await page.waitForSelector('#exp-status[data-status="completed"]', { timeout: T * 4 });
    await page.waitForFunction(() => document.querySelectorAll("#scoreboard-table tbody tr").length === 8, null, { timeout: T });
    const trialBar = await page.$('#solve-chart rect[data-config="1"]');
    check(trialBar !== null, "the chart has a bar per config");
    const board = await api(page, "GET", "/api/v1/experiments/" + e2.id + "/scoreboard");
    const shown = await page.$eval('#scoreboard-table tr[data-problem="*"][data-config="1"] td:nth-child(4)', e => e.textContent);
    check(shown === "0%" && board.totals[1].pass_at_1 === 0, "the trial config's pass@1 is 0%");
    await page.screenshot({ path: path.join(shots, "experiment.png"), fullPage: true });
    await page.goto(base + "/#/experiments?a=" + e1.id + "&b=" + e2.id);
    await page.waitForFunction(() => document.querySelectorAll("#compare-table tbody tr").length === 6, null, { timeout: T * 4 });
    await page.waitForFunction(() => [...document.querySelectorAll('#compare-table tr[data-config="1"] td.diff')].every(td => td.textContent === "-100 pts"), null, { timeout: T * 4 });
    const same = await page.$$eval('#compare-table tr[data-config="0"] td.diff', tds => tds.map(td => td.textContent));
    check(same.every(x => x === "+0 pts" || x === "0 pts"), "the steady config did not change: " + same.join(","));
    await page.screenshot({ path: path.join(shots, "compare.png"), fullPage: true });

    check(errors.length === 0, "no page errors: " + errors.join("; "));
    console.log("dashboard e2e: ok");
  } catch (e) {
    try { await page.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }); } catch (_) {}
    console.error(String(e && e.stack || e));
    console.error("page errors: " + errors.join("; "));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();

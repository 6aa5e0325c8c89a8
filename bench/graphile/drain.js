// drain: graphile-worker draining N queued no-op jobs, the reference for taskexec's
// internal workers in bench/run.sh. Usage: node drain.js SOCKET_DIR PORT DATABASE N CONCURRENCY
// Prints "jobs N seconds S per_s R". The database should be fresh: the schema is
// installed first (runMigrations), the jobs added in one add_jobs call, then only
// runOnce is timed.
//
// Read for this (graphile-worker 0.16.6, github.com/graphile/worker at tag v0.16.6 and
// the npm package of that version): website/docs/library/run.md (runOnce(options) runs
// until no runnable job is left; RunnerOptions: concurrency, noHandleSignals, logger,
// pgPool, taskList), src/runner.ts and src/lib.ts (runOnce compiles the options, mapping
// concurrency to preset.worker.concurrentJobs), website/docs/sql-add-job.md and sql/000018.sql
// (graphile_worker.add_jobs(specs job_spec[], job_key_preserve_run_at boolean)), and
// perfTest/init.js (the project's own bulk add: json_populate_record into job_spec).
"use strict";
const { Logger, runMigrations, runOnce } = require("graphile-worker");
const { Pool } = require("pg"); // graphile-worker's own driver

const [host, port, database, nArg, concArg] = process.argv.slice(2);
const n = parseInt(nArg, 10);
const concurrency = parseInt(concArg, 10);
if (!host || !port || !database || !(n > 0) || !(concurrency > 0)) {
  console.error("usage: node drain.js SOCKET_DIR PORT DATABASE N CONCURRENCY");
  process.exit(2);
}

async function main() {
  const pgPool = new Pool({ host, port: Number(port), database, user: "postgres",
                            max: concurrency + 2 });
  const logger = new Logger(() => (level, message) => {
    if (level === "error" || level === "warning") console.error(`graphile ${level}: ${message}`);
  });
  let done = 0;
  const noop = async () => { done++; };
  const options = { pgPool, logger, concurrency, noHandleSignals: true, taskList: { noop } };
  try {
    await runMigrations(options);
    await pgPool.query(
      `SELECT count(*) FROM graphile_worker.add_jobs((
         SELECT array_agg(json_populate_record(null::graphile_worker.job_spec,
                          json_build_object('identifier', 'noop')))
         FROM generate_series(1, $1::int)))`, [n]);
    const t0 = process.hrtime.bigint();
    await runOnce(options);
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const left = (await pgPool.query("SELECT count(*)::int AS c FROM graphile_worker.jobs")).rows[0].c;
    if (done !== n || left !== 0) {
      console.error(`graphile drain: ran ${done} of ${n}, ${left} left in the queue`);
      process.exitCode = 1;
    }
    console.log(`jobs ${done} seconds ${s.toFixed(3)} per_s ${(done / s).toFixed(0)}`);
  } finally {
    await pgPool.end();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });

// drain: pg-boss 10 draining N queued no-op jobs, a second reference (beside
// bench/graphile) for taskexec's internal workers. Usage:
//   node drain.js SOCKET_DIR PORT DATABASE N CONCURRENCY BATCH
// Prints "jobs N seconds S per_s R". The database should be fresh: start() installs the
// schema, one queue is created, the N jobs go in with a single insert() call, and then
// only the drain is timed: CONCURRENCY loops, each fetching up to BATCH jobs, running a
// no-op handler on them and completing them by id, until a fetch comes back empty.
// Afterwards the job table is counted by state; exit code 1 unless all N are completed.
//
// Read for this (pg-boss 10.4.2, the newest 10.x on npm; github.com/timgit/pg-boss has
// no 10.4.2 tag, its branch v10 at 4de61530d6e71ffc649e1024a10807536dc80ef9 carries
// package.json 10.4.2, and its src/ is byte-identical to the npm package's):
//   src/index.js (start(): opens its pg Pool, migrates/creates the schema when `migrate`
//     is on, then starts maintenance only if `supervise`, the state monitor only if
//     `monitorStateIntervalSeconds` is set, and the cron/clock-skew timekeeper only if
//     `schedule`); src/attorney.js (getConfig: supervise and schedule default to true,
//     the monitor to off; checkWorkArgs/checkFetchArgs: batchSize, and a polling interval
//     of at least 0.5 s); src/db.js (the whole config object is handed to new pg.Pool, so
//     host/port/database/user/max are pg's own options); src/manager.js (createQueue,
//     insert, fetch, complete, and watch(), which is what work() runs); src/worker.js
//     (the polling loop behind work()); src/boss.js (the maintenance and monitor timers);
//     src/timekeeper.js (what `schedule` starts: a worker on an internal queue and two
//     timers); src/plans.js (the SQL: the job table is partitioned by queue name and a
//     queue's partition is only made by create_queue(), insertJobs joins on the queue
//     table so jobs for a queue never created are silently dropped, fetchNextJob is one
//     UPDATE over a FOR UPDATE SKIP LOCKED select ordered by priority, created_on, id,
//     completeJobs moves active rows to completed); docs/api/{constructor,jobs,queues,
//     workers}.md.
//
// Options, and why:
//   supervise: false  - no maintenance timer (expire/archive/drop every 2 minutes by
//                       default), so nothing but the drain runs against the database.
//   schedule: false   - no timekeeper: its worker polling an internal queue, its cron
//                       check every 30 s and its clock-skew query are not started.
//   monitorStateIntervalSeconds left unset - the state monitor is already off by default.
//   migrate left on (the default) - start() installs the schema into the fresh database.
//   max: CONCURRENCY + 2 - pool size, as bench/graphile/drain.js gives its pool.
// Nothing is archived or deleted during the run, so the completed rows stay in pgboss.job
// for the final count.
//
// Why fetch()+complete() and not work(): in v10, work() has no concurrency option (each
// call adds one polling worker; eight calls would be needed), after every batch its loop
// sleeps for what is left of the polling interval (0.5 s at least) whenever the batch
// took less than that, it completes a batch without awaiting it, and it never says that
// the queue is empty, so "done" would have to be found by polling from outside. The loop
// below is what a work() worker does per batch (fetch with batchSize, call the handler
// with the array, complete the ids) without the sleep, and it stops at the first empty
// fetch. An empty fetch means every job is taken: SKIP LOCKED only passes over rows that
// another loop's fetch is claiming at that moment, and those will be completed by it.
// fetch() keeps pg-boss's default ordering (priority: true), as work() does.
"use strict";
const PgBoss = require("pg-boss");

const QUEUE = "noop";
const [host, port, database, nArg, concArg, batchArg] = process.argv.slice(2);
const n = parseInt(nArg, 10);
const concurrency = parseInt(concArg, 10);
const batch = parseInt(batchArg, 10);
if (!host || !port || !database || !(n > 0) || !(concurrency > 0) || !(batch > 0)) {
  console.error("usage: node drain.js SOCKET_DIR PORT DATABASE N CONCURRENCY BATCH");
  process.exit(2);
}

async function main() {
  const boss = new PgBoss({
    host, port: Number(port), database, user: "postgres", max: concurrency + 2,
    supervise: false, schedule: false, migrate: true,
  });
  boss.on("error", (e) => console.error(`pg-boss error: ${e && e.message}`));
  await boss.start();
  try {
    await boss.createQueue(QUEUE);
    // One statement for all N: insert() sends the array as a single JSON parameter.
    await boss.insert(Array.from({ length: n }, () => ({ name: QUEUE })));

    let done = 0;
    let fetched = 0;
    const noop = async (jobs) => {};
    const loop = async () => {
      for (;;) {
        const jobs = await boss.fetch(QUEUE, { batchSize: batch });
        if (jobs.length === 0) return;
        fetched += jobs.length;
        await noop(jobs);
        const r = await boss.complete(QUEUE, jobs.map((j) => j.id));
        done += r.affected;
      }
    };
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: concurrency }, loop));
    const s = Number(process.hrtime.bigint() - t0) / 1e9;

    const { rows } = await boss.getDb().executeSql(
      "SELECT state::text AS state, count(*)::int AS c FROM pgboss.job WHERE name = $1 GROUP BY 1",
      [QUEUE]);
    const states = Object.fromEntries(rows.map((r) => [r.state, r.c]));
    const completed = states.completed || 0;
    if (done !== n || completed !== n || rows.length !== 1) {
      console.error(`pg-boss drain: fetched ${fetched}, completed ${done} of ${n}; ` +
                    `job states ${JSON.stringify(states)}`);
      process.exitCode = 1;
    }
    console.log(`jobs ${done} seconds ${s.toFixed(3)} per_s ${(done / s).toFixed(0)}`);
  } finally {
    await boss.stop({ graceful: false });
  }
}

main().catch((e) => { console.error(e); process.exit(1); });

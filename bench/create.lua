-- wrk: POST one task per request (bench/run.sh, "create a task, req/s").
wrk.method = "POST"
wrk.body = '{"problem_id":"bench"}'
wrk.headers["Content-Type"] = "application/json"

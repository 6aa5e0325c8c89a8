/* api_experiments: the experiment routes (CONTRACT.md "Experiments"). The work is in
 * service/experiments.c; these parse, call and reply. */
#include "http/api.h"
#include "core/err.h"
#include "service/experiments.h"
#include "service/scoreboard.h"

#include <stdlib.h>
#include <string.h>

/* The {id} capture as an experiment id; replies 404 itself when it cannot be one. */
static const char *experiment_id(struct request *req)
{
    const char *id = req->params[0];

    if (!api_valid_uuid(id)) {
        api_fail(req, 404, "Experiment %s not found", id);
        return NULL;
    }
    return id;
}

/* The answer to a failed lookup or change of experiment id: 404, or the store's error. */
static int not_found_or(struct request *req, int rc, const char *id)
{
    api_lookup_error(req, rc, "experiment", id);
    return 0;
}

static int reply_experiment(struct request *req, int status, const struct experiment *e)
{
    json_t *o = experiment_to_json(e);

    if (!o)
        return api_reply_error(req, ERR_NOMEM, "the experiment");
    return api_reply(req, status, o);
}

int api_experiment_create(struct request *req)
{
    json_t *body = NULL, *errors = NULL;
    struct experiment *e = NULL;
    int rc;

    if (api_body_json(req, &body) < 0)
        return 0;
    if (!body)
        return api_invalid_field(req, "body", "is required: a JSON object with name and "
                                              "problems");
    rc = experiments_create(&req->srv->queue, body, req->srv->cfg.max_experiment_tasks, &e,
                            &errors);
    json_decref(body);
    if (rc == ERR_INVALID)
        return api_invalid(req, errors);
    if (rc < 0)
        return api_reply_error(req, rc, "the experiment");
    reply_experiment(req, 201, e);
    experiment_free(e);
    return 0;
}

int api_experiment_list(struct request *req)
{
    long long limit, offset;
    json_t *items = NULL;
    int64_t total = 0;
    int rc;

    if (api_query_int(req, "limit", 1, 1000, 100, &limit) < 0 ||
        api_query_int(req, "offset", 0, INT64_MAX / 2, 0, &offset) < 0)
        return 0;
    rc = store_experiment_list(req->srv->store, limit, offset, &items, &total);
    if (rc < 0)
        return api_reply_error(req, rc, "the experiment list");
    return api_reply(req, 200, json_pack("{s:o, s:I, s:I, s:I}", "experiments", items, "total",
                                         (json_int_t)total, "limit", (json_int_t)limit,
                                         "offset", (json_int_t)offset));
}

/* The {id} capture's experiment (caller frees); NULL after replying 404 or the store's
 * error. */
static struct experiment *load_experiment(struct request *req)
{
    const char *id = experiment_id(req);
    struct experiment *e = NULL;
    int rc;

    if (!id)
        return NULL;
    rc = store_experiment_get(req->srv->store, id, &e);
    if (rc < 0)
        not_found_or(req, rc, id);
    return rc < 0 ? NULL : e;
}

int api_experiment_get(struct request *req)
{
    struct experiment *e = load_experiment(req);

    if (e)
        reply_experiment(req, 200, e);
    experiment_free(e);
    return 0;
}

int api_experiment_scoreboard(struct request *req)
{
    const char *id = experiment_id(req), *format = api_query(req, "format");
    json_t *board = NULL;
    char *csv;
    int rc;

    if (!id)
        return 0;
    if (format && strcmp(format, "json") && strcmp(format, "csv"))
        return api_invalid_field(req, "format", "must be json or csv");
    rc = experiments_scoreboard(&req->srv->queue, id, &board);
    if (rc < 0)
        return not_found_or(req, rc, id);
    if (!format || strcmp(format, "csv"))
        return api_reply(req, 200, board);
    csv = scoreboard_csv(board);
    json_decref(board);
    if (!csv)
        return api_reply_error(req, ERR_NOMEM, "the scoreboard");
    return api_reply_text(req, 200, "text/csv; charset=utf-8", csv);
}

int api_experiment_tasks(struct request *req)
{
    struct experiment *e = load_experiment(req);
    int rc = e ? api_task_list_of(req, e->id) : 0;

    experiment_free(e);
    return rc;
}

int api_experiment_cancel(struct request *req)
{
    const char *id = experiment_id(req);
    struct experiment *e = NULL;
    int rc;

    if (!id)
        return 0;
    rc = experiments_cancel(&req->srv->queue, id, &e);
    if (rc < 0)
        return not_found_or(req, rc, id);
    reply_experiment(req, 200, e);
    experiment_free(e);
    return 0;
}

int api_experiment_rerun(struct request *req)
{
    const char *id = experiment_id(req), *only;
    json_t *body = NULL;
    int64_t created = 0;
    int rc;

    if (!id || api_body_json(req, &body) < 0)
        return 0;
    only = json_string_value(json_object_get(body, "only"));
    if (body && !json_is_object(body)) {
        json_decref(body);
        return api_invalid_field(req, "body", "must be {\"only\": \"failed\" | \"unsolved\"}");
    }
    if (json_object_get(body, "only") && (!only || (strcmp(only, "failed") &&
                                                    strcmp(only, "unsolved")))) {
        json_decref(body);
        return api_invalid_field(req, "only", "must be failed or unsolved");
    }
    rc = experiments_rerun(&req->srv->queue, id, only && !strcmp(only, "unsolved"), &created);
    json_decref(body);
    if (rc == ERR_CONFLICT)
        return api_fail(req, 409, "experiment %s was cancelled; it cannot be rerun", id);
    if (rc < 0)
        return not_found_or(req, rc, id);
    return api_reply(req, 200, json_pack("{s:s, s:I}", "experiment_id", id, "created",
                                         (json_int_t)created));
}

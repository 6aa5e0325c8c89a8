/* openenv_proto: OpenEnv's WebSocket messages, as pure functions over JSON (no I/O):
 * what a request is, the error replies with OpenEnv's codes, the observations we send,
 * and the problem a seeded reset draws. Mirrors meta-pytorch/OpenEnv 685de41
 * (src/openenv/core/env_server/types.py: WSResetMessage, WSStepMessage,
 * WSStateMessage, WSCloseMessage with extra="forbid", WSErrorCode;
 * serialization.py: the observation without reward, done and metadata). */
#ifndef TASKEXEC_OPENENV_PROTO_H
#define TASKEXEC_OPENENV_PROTO_H

#include <jansson.h>

enum openenv_type { OPENENV_RESET, OPENENV_STEP, OPENENV_STATE, OPENENV_CLOSE };

/* openenv_parse: a request's text. Returns its type with *data its "data" (borrowed
 * from *msg, NULL when absent) and *msg the parsed message (caller json_decref's); or
 * -1 with *error the reply to send instead (a new reference): INVALID_JSON,
 * UNKNOWN_TYPE, or VALIDATION_ERROR for keys a message forbids or a data that is not an
 * object. */
int openenv_parse(const char *text, size_t len, json_t **msg, json_t **data, json_t **error);

/* openenv_action: the step's action from its data: {"action": "<non-empty text of at
 * most max bytes>"} and optionally an Action model's "metadata". Borrowed from data;
 * NULL with *error (VALIDATION_ERROR) otherwise. */
const char *openenv_action(json_t *data, size_t max, json_t **error);

/* openenv_utf8_trim: drops a UTF-8 sequence that a cut (snprintf's) left incomplete at
 * the end of s, so the text stays valid for JSON. */
void openenv_utf8_trim(char *s);

/* openenv_error: {"type":"error","data":{"message","code"[,"errors"]}}; errors (may be
 * NULL) is taken. A new reference. */
json_t *openenv_error(const char *code, json_t *errors, const char *message);
/* openenv_field_error: one pydantic-shaped entry list [{"type","loc":[loc],"msg"}]. */
json_t *openenv_field_error(const char *loc, const char *type, const char *msg);

/* openenv_reset_observation: the reset's reply from a ready session's row
 * ({"task_description","instructions","actions",…}): observation {"text" (instructions,
 * a blank line, the task), "task_description", "instructions", "actions",
 * "problem_id", "session_id"}, reward null, done false. A new reference. */
json_t *openenv_reset_observation(const json_t *row, const char *problem_id,
                                  const char *session_id);
/* openenv_step_observation: a step's reply from its answer {"observation","done",
 * "reward","results"}: observation {"text","step"[,"results" when done]}, reward and
 * done beside it. A new reference. */
json_t *openenv_step_observation(const json_t *answer, int step);

/* openenv_draw: the problem a reset without problem_id plays: of the catalog's ids
 * (those matching the glob pattern, when not NULL), the one seed picks (seed mod their
 * number), so the same seed draws the same problem. NULL when none matches. Borrowed
 * from catalog. */
const char *openenv_draw(const json_t *catalog, const char *pattern, unsigned long long seed);

#endif

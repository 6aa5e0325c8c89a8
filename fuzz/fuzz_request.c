/* libFuzzer target: task creation bodies, through JSON parsing and validation. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "model/task.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct task_defaults defs = {.max_steps = 30, .timeout_minutes = 30};
    json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
                              NULL);
    json_t *errors = NULL, *o;
    struct task *t = NULL;

    if (!body)
        return 0;
    if (task_request_parse(body, size > 3 ? "fuzz-key" : NULL, &defs, &t, &errors) == 0) {
        o = task_to_json(t);
        json_decref(o);
        task_free(t);
    }
    json_decref(errors);
    json_decref(body);
    return 0;
}

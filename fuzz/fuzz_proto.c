/* libFuzzer target: executor output lines (the JSON-lines protocol), and posted items. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "model/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proto_event ev;
    json_t *in;

    if (size == 0)
        return 0;
    /* The first byte picks the stream, the rest is the line. */
    if (proto_parse_line((const char *)data + 1, size - 1,
                         (data[0] & 1) ? PROTO_STDERR : PROTO_STDOUT, &ev) == 0)
        json_decref(ev.obj);
    in = json_loadb((const char *)data + 1, size - 1, 0, NULL);
    if (in) {
        if (proto_event_from_json(in, (data[0] & 2) ? "log" : "message", &ev) == 0)
            json_decref(ev.obj);
        json_decref(in);
    }
    return 0;
}

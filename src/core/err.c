/* err: names for the codes of err.h. */
#include "core/err.h"

const char *err_str(int code)
{
    switch (code) {
    case ERR_OK: return "success";
    case ERR_NOMEM: return "out of memory";
    case ERR_INVALID: return "invalid input";
    case ERR_NOTFOUND: return "not found";
    case ERR_CONFLICT: return "conflict with the current state";
    case ERR_STORE: return "database error";
    case ERR_IO: return "input/output error";
    case ERR_TIMEOUT: return "timed out";
    case ERR_FORBIDDEN: return "forbidden";
    case ERR_TOOBIG: return "too large";
    case ERR_UNAVAILABLE: return "temporarily unavailable";
    case ERR_UNSUPPORTED: return "not supported by this backend";
    }
    return "unknown error";
}

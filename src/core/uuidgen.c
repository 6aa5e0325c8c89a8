/* uuidgen: random UUIDs (see uuidgen.h). */
#include "core/uuidgen.h"

#include <uuid/uuid.h>

void uuidgen(char out[37])
{
    uuid_t u;

    uuid_generate_random(u);
    uuid_unparse_lower(u, out);
}

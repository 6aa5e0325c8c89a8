/* uuidgen: random UUIDs (see uuidgen.h). */
#include "core/uuidgen.h"

#include <sys/random.h>
#include <uuid/uuid.h>

void uuidgen(char out[37])
{
    uuid_t u;

    /* getrandom alone: libuuid's uuid_generate_random also reseeds its fallback
     * generator with five more system calls each time (getpid, getuid, getppid, gettid),
     * one id per claim and per task (#17). */
    if (getrandom(u, sizeof(u), 0) == (ssize_t)sizeof(u)) {
        u[6] = (unsigned char)((u[6] & 0x0f) | 0x40); /* version 4 */
        u[8] = (unsigned char)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    } else {
        uuid_generate_random(u);
    }
    uuid_unparse_lower(u, out);
}

/* store: backend selection and helpers shared by every backend (see store.h). */
#include "store.h"
#include "err.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

int store_open(const char *url, struct store **out)
{
    if (!strncmp(url, "sqlite://", 9))
        return store_sqlite_ops.open(url + 9, out);
    if (!strncmp(url, "postgresql://", 13) || !strncmp(url, "postgres://", 11) ||
        !strncmp(url, "postgresql+asyncpg://", 21))
        return store_pg_ops.open(url, out);
    log_error("DATABASE_URL must start with sqlite:// or postgresql://");
    return ERR_INVALID;
}

void store_close(struct store *st)
{
    if (st)
        st->ops->close(st);
}

void store_task_page_reset(struct task_page *p)
{
    for (size_t i = 0; i < p->n; i++)
        task_free(p->items[i]);
    free(p->items);
    memset(p, 0, sizeof(*p));
}

/* testdb: a fresh store database for a unit test, on either backend.
 *
 * SQLite: a new temporary directory holding t.db. PostgreSQL: the database that
 * TASKEXEC_TEST_PG_URL names (tests/it/test_store_unit.py sets it to a database of its
 * throwaway cluster) with its schema dropped, so each case starts empty. Header-only:
 * each unit test is one translation unit. */
#ifndef TASKEXEC_TESTDB_H
#define TASKEXEC_TESTDB_H

#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct testdb {
    bool pg;
    char dir[64];              /* SQLite: the temporary directory */
    char url[512];             /* what store_open takes */
};

/* Whether the PostgreSQL cases should run. */
static inline bool testdb_have_pg(void)
{
    const char *u = getenv("TASKEXEC_TEST_PG_URL");

    return u && *u;
}

/* Runs sql on d's database behind the store's back. 0 when it ran. */
static inline int testdb_sql(const struct testdb *d, const char *sql)
{
    int rc = -1;

    if (d->pg) {
        /* the calls the store's libpq stubs forward (src/store/pg/libpq_lazy.c) */
        const char *keys[] = {"dbname", NULL}, *vals[] = {d->url, NULL};
        PGconn *c = PQconnectdbParams(keys, vals, 1);
        PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, sql) : NULL;
        if (r && PQresultStatus(r) == PGRES_COMMAND_OK)
            rc = 0;
        PQclear(r);
        PQfinish(c);
    } else {
        char path[128];
        sqlite3 *db = NULL;
        snprintf(path, sizeof(path), "%s/t.db", d->dir);
        if (sqlite3_open(path, &db) == SQLITE_OK &&
            sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK)
            rc = 0;
        sqlite3_close(db);
    }
    return rc;
}

/* Makes d an empty database of the backend pg says. 0, or -1. */
static inline int testdb_fresh(struct testdb *d, bool pg)
{
    memset(d, 0, sizeof(*d));
    d->pg = pg;
    if (pg) {
        snprintf(d->url, sizeof(d->url), "%s", getenv("TASKEXEC_TEST_PG_URL"));
        return testdb_sql(d, "SET client_min_messages = warning; DROP SCHEMA public CASCADE; "
                             "CREATE SCHEMA public");
    }
    snprintf(d->dir, sizeof(d->dir), "/tmp/taskexec-unit-XXXXXX");
    if (!mkdtemp(d->dir))
        return -1;
    snprintf(d->url, sizeof(d->url), "sqlite://%s/t.db", d->dir);
    return 0;
}

/* Removes what testdb_fresh made on disk (SQLite's directory). 0, or -1. */
static inline int testdb_remove(const struct testdb *d)
{
    char cmd[128];

    if (d->pg)
        return 0;
    snprintf(cmd, sizeof(cmd), "rm -rf %s", d->dir);
    return system(cmd) == 0 ? 0 : -1;
}

#endif

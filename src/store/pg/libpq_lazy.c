/* libpq_lazy: libpq opened at the first PostgreSQL store, not at start (core/dynlib.h
 * says why). Each function the store calls is defined here with libpq-fe.h's own
 * declaration, so the compiler checks every forward against the real signature. */
#include "core/dynlib.h"
#include "store/pg/pg_int.h"

#include <libpq-fe.h>

#define PQ_FUNCS(X)                                                                      \
    X(PQbackendPID) X(PQclear) X(PQcmdTuples) X(PQconnectdbParams) X(PQconsumeInput)     \
    X(PQerrorMessage) X(PQexec) X(PQexecParams) X(PQexecPrepared) X(PQfinish)            \
    X(PQfreemem) X(PQgetisnull) X(PQgetvalue) X(PQnfields) X(PQnotifies) X(PQntuples)    \
    X(PQprepare) X(PQresultErrorMessage) X(PQresultStatus) X(PQsocket) X(PQstatus)

DYNLIB_DEFINE(libpq, "libpq.so.5", "libpq5", PQ_FUNCS);

int pg_libpq_load(void)
{
    return dynlib_load(&libpq);
}

#define CALL(f) ((__typeof__(f) *)dynlib_fn(&libpq, I_##f))

int PQbackendPID(const PGconn *conn) { return CALL(PQbackendPID)(conn); }
void PQclear(PGresult *res) { CALL(PQclear)(res); }
char *PQcmdTuples(PGresult *res) { return CALL(PQcmdTuples)(res); }
PGconn *PQconnectdbParams(const char *const *keywords, const char *const *values,
                          int expand_dbname)
{
    return CALL(PQconnectdbParams)(keywords, values, expand_dbname);
}
int PQconsumeInput(PGconn *conn) { return CALL(PQconsumeInput)(conn); }
char *PQerrorMessage(const PGconn *conn) { return CALL(PQerrorMessage)(conn); }
PGresult *PQexec(PGconn *conn, const char *query) { return CALL(PQexec)(conn, query); }
PGresult *PQexecParams(PGconn *conn, const char *command, int nParams,
                       const Oid *paramTypes, const char *const *paramValues,
                       const int *paramLengths, const int *paramFormats, int resultFormat)
{
    return CALL(PQexecParams)(conn, command, nParams, paramTypes, paramValues,
                              paramLengths, paramFormats, resultFormat);
}
PGresult *PQexecPrepared(PGconn *conn, const char *stmtName, int nParams,
                         const char *const *paramValues, const int *paramLengths,
                         const int *paramFormats, int resultFormat)
{
    return CALL(PQexecPrepared)(conn, stmtName, nParams, paramValues, paramLengths,
                                paramFormats, resultFormat);
}
void PQfinish(PGconn *conn) { CALL(PQfinish)(conn); }
void PQfreemem(void *ptr) { CALL(PQfreemem)(ptr); }
int PQgetisnull(const PGresult *res, int tup_num, int field_num)
{
    return CALL(PQgetisnull)(res, tup_num, field_num);
}
char *PQgetvalue(const PGresult *res, int tup_num, int field_num)
{
    return CALL(PQgetvalue)(res, tup_num, field_num);
}
int PQnfields(const PGresult *res) { return CALL(PQnfields)(res); }
PGnotify *PQnotifies(PGconn *conn) { return CALL(PQnotifies)(conn); }
int PQntuples(const PGresult *res) { return CALL(PQntuples)(res); }
PGresult *PQprepare(PGconn *conn, const char *stmtName, const char *query, int nParams,
                    const Oid *paramTypes)
{
    return CALL(PQprepare)(conn, stmtName, query, nParams, paramTypes);
}
char *PQresultErrorMessage(const PGresult *res) { return CALL(PQresultErrorMessage)(res); }
ExecStatusType PQresultStatus(const PGresult *res) { return CALL(PQresultStatus)(res); }
int PQsocket(const PGconn *conn) { return CALL(PQsocket)(conn); }
ConnStatusType PQstatus(const PGconn *conn) { return CALL(PQstatus)(conn); }

/* access: see access.h. */
#include "model/access.h"
#include "core/crypto.h"
#include "core/err.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct entry {
    char digest[CRYPTO_HEX_SHA256];
    enum access_role role;
};

struct access {
    struct entry *e;
    size_t n, cap;
};

static const char *const names[] = {"none", "read", "write", "admin"};

const char *access_role_name(enum access_role r)
{
    return (unsigned)r < 4 ? names[r] : "none";
}

enum access_role access_role_parse(const char *s)
{
    for (int i = ROLE_READ; i <= ROLE_ADMIN; i++)
        if (s && !strcmp(s, names[i]))
            return (enum access_role)i;
    return ROLE_NONE;
}

bool access_token_valid(const char *t)
{
    size_t n = t ? strlen(t) : 0;

    if (n < ACCESS_TOKEN_MIN || n > ACCESS_TOKEN_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (t[i] <= ' ' || t[i] >= 0x7f)
            return false;
    return true;
}

const char *access_bearer(const char *header)
{
    const char *t;
    size_t n;

    if (!header || strncasecmp(header, "Bearer ", 7))
        return NULL;
    for (t = header + 7; *t == ' '; t++)
        ;
    n = strlen(t);
    if (n == 0 || n > ACCESS_TOKEN_MAX)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (t[i] <= ' ' || t[i] >= 0x7f)
            return NULL;
    return t;
}

enum access_role access_role_of(const struct access *a, const char *token)
{
    char digest[CRYPTO_HEX_SHA256];
    enum access_role role = ROLE_NONE;

    if (!a || !token)
        return ROLE_NONE;
    crypto_sha256_hex(token, digest);
    for (size_t i = 0; i < a->n; i++) /* every entry, whatever matched before */
        if (crypto_equal(a->e[i].digest, digest))
            role = a->e[i].role;
    return role;
}

bool access_enabled(const struct access *a)
{
    return a && a->n > 0;
}

void access_free(struct access *a)
{
    if (a) {
        free(a->e);
        free(a);
    }
}

/* Adds token with role; why says what is wrong with it (where: the setting or line). */
static int add(struct access *a, const char *token, enum access_role role, const char *where,
               char *why, size_t size)
{
    char digest[CRYPTO_HEX_SHA256];

    if (!access_token_valid(token)) {
        snprintf(why, size, "%s: a token must be %d to %d printable characters without spaces",
                 where, ACCESS_TOKEN_MIN, ACCESS_TOKEN_MAX);
        return ERR_INVALID;
    }
    crypto_sha256_hex(token, digest);
    for (size_t i = 0; i < a->n; i++)
        if (!strcmp(a->e[i].digest, digest)) {
            snprintf(why, size, "%s: this token is given twice", where);
            return ERR_INVALID;
        }
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 8;
        struct entry *e = realloc(a->e, cap * sizeof(*e));

        if (!e)
            return ERR_NOMEM;
        a->e = e;
        a->cap = cap;
    }
    memcpy(a->e[a->n].digest, digest, sizeof(digest));
    a->e[a->n++].role = role;
    return 0;
}

/* One line of the tokens file: "token role", a comment (#) or blank. */
static int add_line(struct access *a, char *line, const char *where, char *why, size_t size)
{
    char *save = NULL, *token, *role, *extra;
    enum access_role r;

    line[strcspn(line, "\r\n")] = '\0';
    token = strtok_r(line, " \t", &save);
    if (!token || token[0] == '#')
        return 0;
    role = strtok_r(NULL, " \t", &save);
    extra = strtok_r(NULL, " \t", &save);
    if (!role || extra) {
        snprintf(why, size, "%s: expected \"token role\" (role: read, write or admin)", where);
        return ERR_INVALID;
    }
    r = access_role_parse(role);
    if (r == ROLE_NONE) {
        snprintf(why, size, "%s: unknown role \"%.40s\" (read, write or admin)", where, role);
        return ERR_INVALID;
    }
    return add(a, token, r, where, why, size);
}

static int load_file(struct access *a, const char *path, char *why, size_t size)
{
    FILE *f = fopen(path, "r");
    char line[ACCESS_TOKEN_MAX + 64], where[300];
    int rc = 0, no = 0;
    size_t before = a->n;

    if (!f) {
        snprintf(why, size, "API_TOKENS_FILE %.200s: %s", path, strerror(errno));
        return ERR_IO;
    }
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        no++;
        snprintf(where, sizeof(where), "API_TOKENS_FILE %.200s line %d", path, no);
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(why, size, "%s: the line is too long", where);
            rc = ERR_INVALID;
            break;
        }
        rc = add_line(a, line, where, why, size);
    }
    if (rc == 0 && ferror(f)) {
        snprintf(why, size, "API_TOKENS_FILE %.200s: %s", path, strerror(errno));
        rc = ERR_IO;
    }
    fclose(f);
    if (rc == 0 && a->n == before) { /* a file meant to hold tokens that holds none */
        snprintf(why, size, "API_TOKENS_FILE %.200s has no token", path);
        rc = ERR_INVALID;
    }
    return rc;
}

int access_load(const char *api_token, const char *tokens_file, struct access **out, char *why,
                size_t why_size)
{
    struct access *a = calloc(1, sizeof(*a));
    int rc = a ? 0 : ERR_NOMEM;

    if (rc == 0 && api_token)
        rc = add(a, api_token, ROLE_ADMIN, "API_TOKEN", why, why_size);
    if (rc == 0 && tokens_file && !*tokens_file) {
        snprintf(why, why_size, "API_TOKENS_FILE is set but empty");
        rc = ERR_INVALID;
    } else if (rc == 0 && tokens_file) {
        rc = load_file(a, tokens_file, why, why_size);
    }
    if (rc < 0) {
        access_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

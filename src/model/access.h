/* access: who may call what (CONTRACT.md "Deployment and access control"): API tokens
 * with roles, and the parsing of an Authorization header.
 *
 * DESIGN
 * With no token configured, every caller has every role (FR-015: no authentication by
 * default). Otherwise a caller's role is the one of the token it presents: API_TOKEN is
 * admin; API_TOKENS_FILE lines are "token role". Each role includes the ones below it
 * (read < write < admin). Only SHA-256 digests of the tokens are kept, and a presented
 * token is compared with every one of them, in constant time each, so neither timing
 * nor an early exit tells how close a guess came. */
#ifndef TASKEXEC_ACCESS_H
#define TASKEXEC_ACCESS_H

#include <stdbool.h>
#include <stddef.h>

#define ACCESS_TOKEN_MIN 16
#define ACCESS_TOKEN_MAX 512

enum access_role { ROLE_NONE = 0, ROLE_READ, ROLE_WRITE, ROLE_ADMIN };

struct access;

/* access_role_name / access_role_parse: "read", "write", "admin"; parse gives ROLE_NONE
 * for anything else. */
const char *access_role_name(enum access_role r);
enum access_role access_role_parse(const char *s);

/* access_load: the tokens of api_token (admin; NULL: none) and of the file at
 * tokens_file (NULL: none). ERR_INVALID with why (the setting, or the file and line
 * number, and what is wrong) for a token that is empty, too short, too long or not
 * printable, an unknown role, a line that is not "token role", or a token given twice;
 * ERR_IO when the file cannot be read. Caller frees with access_free. */
int access_load(const char *api_token, const char *tokens_file, struct access **out, char *why,
                size_t why_size) __attribute__((warn_unused_result));
void access_free(struct access *a);
/* access_enabled: whether any token is configured (otherwise everyone is admin). */
bool access_enabled(const struct access *a);
/* access_role_of: the role of token (ROLE_NONE for an unknown one). */
enum access_role access_role_of(const struct access *a, const char *token);

/* access_bearer: the token of an Authorization header value "Bearer <token>" (the
 * scheme in any case, one or more spaces), pointing into header. NULL when the header
 * is absent, another scheme, or the token is empty, longer than ACCESS_TOKEN_MAX or has
 * a character outside printable ASCII. */
const char *access_bearer(const char *header);
/* access_token_valid: whether t is acceptable as a configured token (length within
 * ACCESS_TOKEN_MIN..ACCESS_TOKEN_MAX, printable ASCII, no space). */
bool access_token_valid(const char *t);

#endif

/* provision: Kind clusters for workers (see provision.h). */
#include "provision.h"
#include "buf.h"
#include "clock.h"
#include "err.h"
#include "exec.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

/* Runs argv; returns its exit code (or -1) and its output in *out (caller frees). */
static int run(char *const *argv, int timeout_s, char **out)
{
    return exec_capture(argv, environ, timeout_s, out);
}

static void last_line(const char *text, char *dst, size_t size)
{
    size_t n = strlen(text);

    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' '))
        n--;
    const char *start = text + n;
    while (start > text && start[-1] != '\n')
        start--;
    snprintf(dst, size, "%.*s", (int)(text + n - start), start);
}

static bool cluster_listed(const char *clusters, const char *name)
{
    size_t n = strlen(name);

    for (const char *p = clusters; (p = strstr(p, name)); p += n)
        if ((p == clusters || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
            return true;
    return false;
}

static int export_and_check(const struct provision_spec *s, char *why, size_t size)
{
    char ctx[300], *out = NULL;
    char *exp[] = {"kind", "export", "kubeconfig", "--name", (char *)(uintptr_t)s->cluster,
                   "--kubeconfig", (char *)(uintptr_t)s->kubeconfig, NULL};
    char *nodes[] = {"kubectl", "--kubeconfig", (char *)(uintptr_t)s->kubeconfig, "--context",
                     ctx, "get", "nodes", NULL};
    int code;

    snprintf(ctx, sizeof(ctx), "kind-%s", s->cluster);
    code = run(exp, 120, &out);
    if (code != 0) {
        last_line(out, why, size);
        free(out);
        return ERR_IO;
    }
    free(out);
    code = run(nodes, 60, &out);
    if (code != 0)
        last_line(out, why, size);
    free(out);
    return code == 0 ? 0 : ERR_IO;
}

int provision_kind(const struct provision_spec *s, char *error, size_t size)
{
    char *get[] = {"kind", "get", "clusters", NULL};
    char *del[] = {"kind", "delete", "cluster", "--name", (char *)(uintptr_t)s->cluster, NULL};
    char wait[32], why[400] = "";
    char *create[10] = {"kind", "create", "cluster", "--name", (char *)(uintptr_t)s->cluster,
                        "--wait", wait, NULL};
    char *out = NULL;
    int code;

    snprintf(wait, sizeof(wait), "%ds", s->create_timeout_seconds);
    if (s->kind_config) {
        create[7] = "--config";
        create[8] = (char *)(uintptr_t)s->kind_config;
        create[9] = NULL;
    }
    code = run(get, 60, &out);
    if (code != 0) {
        last_line(out, why, sizeof(why));
        snprintf(error, size, "`kind get clusters` failed: %s (is kind installed, and Docker "
                 "running?)", why);
        free(out);
        return ERR_IO;
    }
    if (cluster_listed(out, s->cluster)) {
        free(out);
        if (export_and_check(s, why, sizeof(why)) == 0) {
            log_info("provision: cluster %s is healthy", s->cluster);
            return 0;
        }
        log_warn("provision: cluster %s is unhealthy (%s); recreating it", s->cluster, why);
        code = run(del, 300, &out);
        if (code != 0) {
            last_line(out, why, sizeof(why));
            snprintf(error, size, "cannot delete the unhealthy cluster %s: %s", s->cluster, why);
            free(out);
            return ERR_IO;
        }
    }
    free(out);
    log_info("provision: creating cluster %s", s->cluster);
    code = run(create, s->create_timeout_seconds + 120, &out);
    if (code != 0) {
        last_line(out, why, sizeof(why));
        snprintf(error, size, "`kind create cluster --name %s` failed: %s", s->cluster, why);
        free(out);
        return ERR_IO;
    }
    free(out);
    if (export_and_check(s, why, sizeof(why)) < 0) {
        snprintf(error, size, "cluster %s was created but does not answer: %s", s->cluster, why);
        return ERR_IO;
    }
    log_info("provision: cluster %s is ready", s->cluster);
    return 0;
}

/* provision: Kind clusters for workers (see provision.h). */
#include "exec/provision.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/err.h"
#include "exec/exec.h"
#include "core/log.h"

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

/* Creates the cluster (it must not exist) and checks it answers. */
static int create(const struct provision_spec *s, char *error, size_t size)
{
    char wait[32], why[400] = "";
    char *argv[10] = {"kind", "create", "cluster", "--name", (char *)(uintptr_t)s->cluster,
                      "--wait", wait, NULL};
    char *out = NULL;
    int code;

    snprintf(wait, sizeof(wait), "%ds", s->create_timeout_seconds);
    if (s->kind_config) {
        argv[7] = "--config";
        argv[8] = (char *)(uintptr_t)s->kind_config;
        argv[9] = NULL;
    }
    log_info("provision: creating cluster %s", s->cluster);
    code = run(argv, s->create_timeout_seconds + 120, &out);
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

static int delete_cluster(const struct provision_spec *s, char *error, size_t size)
{
    char *argv[] = {"kind", "delete", "cluster", "--name", (char *)(uintptr_t)s->cluster, NULL};
    char why[400], *out = NULL;
    int code = run(argv, 300, &out);

    if (code != 0) {
        last_line(out, why, sizeof(why));
        snprintf(error, size, "cannot delete the cluster %s: %s", s->cluster, why);
    }
    free(out);
    return code == 0 ? 0 : ERR_IO;
}

int provision_kind(const struct provision_spec *s, char *error, size_t size)
{
    char *get[] = {"kind", "get", "clusters", NULL};
    char why[400] = "";
    char *out = NULL;
    int code;

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
        if (delete_cluster(s, error, size) < 0)
            return ERR_IO;
    } else {
        free(out);
    }
    return create(s, error, size);
}

/* ---- after each run ---- */

/* kubectl against the worker's cluster: argv[0..n) of the verb, NULL-terminated. */
static int kubectl(const struct provision_spec *s, const char *const *verb, int timeout_s,
                   char **out)
{
    char ctx[300];
    const char *argv[24];
    size_t n = 0;

    snprintf(ctx, sizeof(ctx), "kind-%s", s->cluster);
    argv[n++] = "kubectl";
    if (s->kubeconfig && *s->kubeconfig) {
        argv[n++] = "--kubeconfig";
        argv[n++] = s->kubeconfig;
    }
    argv[n++] = "--context";
    argv[n++] = ctx;
    for (size_t i = 0; verb[i] && n < 23; i++)
        argv[n++] = verb[i];
    argv[n] = NULL;
    return run((char *const *)(uintptr_t)argv, timeout_s, out);
}

static bool wanted(const json_t *namespaces, const char *ns)
{
    size_t i;
    json_t *v;

    json_array_foreach(namespaces, i, v)
        if (!strcmp(json_string_value(v), ns))
            return true;
    return false;
}

/* Deletes the namespaces of c->namespaces still present. */
static int delete_leftovers(struct cluster_care *c, char *why, size_t size)
{
    const char *list[] = {"get", "namespaces", "-o", "name", NULL};
    char *out = NULL, *line, *next;
    int code = kubectl(&c->spec, list, 60, &out);

    if (code != 0) {
        last_line(out ? out : "", why, size);
        free(out);
        return ERR_IO;
    }
    for (line = out; line && *line; line = next) {
        const char *ns = line;
        char *gone = NULL, tail[300];
        const char *del[] = {"delete", "namespace", NULL, "--wait=true", "--timeout=300s",
                             NULL};

        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (!strncmp(ns, "namespace/", 10))
            ns += 10;
        if (!*ns || !wanted(c->namespaces, ns))
            continue;
        log_warn("%s: namespace %s was left on the cluster by the last run; deleting it",
                 c->spec.cluster, ns);
        del[2] = ns;
        code = kubectl(&c->spec, del, 330, &gone);
        if (code != 0) {
            last_line(gone ? gone : "", tail, sizeof(tail));
            snprintf(why, size, "namespace %s left by the last run cannot be deleted: %s", ns,
                     tail);
            free(gone);
            free(out);
            return ERR_IO;
        }
        free(gone);
    }
    free(out);
    return 0;
}

/* Every node Ready (kubectl's STATUS column, the second). */
static int nodes_ready(struct cluster_care *c, char *why, size_t size)
{
    const char *verb[] = {"get", "nodes", "--no-headers", NULL};
    char *out = NULL, *line, *next, name[200], status[64];
    int code = kubectl(&c->spec, verb, 60, &out), n = 0;

    if (code != 0) {
        last_line(out ? out : "", why, size);
        free(out);
        return ERR_IO;
    }
    for (line = out; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (sscanf(line, "%199s %63s", name, status) != 2)
            continue;
        n++;
        if (strcmp(status, "Ready")) {
            snprintf(why, size, "node %s is %s", name, status);
            free(out);
            return ERR_IO;
        }
    }
    free(out);
    if (n == 0) {
        snprintf(why, size, "the cluster lists no nodes");
        return ERR_IO;
    }
    return 0;
}

static int recreate(struct cluster_care *c, const char *why, char *error, size_t size)
{
    int rc;

    if (c->repairing)
        c->repairing(c->ctx, why);
    log_warn("%s: recreating its cluster: %s", c->spec.cluster, why);
    rc = delete_cluster(&c->spec, error, size);
    if (rc == 0)
        rc = create(&c->spec, error, size);
    if (rc == 0)
        c->runs = 0;
    return rc;
}

int provision_after_run(struct cluster_care *c, bool count_run, char *error, size_t size)
{
    char why[500] = "";

    if (count_run)
        c->runs++;
    if (c->can_recreate && c->recycle_after > 0 && c->runs >= c->recycle_after) {
        snprintf(why, sizeof(why), "recycled after %d runs (CLUSTER_RECYCLE_AFTER_RUNS)",
                 c->runs);
        return recreate(c, why, error, size);
    }
    if (delete_leftovers(c, why, sizeof(why)) == 0 && nodes_ready(c, why, sizeof(why)) == 0)
        return 0;
    if (!c->can_recreate) {
        snprintf(error, size, "cluster %s is not usable: %s", c->spec.cluster, why);
        return ERR_IO;
    }
    return recreate(c, why, error, size);
}

/* provision: one Kind cluster per worker (FR-012). Checks that the cluster named after
 * the worker exists and answers, recreates it when it does not, and exports a
 * kubeconfig file for it alone. Runs kind and kubectl as child processes, in the
 * calling (worker) thread, never in an HTTP thread. */
#ifndef TASKEXEC_PROVISION_H
#define TASKEXEC_PROVISION_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct provision_spec {
    const char *cluster;        /* the Kind cluster name: the worker's name */
    const char *kubeconfig;     /* where to export its kubeconfig */
    const char *kind_config;    /* optional `kind create cluster --config` file */
    int create_timeout_seconds;
};

/* provision_kind: makes the cluster usable (see above). Returns 0, or a negative code
 * with what went wrong, in words, in error. Progress is logged. */
int provision_kind(const struct provision_spec *spec, char *error, size_t size)
    __attribute__((warn_unused_result));

/* After each run the worker's cluster must be as a fresh one: nothing of the problem
 * left, every node Ready (AIOpsLab's clusters are known to break after some runs). */
struct cluster_care {
    struct provision_spec spec;  /* the cluster; kubeconfig "" uses kubectl's default */
    bool can_recreate;           /* BACKEND_PROVISION=kind: an unusable cluster is recreated */
    int recycle_after;           /* recreate after this many runs; 0: never */
    int runs;                    /* runs since the cluster was (re)created */
    const json_t *namespaces;    /* namespaces a run may leave behind (borrowed strings) */
    /* Told before a slow repair (a recreation), so the worker shows it is offline. */
    void (*repairing)(void *ctx, const char *why);
    void *ctx;
};

/* provision_after_run: counts a run (count_run), recycles the cluster when due, deletes
 * leftover namespaces, checks the nodes and, when the cluster is unusable and may be,
 * recreates it. Returns 0 when the cluster is clean and ready; else a negative code
 * with the reason in error (the caller retries later). Runs kind and kubectl. */
int provision_after_run(struct cluster_care *care, bool count_run, char *error, size_t size)
    __attribute__((warn_unused_result));

#endif

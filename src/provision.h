/* provision: one Kind cluster per worker (FR-012). Checks that the cluster named after
 * the worker exists and answers, recreates it when it does not, and exports a
 * kubeconfig file for it alone. Runs kind and kubectl as child processes, in the
 * calling (worker) thread, never in an HTTP thread. */
#ifndef TASKEXEC_PROVISION_H
#define TASKEXEC_PROVISION_H

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

#endif

/* exec: run one executor child process and turn its output into protocol events.
 *
 * DESIGN
 * The child runs in its own process group with stdin, stdout and stderr on
 * pipes. One loop (in the calling worker thread) polls the pipes: it writes the
 * task line to stdin, splits stdout and stderr into lines, parses each with
 * proto_parse_line and hands the event to the caller at once, so logs are
 * visible while the task runs. Every tick (at most 100 ms apart) it asks the
 * caller whether to stop. Stopping sends SIGTERM to the group, then SIGKILL after
 * the grace period. When the child has exited the group is killed too, so nothing
 * it forked outlives it. Output beyond a byte budget is read and dropped. */
#ifndef TASKEXEC_EXEC_H
#define TASKEXEC_EXEC_H

#include "model/proto.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum exec_stop {
    EXEC_STOP_NONE = 0,
    EXEC_STOP_CANCEL,      /* the task was cancelled */
    EXEC_STOP_TIMEOUT,     /* the task's deadline passed */
    EXEC_STOP_LEASE_LOST,  /* someone else ended the task (reaper, another server) */
    EXEC_STOP_SHUTDOWN,    /* the server is shutting down */
};

struct exec_spec {
    char *const *argv;         /* borrowed; argv[0] is looked up in PATH */
    char *const *envp;         /* borrowed; the child's whole environment */
    const char *cwd;           /* borrowed; NULL: inherit */
    const char *input;         /* borrowed; written to stdin, then stdin is closed */
    size_t input_len;
    bool keep_stdin;           /* an interactive run: stdin stays open for hooks->take_input */
    int wake_fd;               /* with keep_stdin: an eventfd that, readable, means "call
                                * take_input now" (-1: only every tick) */
    int64_t deadline_ms;       /* clock_mono_ms() time; 0: none */
    int grace_ms;              /* SIGTERM to SIGKILL */
    size_t max_output;         /* bytes of output turned into events; the rest dropped */
};

struct exec_hooks {
    void *ctx;
    /* Takes ownership of ev->obj. */
    void (*on_event)(void *ctx, struct proto_event *ev);
    /* Called every tick; returns why to stop, or EXEC_STOP_NONE. */
    enum exec_stop (*should_stop)(void *ctx);
    /* With keep_stdin: called on every turn of the loop (woken: wake_fd fired); returns
     * bytes to write to the child's stdin (malloc'd, the loop frees them) or NULL. */
    char *(*take_input)(void *ctx, bool woken);
};

struct exec_outcome {
    bool started;              /* false: the spawn failed, see error */
    bool exited;               /* exited normally with exit_code */
    int exit_code;
    int signal;                /* killed by this signal (when !exited) */
    enum exec_stop stopped;    /* why we stopped it, if we did */
    size_t dropped_bytes;      /* output past max_output */
    double seconds;            /* wall time */
    char error[256];           /* spawn failure, in words */
};

/* exec_run: runs the child to the end (see DESIGN). Returns 0 when the child ran
 * (whatever its exit), ERR_IO when it could not be started (out->error says why),
 * ERR_NOMEM. Blocks the calling thread for the child's whole life. */
int exec_run(const struct exec_spec *spec, const struct exec_hooks *hooks,
             struct exec_outcome *out) __attribute__((warn_unused_result));

/* exec_capture: runs argv to its end (at most timeout_s seconds), for short helper
 * commands (kind, kubectl, the problem lister). Returns the exit code, or -1 when it
 * could not start, was killed or timed out; *out gets its output, stdout and stderr
 * as lines (caller frees; never NULL unless out of memory). */
int exec_capture(char *const *argv, char *const *envp, int timeout_s, char **out);

/* exec_describe: one sentence for how the child ended, e.g. "exited with status 3"
 * or "was killed by signal 9 (Killed)". */
void exec_describe(const struct exec_outcome *o, char *buf, size_t size);

#endif

/* exec: child processes for executors (see exec.h). */
#include "exec/exec.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define LINE_MAX_BYTES (1024 * 1024)  /* a longer line is split into pieces of this size */
#define TICK_MS 100
#define READ_CHUNK 65536

struct stream {
    int fd;                    /* -1 once closed */
    enum proto_stream kind;
    struct buf line;           /* bytes of the current, unfinished line */
};

struct run {
    const struct exec_spec *spec;
    const struct exec_hooks *hooks;
    struct exec_outcome *out;
    size_t emitted;            /* bytes turned into events so far */
    bool noted_drop;
};

/* In the child, between fork and exec: only async-signal-safe calls. */
static void child(const struct exec_spec *spec, int in, int outp, int errp, int report)
{
    sigset_t none;
    int e;

    sigemptyset(&none);
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0);
    /* If the server dies (even kill -9), its children go with it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (dup2(in, 0) < 0 || dup2(outp, 1) < 0 || dup2(errp, 2) < 0)
        goto fail;
    if (spec->cwd && chdir(spec->cwd) < 0)
        goto fail;
    execvpe(spec->argv[0], spec->argv, spec->envp);
fail:
    e = errno;
    if (write(report, &e, sizeof(e)) < 0)
        _exit(127);
    _exit(127);
}

#define RESULT_LINE_MAX 65536   /* a result line is still taken past the budget */

static void note_drop(struct run *r)
{
    struct proto_event ev;
    char msg[160];

    r->noted_drop = true;
    snprintf(msg, sizeof(msg), "executor output passed the limit of %zu bytes; further "
             "output is dropped (a result line is still taken)", r->spec->max_output);
    if (proto_parse_line(msg, strlen(msg), PROTO_STDERR, &ev) == 0)
        r->hooks->on_event(r->hooks->ctx, &ev);
}

/* Past the byte budget every line is dropped except a result, so a chatty run
 * keeps its outcome; the first drop is noted once. */
static void emit(struct run *r, const char *line, size_t len, enum proto_stream kind)
{
    struct proto_event ev;

    if (!r->noted_drop && r->emitted + len + 1 > r->spec->max_output)
        note_drop(r);
    if (r->noted_drop) {
        if (kind == PROTO_STDOUT && len <= RESULT_LINE_MAX && len > 0 && line[0] == '{' &&
            proto_parse_line(line, len, kind, &ev) == 0) {
            if (ev.kind == PROTO_RESULT) {
                r->hooks->on_event(r->hooks->ctx, &ev);
                return;
            }
            json_decref(ev.obj);
        }
        r->out->dropped_bytes += len + 1;
        return;
    }
    r->emitted += len + 1;
    if (proto_parse_line(line, len, kind, &ev) == 0)
        r->hooks->on_event(r->hooks->ctx, &ev);
}

/* Reads what is there; emits each whole line. Returns false at EOF or error. */
static bool pump(struct run *r, struct stream *s)
{
    char chunk[READ_CHUNK];
    ssize_t n = read(s->fd, chunk, sizeof(chunk));
    size_t start = 0;

    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return true;
    if (n <= 0)
        return false;
    for (size_t i = 0; i < (size_t)n; i++) {
        if (chunk[i] != '\n')
            continue;
        if (s->line.len) {
            if (buf_append(&s->line, chunk + start, i - start) < 0)
                return false;
            emit(r, s->line.data, s->line.len, s->kind);
            buf_consume(&s->line, s->line.len);
        } else {
            emit(r, chunk + start, i - start, s->kind);
        }
        start = i + 1;
    }
    while (start < (size_t)n) {
        size_t room = LINE_MAX_BYTES - s->line.len, take = (size_t)n - start;
        if (take > room)
            take = room;
        if (buf_append(&s->line, chunk + start, take) < 0)
            return false;
        start += take;
        if (s->line.len == LINE_MAX_BYTES) {
            emit(r, s->line.data, s->line.len, s->kind);
            buf_consume(&s->line, s->line.len);
        }
    }
    return true;
}

static void flush_tail(struct run *r, struct stream *s)
{
    if (s->line.len)
        emit(r, s->line.data, s->line.len, s->kind);
    buf_reset(&s->line);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static int spawn(const struct exec_spec *spec, pid_t *pid, int *in_w, int *out_r, int *err_r,
                 char *error, size_t esize)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, rep[2] = {-1, -1};
    int child_errno = 0, rc = ERR_IO;
    ssize_t n;
    pid_t p;

    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 ||
        pipe2(rep, O_CLOEXEC) < 0) {
        snprintf(error, esize, "could not create pipes: %s", strerror(errno));
        goto out;
    }
    p = fork();
    if (p < 0) {
        snprintf(error, esize, "could not fork: %s", strerror(errno));
        goto out;
    }
    if (p == 0)
        child(spec, in[0], out[1], err[1], rep[1]);
    setpgid(p, p); /* also in the parent, so the group exists before we might signal it */
    close_fd(&rep[1]);
    do {
        n = read(rep[0], &child_errno, sizeof(child_errno));
    } while (n < 0 && errno == EINTR);
    if (n == sizeof(child_errno)) {
        snprintf(error, esize, "could not start executor '%s': %s", spec->argv[0],
                 strerror(child_errno));
        waitpid(p, NULL, 0);
        goto out;
    }
    *pid = p;
    *in_w = in[1];
    *out_r = out[0];
    *err_r = err[0];
    in[1] = out[0] = err[0] = -1;
    rc = 0;
out:
    close_fd(&in[0]);
    close_fd(&in[1]);
    close_fd(&out[0]);
    close_fd(&out[1]);
    close_fd(&err[0]);
    close_fd(&err[1]);
    close_fd(&rep[0]);
    close_fd(&rep[1]);
    return rc;
}

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* What one exec_run tracks between its steps. */
struct loop {
    struct stream st[2];          /* the child's stdout and stderr */
    int in_fd;                    /* the child's stdin; -1 once closed */
    struct buf inq;               /* bytes for the child's stdin, from written on */
    size_t written;
    pid_t pid;
    int status;                   /* from waitpid, once reaped */
    bool reaped, killed;
    int64_t term_at;              /* when SIGTERM was sent */
    struct pollfd pfd[4];
    int idx_in, idx_wake, idx_s[2]; /* each one's slot in pfd, or -1 */
};

/* Queues the input, spawns the child and readies its pipes. Returns 0, or
 * ERR_NOMEM / ERR_IO with nothing left open (out->error says why on ERR_IO). */
static int loop_start(struct loop *l, const struct exec_spec *spec, struct exec_outcome *out)
{
    buf_init(&l->inq, 1u << 30);
    if (spec->input_len && buf_append(&l->inq, spec->input, spec->input_len) < 0)
        return ERR_NOMEM;
    if (spawn(spec, &l->pid, &l->in_fd, &l->st[0].fd, &l->st[1].fd, out->error,
              sizeof(out->error)) < 0) {
        buf_reset(&l->inq);
        return ERR_IO;
    }
    out->started = true;
    /* Room for a split line plus one read, so appending never fails. */
    buf_init(&l->st[0].line, LINE_MAX_BYTES + READ_CHUNK);
    buf_init(&l->st[1].line, LINE_MAX_BYTES + READ_CHUNK);
    set_nonblock(l->in_fd);
    set_nonblock(l->st[0].fd);
    set_nonblock(l->st[1].fd);
    if (!l->inq.len && !spec->keep_stdin)
        close_fd(&l->in_fd);
    return 0;
}

/* Fills l->pfd with what is worth waiting on; returns how many. */
static int loop_fds(struct loop *l, const struct exec_spec *spec)
{
    int n = 0;

    l->idx_in = l->idx_wake = l->idx_s[0] = l->idx_s[1] = -1;
    if (l->in_fd >= 0 && l->written < l->inq.len) {
        l->idx_in = n;
        l->pfd[n++] = (struct pollfd){.fd = l->in_fd, .events = POLLOUT};
    }
    if (l->in_fd >= 0 && spec->keep_stdin && spec->wake_fd >= 0) {
        l->idx_wake = n;
        l->pfd[n++] = (struct pollfd){.fd = spec->wake_fd, .events = POLLIN};
    }
    for (int i = 0; i < 2; i++) {
        if (l->st[i].fd >= 0) {
            l->idx_s[i] = n;
            l->pfd[n++] = (struct pollfd){.fd = l->st[i].fd, .events = POLLIN};
        }
    }
    return n;
}

static bool ready(const struct loop *l, int idx)
{
    return idx >= 0 && l->pfd[idx].revents;
}

/* Takes more input for an interactive child and writes what the pipe accepts. */
static void loop_input(struct loop *l, const struct exec_spec *spec,
                       const struct exec_hooks *hooks, const struct exec_outcome *out)
{
    if (ready(l, l->idx_wake)) {
        uint64_t count; /* drained; take_input below is what answers it */
        ssize_t got = read(spec->wake_fd, &count, sizeof(count));
        (void)got;
    }
    if (l->in_fd >= 0 && spec->keep_stdin && hooks->take_input && !out->stopped) {
        char *more = hooks->take_input(hooks->ctx, ready(l, l->idx_wake));
        if (more) {
            if (buf_append(&l->inq, more, strlen(more)) < 0)
                close_fd(&l->in_fd); /* cannot queue it: the child sees end of input */
            free(more);
        }
    }
    if (ready(l, l->idx_in)) {
        ssize_t w = write(l->in_fd, l->inq.data + l->written, l->inq.len - l->written);
        if (w > 0)
            l->written += (size_t)w;
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            close_fd(&l->in_fd);
        if (l->written == l->inq.len) {
            buf_consume(&l->inq, l->inq.len);
            l->written = 0;
            if (!spec->keep_stdin)
                close_fd(&l->in_fd);
        }
    }
}

/* Reads stdout and stderr into events; closes each at its end. */
static void loop_output(struct loop *l, struct run *r)
{
    for (int i = 0; i < 2; i++) {
        if (ready(l, l->idx_s[i])) {
            if (!pump(r, &l->st[i])) {
                flush_tail(r, &l->st[i]);
                close_fd(&l->st[i].fd);
            }
        } else if (l->reaped && l->st[i].fd >= 0) {
            /* The child is gone and nothing is left to read: a grandchild may
             * hold the pipe, but it has been killed with the group. */
            flush_tail(r, &l->st[i]);
            close_fd(&l->st[i].fd);
        }
    }
}

/* Asks whether the run must stop (hook or deadline): SIGTERM first, SIGKILL
 * after the grace period. */
static void loop_stop(struct loop *l, const struct exec_spec *spec,
                      const struct exec_hooks *hooks, struct exec_outcome *out)
{
    int64_t now = clock_mono_ms();
    enum exec_stop why = hooks->should_stop(hooks->ctx);

    if (why == EXEC_STOP_NONE && spec->deadline_ms && now >= spec->deadline_ms)
        why = EXEC_STOP_TIMEOUT;
    if (why != EXEC_STOP_NONE && !out->stopped) {
        out->stopped = why;
        l->term_at = now;
        /* End of input too: a session's environment waiting for its next action
         * learns it is over even if it handles SIGTERM by cleaning up first. */
        close_fd(&l->in_fd);
        kill(-l->pid, SIGTERM);
    }
    if (out->stopped && !l->killed && now - l->term_at >= spec->grace_ms) {
        l->killed = true;
        kill(-l->pid, SIGKILL);
    }
}

/* Reaps the child if not yet, closes everything and fills in how it ended. */
static void loop_finish(struct loop *l, struct exec_outcome *out, int64_t start)
{
    if (!l->reaped) {
        kill(-l->pid, SIGKILL);
        waitpid(l->pid, &l->status, 0);
    }
    close_fd(&l->in_fd);
    buf_reset(&l->inq);
    for (int i = 0; i < 2; i++) {
        close_fd(&l->st[i].fd);
        buf_reset(&l->st[i].line);
    }
    if (WIFEXITED(l->status)) {
        out->exited = true;
        out->exit_code = WEXITSTATUS(l->status);
    } else if (WIFSIGNALED(l->status)) {
        out->signal = WTERMSIG(l->status);
    }
    out->seconds = (double)(clock_mono_ms() - start) / 1000.0;
}

int exec_run(const struct exec_spec *spec, const struct exec_hooks *hooks,
             struct exec_outcome *out)
{
    struct loop l = {.st = {{.fd = -1, .kind = PROTO_STDOUT}, {.fd = -1, .kind = PROTO_STDERR}},
                     .in_fd = -1, .pid = -1};
    struct run r = {.spec = spec, .hooks = hooks, .out = out};
    int64_t start = clock_mono_ms();
    int rc;

    memset(out, 0, sizeof(*out));
    rc = loop_start(&l, spec, out);
    if (rc < 0)
        return rc;
    while (!l.reaped || l.st[0].fd >= 0 || l.st[1].fd >= 0) {
        int n = loop_fds(&l, spec);

        if (poll(l.pfd, (nfds_t)n, l.reaped ? 0 : TICK_MS) < 0 && errno != EINTR)
            break;
        loop_input(&l, spec, hooks, out);
        loop_output(&l, &r);
        if (!l.reaped && waitpid(l.pid, &l.status, WNOHANG) == l.pid) {
            l.reaped = true;
            kill(-l.pid, SIGKILL); /* whatever it forked goes too */
            continue;
        }
        if (!l.reaped)
            loop_stop(&l, spec, hooks, out);
    }
    loop_finish(&l, out, start);
    return 0;
}

struct capture {
    struct buf out;
};

static void capture_line(void *ctx, struct proto_event *ev)
{
    struct capture *c = ctx;
    const char *m = json_string_value(json_object_get(ev->obj, "message"));
    char *raw = NULL;

    if (!m) /* a protocol line: keep it as it came */
        m = raw = json_dumps(ev->obj, JSON_COMPACT);
    if (m && buf_append(&c->out, m, strlen(m)) == 0 && buf_append(&c->out, "\n", 1) < 0)
        c->out.len--; /* full: the output is cut, which the caller can live with */
    free(raw);
    json_decref(ev->obj);
    ev->obj = NULL;
}

static enum exec_stop never_stop(void *ctx)
{
    (void)ctx;
    return EXEC_STOP_NONE;
}

int exec_capture(char *const *argv, char *const *envp, int timeout_s, char **out)
{
    struct capture c;
    struct exec_spec spec = {.argv = argv, .envp = envp, .grace_ms = 5000,
                             .max_output = 1 << 20,
                             .deadline_ms = clock_mono_ms() + (int64_t)timeout_s * 1000};
    struct exec_hooks hooks = {.ctx = &c, .on_event = capture_line, .should_stop = never_stop};
    struct exec_outcome o;
    int code = -1;

    buf_init(&c.out, 2 << 20);
    if (exec_run(&spec, &hooks, &o) == 0 && o.exited && !o.stopped)
        code = o.exit_code;
    else if (!o.started && buf_append(&c.out, o.error, strlen(o.error)) < 0)
        code = -1;
    else if (o.stopped && buf_appendf(&c.out, "(stopped after %d s)", timeout_s) < 0)
        code = -1;
    *out = c.out.data ? buf_steal(&c.out) : strdup("");
    return code;
}

void exec_describe(const struct exec_outcome *o, char *buf, size_t size)
{
    if (!o->started)
        snprintf(buf, size, "%s", o->error);
    else if (o->exited)
        snprintf(buf, size, "exited with status %d", o->exit_code);
    else
        snprintf(buf, size, "was killed by signal %d (%s)", o->signal, strsignal(o->signal));
}

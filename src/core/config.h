/* config: every setting in one table; defaults < .env < environment < flags. */
#ifndef TASKEXEC_CONFIG_H
#define TASKEXEC_CONFIG_H

#include <stdbool.h>

struct config {
    char *database_url;          /* sqlite://PATH or postgresql://... */
    char *host;
    int port;
    int num_internal_workers;
    bool auto_start_workers;
    int default_timeout_minutes;
    int default_max_steps;
    int default_max_retries;
    int openenv_max_connections;
    int openenv_max_message_bytes;
    int openenv_idle_seconds;
    int retry_base_seconds;
    char *llm_upstream_url;      /* the LLM gateway's default upstream, or NULL */
    char *llm_upstream_key_env;  /* variable holding its key */
    char *llm_key_envs;          /* more key variables an agent_config may name */
    int llm_timeout_seconds;
    int llm_max_calls_per_task;
    int max_experiment_tasks;
    char *log_level;
    char *log_format;            /* text | json */
    char *executor;              /* simulated | command | aiopslab | noop */
    char *executor_command;      /* argv for "command", split on blanks */
    char *worker_backend_type;
    char *worker_name_prefix;
    char *worker_supported_problems; /* comma-separated globs; NULL: every problem */
    int heartbeat_timeout_seconds;
    int max_internal_workers;
    int max_body_bytes;
    char *problem_validation;    /* lenient | strict */
    char *backend_provision;     /* none | kind */
    char *api_token;             /* an admin token; NULL: see api_tokens_file */
    char *api_tokens_file;       /* "token role" lines */
    char *worker_join_token;     /* registering a worker needs it; NULL: open */
    char *outbound_allow_hosts;  /* hosts outbound calls may reach on link-local addresses */
    char *webhook_secret;
    char *webhook_allowed_hosts;
    int webhook_max_attempts;
    int webhook_retry_base_ms;   /* back-off: base * 2^(attempt-1), at most an hour */
    int webhook_timeout_seconds;
    int session_idle_minutes;
    int sse_client_buffer_kb;
    int event_retention_hours;
    int http_threads;            /* libmicrohttpd thread pool size */
    int http_max_connections;
    int http_timeout_seconds;    /* an idle or slow connection is closed after this */
    int http_max_header_bytes;   /* per-connection memory for the request line and headers */
    int poll_interval_ms;        /* idle worker's fallback poll */
    int exec_grace_seconds;      /* SIGTERM to SIGKILL */
    int max_output_bytes;        /* per task: executor output kept, beyond it dropped */
    char *aiopslab_python;       /* interpreter of the aiopslab runner */
    char *aiopslab_dir;          /* AIOpsLab checkout put on PYTHONPATH; {worker} expands */
    char *kind_config;           /* `kind create cluster --config` file */
    int kind_create_timeout_seconds;
    int provision_retry_seconds;
    bool cluster_check;          /* check and clean the worker's cluster after each run */
    int cluster_recycle_after_runs; /* recreate the Kind cluster after N runs; 0: never */
    char *work_dir;              /* parent of each task's working directory (absolute) */
    char *problems_file;         /* catalog of known problem ids */
};

/* config_load: fills cfg from defaults, ./.env (if present), the environment and
 * the flags in argv[0..argc) ("--port 9000" or "--port=9000"). On ERR_INVALID
 * it has printed what is wrong to stderr; cfg must still be freed with
 * config_reset. Unknown flags are errors. */
int config_load(struct config *cfg, int argc, char **argv) __attribute__((warn_unused_result));
/* config_reset: frees the strings of cfg. */
void config_reset(struct config *cfg);
/* config_print_help: the table of settings, for --help. */
void config_print_help(void);

#endif

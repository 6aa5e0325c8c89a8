/* main: the taskexec command: subcommands and their dispatch. */
#include "cli/cli.h"
#include "core/config.h"
#include "core/err.h"
#include "store/store.h"
#include "worker/extworker.h"
#include "http/server.h"
#include "exec/simulate.h"
#include "core/version.h"

#include <stdio.h>
#include <string.h>

/* `taskexec migrate`: opening the store applies pending migrations. */
static int migrate_main(int argc, char **argv)
{
    struct config cfg;
    struct store *st = NULL;
    int rc;

    if (config_load(&cfg, argc, argv) < 0) {
        config_reset(&cfg);
        return 2;
    }
    rc = store_open(cfg.database_url, &st);
    if (rc == 0)
        printf("taskexec: the %s schema of %s is up to date\n", store_name(st),
               cfg.database_url);
    else
        fprintf(stderr, "taskexec: migrating %s failed: %s\n", cfg.database_url, err_str(rc));
    store_close(st);
    config_reset(&cfg);
    return rc == 0 ? 0 : 3;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: taskexec COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  serve      run the REST API with internal workers\n"
            "  worker     run an external worker: --api URL --id NAME [--backend-type T]\n"
            "             [--supported-problems 'glob,glob'] [settings as for serve]\n"
            "  migrate    create or upgrade the database schema, then exit\n"
            "  submit, status, list, logs, cancel, export, session, experiment\n"
            "             the client (taskexec submit --help)\n"
            "  simulate   the simulated executor (reads a task line on stdin)\n"
            "  version    print the version\n"
            "\n"
            "serve takes every setting as --name-in-lower-case VALUE (see serve --help).\n");
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : NULL;

    if (!cmd || !strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(cmd ? stdout : stderr);
        return cmd ? 0 : 2;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("taskexec %s\n", TASKEXEC_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "serve")) {
        if (argc > 2 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
            printf("usage: taskexec serve [--setting VALUE]...\n\n");
            config_print_help();
            return 0;
        }
        return server_run(argc - 2, argv + 2);
    }
    if (!strcmp(cmd, "submit") || !strcmp(cmd, "status") || !strcmp(cmd, "list") ||
        !strcmp(cmd, "logs") || !strcmp(cmd, "cancel") || !strcmp(cmd, "export") ||
        !strcmp(cmd, "session") || !strcmp(cmd, "experiment")) {
        return cli_main(argc - 1, argv + 1);
    }
    if (!strcmp(cmd, "migrate"))
        return migrate_main(argc - 2, argv + 2);
    if (!strcmp(cmd, "worker"))
        return extworker_main(argc - 2, argv + 2);
    if (!strcmp(cmd, "simulate"))
        return simulate_main();
    fprintf(stderr, "taskexec: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}

/* cli: the client subcommands (submit, status, list, logs, cancel, export) over the REST
 * API. Exit codes: 0 success, 1 the task ended other than completed, 2 usage, 3 server
 * or network error. */
#ifndef TASKEXEC_CLI_H
#define TASKEXEC_CLI_H

/* cli_main: runs `taskexec <cmd> ...`; argv[0] is the subcommand. Returns the exit code. */
int cli_main(int argc, char **argv);

#endif

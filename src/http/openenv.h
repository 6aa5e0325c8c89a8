/* openenv: the OpenEnv endpoint's routes (the protocol is described in openenv.c):
 * GET /openenv/ws (WebSocket), /openenv/health, /openenv/metadata, /openenv/schema. */
#ifndef TASKEXEC_OPENENV_H
#define TASKEXEC_OPENENV_H

struct request;

int api_openenv_ws(struct request *req);
int api_openenv_health(struct request *req);
int api_openenv_metadata(struct request *req);
int api_openenv_schema(struct request *req);

#endif

/* export: GET /api/v1/export, every matching task with its logs and conversations,
 * streamed in constant memory (CONTRACT.md "Export"). */
#ifndef TASKEXEC_EXPORT_H
#define TASKEXEC_EXPORT_H

#include "http/api.h"

#endif

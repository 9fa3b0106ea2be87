/*
 * admin.h: the operator's HTTP endpoint (admin.listen) and the backend
 * reachability probe behind it.
 *
 * Owns: GET /health (200 while serving; 503 while draining or while no
 * backend answers with a 220 greeting) and GET /metrics (Prometheus text).
 * Runs on the main thread's loop; reads server state through atomics only.
 */
#ifndef MX_ADMIN_H
#define MX_ADMIN_H

#include "server.h"

typedef struct mx_admin mx_admin;

mx_admin *mx_admin_start(mx_server *srv, struct ev_loop *loop, char **err);
void mx_admin_stop(mx_admin *a);

#endif

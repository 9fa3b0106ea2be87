/*
 * session.h: one client SMTP session, from accept to close.
 *
 * Owns: the client connection, the SMTP state machine (RFC 5321, 2920,
 * 3030), the transaction, the message spool, and the session's relay to the
 * backend. Runs entirely on its worker's loop.
 */
#ifndef MX_SESSION_H
#define MX_SESSION_H

#include <sys/socket.h>

#include "server.h"

/* Take over an accepted, non-blocking socket. */
void mx_session_start(mx_worker *w, int fd, const struct sockaddr_storage *peer,
                      const mx_listen *l);

/* The worker is draining: close idle sessions now, the rest after their
 * transaction. With force, close everything now (421). */
void mx_session_drain_all(mx_worker *w, int force);

#endif

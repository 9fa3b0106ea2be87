/*
 * mc_pipe.h: many memcached storage commands in one stream, every reply
 * read.
 *
 * Owns: one short-lived TCP connection to one memcached server, the
 * requests written while the replies are read (so neither side's socket
 * buffer can fill and stall the other), and the reply lines matched to the
 * requests in order. For bulk writes (mxgatectl feed): one command and one
 * reply at a time costs a round trip and two system calls per record;
 * libmemcached 1.1.4's buffered mode, the other way to batch, loses
 * writes and its replies (see store_memcached.c).
 *
 * Blocking, with a deadline on every step: run it off the event loops.
 */
#ifndef MX_MC_PIPE_H
#define MX_MC_PIPE_H

#include <stddef.h>

/*
 * Send req (len bytes: n storage commands, "set", "add", "replace"...,
 * each answered by one line) to host:port and read the n reply lines.
 * ok[i] is 1 when command i was answered STORED, 0 for any other answer.
 * Returns 0 when all n replies were read, -1 with *err (g_free it) when
 * the server could not be reached or stopped answering for timeout_ms:
 * ok[] then says which commands were answered, and the rest are unknown.
 */
int mx_mc_pipeline(const char *host, int port, int timeout_ms, const void *req, size_t len,
                   size_t n, unsigned char *ok, char **err);

#endif

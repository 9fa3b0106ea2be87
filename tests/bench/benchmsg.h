/*
 * benchmsg.h: the benchmark's message, shared by mxload_session.c (which
 * sends it) and clscan.c (which scans it with libclamav alone), so both
 * measure the same bytes.
 *
 * Headers, then a text body of 76-character lines of pseudo-random
 * letters and digits (the same for every call), CRLF line ends, `size`
 * bytes in all (the last line is shortened to fit), no final dot. The
 * buffer has `spare` more bytes allocated after it for the caller.
 */
#ifndef MX_BENCHMSG_H
#define MX_BENCHMSG_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *bench_message(size_t size, const char *from, const char *rcpt, size_t spare,
                           size_t *len, size_t *body_off)
{
    char hdr[512];
    int hl = snprintf(hdr, sizeof(hdr),
                      "From: <%s>\r\n"
                      "To: <%s>\r\n"
                      "Subject: mxgate benchmark message\r\n"
                      "Message-ID: <bench.%ld@mxload.example>\r\n"
                      "MIME-Version: 1.0\r\n"
                      "Content-Type: text/plain; charset=us-ascii\r\n"
                      "\r\n",
                      from, rcpt, (long)getpid());
    if (hl < 0 || (size_t)hl >= sizeof(hdr))
        return NULL;
    if (size < (size_t)hl + 2)
        size = (size_t)hl + 2;
    char *m = malloc(size + spare);
    if (!m)
        return NULL;
    memcpy(m, hdr, (size_t)hl);
    size_t pos = (size_t)hl;
    *body_off = pos;
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    unsigned seed = 1;
    while (pos < size) {
        size_t left = size - pos;
        size_t line = left >= 78 ? 76 : left - 2;
        for (size_t i = 0; i < line; i++) {
            seed = seed * 1103515245u + 12345u;
            m[pos++] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
        }
        m[pos++] = '\r';
        m[pos++] = '\n';
    }
    *len = pos;
    return m;
}

#endif

/*
 * smtp_cmd.h: the SMTP command-line parser (RFC 5321 4.1, with the MAIL and
 * RCPT parameters of RFC 1870, 3461, 6152 and 6531).
 *
 * Owns: turning one command line (without its line ending) into a verb, an
 * argument and, for MAIL/RCPT, a path and parameters. Pure: no I/O, no
 * allocation, no logging; every span in the result points into the input.
 * Not here: line framing, sequencing (503s), limits that depend on config,
 * and whether the backend supports a parameter.
 */
#ifndef MX_SMTP_CMD_H
#define MX_SMTP_CMD_H

#include <stdint.h>

#include "mxdefs.h"

typedef enum {
    MX_CMD_UNKNOWN = 0,
    MX_CMD_HELO,
    MX_CMD_EHLO,
    MX_CMD_MAIL,
    MX_CMD_RCPT,
    MX_CMD_DATA,
    MX_CMD_BDAT,
    MX_CMD_RSET,
    MX_CMD_NOOP,
    MX_CMD_QUIT,
    MX_CMD_VRFY,
    MX_CMD_EXPN,
    MX_CMD_HELP,
    MX_CMD_STARTTLS,
    MX_CMD_AUTH,
    MX_CMD_ETRN,
    MX_CMD_NONSMTP, /* GET, POST, CONNECT, USER...: a web or proxy client */
    MX_CMD__COUNT
} mx_cmd_verb;

typedef enum {
    MX_CMD_OK = 0,
    MX_CMD_E_UNKNOWN,   /* 500 5.5.2 command not recognised */
    MX_CMD_E_CHAR,      /* 500 5.5.2 NUL, bare CR or other control byte */
    MX_CMD_E_SYNTAX,    /* 501 5.5.4 argument syntax */
    MX_CMD_E_SENDER,    /* 501 5.1.7 bad sender address syntax */
    MX_CMD_E_RCPT,      /* 501 5.1.3 bad recipient address syntax */
    MX_CMD_E_PARAM,     /* 555 5.5.4 unknown or malformed MAIL/RCPT parameter */
} mx_cmd_status;

#define MX_CMD_MAX_PARAMS 8
#define MX_CMD_MAX_PATH 256 /* RFC 5321 4.5.3.1.3 */

/* MAIL and RCPT parameters this parser knows; anything else is E_PARAM. */
typedef enum {
    MX_PARAM_SIZE,     /* MAIL, RFC 1870: digits */
    MX_PARAM_BODY,     /* MAIL, RFC 6152: 7BIT | 8BITMIME */
    MX_PARAM_SMTPUTF8, /* MAIL, RFC 6531: no value */
    MX_PARAM_RET,      /* MAIL, RFC 3461: FULL | HDRS */
    MX_PARAM_ENVID,    /* MAIL, RFC 3461: xtext, at most 100 chars */
    MX_PARAM_NOTIFY,   /* RCPT, RFC 3461: NEVER | comma list of SUCCESS, FAILURE, DELAY */
    MX_PARAM_ORCPT,    /* RCPT, RFC 3461: addr-type ";" xtext */
} mx_param_kind;

typedef struct mx_cmd_param {
    mx_param_kind kind;
    mx_span key;   /* as sent */
    mx_span value; /* len 0 when absent */
} mx_cmd_param;

typedef struct mx_cmd {
    mx_cmd_verb verb;
    mx_span verb_text; /* the verb as sent, for logs */
    mx_span arg;       /* everything after the verb and one SP, trailing SP trimmed */

    /* MAIL / RCPT only */
    mx_span path;      /* mailbox inside <>, source route removed; len 0 for <> */
    int null_path;     /* MAIL FROM:<> */
    int postmaster;    /* RCPT TO:<Postmaster> with no domain */
    int path_utf8;     /* path has bytes >= 0x80 (valid UTF-8) */
    size_t nparams;
    mx_cmd_param params[MX_CMD_MAX_PARAMS];
    uint64_t size;     /* SIZE= value, 0 when absent */
    int smtputf8;      /* SMTPUTF8 given */

    /* BDAT only */
    uint64_t chunk_size;
    int last;
} mx_cmd;

/*
 * Parse one command line [p, end), line ending already removed. On failure
 * returns a status and sets *why to a short static explanation suitable for
 * a reply text. Verbs are case-insensitive; HELO/EHLO need an argument;
 * DATA, RSET, QUIT, STARTTLS take none; "MAIL FROM:" and "RCPT TO:" accept
 * one optional space before "<" (common in the wild, harmless).
 */
mx_cmd_status mx_cmd_parse(const char *p, const char *end, mx_cmd *out, const char **why);

const char *mx_cmd_verb_name(mx_cmd_verb v);

#endif

/*
 * account.h: what each transaction was and how it ended, for the report,
 * the metrics and `mxgatectl explain`.
 *
 * Owns: the session's open transaction record (s->acct): its trace id,
 * its recipients with their direction and outcome, the decision record
 * (cluster/trace.h) that policy jobs and the scanner add to; and, when the
 * transaction ends, its classification and counting. Only session.c and
 * smtp_server.c call it, on the session's loop.
 *
 * A transaction starts at MAIL and ends at the reply to its message, or at
 * the next MAIL, RSET, EHLO, QUIT or disconnect. Its recipients are the
 * RCPT commands given in it, accepted or refused, including those refused
 * because MAIL was. Direction:
 *   client in networks.internal: outbound when a recipient is not local,
 *                                else internal;
 *   otherwise:                   inbound when a recipient is local (or
 *                                none was given), else relay-denied.
 * Each recipient is also counted under its own direction and outcome: a
 * refused recipient under the reason it was refused, the others under the
 * message's outcome. A transaction that ends with nothing refused and no
 * message sent (MAIL, RCPT, QUIT: an address probe) is traced, not counted.
 */
#ifndef MX_ACCOUNT_H
#define MX_ACCOUNT_H

#include "report.h"
#include "session_int.h"
#include "trace.h"

/* The id in the session's replies and log lines now: the transaction's
 * ("SID.N"), or the session's outside one. */
const char *mx_acct_id(const mx_session *s);

/* The decision record policy jobs add to: the transaction's, or the
 * connection's outside one. */
mx_trace *mx_acct_trace(mx_session *s);

/* Is the client in networks.internal? */
int mx_acct_internal(const mx_session *s);

/* MAIL: end any open transaction and start one for sender from. */
void mx_acct_open(mx_session *s, const char *from);

/* RCPT address (len bytes) given in the open transaction. */
void mx_acct_rcpt(mx_session *s, const char *addr, size_t len);
/* The last RCPT was refused: why (outcome) and the reply sent. */
void mx_acct_rcpt_refused(mx_session *s, mx_outcome o, const char *reply);
/* The last RCPT was accepted (the backend's reply). */
void mx_acct_rcpt_accepted(mx_session *s, const char *reply);

/* MAIL was refused: the recipients that follow share its fate. */
void mx_acct_mail_refused(mx_session *s, mx_outcome o, const char *reply, const char *why);

/* A refusal that leaves the transaction open (DATA tempfailed while the
 * scanner is down ...): the outcome if nothing else ends it. */
void mx_acct_refusal(mx_session *s, mx_outcome o, const char *reply, const char *why);

/* The message got its final reply (text as sent): count and close. */
void mx_acct_end(mx_session *s, mx_outcome o, const char *reply, const char *why);

/* Note why the transaction is being refused (the rule or record). */
void mx_acct_why(mx_session *s, const char *why);

/* The scanner's verdict and the backend's reply to the message. */
void mx_acct_scan(mx_session *s, const mx_scan_result *r);
void mx_acct_backend_reply(mx_session *s, const char *reply);

/* End the open transaction, if any (RSET, EHLO, QUIT, disconnect). */
void mx_acct_close(mx_session *s);

/* The connection was refused before any transaction (reputation, rate
 * limit, concurrency, early talk): keep its record under the session id. */
void mx_acct_connection_refused(mx_session *s, const char *reply, const char *why);

/* The session ends: free what is left. */
void mx_acct_free(mx_session *s);

/* The outcome of a reply mxgate gave for a reason it knows. */
mx_outcome mx_acct_outcome_of(mx_reply_id id);

#endif

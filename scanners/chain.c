/*
 * chain.c: running several scanners over one message (see scanner.h).
 *
 * First non-clean verdict wins: an error is as final as a detection,
 * because a scanner that failed has not vouched for the message.
 */
#include <string.h>

#include "scanner.h"

void mx_scanner_chain(mx_scanner *const *list, int n, const mx_scan_input *in,
                      mx_scan_result *out)
{
    memset(out, 0, sizeof(*out));
    out->verdict = MX_SCAN_CLEAN;
    for (int i = 0; i < n; i++) {
        list[i]->ops->scan(list[i], in, out);
        if (out->verdict != MX_SCAN_CLEAN)
            return;
    }
}

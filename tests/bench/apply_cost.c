/* apply_cost: drives storage_apply alone, for instruction counts.
 *
 *     apply_cost ENTRIES PER_ENTRY [SESSIONS]
 *
 * Fills SESSIONS sessions (10,000) with one 100-byte property each, in
 * entries of 100 writes, then applies ENTRIES entries of PER_ENTRY PUTs of
 * that property in random sessions (fixed seed), as the leader's batches
 * would. It prints nothing and exits 0; cluster/bench --apply-cost runs it
 * under callgrind (--toggle-collect=storage_apply) at two ENTRIES and
 * divides the difference, so start-up, the fill and the encoding of the
 * commands cancel out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/buf.h"
#include "../../storage/command.h"
#include "../../storage/storage.h"

#define FILL_PER_ENTRY 100
#define VALUE_BYTES 100 /* JSON text, quotes included */
#define ENTRY_TIME_MS 1700000000000ull

static int add_put(struct buf *entry, long session, const char *value)
{
    struct buf enc = BUF_INIT;
    struct cmd c;
    char sid[24];
    int rv;

    memset(&c, 0, sizeof c);
    snprintf(sid, sizeof sid, "s%ld", session);
    c.op = CMD_PROP_PUT;
    c.acc.base = "bench";
    c.acc.len = 5;
    c.ns.base = "bench";
    c.ns.len = 5;
    c.sid.base = sid;
    c.sid.len = (uint32_t)strlen(sid);
    c.name.base = "p";
    c.name.len = 1;
    c.value.base = value;
    c.value.len = (uint32_t)strlen(value);
    rv = cmd_encode(&c, &enc);
    if (rv == 0) {
        rv = cmd_entry_add(entry, enc.base, enc.len);
    }
    buf_free(&enc);
    return rv;
}

/* Apply one entry of n PUTs; session i of the entry is pick(i). */
static int apply(struct storage *s, uint64_t index, long n, long first,
                 long sessions, const char *value)
{
    struct storage_result *res = NULL;
    struct buf entry = BUF_INIT;
    uint32_t n_res = 0;
    long i;
    int rv = cmd_entry_begin(&entry, ENTRY_TIME_MS + index);

    for (i = 0; rv == 0 && i < n; i++) {
        long session = first >= 0 ? first + i : random() % sessions;
        rv = add_put(&entry, session, value);
    }
    if (rv == 0) {
        rv = storage_apply(s, index, entry.base, entry.len, &res, &n_res);
    }
    for (i = 0; rv == 0 && i < (long)n_res; i++) {
        if (res[i].status != STORAGE_OK) {
            rv = -1;
        }
    }
    free(res);
    buf_free(&entry);
    return rv;
}

int main(int argc, char **argv)
{
    char value[VALUE_BYTES + 1];
    struct storage *s;
    uint64_t index = 1;
    long entries;
    long per;
    long sessions = 10000;
    long i;

    if (argc < 3 || (entries = atol(argv[1])) < 0 ||
        (per = atol(argv[2])) < 1 ||
        (argc > 3 && (sessions = atol(argv[3])) < 1)) {
        fprintf(stderr, "usage: apply_cost ENTRIES PER_ENTRY [SESSIONS]\n");
        return 2;
    }
    memset(value, 'v', VALUE_BYTES);
    value[0] = value[VALUE_BYTES - 1] = '"';
    value[VALUE_BYTES] = '\0';
    if (storage_open(&s) != 0) {
        fprintf(stderr, "apply_cost: storage_open failed\n");
        return 1;
    }
    srandom(1);
    for (i = 0; i < sessions; i += FILL_PER_ENTRY) {
        long n = sessions - i < FILL_PER_ENTRY ? sessions - i : FILL_PER_ENTRY;
        if (apply(s, index++, n, i, sessions, value) != 0) {
            fprintf(stderr, "apply_cost: fill failed\n");
            storage_close(s);
            return 1;
        }
    }
    for (i = 0; i < entries; i++) {
        if (apply(s, index++, per, -1, sessions, value) != 0) {
            fprintf(stderr, "apply_cost: entry %ld failed\n", i);
            storage_close(s);
            return 1;
        }
    }
    storage_close(s);
    return 0;
}

/* Fuzz target: the Raft entry format and the state machine behind it.
 *
 * Each input is tried three ways on a fresh in-memory storage (reset by
 * restoring the snapshot of an empty one, which must give the same
 * digest):
 *   1. as one command record: cmd_decode, and for a PATCH every pair with
 *      cmd_props_next (cmd_decode promised they parse);
 *   2. as a whole entry: cmd_entry_open / cmd_entry_next, each record
 *      decoded, then storage_apply of the raw bytes at index 1;
 *   3. wrapped in a valid entry header as its one record (so that the
 *      record decoder and every apply path are reached without the fuzzer
 *      first having to learn the header), applied at index 2.
 * Afterwards the state must stay queryable: digest, counts, dump and a
 * snapshot/restore round trip into a second storage with the same digest.
 *
 * Invariants: decoding never reads outside the input (ASan), a decoded
 * PATCH yields exactly n_props pairs, storage_apply either rejects the
 * entry whole (ECORRUPT: applied index unchanged) or reports one result
 * per record, and a restored snapshot has the same digest. */
#include <string.h>

#include "../../storage/command.h"
#include "../../storage/storage.h"
#include "fuzz.h"

#define ENTRY_TIME_MS 1614307598220ull /* leader stamp of the wrapped entry */

/* Decode one record; a PATCH's pairs must all be there. */
static void check_record(const char *p, size_t len)
{
    struct cmd cmd;
    struct cmd_bytes name;
    struct cmd_bytes value;
    size_t pos = 0;
    uint32_t pairs = 0;

    if (cmd_decode(p, len, &cmd) != 0) {
        return;
    }
    if (cmd.op == CMD_PATCH) {
        while (cmd_props_next(&cmd, &pos, &name, &value)) {
            FUZZ_CHECK(name.len == 0 || name.base != NULL);
            FUZZ_CHECK(value.len == 0 || value.base != NULL);
            pairs++;
            FUZZ_CHECK(pairs <= cmd.n_props);
        }
        FUZZ_CHECK(pairs == cmd.n_props);
    }
}

/* Apply entry at index; check the outcome's shape. */
static void apply(struct storage *s, uint64_t index, const void *entry,
                  size_t len, uint32_t records)
{
    struct storage_result *res = NULL;
    uint32_t n = 0;
    uint64_t before = storage_applied_index(s);
    int rv = storage_apply(s, index, entry, len, &res, &n);

    if (rv == STORAGE_OK) {
        FUZZ_CHECK(storage_applied_index(s) == index);
        FUZZ_CHECK(records == UINT32_MAX || n == records);
        free(res);
    } else {
        FUZZ_CHECK(rv != STORAGE_EINTERNAL);
        FUZZ_CHECK(storage_applied_index(s) == before);
    }
}

/* Two storages kept across inputs (opening one costs milliseconds, ten
 * times a restore): `s` is reset to the empty state before each input by
 * restoring the snapshot of a fresh storage, `copy` receives the round
 * trip. Freed at exit by the operating system. */
struct fuzz_state {
    struct storage *s;        /* the state machine under test */
    struct storage *copy;     /* snapshot round-trip target */
    void *empty;              /* snapshot of a fresh storage (owned) */
    size_t empty_len;         /* bytes of empty */
    uint8_t empty_digest[32]; /* digest of a fresh storage */
};

static struct fuzz_state *state;

static void fuzz_init(void)
{
    state = calloc(1, sizeof *state);
    FUZZ_CHECK(state != NULL);
    FUZZ_CHECK(storage_open(&state->s) == STORAGE_OK);
    FUZZ_CHECK(storage_open(&state->copy) == STORAGE_OK);
    FUZZ_CHECK(storage_snapshot(state->s, &state->empty, &state->empty_len) ==
               STORAGE_OK);
    FUZZ_CHECK(storage_digest(state->s, state->empty_digest) == STORAGE_OK);
}

/* Back to a fresh state: what a restore of an empty snapshot gives must
 * be what storage_open gave. */
static struct storage *fresh_storage(void)
{
    uint8_t d[32];

    /* Nothing was applied since the last reset: it is still fresh, which
     * the digest check below confirms (a refused entry changes nothing). */
    if (storage_applied_index(state->s) != 0) {
        FUZZ_CHECK(storage_restore(state->s, state->empty, state->empty_len) ==
                   STORAGE_OK);
        FUZZ_CHECK(storage_applied_index(state->s) == 0);
    }
    FUZZ_CHECK(storage_digest(state->s, d) == STORAGE_OK);
    FUZZ_CHECK(memcmp(d, state->empty_digest, sizeof d) == 0);
    return state->s;
}

/* The state is queryable and survives a snapshot round trip. */
static void check_state(struct storage *s)
{
    uint8_t d1[32];
    uint8_t d2[32];
    struct storage_counts counts;
    struct storage_counts scanned;
    struct buf dump = BUF_INIT;
    struct storage *copy = state->copy;
    void *snap = NULL;
    size_t snap_len = 0;

    FUZZ_CHECK(storage_digest(s, d1) == STORAGE_OK);
    FUZZ_CHECK(storage_check(s) == STORAGE_OK);
    /* The counts kept as rows change are those a scan finds. */
    storage_counts(s, &counts);
    FUZZ_CHECK(storage_recount(s, &scanned) == STORAGE_OK);
    FUZZ_CHECK(memcmp(&counts, &scanned, sizeof counts) == 0);
    FUZZ_CHECK(storage_dump(s, &dump) == STORAGE_OK);
    buf_free(&dump);
    FUZZ_CHECK(storage_snapshot(s, &snap, &snap_len) == STORAGE_OK);
    FUZZ_CHECK(storage_restore(copy, snap, snap_len) == STORAGE_OK);
    FUZZ_CHECK(storage_digest(copy, d2) == STORAGE_OK);
    FUZZ_CHECK(memcmp(d1, d2, sizeof d1) == 0);
    FUZZ_CHECK(storage_applied_index(copy) == storage_applied_index(s));
    free(snap);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct storage *s;
    struct cmd_entry e;
    struct buf wrapped = BUF_INIT;
    uint32_t records = UINT32_MAX;
    const char *rec;
    size_t rec_len;

    if (state == NULL) {
        fuzz_init();
    }
    /* 1. One record. */
    check_record((const char *)data, size);

    /* 2. A whole entry. */
    if (cmd_entry_open(data, size, &e) == 0) {
        uint32_t seen = 0;
        int rv;

        while ((rv = cmd_entry_next(&e, &rec, &rec_len)) == 1) {
            FUZZ_CHECK(rec >= (const char *)data &&
                       rec + rec_len <= (const char *)data + size);
            check_record(rec, rec_len);
            seen++;
            FUZZ_CHECK(seen <= e.count);
        }
        /* A well-formed entry gets one result per record. */
        records = rv == 0 ? seen : UINT32_MAX;
    }
    s = fresh_storage();
    apply(s, 1, data, size, records);

    /* 3. The input as the one record of a valid entry. */
    FUZZ_CHECK(cmd_entry_begin(&wrapped, ENTRY_TIME_MS) == 0);
    if (size <= CMD_MAX_FIELD_LEN && cmd_entry_add(&wrapped, data, size) == 0) {
        apply(s, 2, wrapped.base, wrapped.len, 1);
    }
    buf_free(&wrapped);
    if (storage_applied_index(s) != 0) {
        check_state(s);
    } else {
        (void)fresh_storage(); /* nothing applied: nothing changed */
    }
    return 0;
}

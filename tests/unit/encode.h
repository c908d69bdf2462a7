/* Test helper shared by the consensus tests: encode one command about
 * account "acc" into enc (reset first). Include after cmocka.h. */
#ifndef CTXD_TEST_ENCODE_H
#define CTXD_TEST_ENCODE_H

#include <string.h>

#include "../../lib/buf.h"
#include "../../storage/command.h"

static inline void test_encode(struct buf *enc, uint8_t op, const char *ns,
                               const char *sid, const char *name,
                               const char *value, int64_t ttl,
                               uint64_t if_match)
{
    struct cmd cmd;

    memset(&cmd, 0, sizeof cmd);
    cmd.op = op;
    cmd.ttl = ttl;
    cmd.has_if_match = if_match != 0;
    cmd.if_match = if_match;
    cmd.acc.base = "acc";
    cmd.acc.len = 3;
    cmd.ns.base = ns;
    cmd.ns.len = (uint32_t)strlen(ns);
    if (sid != NULL) {
        cmd.sid.base = sid;
        cmd.sid.len = (uint32_t)strlen(sid);
    }
    if (name != NULL) {
        cmd.name.base = name;
        cmd.name.len = (uint32_t)strlen(name);
    }
    if (value != NULL) {
        cmd.value.base = value;
        cmd.value.len = (uint32_t)strlen(value);
    }
    buf_reset(enc);
    assert_int_equal(cmd_encode(&cmd, enc), 0);
}

#endif

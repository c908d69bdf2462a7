/* Fuzz target: node configuration (node/config.c).
 *
 * The input is split at NUL bytes into at most FUZZ_MAX_ARGS arguments
 * after "ctxd" and given to config_parse; the whole input, cut at its first
 * NUL, is also given to config_parse_cluster as a --cluster spec. Neither
 * may crash, leak or read outside its strings.
 *
 * Invariants on success: 1..CONFIG_MAX_MEMBERS members, ids non-zero and
 * distinct, addresses NUL-terminated inside their fields. The help text
 * (--help) goes to stdout, which is sent to /dev/null once. */
#include <string.h>

#include "../../node/config.h"
#include "fuzz.h"

#define FUZZ_MAX_ARGS 32 /* arguments after argv[0] */

static void check_members(const struct config *cfg)
{
    unsigned i;
    unsigned j;

    FUZZ_CHECK(cfg->n_members >= 1 && cfg->n_members <= CONFIG_MAX_MEMBERS);
    for (i = 0; i < cfg->n_members; i++) {
        const struct config_member *m = &cfg->members[i];

        FUZZ_CHECK(m->id != 0);
        FUZZ_CHECK(memchr(m->raft_addr, '\0', sizeof m->raft_addr) != NULL);
        FUZZ_CHECK(memchr(m->http_addr, '\0', sizeof m->http_addr) != NULL);
        for (j = 0; j < i; j++) {
            FUZZ_CHECK(cfg->members[j].id != m->id);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    char *copy = malloc(size + 1);
    char *argv[FUZZ_MAX_ARGS + 2];
    int argc = 1;
    size_t i;
    size_t arg_start = 0;
    struct config cfg;
    char errmsg[256];
    int rv;

    if (!quiet) {
        quiet = freopen("/dev/null", "w", stdout) != NULL;
    }
    FUZZ_CHECK(copy != NULL);
    memcpy(copy, data, size);
    copy[size] = '\0';
    argv[0] = "ctxd";
    for (i = 0; i <= size && argc <= FUZZ_MAX_ARGS; i++) {
        if (copy[i] == '\0') {
            argv[argc++] = copy + arg_start;
            arg_start = i + 1;
        }
    }
    argv[argc] = NULL;

    errmsg[0] = '\0';
    rv = config_parse(&cfg, argc, argv, errmsg, sizeof errmsg);
    FUZZ_CHECK(rv == 0 || rv == 1 || (rv == -1 && errmsg[0] != '\0'));
    FUZZ_CHECK(memchr(errmsg, '\0', sizeof errmsg) != NULL);
    if (rv == 0 && cfg.cluster != NULL) {
        check_members(&cfg);
    }
    config_free(&cfg);

    memset(&cfg, 0, sizeof cfg);
    errmsg[0] = '\0';
    if (config_parse_cluster(&cfg, copy, errmsg, sizeof errmsg) == 0) {
        check_members(&cfg);
    } else {
        FUZZ_CHECK(errmsg[0] != '\0');
    }
    free(copy);
    return 0;
}

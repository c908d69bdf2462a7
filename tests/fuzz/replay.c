/* Run a fuzz target over files without libFuzzer: each argument is a file
 * or a directory whose regular files are each one input. Used by the ctest
 * replay of the seed corpus and the regression inputs, in every build
 * (gcc, sanitizers), so a crash once found stays fixed.
 *
 * Exit status: 0 when every input ran (a failing input aborts the
 * process), 1 when a path cannot be read. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

#define REPLAY_MAX_INPUT (16u << 20) /* bytes: larger files are refused */

/* Read the whole file into a malloc'd buffer. 0 or -1. */
static int read_file(const char *path, uint8_t **data, size_t *size)
{
    FILE *f = fopen(path, "rb");
    uint8_t *p = NULL;
    size_t n = 0;
    size_t cap = 0;

    if (f == NULL) {
        return -1;
    }
    for (;;) {
        size_t got;

        if (n == cap) {
            uint8_t *q;

            cap = cap == 0 ? 4096 : cap * 2;
            if (cap > REPLAY_MAX_INPUT) {
                break;
            }
            q = realloc(p, cap);
            if (q == NULL) {
                break;
            }
            p = q;
        }
        got = fread(p + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                break;
            }
            fclose(f);
            *data = p;
            *size = n;
            return 0;
        }
    }
    fclose(f);
    free(p);
    return -1;
}

static int run_file(const char *path, unsigned *count)
{
    uint8_t *data = NULL;
    size_t size = 0;

    if (read_file(path, &data, &size) != 0) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        return -1;
    }
    /* A copy of exactly size bytes, so ASan sees reads past the end. */
    LLVMFuzzerTestOneInput(data, size);
    free(data);
    (*count)++;
    return 0;
}

static int run_path(const char *path, unsigned *count)
{
    struct stat st;
    DIR *d;
    struct dirent *e;
    int rv = 0;

    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        return run_file(path, count);
    }
    d = opendir(path);
    if (d == NULL) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        char child[4096];
        struct stat cst;

        if (e->d_name[0] == '.') {
            continue; /* ".", "..", and hidden files such as .gitkeep */
        }
        if (snprintf(child, sizeof child, "%s/%s", path, e->d_name) >=
                (int)sizeof child ||
            stat(child, &cst) != 0 || !S_ISREG(cst.st_mode)) {
            continue;
        }
        if (run_file(child, count) != 0) {
            rv = -1;
        }
    }
    closedir(d);
    return rv;
}

int main(int argc, char **argv)
{
    unsigned count = 0;
    int rv = 0;
    int i;

    for (i = 1; i < argc; i++) {
        if (run_path(argv[i], &count) != 0) {
            rv = 1;
        }
    }
    printf("replay: %u inputs ran\n", count);
    return rv;
}

/* SQLite's heap: size-class free lists in front of malloc.
 *
 * Applying one write makes SQLite allocate and free about ten blocks: the
 * chunks of its in-memory rollback journal (a page copy takes several),
 * cursors, record buffers. With glibc's malloc and free that was 14 % of
 * the instructions of an apply (callgrind, 32 writes per entry). These
 * methods (sqlite3_config(SQLITE_CONFIG_MALLOC)) keep freed blocks of up to
 * SQLMEM_POOL_MAX bytes on a free list per 64-byte class and hand them out
 * again, so the steady state makes no malloc call at all.
 *
 * Memory SQLite frees into a class stays on its list for reuse, as glibc
 * keeps most freed memory in its arenas: the process's footprint is the
 * peak of each class, not of the total. Blocks above SQLMEM_POOL_MAX are
 * malloc'd and freed as before.
 *
 * SQLite runs single-threaded in ctxd (SQLITE_CONFIG_SINGLETHREAD; forked
 * image children run in their own address space), so the lists have no
 * lock. Under AddressSanitizer the methods are not installed: SQLite's
 * blocks then come from ASan's malloc, which catches a use of a column
 * pointer after its statement was reset. */
#ifndef CTXD_STORAGE_SQLMEM_H
#define CTXD_STORAGE_SQLMEM_H

#include <stddef.h>

#define SQLMEM_CLASS 64u     /* bytes per size class, header included */
#define SQLMEM_CLASSES 72u   /* classes: blocks of 64 .. 4,608 bytes */
#define SQLMEM_POOL_MAX (SQLMEM_CLASS * SQLMEM_CLASSES - 8u) /* usable
                                bytes of the largest pooled block: a 4 KiB
                                page with pcache's header fits */

/* Install the methods; call before SQLite initializes. Returns 1 when
 * they are installed (now or by an earlier call), 0 when not (under a
 * sanitizer, or SQLite was already initialized, in which case its own
 * allocator stays: correct, slower). */
int sqlmem_install(void);

/* For tests: make the n-th SQLite allocation from now fail (once), as if
 * the heap were exhausted; 0 turns that off. Returns 1 when the methods are
 * installed and the failure is armed, 0 when not (then nothing fails). */
int sqlmem_fail_at(unsigned long n);

/* Bytes held on the free lists (blocks freed by SQLite, kept for reuse). */
size_t sqlmem_pooled(void);

#endif

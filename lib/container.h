/* The struct that holds a member, from a pointer to that member: how a
 * callback given an embedded handle or request finds its owner. */
#ifndef CTXD_CONTAINER_H
#define CTXD_CONTAINER_H

#include <stddef.h>

#define CONTAINER_OF(ptr, type, field) \
    ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

#endif

/* One ring protocol, for the journal and the announce ring.
 *
 * A ring is a power-of-two byte array read at logical positions (they only grow; the physical
 * place is pos & (size - 1)). Records never wrap: a writer pads the tail instead.
 *
 * CONTRACT
 *   R1 (writer, under the mutex) Before it overwrites physical bytes that held logical positions
 *      below `end - size`, a writer raises min_valid to `end - size` (ring_claim), with a full
 *      fence between that store and the overwrite. So every byte at a logical position
 *      >= min_valid holds what was written there.
 *   R2 A writer appends after ring_tail (pending if it wrote this operation, else head) and
 *      records the new end in `pending`. Nothing is visible to readers until commit publishes
 *      head = pending (release). A rolled-back operation clears pending first (undo.h), so the
 *      bytes it wrote are never published; a committed one is published exactly once, by its
 *      writer or by the repairer.
 *   R3 (reader, no lock) A record at pos is intact iff pos >= min_valid read AFTER the copy
 *      (acquire fence in between) and pos + len <= head read before it. One exactly one ring
 *      behind (pos == head - size) is not intact once a writer claimed the next byte: R1 raised
 *      min_valid past it before the first byte changed.
 */
#ifndef SYN_MP_RING_H
#define SYN_MP_RING_H

#include "layout.h"

/* where this operation's next record goes */
static inline uint64_t ring_tail(const ring_t *r) { return r->pending ? r->pending : r->head; }

/* R1: about to write logical bytes up to `end` */
static inline void ring_claim(ring_t *r, uint64_t size, uint64_t end) {
    if (end > size && end - size > r->min_valid)
        __atomic_store_n(&r->min_valid, end - size, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* readers see the raise before the overwrite */
}

/* R2: commit */
static inline void ring_publish(ring_t *r) {
    if (r->pending) {
        __atomic_store_n(&r->head, r->pending, __ATOMIC_RELEASE);
        ST(r->pending, 0);
    }
}

static inline uint64_t ring_head(const ring_t *r) { return __atomic_load_n(&r->head, __ATOMIC_ACQUIRE); }

/* R3: after copying bytes at [pos, ...), are they what was written there? */
static inline int ring_intact(const ring_t *r, uint64_t pos) {
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return pos >= __atomic_load_n(&r->min_valid, __ATOMIC_ACQUIRE);
}

#endif

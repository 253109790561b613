/* The chunk allocator.
 *
 * The heap is nchunks chunks of SYNT_CHUNK bytes; an entry takes chunks_for(keylen + metalen) of
 * them, chained through word 0, in any places. So there is no fragmentation to wedge the heap:
 *
 * CONTRACT
 *   A1 An allocation of k chunks succeeds iff k <= free_count + (nchunks - top): the chunks of
 *      the free list plus those never carved. Whatever the history of sizes, a table never
 *      refuses an entry its free chunks could hold, and never grows past nchunks.
 *   A2 Allocation and free each log O(1) words (U1), whatever k: taken free-list chunks keep
 *      their links but the last one's, a freed chain is spliced onto the free list whole.
 *   A3 A chunk freed in an operation is not allocated again in the same operation (writers
 *      allocate before they free), so bytes reachable before the operation keep their contents
 *      until it commits: what the readers' overlay (view.h) relies on.
 *   A4 Every chunk that is not a head has type 0 and vers[] 0; a head's ver is fresh from
 *      next_ver, which never goes back, so a (chunk, ver) pair names one entry for ever (I9).
 */
#ifndef SYN_MP_ALLOC_H
#define SYN_MP_ALLOC_H

#include "layout.h"
#include "undo.h"

static inline uint64_t chunks_free(const synt_t *t) {
    hdr_t *h = H(t);
    uint64_t top = LD(h->top), fc = LD(h->free_count);
    return (top <= t->nchunks ? t->nchunks - top : 0) + fc;
}

/* k chunks chained from the returned head, typed `type`, with a fresh ver; 0 when there is no
 * room (nothing logged then) or the free list is corrupt. */
static uint64_t chunk_alloc(synt_t *t, uint64_t k, uint32_t type) {
    hdr_t *h = H(t);
    uint64_t fc = h->free_count, top = h->top;
    if (top > t->nchunks || fc > t->nchunks || k == 0 || k > fc + (t->nchunks - top)) return 0;
    uint64_t m = k < fc ? k : fc, c = k - m;
    uint64_t first = 0, last = 0, rest = h->free_head;
    for (uint64_t i = 0; i < m; i++) { /* walk to the m-th free chunk */
        if (!chunk_ok(t, rest)) return 0;
        if (i == 0) first = rest;
        last = rest;
        rest = W0_NEXT(*CW0(t, rest));
    }
    /* carved chunks are past top: unreachable, plain stores */
    for (uint64_t i = 1; i <= c; i++) {
        *CW0(t, top + i) = MK_W0(i < c ? top + i + 1 : 0, 0);  /* (vers[] of a fresh chunk is 0) */
    }
    if (m) {
        W(t, CW0(t, last), MK_W0(c ? top + 1 : 0, 0));
        W(t, &h->free_head, rest);
        W(t, &h->free_count, fc - m);
    }
    if (c) W(t, &h->top, top + c);
    uint64_t head = m ? first : top + 1;
    uint64_t *hw = CW0(t, head);
    W(t, hw, MK_W0(W0_NEXT(*hw), type));
    W(t, VERW(t, head), h->next_ver);
    ST(h->next_ver, h->next_ver + 1); /* not logged: a rolled-back ver is never handed out again */
    return head;
}

/* Free the k-chunk chain at head (A2). 0, or -1 when the chain is not k long. */
static int chunk_free(synt_t *t, uint64_t head, uint64_t k) {
    hdr_t *h = H(t);
    uint64_t tail = head;
    for (uint64_t i = 1; i < k; i++) {
        tail = W0_NEXT(*CW0(t, tail));
        if (!chunk_ok(t, tail)) return -1;
    }
    uint64_t *hw = CW0(t, head);
    W(t, VERW(t, head), 0);                        /* I9: a cached (chunk, ver) stops matching */
    if (tail == head) {
        W(t, hw, MK_W0(h->free_head, 0));
    } else {
        W(t, hw, MK_W0(W0_NEXT(*hw), 0));
        W(t, CW0(t, tail), MK_W0(h->free_head, 0));
    }
    W(t, &h->free_head, head);
    W(t, &h->free_count, h->free_count + k);
    return 0;
}

#endif

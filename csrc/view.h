/* The read protocol: readers never lock, never write, never wait for a writer.
 *
 * A reader reads the last committed state of the table, whatever a writer is doing:
 *   - seq even: no operation is open; the reader reads the words as they are, and keeps what it
 *     read if seq is unchanged afterwards (a seqlock, without the spinning);
 *   - seq odd: an operation is open, perhaps by a writer that is stopped (SIGSTOP, a debugger, a
 *     frozen cgroup), throttled (a CPU quota) or dead. The reader copies the undo log's first
 *     undo_n records and reads every word through them: a word the operation changed reads as its
 *     first logged old value (U1 in undo.h: every store to a byte reachable before the operation
 *     is logged before it lands). That is the state before the operation, which the reader keeps
 *     if seq and undo_n are unchanged afterwards: a store it might have seen was logged, and so
 *     counted, before it landed.
 * Either way the reader retries only when a writer made progress while it read; a writer that
 * makes none (stopped) costs it nothing. Under a writer flat out, a reader that keeps losing
 * takes the mutex if it is free at that instant (try_lock, never a wait).
 *
 * Everything read can be torn or corrupt: each index is checked (chunk_ok), each length against
 * its maximum, each walk bounded, before anything is followed; a result is only returned when
 * the validation above holds.
 */
#ifndef SYN_MP_VIEW_H
#define SYN_MP_VIEW_H

#include <string.h>

#include "layout.h"
#include "undo.h"

typedef struct {
    uint32_t n;
    undo_t rec[UNDO_MAX];
} overlay_t;

typedef struct {
    synt_t *t;
    const overlay_t *ov;         /* NULL: read the words as they are */
} view_t;

/* The 8-aligned word at off (off + 8 <= size, checked by the caller's geometry). */
static inline uint64_t vw(const view_t *v, uint64_t off) {
    uint64_t x = LD(*(uint64_t *)(v->t->base + off));
    if (UNLIKELY(v->ov != NULL)) {
        const overlay_t *o = v->ov;
        for (uint32_t i = 0; i < o->n; i++)
            if (o->rec[i].off == off) return o->rec[i].old; /* the first record: the old value */
    }
    return x;
}

static inline uint32_t vw32(const view_t *v, uint64_t off) {
    return (uint32_t)(vw(v, off & ~7ULL) >> ((off & 4) * 8));
}

/* One entry's fields as a reader sees them. */
typedef struct {
    uint64_t idx;
    uint64_t w0;
    uint64_t ver;
    uint64_t link[NIDX];         /* next | prev << 32 (prev 0 on the singly linked bucket chains) */
    uint64_t hkey;
    int64_t pid;
    uint64_t start;
    int64_t time_ns;
    uint32_t type, node, keylen, metalen;
} ent_t;

/* Read the head chunk idx; 0 when it can't be trusted (bad index, not a head, bad lengths). */
static inline int rd_ent(const view_t *v, uint64_t idx, ent_t *e) {
    const synt_t *t = v->t;
    if (!chunk_ok(t, idx)) return 0;
    uint64_t o = chunk_off(t, idx);
    e->idx = idx;
    e->w0 = vw(v, o);
    e->type = W0_TYPE(e->w0);
    if (e->type != SYNT_REG && e->type != SYNT_PG) return 0;
    e->ver = vw(v, ver_off(t, idx));
    uint64_t kk = vw(v, o + offsetof(head_t, next_key)); /* next_key | next_kp << 32 */
    e->link[IX_KEY] = (uint32_t)kk;
    e->link[IX_KP] = kk >> 32;
    e->link[IX_PID] = vw(v, o + offsetof(head_t, link_pid));
    e->link[IX_NODE] = vw(v, o + offsetof(head_t, link_node));
    uint64_t hp = vw(v, o + offsetof(head_t, hkey)); /* hkey | pid << 32 */
    e->hkey = (uint32_t)hp;
    e->pid = (int32_t)(uint32_t)(hp >> 32);
    e->start = vw(v, o + offsetof(head_t, start));
    e->time_ns = (int64_t)vw(v, o + offsetof(head_t, time_ns));
    uint64_t lens = vw(v, o + offsetof(head_t, lens));
    e->node = LENS_NODE(lens);
    e->keylen = LENS_KEY(lens);
    e->metalen = LENS_META(lens);
    return e->keylen <= SYNT_MAX_KEY && e->metalen <= SYNT_MAX_META && e->node < SYNT_MAX_NODES;
}

/* Copy bytes [from, from + len) of the entry's key + meta into dst; 0 when a link of its chain
 * can't be trusted. Data bytes are never changed while reachable (A3), so only links go through
 * the overlay. */
static int rd_data(const view_t *v, const ent_t *e, uint64_t from, uint64_t len, uint8_t *dst) {
    const synt_t *t = v->t;
    if (from + len > (uint64_t)e->keylen + e->metalen) return 0;
    if (from < INLINE) {
        uint64_t n = len < INLINE - from ? len : INLINE - from;
        memcpy(dst, t->base + chunk_off(t, e->idx) + sizeof(head_t) + from, n);
        dst += n; len -= n; from += n;
    }
    if (!len) return 1;
    from -= INLINE;
    uint64_t c = W0_NEXT(e->w0);
    for (uint64_t hop = from / DATA_BYTES; hop > 0; hop--) {
        if (!chunk_ok(t, c)) return 0;
        c = W0_NEXT(vw(v, chunk_off(t, c)));
    }
    uint64_t in = from % DATA_BYTES;
    while (len) {
        if (!chunk_ok(t, c)) return 0;
        uint64_t n = len < DATA_BYTES - in ? len : DATA_BYTES - in;
        memcpy(dst, t->base + chunk_off(t, c) + DATA_HDR + in, n);
        dst += n; len -= n; in = 0;
        if (len) c = W0_NEXT(vw(v, chunk_off(t, c)));
    }
    return 1;
}

/* Is e's key the given one? -1 when its bytes can't be read. */
static inline int key_is(const view_t *v, const ent_t *e, uint32_t type, const uint8_t *key,
                         uint32_t keylen, uint64_t hk) {
    if (e->hkey != hk || e->type != type || e->keylen != keylen) return 0;
    if (keylen <= INLINE)
        return memcmp(v->t->base + chunk_off(v->t, e->idx) + sizeof(head_t), key, keylen) == 0;
    uint8_t buf[SYNT_MAX_KEY];
    if (!rd_data(v, e, 0, keylen, buf)) return -1;
    return memcmp(buf, key, keylen) == 0;
}

#define READ_ATTEMPTS_BEFORE_TRYLOCK 64u
#define READ_ATTEMPTS_MAX (1u << 20) /* only a segment rewritten under us, on purpose, gets here */

typedef int64_t (*read_fn)(const view_t *v, void *arg);

/* Run fn on a consistent view of the last committed state; *seq_out gets the seq value for
 * which the result stays true. */
static inline int64_t read_stable(synt_t *t, read_fn fn, void *arg, uint64_t *seq_out) {
    hdr_t *h = H(t);
    overlay_t ov;
    for (uint32_t attempt = 0; attempt < READ_ATTEMPTS_MAX; attempt++) {
        if (UNLIKELY(attempt >= READ_ATTEMPTS_BEFORE_TRYLOCK) && attempt % 16 == 0 &&
            try_lock(t) == 0) {
            view_t v = {t, NULL};
            int64_t r = fn(&v, arg);
            if (seq_out) *seq_out = LD(h->seq);
            unlock(t);
            return r;
        }
        uint64_t s = __atomic_load_n(&h->seq, __ATOMIC_ACQUIRE), un = 0;
        view_t v = {t, NULL};
        if (UNLIKELY(s & 1)) {
            un = __atomic_load_n(&h->undo_n, __ATOMIC_ACQUIRE);
            if (un > UNDO_MAX) un = UNDO_MAX;
            memcpy(ov.rec, h->undo, un * sizeof(undo_t));
            ov.n = (uint32_t)un;
            v.ov = &ov;
        }
        int64_t r = fn(&v, arg);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (LD(h->seq) != s || ((s & 1) && LD(h->undo_n) != un)) {
            CPU_RELAX();
            continue;
        }
        if (seq_out) *seq_out = s;
        return r;
    }
    return SYNT_EBUSY;
}

#endif

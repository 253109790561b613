/* syn_mp shared-memory table: the operations, composed from the engine's units.
 *
 *   layout.h   the segment's layout (read it first)
 *   ring.h     one ring protocol: the journal and the announce ring (R1-R3)
 *   undo.h     the undo log, the mutex and repair: crash atomicity (U1-U4)
 *   alloc.h    the chunk allocator: no fragmentation (A1-A4)
 *   view.h     the read protocol: readers never wait for a writer
 *
 * An entry is a chain of chunks: a head (its fields, the first bytes of key and meta) and data
 * chunks. Its head is on four lists (chunk indices): its IX_KEY bucket chain and its IX_KP chain
 * (groups; registry entries leave it unlinked), both singly linked and short, and its IX_PID
 * chain and its node's list, doubly linked since one process or node may hold many entries.
 *
 * INVARIANTS (synt_check verifies all of them, under the mutex, after repair)
 *   I1 hdr magic/version/geometry are what synt_init wrote; seq is even, undo_n == 0 and no ring
 *      has pending records whenever the mutex is free.
 *   I2 every chunk in [1, top] is exactly one of: a head of a live entry, a data chunk of exactly
 *      one live entry's chain, or on the free list; top <= nchunks; free_count is the free
 *      list's length.
 *   I3 a chunk is free or data iff its type is 0, and then its word 1 is 0 (A4).
 *   I4 a live entry (type REG or PG) is on exactly the lists named above, in the bucket its
 *      stored hash selects, and every link of a doubly linked list is mutual (n->prev == e); its
 *      chain is exactly chunks_for(keylen + metalen) long.
 *   I5 keylen <= MAX_KEY, metalen <= MAX_META.
 *   I6 at most one REG entry per key; at most one PG entry per (key, node, pid).
 *   I7 count, reg_count, pg_count and the per-node counters equal what the lists hold;
 *      count <= capacity; node < nnodes.
 *   I8 for both rings, min_valid <= head and head - min_valid <= size.
 *   I9 a live entry's ver is in [1, next_ver); next_ver only grows, even across a rollback, and
 *      an entry is never changed in place (an update is a new chain), so (chunk, ver) names one
 *      entry's contents for as long as it lives: a process may cache what it read and trust it
 *      while that word is unchanged (syn_mp's lookup cache), whatever else the table does.
 *   I10 the journal agrees with the table's cursor: when anything was published, the record at
 *      j_last (if still intact) ends at the head and carries seq j_seq, so a rolled-back
 *      operation's records can't have been published.
 *
 * WRITERS hold the process-shared robust mutex and follow U1: every store to a byte reachable
 * before the operation is logged first. The next locker after a dead writer repairs (U3).
 * A writer stopped inside its operation delays other writers (they wait on the mutex;
 * synt_stats names the holder) but no reader.
 *
 * READERS follow view.h: the last committed state, never a wait.
 *
 * THE ANNOUNCE RING tells the manager which local processes to watch without it reading every
 * journal record (those lines are hot in the writer's cache: at a million writes a second,
 * following them cost the manager half a core). A put of a node-0 entry appends (pid, start)
 * unless the filter slot of that pair holds it already. The manager resets the filter (under
 * the mutex), then reads from the head it got back and scans the table: a pair it never reads
 * was announced before the reset and so held an entry the scan finds, or was filtered as
 * announced after the reset. On an overrun it resets and scans again.
 */
#define _GNU_SOURCE /* pthread_mutex_clocklock (glibc >= 2.30) */
#include "table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layout.h"
#include "ring.h"
#include "undo.h"
#include "alloc.h"
#include "view.h"

/* ---------------------------------------------------------------- hashing */

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* 32 bits, as a head stores it (buckets are at most 2^31) */
static uint64_t hash_key(uint32_t type, const uint8_t *k, uint32_t n) {
    uint64_t h = 0xcbf29ce484222325ULL ^ type;
    for (uint32_t i = 0; i < n; i++) { h ^= k[i]; h *= 0x100000001b3ULL; }
    return (uint32_t)mix64(h);
}

static inline uint64_t hash_pid(uint64_t node, int64_t pid) {
    return mix64((node << 40) ^ (uint64_t)pid ^ 0x9e3779b97f4a7c15ULL);
}

static inline uint64_t hash_kp(uint64_t hkey, uint64_t node, int64_t pid) {
    return mix64(hkey ^ hash_pid(node, pid));
}

/* --------------------------------------------------------------- geometry */

static uint64_t pow2_at_least(uint64_t x) {
    uint64_t p = 1;
    while (p < x) p <<= 1;
    return p;
}

#define PAGE_UP(x) (((x) + 4095u) & ~4095ULL)
#define MAX_BUCKETS (1ULL << 31)

static uint64_t nbuckets_for(uint64_t capacity) { return pow2_at_least(capacity < 16 ? 16 : capacity); }
static uint64_t journal_for(uint64_t journal) { return pow2_at_least(journal < 65536 ? 65536 : journal); }

/* the heap's chunks for a heap of heap_size bytes (whole pages of whole chunks) */
static uint64_t nchunks_for(uint64_t heap_size) {
    uint64_t n = PAGE_UP((heap_size + SYNT_CHUNK - 1) / SYNT_CHUNK * SYNT_CHUNK) / SYNT_CHUNK;
    return n > 0xfffffffeULL ? 0xfffffffeULL : n;
}

static uint64_t vers_bytes(uint64_t nchunks) { return PAGE_UP(8 * (nchunks + 1)); }

uint64_t synt_layout_size(uint64_t capacity, uint64_t heap_size, uint64_t journal_size) {
    uint64_t nb = nbuckets_for(capacity), nch = nchunks_for(heap_size);
    return PAGE_UP(sizeof(hdr_t)) + PAGE_UP(3 * nb * 4) + vers_bytes(nch) + journal_for(journal_size) +
           nch * SYNT_CHUNK;
}

int synt_init(uint8_t *base, uint64_t size, uint64_t capacity, uint64_t heap_size,
              uint64_t journal_size, const char *node, uint32_t nodelen, uint64_t flags) {
    if (capacity == 0 || capacity > MAX_BUCKETS || nodelen == 0 || nodelen > SYNT_MAX_NODE_NAME)
        return SYNT_EBADLAYOUT;
    if (synt_layout_size(capacity, heap_size, journal_size) > size) return SYNT_EBADLAYOUT;
    hdr_t *h = (hdr_t *)base;
    /* The segment is fresh from ftruncate: all zero, so empty buckets and lists cost no pages. */
    uint64_t nb = nbuckets_for(capacity);
    h->version = VERSION;
    h->hdr_size = sizeof(hdr_t);
    h->mutex_size = sizeof(pthread_mutex_t);
    h->total_size = size;
    h->capacity = capacity;
    h->nbuckets = nb;
    uint64_t nch = nchunks_for(heap_size);
    h->buckets_off = PAGE_UP(sizeof(hdr_t));
    h->vers_off = h->buckets_off + PAGE_UP(3 * nb * 4);
    h->journal_off = h->vers_off + vers_bytes(nch);
    h->journal_size = journal_for(journal_size);
    h->heap_off = h->journal_off + h->journal_size;
    h->nchunks = nch;
    h->flags = flags;
    h->next_ver = 1;
    memcpy(h->nodes[0].name, node, nodelen);
    h->nodes[0].len = nodelen;
    h->nnodes = 1;

    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a)) return SYNT_ELOCK;
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int r = pthread_mutex_init(&h->mutex, &a);
    pthread_mutexattr_destroy(&a);
    if (r) return SYNT_ELOCK;
    /* the magic goes last: a segment without it was never initialised */
    __atomic_store_n(&h->magic, MAGIC, __ATOMIC_RELEASE);
    return 0;
}

/* Check the geometry with overflow-safe arithmetic and copy it into t: from here on no offset
 * of the header is trusted again. */
int synt_open(synt_t *t, uint8_t *base, uint64_t size) {
    hdr_t *h = (hdr_t *)base;
    if (size < PAGE_UP(sizeof(hdr_t))) return SYNT_EBADLAYOUT;
    uint64_t nb = LD(h->nbuckets), joff = LD(h->journal_off), jsz = LD(h->journal_size);
    uint64_t hoff = LD(h->heap_off), nch = LD(h->nchunks), cap = LD(h->capacity), voff = LD(h->vers_off);
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != MAGIC || LD(h->version) != VERSION ||
        LD(h->hdr_size) != sizeof(hdr_t) || LD(h->mutex_size) != sizeof(pthread_mutex_t) ||
        LD(h->total_size) != size)
        return SYNT_EBADLAYOUT;
    if (nb < 16 || nb > MAX_BUCKETS || (nb & (nb - 1)) || cap == 0 || cap > nb ||
        nch == 0 || nch > 0xfffffffeULL || LD(h->buckets_off) != PAGE_UP(sizeof(hdr_t)) ||
        voff != PAGE_UP(sizeof(hdr_t)) + PAGE_UP(3 * nb * 4) || joff != voff + vers_bytes(nch) || joff > size ||
        jsz < 65536 || (jsz & (jsz - 1)) || jsz > size - joff || hoff != joff + jsz ||
        nch > (size - hoff) / SYNT_CHUNK)
        return SYNT_EBADLAYOUT;
    t->base = base;
    t->size = size;
    t->capacity = cap;
    t->nbuckets = nb;
    t->buckets_off = PAGE_UP(sizeof(hdr_t));
    t->vers_off = voff;
    t->journal_off = joff;
    t->journal_size = jsz;
    t->heap_off = hoff;
    t->nchunks = nch;
    return 0;
}

/* nnodes as readers may use it */
static inline uint32_t nnodes_of(synt_t *t) {
    uint64_t n = __atomic_load_n(&H(t)->nnodes, __ATOMIC_ACQUIRE);
    return n > SYNT_MAX_NODES ? SYNT_MAX_NODES : (uint32_t)n;
}

/* ------------------------------------------------------------------ lists */

/* the bucket chains are singly linked (a uint32 next); the pid and node lists doubly (a word:
 * next | prev << 32) */
static inline int doubly(int ix) { return ix == IX_PID || ix == IX_NODE; }

static inline uint64_t link_off(synt_t *t, uint64_t idx, int ix) {
    uint64_t o = chunk_off(t, idx);
    switch (ix) {
    case IX_KEY: return o + offsetof(head_t, next_key);
    case IX_KP: return o + offsetof(head_t, next_kp);
    case IX_PID: return o + offsetof(head_t, link_pid);
    default: return o + offsetof(head_t, link_node);
    }
}

/* the next link of chunk idx on list ix, as stored (the writer's, or the checker's, view) */
static inline uint32_t link_next(synt_t *t, uint64_t idx, int ix) {
    return doubly(ix) ? L_NEXT(*(uint64_t *)(t->base + link_off(t, idx, ix))) : R32(t, link_off(t, idx, ix));
}

/* offset of the uint32 head of list ix for an entry with these fields */
static uint64_t list_head_off(synt_t *t, int ix, uint64_t hkey, uint32_t node, int64_t pid) {
    switch (ix) {
    case IX_KEY: return bucket_off(t, IX_KEY, hkey);
    case IX_PID: return bucket_off(t, IX_PID, hash_pid(node, pid));
    case IX_KP: return bucket_off(t, IX_KP, hash_kp(hkey, node, pid));
    default: return offsetof(hdr_t, nodes) + (uint64_t)node * sizeof(node_t) + offsetof(node_t, head);
    }
}

/* push a new (unreachable) entry at the head of a list */
static void list_push(synt_t *t, int ix, uint64_t hoff, uint64_t idx) {
    uint32_t old = R32(t, hoff);
    if (!doubly(ix)) {
        *(uint32_t *)(t->base + link_off(t, idx, ix)) = old; /* unreachable: plain */
        W32(t, hoff, (uint32_t)idx);
        return;
    }
    *(uint64_t *)(t->base + link_off(t, idx, ix)) = MK_L(old, 0); /* unreachable: plain */
    if (old) {
        uint64_t *ol = (uint64_t *)(t->base + link_off(t, old, ix));
        W(t, ol, MK_L(L_NEXT(*ol), idx));
    }
    W32(t, hoff, (uint32_t)idx);
}

static void list_unlink(synt_t *t, int ix, uint64_t hoff, uint64_t idx) {
    if (!doubly(ix)) {
        /* a bucket chain: find the link that points at idx (the head's, or a predecessor's);
         * bounded, and only through indices in range (I2 holds under the mutex, but a walk
         * never trusts the segment) */
        uint64_t at = hoff;
        for (uint64_t o = R32(t, hoff), steps = 0; o && steps <= t->nchunks; steps++) {
            if (!chunk_ok(t, o)) return;
            if (o == idx) {
                W32(t, at, link_next(t, idx, ix));
                return;
            }
            at = link_off(t, o, ix);
            o = R32(t, at);
        }
        return;
    }
    uint64_t l = *(uint64_t *)(t->base + link_off(t, idx, ix));
    uint32_t nx = L_NEXT(l), pv = L_PREV(l);
    if (pv) {
        uint64_t *pl = (uint64_t *)(t->base + link_off(t, pv, ix));
        W(t, pl, MK_L(nx, L_PREV(*pl)));
    } else {
        W32(t, hoff, nx);
    }
    if (nx) {
        uint64_t *nl = (uint64_t *)(t->base + link_off(t, nx, ix));
        W(t, nl, MK_L(L_NEXT(*nl), pv));
    }
}

/* ---------------------------------------------------------------- journal */

/* Append a record of e (its key and meta copied from its chain); published at commit (R2). */
static void journal_append(synt_t *t, uint32_t kind, const ent_t *e, uint32_t reason,
                           uint32_t reason_node) {
    hdr_t *h = H(t);
    uint64_t size = t->journal_size, mask = size - 1;
    uint8_t *ring = t->base + t->journal_off;
    uint64_t len = ALIGN8(sizeof(synt_jrec_t) + e->keylen + e->metalen);
    uint64_t at = ring_tail(&h->jr), phys = at & mask, pad = 0;
    if (size - phys < len) pad = size - phys; /* records never wrap */
    ring_claim(&h->jr, size, at + pad + len);
    if (pad) {
        /* a tail shorter than a record header is padding without one (readers skip it):
         * a header there would run past the ring into the heap */
        if (pad >= sizeof(synt_jrec_t)) {
            synt_jrec_t *p = (synt_jrec_t *)(ring + phys);
            memset(p, 0, sizeof(*p));
            p->reclen = (uint32_t)pad;
            p->kind = SYNT_J_PAD;
        }
        phys = 0;
        at += pad;
    }
    W(t, &h->j_seq, h->j_seq + 1);
    synt_jrec_t *r = (synt_jrec_t *)(ring + phys);
    r->seq = h->j_seq;
    r->reclen = (uint32_t)len;
    r->kind = (uint16_t)kind;
    r->reason = (uint16_t)reason;
    r->node = e->node;
    r->reason_node = reason_node;
    r->pid = e->pid;
    r->start = e->start;
    r->time_ns = e->time_ns;
    r->keylen = e->keylen;
    r->metalen = e->metalen;
    view_t v = {t, NULL};
    rd_data(&v, e, 0, (uint64_t)e->keylen + e->metalen, (uint8_t *)(r + 1));
    ST(h->j_last_pending, at);
    ST(h->jr.pending, at + len);
}

uint64_t synt_journal_head(synt_t *t) { return ring_head(&H(t)->jr); }

int64_t synt_journal_read_node(synt_t *t, uint64_t *cursor, uint8_t *buf, uint64_t cap,
                               uint32_t max_records, uint32_t node) {
    hdr_t *h = H(t);
    uint64_t size = t->journal_size, mask = size - 1;
    uint8_t *ring = t->base + t->journal_off;
    uint64_t pos = *cursor, used = 0;
    int64_t n = 0;
    if (!ring_intact(&h->jr, pos)) goto overrun;
    /* at most one ring's worth of bytes a call: a corrupt head can't make it scan for ever */
    for (uint64_t end = pos + size; n < (int64_t)max_records && pos < end;) {
        uint64_t head = ring_head(&h->jr);
        if (pos >= head) break;
        if (size - (pos & mask) < sizeof(synt_jrec_t)) {
            pos += size - (pos & mask); /* too short for any record: the writer wrapped */
            continue;
        }
        synt_jrec_t r;
        memcpy(&r, ring + (pos & mask), sizeof(r));
        uint64_t len = r.reclen;
        if (len < 8 || len > size || (pos & mask) + len > size || (len & 7) || pos + len > head)
            goto untrusted;
        int copy = r.kind != SYNT_J_PAD && (node == SYNT_ALL_NODES || r.node == node);
        if (copy) {
            if (len < sizeof(r) || sizeof(r) + (uint64_t)r.keylen + r.metalen > len) goto untrusted;
            if (used + len > cap) {
                if (n == 0) return SYNT_EBUFSMALL;
                break;
            }
            memcpy(buf + used, ring + (pos & mask), len);
        }
        if (!ring_intact(&h->jr, pos)) goto overrun;
        if (copy) { used += len; n++; }
        pos += len;
        continue;
    untrusted:
        if (!ring_intact(&h->jr, pos)) goto overrun;
        return SYNT_ECORRUPT;
    }
    *cursor = pos;
    return n;
overrun:
    *cursor = synt_journal_head(t);
    return SYNT_EOVERRUN;
}

void synt_set_sleeping(synt_t *t, uint32_t sleeping) {
    __atomic_store_n(&H(t)->mgr_sleeping, sleeping, __ATOMIC_SEQ_CST);
}

/* ------------------------------------------------------------ node table */

int synt_nnodes(synt_t *t) { return (int)nnodes_of(t); }

/* A retired slot keeps its name with this bit set in len: never found, still readable. */
#define NODE_RETIRED (1ULL << 63)

uint32_t synt_node_gen(synt_t *t) { return __atomic_load_n(&H(t)->node_gen, __ATOMIC_ACQUIRE); }

int synt_node_name(synt_t *t, uint32_t id, char *buf, uint32_t cap) {
    hdr_t *h = H(t);
    if (id >= nnodes_of(t)) return SYNT_ENOTFOUND;
    /* a name changes only when a retired id is reused (node_gen tells) */
    uint64_t len = LD(h->nodes[id].len) & ~NODE_RETIRED;
    if (len > SYNT_MAX_NODE_NAME) return SYNT_ECORRUPT;
    if (len > cap) return SYNT_EBUFSMALL;
    memcpy(buf, h->nodes[id].name, len);
    return (int)len;
}

static int node_find(synt_t *t, const char *name, uint32_t len) {
    hdr_t *h = H(t);
    uint32_t n = nnodes_of(t);
    for (uint32_t i = 0; i < n; i++)
        if (LD(h->nodes[i].len) == len && memcmp(h->nodes[i].name, name, len) == 0) return (int)i;
    return SYNT_ENOTFOUND;
}

int synt_node_id(synt_t *t, const char *name, uint32_t len, int create) {
    hdr_t *h = H(t);
    if (len == 0 || len > SYNT_MAX_NODE_NAME) return SYNT_ETOOBIG;
    int id = node_find(t, name, len);
    if (id >= 0 || !create) return id;
    int lr = lock(t);
    if (lr) return lr;
    id = node_find(t, name, len);
    if (id < 0) {
        uint32_t n = nnodes_of(t);
        if (n >= SYNT_MAX_NODES) {
            /* full: reuse a retired slot (retired as late as possible, so lagging journal readers
             * still see its old name); it holds no entry, so nothing reaches it by id but names */
            for (uint32_t i = 1; i < n; i++) {
                node_t *nd = &h->nodes[i];
                if (!(LD(nd->len) & NODE_RETIRED) || nd->reg_count || nd->pg_count) continue;
                op_begin(t);
                W(t, &nd->len, NODE_RETIRED); /* an empty retired name while the bytes change */
                memcpy(nd->name, name, len);
                W(t, &nd->len, len);
                /* before any entry can carry the id again: a reader that sees such an entry sees
                 * the new generation (plain store, like next_ver: a spurious + 1 costs a cache) */
                __atomic_store_n(&h->node_gen, h->node_gen + 1, __ATOMIC_RELEASE);
                op_commit(t);
                unlock(t);
                return (int)i;
            }
            unlock(t);
            return SYNT_EFULL;
        }
        /* the slot is unreachable until nnodes covers it */
        memset(&h->nodes[n], 0, sizeof(node_t));
        memcpy(h->nodes[n].name, name, len);
        h->nodes[n].len = len;
        op_begin(t);
        W(t, &h->nnodes, (uint64_t)n + 1);
        op_commit(t);
        id = (int)n;
    }
    unlock(t);
    return id;
}

int synt_node_retire(synt_t *t, uint32_t id) {
    hdr_t *h = H(t);
    if (id == 0 || id >= nnodes_of(t)) return SYNT_ENOTFOUND;
    if (lock(t)) return SYNT_ELOCK;
    node_t *nd = &h->nodes[id];
    int rc = 0;
    if (nd->reg_count || nd->pg_count) rc = SYNT_EMISMATCH;
    else if (!(nd->len & NODE_RETIRED)) {
        op_begin(t);
        W(t, &nd->len, nd->len | NODE_RETIRED);
        op_commit(t);
    }
    unlock(t);
    return rc;
}

/* ---------------------------------------------------------- finding */

/* The entry of a registry key or a membership: 1 found (e filled), 0 not, -1 untrusted. */
static int find(const view_t *v, uint32_t type, const uint8_t *key, uint32_t keylen, uint64_t hk,
                uint32_t node, int64_t pid, ent_t *e) {
    synt_t *t = v->t;
    int ix = type == SYNT_PG ? IX_KP : IX_KEY;
    uint64_t o = vw32(v, type == SYNT_PG ? bucket_off(t, IX_KP, hash_kp(hk, node, pid))
                                         : bucket_off(t, IX_KEY, hk));
    for (uint64_t steps = 0; o; steps++) {
        if (steps > t->capacity || !rd_ent(v, o, e)) return -1;
        if (type != SYNT_PG || (e->node == node && e->pid == pid)) {
            int k = key_is(v, e, type, key, keylen, hk);
            if (k) return k;
        }
        o = L_NEXT(e->link[ix]);
    }
    return 0;
}

static void fill_info(const ent_t *e, synt_info_t *out) {
    if (!out) return;
    out->node = e->node;
    out->type = e->type;
    out->pid = e->pid;
    out->start = e->start;
    out->time_ns = e->time_ns;
    out->ver = e->ver;
    out->keylen = e->keylen;
    out->metalen = e->metalen;
}

/* ------------------------------------------------------- link and unlink */

static void link_entry(synt_t *t, const ent_t *e) {
    hdr_t *h = H(t);
    list_push(t, IX_KEY, list_head_off(t, IX_KEY, e->hkey, e->node, e->pid), e->idx);
    list_push(t, IX_PID, list_head_off(t, IX_PID, e->hkey, e->node, e->pid), e->idx);
    if (e->type == SYNT_PG) list_push(t, IX_KP, list_head_off(t, IX_KP, e->hkey, e->node, e->pid), e->idx);
    else *(uint32_t *)(t->base + link_off(t, e->idx, IX_KP)) = 0; /* unreachable: plain */
    list_push(t, IX_NODE, list_head_off(t, IX_NODE, e->hkey, e->node, e->pid), e->idx);
    W(t, &h->count, h->count + 1);
    if (e->type == SYNT_REG) {
        W(t, &h->reg_count, h->reg_count + 1);
        W(t, &h->nodes[e->node].reg_count, h->nodes[e->node].reg_count + 1);
    } else {
        W(t, &h->pg_count, h->pg_count + 1);
        W(t, &h->nodes[e->node].pg_count, h->nodes[e->node].pg_count + 1);
    }
}

static void unlink_entry(synt_t *t, const ent_t *e) {
    hdr_t *h = H(t);
    list_unlink(t, IX_KEY, list_head_off(t, IX_KEY, e->hkey, e->node, e->pid), e->idx);
    list_unlink(t, IX_PID, list_head_off(t, IX_PID, e->hkey, e->node, e->pid), e->idx);
    if (e->type == SYNT_PG) list_unlink(t, IX_KP, list_head_off(t, IX_KP, e->hkey, e->node, e->pid), e->idx);
    list_unlink(t, IX_NODE, list_head_off(t, IX_NODE, e->hkey, e->node, e->pid), e->idx);
    W(t, &h->count, h->count - 1);
    if (e->type == SYNT_REG) {
        W(t, &h->reg_count, h->reg_count - 1);
        W(t, &h->nodes[e->node].reg_count, h->nodes[e->node].reg_count - 1);
    } else {
        W(t, &h->pg_count, h->pg_count - 1);
        W(t, &h->nodes[e->node].pg_count, h->nodes[e->node].pg_count - 1);
    }
}

/* A filled, unlinked entry in fresh chunks; 0 when there is no room (A1). */
static int make_entry(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, uint64_t hk,
                      uint32_t node, int64_t pid, uint64_t start, int64_t time_ns,
                      const uint8_t *meta, uint32_t metalen, ent_t *e) {
    uint64_t total = (uint64_t)keylen + metalen, k = chunks_for(total);
    uint64_t idx = chunk_alloc(t, k, type);
    if (!idx) return 0;
    head_t *hd = HD(t, idx);
    /* unreachable until linked: plain stores (word 0 and ver were set by the allocator) */
    hd->hkey = (uint32_t)hk;
    hd->pid = (int32_t)pid; /* in range: checked by every put */
    hd->start = start;
    hd->time_ns = time_ns;
    hd->lens = MK_LENS(node, keylen, metalen);
    /* the key + meta stream: the head's inline bytes, then each data chunk's */
    uint8_t *dst = hd->data;
    uint64_t room = INLINE, c = idx, done = 0;
    while (done < total) {
        uint64_t n = total - done < room ? total - done : room;
        for (uint64_t i = 0; i < n; i++, done++)
            dst[i] = done < keylen ? key[done] : meta[done - keylen];
        if (done < total) {
            c = W0_NEXT(*CW0(t, c));
            dst = t->base + chunk_off(t, c) + DATA_HDR;
            room = DATA_BYTES;
        }
    }
    view_t v = {t, NULL};
    return rd_ent(&v, idx, e);
}

static int remove_entry(synt_t *t, const ent_t *e, uint32_t kind, uint32_t reason,
                        uint32_t reason_node) {
    unlink_entry(t, e);
    journal_append(t, kind, e, reason, reason_node);
    return chunk_free(t, e->idx, chunks_for((uint64_t)e->keylen + e->metalen));
}

/* ---------------------------------------------------------------- announce */

/* A local process now holds an entry: put (pid, start) on the announce ring, unless its filter
 * slot says it was the pair last announced there. The filter is only trusted by a manager that
 * reset it when it started following the ring (synt_watch_reset), so every pair it misses was
 * announced after its reset, or is in the table its scan reads. */
static void announce(synt_t *t, int64_t pid, uint64_t start) {
    hdr_t *h = H(t);
    pidpair_t *seen = &h->w_seen[mix64((uint64_t)pid ^ (start << 24)) & (WSEEN - 1)];
    if (seen->pid == pid && seen->start == start) return;
    uint64_t at = ring_tail(&h->wr);
    ring_claim(&h->wr, WRING, at + 1);
    pidpair_t *r = &h->w_ring[at & (WRING - 1)];
    ST(r->pid, pid);
    ST(r->start, start);
    W(t, (uint64_t *)&seen->pid, (uint64_t)pid);
    W(t, &seen->start, start);
    ST(h->wr.pending, at + 1);
}

int64_t synt_watch_reset(synt_t *t) {
    int lr = lock(t);
    if (lr) return lr;
    hdr_t *h = H(t);
    /* Plain stores, no undo log: only writers read the filter, under the mutex, and a filter
     * left half cleared by a caller that died here only announces more than it must. */
    memset(h->w_seen, 0, sizeof(h->w_seen));
    uint64_t head = h->wr.head;
    unlock(t);
    return (int64_t)head;
}

uint64_t synt_watch_head(synt_t *t) { return ring_head(&H(t)->wr); }

int64_t synt_watch_read(synt_t *t, uint64_t *cursor, int64_t *pids, uint64_t *starts, uint32_t cap) {
    hdr_t *h = H(t);
    uint64_t pos = *cursor, head = ring_head(&h->wr);
    if (pos > head || !ring_intact(&h->wr, pos)) goto overrun;
    int64_t n = 0;
    for (; pos < head && n < (int64_t)cap; pos++, n++) {
        pids[n] = LD(h->w_ring[pos & (WRING - 1)].pid);
        starts[n] = LD(h->w_ring[pos & (WRING - 1)].start);
    }
    if (!ring_intact(&h->wr, *cursor)) goto overrun; /* R3: the oldest copied decides */
    *cursor = pos;
    return n;
overrun:
    *cursor = ring_head(&h->wr);
    return SYNT_EOVERRUN;
}

/* ------------------------------------------------------------------ writes */

/* After a write, still under the mutex: tell the caller whether the manager sleeps. Dekker
 * with the manager: our journal publish, then its flag (it: its flag, then our head). */
static inline int report_wake(hdr_t *h, int rc, uint32_t flags, synt_info_t *out) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint32_t wake = __atomic_load_n(&h->mgr_sleeping, __ATOMIC_RELAXED);
    if (out) out->wake = wake;
    return (rc >= 0 && wake && (flags & SYNT_F_WAKE_RC)) ? (rc | SYNT_WAKE) : rc;
}

static int args_ok(synt_t *t, uint32_t type, uint32_t keylen, uint32_t node, uint32_t metalen) {
    if (type != SYNT_REG && type != SYNT_PG) return 0;
    if (keylen > SYNT_MAX_KEY || metalen > SYNT_MAX_META) return 0;
    return node < nnodes_of(t);
}

static int meta_is(synt_t *t, const ent_t *o, const uint8_t *meta, uint32_t metalen) {
    if (o->metalen != metalen) return 0;
    uint8_t buf[SYNT_MAX_META];
    view_t v = {t, NULL};
    return rd_data(&v, o, o->keylen, metalen, buf) && memcmp(buf, meta, metalen) == 0;
}

int synt_put(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, uint32_t node,
             int64_t pid, uint64_t start, int64_t time_ns, const uint8_t *meta, uint32_t metalen,
             uint32_t flags, uint64_t expect_ver, uint32_t reason, uint32_t reason_node,
             synt_info_t *out) {
    if (!args_ok(t, type, keylen, node, metalen)) return SYNT_ETOOBIG;
    if (pid < INT32_MIN || pid > INT32_MAX) return SYNT_EBADPID; /* a head stores an int32 */
    hdr_t *h = H(t);
    uint64_t hk = hash_key(type, key, keylen);
    int lr = lock(t);
    if (lr) return lr;
    int rc;
    ent_t o, e;
    view_t v = {t, NULL};
    if (LD(h->flags) & SYNT_FLAG_RETIRED) { rc = SYNT_ERETIRED; goto done; }
    int found = find(&v, type, key, keylen, hk, node, pid, &o);
    if (found < 0) { rc = SYNT_ECORRUPT; goto done; }
    int same = found && o.node == node && o.pid == pid && o.start == start;
    if ((flags & SYNT_F_EXPECT_VER) && (!found || !same || o.ver != expect_ver)) {
        if (found) fill_info(&o, out);
        rc = found ? SYNT_EMISMATCH : SYNT_ENOTFOUND;
        goto done;
    }
    if (found && !same && type == SYNT_REG && !(flags & SYNT_F_FORCE)) {
        fill_info(&o, out);
        rc = SYNT_ETAKEN;
        goto done;
    }
    if (found && same && !(flags & SYNT_F_FORCE) && meta_is(t, &o, meta, metalen)) {
        fill_info(&o, out);
        rc = SYNT_UNCHANGED;
        goto done;
    }
    /* A1: room for the new chain beside the old one (readers may still be reading that) */
    if ((!found && h->count >= t->capacity) || chunks_for((uint64_t)keylen + metalen) > chunks_free(t)) {
        rc = SYNT_EFULL;
        goto done;
    }
    op_begin(t);
    if (!make_entry(t, type, key, keylen, hk, node, pid, start, time_ns, meta, metalen, &e)) {
        rollback(t); /* a corrupt free list: nothing may stay half done */
        op_commit(t);
        rc = SYNT_ECORRUPT;
        goto done;
    }
    uint32_t jkind;
    if (found && !same) {
        /* forced takeover of a registry name, or a group member whose pid was reused (other
         * start): the old entry goes, in the same crash-atomic operation, journaled as such */
        remove_entry(t, &o, type == SYNT_REG ? SYNT_J_UNREGISTERED : SYNT_J_LEFT, reason, reason_node);
        jkind = type == SYNT_REG ? SYNT_J_REGISTERED : SYNT_J_JOINED;
        rc = SYNT_INSERTED;
    } else if (found) {
        unlink_entry(t, &o);
        chunk_free(t, o.idx, chunks_for((uint64_t)o.keylen + o.metalen));
        jkind = type == SYNT_REG ? SYNT_J_REG_UPDATED : SYNT_J_PG_UPDATED;
        rc = SYNT_UPDATED;
    } else {
        jkind = type == SYNT_REG ? SYNT_J_REGISTERED : SYNT_J_JOINED;
        rc = SYNT_INSERTED;
    }
    link_entry(t, &e);
    journal_append(t, jkind, &e, reason, reason_node);
    if (node == 0) announce(t, pid, start);
    op_commit(t);
    fill_info(&e, out);
done:
    rc = report_wake(h, rc, flags, out);
    unlock(t);
    return rc;
}

int synt_delete(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, uint32_t node,
                int64_t pid, uint32_t flags, uint32_t reason, uint32_t reason_node,
                synt_info_t *out) {
    if (!args_ok(t, type, keylen, node, 0)) return SYNT_ETOOBIG;
    hdr_t *h = H(t);
    uint64_t hk = hash_key(type, key, keylen);
    int lr = lock(t);
    if (lr) return lr;
    int rc = 0;
    ent_t o;
    view_t v = {t, NULL};
    if (LD(h->flags) & SYNT_FLAG_RETIRED) { rc = SYNT_ERETIRED; goto done; }
    int found = find(&v, type, key, keylen, hk, node, pid, &o);
    if (found < 0) { rc = SYNT_ECORRUPT; goto done; }
    if (!found) { rc = SYNT_ENOTFOUND; goto done; }
    fill_info(&o, out);
    if (type == SYNT_REG && (((flags & SYNT_F_MATCH_PID) && (o.node != node || o.pid != pid)) ||
                             ((flags & SYNT_F_MATCH_NODE) && o.node != node))) {
        rc = SYNT_EMISMATCH;
        goto done;
    }
    op_begin(t);
    remove_entry(t, &o, type == SYNT_REG ? SYNT_J_UNREGISTERED : SYNT_J_LEFT, reason, reason_node);
    op_commit(t);
done:
    rc = report_wake(h, rc, flags, out);
    unlock(t);
    return rc;
}

static int64_t realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int synt_put_local(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, int64_t pid,
                   uint64_t start, const uint8_t *meta, uint32_t metalen) {
    return synt_put(t, type, key, keylen, 0, pid, start, realtime_ns(), meta, metalen,
                    SYNT_F_WAKE_RC, 0, 0, 0, NULL);
}

int synt_delete_local(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, int64_t pid,
                      uint32_t flags) {
    return synt_delete(t, type, key, keylen, 0, pid, flags | SYNT_F_WAKE_RC, 0, 0, NULL);
}

/* The self identity: start is stored before pid (release) and read after it (acquire), so a
 * thread that sees the pid sees its start. The child of a fork starts without one. */
static uint64_t self_start;
static int64_t self_pid;
static void forget_self(void) { __atomic_store_n(&self_pid, 0, __ATOMIC_RELAXED); }
__attribute__((constructor)) static void self_at_load(void) { pthread_atfork(NULL, NULL, forget_self); }

void synt_set_self(int64_t pid, uint64_t start) {
    if (pid) /* a reset (0) leaves start alone: a writer that still read the old pid reads its start */
        __atomic_store_n(&self_start, start, __ATOMIC_RELAXED);
    __atomic_store_n(&self_pid, pid, __ATOMIC_RELEASE);
}

int synt_put_self(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, const uint8_t *meta,
                  uint32_t metalen) {
    int64_t pid = __atomic_load_n(&self_pid, __ATOMIC_ACQUIRE);
    if (!pid) return SYNT_ENOSELF; /* first: a caller told ENOTPLAIN has its identity, so its mailbox */
    if (!synt_meta_plain(meta, metalen)) return SYNT_ENOTPLAIN;
    return synt_put(t, type, key, keylen, 0, pid, __atomic_load_n(&self_start, __ATOMIC_RELAXED),
                    realtime_ns(), meta, metalen, SYNT_F_WAKE_RC, 0, 0, 0, NULL);
}

int synt_unreg_local(synt_t *t, const uint8_t *key, uint32_t keylen) {
    if (!(LD(H(t)->flags) & SYNT_FLAG_STRICT))
        return synt_delete(t, SYNT_REG, key, keylen, 0, 0, SYNT_F_MATCH_NODE | SYNT_F_WAKE_RC, 0, 0, NULL);
    int64_t pid = __atomic_load_n(&self_pid, __ATOMIC_ACQUIRE);
    if (!pid) return SYNT_ENOSELF;
    return synt_delete(t, SYNT_REG, key, keylen, 0, pid, SYNT_F_MATCH_PID | SYNT_F_WAKE_RC, 0, 0, NULL);
}

static uint32_t remove_kind(const ent_t *e) {
    return e->type == SYNT_REG ? SYNT_J_UNREGISTERED : SYNT_J_LEFT;
}

int64_t synt_purge_pid(synt_t *t, uint32_t node, int64_t pid, uint64_t start, uint32_t reason,
                       uint32_t reason_node) {
    int lr = lock(t);
    if (lr) return lr;
    int64_t n = 0;
    view_t v = {t, NULL};
    uint64_t o = R32(t, bucket_off(t, IX_PID, hash_pid(node, pid)));
    for (uint64_t steps = 0; o; steps++) {
        ent_t e;
        if (steps > t->capacity || !rd_ent(&v, o, &e)) { n = SYNT_ECORRUPT; break; }
        uint64_t next = L_NEXT(e.link[IX_PID]);
        if (e.node == node && e.pid == pid && (start == 0 || e.start == start)) {
            op_begin(t); /* one crash-atomic operation per entry */
            remove_entry(t, &e, remove_kind(&e), reason, reason_node);
            op_commit(t);
            n++;
        }
        o = next;
    }
    unlock(t);
    return n;
}

int64_t synt_purge_node(synt_t *t, uint32_t node, uint32_t reason, uint32_t reason_node) {
    if (node >= nnodes_of(t)) return SYNT_ENOTFOUND;
    int lr = lock(t);
    if (lr) return lr;
    int64_t n = 0;
    view_t v = {t, NULL};
    uint64_t o;
    while ((o = R32(t, list_head_off(t, IX_NODE, 0, node, 0))) != 0) {
        ent_t e;
        if (n > (int64_t)t->capacity || !rd_ent(&v, o, &e)) { n = SYNT_ECORRUPT; break; }
        op_begin(t);
        remove_entry(t, &e, remove_kind(&e), reason, reason_node);
        op_commit(t);
        n++;
    }
    unlock(t);
    return n;
}

int synt_set_flags(synt_t *t, uint64_t flags) {
    int lr = lock(t);
    if (lr) return lr;
    op_begin(t);
    W(t, &H(t)->flags, flags);
    op_commit(t);
    unlock(t);
    return 0;
}

uint64_t synt_flags(synt_t *t) { return LD(H(t)->flags); }

int synt_repair(synt_t *t) {
    int lr = lock(t);
    if (lr) return lr;
    unlock(t);
    return 0;
}

int synt_try_repair(synt_t *t) {
    int r = try_lock(t);
    if (r) return r;
    unlock(t);
    return 0;
}

/* ------------------------------------------------------- lock-free reads */

typedef struct {
    uint32_t type, keylen, node;
    int64_t pid;
    const uint8_t *key;
    uint64_t hk;
    synt_info_t *out;
    uint8_t *meta;
    uint32_t cap;
    uint64_t ver_off;
} get_arg_t;

static int64_t get_fn(const view_t *v, void *a_) {
    get_arg_t *a = a_;
    ent_t e;
    int r = find(v, a->type, a->key, a->keylen, a->hk, a->node, a->pid, &e);
    if (r != 1) return r;
    fill_info(&e, a->out);
    a->ver_off = ver_off(v->t, e.idx);
    if (e.metalen <= a->cap && !rd_data(v, &e, e.keylen, e.metalen, a->meta)) return -1;
    return 1;
}

int synt_get(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, uint32_t node,
             int64_t pid, synt_info_t *out, uint8_t *meta, uint32_t cap) {
    if (keylen > SYNT_MAX_KEY) return SYNT_ETOOBIG;
    get_arg_t a = {type, keylen, node, pid, key, hash_key(type, key, keylen), out, meta, cap, 0};
    uint64_t s = 0;
    int64_t r = read_stable(t, get_fn, &a, &s);
    out->seq = s;
    out->ver_word = a.ver_off / 8;
    if (r == SYNT_EBUSY) return SYNT_EBUSY;
    if (r < 0) return SYNT_ECORRUPT;
    if (r == 0) return 0;
    return out->metalen <= cap ? 1 : SYNT_EBUFSMALL;
}

int synt_lookup(synt_t *t, const uint8_t *key, uint32_t keylen, synt_hit_t *out, uint8_t *meta,
                uint32_t cap) {
    synt_info_t info;
    int rc = synt_get(t, SYNT_REG, key, keylen, 0, 0, &info, meta, cap);
    memset(out, 0, sizeof(*out));
    if (rc == 1) {
        out->word = info.ver_word;
        out->value = info.ver;
        out->pid = info.pid;
        out->node = info.node;
        out->metalen = info.metalen;
    } else if (rc == 0) {
        /* a miss stays true while seq holds this value: with seq odd (an operation open), the
         * answer is the committed state's, which only the operation's commit changes */
        out->word = synt_seq_word(t);
        out->value = info.seq;
    } else if (rc == SYNT_EBUFSMALL) {
        out->metalen = info.metalen;
    }
    return rc;
}

const volatile uint64_t *synt_seq_ptr(synt_t *t) { return &H(t)->seq; }

uint64_t synt_seq_word(synt_t *t) { (void)t; return offsetof(hdr_t, seq) / 8; }

const volatile uint64_t *synt_flags_ptr(synt_t *t) { return &H(t)->flags; }

typedef struct {
    uint32_t mode, type, keylen, node, flags;
    int64_t pid;
    const uint8_t *key;
    uint64_t hk;
    int measure;
    uint8_t *buf;
    uint64_t cap;
    uint64_t used;
} query_t;

static inline int matches(const view_t *v, const query_t *q, const ent_t *e) {
    if (q->type && e->type != q->type) return 0;
    switch (q->mode) {
    case SYNT_BY_KEY:
        if (q->node != SYNT_ALL_NODES && e->node != q->node) return 0;
        return key_is(v, e, e->type, q->key, q->keylen, q->hk);
    case SYNT_BY_PID: return e->node == q->node && e->pid == q->pid;
    default: return 1;
    }
}

static inline void put_be(uint8_t *p, uint64_t v, int nbytes) {
    for (int i = nbytes - 1; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
}

/* One collect() row as msgpack, written at buf + at if it fits: [node, pid, key?, meta?], the
 * key and meta copied as they are stored (both are msgpack already; an empty one is nil).
 * Returns the row's length, 0 when the entry's bytes can't be read. */
static uint64_t pack_row(const view_t *v, uint32_t flags, const ent_t *e, uint8_t *buf,
                         uint64_t cap, uint64_t at) {
    int wk = (flags & SYNT_F_WITH_KEY) != 0, wm = (flags & SYNT_F_WITH_META) != 0;
    uint64_t kl = wk ? (e->keylen ? e->keylen : 1) : 0, ml = wm ? (e->metalen ? e->metalen : 1) : 0;
    uint64_t len = 1 + 5 + 9 + kl + ml;
    if (!buf || at + len > cap) return len;
    uint8_t *p = buf + at;
    *p++ = (uint8_t)(0x90 | (2 + wk + wm));
    *p++ = 0xce; put_be(p, e->node, 4); p += 4;
    *p++ = 0xd3; put_be(p, (uint64_t)e->pid, 8); p += 8;
    if (wk) {
        if (e->keylen) { if (!rd_data(v, e, 0, e->keylen, p)) return 0; } else *p = 0xc0;
        p += kl;
    }
    if (wm) {
        if (e->metalen) { if (!rd_data(v, e, e->keylen, e->metalen, p)) return 0; } else *p = 0xc0;
    }
    return len;
}

/* One synt_item_t record; its length, 0 when the entry's bytes can't be read. */
static uint64_t item_row(const view_t *v, uint32_t flags, const ent_t *e, uint8_t *buf,
                         uint64_t cap, uint64_t at) {
    uint64_t kl = (flags & SYNT_F_WITH_KEY) ? e->keylen : 0;
    uint64_t ml = (flags & SYNT_F_WITH_META) ? e->metalen : 0;
    uint64_t len = ALIGN8(sizeof(synt_item_t) + kl + ml);
    if (!buf || at + len > cap) return len;
    synt_item_t *it = (synt_item_t *)(buf + at);
    it->node = e->node;
    it->type = e->type;
    it->pid = e->pid;
    it->start = e->start;
    it->time_ns = e->time_ns;
    it->keylen = (uint32_t)kl;
    it->metalen = (uint32_t)ml;
    uint8_t *d = (uint8_t *)(it + 1);
    if (kl && !rd_data(v, e, 0, kl, d)) return 0;
    if (ml && !rd_data(v, e, e->keylen, ml, d + kl)) return 0;
    return len;
}

/* Walk the list(s) the query selects and count matches; when measuring, add up in q->used the
 * bytes they take as rows, copying those that fit. Returns count, or -1 when a link or a length
 * can't be trusted. */
static int64_t walk_fn(const view_t *v, void *q_) {
    query_t *q = q_;
    synt_t *t = v->t;
    uint64_t limit = t->capacity + 1, steps = 0;
    int64_t n = 0;
    int ix;
    uint64_t heads[SYNT_MAX_NODES];
    uint32_t nheads = 0;
    switch (q->mode) {
    case SYNT_BY_KEY: ix = IX_KEY; heads[nheads++] = vw32(v, bucket_off(t, IX_KEY, q->hk)); break;
    case SYNT_BY_PID: ix = IX_PID; heads[nheads++] = vw32(v, bucket_off(t, IX_PID, hash_pid(q->node, q->pid))); break;
    default: {
        ix = IX_NODE;
        uint32_t nn = nnodes_of(t);
        if (q->node == SYNT_ALL_NODES) {
            for (uint32_t i = 0; i < nn; i++) heads[nheads++] = vw32(v, list_head_off(t, IX_NODE, 0, i, 0));
        } else {
            if (q->node >= nn) return 0;
            heads[nheads++] = vw32(v, list_head_off(t, IX_NODE, 0, q->node, 0));
        }
    }
    }
    int packed = (q->flags & SYNT_F_MSGPACK) != 0;
    q->used = packed ? 5 : 0; /* msgpack: an array32 header, written once the count is known */
    for (uint32_t i = 0; i < nheads; i++) {
        for (uint64_t o = heads[i]; o;) {
            ent_t e;
            if (++steps > limit || !rd_ent(v, o, &e)) return -1;
            int m = matches(v, q, &e);
            if (m < 0) return -1;
            if (m) {
                n++;
                if (q->measure) {
                    uint64_t len = packed ? pack_row(v, q->flags, &e, q->buf, q->cap, q->used)
                                          : item_row(v, q->flags, &e, q->buf, q->cap, q->used);
                    if (!len) return -1;
                    q->used += len;
                }
            }
            o = L_NEXT(e.link[ix]);
        }
    }
    if (packed && q->buf && q->cap >= 5) {
        q->buf[0] = 0xdd;
        put_be(q->buf + 1, (uint64_t)n, 4);
    }
    return n;
}

static int64_t run_query(synt_t *t, query_t *q, uint64_t *needed) {
    int64_t n = read_stable(t, walk_fn, q, NULL);
    if (n == SYNT_EBUSY) return n;
    if (n < 0) return SYNT_ECORRUPT;
    if (needed) *needed = q->used;
    if (q->buf && q->used > q->cap) return SYNT_EBUFSMALL;
    return n;
}

int64_t synt_collect(synt_t *t, uint32_t mode, uint32_t type, const uint8_t *key,
                     uint32_t keylen, uint32_t node, int64_t pid, uint32_t flags, uint8_t *buf,
                     uint64_t cap, uint64_t *needed) {
    if (keylen > SYNT_MAX_KEY) return SYNT_ETOOBIG;
    query_t q = {mode, type, keylen, node, flags, pid, key,
                 mode == SYNT_BY_KEY ? hash_key(type, key, keylen) : 0,
                 needed != NULL || buf != NULL, buf, cap, 0};
    return run_query(t, &q, needed);
}

static int64_t word_fn(const view_t *v, void *off) { return (int64_t)vw(v, *(uint64_t *)off); }

int64_t synt_count(synt_t *t, uint32_t mode, uint32_t type, const uint8_t *key, uint32_t keylen,
                   uint32_t node, int64_t pid) {
    if (mode == SYNT_BY_NODE && (type == SYNT_REG || type == SYNT_PG)) {
        /* counters answer without a walk, as the last committed state has them */
        uint64_t off;
        if (node == SYNT_ALL_NODES) off = type == SYNT_REG ? offsetof(hdr_t, reg_count) : offsetof(hdr_t, pg_count);
        else if (node >= nnodes_of(t)) return 0;
        else off = offsetof(hdr_t, nodes) + node * sizeof(node_t) +
                   (type == SYNT_REG ? offsetof(node_t, reg_count) : offsetof(node_t, pg_count));
        int64_t n = read_stable(t, word_fn, &off, NULL);
        return n < 0 && n != SYNT_EBUSY ? SYNT_ECORRUPT : n;
    }
    if (keylen > SYNT_MAX_KEY) return SYNT_ETOOBIG;
    query_t q = {mode, type, keylen, node, 0, pid, key,
                 mode == SYNT_BY_KEY ? hash_key(type, key, keylen) : 0, 0, NULL, 0, 0};
    return run_query(t, &q, NULL);
}

/* the counters as the last committed state has them */
static int64_t stats_fn(const view_t *v, void *out_) {
    synt_stats_t *out = out_;
    out->count = vw(v, offsetof(hdr_t, count));
    out->reg_count = vw(v, offsetof(hdr_t, reg_count));
    out->pg_count = vw(v, offsetof(hdr_t, pg_count));
    uint64_t top = vw(v, offsetof(hdr_t, top)), fc = vw(v, offsetof(hdr_t, free_count));
    out->chunks_free = (top <= v->t->nchunks ? v->t->nchunks - top : 0) + fc;
    uint64_t nn = vw(v, offsetof(hdr_t, nnodes));
    out->nnodes = nn > SYNT_MAX_NODES ? SYNT_MAX_NODES : nn;
    return 0;
}

int synt_stats(synt_t *t, synt_stats_t *out) {
    hdr_t *h = H(t);
    int64_t r = read_stable(t, stats_fn, out, &out->seq);
    out->capacity = t->capacity;
    out->chunks = t->nchunks;
    out->heap_size = t->nchunks * SYNT_CHUNK;
    out->heap_used = out->chunks_free <= out->chunks ? (out->chunks - out->chunks_free) * SYNT_CHUNK : 0;
    out->journal_size = t->journal_size;
    out->journal_head = synt_journal_head(t);
    out->flags = LD(h->flags);
    out->lock_holder = LD(h->holder_pid);
    out->lock_since = LD(h->holder_since);
    return (int)r;
}

uint64_t synt_chunks_for(uint64_t datalen) { return chunks_for(datalen); }

int64_t synt_field_offset(const char *name) {
    static const struct { const char *name; size_t off; } f[] = {
        {"magic", offsetof(hdr_t, magic)}, {"version", offsetof(hdr_t, version)},
        {"capacity", offsetof(hdr_t, capacity)}, {"nbuckets", offsetof(hdr_t, nbuckets)},
        {"buckets_off", offsetof(hdr_t, buckets_off)}, {"journal_off", offsetof(hdr_t, journal_off)},
        {"journal_size", offsetof(hdr_t, journal_size)}, {"heap_off", offsetof(hdr_t, heap_off)},
        {"nchunks", offsetof(hdr_t, nchunks)}, {"flags", offsetof(hdr_t, flags)},
        {"vers_off", offsetof(hdr_t, vers_off)},
        {"seq", offsetof(hdr_t, seq)}, {"holder_pid", offsetof(hdr_t, holder_pid)},
        {"top", offsetof(hdr_t, top)}, {"free_head", offsetof(hdr_t, free_head)},
        {"free_count", offsetof(hdr_t, free_count)}, {"count", offsetof(hdr_t, count)},
        {"reg_count", offsetof(hdr_t, reg_count)}, {"pg_count", offsetof(hdr_t, pg_count)},
        {"nnodes", offsetof(hdr_t, nnodes)}, {"next_ver", offsetof(hdr_t, next_ver)},
        {"j_head", offsetof(hdr_t, jr.head)}, {"j_min_valid", offsetof(hdr_t, jr.min_valid)},
        {"j_pending", offsetof(hdr_t, jr.pending)}, {"j_seq", offsetof(hdr_t, j_seq)},
        {"j_last", offsetof(hdr_t, j_last)}, {"j_last_pending", offsetof(hdr_t, j_last_pending)},
        {"undo_n", offsetof(hdr_t, undo_n)}, {"undo", offsetof(hdr_t, undo)},
        {"w_head", offsetof(hdr_t, wr.head)}, {"w_min_valid", offsetof(hdr_t, wr.min_valid)},
        {"w_pending", offsetof(hdr_t, wr.pending)}, {"w_ring", offsetof(hdr_t, w_ring)},
        {"nodes", offsetof(hdr_t, nodes)}, {"node_size", sizeof(node_t)},
    };
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        if (strcmp(f[i].name, name) == 0) return (int64_t)f[i].off;
    return -1;
}

void synt_test_stop_after(int64_t n) { test_kill_after = n; }
void synt_test_sigstop_after(int64_t n) { test_stop_after = n; }

/* ------------------------------------------------------------------ checker */

#define FAIL(...) do { snprintf(err, cap, __VA_ARGS__); rc = SYNT_ECORRUPT; goto out; } while (0)
#define U(x) ((unsigned long long)(x))

/* Is idx on the list starting at head (following link ix), within `limit` steps, with every
 * prev link mutual (doubly linked lists)? 1 yes, 0 no, -1 a prev link is wrong, -2 a bad index. */
static int on_list(synt_t *t, int ix, uint64_t head, uint64_t idx, uint64_t limit) {
    uint64_t prev = 0;
    for (uint64_t o = head, s = 0; o && s <= limit; s++) {
        if (!chunk_ok(t, o)) return -2;
        if (doubly(ix) && L_PREV(*(uint64_t *)(t->base + link_off(t, o, ix))) != prev) return -1;
        if (o == idx) return 1;
        prev = o;
        o = link_next(t, o, ix);
    }
    return 0;
}

static int check_rings(synt_t *t, char *err, uint32_t cap) {
    hdr_t *h = H(t);
    int rc = 0;
    if (h->jr.min_valid > h->jr.head || h->jr.head - h->jr.min_valid > t->journal_size)
        FAIL("I8 journal cursors head=%llu min_valid=%llu", U(h->jr.head), U(h->jr.min_valid));
    if (h->wr.min_valid > h->wr.head || h->wr.head - h->wr.min_valid > WRING)
        FAIL("I8 announce cursors head=%llu min_valid=%llu", U(h->wr.head), U(h->wr.min_valid));
    if (h->jr.head == 0) {
        if (h->j_seq != 0) FAIL("I10 no record published but j_seq=%llu", U(h->j_seq));
    } else if (h->j_last >= h->jr.min_valid) {
        uint64_t mask = t->journal_size - 1;
        if (h->j_last >= h->jr.head || t->journal_size - (h->j_last & mask) < sizeof(synt_jrec_t))
            FAIL("I10 j_last=%llu outside the journal (head %llu)", U(h->j_last), U(h->jr.head));
        synt_jrec_t r;
        memcpy(&r, t->base + t->journal_off + (h->j_last & mask), sizeof(r));
        if (h->j_last + r.reclen != h->jr.head || r.seq != h->j_seq)
            FAIL("I10 the last published record (seq %llu, ends at %llu) disagrees with j_seq %llu, head %llu",
                 U(r.seq), U(h->j_last + r.reclen), U(h->j_seq), U(h->jr.head));
    }
out:
    return rc;
}

int synt_check(synt_t *t, char *err, uint32_t cap) {
    hdr_t *h = H(t);
    int rc = 0;
    uint8_t *mark = NULL;
    if (cap) err[0] = 0;
    if (lock(t)) { snprintf(err, cap, "mutex unusable"); return SYNT_ELOCK; }
    view_t v = {t, NULL};
    uint64_t limit = t->capacity + 1;
    /* I1 */
    if (h->magic != MAGIC || h->version != VERSION) FAIL("I1 bad magic/version");
    if (h->nbuckets != t->nbuckets || h->capacity != t->capacity || h->heap_off != t->heap_off ||
        h->vers_off != t->vers_off ||
        h->nchunks != t->nchunks || h->journal_off != t->journal_off || h->journal_size != t->journal_size)
        FAIL("I1 geometry changed since the segment was opened");
    if (h->seq & 1) FAIL("I1 seq odd while unlocked");
    if (h->undo_n != 0 || h->jr.pending != 0 || h->wr.pending != 0)
        FAIL("I1 undo_n=%llu j_pending=%llu w_pending=%llu", U(h->undo_n), U(h->jr.pending), U(h->wr.pending));
    if (h->nnodes == 0 || h->nnodes > SYNT_MAX_NODES) FAIL("I7 nnodes=%llu", U(h->nnodes));
    if ((rc = check_rings(t, err, cap)) != 0) goto out;
    /* I2, I3: the free list */
    if (h->top > t->nchunks) FAIL("I2 top=%llu past nchunks=%llu", U(h->top), U(t->nchunks));
    mark = calloc(h->top + 1, 1);
    if (!mark) FAIL("out of memory");
    uint64_t nfree = 0;
    for (uint64_t o = h->free_head; o; o = W0_NEXT(*CW0(t, o))) {
        if (!chunk_ok(t, o) || o > h->top) FAIL("I2 free list has bad chunk %llu", U(o));
        if (mark[o]) FAIL("I2 free list has chunk %llu twice (a cycle)", U(o));
        if (W0_TYPE(*CW0(t, o)) != 0 || *VERW(t, o) != 0) FAIL("I3 free chunk %llu type/ver not 0", U(o));
        mark[o] = 1;
        nfree++;
    }
    if (nfree != h->free_count) FAIL("I2 free list holds %llu chunks, free_count %llu", U(nfree), U(h->free_count));
    /* every head, its chain, its lists */
    uint64_t live = 0, reg = 0, pg = 0;
    uint64_t nreg[SYNT_MAX_NODES] = {0}, npg[SYNT_MAX_NODES] = {0};
    for (uint64_t o = 1; o <= h->top; o++) {
        uint32_t type = W0_TYPE(*CW0(t, o));
        if (type == 0) continue;
        ent_t e;
        if (mark[o]) FAIL("I2 head %llu is also free or data", U(o));
        mark[o] = 2;
        if (!rd_ent(&v, o, &e)) FAIL("I5 head %llu type %u or lengths bad", U(o), type);
        if (e.ver == 0 || e.ver >= h->next_ver) FAIL("I9 entry %llu ver %llu (next %llu)", U(o), U(e.ver), U(h->next_ver));
        uint64_t k = chunks_for((uint64_t)e.keylen + e.metalen), c = W0_NEXT(e.w0);
        for (uint64_t i = 1; i < k; i++, c = W0_NEXT(*CW0(t, c))) {
            if (!chunk_ok(t, c) || c > h->top) FAIL("I4 entry %llu chain has bad chunk %llu", U(o), U(c));
            if (mark[c]) FAIL("I2 chunk %llu of entry %llu is also elsewhere", U(c), U(o));
            if (W0_TYPE(*CW0(t, c)) != 0 || *VERW(t, c) != 0) FAIL("I3 data chunk %llu type/ver not 0", U(c));
            mark[c] = 3;
        }
        if (c != 0) FAIL("I4 entry %llu chain longer than %llu chunks", U(o), U(k));
        if (e.node >= h->nnodes) FAIL("I7 entry %llu node %u", U(o), e.node);
        uint8_t key[SYNT_MAX_KEY];
        if (!rd_data(&v, &e, 0, e.keylen, key)) FAIL("I4 entry %llu key unreadable", U(o));
        if (e.hkey != hash_key(e.type, key, e.keylen)) FAIL("I4 entry %llu stale hash", U(o));
        int r;
        if ((r = on_list(t, IX_KEY, R32(t, list_head_off(t, IX_KEY, e.hkey, e.node, e.pid)), o, limit)) != 1) FAIL("I4 entry %llu key chain (%d)", U(o), r);
        if ((r = on_list(t, IX_PID, R32(t, list_head_off(t, IX_PID, e.hkey, e.node, e.pid)), o, limit)) != 1) FAIL("I4 entry %llu pid chain (%d)", U(o), r);
        if ((r = on_list(t, IX_NODE, R32(t, list_head_off(t, IX_NODE, e.hkey, e.node, e.pid)), o, limit)) != 1) FAIL("I4 entry %llu node list (%d)", U(o), r);
        ent_t f;
        if (e.type == SYNT_PG) {
            if ((r = on_list(t, IX_KP, R32(t, list_head_off(t, IX_KP, e.hkey, e.node, e.pid)), o, limit)) != 1) FAIL("I4 entry %llu key-pid chain (%d)", U(o), r);
            if (find(&v, SYNT_PG, key, e.keylen, e.hkey, e.node, e.pid, &f) != 1 || f.idx != o) FAIL("I6 duplicate membership at %llu", U(o));
            pg++; npg[e.node]++;
        } else {
            if (find(&v, SYNT_REG, key, e.keylen, e.hkey, 0, 0, &f) != 1 || f.idx != o) FAIL("I6 duplicate name at %llu", U(o));
            reg++; nreg[e.node]++;
        }
        live++;
    }
    for (uint64_t o = 1; o <= h->top; o++)
        if (!mark[o]) FAIL("I2 chunk %llu is neither free nor held (leaked)", U(o));
    /* I7 */
    if (live != h->count || reg != h->reg_count || pg != h->pg_count)
        FAIL("I7 counters count=%llu/%llu reg=%llu/%llu pg=%llu/%llu", U(h->count), U(live),
             U(h->reg_count), U(reg), U(h->pg_count), U(pg));
    if (h->count > t->capacity) FAIL("I7 count over capacity");
    for (uint64_t n = 0; n < h->nnodes; n++) {
        if (h->nodes[n].reg_count != nreg[n] || h->nodes[n].pg_count != npg[n]) FAIL("I7 node %llu counters", U(n));
        uint64_t s = 0;
        for (uint64_t o = R32(t, list_head_off(t, IX_NODE, 0, (uint32_t)n, 0)); o;
             o = link_next(t, o, IX_NODE)) {
            ent_t e;
            if (++s > limit || !rd_ent(&v, o, &e) || e.node != n) FAIL("I4 node %llu list holds a stranger", U(n));
        }
        if (s != nreg[n] + npg[n]) FAIL("I4 node %llu list length %llu", U(n), U(s));
    }
    /* every bucket chain holds only live entries */
    for (int ix = 0; ix < 3; ix++) {
        uint64_t total = 0;
        for (uint64_t b = 0; b < t->nbuckets; b++) {
            uint64_t boff = t->buckets_off + ((uint64_t)ix * t->nbuckets + b) * 4;
            for (uint64_t o = R32(t, boff); o; o = link_next(t, o, ix)) {
                if (!chunk_ok(t, o) || o > h->top || mark[o] != 2) FAIL("I4 index %d bucket %llu holds a free or bad chunk", ix, U(b));
                if (++total > limit) FAIL("I4 index %d has a cycle", ix);
            }
        }
        uint64_t want = ix == IX_KP ? pg : live;
        if (total != want) FAIL("I4 index %d holds %llu entries, want %llu", ix, U(total), U(want));
    }
out:
    free(mark);
    unlock(t);
    return rc;
}

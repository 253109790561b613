/* syn_mp shared-memory table.
 *
 * LAYOUT (one segment, offsets from its base; every offset below is 8-aligned)
 *   [0, HDR)            hdr_t: magic, version, geometry, robust mutex, seqlock,
 *                       allocator, counters, node table, journal cursors, undo log
 *   buckets             3 arrays of nbuckets uint64 entry offsets (0 = empty):
 *                       IX_KEY by (type, key), IX_PID by (node, pid),
 *                       IX_KP by (type, key, node, pid) (groups only)
 *   journal             ring of journal_size bytes (a power of two)
 *   heap                blobs carved by a bump pointer in size classes
 *                       BLOB_MIN << c; freed blobs go on free_head[c]
 *
 * An entry is one blob: entry_t followed by key bytes then meta bytes. It is on
 * four doubly linked lists: its IX_KEY bucket chain, its IX_PID chain, its IX_KP
 * chain (groups; registry entries leave it unlinked) and its node's list.
 *
 * INVARIANTS (synt_check verifies all of them, under the mutex, after repair)
 *   I1 hdr magic/version/geometry match what synt_init wrote; seq is even and
 *      undo_n == 0 and j_pending == 0 whenever the mutex is free.
 *   I2 every blob in [heap_off, heap_top) is carved at a multiple of BLOB_MIN,
 *      has a valid class and does not cross heap_top; blobs tile the region.
 *   I3 a blob is free (type 0) iff it is on free_head[its class], exactly once.
 *   I4 a live entry (type REG or PG) is on exactly the lists named above, in the
 *      bucket its stored hash selects, and every link is mutual (n->prev == e).
 *   I5 keylen <= MAX_KEY, metalen <= MAX_META, and key+meta fit in the blob.
 *   I6 at most one REG entry per key; at most one PG entry per (key, node, pid).
 *   I7 count, reg_count, pg_count and the per-node counters equal what the lists
 *      hold; count <= capacity; node < nnodes.
 *   I8 j_min_valid <= j_head and j_head - j_min_valid <= journal_size.
 *   I9 a live entry's ver is in [1, next_ver); a free blob's ver is 0. next_ver
 *      only grows and an entry is never changed in place (an update is a new
 *      blob), so (offset, ver) names one entry's contents for as long as it
 *      lives: a process may cache what it read and trust it while that word is
 *      unchanged (syn_mp's lookup cache), whatever else the table does.
 *
 * WRITERS hold the process-shared robust mutex. Every store to a word that is
 * reachable by readers goes through W(), which first appends (offset, old value)
 * to the undo log, then bumps undo_n, then stores: so at any instruction a dead
 * writer leaves a log that restores the state before its operation. Blob bytes a
 * writer fills before linking the blob are unreachable and need no log. The
 * commit point of an operation is the store undo_n = 0; journal records written
 * before it are published after it (j_pending holds the head to publish, so doing
 * it twice is harmless), and repair rolls that publication forward. The next
 * locker gets EOWNERDEAD, runs repair() and marks the mutex consistent.
 *
 * READERS never lock and never make a system call: a seqlock around the whole
 * table (odd while a writer is inside an operation). Everything read under it
 * can be torn, so each offset and length is bounds-checked before it is
 * followed, chain walks are bounded, and the result is only trusted when seq is
 * unchanged. A reader that sees an odd seq for too long returns SYNT_EBUSY: its
 * caller takes the mutex once (synt_repair), which repairs a dead writer's work.
 *
 * The journal ring is read lock-free by cursors (logical byte positions): a
 * record at p is intact iff p >= j_min_valid after the copy; writers raise
 * j_min_valid before they overwrite.
 *
 * THE ANNOUNCE RING tells the manager which local processes to watch without it
 * reading every journal record (those lines are hot in the writer's cache: at a
 * million writes a second, following them cost the manager half a core). A put
 * of a node-0 entry appends (pid, start) unless the filter slot of that pair
 * holds it already. The manager resets the filter (under the mutex), then reads
 * from the head it got back and scans the table: a pair it never reads was
 * announced before the reset and so held an entry the scan finds, or was filtered
 * as announced after the reset. On an overrun it resets and scans again.
 */
#include "table.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x3142545053594e53ULL /* "SNYSPTB1" little-endian */
#define VERSION 3u               /* 2: ver is zeroed on free (I9); 3: the announce ring */
#define BLOB_MIN 256u
#define NCLASSES 8u              /* 256 B .. 32 KiB */
#define UNDO_MAX 512u
#define NIDX 4
enum { IX_KEY = 0, IX_PID = 1, IX_KP = 2, IX_NODE = 3 };
#define SPIN_LIMIT (1u << 22)    /* reader spins on an odd seq before EBUSY */
#define WRING 4096u              /* announce ring: (pid, start) of local processes that added entries */
#define WSEEN 256u               /* its filter: per hash slot, the pair last announced there */
#define JREC_ALIGN 8u

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() do { } while (0)
#endif
#define LD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define ST(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define BARRIER() __atomic_signal_fence(__ATOMIC_SEQ_CST)

typedef struct {
    uint64_t len;
    uint64_t reg_count;
    uint64_t pg_count;
    uint64_t head;               /* IX_NODE list */
    char name[SYNT_MAX_NODE_NAME + 1];
} node_t;

typedef struct {
    uint64_t off;
    uint64_t old;
} undo_t;

typedef struct {
    int64_t pid;
    uint64_t start;
} pidpair_t;

typedef struct {
    /* geometry: written once by synt_init */
    uint64_t magic;
    uint64_t version;
    uint64_t hdr_size;
    uint64_t mutex_size;
    uint64_t total_size;
    uint64_t capacity;
    uint64_t nbuckets;
    uint64_t buckets_off;
    uint64_t journal_off;
    uint64_t journal_size;
    uint64_t heap_off;
    uint64_t heap_size;
    uint64_t flags;
    uint64_t _geom_pad[3];

    pthread_mutex_t mutex;
    char _pad0[128];

    uint64_t seq;                /* seqlock: odd while a writer is inside */
    char _pad1[56];

    /* allocator and counters (W-logged) */
    uint64_t heap_top;
    uint64_t free_head[NCLASSES];
    uint64_t count;
    uint64_t reg_count;
    uint64_t pg_count;
    uint64_t next_ver;
    uint64_t nnodes;

    /* journal */
    uint64_t j_head;             /* logical bytes published */
    uint64_t j_min_valid;        /* oldest logical byte still intact */
    uint64_t j_seq;              /* seq of the last record (W-logged) */
    uint64_t j_pending;          /* head to publish at commit (0: nothing written) */
    uint32_t mgr_sleeping;
    uint32_t _pad2;

    node_t nodes[SYNT_MAX_NODES];

    uint64_t undo_n;
    undo_t undo[UNDO_MAX];

    /* announce ring (W-logged): what the manager reads to learn which processes to watch,
     * instead of every journal record; w_seen keeps a process that writes again and again
     * from being announced again and again */
    uint64_t w_head;             /* pairs ever appended */
    pidpair_t w_ring[WRING];
    pidpair_t w_seen[WSEEN];
} hdr_t;

typedef struct {
    uint64_t free_next;          /* word 0: free-list link, kept while allocated */
    uint64_t cls;
    uint64_t type;               /* 0 free, SYNT_REG, SYNT_PG */
    uint64_t link[NIDX][2];      /* [index][0 next, 1 prev] */
    uint64_t hkey;               /* hash of (type, key) */
    uint64_t node;
    int64_t pid;
    uint64_t start;
    int64_t time_ns;
    uint64_t ver;
    uint64_t keylen;
    uint64_t metalen;
    uint8_t data[];              /* key then meta */
} entry_t;

#define H(t) ((hdr_t *)(t)->base)
#define AT(t, off) ((entry_t *)((t)->base + (off)))
#define ALIGN8(x) (((x) + 7u) & ~(uint64_t)7u)

/* ---------------------------------------------------------------- hashing */

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t hash_key(uint32_t type, const uint8_t *k, uint32_t n) {
    uint64_t h = 0xcbf29ce484222325ULL ^ type;
    for (uint32_t i = 0; i < n; i++) { h ^= k[i]; h *= 0x100000001b3ULL; }
    return mix64(h);
}

static inline uint64_t hash_pid(uint64_t node, int64_t pid) {
    return mix64((node << 40) ^ (uint64_t)pid ^ 0x9e3779b97f4a7c15ULL);
}

static inline uint64_t hash_kp(uint64_t hkey, uint64_t node, int64_t pid) {
    return mix64(hkey ^ hash_pid(node, pid));
}

static inline uint64_t *bucket(synt_t *t, int ix, uint64_t h) {
    hdr_t *hd = H(t);
    uint64_t *b = (uint64_t *)(t->base + hd->buckets_off);
    return &b[(uint64_t)ix * hd->nbuckets + (h & (hd->nbuckets - 1))];
}

/* ------------------------------------------------------------ undo logging */

static int64_t test_stop_after = -1;
void synt_test_stop_after(int64_t n) { test_stop_after = n; }

/* Every store a reader or a repair can see goes through here: log, count, store. */
static inline void W(synt_t *t, uint64_t *p, uint64_t v) {
    hdr_t *h = H(t);
    uint64_t n = h->undo_n;
    if (n >= UNDO_MAX) abort(); /* an operation touches a bounded number of words */
    if (test_stop_after >= 0 && test_stop_after-- == 0) raise(SIGKILL);
    h->undo[n].off = (uint64_t)((uint8_t *)p - t->base);
    h->undo[n].old = *p;
    BARRIER(); /* the record is complete before it is counted */
    ST(h->undo_n, n + 1);
    BARRIER(); /* and counted before the word changes */
    ST(*p, v);
}

static void rollback(synt_t *t) {
    hdr_t *h = H(t);
    uint64_t n = h->undo_n;
    if (n > UNDO_MAX) n = UNDO_MAX;
    while (n > 0) {
        n--;
        undo_t *u = &h->undo[n];
        if (u->off + 8 <= t->size && (u->off & 7) == 0)
            ST(*(uint64_t *)(t->base + u->off), u->old);
        BARRIER();
        ST(h->undo_n, n);
    }
}

/* ---------------------------------------------------------------- locking */

static void repair(synt_t *t) {
    hdr_t *h = H(t);
    if (h->undo_n > 0) {
        rollback(t);            /* the operation never happened */
        h->j_pending = 0;
    } else if (h->j_pending > 0) {
        /* committed: publish its journal records as the dead writer would have (it may
         * have published them already, but not cleared j_pending) */
        __atomic_store_n(&h->j_head, h->j_pending, __ATOMIC_RELEASE);
        h->j_pending = 0;
    }
    if (h->seq & 1) __atomic_store_n(&h->seq, h->seq + 1, __ATOMIC_RELEASE);
}

static int lock(synt_t *t) {
    int r = pthread_mutex_lock(&H(t)->mutex);
    if (r == EOWNERDEAD) {
        repair(t);
        pthread_mutex_consistent(&H(t)->mutex);
        return 0;
    }
    return r == 0 ? 0 : SYNT_ELOCK;
}

static void unlock(synt_t *t) { pthread_mutex_unlock(&H(t)->mutex); }

/* Start of one crash-atomic operation (under the mutex). */
static inline void op_begin(synt_t *t) {
    hdr_t *h = H(t);
    __atomic_store_n(&h->seq, h->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE); /* readers see odd before any change */
}

/* Commit: clear the log (the commit point), then publish the journal record. */
static inline void op_commit(synt_t *t) {
    hdr_t *h = H(t);
    BARRIER();
    ST(h->undo_n, 0);
    BARRIER();
    if (h->j_pending) {
        __atomic_store_n(&h->j_head, h->j_pending, __ATOMIC_RELEASE);
        h->j_pending = 0;
    }
    __atomic_store_n(&h->seq, h->seq + 1, __ATOMIC_RELEASE);
}

/* --------------------------------------------------------------- geometry */

static uint64_t pow2_at_least(uint64_t x) {
    uint64_t p = 1;
    while (p < x) p <<= 1;
    return p;
}

static uint64_t blob_size(uint64_t cls) { return (uint64_t)BLOB_MIN << cls; }

static int class_for(uint64_t need) {
    for (uint32_t c = 0; c < NCLASSES; c++)
        if (need <= blob_size(c)) return (int)c;
    return -1;
}

uint64_t synt_layout_size(uint64_t capacity, uint64_t heap_size, uint64_t journal_size) {
    uint64_t nb = pow2_at_least(capacity < 16 ? 16 : capacity);
    uint64_t hdr = (sizeof(hdr_t) + 4095) & ~4095ULL;
    uint64_t bk = ((3 * nb * 8) + 4095) & ~4095ULL;
    if (journal_size < 65536) journal_size = 65536; /* as synt_init rounds it */
    return hdr + bk + pow2_at_least(journal_size) + ((heap_size + 4095) & ~4095ULL);
}

int synt_init(uint8_t *base, uint64_t size, uint64_t capacity, uint64_t heap_size,
              uint64_t journal_size, const char *node, uint32_t nodelen, uint64_t flags) {
    if (capacity == 0 || nodelen == 0 || nodelen > SYNT_MAX_NODE_NAME) return SYNT_EBADLAYOUT;
    journal_size = pow2_at_least(journal_size < 65536 ? 65536 : journal_size);
    if (synt_layout_size(capacity, heap_size, journal_size) > size) return SYNT_EBADLAYOUT;
    hdr_t *h = (hdr_t *)base;
    /* The segment is fresh from ftruncate: all zero, so empty buckets and lists cost no pages. */
    uint64_t nb = pow2_at_least(capacity < 16 ? 16 : capacity);
    h->version = VERSION;
    h->hdr_size = sizeof(hdr_t);
    h->mutex_size = sizeof(pthread_mutex_t);
    h->total_size = size;
    h->capacity = capacity;
    h->nbuckets = nb;
    h->buckets_off = (sizeof(hdr_t) + 4095) & ~4095ULL;
    h->journal_off = h->buckets_off + (((3 * nb * 8) + 4095) & ~4095ULL);
    h->journal_size = journal_size;
    h->heap_off = h->journal_off + journal_size;
    h->heap_size = size - h->heap_off;
    h->heap_top = h->heap_off;
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

int synt_open(synt_t *t, uint8_t *base, uint64_t size) {
    hdr_t *h = (hdr_t *)base;
    if (size < sizeof(hdr_t)) return SYNT_EBADLAYOUT;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != MAGIC || h->version != VERSION ||
        h->hdr_size != sizeof(hdr_t) || h->mutex_size != sizeof(pthread_mutex_t) ||
        h->total_size != size || h->heap_off + h->heap_size != size ||
        (h->nbuckets & (h->nbuckets - 1)) != 0 || (h->journal_size & (h->journal_size - 1)) != 0)
        return SYNT_EBADLAYOUT;
    t->base = base;
    t->size = size;
    return 0;
}

/* ----------------------------------------------------------- bounds checks */

/* May offset `off` be followed as an entry? (A torn read can produce anything.) */
static inline int entry_ok(synt_t *t, uint64_t off) {
    hdr_t *h = H(t);
    uint64_t ho = LD(h->heap_off), hs = LD(h->heap_size);
    return off >= ho && off - ho < hs && ((off - ho) % BLOB_MIN) == 0 &&
           off + sizeof(entry_t) <= ho + hs;
}

/* Do the key and meta lengths of e fit inside its blob and the segment? */
static inline int lens_ok(synt_t *t, uint64_t off, uint64_t keylen, uint64_t metalen,
                          uint64_t cls) {
    if (keylen > SYNT_MAX_KEY || metalen > SYNT_MAX_META || cls >= NCLASSES) return 0;
    uint64_t end = off + sizeof(entry_t) + keylen + metalen;
    return end <= off + blob_size(cls) && end <= t->size;
}

/* ------------------------------------------------------------------ lists */

static void list_push(synt_t *t, int ix, uint64_t *head, uint64_t off) {
    entry_t *e = AT(t, off);
    uint64_t old = *head;
    /* e is not yet reachable: plain stores */
    e->link[ix][0] = old;
    e->link[ix][1] = 0;
    if (old) W(t, &AT(t, old)->link[ix][1], off);
    W(t, head, off);
}

static void list_unlink(synt_t *t, int ix, uint64_t *head, uint64_t off) {
    entry_t *e = AT(t, off);
    uint64_t nx = e->link[ix][0], pv = e->link[ix][1];
    if (pv) W(t, &AT(t, pv)->link[ix][0], nx);
    else W(t, head, nx);
    if (nx) W(t, &AT(t, nx)->link[ix][1], pv);
}

/* ------------------------------------------------------------- allocation */

static uint64_t blob_alloc(synt_t *t, uint64_t need) {
    hdr_t *h = H(t);
    int c = class_for(need);
    if (c < 0) return 0;
    uint64_t off = h->free_head[c];
    if (off) {
        W(t, &h->free_head[c], AT(t, off)->free_next);
        return off;
    }
    uint64_t sz = blob_size((uint64_t)c);
    if (h->heap_top + sz > h->heap_off + h->heap_size) return 0;
    off = h->heap_top;
    AT(t, off)->cls = (uint64_t)c; /* beyond heap_top: unreachable until heap_top moves */
    AT(t, off)->type = 0;
    W(t, &h->heap_top, off + sz);
    return off;
}

static void blob_free(synt_t *t, uint64_t off) {
    hdr_t *h = H(t);
    entry_t *e = AT(t, off);
    W(t, &e->type, 0);
    W(t, &e->ver, 0); /* I9: a cached (offset, ver) stops matching here */
    W(t, &e->free_next, h->free_head[e->cls]);
    W(t, &h->free_head[e->cls], off);
}

/* ---------------------------------------------------------------- journal */

static void journal_append(synt_t *t, uint32_t kind, entry_t *e, uint32_t reason,
                           uint32_t reason_node) {
    hdr_t *h = H(t);
    uint64_t size = h->journal_size, mask = size - 1;
    uint8_t *ring = t->base + h->journal_off;
    uint64_t len = ALIGN8(sizeof(synt_jrec_t) + e->keylen + e->metalen);
    /* after the records this operation already wrote, if any */
    uint64_t head = h->j_pending ? h->j_pending : h->j_head, phys = head & mask, pad = 0;
    if (size - phys < len) pad = size - phys; /* records never wrap */
    uint64_t new_head = head + pad + len;
    if (new_head > size && new_head - size > h->j_min_valid)
        __atomic_store_n(&h->j_min_valid, new_head - size, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* readers see the raise before the overwrite */
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
    }
    W(t, &h->j_seq, h->j_seq + 1);
    synt_jrec_t *r = (synt_jrec_t *)(ring + phys);
    r->seq = h->j_seq;
    r->reclen = (uint32_t)len;
    r->kind = (uint16_t)kind;
    r->reason = (uint16_t)reason;
    r->node = (uint32_t)e->node;
    r->reason_node = reason_node;
    r->pid = e->pid;
    r->start = e->start;
    r->time_ns = e->time_ns;
    r->keylen = (uint32_t)e->keylen;
    r->metalen = (uint32_t)e->metalen;
    memcpy((uint8_t *)(r + 1), e->data, e->keylen + e->metalen);
    h->j_pending = new_head; /* published by op_commit, or by repair after the commit */
}

uint64_t synt_journal_head(synt_t *t) { return __atomic_load_n(&H(t)->j_head, __ATOMIC_ACQUIRE); }

int64_t synt_journal_read(synt_t *t, uint64_t *cursor, uint8_t *buf, uint64_t cap,
                          uint32_t max_records) {
    hdr_t *h = H(t);
    uint64_t size = LD(h->journal_size), mask = size - 1;
    uint8_t *ring = t->base + LD(h->journal_off);
    uint64_t pos = *cursor, used = 0;
    int64_t n = 0;
    if (pos < __atomic_load_n(&h->j_min_valid, __ATOMIC_ACQUIRE)) {
        *cursor = synt_journal_head(t);
        return SYNT_EOVERRUN;
    }
    while (n < (int64_t)max_records) {
        uint64_t head = __atomic_load_n(&h->j_head, __ATOMIC_ACQUIRE);
        if (pos >= head) break;
        if (size - (pos & mask) < sizeof(synt_jrec_t)) {
            pos += size - (pos & mask); /* too short for any record: the writer wrapped */
            continue;
        }
        synt_jrec_t r;
        memcpy(&r, ring + (pos & mask), sizeof(r));
        uint64_t len = r.reclen;
        if (len < 8 || len > size || (pos & mask) + len > size || (len & 7)) goto overrun_check;
        if (r.kind != SYNT_J_PAD) {
            if (len < sizeof(r) || sizeof(r) + (uint64_t)r.keylen + r.metalen > len)
                goto overrun_check;
            if (used + len > cap) {
                if (n == 0) return SYNT_EBUFSMALL;
                break;
            }
            memcpy(buf + used, ring + (pos & mask), len);
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (pos < __atomic_load_n(&h->j_min_valid, __ATOMIC_ACQUIRE)) goto overrun;
        if (r.kind != SYNT_J_PAD) { used += len; n++; }
        pos += len;
        continue;
    overrun_check:
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (pos < __atomic_load_n(&h->j_min_valid, __ATOMIC_ACQUIRE)) goto overrun;
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

int synt_nnodes(synt_t *t) { return (int)__atomic_load_n(&H(t)->nnodes, __ATOMIC_ACQUIRE); }

int synt_node_name(synt_t *t, uint32_t id, char *buf, uint32_t cap) {
    hdr_t *h = H(t);
    if (id >= (uint32_t)synt_nnodes(t)) return SYNT_ENOTFOUND;
    uint64_t len = h->nodes[id].len; /* names never change once published */
    if (len > cap) return SYNT_EBUFSMALL;
    memcpy(buf, h->nodes[id].name, len);
    return (int)len;
}

int synt_node_id(synt_t *t, const char *name, uint32_t len, int create) {
    hdr_t *h = H(t);
    if (len == 0 || len > SYNT_MAX_NODE_NAME) return SYNT_ETOOBIG;
    int n = synt_nnodes(t);
    for (int i = 0; i < n; i++)
        if (h->nodes[i].len == len && memcmp(h->nodes[i].name, name, len) == 0) return i;
    if (!create) return SYNT_ENOTFOUND;
    if (lock(t)) return SYNT_ELOCK;
    n = (int)h->nnodes;
    int id = SYNT_ENOTFOUND;
    for (int i = 0; i < n; i++)
        if (h->nodes[i].len == len && memcmp(h->nodes[i].name, name, len) == 0) id = i;
    if (id < 0) {
        if (n >= SYNT_MAX_NODES) { unlock(t); return SYNT_EFULL; }
        /* the slot is unreachable until nnodes covers it */
        memset(&h->nodes[n], 0, sizeof(node_t));
        memcpy(h->nodes[n].name, name, len);
        h->nodes[n].len = len;
        op_begin(t);
        W(t, &h->nnodes, (uint64_t)n + 1);
        op_commit(t);
        id = n;
    }
    unlock(t);
    return id;
}

/* ---------------------------------------------------------- finding (locked) */

static inline int key_eq(entry_t *e, uint32_t type, const uint8_t *key, uint32_t keylen) {
    return e->type == type && e->keylen == keylen && memcmp(e->data, key, keylen) == 0;
}

static uint64_t find_reg(synt_t *t, const uint8_t *key, uint32_t keylen, uint64_t hk) {
    for (uint64_t o = *bucket(t, IX_KEY, hk); o; o = AT(t, o)->link[IX_KEY][0])
        if (AT(t, o)->hkey == hk && key_eq(AT(t, o), SYNT_REG, key, keylen)) return o;
    return 0;
}

static uint64_t find_pg(synt_t *t, const uint8_t *key, uint32_t keylen, uint64_t hk,
                        uint64_t node, int64_t pid) {
    for (uint64_t o = *bucket(t, IX_KP, hash_kp(hk, node, pid)); o; o = AT(t, o)->link[IX_KP][0]) {
        entry_t *e = AT(t, o);
        if (e->hkey == hk && e->node == node && e->pid == pid && key_eq(e, SYNT_PG, key, keylen))
            return o;
    }
    return 0;
}

static void fill_info(entry_t *e, synt_info_t *out) {
    if (!out) return;
    out->node = (uint32_t)e->node;
    out->type = (uint32_t)e->type;
    out->pid = e->pid;
    out->start = e->start;
    out->time_ns = e->time_ns;
    out->ver = e->ver;
    out->keylen = (uint32_t)e->keylen;
    out->metalen = (uint32_t)e->metalen;
}

/* ------------------------------------------------------- link and unlink */

static uint64_t *node_head(synt_t *t, uint64_t node) { return &H(t)->nodes[node].head; }

static void link_entry(synt_t *t, uint64_t off) {
    hdr_t *h = H(t);
    entry_t *e = AT(t, off);
    list_push(t, IX_KEY, bucket(t, IX_KEY, e->hkey), off);
    list_push(t, IX_PID, bucket(t, IX_PID, hash_pid(e->node, e->pid)), off);
    if (e->type == SYNT_PG) list_push(t, IX_KP, bucket(t, IX_KP, hash_kp(e->hkey, e->node, e->pid)), off);
    else { e->link[IX_KP][0] = 0; e->link[IX_KP][1] = 0; }
    list_push(t, IX_NODE, node_head(t, e->node), off);
    W(t, &h->count, h->count + 1);
    if (e->type == SYNT_REG) {
        W(t, &h->reg_count, h->reg_count + 1);
        W(t, &h->nodes[e->node].reg_count, h->nodes[e->node].reg_count + 1);
    } else {
        W(t, &h->pg_count, h->pg_count + 1);
        W(t, &h->nodes[e->node].pg_count, h->nodes[e->node].pg_count + 1);
    }
}

static void unlink_entry(synt_t *t, uint64_t off) {
    hdr_t *h = H(t);
    entry_t *e = AT(t, off);
    list_unlink(t, IX_KEY, bucket(t, IX_KEY, e->hkey), off);
    list_unlink(t, IX_PID, bucket(t, IX_PID, hash_pid(e->node, e->pid)), off);
    if (e->type == SYNT_PG) list_unlink(t, IX_KP, bucket(t, IX_KP, hash_kp(e->hkey, e->node, e->pid)), off);
    list_unlink(t, IX_NODE, node_head(t, e->node), off);
    W(t, &h->count, h->count - 1);
    if (e->type == SYNT_REG) {
        W(t, &h->reg_count, h->reg_count - 1);
        W(t, &h->nodes[e->node].reg_count, h->nodes[e->node].reg_count - 1);
    } else {
        W(t, &h->pg_count, h->pg_count - 1);
        W(t, &h->nodes[e->node].pg_count, h->nodes[e->node].pg_count - 1);
    }
}

/* A filled, unlinked entry in a fresh blob; 0 when there is no room. */
static uint64_t make_entry(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen,
                           uint64_t hk, uint32_t node, int64_t pid, uint64_t start,
                           int64_t time_ns, const uint8_t *meta, uint32_t metalen) {
    hdr_t *h = H(t);
    uint64_t off = blob_alloc(t, sizeof(entry_t) + keylen + metalen);
    if (!off) return 0;
    entry_t *e = AT(t, off);
    /* type is logged: a rolled-back blob goes back on its free list marked free.
     * The rest is unreachable until linked: plain stores (word 0 and cls stay). */
    W(t, &e->type, type);
    e->hkey = hk;
    e->node = node;
    e->pid = pid;
    e->start = start;
    e->time_ns = time_ns;
    W(t, &e->ver, h->next_ver); /* logged: a rolled-back blob keeps ver 0 (I9) */
    e->keylen = keylen;
    e->metalen = metalen;
    memcpy(e->data, key, keylen);
    if (metalen) memcpy(e->data + keylen, meta, metalen);
    W(t, &h->next_ver, h->next_ver + 1);
    return off;
}

static void remove_entry(synt_t *t, uint64_t off, uint32_t kind, uint32_t reason,
                         uint32_t reason_node) {
    unlink_entry(t, off);
    journal_append(t, kind, AT(t, off), reason, reason_node);
    blob_free(t, off);
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
    uint64_t head = h->w_head;
    pidpair_t *r = &h->w_ring[head & (WRING - 1)];
    W(t, (uint64_t *)&r->pid, (uint64_t)pid);
    W(t, &r->start, start);
    W(t, (uint64_t *)&seen->pid, (uint64_t)pid);
    W(t, &seen->start, start);
    __atomic_thread_fence(__ATOMIC_RELEASE); /* the pair before the head that publishes it */
    W(t, &h->w_head, head + 1);
}

uint64_t synt_watch_reset(synt_t *t) {
    if (lock(t)) return 0;
    hdr_t *h = H(t);
    /* Plain stores, no undo log: only writers read the filter, under the mutex, and a filter
     * left half cleared by a caller that died here only announces more than it must. */
    memset(h->w_seen, 0, sizeof(h->w_seen));
    uint64_t head = h->w_head;
    unlock(t);
    return head;
}

uint64_t synt_watch_head(synt_t *t) { return __atomic_load_n(&H(t)->w_head, __ATOMIC_ACQUIRE); }

int64_t synt_watch_read(synt_t *t, uint64_t *cursor, int64_t *pids, uint64_t *starts, uint32_t cap) {
    hdr_t *h = H(t);
    uint64_t pos = *cursor;
    uint64_t head = __atomic_load_n(&h->w_head, __ATOMIC_ACQUIRE);
    if (head - pos > WRING || pos > head) goto overrun;
    int64_t n = 0;
    for (; pos < head && n < (int64_t)cap; pos++, n++) {
        pids[n] = LD(h->w_ring[pos & (WRING - 1)].pid);
        starts[n] = LD(h->w_ring[pos & (WRING - 1)].start);
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    /* pairs at positions the writer has lapped since were torn */
    if (__atomic_load_n(&h->w_head, __ATOMIC_ACQUIRE) - *cursor > WRING) goto overrun;
    *cursor = pos;
    return n;
overrun:
    *cursor = __atomic_load_n(&h->w_head, __ATOMIC_ACQUIRE);
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
    return node < (uint32_t)synt_nnodes(t);
}

int synt_put(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, uint32_t node,
             int64_t pid, uint64_t start, int64_t time_ns, const uint8_t *meta, uint32_t metalen,
             uint32_t flags, uint64_t expect_ver, uint32_t reason, uint32_t reason_node,
             synt_info_t *out) {
    if (!args_ok(t, type, keylen, node, metalen)) return SYNT_ETOOBIG;
    hdr_t *h = H(t);
    uint64_t hk = hash_key(type, key, keylen);
    if (lock(t)) return SYNT_ELOCK;
    if (LD(h->flags) & SYNT_FLAG_RETIRED) { unlock(t); return SYNT_ERETIRED; }
    int rc;
    uint64_t old = type == SYNT_REG ? find_reg(t, key, keylen, hk) : find_pg(t, key, keylen, hk, node, pid);
    entry_t *o = old ? AT(t, old) : NULL;
    int same = o && o->node == node && o->pid == pid && o->start == start;
    if ((flags & SYNT_F_EXPECT_VER) && (!o || !same || o->ver != expect_ver)) {
        if (o) fill_info(o, out);
        rc = o ? SYNT_EMISMATCH : SYNT_ENOTFOUND;
        goto done;
    }
    if (o && !same && type == SYNT_REG && !(flags & SYNT_F_FORCE)) {
        fill_info(o, out);
        rc = SYNT_ETAKEN;
        goto done;
    }
    if (o && same && o->metalen == metalen && memcmp(o->data + o->keylen, meta, metalen) == 0 &&
        !(flags & SYNT_F_FORCE)) {
        fill_info(o, out);
        rc = SYNT_UNCHANGED;
        goto done;
    }
    if (!o && h->count >= h->capacity) { rc = SYNT_EFULL; goto done; }
    op_begin(t);
    uint64_t off = make_entry(t, type, key, keylen, hk, node, pid, start, time_ns, meta, metalen);
    if (!off) {
        rollback(t); /* the allocator may have logged nothing, or a free-list pop */
        op_commit(t);
        rc = SYNT_EFULL;
        goto done;
    }
    if (o && !same) {
        /* forced takeover of a registry name, or a group member whose pid was reused (other
         * start): the old entry goes, in the same crash-atomic operation, journaled as such */
        remove_entry(t, old, type == SYNT_REG ? SYNT_J_UNREGISTERED : SYNT_J_LEFT, reason, reason_node);
        link_entry(t, off);
        journal_append(t, type == SYNT_REG ? SYNT_J_REGISTERED : SYNT_J_JOINED, AT(t, off), reason,
                       reason_node);
        rc = SYNT_INSERTED;
    } else if (o) {
        unlink_entry(t, old);
        blob_free(t, old);
        link_entry(t, off);
        journal_append(t, type == SYNT_REG ? SYNT_J_REG_UPDATED : SYNT_J_PG_UPDATED, AT(t, off),
                       reason, reason_node);
        rc = SYNT_UPDATED;
    } else {
        link_entry(t, off);
        journal_append(t, type == SYNT_REG ? SYNT_J_REGISTERED : SYNT_J_JOINED, AT(t, off),
                       reason, reason_node);
        rc = SYNT_INSERTED;
    }
    if (node == 0) announce(t, pid, start);
    op_commit(t);
    fill_info(AT(t, off), out);
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
    if (lock(t)) return SYNT_ELOCK;
    if (LD(h->flags) & SYNT_FLAG_RETIRED) { unlock(t); return SYNT_ERETIRED; }
    int rc = 0;
    uint64_t off = type == SYNT_REG ? find_reg(t, key, keylen, hk) : find_pg(t, key, keylen, hk, node, pid);
    if (!off) { rc = SYNT_ENOTFOUND; goto done; }
    fill_info(AT(t, off), out);
    if (type == SYNT_REG && (((flags & SYNT_F_MATCH_PID) &&
                              (AT(t, off)->node != node || AT(t, off)->pid != pid)) ||
                             ((flags & SYNT_F_MATCH_NODE) && AT(t, off)->node != node))) {
        rc = SYNT_EMISMATCH;
        goto done;
    }
    op_begin(t);
    remove_entry(t, off, type == SYNT_REG ? SYNT_J_UNREGISTERED : SYNT_J_LEFT, reason, reason_node);
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

int64_t synt_purge_pid(synt_t *t, uint32_t node, int64_t pid, uint64_t start, uint32_t reason,
                       uint32_t reason_node) {
    if (lock(t)) return SYNT_ELOCK;
    int64_t n = 0;
    uint64_t *b = bucket(t, IX_PID, hash_pid(node, pid));
    uint64_t o = *b;
    while (o) {
        entry_t *e = AT(t, o);
        uint64_t next = e->link[IX_PID][0];
        if (e->node == node && e->pid == pid && (start == 0 || e->start == start)) {
            /* one crash-atomic operation per entry */
            op_begin(t);
            remove_entry(t, o, e->type == SYNT_REG ? SYNT_J_UNREGISTERED : SYNT_J_LEFT, reason,
                         reason_node);
            op_commit(t);
            n++;
        }
        o = next;
    }
    unlock(t);
    return n;
}

int64_t synt_purge_node(synt_t *t, uint32_t node, uint32_t reason, uint32_t reason_node) {
    if (node >= (uint32_t)synt_nnodes(t)) return SYNT_ENOTFOUND;
    if (lock(t)) return SYNT_ELOCK;
    int64_t n = 0;
    uint64_t o;
    while ((o = *node_head(t, node)) != 0) {
        entry_t *e = AT(t, o);
        op_begin(t);
        remove_entry(t, o, e->type == SYNT_REG ? SYNT_J_UNREGISTERED : SYNT_J_LEFT, reason,
                     reason_node);
        op_commit(t);
        n++;
    }
    unlock(t);
    return n;
}

int synt_set_flags(synt_t *t, uint64_t flags) {
    if (lock(t)) return SYNT_ELOCK;
    op_begin(t);
    W(t, &H(t)->flags, flags);
    op_commit(t);
    unlock(t);
    return 0;
}

uint64_t synt_flags(synt_t *t) { return LD(H(t)->flags); }

int synt_repair(synt_t *t) {
    if (lock(t)) return SYNT_ELOCK;
    unlock(t);
    return 0;
}

/* ------------------------------------------------------- lock-free reads */

static inline uint64_t rd_begin(synt_t *t, int *busy) {
    hdr_t *h = H(t);
    for (uint32_t i = 0; i < SPIN_LIMIT; i++) {
        uint64_t s = __atomic_load_n(&h->seq, __ATOMIC_ACQUIRE);
        if (!(s & 1)) return s;
        CPU_RELAX();
    }
    *busy = 1;
    return 0;
}

static inline int rd_changed(synt_t *t, uint64_t s) {
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return LD(H(t)->seq) != s;
}

/* Copy one entry's fixed fields with every length checked; 0 if it can't be trusted. */
static int rd_entry(synt_t *t, uint64_t off, entry_t *c) {
    if (!entry_ok(t, off)) return 0;
    memcpy(c, AT(t, off), sizeof(entry_t));
    return lens_ok(t, off, c->keylen, c->metalen, c->cls);
}

#define RETRIES_BEFORE_LOCK 64

/* One walk of the chain for synt_get: 1 found, 0 not found, -1 a link or length that
 * can't be trusted (torn read, or corruption if the table was stable meanwhile). */
static int get_walk(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, uint64_t hk,
                    uint32_t node, int64_t pid, synt_info_t *out, uint8_t *meta, uint32_t cap) {
    uint64_t cap_walk = LD(H(t)->capacity) + 1;
    int ix = type == SYNT_PG ? IX_KP : IX_KEY;
    uint64_t o = type == SYNT_PG ? LD(*bucket(t, IX_KP, hash_kp(hk, node, pid))) : LD(*bucket(t, IX_KEY, hk));
    for (uint64_t steps = 0; o; steps++) {
        entry_t c;
        if (steps > cap_walk || !rd_entry(t, o, &c)) return -1;
        if (c.hkey == hk && c.type == type && c.keylen == keylen &&
            (type != SYNT_PG || (c.node == node && c.pid == pid)) &&
            memcmp(AT(t, o)->data, key, keylen) == 0) {
            fill_info(&c, out);
            out->ver_word = (o + offsetof(entry_t, ver)) / 8;
            if (c.metalen <= cap) memcpy(meta, AT(t, o)->data + c.keylen, c.metalen);
            return 1;
        }
        o = c.link[ix][0];
    }
    return 0;
}

int synt_get(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, uint32_t node,
             int64_t pid, synt_info_t *out, uint8_t *meta, uint32_t cap) {
    uint64_t hk = hash_key(type, key, keylen);
    int r;
    for (int attempt = 0;; attempt++) {
        if (attempt >= RETRIES_BEFORE_LOCK) {
            /* a writer flat out keeps invalidating us: read once under the lock, never starve */
            if (lock(t)) return SYNT_ELOCK;
            r = get_walk(t, type, key, keylen, hk, node, pid, out, meta, cap);
            out->seq = LD(H(t)->seq);
            unlock(t);
            break;
        }
        int busy = 0;
        uint64_t s = rd_begin(t, &busy);
        if (busy) return SYNT_EBUSY;
        r = get_walk(t, type, key, keylen, hk, node, pid, out, meta, cap);
        if (rd_changed(t, s)) continue;
        out->seq = s;
        break;
    }
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
} query_t;

static inline int matches(const query_t *q, const entry_t *c, synt_t *t, uint64_t off) {
    if (q->type && c->type != q->type) return 0;
    switch (q->mode) {
    case SYNT_BY_KEY:
        if (q->node != SYNT_ALL_NODES && c->node != q->node) return 0;
        return c->hkey == q->hk && c->keylen == q->keylen &&
               memcmp(AT(t, off)->data, q->key, q->keylen) == 0;
    case SYNT_BY_PID: return c->node == q->node && c->pid == q->pid;
    default: return 1;
    }
}

static inline void put_be(uint8_t *p, uint64_t v, int nbytes) {
    for (int i = nbytes - 1; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
}

/* One collect() row as msgpack, written at buf + at if it fits: [node, pid, key?, meta?], the
 * key and meta copied as they are stored (both are msgpack already; an empty one is nil).
 * Returns the row's length. */
static uint64_t pack_row(synt_t *t, uint32_t flags, uint64_t off, const entry_t *c, uint8_t *buf,
                         uint64_t cap, uint64_t at) {
    int wk = (flags & SYNT_F_WITH_KEY) != 0, wm = (flags & SYNT_F_WITH_META) != 0;
    uint64_t kl = wk ? (c->keylen ? c->keylen : 1) : 0, ml = wm ? (c->metalen ? c->metalen : 1) : 0;
    uint64_t len = 1 + 5 + 9 + kl + ml;
    if (!buf || at + len > cap) return len;
    uint8_t *p = buf + at;
    *p++ = (uint8_t)(0x90 | (2 + wk + wm));
    *p++ = 0xce; put_be(p, c->node, 4); p += 4;
    *p++ = 0xd3; put_be(p, (uint64_t)c->pid, 8); p += 8;
    if (wk) {
        if (c->keylen) memcpy(p, AT(t, off)->data, c->keylen); else *p = 0xc0;
        p += kl;
    }
    if (wm) {
        if (c->metalen) memcpy(p, AT(t, off)->data + c->keylen, c->metalen); else *p = 0xc0;
    }
    return len;
}

/* Walk the list(s) the query selects and count matches; when `measure`, add up in
 * *used the bytes they take as records, copying those that fit into buf[0, cap).
 * Returns count, or SYNT_ECORRUPT when a torn read made the walk untrustworthy. */
static int64_t walk(synt_t *t, const query_t *q, int measure, uint8_t *buf, uint64_t cap,
                    uint64_t *used) {
    hdr_t *h = H(t);
    uint64_t limit = LD(h->capacity) + 1, steps = 0;
    int64_t n = 0;
    int ix;
    uint64_t heads[SYNT_MAX_NODES];
    int nheads = 0;
    switch (q->mode) {
    case SYNT_BY_KEY: ix = IX_KEY; heads[nheads++] = LD(*bucket(t, IX_KEY, q->hk)); break;
    case SYNT_BY_PID: ix = IX_PID; heads[nheads++] = LD(*bucket(t, IX_PID, hash_pid(q->node, q->pid))); break;
    default:
        ix = IX_NODE;
        if (q->node == SYNT_ALL_NODES) {
            int nn = synt_nnodes(t);
            if (nn > (int)SYNT_MAX_NODES) return SYNT_ECORRUPT;
            for (int i = 0; i < nn; i++) heads[nheads++] = LD(h->nodes[i].head);
        } else {
            if (q->node >= (uint32_t)synt_nnodes(t)) return 0;
            heads[nheads++] = LD(h->nodes[q->node].head);
        }
    }
    int packed = (q->flags & SYNT_F_MSGPACK) != 0;
    *used = packed ? 5 : 0; /* msgpack: an array32 header, written once the count is known */
    for (int i = 0; i < nheads; i++) {
        for (uint64_t o = heads[i]; o;) {
            entry_t c;
            if (++steps > limit || !rd_entry(t, o, &c)) return SYNT_ECORRUPT;
            if (matches(q, &c, t, o)) {
                n++;
                if (measure && packed) {
                    *used += pack_row(t, q->flags, o, &c, buf, cap, *used);
                } else if (measure) {
                    uint64_t kl = (q->flags & SYNT_F_WITH_KEY) ? c.keylen : 0;
                    uint64_t ml = (q->flags & SYNT_F_WITH_META) ? c.metalen : 0;
                    uint64_t len = ALIGN8(sizeof(synt_item_t) + kl + ml);
                    if (buf && *used + len <= cap) {
                        synt_item_t *it = (synt_item_t *)(buf + *used);
                        it->node = (uint32_t)c.node;
                        it->type = (uint32_t)c.type;
                        it->pid = c.pid;
                        it->start = c.start;
                        it->time_ns = c.time_ns;
                        it->keylen = (uint32_t)kl;
                        it->metalen = (uint32_t)ml;
                        uint8_t *d = (uint8_t *)(it + 1);
                        if (kl) memcpy(d, AT(t, o)->data, kl);
                        if (ml) memcpy(d + kl, AT(t, o)->data + c.keylen, ml);
                    }
                    *used += len;
                }
            }
            o = c.link[ix][0];
        }
    }
    if (packed && buf && cap >= 5) {
        buf[0] = 0xdd;
        put_be(buf + 1, (uint64_t)n, 4);
    }
    return n;
}

static int64_t run_query(synt_t *t, const query_t *q, uint8_t *buf, uint64_t cap,
                         uint64_t *needed) {
    for (int attempt = 0;; attempt++) {
        int locked = attempt >= RETRIES_BEFORE_LOCK; /* a writer flat out: stop retrying */
        uint64_t s = 0, used = 0;
        if (locked) {
            if (lock(t)) return SYNT_ELOCK;
        } else {
            int busy = 0;
            s = rd_begin(t, &busy);
            if (busy) return SYNT_EBUSY;
        }
        int64_t n = walk(t, q, needed != NULL || buf != NULL, buf, cap, &used);
        if (locked) unlock(t);
        else if (rd_changed(t, s)) continue;
        if (n < 0) return n;
        if (needed) *needed = used;
        if (buf && used > cap) return SYNT_EBUFSMALL;
        return n;
    }
}

int64_t synt_collect(synt_t *t, uint32_t mode, uint32_t type, const uint8_t *key,
                     uint32_t keylen, uint32_t node, int64_t pid, uint32_t flags, uint8_t *buf,
                     uint64_t cap, uint64_t *needed) {
    if (keylen > SYNT_MAX_KEY) return SYNT_ETOOBIG;
    query_t q = {mode, type, keylen, node, flags, pid, key, mode == SYNT_BY_KEY ? hash_key(type, key, keylen) : 0};
    return run_query(t, &q, buf, cap, needed);
}

int64_t synt_count(synt_t *t, uint32_t mode, uint32_t type, const uint8_t *key, uint32_t keylen,
                   uint32_t node, int64_t pid) {
    hdr_t *h = H(t);
    if (mode == SYNT_BY_NODE && (type == SYNT_REG || type == SYNT_PG)) {
        /* counters answer without a walk; a torn pair of loads is harmless for a count */
        if (node == SYNT_ALL_NODES) return (int64_t)(type == SYNT_REG ? LD(h->reg_count) : LD(h->pg_count));
        if (node >= (uint32_t)synt_nnodes(t)) return 0;
        return (int64_t)(type == SYNT_REG ? LD(h->nodes[node].reg_count) : LD(h->nodes[node].pg_count));
    }
    if (keylen > SYNT_MAX_KEY) return SYNT_ETOOBIG;
    query_t q = {mode, type, keylen, node, 0, pid, key, mode == SYNT_BY_KEY ? hash_key(type, key, keylen) : 0};
    return run_query(t, &q, NULL, 0, NULL);
}

int synt_stats(synt_t *t, synt_stats_t *out) {
    hdr_t *h = H(t);
    out->capacity = LD(h->capacity);
    out->count = LD(h->count);
    out->reg_count = LD(h->reg_count);
    out->pg_count = LD(h->pg_count);
    out->heap_size = LD(h->heap_size);
    out->heap_used = LD(h->heap_top) - LD(h->heap_off);
    out->nnodes = LD(h->nnodes);
    out->journal_size = LD(h->journal_size);
    out->journal_head = synt_journal_head(t);
    out->seq = LD(h->seq);
    out->flags = LD(h->flags);
    return 0;
}

/* ------------------------------------------------------------------ checker */

#define FAIL(...) do { snprintf(err, cap, __VA_ARGS__); rc = SYNT_ECORRUPT; goto out; } while (0)

/* Is `off` on the list starting at head (following link ix), within `limit` steps? */
static int on_list(synt_t *t, int ix, uint64_t head, uint64_t off, uint64_t limit) {
    uint64_t prev = 0;
    for (uint64_t o = head, s = 0; o && s <= limit; o = AT(t, o)->link[ix][0], s++) {
        if (!entry_ok(t, o)) return -2;
        if (AT(t, o)->link[ix][1] != prev) return -1;
        if (o == off) return 1;
        prev = o;
    }
    return 0;
}

int synt_check(synt_t *t, char *err, uint32_t cap) {
    hdr_t *h = H(t);
    int rc = 0;
    if (cap) err[0] = 0;
    if (lock(t)) { snprintf(err, cap, "mutex unusable"); return SYNT_ELOCK; }
    uint64_t limit = h->capacity + 1;
    /* I1 */
    if (h->magic != MAGIC || h->version != VERSION) FAIL("I1 bad magic/version");
    if (h->seq & 1) FAIL("I1 seq odd while unlocked");
    if (h->undo_n != 0 || h->j_pending != 0) FAIL("I1 undo_n=%llu j_pending=%llu", (unsigned long long)h->undo_n, (unsigned long long)h->j_pending);
    if (h->nnodes == 0 || h->nnodes > SYNT_MAX_NODES) FAIL("I7 nnodes=%llu", (unsigned long long)h->nnodes);
    /* I8 */
    if (h->j_min_valid > h->j_head || h->j_head - h->j_min_valid > h->journal_size)
        FAIL("I8 journal cursors head=%llu min_valid=%llu", (unsigned long long)h->j_head, (unsigned long long)h->j_min_valid);
    if (h->heap_top < h->heap_off || h->heap_top > h->heap_off + h->heap_size) FAIL("I2 heap_top out of range");
    /* I3: free lists */
    uint64_t nfree = 0;
    for (uint32_t c = 0; c < NCLASSES; c++) {
        uint64_t s = 0;
        for (uint64_t o = h->free_head[c]; o; o = AT(t, o)->free_next) {
            if (!entry_ok(t, o) || o >= h->heap_top) FAIL("I3 free list %u has bad offset %llu", c, (unsigned long long)o);
            if (AT(t, o)->cls != c || AT(t, o)->type != 0) FAIL("I3 free blob %llu class/type wrong", (unsigned long long)o);
            if (++s > (h->heap_size / BLOB_MIN)) FAIL("I3 free list %u has a cycle", c);
            nfree++;
        }
    }
    /* I2, I4, I5, I6 over every blob */
    uint64_t live = 0, reg = 0, pg = 0, freeseen = 0;
    uint64_t nreg[SYNT_MAX_NODES] = {0}, npg[SYNT_MAX_NODES] = {0};
    for (uint64_t o = h->heap_off; o < h->heap_top;) {
        entry_t *e = AT(t, o);
        if (e->cls >= NCLASSES || o + blob_size(e->cls) > h->heap_top) FAIL("I2 blob %llu bad class", (unsigned long long)o);
        if (e->type == 0) {
            if (e->ver != 0) FAIL("I9 free blob %llu has ver %llu", (unsigned long long)o, (unsigned long long)e->ver);
            freeseen++; o += blob_size(e->cls); continue;
        }
        if (e->ver == 0 || e->ver >= h->next_ver) FAIL("I9 entry %llu ver %llu (next %llu)", (unsigned long long)o, (unsigned long long)e->ver, (unsigned long long)h->next_ver);
        if (e->type != SYNT_REG && e->type != SYNT_PG) FAIL("I3 blob %llu type %llu", (unsigned long long)o, (unsigned long long)e->type);
        if (!lens_ok(t, o, e->keylen, e->metalen, e->cls)) FAIL("I5 entry %llu lengths", (unsigned long long)o);
        if (e->node >= h->nnodes) FAIL("I7 entry %llu node %llu", (unsigned long long)o, (unsigned long long)e->node);
        if (e->hkey != hash_key((uint32_t)e->type, e->data, (uint32_t)e->keylen)) FAIL("I4 entry %llu stale hash", (unsigned long long)o);
        int r;
        if ((r = on_list(t, IX_KEY, *bucket(t, IX_KEY, e->hkey), o, limit)) != 1) FAIL("I4 entry %llu key chain (%d)", (unsigned long long)o, r);
        if ((r = on_list(t, IX_PID, *bucket(t, IX_PID, hash_pid(e->node, e->pid)), o, limit)) != 1) FAIL("I4 entry %llu pid chain (%d)", (unsigned long long)o, r);
        if (e->type == SYNT_PG) {
            if ((r = on_list(t, IX_KP, *bucket(t, IX_KP, hash_kp(e->hkey, e->node, e->pid)), o, limit)) != 1) FAIL("I4 entry %llu key-pid chain (%d)", (unsigned long long)o, r);
            if (find_pg(t, e->data, (uint32_t)e->keylen, e->hkey, e->node, e->pid) != o) FAIL("I6 duplicate membership at %llu", (unsigned long long)o);
            pg++; npg[e->node]++;
        } else {
            if (find_reg(t, e->data, (uint32_t)e->keylen, e->hkey) != o) FAIL("I6 duplicate name at %llu", (unsigned long long)o);
            reg++; nreg[e->node]++;
        }
        if ((r = on_list(t, IX_NODE, h->nodes[e->node].head, o, limit)) != 1) FAIL("I4 entry %llu node list (%d)", (unsigned long long)o, r);
        live++;
        o += blob_size(e->cls);
    }
    if (freeseen != nfree) FAIL("I3 %llu free blobs but %llu on free lists", (unsigned long long)freeseen, (unsigned long long)nfree);
    /* I7 */
    if (live != h->count || reg != h->reg_count || pg != h->pg_count)
        FAIL("I7 counters count=%llu/%llu reg=%llu/%llu pg=%llu/%llu", (unsigned long long)h->count, (unsigned long long)live,
             (unsigned long long)h->reg_count, (unsigned long long)reg, (unsigned long long)h->pg_count, (unsigned long long)pg);
    if (h->count > h->capacity) FAIL("I7 count over capacity");
    for (uint64_t n = 0; n < h->nnodes; n++) {
        if (h->nodes[n].reg_count != nreg[n] || h->nodes[n].pg_count != npg[n]) FAIL("I7 node %llu counters", (unsigned long long)n);
        uint64_t s = 0;
        for (uint64_t o = h->nodes[n].head; o; o = AT(t, o)->link[IX_NODE][0])
            if (!entry_ok(t, o) || ++s > limit || AT(t, o)->node != n) FAIL("I4 node %llu list holds a stranger", (unsigned long long)n);
        if (s != nreg[n] + npg[n]) FAIL("I4 node %llu list length %llu", (unsigned long long)n, (unsigned long long)s);
    }
    /* every bucket chain holds only live entries of that bucket */
    for (int ix = 0; ix < 3; ix++) {
        uint64_t total = 0;
        for (uint64_t b = 0; b < h->nbuckets; b++) {
            uint64_t *bp = (uint64_t *)(t->base + h->buckets_off) + (uint64_t)ix * h->nbuckets + b;
            for (uint64_t o = *bp; o; o = AT(t, o)->link[ix][0]) {
                if (!entry_ok(t, o) || AT(t, o)->type == 0) FAIL("I4 index %d bucket %llu holds a free or bad blob", ix, (unsigned long long)b);
                if (++total > limit) FAIL("I4 index %d has a cycle", ix);
            }
        }
        uint64_t want = ix == IX_KP ? pg : live;
        if (total != want) FAIL("I4 index %d holds %llu entries, want %llu", ix, (unsigned long long)total, (unsigned long long)want);
    }
out:
    unlock(t);
    return rc;
}

/* The segment's layout: one declaration, read by every unit of the engine.
 *
 *   [0, HDR)       hdr_t: magic, version, geometry, robust mutex, seqlock, allocator,
 *                  counters, node table, journal and announce-ring cursors, undo log
 *   buckets        3 arrays of nbuckets uint32 chunk indices (0 = empty):
 *                  IX_KEY by (type, key), IX_PID by (node, pid), IX_KP by (type, key, node, pid)
 *   vers           nchunks + 1 uint64 words: vers[i] is chunk i's ver when it is a head, else 0.
 *                  Dense, so that the one word a cached lookup checks (see I9) stays in the CPU's
 *                  caches, where a word in each entry's own chunk would be a miss at random
 *   journal        a byte ring of journal_size bytes (a power of two)
 *   announce ring  lives in the header (WRING records of 16 bytes)
 *   heap           nchunks chunks of SYNT_CHUNK bytes; chunk i (1-based: 0 is "none") is at
 *                  heap_off + (i - 1) * SYNT_CHUNK
 *
 * A chunk is a head (an entry's 64 bytes of fields, then its first INLINE bytes of key + meta), a data chunk
 * (the next DATA_BYTES of them) or free. Word 0 of every chunk: the low 32 bits link the next
 * chunk of its chain (the entry's data chunks, or the free list), the high 32 bits hold the type
 * (REG or PG on a head; 0 on data and free chunks). A chunk's ver lives in vers[], never among
 * data bytes, so a stale (word, ver) can't match what a user wrote (I9).
 *
 * Every field is distrusted by readers: an index is checked against the local geometry
 * (synt_t, filled by synt_open) before it is followed, a length against its maximum, a chain
 * walk is bounded. Multi-byte words are little-endian (x86-64, arm64).
 */
#ifndef SYN_MP_LAYOUT_H
#define SYN_MP_LAYOUT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "table.h"

#define MAGIC 0x3142545053594e53ULL /* "SNYSPTB1" little-endian */
#define VERSION 6u  /* 2: ver zeroed on free; 3: the announce ring; 4: chunks, u32 links, overlay
                       * reads; 5: vers[] apart from the chunks; 6: 64-byte heads, 112-byte chunks */
#define UNDO_MAX 512u
#define NIDX 4
enum { IX_KEY = 0, IX_PID = 1, IX_KP = 2, IX_NODE = 3 };
#define WRING 4096u   /* announce ring records: (pid, start) of local processes that added entries */
#define WSEEN 256u    /* its filter: per hash slot, the pair last announced there */
#define JREC_ALIGN 8u

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the segment layout is little-endian"
#endif

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
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

typedef struct {
    uint64_t len;
    uint64_t reg_count;
    uint64_t pg_count;
    uint64_t head;               /* IX_NODE list: a chunk index */
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

/* A ring's cursors (ring.h): logical byte positions that only grow. */
typedef struct {
    uint64_t head;               /* bytes published */
    uint64_t min_valid;          /* oldest logical byte still intact */
    uint64_t pending;            /* the head to publish at commit (0: nothing written) */
} ring_t;

typedef struct {
    /* geometry: written once by synt_init, copied and checked by synt_open */
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
    uint64_t nchunks;
    uint64_t flags;
    uint64_t vers_off;
    uint64_t _geom_pad[2];

    pthread_mutex_t mutex;
    char _pad0[128];

    uint64_t seq;                /* odd while a writer is inside an operation */
    char _pad1[56];

    /* the lock's holder, for `syn-mp status` (plain stores: informative only) */
    int64_t holder_pid;
    uint64_t holder_since;

    /* allocator and counters (W-logged) */
    uint64_t top;                /* chunks ever carved: [1, top] */
    uint64_t free_head;          /* the free list, a chain through word 0 */
    uint64_t free_count;
    uint64_t count;
    uint64_t reg_count;
    uint64_t pg_count;
    uint64_t nnodes;
    uint64_t next_ver;           /* only grows: plain stores, never rolled back (I9) */

    /* journal */
    ring_t jr;
    uint64_t j_seq;              /* seq of the last record (W-logged) */
    uint64_t j_last;             /* logical position of the last published record */
    uint64_t j_last_pending;     /* j_last to publish with jr.pending */
    uint32_t mgr_sleeping;
    uint32_t node_gen;           /* + 1 each time a retired node id is given to another name */

    node_t nodes[SYNT_MAX_NODES];

    uint64_t undo_n;
    undo_t undo[UNDO_MAX];

    /* announce ring: what the manager reads to learn which processes to watch, instead of every
     * journal record; w_seen keeps a process that writes again and again from being announced
     * again and again (W-logged) */
    ring_t wr;
    pidpair_t w_ring[WRING];
    pidpair_t w_seen[WSEEN];
} hdr_t;

/* a head chunk: 64 bytes. The bucket chains (IX_KEY, IX_KP) are singly linked: they are a few
 * entries long, so an unlink walks its chain for the predecessor. The per-process (IX_PID) and
 * per-node (IX_NODE) lists can be long and are doubly linked. */
typedef struct {
    uint64_t w0;                 /* lo32: next chunk of the chain; hi32: type */
    uint32_t next_key;           /* IX_KEY: next */
    uint32_t next_kp;            /* IX_KP: next */
    uint64_t link_pid;           /* IX_PID: lo32 next, hi32 prev */
    uint64_t link_node;          /* IX_NODE: lo32 next, hi32 prev */
    uint32_t hkey;               /* hash of (type, key) */
    int32_t pid;                 /* an OS pid (pid_max <= 2^22); puts refuse one outside int32 */
    uint64_t start;
    int64_t time_ns;
    uint64_t lens;               /* node | keylen << 32 | metalen << 48 */
    uint8_t data[];              /* key then meta: the first INLINE bytes */
} head_t;

#define INLINE (SYNT_CHUNK - sizeof(head_t))
#define DATA_HDR 8u              /* a data chunk: word 0, then its bytes */
#define DATA_BYTES (SYNT_CHUNK - DATA_HDR)

_Static_assert(sizeof(head_t) == 64, "head layout");
_Static_assert(offsetof(head_t, next_kp) == offsetof(head_t, next_key) + 4, "the bucket links share a word");
_Static_assert(offsetof(head_t, pid) == offsetof(head_t, hkey) + 4, "hkey and pid share a word");
_Static_assert(SYNT_MAX_META < 65536 && SYNT_MAX_KEY < 65536, "lens packs 16-bit lengths");

#define H(t) ((hdr_t *)(t)->base)
#define W0_NEXT(w) ((uint32_t)(w))
#define W0_TYPE(w) ((uint32_t)((w) >> 32))
#define MK_W0(next, type) ((uint64_t)(next) | ((uint64_t)(type) << 32))
#define L_NEXT(l) ((uint32_t)(l))
#define L_PREV(l) ((uint32_t)((l) >> 32))
#define MK_L(next, prev) ((uint64_t)(next) | ((uint64_t)(prev) << 32))
#define LENS_NODE(l) ((uint32_t)(l))
#define LENS_KEY(l) ((uint32_t)(((l) >> 32) & 0xffff))
#define LENS_META(l) ((uint32_t)((l) >> 48))
#define MK_LENS(node, k, m) ((uint64_t)(node) | ((uint64_t)(k) << 32) | ((uint64_t)(m) << 48))
#define ALIGN8(x) (((x) + 7u) & ~(uint64_t)7u)

static inline uint64_t chunk_off(const synt_t *t, uint64_t idx) {
    return t->heap_off + (idx - 1) * SYNT_CHUNK;
}
static inline int chunk_ok(const synt_t *t, uint64_t idx) { return idx >= 1 && idx <= t->nchunks; }
static inline head_t *HD(const synt_t *t, uint64_t idx) { return (head_t *)(t->base + chunk_off(t, idx)); }
static inline uint64_t *CW0(const synt_t *t, uint64_t idx) { return (uint64_t *)(t->base + chunk_off(t, idx)); }
/* chunk idx's ver word (I9), in the dense vers[] */
static inline uint64_t ver_off(const synt_t *t, uint64_t idx) { return t->vers_off + 8 * idx; }
static inline uint64_t *VERW(const synt_t *t, uint64_t idx) { return (uint64_t *)(t->base + ver_off(t, idx)); }

/* chunks an entry of these lengths takes */
static inline uint64_t chunks_for(uint64_t datalen) {
    return datalen <= INLINE ? 1 : 1 + (datalen - INLINE + DATA_BYTES - 1) / DATA_BYTES;
}

/* the bucket word of index ix selected by hash h (a uint32 inside an aligned uint64) */
static inline uint64_t bucket_off(const synt_t *t, int ix, uint64_t h) {
    return t->buckets_off + ((uint64_t)ix * t->nbuckets + (h & (t->nbuckets - 1))) * 4;
}

#endif

/* syn_mp shared-memory table: the C API bound by syn_mp/_build_native.py.
 *
 * One table per scope per node, living in one POSIX shared-memory segment that
 * the caller maps (Python maps it with posix_ipc + mmap and hands us the base).
 * The layout and its invariants are specified at the top of table.c.
 *
 * Return codes: >= 0 success (see each function), < 0 one of SYNT_E*.
 */
#ifndef SYN_MP_TABLE_H
#define SYN_MP_TABLE_H

#include <stdint.h>

/* entry types */
#define SYNT_REG 1           /* registry: key = name, unique per table      */
#define SYNT_PG 2            /* process group: key = group, unique per (key, node, pid) */

/* journal kinds */
#define SYNT_J_PAD 0
#define SYNT_J_REGISTERED 1
#define SYNT_J_REG_UPDATED 2
#define SYNT_J_UNREGISTERED 3
#define SYNT_J_JOINED 4
#define SYNT_J_PG_UPDATED 5
#define SYNT_J_LEFT 6

/* put() results */
#define SYNT_INSERTED 1
#define SYNT_UPDATED 2
#define SYNT_UNCHANGED 3

/* errors */
#define SYNT_ENOTFOUND (-1)  /* no such entry                                  */
#define SYNT_ETAKEN (-2)     /* registry name held by another process          */
#define SYNT_EFULL (-3)      /* no room (entries, heap or nodes); nothing done  */
#define SYNT_EMISMATCH (-4)  /* entry changed since read / held by another pid */
#define SYNT_EBUFSMALL (-5)  /* caller's buffer too small; *needed says how much */
#define SYNT_EBUSY (-6)      /* the mutex is held past the handle's lock_wait_ns: nothing done */
#define SYNT_ECORRUPT (-7)   /* an invariant does not hold                     */
#define SYNT_ELOCK (-8)      /* the mutex is unusable                          */
#define SYNT_ETOOBIG (-9)    /* key or meta larger than the table accepts      */
#define SYNT_EOVERRUN (-10)  /* journal reader fell behind the ring; resync    */
#define SYNT_EBADLAYOUT (-11) /* not a table of this version                   */
#define SYNT_ERETIRED (-12)  /* the segment was replaced by a new one: attach again */
#define SYNT_EBADPID (-13)   /* a pid outside what an entry stores (int32)     */
#define SYNT_ENOSELF (-14)   /* a self write before synt_set_self in this process */
#define SYNT_ENOTPLAIN (-15) /* synt_put_self's meta is not plain msgpack (synt_meta_plain) */

/* put() flags */
#define SYNT_F_FORCE 1        /* registry: replace another holder (conflict resolution) */
#define SYNT_F_EXPECT_VER 2   /* only update an entry whose version is expect_ver */
/* delete() flags */
#define SYNT_F_MATCH_PID 4    /* registry: only if held by (node, pid)          */
#define SYNT_F_MATCH_NODE 32  /* registry: only if held by a process of `node`   */
/* put() and delete() flag: a success code has SYNT_WAKE set when the manager sleeps
 * (the caller may then pass out = NULL: the hot paths need nothing else from it) */
#define SYNT_F_WAKE_RC 64
#define SYNT_WAKE 0x100
/* collect() flags */
#define SYNT_F_WITH_KEY 8
#define SYNT_F_WITH_META 16
/* collect(): rows as msgpack instead of synt_item_t records: one array32 of [node, pid, key?,
 * meta?] arrays, ready for one unpack (key and meta are stored as msgpack already) */
#define SYNT_F_MSGPACK 128

/* collect()/count() modes */
#define SYNT_BY_KEY 1         /* entries of one key (a name, or a group's members), of `node` or SYNT_ALL_NODES */
#define SYNT_BY_PID 2         /* entries of one (node, pid)                     */
#define SYNT_BY_NODE 3        /* entries of one node (SYNT_ALL_NODES: every node) */
#define SYNT_ALL_NODES 0xFFFFFFFFu

#define SYNT_MAX_KEY 1024
#define SYNT_MAX_META 16384
#define SYNT_MAX_NODES 256
#define SYNT_MAX_NODE_NAME 255

/* header flag bits */
#define SYNT_FLAG_STRICT 1
#define SYNT_FLAG_RETIRED 2   /* the manager replaced this segment: writes return SYNT_ERETIRED */

/* the heap's unit: an entry is a head chunk (its fields and the first bytes of key and meta)
 * and as many data chunks as the rest takes */
#define SYNT_CHUNK 112  /* a 64-byte head and 48 bytes of key + meta: most entries take one */

typedef struct {
    uint8_t *base;
    uint64_t size;
    /* the geometry, checked by synt_open and never read from the segment again: a byte of the
     * header changed later (by a bug, or by the segment's owner when root reads it) cannot
     * make this process follow an offset outside the mapping */
    uint64_t capacity;
    uint64_t nbuckets;
    uint64_t buckets_off;
    uint64_t vers_off;
    uint64_t journal_off;
    uint64_t journal_size;
    uint64_t heap_off;
    uint64_t nchunks;
    /* writes through this handle wait at most this long for the mutex (0: as long as it takes),
     * then return SYNT_EBUSY: the manager's purges must not stall its loop behind a stopped writer */
    uint64_t lock_wait_ns;
} synt_t;

/* What a read or a write reports about one entry. */
typedef struct {
    uint32_t node;
    uint32_t type;
    int64_t pid;
    uint64_t start;     /* process start time (pid identity)            */
    int64_t time_ns;    /* registration time                              */
    uint64_t ver;       /* bumped on every change of the entry            */
    uint32_t keylen;
    uint32_t metalen;
    uint32_t wake;      /* writes: the manager sleeps, wake it            */
    uint32_t pad;
    uint64_t seq;       /* reads: the table's seqlock value the read is valid for */
    uint64_t ver_word;  /* get(): index of the entry's ver word in the segment, counted in
                         * uint64 words: while it still holds ver, the entry is unchanged */
} synt_info_t;

/* What lookup() reports: the entry, and the word of the segment (counted in uint64 words)
 * that holds `value` for as long as the answer stays true: the entry's ver when found, the
 * seqlock word when not. */
typedef struct {
    uint64_t word;
    uint64_t value;
    int64_t pid;
    uint32_t node;
    uint32_t metalen;
} synt_hit_t;

/* One record of collect(); key then meta follow, the record padded to 8. */
typedef struct {
    uint32_t node;
    uint32_t type;
    int64_t pid;
    uint64_t start;
    int64_t time_ns;
    uint32_t keylen;
    uint32_t metalen;
} synt_item_t;

/* One journal record as copied out by synt_journal_read_node(); key then meta follow. */
typedef struct {
    uint64_t seq;
    uint32_t reclen;      /* whole record, padded to 8 */
    uint16_t kind;
    uint16_t reason;
    uint32_t node;
    uint32_t reason_node;
    int64_t pid;
    uint64_t start;
    int64_t time_ns;
    uint32_t keylen;
    uint32_t metalen;
} synt_jrec_t;

typedef struct {
    uint64_t capacity;
    uint64_t count;
    uint64_t reg_count;
    uint64_t pg_count;
    uint64_t heap_size;
    uint64_t heap_used;
    uint64_t nnodes;
    uint64_t journal_size;
    uint64_t journal_head;
    uint64_t seq;
    uint64_t flags;
    uint64_t chunks;      /* the heap in chunks of SYNT_CHUNK bytes */
    uint64_t chunks_free; /* of which free: an entry needing at most this many always fits */
    int64_t lock_holder;  /* pid holding the write mutex, 0 when free */
    uint64_t lock_since;  /* CLOCK_MONOTONIC ns at which it took it (to a tick: the coarse clock) */
} synt_stats_t;

uint64_t synt_layout_size(uint64_t capacity, uint64_t heap_size, uint64_t journal_size);
int synt_init(uint8_t *base, uint64_t size, uint64_t capacity, uint64_t heap_size,
              uint64_t journal_size, const char *node, uint32_t nodelen, uint64_t flags);
int synt_open(synt_t *t, uint8_t *base, uint64_t size);

int synt_put(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, uint32_t node,
             int64_t pid, uint64_t start, int64_t time_ns, const uint8_t *meta, uint32_t metalen,
             uint32_t flags, uint64_t expect_ver, uint32_t reason, uint32_t reason_node,
             synt_info_t *out);
int synt_delete(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, uint32_t node,
                int64_t pid, uint32_t flags, uint32_t reason, uint32_t reason_node,
                synt_info_t *out);
/* The API's own writes, with the fewest arguments to convert (the hot path): put by node 0,
 * timed now (CLOCK_REALTIME), reason normal, SYNT_F_WAKE_RC, no out-struct; and delete the same. */
int synt_put_local(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, int64_t pid,
                   uint64_t start, const uint8_t *meta, uint32_t metalen);
int synt_delete_local(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, int64_t pid,
                      uint32_t flags);
/* The calling process's identity for the two writes below, set at the process's first self write;
 * pid 0 unsets it (syn_mp does on a change of node). A forked child forgets its parent's: its self
 * writes return SYNT_ENOSELF until it sets its own. */
void synt_set_self(int64_t pid, uint64_t start);
/* register() or join() by the caller itself: put_local(type, key, the self pid and start, meta), for
 * a meta that synt_meta_plain accepts (SYNT_ENOTPLAIN, nothing done, otherwise; checked after the
 * identity, before the lock). */
int synt_put_self(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, const uint8_t *meta,
                  uint32_t metalen);
/* unregister() by a process of node 0: delete_local(SYNT_REG, key) of an entry held by the caller
 * itself in strict mode (SYNT_F_MATCH_PID: SYNT_ENOSELF when unset), else by any process of node 0
 * (SYNT_F_MATCH_NODE). */
int synt_unreg_local(synt_t *t, const uint8_t *key, uint32_t keylen);
/* 1 when meta[0..len) is one msgpack object of nil, bool, int, float, str, array and map only,
 * nested at most 32 deep (csrc/plain.c): what codec's walk would leave as it is. */
int synt_meta_plain(const uint8_t *meta, uint32_t len);
int64_t synt_purge_pid(synt_t *t, uint32_t node, int64_t pid, uint64_t start, uint32_t reason,
                       uint32_t reason_node);
int64_t synt_purge_node(synt_t *t, uint32_t node, uint32_t reason, uint32_t reason_node);

int synt_get(synt_t *t, uint32_t type, const uint8_t *key, uint32_t keylen, uint32_t node,
             int64_t pid, synt_info_t *out, uint8_t *meta, uint32_t cap);
/* get() of a registry name with what a cache needs to check it later (synt_hit_t); 1 found,
 * 0 not found, < 0 as get(). */
int synt_lookup(synt_t *t, const uint8_t *key, uint32_t keylen, synt_hit_t *out, uint8_t *meta,
                uint32_t cap);
int64_t synt_collect(synt_t *t, uint32_t mode, uint32_t type, const uint8_t *key,
                     uint32_t keylen, uint32_t node, int64_t pid, uint32_t flags, uint8_t *buf,
                     uint64_t cap, uint64_t *needed);
int64_t synt_count(synt_t *t, uint32_t mode, uint32_t type, const uint8_t *key, uint32_t keylen,
                   uint32_t node, int64_t pid);

/* Rows (rows.c): collect()'s synt_item_t records (key, meta, padded to 8) as one byte string,
 * the form a snapshot travels in between nodes.
 * rows_check: how many rows, SYNT_ECORRUPT when one is malformed or runs past len.
 * put_rows: put() the rows from *pos on, as entries of `node`, at most max_rows of them; *pos
 *   moves past the rows done (returned). The offsets of rows whose put() failed (ETAKEN, EFULL,
 *   ...) go to failed[] (*nfailed of them); when failed_cap of them are in, it stops before the
 *   next failing row. SYNT_ECORRUPT at a malformed row (*pos left there).
 * rows_missing: the rows of `have` whose (type, key, pid) is in no row of `want`, copied to out;
 *   returns their count (SYNT_EBUFSMALL with *needed when out is too small). */
int64_t synt_rows_check(const uint8_t *rows, uint64_t len);
int64_t synt_put_rows(synt_t *t, const uint8_t *rows, uint64_t len, uint64_t *pos, uint32_t max_rows,
                      uint32_t node, uint32_t reason, uint32_t reason_node, uint64_t *failed,
                      uint32_t failed_cap, uint32_t *nfailed);
int64_t synt_rows_missing(const uint8_t *have, uint64_t have_len, const uint8_t *want, uint64_t want_len,
                          uint8_t *out, uint64_t cap, uint64_t *needed);

int synt_node_id(synt_t *t, const char *name, uint32_t len, int create);
int synt_node_name(synt_t *t, uint32_t id, char *buf, uint32_t cap);
/* Retire node id (not 0) once it holds no entry: its name stays readable (journal records may still
 * name it) but is no longer found, and once every id is taken synt_node_id gives a retired slot to a
 * new name (then synt_node_gen changes: drop names cached by id). SYNT_EMISMATCH if it holds entries. */
int synt_node_retire(synt_t *t, uint32_t id);
uint32_t synt_node_gen(synt_t *t);
int synt_nnodes(synt_t *t);

/* The seqlock word: unchanged since a read's info.seq means the table is unchanged since. */
const volatile uint64_t *synt_seq_ptr(synt_t *t);
/* Index of the seqlock word in the segment, counted in uint64 words. */
uint64_t synt_seq_word(synt_t *t);
/* The header's flags word (SYNT_FLAG_*), read on every write without a call. */
const volatile uint64_t *synt_flags_ptr(synt_t *t);

uint64_t synt_journal_head(synt_t *t);
/* Copy journal records from *cursor on into buf (at most cap bytes, max_records records), those of
 * one node only (their entry's node; SYNT_ALL_NODES: every record): the others are passed over, not
 * copied (a manager without event handlers needs only its own node's). */
int64_t synt_journal_read_node(synt_t *t, uint64_t *cursor, uint8_t *buf, uint64_t cap,
                               uint32_t max_records, uint32_t node);
/* The announce ring: the (pid, start) of local processes that added or updated entries, each
 * announced again only when the ring's filter no longer remembers it. watch_reset clears the
 * filter (a manager calls it when it starts following, then scans the table) and returns the
 * head to read from (< 0: a lock error); watch_read copies up to cap pairs from *cursor and
 * advances it, or returns SYNT_EOVERRUN (cursor moved to the head: reset and scan again). */
int64_t synt_watch_reset(synt_t *t);
uint64_t synt_watch_head(synt_t *t);
int64_t synt_watch_read(synt_t *t, uint64_t *cursor, int64_t *pids, uint64_t *starts, uint32_t cap);
void synt_set_sleeping(synt_t *t, uint32_t sleeping);
int synt_set_flags(synt_t *t, uint64_t flags);
uint64_t synt_flags(synt_t *t);

/* Take the mutex once, repairing a dead writer's work (blocks while a live writer holds it). */
int synt_repair(synt_t *t);
/* The same without waiting: SYNT_EBUSY when a live writer holds the mutex. */
int synt_try_repair(synt_t *t);
/* Byte offset of a header field by name, for tests and tools (the names are those of hdr_t in
 * csrc/layout.h: seq, count, j_head, free_head, ...); -1 for a name it does not know. */
int64_t synt_field_offset(const char *name);
int synt_check(synt_t *t, char *err, uint32_t cap);
int synt_stats(synt_t *t, synt_stats_t *out);
/* chunks an entry with key + meta of this many bytes takes */
uint64_t synt_chunks_for(uint64_t datalen);

/* test hooks: crash-safety tests make a writer (or a repairer: repair's own stores count too)
 * SIGKILL itself after n more logged stores; stop-at makes it SIGSTOP itself there instead, so
 * a test can hold it inside its critical section */
void synt_test_stop_after(int64_t n);
void synt_test_sigstop_after(int64_t n);

#endif

/* Rows: a node's entries as one byte string, checked, compared and written in bulk.
 *
 * A row is a synt_item_t record followed by its key then its meta, padded to 8 bytes: what
 * synt_collect() writes without SYNT_F_MSGPACK. A snapshot travels between nodes as such rows
 * (little-endian, like the segment: layout.h), so that neither side handles its entries one by
 * one in Python: the server copies them out of its table in one call, the client checks them in
 * one call and writes them in slices (synt_put_rows), each slice one C call.
 *
 * Rows come from another node: every length is checked (synt_rows_check) before a byte of a
 * row is used, and the functions that take rows check again as they walk (a caller may skip
 * the check; they never read past len).
 *
 * Only the public API of table.h is used here.
 */
#include "table.h"

#include <stdlib.h>
#include <string.h>

#define ROW_ALIGN(x) (((x) + 7u) & ~(uint64_t)7u)

/* The length of the row at `at`, 0 when it is malformed or runs past len. */
static uint64_t row_len(const uint8_t *rows, uint64_t len, uint64_t at) {
    if (at > len || len - at < sizeof(synt_item_t)) return 0;
    synt_item_t it;
    memcpy(&it, rows + at, sizeof(it));
    if ((it.type != SYNT_REG && it.type != SYNT_PG) || it.keylen > SYNT_MAX_KEY ||
        it.metalen > SYNT_MAX_META)
        return 0;
    uint64_t n = ROW_ALIGN(sizeof(synt_item_t) + (uint64_t)it.keylen + it.metalen);
    return n <= len - at ? n : 0;
}

int64_t synt_rows_check(const uint8_t *rows, uint64_t len) {
    int64_t n = 0;
    for (uint64_t at = 0; at < len; n++) {
        uint64_t rl = row_len(rows, len, at);
        if (!rl) return SYNT_ECORRUPT;
        at += rl;
    }
    return n;
}

int64_t synt_put_rows(synt_t *t, const uint8_t *rows, uint64_t len, uint64_t *pos, uint32_t max_rows,
                      uint32_t node, uint32_t reason, uint32_t reason_node, uint64_t *failed,
                      uint32_t failed_cap, uint32_t *nfailed) {
    uint64_t at = *pos;
    int64_t n = 0;
    *nfailed = 0;
    while (at < len && n < (int64_t)max_rows) {
        uint64_t rl = row_len(rows, len, at);
        if (!rl) { *pos = at; return SYNT_ECORRUPT; }
        synt_item_t it;
        memcpy(&it, rows + at, sizeof(it));
        const uint8_t *key = rows + at + sizeof(synt_item_t);
        int rc = synt_put(t, it.type, key, it.keylen, node, it.pid, it.start, it.time_ns, key + it.keylen,
                          it.metalen, 0, 0, reason, reason_node, NULL);
        if (rc < 0) {
            /* a conflict (ETAKEN), no room, a retired segment...: the caller handles that row */
            if (*nfailed == failed_cap) break; /* this row again in the next call */
            failed[(*nfailed)++] = at;
        }
        at += rl;
        n++;
    }
    *pos = at;
    return n;
}

/* ---------------------------------------------------------- comparing */

/* A row's identity: (type, key, pid). */
static uint64_t row_hash(const synt_item_t *it, const uint8_t *key) {
    uint64_t h = 0xcbf29ce484222325ULL ^ it->type;
    for (uint32_t i = 0; i < it->keylen; i++) { h ^= key[i]; h *= 0x100000001b3ULL; }
    h ^= (uint64_t)it->pid;
    h *= 0x9e3779b97f4a7c15ULL;
    return h ^ (h >> 29);
}

static int same_row(const synt_item_t *a, const uint8_t *ka, const synt_item_t *b, const uint8_t *kb) {
    return a->type == b->type && a->pid == b->pid && a->keylen == b->keylen &&
           memcmp(ka, kb, a->keylen) == 0;
}

int64_t synt_rows_missing(const uint8_t *have, uint64_t have_len, const uint8_t *want, uint64_t want_len,
                          uint8_t *out, uint64_t cap, uint64_t *needed) {
    int64_t nwant = synt_rows_check(want, want_len);
    if (nwant < 0) return nwant;
    if (synt_rows_check(have, have_len) < 0) return SYNT_ECORRUPT;
    /* an open-addressing set of the wanted rows' offsets + 1 (0: empty), at most half full */
    uint64_t slots = 16;
    while (slots < 2 * (uint64_t)nwant) slots <<= 1;
    uint64_t *set = calloc(slots, sizeof(uint64_t));
    if (!set) return SYNT_EFULL;
    for (uint64_t at = 0; at < want_len; at += row_len(want, want_len, at)) {
        synt_item_t it;
        memcpy(&it, want + at, sizeof(it));
        uint64_t i = row_hash(&it, want + at + sizeof(it)) & (slots - 1);
        while (set[i]) i = (i + 1) & (slots - 1);
        set[i] = at + 1;
    }
    uint64_t used = 0;
    int64_t n = 0;
    for (uint64_t at = 0; at < have_len;) {
        uint64_t rl = row_len(have, have_len, at);
        synt_item_t it;
        memcpy(&it, have + at, sizeof(it));
        const uint8_t *k = have + at + sizeof(it);
        int found = 0;
        for (uint64_t i = row_hash(&it, k) & (slots - 1); set[i]; i = (i + 1) & (slots - 1)) {
            synt_item_t w;
            memcpy(&w, want + set[i] - 1, sizeof(w));
            if (same_row(&it, k, &w, want + set[i] - 1 + sizeof(w))) { found = 1; break; }
        }
        if (!found) {
            if (out && used + rl <= cap) memcpy(out + used, have + at, rl);
            used += rl;
            n++;
        }
        at += rl;
    }
    free(set);
    *needed = used;
    return used > cap ? SYNT_EBUFSMALL : n;
}

/* Is a meta's msgpack "plain": what Python's exact built-in scalars, lists and dicts pack as?
 *
 * register() and join() pack a meta with msgpack straight away (strict types: only exact built-in
 * types) and let synt_put_self check the bytes here, in place of codec's walk over the Python
 * objects, the larger part of a write's time. What the walk would have changed or refused is never plain,
 * so the caller falls back to the walk for it:
 *   - bin (0xc4-0xc6): bytes, and the bytearray and memoryview that msgpack packs as bin even
 *     under strict types (the walk refuses those);
 *   - ext (0xc7-0xc9, 0xd4-0xd8): a tuple is one (the walk makes it), an ExtType or a Timestamp
 *     passed in is one the walk refuses or re-encodes;
 *   - containers nested deeper than PLAIN_DEPTH (the walk refuses past codec.MAX_DEPTH = 100;
 *     deeper than 32 takes the walk, which decides);
 *   - anything malformed, truncated or followed by trailing bytes; 0xc1, never used.
 * The input is the caller's bytes: every length is checked against what is left before use. */
#include "table.h"

#define PLAIN_DEPTH 32

static uint64_t be(const uint8_t *p, unsigned n) {
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

int synt_meta_plain(const uint8_t *p, uint32_t len) {
    uint64_t left[PLAIN_DEPTH + 1]; /* objects still to read in each open container; [0]: the root */
    int d = 0;
    uint64_t i = 0;
    left[0] = 1;
    for (;;) {
        while (left[d] == 0) {
            if (d == 0) return i == len;
            d--;
        }
        left[d]--;
        if (i >= len) return 0;
        uint8_t b = p[i++];
        uint64_t skip = 0, items = 0;
        unsigned hdr = 0; /* bytes of a length or count that follow b */
        int container = 0;
        if (b <= 0x7f || b >= 0xe0) {
            /* positive or negative fixint */
        } else if (b <= 0x8f) {
            items = 2 * (uint64_t)(b & 0x0f), container = 1;
        } else if (b <= 0x9f) {
            items = b & 0x0f, container = 1;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc0: case 0xc2: case 0xc3: break;            /* nil, false, true */
            case 0xcc: case 0xd0: skip = 1; break;              /* uint8, int8 */
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xca: case 0xce: case 0xd2: skip = 4; break;   /* float32, (u)int32 */
            case 0xcb: case 0xcf: case 0xd3: skip = 8; break;   /* float64, (u)int64 */
            case 0xd9: hdr = 1; break;                          /* str 8/16/32 */
            case 0xda: hdr = 2; break;
            case 0xdb: hdr = 4; break;
            case 0xdc: hdr = 2, container = 1; break;           /* array 16/32 */
            case 0xdd: hdr = 4, container = 1; break;
            case 0xde: hdr = 2, container = 2; break;           /* map 16/32 */
            case 0xdf: hdr = 4, container = 2; break;
            default: return 0;                                  /* bin, ext, 0xc1 */
            }
        }
        if (hdr) {
            if (len - i < hdr) return 0;
            uint64_t n = be(p + i, hdr);
            i += hdr;
            if (container) items = n * (uint64_t)container;
            else skip = n;
        }
        if (len - i < skip) return 0;
        i += skip;
        if (container) {
            if (items > len - i) return 0; /* every item takes a byte at least */
            if (d == PLAIN_DEPTH) return 0;
            left[++d] = items;
        }
    }
}

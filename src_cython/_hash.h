/* Hash of a byte string, for the open-addressing string tables of the compiled passes
 * (_features.pyx: feature names; _conllu.pyx: word forms). The tables are rebuilt in every
 * process and never saved, so the hash may change.
 *
 * FNV-1a over 8-byte words rather than bytes (8x fewer dependent multiplies), then a final
 * mix so that the low bits used as the slot depend on every input bit.
 */
#ifndef FACTOREBM_HASH_H
#define FACTOREBM_HASH_H
#include <stdint.h>
#include <string.h>

static inline uint64_t febm_hash_bytes(const uint8_t* s, int64_t n)
{
    uint64_t h = 14695981039346656037ULL ^ (uint64_t)n;
    uint64_t w;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 1099511628211ULL;
    }
    if (i < n) {
        w = 0;
        memcpy(&w, s + i, (size_t)(n - i));
        h = (h ^ w) * 1099511628211ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

#endif

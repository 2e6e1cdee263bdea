/* CRC-32 of zip archives (the IEEE polynomial, bit-reflected: what zlib.crc32 computes),
 * fast enough that checking a model file's members costs less than reading them.
 *
 * zlib's table-driven CRC-32 runs at about 1.5-2.5 GB/s: a quarter of the time of loading a
 * 24 MB tagger model. With the carry-less multiply (PCLMULQDQ, every x86-64 CPU since 2010)
 * the message is folded 64 bytes at a time into four 128-bit remainders (Gopal et al., "Fast
 * CRC Computation for Generic Polynomials Using PCLMULQDQ Instruction", Intel 2009): each
 * step multiplies a remainder by x^512 mod P (split over its two 64-bit halves) and adds the
 * next 64 bytes, which leaves the CRC unchanged because only the remainder mod P matters.
 * The four are folded into one, and that last 16-byte remainder, standing for everything
 * before it, is finished with the byte-wise table, as is the tail. Without PCLMULQDQ (or off
 * x86-64) crc32_fast is the table alone and the caller prefers zlib (crc32_has_clmul() == 0).
 */
#ifndef FACTOREBM_CRC32_H
#define FACTOREBM_CRC32_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static uint32_t crc32_table[256];
static int crc32_table_ready = 0;

static void crc32_init_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc32_table[n] = c;
    }
    crc32_table_ready = 1;
}

/* The register state (not complemented) after the bytes p[:n]. */
static inline uint32_t crc32_bytes(uint32_t state, const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; i++) state = crc32_table[(state ^ p[i]) & 0xFF] ^ (state >> 8);
    return state;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

static int crc32_has_clmul(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
}

/* One fold: the remainder x times x^D mod P (k_lo and k_hi the constants for its low and high
   halves), plus the next 16 bytes. */
__attribute__((target("pclmul,sse4.1")))
static inline __m128i crc32_fold(__m128i x, __m128i k, __m128i next) {
    __m128i lo = _mm_clmulepi64_si128(x, k, 0x00);
    __m128i hi = _mm_clmulepi64_si128(x, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}

/* The register state after p[:n] from `state`, n >= 64. */
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc32_clmul(uint32_t state, const uint8_t* p, size_t n) {
    /* x^(512+32) and x^(512-32) mod P, then x^(128+32) and x^(128-32) mod P, bit-reflected
       and shifted as the reflected multiply needs (Gopal et al., the constants for P of
       CRC-32/IEEE). */
    const __m128i k512 = _mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL);
    const __m128i k128 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL);
    __m128i x0 = _mm_loadu_si128((const __m128i*)(p + 0));
    __m128i x1 = _mm_loadu_si128((const __m128i*)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i*)(p + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i*)(p + 48));
    x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)state));
    p += 64;
    n -= 64;
    while (n >= 64) {
        x0 = crc32_fold(x0, k512, _mm_loadu_si128((const __m128i*)(p + 0)));
        x1 = crc32_fold(x1, k512, _mm_loadu_si128((const __m128i*)(p + 16)));
        x2 = crc32_fold(x2, k512, _mm_loadu_si128((const __m128i*)(p + 32)));
        x3 = crc32_fold(x3, k512, _mm_loadu_si128((const __m128i*)(p + 48)));
        p += 64;
        n -= 64;
    }
    x0 = crc32_fold(x0, k128, x1);
    x0 = crc32_fold(x0, k128, x2);
    x0 = crc32_fold(x0, k128, x3);
    while (n >= 16) {
        x0 = crc32_fold(x0, k128, _mm_loadu_si128((const __m128i*)p));
        p += 16;
        n -= 16;
    }
    uint8_t last[16];
    _mm_storeu_si128((__m128i*)last, x0);
    return crc32_bytes(crc32_bytes(0, last, 16), p, n);
}
#else
static int crc32_has_clmul(void) { return 0; }
static uint32_t crc32_clmul(uint32_t state, const uint8_t* p, size_t n) {
    return crc32_bytes(state, p, n);
}
#endif

/* zlib.crc32(p[:n], crc). */
static uint32_t crc32_fast(uint32_t crc, const uint8_t* p, size_t n, int use_clmul) {
    if (!crc32_table_ready) crc32_init_table();
    uint32_t state = ~crc;
    state = use_clmul && n >= 64 ? crc32_clmul(state, p, n) : crc32_bytes(state, p, n);
    return ~state;
}
#endif

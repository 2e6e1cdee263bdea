/* FEBM_CLONES: compile a C function twice (function multiversioning), an AVX2/FMA clone chosen
 * at load time on CPUs that have it and a portable default, so that the build flags stay
 * portable (no -march) while the hot loops of the kernels are specialized.
 */
#ifndef FACTOREBM_CLONES_H
#define FACTOREBM_CLONES_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && __GNUC__ >= 12
/* ISA levels, not a CPU model: "arch=haswell" dispatches on the CPU *being* a Haswell-class
   Intel, so AMD CPUs with AVX2 and FMA got the portable clone. (ISA levels as target_clones
   names need GCC 12, PR101696.) */
#define FEBM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FEBM_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FEBM_CLONES
#endif

#endif

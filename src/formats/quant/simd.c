/* Run-time choice of the SIMD level used by the dot kernels. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "formats/quant/internal.h"

#if DS4_QUANT_X86
#include <cpuid.h>
#endif

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static bool g_have[DS4_SIMD_COUNT];
static ds4_simd g_active = DS4_SIMD_SCALAR;

#if DS4_QUANT_X86
/* clang's __builtin_cpu_supports has no "f16c"; read CPUID leaf 1 directly
 * (ECX bit 29). Every AVX2 CPU shipped so far has it, but the kernels use
 * it, so check rather than assume. */
static bool cpu_has_f16c(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    return (c >> 29) & 1u;
}
#endif

static void detect(void) {
    g_have[DS4_SIMD_SCALAR] = true;
#if DS4_QUANT_X86
    __builtin_cpu_init();
    /* __builtin_cpu_supports also checks that the OS saves the wider
     * register state (XGETBV), so a "yes" here is safe to use. */
    g_have[DS4_SIMD_AVX2] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                            cpu_has_f16c();
    g_have[DS4_SIMD_AVX512] = g_have[DS4_SIMD_AVX2] && __builtin_cpu_supports("avx512f") &&
                              __builtin_cpu_supports("avx512bw") &&
                              __builtin_cpu_supports("avx512vl") &&
                              __builtin_cpu_supports("avx512dq") &&
                              __builtin_cpu_supports("avx512vnni") &&
                              __builtin_cpu_supports("avx512vbmi") &&
                              __builtin_cpu_supports("avx512bitalg");
#endif
    ds4_simd best = DS4_SIMD_SCALAR;
    for (int l = 0; l < DS4_SIMD_COUNT; l++)
        if (g_have[l]) best = (ds4_simd)l;
    const char *env = getenv("DS4_SIMD");
    if (env && *env) {
        ds4_simd cap = best;
        for (int l = 0; l < DS4_SIMD_COUNT; l++)
            if (strcmp(env, ds4_simd_name((ds4_simd)l)) == 0) cap = (ds4_simd)l;
        if (cap < best) best = cap;
    }
    g_active = best;
}

ds4_simd ds4_simd_active(void) {
    pthread_once(&g_once, detect);
    return g_active;
}

bool ds4_simd_available(ds4_simd level) {
    pthread_once(&g_once, detect);
    return (int)level >= 0 && (int)level < DS4_SIMD_COUNT && g_have[level];
}

int ds4_simd_set(ds4_simd level) {
    if (!ds4_simd_available(level)) return -1;
    g_active = level;
    return 0;
}

const char *ds4_simd_name(ds4_simd level) {
    switch (level) {
    case DS4_SIMD_SCALAR: return "scalar";
    case DS4_SIMD_AVX2: return "avx2";
    case DS4_SIMD_AVX512: return "avx512";
    default: return "?";
    }
}

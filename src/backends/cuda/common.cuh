/* Shared pieces of the CUDA backend: error checks, weight element loads,
 * reductions and the float arithmetic that must match the CPU reference.
 *
 * The whole backend is compiled with --fmad=false (see the Makefile): the
 * C reference is built in ISO C mode, where GCC and Clang never fuse a
 * multiply and an add, so keeping nvcc from fusing makes every elementwise
 * step (RoPE, mHC mixing, SwiGLU, the QAT simulations) round exactly like
 * the CPU; only the order of long reductions differs. */
#ifndef DS4_BACKENDS_CUDA_COMMON_CUH
#define DS4_BACKENDS_CUDA_COMMON_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "formats/ggml_types.h"
#include "util/error.h"
}

/* Every CUDA call goes through CU() inside functions that return int and
 * have a ds4_error *err in scope. */
#define CU(call)                                                                                              \
    do {                                                                                                      \
        cudaError_t cu_e_ = (call);                                                                           \
        if (cu_e_ != cudaSuccess)                                                                             \
            return ds4_fail(err, "CUDA: %s (%s:%d: %s)", cudaGetErrorString(cu_e_), __FILE__, __LINE__, #call); \
    } while (0)

/* Launch helpers return the launch status so callers can CU() them. */
#define LAUNCH_STATUS() cudaGetLastError()

/* ---- launches --------------------------------------------------------------
 * Every kernel of the forward pass starts with pdl_enter() and is launched
 * with k_launch. On compute capability 9.0 and newer k_launch marks the
 * launch as a programmatic dependent one: the kernel's blocks may be put on
 * the SMs while the kernel before it in the stream is still running, and
 * they then wait in pdl_enter until that kernel has finished and its writes
 * are visible. Results are those of plain launches (every kernel waits
 * before its first load, and waits for a kernel that itself waited, so the
 * order is transitive); what goes is the gap of launch and block start-up
 * between two kernels, which is most of the time of a small decode kernel.
 * DS4_CUDA_NO_PDL=1 launches plainly. */
__device__ __forceinline__ void pdl_enter_plain() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
#ifdef DS4_CUDA_TRACE
/* Diagnostic builds (-DDS4_CUDA_TRACE): block 0 of every kernel records the
 * global timer when it starts and when its wait returns, with the source
 * line of its pdl_enter; each translation unit has its own buffer. */
typedef struct trace_rec {
    unsigned long long t0, t1;
    unsigned line, grid;
} trace_rec;
#define TRACE_CAP (1u << 20)
static __device__ trace_rec *trace_buf;
static __device__ unsigned trace_cnt;
__device__ __forceinline__ unsigned long long gtimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ void pdl_enter_traced(unsigned line) {
    bool lead = blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && threadIdx.x == 0 && threadIdx.y == 0 &&
                threadIdx.z == 0;
    unsigned long long t0 = lead ? gtimer() : 0;
    pdl_enter_plain();
    if (lead && trace_buf) {
        unsigned i = atomicAdd(&trace_cnt, 1u);
        if (i < TRACE_CAP) {
            trace_rec r = {t0, gtimer(), line, gridDim.x * gridDim.y * gridDim.z};
            trace_buf[i] = r;
        }
    }
}
#define pdl_enter() pdl_enter_traced(__LINE__)
/* A point inside a kernel (block 0; the caller picks the thread): a record
 * whose times are both now, with the mark's line. */
__device__ __forceinline__ void trace_mark_at(unsigned line) {
    if (blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && trace_buf) {
        unsigned long long t = gtimer();
        unsigned i = atomicAdd(&trace_cnt, 1u);
        if (i < TRACE_CAP) {
            trace_rec r = {t, t, line, 0};
            trace_buf[i] = r;
        }
    }
}
#define trace_mark() trace_mark_at(__LINE__)
#define DS4_TRACE_EXPORT(name)                                                              \
    extern "C" cudaError_t k_trace_bind_##name(void *b) {                                   \
        unsigned z = 0;                                                                     \
        cudaError_t e = cudaMemcpyToSymbol(trace_cnt, &z, sizeof z);                        \
        return e != cudaSuccess ? e : cudaMemcpyToSymbol(trace_buf, &b, sizeof b);          \
    }                                                                                       \
    extern "C" unsigned k_trace_count_##name(void) {                                        \
        unsigned n = 0;                                                                     \
        cudaMemcpyFromSymbol(&n, trace_cnt, sizeof n);                                      \
        return n;                                                                           \
    }
#else
#define pdl_enter() pdl_enter_plain()
#define trace_mark() ((void)0)
#define DS4_TRACE_EXPORT(name)
#endif

/* Before pdl_enter, a kernel may only touch the model's weights: no kernel
 * writes them, and everything else may still be being written by the
 * kernel in front. prefetch_l2 asks for [p, p + bytes) in L2, the block's
 * threads sharing the lines, so a small weight vector's trip from device
 * memory overlaps the kernel in front instead of following it. */
__device__ __forceinline__ void prefetch_l2(const void *p, uint64_t bytes) {
    if (!p) return;
    const char *c = (const char *)((uintptr_t)p & ~(uintptr_t)127);
    uint64_t n = ((const char *)p + bytes - c + 127) / 128;
    for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) asm volatile("prefetch.global.L2 [%0];" ::"l"(c + 128 * i));
}

/* gpu.cu: the architecture the device code running on this GPU was built
 * for, as __CUDA_ARCH__ counts (900 for the sm_90 machine code; on a GPU
 * without machine code of its own, the PTX the driver compiled: 800 on an
 * RTX 4090 from compute_80, 750 from compute_75). What the kernels can do
 * (tensor cores, clusters, programmatic waits) follows from it, not from
 * the GPU's compute capability: a kernel compiled for 750 has none of
 * those instructions even on a newer card. 0 when it cannot be read. */
int k_code_arch(void);
/* gpu.cu: the shared memory one block may opt into on this GPU (bytes);
 * DS4_CUDA_SMEM_LIMIT=BYTES lowers it, to try an RTX card's 99 KB on a
 * larger one. */
size_t k_smem_optin(void);
bool k_pdl_on(void); /* gpu.cu: code arch >= 900 and DS4_CUDA_NO_PDL unset */

/* A launch of `kern` on `st`, in clusters of `cluster` blocks when above 1;
 * the error, as with <<< >>>, is left for cudaGetLastError. */
template <typename... P, typename... A>
static inline void k_launch_cluster(void (*kern)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, unsigned cluster,
                                    A &&...args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = st;
    cudaLaunchAttribute attr[2];
    unsigned n = 0;
    if (cluster > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = cluster, attr[n].val.clusterDim.y = 1, attr[n].val.clusterDim.z = 1;
        n++;
    }
    if (k_pdl_on()) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n].val.programmaticStreamSerializationAllowed = 1;
        n++;
    }
    cfg.attrs = attr, cfg.numAttrs = n;
    cudaLaunchKernelEx(&cfg, kern, static_cast<A &&>(args)...);
}
template <typename... P, typename... A>
static inline void k_launch(void (*kern)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, A &&...args) {
    k_launch_cluster(kern, grid, block, smem, st, 1, static_cast<A &&>(args)...);
}

static inline unsigned div_up(uint64_t a, uint64_t b) { return (unsigned)((a + b - 1) / b); }
static inline uint64_t align256(uint64_t x) { return (x + 255) & ~(uint64_t)255; }
/* Multiprocessors of device 0 (asked once; 132, an H100's, if the query fails). */
static inline int k_sm_count(void) {
    static int sms = 0;
    if (!sms && cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess) sms = 132;
    return sms;
}

/* ---- weight elements ---------------------------------------------------- */

__device__ __forceinline__ float bf16_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
__device__ __forceinline__ float f16_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }

/* Element i of a row of a float-type tensor (F32, F16, BF16). */
__device__ __forceinline__ float load_elem(uint32_t type, const uint8_t *row, uint64_t i) {
    if (type == GGML_TYPE_F32) return ((const float *)row)[i];
    if (type == GGML_TYPE_F16) return f16_to_f32(((const uint16_t *)row)[i]);
    return bf16_to_f32(((const uint16_t *)row)[i]);
}

/* ds4_swiglu_clamped for one value (the same operations, see the top). */
__device__ __forceinline__ float swiglu_clamped(float g, float u, float lim) {
    float ga = g < lim ? g : lim;
    float ub = u < -lim ? -lim : (u > lim ? lim : u);
    return ga / (1.0f + expf(-ga)) * ub;
}

/* (float)i for |i| < 2^22, exactly, without the conversion unit: adding i
 * to the bits of 1.5 * 2^23 (whose last mantissa bit is worth 1) gives
 * 1.5 * 2^23 + i, and the subtraction is exact. An SM converts only 16
 * integers a clock, while the tensor-core Q8_0 products need one
 * conversion per output and 32-value block (integer sums below 32 * 127 *
 * 127 < 2^19); float adds run 128 a clock. An integer MMA started from
 * SMALL_INT_BIAS adds the bias itself (biased_int_to_float). */
#define SMALL_INT_BIAS 0x4B400000
__device__ __forceinline__ float biased_int_to_float(int b) { return __int_as_float(b) - 12582912.0f; }
__device__ __forceinline__ float small_int_to_float(int i) { return biased_int_to_float(SMALL_INT_BIAS + i); }

/* ---- quantized block bytes ------------------------------------------------ */

/* A little-endian 16-bit field at any byte address (block scales). */
__device__ __forceinline__ uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
/* Four int8 values as one word from 2-byte aligned memory (Q8_0 blocks are
 * 34 bytes, so their values are only 2-byte aligned). */
__device__ __forceinline__ int ld_i8x4_a2(const uint8_t *p) {
    const uint16_t *h = (const uint16_t *)p;
    return (int)((uint32_t)h[0] | ((uint32_t)h[1] << 16));
}
/* Byte masks 0x00/0xff from four sign bits (bit t -> byte t). */
__device__ __forceinline__ uint32_t sign_mask4(uint32_t bits) {
    return ((bits * 0x00204081u) & 0x01010101u) * 0xffu;
}

/* ---- asynchronous copies to shared memory (sm_80+; plain loads before) ---- */

__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
#if __CUDA_ARCH__ >= 800
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
#else
    *(uint4 *)dst = __ldg((const uint4 *)src);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
/* waits until at most N committed groups of this thread are in flight */
template <int N> __device__ __forceinline__ void cp_async_wait_keep() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
/* waits until every committed group of this thread has landed */
__device__ __forceinline__ void cp_async_wait_all() { cp_async_wait_keep<0>(); }
/* waits until at most one committed group of this thread is in flight */
__device__ __forceinline__ void cp_async_wait_all_but_one() { cp_async_wait_keep<1>(); }

/* ---- reductions ----------------------------------------------------------- */

/* Butterfly sums: a fixed order, so results never depend on timing. */
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the whole block (blockDim.x a multiple of 32, at most 1024);
 * every thread gets the result. `red` holds 32 doubles of shared memory. */
__device__ __forceinline__ double block_sum_d(double v, double *red) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[wid] = v;
    __syncthreads();
    double s = 0;
    for (int i = 0; i < nw; i++) s += red[i];
    return s;
}

/* ---- QAT simulations (compute/ops.c, same operations) -------------------- */

__device__ __forceinline__ float e4m3_round(float x) {
    float a = fabsf(x);
    if (!(a == a)) return x;
    if (a >= 448.0f) return copysignf(448.0f, x);
    int e;
    frexpf(a, &e);
    int exp2 = e - 1;
    if (exp2 < -6) exp2 = -6;
    float step = ldexpf(1.0f, exp2 - 3);
    float q = rintf(a / step) * step;
    if (q > 448.0f) q = 448.0f;
    return copysignf(q, x);
}

/* The e2m1 magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 by code (no array, so no
 * local memory for a run-time index). */
__device__ __forceinline__ float e2m1_value(int c) {
    return c < 4 ? 0.5f * (float)c : (c == 4 ? 2.0f : (c == 5 ? 3.0f : (c == 6 ? 4.0f : 6.0f)));
}

__device__ __forceinline__ float e2m1_round(float x) {
    float a = fabsf(x);
    if (a >= 6.0f) return copysignf(6.0f, x);
    int best = 0;
    float db = a; /* distance to code 0 */
#pragma unroll
    for (int c = 1; c < 8; c++) {
        float d = fabsf(a - e2m1_value(c));
        if (d < db || (d == db && (c & 1) == 0)) {
            best = c;
            db = d;
        }
    }
    return copysignf(e2m1_value(best), x);
}

__device__ __forceinline__ float pow2_ceil(float r) {
    int e;
    float m = frexpf(r, &e);
    return ldexpf(1.0f, m == 0.5f ? e - 1 : e);
}

#endif

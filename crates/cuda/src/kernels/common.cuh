// Shared by every kernel source (prepended by `kernels.rs`): fixed-width types, half and
// bfloat16 conversions written in PTX (NVRTC has no cuda_fp16.h), loads that only assume the
// 2-byte alignment of ggml's odd-sized blocks, and warp reductions.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

#define FULL_MASK 0xffffffffu
#define NEG_INF (__int_as_float(0xff800000))

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("{ .reg .f16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("{ .reg .f16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }

// Two floats as one f16x2 register, `lo` in the low half (the element with the lower index).
__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    return (u32)f2h(lo) | ((u32)f2h(hi) << 16);
}

__device__ __forceinline__ u16 ld16(const u8* p) { return *(const u16*)p; }

// A 32-bit value at a 2-byte aligned address.
__device__ __forceinline__ u32 ld32a2(const u8* p) {
    const u16* q = (const u16*)p;
    return (u32)q[0] | ((u32)q[1] << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// The warp's largest value and its index (ties to the lower index), in every lane.
__device__ __forceinline__ void warp_argmax(float* best, int* idx) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(FULL_MASK, *best, o);
        int oi = __shfl_xor_sync(FULL_MASK, *idx, o);
        if (ob > *best || (ob == *best && oi < *idx)) {
            *best = ob;
            *idx = oi;
        }
    }
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float siluf_(float x) { return x / (1.0f + expf(-x)); }

// ln(1 + e^x), linear past 20 (ggml_softplus).
__device__ __forceinline__ float softplusf_(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); `red` is 32 floats
// of shared memory. Every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float* red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    return warp_sum(t);
}

// N values a lane (4 or 8) of 8-bit blocks of 32 spread over 32/N adjacent lanes (all active
// together): each block's scale d = max|v| / 127, q = round(v/d) (mmvq's activations). `flat`
// is the index of v[0] in the row-major q; the block's first lane writes d[flat / 32].
template <int N>
__device__ __forceinline__ void q8_pack(const float* v, i8* __restrict__ q, float* __restrict__ d,
                                        u64 flat) {
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < N; i++) amax = fmaxf(amax, fabsf(v[i]));
    u32 mask = __activemask();
#pragma unroll
    for (int o = 1; o < 32 / N; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(mask, amax, o));
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    u32 w[N / 4];
#pragma unroll
    for (int j = 0; j < N / 4; j++) {
        w[j] = 0;
#pragma unroll
        for (int i = 0; i < 4; i++)
            w[j] |= ((u32)__float2int_rn(v[4 * j + i] * inv) & 255u) << (8 * i);
    }
    if (N == 8)
        *(uint2*)(q + flat) = make_uint2(w[0], w[N / 4 - 1]);
    else
        *(u32*)(q + flat) = w[0];
    if ((flat & 31) == 0) d[flat >> 5] = amax / 127.0f;
}

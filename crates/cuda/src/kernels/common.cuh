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

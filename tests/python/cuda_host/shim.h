// Host stand-ins for what crates/cuda/src/kernels/common.cuh gives the device code, so that
// quant.cuh compiles with g++ and its dequantization can be checked against gguf-py on any
// machine (test_cuda_dequant.py). Half conversion here is an exact software one.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#define __device__
#define __forceinline__ inline
#define __constant__
typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
static inline float h2f(u16 h) {
    u32 s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? std::ldexp((float)m, -24)
              : e == 31 ? (m ? NAN : INFINITY)
                        : std::ldexp((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}
static inline float bf2f(u16 b) {
    u32 x = ((u32)b) << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}
static inline u16 ld16(const u8* p) {
    u16 v;
    memcpy(&v, p, 2);
    return v;
}
static inline u32 ld32a2(const u8* p) {
    u32 v;
    memcpy(&v, p, 4);
    return v;
}
static inline float __uint_as_float(u32 x) {
    float f;
    memcpy(&f, &x, 4);
    return f;
}
#define QUANT_HOST
struct uint4 {
    u32 x, y, z, w;
};
struct uint2 {
    u32 x, y;
};
static inline int dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(i8)(a >> (8 * i)) * (int)(i8)(b >> (8 * i));
    return c;
}

// ggml's block formats on the GPU: each `deq8_T(blk, j, y)` writes the 8 consecutive values
// `j..j+8` (j a multiple of 8) of the block at `blk`. Layouts and arithmetic follow the scalar
// reference in the quant crate (itself ggml's `dequantize_row_*`), which the tests compare
// against. The float types are read as pseudo-blocks of 8 values so every type has the same
// granule. `WTYPE` (a ggml type id, set by the Rust side per module) picks `deq8` / QK /
// BLOCK_BYTES for the weight kernels.

#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q2_K 10
#define T_Q3_K 11
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_IQ4_NL 20
#define T_IQ4_XS 23
#define T_BF16 30
#define T_MXFP4 39

__constant__ signed char KV_IQ4NL[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                         1,    13,   25,  38,  53,  69,  89,  113};
__constant__ signed char KV_MXFP4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

__device__ __forceinline__ void deq8_f32(const u8* b, int j, float* y) {
    const float* p = (const float*)b + j;
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = p[i];
}

__device__ __forceinline__ void deq8_f16(const u8* b, int j, float* y) {
    const u16* p = (const u16*)b + j;
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = h2f(p[i]);
}

__device__ __forceinline__ void deq8_bf16(const u8* b, int j, float* y) {
    const u16* p = (const u16*)b + j;
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = bf2f(p[i]);
}

// The 8 nibbles of elements j..j+8 of a 32-element block whose 16 code bytes are at `qs`
// (element e < 16: low nibble of qs[e]; e ≥ 16: high nibble of qs[e - 16]).
__device__ __forceinline__ void nibbles8(const u8* qs, int j, int* q) {
    int off = j & 15, sh = j < 16 ? 0 : 4;
    u32 a = ld32a2(qs + off), b = ld32a2(qs + off + 4);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        q[i] = (a >> (8 * i + sh)) & 15;
        q[i + 4] = (b >> (8 * i + sh)) & 15;
    }
}

__device__ __forceinline__ void deq8_q4_0(const u8* b, int j, float* y) {
    float d = h2f(ld16(b));
    int q[8];
    nibbles8(b + 2, j, q);
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = (float)(q[i] - 8) * d;
}

__device__ __forceinline__ void deq8_q4_1(const u8* b, int j, float* y) {
    float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
    int q[8];
    nibbles8(b + 4, j, q);
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = (float)q[i] * d + m;
}

__device__ __forceinline__ void deq8_q5_0(const u8* b, int j, float* y) {
    float d = h2f(ld16(b));
    u32 qh = ld32a2(b + 2);
    int q[8];
    nibbles8(b + 6, j, q);
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = (float)((q[i] | (int)(((qh >> (j + i)) & 1) << 4)) - 16) * d;
}

__device__ __forceinline__ void deq8_q5_1(const u8* b, int j, float* y) {
    float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
    u32 qh = ld32a2(b + 4);
    int q[8];
    nibbles8(b + 8, j, q);
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = (float)(q[i] | (((qh >> (j + i)) & 1) << 4)) * d + m;
}

__device__ __forceinline__ void deq8_q8_0(const u8* b, int j, float* y) {
    float d = h2f(ld16(b));
    u32 a = ld32a2(b + 2 + j), c = ld32a2(b + 6 + j);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        y[i] = (float)(i8)((a >> (8 * i)) & 255) * d;
        y[i + 4] = (float)(i8)((c >> (8 * i)) & 255) * d;
    }
}

__device__ __forceinline__ void deq8_iq4_nl(const u8* b, int j, float* y) {
    float d = h2f(ld16(b));
    int q[8];
    nibbles8(b + 2, j, q);
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = (float)KV_IQ4NL[q[i]] * d;
}

// Half the value of e8m0 exponent e: 2^(e − 128) (ggml_e8m0_to_fp32_half).
__device__ __forceinline__ float e8m0_half(u32 e) {
    return __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1) << 23));
}

__device__ __forceinline__ void deq8_mxfp4(const u8* b, int j, float* y) {
    float d = e8m0_half(b[0]);
    const u8* qs = b + 1;  // 1-byte aligned: byte loads
    int off = j & 15, sh = j < 16 ? 0 : 4;
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = (float)KV_MXFP4[(qs[off + i] >> sh) & 15] * d;
}

// Q2_K: scales[16] | qs[64] | d | dmin (84 bytes).
__device__ __forceinline__ void deq8_q2_k(const u8* b, int j, float* y) {
    float d = h2f(ld16(b + 80)), dmin = h2f(ld16(b + 82));
    int sc = b[j / 16];
    float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
    const u8* qs = b + 16 + (j / 128) * 32 + (j % 32);
    int sh = 2 * ((j % 128) / 32);
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = dl * (float)((qs[i] >> sh) & 3) - ml;
}

// Q3_K: hmask[32] | qs[64] | scales[12] | d (110 bytes).
__device__ __forceinline__ void deq8_q3_k(const u8* b, int j, float* y) {
    float d = h2f(ld16(b + 108));
    const u8* s = b + 96;
    int k = j / 16;
    int low = k < 8 ? (s[k] & 15) : (s[k - 8] >> 4);
    int high = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
    float dl = d * (float)((low | (high << 4)) - 32);
    const u8* qs = b + 32 + (j / 128) * 32 + (j % 32);
    const u8* hm = b + (j % 32);
    int sh = 2 * ((j % 128) / 32), hb = j / 32;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int q = (qs[i] >> sh) & 3;
        int h = (hm[i] >> hb) & 1;
        y[i] = dl * (float)(q - (h ? 0 : 4));
    }
}

// The 6-bit scale and min of sub-block s of a Q4_K/Q5_K block (get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(int s, const u8* q, int* sc, int* m) {
    if (s < 4) {
        *sc = q[s] & 63;
        *m = q[s + 4] & 63;
    } else {
        *sc = (q[s + 4] & 15) | ((q[s - 4] >> 6) << 4);
        *m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
    }
}

// Q4_K: d | dmin | scales[12] | qs[128] (144 bytes).
__device__ __forceinline__ void deq8_q4_k(const u8* b, int j, float* y) {
    float d = h2f(ld16(b)), dmin = h2f(ld16(b + 2));
    int sc, m;
    scale_min_k4(j / 32, b + 4, &sc, &m);
    float d1 = d * (float)sc, m1 = dmin * (float)m;
    const u8* qs = b + 16 + (j / 64) * 32 + (j % 32);
    int sh = 4 * ((j / 32) % 2);
    u32 a = *(const u32*)qs, c = *(const u32*)(qs + 4);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        y[i] = d1 * (float)((a >> (8 * i + sh)) & 15) - m1;
        y[i + 4] = d1 * (float)((c >> (8 * i + sh)) & 15) - m1;
    }
}

// Q5_K: d | dmin | scales[12] | qh[32] | qs[128] (176 bytes).
__device__ __forceinline__ void deq8_q5_k(const u8* b, int j, float* y) {
    float d = h2f(ld16(b)), dmin = h2f(ld16(b + 2));
    int sc, m;
    scale_min_k4(j / 32, b + 4, &sc, &m);
    float d1 = d * (float)sc, m1 = dmin * (float)m;
    const u8* qs = b + 48 + (j / 64) * 32 + (j % 32);
    const u8* qh = b + 16 + (j % 32);
    int sh = 4 * ((j / 32) % 2), hb = j / 32;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int q = ((qs[i] >> sh) & 15) | (((qh[i] >> hb) & 1) << 4);
        y[i] = d1 * (float)q - m1;
    }
}

// Q6_K: ql[128] | qh[64] | scales[16] (int8) | d (210 bytes).
__device__ __forceinline__ void deq8_q6_k(const u8* b, int j, float* y) {
    float d = h2f(ld16(b + 208));
    float dl = d * (float)(i8)b[192 + j / 16];
    int a = j / 128, r = j % 128;
    const u8* ql = b + 64 * a + (r % 64);
    const u8* qh = b + 128 + 32 * a + (r % 32);
    int sl = 4 * (r / 64), shh = 2 * (r / 32);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int q = (((ql[i] >> sl) & 15) | (((qh[i] >> shh) & 3) << 4)) - 32;
        y[i] = dl * (float)q;
    }
}

// IQ4_XS: d | scales_h (u16) | scales_l[4] | qs[128] (136 bytes).
__device__ __forceinline__ void deq8_iq4_xs(const u8* b, int j, float* y) {
    float d = h2f(ld16(b));
    int ib = j / 32;
    u32 sh = ld16(b + 2);
    int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4);
    float dl = d * (float)(ls - 32);
    int q[8];
    nibbles8(b + 8 + 16 * ib, j % 32, q);
#pragma unroll
    for (int i = 0; i < 8; i++) y[i] = dl * (float)KV_IQ4NL[q[i]];
}

// Integer dot products for the decode matrix × vector kernel (`mmvq`): weights as stored,
// activations quantized to 8 bits in blocks of 32 (`quant_q8`: int8 `xq`, one float scale a
// block in `xd`), four products a `dp4a` — llama.cpp's mmvq method (vecdotq.cuh), written for
// this layout. `vdot_T(row, u, xq, xd)` is the dot of unit `u` of a weight row (UPB units a
// block) with the matching activations; `xq`/`xd` are the row's first value and scale.

#ifndef QUANT_HOST  // the host test's shim has its own
__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
#endif

// Sum of the four bytes of x as signed values.
__device__ __forceinline__ int bsum4(int x) { return dp4a(0x01010101, x, 0); }

// Q4_K and Q5_K (blocks 16-byte aligned in memory): unit j of block b is the 16 code bytes
// 16j..16j+16 of qs: low nibbles = 16 values of sub-block 2⌊j/2⌋, high nibbles = the same 16
// positions of the next sub-block.
__device__ __forceinline__ float vdot_k45(const u8* blk, uint4 w, uint4 hb, bool five, int b,
                                          int j, const i8* xq, const float* xd) {
    int pair = j >> 1, half = j & 1;
    int e0 = b * 256 + 64 * pair + 16 * half;
    uint4 xa = *(const uint4*)(xq + e0), xb = *(const uint4*)(xq + e0 + 32);
    float da = xd[e0 >> 5], db = xd[(e0 >> 5) + 1];
    u32 wq[4] = {w.x, w.y, w.z, w.w}, hq[4] = {hb.x, hb.y, hb.z, hb.w};
    int xav[4] = {(int)xa.x, (int)xa.y, (int)xa.z, (int)xa.w};
    int xbv[4] = {(int)xb.x, (int)xb.y, (int)xb.z, (int)xb.w};
    int sa = 0, sb = 0, ma = 0, mb = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        u32 lo = wq[i] & 0x0F0F0F0Fu, hi = (wq[i] >> 4) & 0x0F0F0F0Fu;
        if (five) {
            lo |= ((hq[i] >> (2 * pair)) & 0x01010101u) << 4;
            hi |= ((hq[i] >> (2 * pair + 1)) & 0x01010101u) << 4;
        }
        sa = dp4a((int)lo, xav[i], sa);
        sb = dp4a((int)hi, xbv[i], sb);
        ma = dp4a(0x01010101, xav[i], ma);
        mb = dp4a(0x01010101, xbv[i], mb);
    }
    float d = h2f(ld16(blk)), dmin = h2f(ld16(blk + 2));
    int sca, mna, scb, mnb;
    scale_min_k4(2 * pair, blk + 4, &sca, &mna);
    scale_min_k4(2 * pair + 1, blk + 4, &scb, &mnb);
    return d * (da * (float)(sca * sa) + db * (float)(scb * sb)) -
           dmin * (da * (float)(mna * ma) + db * (float)(mnb * mb));
}

__device__ __forceinline__ float vdot_q4_k(const u8* row, int u, const i8* xq, const float* xd) {
    int b = u >> 3, j = u & 7;
    const u8* blk = row + (u64)b * 144;
    uint4 w = *(const uint4*)(blk + 16 + 16 * j);
    return vdot_k45(blk, w, w, false, b, j, xq, xd);
}

__device__ __forceinline__ float vdot_q5_k(const u8* row, int u, const i8* xq, const float* xd) {
    int b = u >> 3, j = u & 7;
    const u8* blk = row + (u64)b * 176;
    uint4 w = *(const uint4*)(blk + 48 + 16 * j);
    uint4 h = *(const uint4*)(blk + 16 + 16 * (j & 1));
    return vdot_k45(blk, w, h, true, b, j, xq, xd);
}

// Q6_K: unit j of a block is, in half a = j/4 and at offset i0 = 8(j%4), the 8-value runs
// i0.., i0+32.., i0+64.., i0+96.. of that half (ql bytes i0.. and i0+32.. give the low
// nibbles, qh bytes i0.. the two high bits); each run has one scale.
__device__ __forceinline__ float vdot_q6_k(const u8* row, int u, const i8* xq, const float* xd) {
    int b = u >> 3, j = u & 7;
    int a = j >> 2, i0 = 8 * (j & 3);
    const u8* blk = row + (u64)b * 210;
    const u8* ql = blk + 64 * a + i0;
    const u8* qh = blk + 128 + 32 * a + i0;
    u32 l0[2] = {ld32a2(ql), ld32a2(ql + 4)}, l1[2] = {ld32a2(ql + 32), ld32a2(ql + 36)};
    u32 h[2] = {ld32a2(qh), ld32a2(qh + 4)};
    const i8* sc = (const i8*)(blk + 192 + 8 * a + (i0 >> 4));
    float d = h2f(ld16(blk + 208));
    int e0 = b * 256 + 128 * a + i0;
    float acc = 0.0f;
#pragma unroll
    for (int g = 0; g < 4; g++) {
        uint2 xv = *(const uint2*)(xq + e0 + 32 * g);
        int x2[2] = {(int)xv.x, (int)xv.y};
        int s = 0, m = 0;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            u32 lo = (g & 1) ? l1[i] : l0[i];
            lo = (g & 2) ? (lo >> 4) & 0x0F0F0F0Fu : lo & 0x0F0F0F0Fu;
            u32 q = lo | (((h[i] >> (2 * g)) & 0x03030303u) << 4);
            s = dp4a((int)q, x2[i], s);
            m = dp4a(0x01010101, x2[i], m);
        }
        acc += xd[(e0 >> 5) + g] * (float)((int)sc[2 * g] * (s - 32 * m));
    }
    return d * acc;
}

// Q8_0 and Q4_0: a unit is a block of 32.
__device__ __forceinline__ float vdot_q8_0(const u8* row, int u, const i8* xq, const float* xd) {
    const u8* blk = row + (u64)u * 34;
    const i8* x = xq + 32 * u;
    uint4 x0 = *(const uint4*)x, x1 = *(const uint4*)(x + 16);
    int xv[8] = {(int)x0.x, (int)x0.y, (int)x0.z, (int)x0.w,
                 (int)x1.x, (int)x1.y, (int)x1.z, (int)x1.w};
    int s = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) s = dp4a((int)ld32a2(blk + 2 + 4 * i), xv[i], s);
    return h2f(ld16(blk)) * xd[u] * (float)s;
}

__device__ __forceinline__ float vdot_q4_0(const u8* row, int u, const i8* xq, const float* xd) {
    const u8* blk = row + (u64)u * 18;
    const i8* x = xq + 32 * u;
    uint4 x0 = *(const uint4*)x, x1 = *(const uint4*)(x + 16);
    int xl[4] = {(int)x0.x, (int)x0.y, (int)x0.z, (int)x0.w};
    int xh[4] = {(int)x1.x, (int)x1.y, (int)x1.z, (int)x1.w};
    int s = 0, m = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        u32 q = ld32a2(blk + 2 + 4 * i);
        s = dp4a((int)(q & 0x0F0F0F0Fu), xl[i], s);
        s = dp4a((int)((q >> 4) & 0x0F0F0F0Fu), xh[i], s);
        m = dp4a(0x01010101, xl[i], m);
        m = dp4a(0x01010101, xh[i], m);
    }
    return h2f(ld16(blk)) * xd[u] * (float)(s - 8 * m);
}

#ifdef WTYPE
#if WTYPE == T_F32
#define QK 8
#define BLOCK_BYTES 32
#define deq8 deq8_f32
#elif WTYPE == T_F16
#define QK 8
#define BLOCK_BYTES 16
#define deq8 deq8_f16
#elif WTYPE == T_BF16
#define QK 8
#define BLOCK_BYTES 16
#define deq8 deq8_bf16
#elif WTYPE == T_Q4_0
#define QK 32
#define BLOCK_BYTES 18
#define deq8 deq8_q4_0
#define VDOT vdot_q4_0
#define UPB 1
#elif WTYPE == T_Q4_1
#define QK 32
#define BLOCK_BYTES 20
#define deq8 deq8_q4_1
#elif WTYPE == T_Q5_0
#define QK 32
#define BLOCK_BYTES 22
#define deq8 deq8_q5_0
#elif WTYPE == T_Q5_1
#define QK 32
#define BLOCK_BYTES 24
#define deq8 deq8_q5_1
#elif WTYPE == T_Q8_0
#define QK 32
#define BLOCK_BYTES 34
#define deq8 deq8_q8_0
#define VDOT vdot_q8_0
#define UPB 1
#elif WTYPE == T_Q2_K
#define QK 256
#define BLOCK_BYTES 84
#define deq8 deq8_q2_k
#elif WTYPE == T_Q3_K
#define QK 256
#define BLOCK_BYTES 110
#define deq8 deq8_q3_k
#elif WTYPE == T_Q4_K
#define QK 256
#define BLOCK_BYTES 144
#define deq8 deq8_q4_k
#define VDOT vdot_q4_k
#define UPB 8
#elif WTYPE == T_Q5_K
#define QK 256
#define BLOCK_BYTES 176
#define deq8 deq8_q5_k
#define VDOT vdot_q5_k
#define UPB 8
#elif WTYPE == T_Q6_K
#define QK 256
#define BLOCK_BYTES 210
#define deq8 deq8_q6_k
#define VDOT vdot_q6_k
#define UPB 8
#elif WTYPE == T_IQ4_NL
#define QK 32
#define BLOCK_BYTES 18
#define deq8 deq8_iq4_nl
#elif WTYPE == T_IQ4_XS
#define QK 256
#define BLOCK_BYTES 136
#define deq8 deq8_iq4_xs
#elif WTYPE == T_MXFP4
#define QK 32
#define BLOCK_BYTES 17
#define deq8 deq8_mxfp4
#else
#error "WTYPE: no GPU kernel for this ggml type"
#endif

// The 8 values of granule g (values 8g..8g+8) of a row starting at `row`.
__device__ __forceinline__ void deq_granule(const u8* row, int g, float* y) {
    int e = g * 8;
    deq8(row + (u64)(e / QK) * BLOCK_BYTES, e % QK, y);
}
#endif

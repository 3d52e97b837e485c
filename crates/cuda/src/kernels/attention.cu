// Attention over the KV cache: storing a step's keys and values at their positions in the
// cache type (f16, q8_0, q4_0; quantized as the CPU engine's `KvCache::store` does), the
// Walsh–Hadamard rotation of quantized caches (`kv.rs`), and flash attention: online softmax
// over chunks of 32 cached positions, one warp per query row, the positions of a KV head's
// chunk dequantized once into shared memory for all the query heads that read it (GQA).
// Decode splits the positions over `n_split` blocks whose partial results `attn_combine`
// merges (flash-decoding). `D` (head width) is set per module; positions come from device
// memory (pos0), so a recorded decode step replays at any position.

#define KV_F16 1
#define KV_Q8_0 8
#define KV_Q4_0 2

// Bytes of `d` values stored as `ty`.
__device__ __forceinline__ u64 kv_bytes(int ty, int d) {
    return ty == KV_F16 ? 2 * (u64)d : ty == KV_Q8_0 ? (u64)(d / 32) * 34 : (u64)(d / 32) * 18;
}

// Store rows src[t] (width values) at cache position pos0 + t. One thread per 32 values.
extern "C" __global__ void kv_store(const float* __restrict__ src, u8* __restrict__ cache,
                                    const i32* __restrict__ pos0, int n, int width, int ty) {
    int nb = width / 32;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * nb) return;
    int t = idx / nb, b = idx % nb;
    const float* x = src + (u64)t * width + 32 * b;
    u8* row = cache + (u64)(pos0[0] + t) * kv_bytes(ty, width);
    if (ty == KV_F16) {
        u16* o = (u16*)row + 32 * b;
        for (int i = 0; i < 32; i++) o[i] = f2h(x[i]);
    } else if (ty == KV_Q8_0) {
        // d = amax/127, codes round-half-even(x · 127/amax) (the x86 quantize_row_q8_0).
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
        float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
        u8* o = row + 34 * b;
        *(u16*)o = f2h(d);
        for (int i = 0; i < 32; i++) {
            int q = __float2int_rn(x[i] * id);
            o[2 + i] = (u8)(i8)max(-128, min(127, q));
        }
    } else {
        // quantize_row_q4_0_ref: d = (signed abs-max)/−8, codes trunc(x/d + 8.5) capped at 15.
        float amax = 0.0f, mx = 0.0f;
        for (int i = 0; i < 32; i++) {
            if (amax < fabsf(x[i])) {
                amax = fabsf(x[i]);
                mx = x[i];
            }
        }
        float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        u8* o = row + 18 * b;
        *(u16*)o = f2h(d);
        for (int i = 0; i < 16; i++) {
            int q0 = min(15, (int)(i8)(x[i] * id + 8.5f));
            int q1 = min(15, (int)(i8)(x[i + 16] * id + 8.5f));
            o[2 + i] = (u8)(q0 | (q1 << 4));
        }
    }
}

// The orthonormal Walsh–Hadamard transform of each chunk of `chunk` values (a power of two,
// ≤ 1024) of every row, `src` to `dst` (which may be `src`): scaled first, then butterflies of
// width 1, 2, 4, …, the order of ggml's fwht and of `kv::hadamard`, so the same bits. One
// block per chunk; dynamic shared memory of `chunk` floats.
extern "C" __global__ void fwht(const float* src, float* dst, int chunk) {
    extern __shared__ float s[];
    const float* x = src + (u64)blockIdx.x * chunk;
    float* c = dst + (u64)blockIdx.x * chunk;
    float sc = 1.0f / sqrtf((float)chunk);
    for (int i = threadIdx.x; i < chunk; i += blockDim.x) s[i] = x[i] * sc;
    __syncthreads();
    for (int len = 1; len < chunk; len *= 2) {
        for (int i = threadIdx.x; i < chunk / 2; i += blockDim.x) {
            int a = (i / len) * 2 * len + (i % len), b = a + len;
            float u = s[a], v = s[b];
            s[a] = u + v;
            s[b] = u - v;
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < chunk; i += blockDim.x) c[i] = s[i];
}

#ifdef D
#define CHUNK 32
#define KPAD (D + 2)  // halves per shared row: an odd number of words, no bank conflicts

struct AttnArgs {
    const float* q;     // n × n_head × D
    const u8* k;        // cache, n_ctx rows
    const u8* v;
    float* o;           // n × n_head × D (n_split == 1)
    float* part;        // n_split × rows × (D + 2): unnormalised o, then m and l
    const i32* pos0;
    i32 n;
    i32 n_head;
    i32 n_head_kv;
    i32 window;         // 0: none
    i32 n_split;
    i32 kt;             // cache types
    i32 vt;
    float scale;
};

// Dequantize D values of head `h` at position `p` into shared row `dst` (f16).
__device__ __forceinline__ void load_kv_row(const u8* cache, int ty, int n_head_kv, int h, int p,
                                            int part, int n_parts, u16* dst) {
    const u8* row = cache + (u64)p * kv_bytes(ty, D * n_head_kv) + kv_bytes(ty, D) * h;
    // `part` of `n_parts` threads working on this row: 8 values at a time.
    for (int j = part * 8; j < D; j += n_parts * 8) {
        float y[8];
        if (ty == KV_F16) {
            deq8_f16(row, j, y);
        } else if (ty == KV_Q8_0) {
            deq8_q8_0(row + (j / 32) * 34, j % 32, y);
        } else {
            deq8_q4_0(row + (j / 32) * 18, j % 32, y);
        }
#pragma unroll
        for (int i = 0; i < 8; i += 2) *(u32*)&dst[j + i] = pack_h2(y[i], y[i + 1]);
    }
}

// grid (n_head_kv, ceil(n·group / warps), n_split); one query row (token t, head) a warp.
extern "C" __global__ void attn(AttnArgs a) {
    extern __shared__ __align__(16) u8 smem[];
    int warps = blockDim.x >> 5;
    u16* ks = (u16*)smem;
    u16* vs = ks + CHUNK * KPAD;
    float* qs = (float*)(vs + CHUNK * KPAD);  // warps × D
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int hkv = blockIdx.x, split = blockIdx.z;
    int group = a.n_head / a.n_head_kv;
    int rows = a.n * group;
    int r = blockIdx.y * warps + warp;
    bool active = r < rows;
    int t = active ? r / group : 0;
    int hq = hkv * group + (active ? r % group : 0);
    int p0 = a.pos0[0];
    int pos = p0 + t;
    // The block's range of positions (its rows are consecutive tokens).
    int r_first = blockIdx.y * warps, r_last = min(rows, r_first + warps) - 1;
    int hi = p0 + r_last / group + 1;
    int lo = a.window > 0 ? max(0, p0 + r_first / group - a.window + 1) : 0;
    float* qw = qs + warp * D;
    if (active)
        for (int i = lane; i < D; i += 32) qw[i] = a.q[((u64)t * a.n_head + hq) * D + i] * a.scale;
    float m = NEG_INF, l = 0.0f;
    float acc[D / 32];
#pragma unroll
    for (int i = 0; i < D / 32; i++) acc[i] = 0.0f;
    int threads = blockDim.x;
    for (int c = lo / CHUNK + split; c * CHUNK < hi; c += a.n_split) {
        int base = c * CHUNK;
        __syncthreads();
        // 32 positions × (D/8) granules of K and of V over the block's threads.
        int per_row = threads / CHUNK;  // threads a position
        int kr = threadIdx.x / per_row, part = threadIdx.x % per_row;
        if (kr < CHUNK) {
            int p = base + kr;
            if (p < hi && p >= lo) {
                load_kv_row(a.k, a.kt, a.n_head_kv, hkv, p, part, per_row, ks + kr * KPAD);
                load_kv_row(a.v, a.vt, a.n_head_kv, hkv, p, part, per_row, vs + kr * KPAD);
            }
        }
        __syncthreads();
        if (!active) continue;
        int p = base + lane;
        bool ok = p <= pos && p >= lo && p < hi && (a.window <= 0 || pos - p < a.window);
        float s = NEG_INF;
        if (ok) {
            const u16* kr_ = ks + lane * KPAD;
            float d0 = 0.0f, d1 = 0.0f;
#pragma unroll 8
            for (int i = 0; i < D; i += 2) {
                u32 kk = *(const u32*)&kr_[i];
                d0 += qw[i] * h2f(kk & 0xffff);
                d1 += qw[i + 1] * h2f(kk >> 16);
            }
            s = d0 + d1;
        }
        float cm = warp_max(s);
        if (cm == NEG_INF) continue;
        float mn = fmaxf(m, cm);
        float corr = expf(m - mn);
        float pr = ok ? expf(s - mn) : 0.0f;
        l = l * corr + warp_sum(pr);
        m = mn;
#pragma unroll
        for (int i = 0; i < D / 32; i++) acc[i] *= corr;
        for (int j = 0; j < CHUNK; j++) {
            float pj = __shfl_sync(FULL_MASK, pr, j);
            if (pj == 0.0f) continue;
            const u16* vr = vs + j * KPAD;
#pragma unroll
            for (int i = 0; i < D / 64; i++) {
                u32 vv = *(const u32*)&vr[2 * lane + 64 * i];
                acc[2 * i] += pj * h2f(vv & 0xffff);
                acc[2 * i + 1] += pj * h2f(vv >> 16);
            }
        }
    }
    if (!active) return;
    if (a.n_split == 1) {
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float* o = a.o + ((u64)t * a.n_head + hq) * D;
#pragma unroll
        for (int i = 0; i < D / 64; i++) {
            o[2 * lane + 64 * i] = acc[2 * i] * inv;
            o[2 * lane + 64 * i + 1] = acc[2 * i + 1] * inv;
        }
    } else {
        u64 row = (u64)t * a.n_head + hq;
        float* pp = a.part + ((u64)split * a.n * a.n_head + row) * (D + 2);
#pragma unroll
        for (int i = 0; i < D / 64; i++) {
            pp[2 * lane + 64 * i] = acc[2 * i];
            pp[2 * lane + 64 * i + 1] = acc[2 * i + 1];
        }
        if (lane == 0) {
            pp[D] = m;
            pp[D + 1] = l;
        }
    }
}

// Merge the n_split partial results of each (token, head) row: one block of D threads a row.
extern "C" __global__ void attn_combine(const float* __restrict__ part, float* __restrict__ o,
                                        int rows, int n_split) {
    int row = blockIdx.x, i = threadIdx.x;
    float m = NEG_INF;
    for (int s = 0; s < n_split; s++) m = fmaxf(m, part[((u64)s * rows + row) * (D + 2) + D]);
    float num = 0.0f, den = 0.0f;
    for (int s = 0; s < n_split; s++) {
        const float* pp = part + ((u64)s * rows + row) * (D + 2);
        float ms = pp[D];
        if (ms == NEG_INF) continue;
        float w = expf(ms - m);
        num += w * pp[i];
        den += w * pp[D + 1];
    }
    o[(u64)row * D + i] = den > 0.0f ? num / den : 0.0f;
}
#endif

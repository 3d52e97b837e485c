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

// Store the 32 values at x as block b of a cache row (`ty`), as the CPU's KvCache::store.
__device__ __forceinline__ void kv_store_block(const float* x, u8* row, int b, int ty) {
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

// Store rows src[t] (width values) at cache position pos0 + t. One thread per 32 values.
extern "C" __global__ void kv_store(const float* __restrict__ src, u8* __restrict__ cache,
                                    const i32* __restrict__ pos0, int n, int width, int ty) {
    int nb = width / 32;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * nb) return;
    int t = idx / nb, b = idx % nb;
    u8* row = cache + (u64)(pos0[0] + t) * kv_bytes(ty, width);
    kv_store_block(src + (u64)t * width + 32 * b, row, b, ty);
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
    float m = NEG_INF, l = 0.0f;
    float acc[D / 32];
#pragma unroll
    for (int i = 0; i < D / 32; i++) acc[i] = 0.0f;
    // A split past the last position (decode splits for the deepest context the step may
    // see) skips everything and only says so to attn_combine.
    bool empty = (lo / CHUNK + split) * CHUNK >= hi;
    if (active && !empty)
        for (int i = lane; i < D; i += 32) qw[i] = a.q[((u64)t * a.n_head + hq) * D + i] * a.scale;
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

// Prefill on the tensor cores (FlashAttention-2's method with mma.sync m16n8k16, f16 inputs,
// f32 accumulators): a block of 4 warps takes 64 query rows of one KV head (consecutive
// (token, head) rows of its GQA group), each warp 16; per chunk of KC positions the block
// dequantizes K and V (positions × D each) into shared memory as f16, then each warp forms
// S = Q·Kᵀ, updates its rows' online softmax, and accumulates O += P·V with P taken straight
// from S's accumulator registers and V's fragments read transposed by ldmatrix. Shared rows
// are padded by 8 halves so fragment loads hit 32 different banks. KC is 32 for D = 256 so
// the block fits the 99 KB a consumer Blackwell block may use. blockIdx.z splits the
// positions (chunks z, z + n_split, …) when there are few blocks; `attn_combine` then merges
// the partial results, as for decode.
#if D <= 256
#define KC (D >= 256 ? 32 : 64)
#define QSTR (D + 8)

__device__ __forceinline__ void mma_f16(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8×8 f16 matrices from shared memory, transposed (lane l gives the row address of
// matrix l / 8, row l % 8).
__device__ __forceinline__ void ldsm_x4_trans(u32* r, const u16* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// grid (n_head_kv, ceil(n·group / 64), n_split); block 128; dynamic shared memory
// (64 + 2·KC) · QSTR halves.
extern "C" __global__ void __launch_bounds__(128) attn_mma(AttnArgs a) {
    extern __shared__ __align__(16) u8 smem[];
    u16* qs = (u16*)smem;          // 64 × QSTR
    u16* ks = qs + 64 * QSTR;      // KC × QSTR
    u16* vs = ks + KC * QSTR;      // KC × QSTR
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int g = lane >> 2, tq = lane & 3;
    int hkv = blockIdx.x, split = blockIdx.z;
    int group = a.n_head / a.n_head_kv;
    int rows = a.n * group;
    int r0 = blockIdx.y * 64;
    int p0 = a.pos0[0];
    // The queries, scaled, as f16 (rows past the end zero).
    for (int i = tid; i < 64 * (D / 2); i += 128) {
        int r = i / (D / 2), c = 2 * (i % (D / 2));
        float x0 = 0.0f, x1 = 0.0f;
        if (r0 + r < rows) {
            int t = (r0 + r) / group, hq = hkv * group + (r0 + r) % group;
            const float* qp = a.q + ((u64)t * a.n_head + hq) * D + c;
            x0 = qp[0] * a.scale;
            x1 = qp[1] * a.scale;
        }
        *(u32*)&qs[r * QSTR + c] = pack_h2(x0, x1);
    }
    // This warp's two rows a thread: g and g + 8 of its 16; their positions.
    int pos_row[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int r = min(r0 + warp * 16 + g + 8 * h, rows - 1);
        pos_row[h] = p0 + r / group;
    }
    int r_last = min(rows, r0 + 64) - 1;
    int hi = p0 + r_last / group + 1;
    int lo = a.window > 0 ? max(0, p0 + r0 / group - a.window + 1) : 0;
    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++)
#pragma unroll
        for (int c = 0; c < 4; c++) o[j][c] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    const u16* qw = qs + warp * 16 * QSTR;
    // ldmatrix row of this lane within a 16-position × 16-value block of V.
    int v_row = (lane & 7) + ((lane >> 3) & 1) * 8, v_col = (lane >> 4) * 8;
    for (int base = (lo / KC + split) * KC; base < hi; base += KC * a.n_split) {
        __syncthreads();
        // K and V rows of the chunk's positions (zero outside [lo, hi)).
        for (int i = tid; i < KC * (D / 8); i += 128) {
            int pr = i / (D / 8), j = 8 * (i % (D / 8));
            int p = base + pr;
            float y[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            float z[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            if (p >= lo && p < hi) {
                const u8* kr = a.k + (u64)p * kv_bytes(a.kt, D * a.n_head_kv) + kv_bytes(a.kt, D) * hkv;
                const u8* vr = a.v + (u64)p * kv_bytes(a.vt, D * a.n_head_kv) + kv_bytes(a.vt, D) * hkv;
                if (a.kt == KV_F16) deq8_f16(kr, j, y);
                else if (a.kt == KV_Q8_0) deq8_q8_0(kr + (j / 32) * 34, j % 32, y);
                else deq8_q4_0(kr + (j / 32) * 18, j % 32, y);
                if (a.vt == KV_F16) deq8_f16(vr, j, z);
                else if (a.vt == KV_Q8_0) deq8_q8_0(vr + (j / 32) * 34, j % 32, z);
                else deq8_q4_0(vr + (j / 32) * 18, j % 32, z);
            }
            *(uint4*)&ks[pr * QSTR + j] = make_uint4(pack_h2(y[0], y[1]), pack_h2(y[2], y[3]),
                                                     pack_h2(y[4], y[5]), pack_h2(y[6], y[7]));
            *(uint4*)&vs[pr * QSTR + j] = make_uint4(pack_h2(z[0], z[1]), pack_h2(z[2], z[3]),
                                                     pack_h2(z[4], z[5]), pack_h2(z[6], z[7]));
        }
        __syncthreads();
        // S = Q·Kᵀ for this warp's 16 rows × KC positions.
        float s[KC / 8][4];
#pragma unroll
        for (int j = 0; j < KC / 8; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) s[j][c] = 0.0f;
#pragma unroll 4
        for (int kk = 0; kk < D; kk += 16) {
            int c = kk + 2 * tq;
            u32 af[4] = {*(const u32*)&qw[g * QSTR + c], *(const u32*)&qw[(g + 8) * QSTR + c],
                         *(const u32*)&qw[g * QSTR + c + 8], *(const u32*)&qw[(g + 8) * QSTR + c + 8]};
#pragma unroll
            for (int j = 0; j < KC / 8; j++) {
                const u16* kr = ks + (j * 8 + g) * QSTR + c;
                mma_f16(s[j], af, *(const u32*)kr, *(const u32*)(kr + 8));
            }
        }
        // Masks, then the online softmax of rows g (h = 0) and g + 8 (h = 1).
        float cmax[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < KC / 8; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int h = c >> 1, p = base + j * 8 + 2 * tq + (c & 1);
                int pr = pos_row[h];
                bool ok = p <= pr && p >= lo && (a.window <= 0 || pr - p < a.window);
                s[j][c] = ok ? s[j][c] : NEG_INF;
                cmax[h] = fmaxf(cmax[h], s[j][c]);
            }
        float corr[2], rsum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int h = 0; h < 2; h++) {
            cmax[h] = fmaxf(cmax[h], __shfl_xor_sync(FULL_MASK, cmax[h], 1));
            cmax[h] = fmaxf(cmax[h], __shfl_xor_sync(FULL_MASK, cmax[h], 2));
            float mn = fmaxf(m[h], cmax[h]);
            corr[h] = m[h] == NEG_INF ? 0.0f : expf(m[h] - mn);
            m[h] = mn;
        }
        u32 pf[KC / 8][2];  // P as f16 pairs: rows g (0) and g + 8 (1)
#pragma unroll
        for (int j = 0; j < KC / 8; j++) {
            float pv[4];
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int h = c >> 1;
                pv[c] = s[j][c] == NEG_INF ? 0.0f : expf(s[j][c] - m[h]);
                rsum[h] += pv[c];
            }
            pf[j][0] = pack_h2(pv[0], pv[1]);
            pf[j][1] = pack_h2(pv[2], pv[3]);
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            rsum[h] += __shfl_xor_sync(FULL_MASK, rsum[h], 1);
            rsum[h] += __shfl_xor_sync(FULL_MASK, rsum[h], 2);
            l[h] = l[h] * corr[h] + rsum[h];
        }
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
            o[j][0] *= corr[0];
            o[j][1] *= corr[0];
            o[j][2] *= corr[1];
            o[j][3] *= corr[1];
        }
        // O += P·V.
#pragma unroll
        for (int kc = 0; kc < KC; kc += 16) {
            u32 af[4] = {pf[kc / 8][0], pf[kc / 8][1], pf[kc / 8 + 1][0], pf[kc / 8 + 1][1]};
            const u16* vb = vs + (kc + v_row) * QSTR + v_col;
#pragma unroll
            for (int j = 0; j < D / 8; j += 2) {
                u32 b[4];
                ldsm_x4_trans(b, vb + 8 * j);
                mma_f16(o[j], af, b[0], b[1]);
                mma_f16(o[j + 1], af, b[2], b[3]);
            }
        }
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int r = r0 + warp * 16 + g + 8 * h;
        if (r >= rows) continue;
        int t = r / group, hq = hkv * group + r % group;
        u64 row = (u64)t * a.n_head + hq;
        if (a.n_split == 1) {
            float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
            float* op = a.o + row * D + 2 * tq;
#pragma unroll
            for (int j = 0; j < D / 8; j++)
                *(float2*)(op + 8 * j) = make_float2(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
        } else {
            // Unnormalised, with the row's running max and sum (attn's partial layout).
            float* pp = a.part + ((u64)split * a.n * a.n_head + row) * (D + 2);
#pragma unroll
            for (int j = 0; j < D / 8; j++) {
                pp[8 * j + 2 * tq] = o[j][2 * h];
                pp[8 * j + 2 * tq + 1] = o[j][2 * h + 1];
            }
            if (tq == 0) {
                pp[D] = m[h];
                pp[D + 1] = l[h];
            }
        }
    }
}
#endif

// In-place pieces of a head held in shared memory `x` (D values, one a thread, D threads),
// each ending in a barrier.

// RMS norm times w (as rms_norm: x · 1/sqrt(mean(x²) + eps) · w).
__device__ __forceinline__ void head_rms_norm(float* x, const float* __restrict__ w, float eps,
                                              float* red) {
    int i = threadIdx.x;
    float v = x[i];
    float ss = block_sum(v * v, red);
    x[i] = v * (1.0f / sqrtf(ss / (float)D + eps)) * w[i];
    __syncthreads();
}

// RoPE at position pos (as rope.cu).
__device__ __forceinline__ void head_rope(float* x, int pos, int n_rot, float base, int neox) {
    int i = threadIdx.x, half = n_rot / 2;
    if (i < half) {
        float theta = (float)pos * powf(base, -2.0f * (float)i / (float)n_rot);
        float s, c;
        sincosf(theta, &s, &c);
        int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
        float x0 = x[ia], x1 = x[ib];
        x[ia] = x0 * c - x1 * s;
        x[ib] = x0 * s + x1 * c;
    }
    __syncthreads();
}

// The orthonormal Walsh–Hadamard transform of each chunk of `chunk` values (as fwht).
__device__ __forceinline__ void head_fwht(float* x, int chunk) {
    int i = threadIdx.x;
    x[i] *= 1.0f / sqrtf((float)chunk);
    __syncthreads();
    for (int len = 1; len < chunk; len *= 2) {
        if (i < D / 2) {
            int a = (i / len) * 2 * len + (i % len), b = a + len;
            float u = x[a], v = x[b];
            x[a] = u + v;
            x[b] = u - v;
        }
        __syncthreads();
    }
}

struct PrepArgs {
    const float* qg;      // n rows of qg_w: q (columns q_cols, or the first n_head·D) and more
    const i32* q_cols;
    const float* k;       // n × n_head_kv·D
    const float* v;
    const float* q_norm;  // D, or null
    const float* k_norm;
    float* q_out;         // n × n_head·D
    u8* kc;               // caches
    u8* vc;
    const i32* pos0;
    i32 qg_w;
    i32 n_head;
    i32 n_head_kv;
    i32 n_rot;
    i32 neox;
    i32 rot_k;            // Walsh–Hadamard chunks (0: none)
    i32 rot_v;
    i32 kt;
    i32 vt;
    float base;
    float eps;
};

// Everything attention does to a step's q, k and v before attending, one block of D threads
// a (head slot, token): q heads gathered from the projection, normed, rotated (RoPE, then
// the keys' Walsh–Hadamard rotation), written; k heads the same then stored in the cache;
// v heads rotated and stored. grid (n_head + 2·n_head_kv, n).
extern "C" __global__ void attn_prep(PrepArgs a) {
    __shared__ float x[D];
    __shared__ float red[32];
    int slot = blockIdx.x, t = blockIdx.y, i = threadIdx.x;
    int pos = a.pos0[0] + t;
    int kvw = a.n_head_kv * D;
    if (slot < a.n_head) {
        int c = slot * D + i;
        x[i] = a.qg[(u64)t * a.qg_w + (a.q_cols ? a.q_cols[c] : c)];
        __syncthreads();
        if (a.q_norm) head_rms_norm(x, a.q_norm, a.eps, red);
        head_rope(x, pos, a.n_rot, a.base, a.neox);
        if (a.rot_k) head_fwht(x, a.rot_k);
        a.q_out[((u64)t * a.n_head + slot) * D + i] = x[i];
        return;
    }
    bool is_k = slot < a.n_head + a.n_head_kv;
    int h = is_k ? slot - a.n_head : slot - a.n_head - a.n_head_kv;
    x[i] = (is_k ? a.k : a.v)[(u64)t * kvw + h * D + i];
    __syncthreads();
    if (is_k) {
        if (a.k_norm) head_rms_norm(x, a.k_norm, a.eps, red);
        head_rope(x, pos, a.n_rot, a.base, a.neox);
    }
    int rot = is_k ? a.rot_k : a.rot_v;
    if (rot) head_fwht(x, rot);
    int ty = is_k ? a.kt : a.vt;
    if (i < D / 32) {
        u8* row = (is_k ? a.kc : a.vc) + (u64)pos * kv_bytes(ty, kvw) + kv_bytes(ty, D) * h;
        kv_store_block(x + 32 * i, row, i, ty);
    }
}

// After attending: each head of o (n × n_head·D) turned back by the values' Walsh–Hadamard
// rotation, times σ(gate) (columns gate_cols of the projection, when given), and, with q,
// also written in 8 bits for the output projection. grid (n_head, n), D threads.
extern "C" __global__ void attn_out(float* __restrict__ o, int n_head, int rot_v,
                                    const float* __restrict__ qg, const i32* __restrict__ gate_cols,
                                    int qg_w, i8* __restrict__ q, float* __restrict__ d) {
    __shared__ float x[D];
    int h = blockIdx.x, t = blockIdx.y, i = threadIdx.x;
    u64 at = ((u64)t * n_head + h) * D;
    x[i] = o[at + i];
    __syncthreads();
    if (rot_v) head_fwht(x, rot_v);
    float v = x[i];
    if (gate_cols) v *= sigmoidf_(qg[(u64)t * qg_w + gate_cols[h * D + i]]);
    o[at + i] = v;
    if (!q) return;
    __syncthreads();
    x[i] = v;
    __syncthreads();
    if (i < D / 8) q8_pack<8>(x + 8 * i, q, d, at + 8 * i);
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

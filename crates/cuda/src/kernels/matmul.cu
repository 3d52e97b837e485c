// Products with quantized weights, one module per weight type (`WTYPE`): embedding rows, the
// matrix × vector kernel for a few tokens (decode) and the tensor-core matrix × matrix kernel
// for many (prefill), both also over the chosen experts of a MoE layer.
//
// Weights are rows of ggml blocks (`row_bytes` apart; experts `expert_stride` apart);
// activations are f32 rows. `mmv` reads the weights once for up to 8 tokens, dequantizing
// in registers; `gemm` dequantizes 64×64 weight tiles to f16 in shared memory and multiplies
// them with f16 activation tiles on the tensor cores (mma.sync m16n8k16, f32 accumulate),
// the method of llama.cpp's dequantize-then-cuBLAS path without the round trip through memory.

// Embedding rows: out[t] = dequant(W[ids[t]]), K values a row.
extern "C" __global__ void get_rows(const u8* __restrict__ w, u64 row_bytes,
                                    const u32* __restrict__ ids, float* __restrict__ out, int K) {
    int t = blockIdx.y;
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g * 8 >= K) return;
    const u8* row = w + (u64)ids[t] * row_bytes;
    float y[8];
    deq_granule(row, g, y);
    float* o = out + (u64)t * K + g * 8;
#pragma unroll
    for (int i = 0; i < 8; i++) o[i] = y[i];
}

// One of up to four matrices a `mmv` launch multiplies with the same input (same type and
// row length): its weights, its output (rows of `m`) and its row count.
struct MmvMat {
    const u8* w;
    float* y;
    i32 m;
    i32 pad_;
};

struct MmvArgs {
    MmvMat mats[4];
    const float* x;    // activations
    const float* x2;   // null, or `up`: the input is then silu(x) ⊙ x2 (SwiGLU fused in)
    const i32* ids;    // per pair its expert (null: dense)
    u64 row_bytes;     // bytes of a weight row
    i32 n_mats;
    i32 K;             // values a row
    i32 n;             // dense: tokens (≤ MMV_MAX); ids: unused (grid.y pairs)
    i32 x_div;         // ids: pair p reads x row p / x_div
    i32 x_stride;      // floats between x rows
    i32 pad_;
};

#define MMV_MAX 8
#define MMV_WARPS 4
// Variants (set by the Rust side from LLM_SERVER_MMV, for measuring): warps sharing a row
// (each takes every MMV_SPLIT-th run of granules, partial sums joined in shared memory) and
// granules in flight per lane.
#ifndef MMV_SPLIT
#define MMV_SPLIT 1
#endif
#ifndef MMV_UNROLL
#define MMV_UNROLL 4
#endif
#define MMV_ROWS (MMV_WARPS / MMV_SPLIT)

// MMV_ROWS weight rows a block (rows of the launch's matrices one after the other), MMV_SPLIT
// warps a row; each lane takes granules of 8 values, MMV_UNROLL at a time so that many loads
// are in flight. Dense: every token of the call (up to 8) against the row; with `ids`:
// blockIdx.y is a (token, expert) pair.
extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32) mmv(MmvArgs a) {
    __shared__ float part[MMV_WARPS][MMV_MAX];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int split = warp % MMV_SPLIT;
    int r = blockIdx.x * MMV_ROWS + warp / MMV_SPLIT;
    int mi = 0;
    for (; mi + 1 < a.n_mats && r >= a.mats[mi].m; mi++) r -= a.mats[mi].m;
    const MmvMat mt = a.mats[mi];
    bool live = r < mt.m;
    const u8* w = mt.w;
    const float* x = a.x;
    const float* x2 = a.x2;
    int n = a.n, pair = blockIdx.y;
    bool skip = false;  // an expert not on this GPU (hybrid placement): its rows are 0
    if (a.ids) {
        int e = a.ids[pair];
        skip = e < 0;
        w += (u64)max(e, 0) * mt.m * a.row_bytes;
        u64 xo = (u64)(pair / a.x_div) * a.x_stride;
        x += xo;
        if (x2) x2 += xo;
        n = 1;
    }
    const u8* wr = w + (u64)r * a.row_bytes;
    float acc[MMV_MAX];
#pragma unroll
    for (int t = 0; t < MMV_MAX; t++) acc[t] = 0.0f;
    int ng = live && !skip ? a.K / 8 : 0;
    for (int g0 = 32 * split; g0 < ng; g0 += 32 * MMV_SPLIT * MMV_UNROLL) {
        // Loads with no branch between them (a lane past the row end re-reads the last
        // granule and drops it below), so the compiler issues them all before the first use.
        float wv[MMV_UNROLL][8];
#pragma unroll
        for (int u = 0; u < MMV_UNROLL; u++) {
            int g = min(g0 + lane + 32 * MMV_SPLIT * u, ng - 1);
            deq_granule(wr, g, wv[u]);
        }
#pragma unroll
        for (int u = 0; u < MMV_UNROLL; u++) {
            int g = g0 + lane + 32 * MMV_SPLIT * u;
            if (g >= ng) continue;
#pragma unroll
            for (int t = 0; t < MMV_MAX; t++) {
                if (t >= n) continue;
                u64 o = (u64)t * a.x_stride + g * 8;
                float4 x0 = *(const float4*)(x + o), x1 = *(const float4*)(x + o + 4);
                if (x2) {
                    float4 u0 = *(const float4*)(x2 + o), u1 = *(const float4*)(x2 + o + 4);
                    x0 = make_float4(siluf_(x0.x) * u0.x, siluf_(x0.y) * u0.y,
                                     siluf_(x0.z) * u0.z, siluf_(x0.w) * u0.w);
                    x1 = make_float4(siluf_(x1.x) * u1.x, siluf_(x1.y) * u1.y,
                                     siluf_(x1.z) * u1.z, siluf_(x1.w) * u1.w);
                }
                const float* v = wv[u];
                acc[t] += v[0] * x0.x + v[1] * x0.y + v[2] * x0.z + v[3] * x0.w + v[4] * x1.x +
                          v[5] * x1.y + v[6] * x1.z + v[7] * x1.w;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < MMV_MAX; t++) {
        if (t < n) {
            float s = warp_sum(acc[t]);
            if (MMV_SPLIT > 1 && lane == 0) part[warp][t] = s;
            acc[t] = s;
        }
    }
    if (MMV_SPLIT > 1) {
        __syncthreads();
        if (split != 0) return;
#pragma unroll
        for (int t = 0; t < MMV_MAX; t++)
            if (t < n)
                for (int k = 1; k < MMV_SPLIT; k++) acc[t] += part[warp + k][t];
    }
    if (!live || lane != 0) return;
#pragma unroll
    for (int t = 0; t < MMV_MAX; t++) {
        if (t < n) {
            int yr = a.ids ? pair : t;
            mt.y[(u64)yr * mt.m + r] = acc[t];
        }
    }
}

#ifndef MMV1_ROWS
#define MMV1_ROWS 2
#endif
#ifndef MMV1_UNROLL
#define MMV1_UNROLL 2
#endif

// `mmv` for one token (decode) or one (token, expert) pair a blockIdx.y: each warp takes
// MMV1_ROWS rows, so every granule of the input is loaded once for all of them and
// MMV1_ROWS × MMV1_UNROLL weight granules are in flight a lane.
extern "C" __global__ void __launch_bounds__(128) mmv1(MmvArgs a) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int r0 = (blockIdx.x * 4 + warp) * MMV1_ROWS;
    int pair = blockIdx.y;
    const float* x = a.x;
    const float* x2 = a.x2;
    u64 expert = 0;
    bool skip = false;  // an expert not on this GPU: its rows are 0
    if (a.ids) {
        int e = a.ids[pair];
        skip = e < 0;
        expert = (u64)max(e, 0);
        u64 xo = (u64)(pair / a.x_div) * a.x_stride;
        x += xo;
        if (x2) x2 += xo;
    }
    const u8* wr[MMV1_ROWS];
    float* yp[MMV1_ROWS];
    bool live[MMV1_ROWS];
#pragma unroll
    for (int k = 0; k < MMV1_ROWS; k++) {
        int r = r0 + k, mi = 0;
        for (; mi + 1 < a.n_mats && r >= a.mats[mi].m; mi++) r -= a.mats[mi].m;
        live[k] = r < a.mats[mi].m;
        r = min(r, a.mats[mi].m - 1);
        wr[k] = a.mats[mi].w + (expert * a.mats[mi].m + r) * a.row_bytes;
        yp[k] = a.mats[mi].y + (u64)pair * a.mats[mi].m + r;
    }
    float acc[MMV1_ROWS];
#pragma unroll
    for (int k = 0; k < MMV1_ROWS; k++) acc[k] = 0.0f;
    int ng = skip ? 0 : a.K / 8;
    for (int g0 = lane; g0 < ng; g0 += 32 * MMV1_UNROLL) {
        float wv[MMV1_ROWS][MMV1_UNROLL][8];
        float4 xv[MMV1_UNROLL][2];
#pragma unroll
        for (int u = 0; u < MMV1_UNROLL; u++) {
            int g = min(g0 + 32 * u, ng - 1);
#pragma unroll
            for (int k = 0; k < MMV1_ROWS; k++) deq_granule(wr[k], g, wv[k][u]);
            const float4* xp = (const float4*)(x + g * 8);
            xv[u][0] = xp[0];
            xv[u][1] = xp[1];
            if (x2) {
                const float4* up = (const float4*)(x2 + g * 8);
                float4 u0 = up[0], u1 = up[1], x0 = xv[u][0], x1 = xv[u][1];
                xv[u][0] = make_float4(siluf_(x0.x) * u0.x, siluf_(x0.y) * u0.y,
                                       siluf_(x0.z) * u0.z, siluf_(x0.w) * u0.w);
                xv[u][1] = make_float4(siluf_(x1.x) * u1.x, siluf_(x1.y) * u1.y,
                                       siluf_(x1.z) * u1.z, siluf_(x1.w) * u1.w);
            }
        }
#pragma unroll
        for (int u = 0; u < MMV1_UNROLL; u++) {
            if (g0 + 32 * u >= ng) continue;
            float4 x0 = xv[u][0], x1 = xv[u][1];
#pragma unroll
            for (int k = 0; k < MMV1_ROWS; k++) {
                const float* v = wv[k][u];
                acc[k] += v[0] * x0.x + v[1] * x0.y + v[2] * x0.z + v[3] * x0.w + v[4] * x1.x +
                          v[5] * x1.y + v[6] * x1.z + v[7] * x1.w;
            }
        }
    }
#pragma unroll
    for (int k = 0; k < MMV1_ROWS; k++) {
        float s = warp_sum(acc[k]);
        if (lane == 0 && live[k]) *yp[k] = s;
    }
}

#ifdef VDOT
#ifndef MMVQ_UNROLL
#define MMVQ_UNROLL 1
#endif
#ifndef MMVQ_R
#define MMVQ_R 1
#endif

// One matrix of a `mmvq` launch: with `dense`, blockIdx.y < n_dense is a token (activation
// row x_off + y, expert 0); otherwise blockIdx.y is a (token, expert) pair (expert ids[y],
// activation row x_off + y / x_div). Output row y.
struct MmvqMat {
    const u8* w;
    float* y;
    i32 m;
    i32 dense;
    i32 x_off;
    i32 pad_;
};

// `mmvq`'s parameters: up to four matrices of one type and row length, the activations
// quantized by `quant_q8`.
struct MmvqArgs {
    MmvqMat mats[4];
    const i8* xq;     // rows of K int8
    const float* xd;  // rows of K/32 scales
    const i32* ids;   // per pair its expert (for matrices that are not dense)
    u64 row_bytes;
    i32 n_mats;
    i32 K;
    i32 x_div;
    i32 n_dense;      // tokens of the dense matrices
    i32 lanes_log2;   // lanes a row: 32, or fewer for short rows (several rows a warp)
    i32 pad_;
};

// Rows of up to four matrices × one token or (token, expert) pair a blockIdx.y, with integer
// dot products on 8-bit activations. A row's units (UPB a block, each 16 to 32 values) are
// spread over 2^lanes_log2 lanes, MMVQ_UNROLL units in flight a lane; a lane group takes
// MMVQ_R rows (sharing the activations' loads), a warp 32 / lanes groups, a block 4 warps. (An expert launch can carry the shared expert's
// matrices as dense ones: their blocks past the tokens do nothing.)
extern "C" __global__ void __launch_bounds__(128) mmvq(MmvqArgs a) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int lanes = 1 << a.lanes_log2, sub = lane & (lanes - 1);
    int r0 = (((blockIdx.x * 4 + warp) << (5 - a.lanes_log2)) + (lane >> a.lanes_log2)) * MMVQ_R;
    int pair = blockIdx.y;
    const u8* w[MMVQ_R];
    const i8* xq[MMVQ_R];
    const float* xd[MMVQ_R];
    float* yp[MMVQ_R];
    bool live[MMVQ_R];
    bool any = false;
#pragma unroll
    for (int k = 0; k < MMVQ_R; k++) {
        int r = r0 + k, mi = 0;
        for (; mi + 1 < a.n_mats && r >= a.mats[mi].m; mi++) r -= a.mats[mi].m;
        const MmvqMat mt = a.mats[mi];
        live[k] = r < mt.m && (!mt.dense || pair < a.n_dense);
        r = min(r, mt.m - 1);
        u64 expert = 0, xr = (u64)mt.x_off + pair;
        bool skip = false;  // an expert not on this GPU: its rows are 0
        if (!mt.dense) {
            int e = a.ids[pair];
            skip = e < 0;
            expert = (u64)max(e, 0);
            xr = (u64)mt.x_off + pair / a.x_div;
        }
        any |= live[k] && !skip;
        xq[k] = a.xq + xr * a.K;
        xd[k] = a.xd + xr * (a.K / 32);
        w[k] = mt.w + (expert * mt.m + r) * a.row_bytes;
        yp[k] = mt.y + (u64)pair * mt.m + r;
    }
    int units = any ? a.K / QK * UPB : 0;
    float acc[MMVQ_R];
#pragma unroll
    for (int k = 0; k < MMVQ_R; k++) acc[k] = 0.0f;
    for (int u0 = sub; u0 < units; u0 += lanes * MMVQ_UNROLL) {
        float v[MMVQ_R][MMVQ_UNROLL];
#pragma unroll
        for (int i = 0; i < MMVQ_UNROLL; i++)
#pragma unroll
            for (int k = 0; k < MMVQ_R; k++)
                v[k][i] = VDOT(w[k], min(u0 + lanes * i, units - 1), xq[k], xd[k]);
#pragma unroll
        for (int i = 0; i < MMVQ_UNROLL; i++)
            if (u0 + lanes * i < units)
#pragma unroll
                for (int k = 0; k < MMVQ_R; k++) acc[k] += v[k][i];
    }
#pragma unroll
    for (int k = 0; k < MMVQ_R; k++) {
        float s = acc[k];
        for (int o = lanes >> 1; o > 0; o >>= 1) s += __shfl_xor_sync(FULL_MASK, s, o);
        if (sub == 0 && live[k]) *yp[k] = s;
    }
}
#endif

struct GemmArgs {
    const u8* w;
    const float* x;
    float* y;
    const i32* tiles;   // per tile {expert, first row, end row} (null: dense)
    const i32* n_tiles; // tiles in use (with `tiles`)
    const i32* x_rows;  // row r of the product reads x row x_rows[r] (null: row r)
    u64 row_bytes;
    u64 expert_stride;
    i32 K;
    i32 M;
    i32 N;              // dense: rows of x (tokens)
    i32 x_stride;
    i32 y_stride;
};

#define BM 64
#define BN 64
#define BK 64
#define PAD 8
#define LDS (BK + PAD)

__device__ __forceinline__ void mma16816(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                         u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// A 64 (weight rows) × 64 (product rows) tile of y = x·Wᵀ per block of 4 warps, each warp
// 32 × 32. Shared-memory rows are padded to 72 halves so the fragment loads of a warp fall
// in 32 different banks.
extern "C" __global__ void __launch_bounds__(128) gemm(GemmArgs a) {
    __shared__ __align__(16) u16 ws[BM * LDS];
    __shared__ __align__(16) u16 xs[BN * LDS];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int m0 = blockIdx.x * BM;
    int p0, p_end;
    const u8* w = a.w;
    if (a.tiles) {
        if ((int)blockIdx.y >= *a.n_tiles) return;
        const i32* t = a.tiles + 3 * blockIdx.y;
        w += (u64)t[0] * a.expert_stride;
        p0 = t[1];
        p_end = t[2];
    } else {
        p0 = blockIdx.y * BN;
        p_end = min(a.N, p0 + BN);
    }
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[i][j][c] = 0.0f;

    int g = lane >> 2, tq = lane & 3;
    for (int k0 = 0; k0 < a.K; k0 += BK) {
        // Weights: 64 rows × 8 granules, four granules a thread. Out-of-range granules read
        // an in-range one and are zeroed after, so no branch separates the loads.
        float wv[4][8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int q = tid + 128 * i;
            int r = min(m0 + (q >> 3), a.M - 1), k = min(k0 + (q & 7) * 8, a.K - 8);
            deq_granule(w + (u64)r * a.row_bytes, k / 8, wv[i]);
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int q = tid + 128 * i;
            int r = q >> 3, gk = q & 7;
            float* v = wv[i];
            if (m0 + r >= a.M || k0 + gk * 8 >= a.K) {
#pragma unroll
                for (int e = 0; e < 8; e++) v[e] = 0.0f;
            }
            uint4 h;
            h.x = pack_h2(v[0], v[1]);
            h.y = pack_h2(v[2], v[3]);
            h.z = pack_h2(v[4], v[5]);
            h.w = pack_h2(v[6], v[7]);
            *(uint4*)&ws[r * LDS + gk * 8] = h;
        }
        // Activations: 64 rows × 16 float4, eight a thread (clamped and zeroed likewise).
        float4 xv[8];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int q = tid + 128 * i;
            int p = min(p0 + (q >> 4), p_end - 1), k = min(k0 + (q & 15) * 4, a.K - 4);
            int xr = a.x_rows ? a.x_rows[p] : p;
            xv[i] = *(const float4*)(a.x + (u64)xr * a.x_stride + k);
        }
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int q = tid + 128 * i;
            int r = q >> 4, c4 = q & 15;
            float4 v = xv[i];
            if (p0 + r >= p_end || k0 + c4 * 4 >= a.K) v = make_float4(0.f, 0.f, 0.f, 0.f);
            uint2 h;
            h.x = pack_h2(v.x, v.y);
            h.y = pack_h2(v.z, v.w);
            *(uint2*)&xs[r * LDS + c4 * 4] = h;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            u32 af[2][4], bf[4][2];
            int c = kk + 2 * tq;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                int r = wm + 16 * i + g;
                af[i][0] = *(const u32*)&ws[r * LDS + c];
                af[i][1] = *(const u32*)&ws[(r + 8) * LDS + c];
                af[i][2] = *(const u32*)&ws[r * LDS + c + 8];
                af[i][3] = *(const u32*)&ws[(r + 8) * LDS + c + 8];
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int nn = wn + 8 * j + g;
                bf[j][0] = *(const u32*)&xs[nn * LDS + c];
                bf[j][1] = *(const u32*)&xs[nn * LDS + c + 8];
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    mma16816(acc[i][j], af[i][0], af[i][1], af[i][2], af[i][3], bf[j][0],
                             bf[j][1]);
        }
        __syncthreads();
    }
    // acc[i][j]: c0,c1 at (weight row g, product rows 2tq, 2tq+1), c2,c3 at weight row g+8.
#pragma unroll
    for (int i = 0; i < 2; i++) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int mr = m0 + wm + 16 * i + g;
            int pr = p0 + wn + 8 * j + 2 * tq;
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int m = mr + (c >> 1) * 8, p = pr + (c & 1);
                if (m < a.M && p < p_end) a.y[(u64)p * a.y_stride + m] = acc[i][j][c];
            }
        }
    }
}

// The gated DeltaNet of Qwen3.5 / Qwen3-Next (spec qwen35moe §4.2 steps 2–6): the short
// causal convolution with SiLU, and the delta rule in its recurrent form, token by token,
// one block per value head with the head's state (D_V rows × DK) in registers, a row a
// thread. q and k are L2-normalised per key head inside (step 4), the gates β = σ(b) and
// g = a·softplus(α + dt) computed per token (step 2). The CPU's prefill uses the chunked
// form; both compute the same recurrence.

// Convolution over n tokens of `cd` channels, one thread a channel: the window is the
// channel's d_conv − 1 stored inputs (oldest first) then the step's; taps [c][d_conv], the
// newest tap first then the others in order (the CPU's order). Writes silu(out) and keeps the
// last d_conv − 1 inputs.
extern "C" __global__ void conv(const float* __restrict__ mix, float* __restrict__ state,
                                const float* __restrict__ taps, float* __restrict__ y, int n,
                                int cd, int dc) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cd) return;
    float win[8];  // d_conv ≤ 8
    for (int i = 0; i < dc - 1; i++) win[i] = state[(u64)c * (dc - 1) + i];
    const float* tp = taps + (u64)c * dc;
    for (int t = 0; t < n; t++) {
        float x = mix[(u64)t * cd + c];
        float acc = tp[dc - 1] * x;
        for (int i = 0; i < dc - 1; i++) acc += tp[i] * win[i];
        y[(u64)t * cd + c] = siluf_(acc);
        for (int i = 0; i + 1 < dc - 1; i++) win[i] = win[i + 1];
        if (dc > 1) win[dc - 2] = x;
    }
    for (int i = 0; i < dc - 1; i++) state[(u64)c * (dc - 1) + i] = win[i];
}

// The same convolution for a prefill, parallel over tokens: thread (c, t) reads its window
// from the stored inputs and the step's, and writes silu(out); `conv_keep` then stores the last
// d_conv − 1 inputs (a second launch: every thread must have read the old state first).
extern "C" __global__ void conv_tokens(const float* __restrict__ mix, const float* __restrict__ state,
                                       const float* __restrict__ taps, float* __restrict__ y, int n,
                                       int cd, int dc) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (c >= cd) return;
    const float* tp = taps + (u64)c * dc;
    // Window position j (0 … n + dc − 2): stored input j, or the step's input j − (dc − 1).
    float acc = tp[dc - 1] * mix[(u64)t * cd + c];
    for (int i = 0; i < dc - 1; i++) {
        int j = t + i;
        float w = j < dc - 1 ? state[(u64)c * (dc - 1) + j] : mix[(u64)(j - (dc - 1)) * cd + c];
        acc += tp[i] * w;
    }
    y[(u64)t * cd + c] = siluf_(acc);
}

extern "C" __global__ void conv_keep(const float* __restrict__ mix, float* __restrict__ state, int n,
                                     int cd, int dc) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cd) return;
    float keep[8];
    for (int i = 0; i < dc - 1; i++) {
        int j = n + i;  // window position of the i-th newest-but-(dc − 2 − i) input
        keep[i] = j < dc - 1 ? state[(u64)c * (dc - 1) + j] : mix[(u64)(j - (dc - 1)) * cd + c];
    }
    for (int i = 0; i < dc - 1; i++) state[(u64)c * (dc - 1) + i] = keep[i];
}

#ifdef DK
struct DeltaArgs {
    const float* y;      // conv output, n × conv_dim: q (n_k_head·DK) ‖ k ‖ v (n_v_head·d_v)
    const float* beta;   // raw β projections, n × n_v_head
    const float* alpha;  // raw α projections, n × n_v_head
    const float* dt;     // n_v_head
    const float* a;      // n_v_head (−exp(A_log))
    float* state;        // n_v_head × d_v × DK
    float* o;            // n × n_v_head × d_v
    i32 n;
    i32 n_k_head;
    i32 n_v_head;
    i32 d_v;
    i32 grouped;         // value head j reads key head j / (n_v/n_k), else j mod n_k
    float eps;
};

#ifndef LPR
#define LPR 4
#endif
#define ROWS_W (32 / LPR)

// One warp per ROWS_W state rows of a value head (grid: value heads × d_v/ROWS_W); LPR lanes
// (a variant: 2, 4 or 8) hold the parts of one row in registers (a whole row of 128 would
// spill), read and written 16 bytes at a time. No block barriers: q and k go through the
// warp's shared memory with warp syncs, their norms and the parts' dot products through
// shuffles. The next token's inputs load while this one computes.
extern "C" __global__ void __launch_bounds__(32) delta_rule(DeltaArgs a) {
    __shared__ float qk[2 * DK];
    const int H = DK / LPR;
    int j = blockIdx.x, lane = threadIdx.x, part = lane % LPR;
    int row = blockIdx.y * ROWS_W + lane / LPR;
    int nk = a.n_k_head, nv = a.n_v_head;
    int kh = a.grouped ? j / (nv / nk) : j % nk;
    int kw = nk * DK, cd = 2 * kw + nv * a.d_v;
    float* st = a.state + ((u64)j * a.d_v + row) * DK + part * H;
    float s[H];
#pragma unroll
    for (int i = 0; i < H; i += 4) {
        float4 v = *(const float4*)(st + i);
        s[i] = v.x;
        s[i + 1] = v.y;
        s[i + 2] = v.z;
        s[i + 3] = v.w;
    }
    float dtj = a.dt[j], aj = a.a[j];
    float q_scale = 1.0f / sqrtf((float)DK);
    // The next token's inputs, loaded while this one computes.
    float nq[DK / 32], nkk[DK / 32], nb = 0.0f, na = 0.0f, nvv = 0.0f;
    auto fetch = [&](int t) {
        if (t >= a.n) return;
        const float* yt = a.y + (u64)t * cd;
#pragma unroll
        for (int c = 0; c < DK / 32; c++) {
            nq[c] = yt[kh * DK + lane + 32 * c];
            nkk[c] = yt[kw + kh * DK + lane + 32 * c];
        }
        nb = a.beta[(u64)t * nv + j];
        na = a.alpha[(u64)t * nv + j];
        nvv = yt[2 * kw + j * a.d_v + row];
    };
    fetch(0);
    for (int t = 0; t < a.n; t++) {
        float sq = 0.0f, sk = 0.0f;
#pragma unroll
        for (int c = 0; c < DK / 32; c++) {
            qk[lane + 32 * c] = nq[c];
            qk[DK + lane + 32 * c] = nkk[c];
            sq += nq[c] * nq[c];
            sk += nkk[c] * nkk[c];
        }
        float b = sigmoidf_(nb);
        float decay = expf(aj * softplusf_(na + dtj));
        float v = nvv;
        fetch(t + 1);
        sq = warp_sum(sq);
        sk = warp_sum(sk);
        float qn = q_scale / fmaxf(sqrtf(sq), a.eps);
        float kn = 1.0f / fmaxf(sqrtf(sk), a.eps);
        __syncwarp();
        const float* kk = qk + DK + part * H;
        const float* qq = qk + part * H;
        float kv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < H; i++) {
            s[i] *= decay;
            kv[i & 3] += s[i] * kk[i];
        }
        float kvs = kv[0] + kv[1] + kv[2] + kv[3];
#pragma unroll
        for (int o = 1; o < LPR; o <<= 1) kvs += __shfl_xor_sync(FULL_MASK, kvs, o);
        float u = b * (v - kvs * kn) * kn;
        float out[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < H; i++) {
            s[i] += u * kk[i];
            out[i & 3] += s[i] * qq[i];
        }
        float o = out[0] + out[1] + out[2] + out[3];
#pragma unroll
        for (int x = 1; x < LPR; x <<= 1) o += __shfl_xor_sync(FULL_MASK, o, x);
        if (part == 0) a.o[((u64)t * nv + j) * a.d_v + row] = o * qn;
        __syncwarp();
    }
#pragma unroll
    for (int i = 0; i < H; i += 4) *(float4*)(st + i) = make_float4(s[i], s[i + 1], s[i + 2], s[i + 3]);
}
#endif

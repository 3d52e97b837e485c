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

// One warp per 32 state rows of a value head (grid: value heads × d_v/32); lane `l` owns row
// 32·blockIdx.y + l in registers. No block barriers: q and k go through the warp's shared
// memory with warp syncs, their norms through shuffles.
extern "C" __global__ void __launch_bounds__(32) delta_rule(DeltaArgs a) {
    __shared__ float qk[2 * DK];
    int j = blockIdx.x, lane = threadIdx.x, row = blockIdx.y * 32 + lane;
    int nk = a.n_k_head, nv = a.n_v_head;
    int kh = a.grouped ? j / (nv / nk) : j % nk;
    int kw = nk * DK, cd = 2 * kw + nv * a.d_v;
    float* st = a.state + ((u64)j * a.d_v + row) * DK;
    float s[DK];
#pragma unroll
    for (int i = 0; i < DK; i++) s[i] = st[i];
    float dtj = a.dt[j], aj = a.a[j];
    float q_scale = 1.0f / sqrtf((float)DK);
    for (int t = 0; t < a.n; t++) {
        const float* yt = a.y + (u64)t * cd;
        float sq = 0.0f, sk = 0.0f;
#pragma unroll
        for (int i = lane; i < DK; i += 32) {
            float qv = yt[kh * DK + i], kv = yt[kw + kh * DK + i];
            qk[i] = qv;
            qk[DK + i] = kv;
            sq += qv * qv;
            sk += kv * kv;
        }
        sq = warp_sum(sq);
        sk = warp_sum(sk);
        float qn = q_scale / fmaxf(sqrtf(sq), a.eps);
        float kn = 1.0f / fmaxf(sqrtf(sk), a.eps);
        float b = sigmoidf_(a.beta[(u64)t * nv + j]);
        float g = aj * softplusf_(a.alpha[(u64)t * nv + j] + dtj);
        float decay = expf(g);
        float v = yt[2 * kw + j * a.d_v + row];
        __syncwarp();
        float kv = 0.0f;
#pragma unroll
        for (int i = 0; i < DK; i++) {
            s[i] *= decay;
            kv += s[i] * (qk[DK + i] * kn);
        }
        float u = b * (v - kv);
        float out = 0.0f;
#pragma unroll
        for (int i = 0; i < DK; i++) {
            s[i] += u * (qk[DK + i] * kn);
            out += s[i] * (qk[i] * qn);
        }
        a.o[((u64)t * nv + j) * a.d_v + row] = out;
        __syncwarp();
    }
#pragma unroll
    for (int i = 0; i < DK; i++) st[i] = s[i];
}
#endif

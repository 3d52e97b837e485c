// Element-wise ops between matmuls: residual adds, scales, biases, gates, gated activations,
// column gathers, soft-capping, and the sigmoid-gated add of Qwen's shared expert.

extern "C" __global__ void add(float* __restrict__ h, const float* __restrict__ a, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) h[i] += a[i];
}

extern "C" __global__ void scale(float* __restrict__ x, float c, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= c;
}

extern "C" __global__ void add_bias(float* __restrict__ x, const float* __restrict__ b,
                                    int width, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += b[i % width];
}

// x ⊙= σ(g)
extern "C" __global__ void sigmoid_mul(float* __restrict__ x, const float* __restrict__ g,
                                       u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= sigmoidf_(g[i]);
}

// gate = silu(gate) ⊙ up
extern "C" __global__ void glu_silu(float* __restrict__ gate, const float* __restrict__ up,
                                    u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) gate[i] = siluf_(gate[i]) * up[i];
}

// gate = gelu(gate) ⊙ up, GELU in its tanh form at f16 precision as ggml's CPU computes it
// (input rounded to f16, result rounded to f16; 0 below −10, identity above 10).
extern "C" __global__ void glu_gelu(float* __restrict__ gate, const float* __restrict__ up,
                                    u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = gate[i], g;
    if (x <= -10.0f) {
        g = 0.0f;
    } else if (x >= 10.0f) {
        g = x;
    } else {
        float xh = h2f(f2h(x));
        g = 0.5f * xh * (1.0f + tanhf(0.7978846f * xh * (1.0f + 0.044715f * xh * xh)));
        g = h2f(f2h(g));
    }
    gate[i] = g * up[i];
}

// y[t][j] = x[t][cols[j]]
extern "C" __global__ void gather_cols(const float* __restrict__ x, const u32* __restrict__ cols,
                                       float* __restrict__ y, int w_in, int w_out, int n) {
    int t = blockIdx.y;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j < w_out && t < n) y[(u64)t * w_out + j] = x[(u64)t * w_in + cols[j]];
}

extern "C" __global__ void softcap(float* __restrict__ x, float c, u64 n) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = tanhf(x[i] / c) * c;
}

// The greedy sampler's arg-max over each row of logits (ties to the lower id), one block a row.
extern "C" __global__ void argmax(const float* __restrict__ x, int width, i32* __restrict__ out) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    const float* r = x + (u64)blockIdx.x * width;
    float best = NEG_INF;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = r[i];
        if (v > best) {
            best = v;
            idx = i;
        }
    }
    warp_argmax(&best, &idx);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        bv[warp] = best;
        bi[warp] = idx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (bv[w] > best || (bv[w] == best && bi[w] < idx)) {
                best = bv[w];
                idx = bi[w];
            }
        out[blockIdx.x] = idx;
    }
}

// Activations to 8 bits for `mmvq`: each block of 32 values of a row → int8 q = round(v/d)
// with d = max|v| / 127 (llama.cpp's q8_1 without the sum), q rows of k bytes and d rows of
// k/32 floats. With `x2` the values are silu(x) ⊙ x2 (a SwiGLU's down-projection input).
// Eight values a thread, a block of 32 over four lanes.
extern "C" __global__ void quant_q8(const float* __restrict__ x, const float* __restrict__ x2,
                                    int stride, int k, int rows, i8* __restrict__ q,
                                    float* __restrict__ d) {
    int per = k >> 3;
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    int total = rows * per;
    int row = min(g, total - 1) / per, c = min(g, total - 1) - row * per;
    const float* xp = x + (u64)row * stride + 8 * c;
    float4 a = *(const float4*)xp, b = *(const float4*)(xp + 4);
    float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    if (x2) {
        const float* up = x2 + (u64)row * stride + 8 * c;
        float4 ua = *(const float4*)up, ub = *(const float4*)(up + 4);
        float u[8] = {ua.x, ua.y, ua.z, ua.w, ub.x, ub.y, ub.z, ub.w};
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = siluf_(v[i]) * u[i];
    }
    if (g >= total) return;  // whole blocks of 32: the lanes of a block leave together
    q8_pack<8>(v, q, d, (u64)row * k + 8 * c);
}

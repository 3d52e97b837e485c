// Norms: RMS norm of each group of `w`'s width (a row, or a head) times `w`, and DeltaNet's
// output norm gated by silu(z). One warp per group.

// y = x / sqrt(mean(x²) + eps) ⊙ w, groups of `width` values; y may be x.
extern "C" __global__ void rms_norm(const float* x, const float* __restrict__ w, float* y,
                                    int width, int n_groups, float eps) {
    int grp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (grp >= n_groups) return;
    const float* xr = x + (u64)grp * width;
    float* yr = y + (u64)grp * width;
    float ss = 0.0f;
    for (int i = lane; i < width; i += 32) ss += xr[i] * xr[i];
    ss = warp_sum(ss);
    float scale = 1.0f / sqrtf(ss / (float)width + eps);
    for (int i = lane; i < width; i += 32) yr[i] = xr[i] * scale * w[i];
}

// The same for wide rows: one block (256 threads) a row.
extern "C" __global__ void rms_norm_rows(const float* x, const float* __restrict__ w, float* y,
                                         int width, float eps) {
    __shared__ float red[32];
    const float* xr = x + (u64)blockIdx.x * width;
    float* yr = y + (u64)blockIdx.x * width;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    float scale = 1.0f / sqrtf(ss / (float)width + eps);
    for (int i = threadIdx.x; i < width; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
}

// h += a, then y = rms_norm(h) ⊙ w: a residual add and the next norm, one block a row. With
// `q` (width a multiple of 32), y also in 8 bits for `mmvq` (q rows of width bytes, scales
// d), eight values a thread.
extern "C" __global__ void add_norm(float* __restrict__ h, const float* __restrict__ a,
                                    const float* __restrict__ w, float* __restrict__ y, int width,
                                    float eps, i8* __restrict__ q, float* __restrict__ d) {
    __shared__ float red[32];
    u64 base = (u64)blockIdx.x * width;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = h[base + i] + a[base + i];
        h[base + i] = v;
        ss += v * v;
    }
    ss = block_sum(ss, red);
    float scale = 1.0f / sqrtf(ss / (float)width + eps);
    if (!q) {
        for (int i = threadIdx.x; i < width; i += blockDim.x)
            y[base + i] = h[base + i] * scale * w[i];
        return;
    }
    for (int i0 = 8 * threadIdx.x; i0 < width; i0 += 8 * blockDim.x) {
        float v[8];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            v[i] = h[base + i0 + i] * scale * w[i0 + i];
            y[base + i0 + i] = v[i];
        }
        q8_pack<8>(v, q, d, base + i0);
    }
}

// The residual add and the next norm with the row held in registers: `add_norm`'s result for
// rows of up to 16,384 values, a multiple of 4 (four adjacent values a thread, AN_J chunks of
// 4·blockDim values). The added row is `a`, or the MoE's weighted sum of the chosen experts'
// outputs plus the gated shared expert (`moe_combine`'s sum, never written out). One block a
// row; blockDim a multiple of 32.
#define AN_J 4
struct Combine {
    const float* out;      // the pairs' expert outputs (rows of width)
    const i32* slot_of;    // row of pair p, or null: p
    const float* weights;  // k a token
    const float* sh;       // the shared expert's output, or null
    const float* gate;     // its gate vector (width), or null
    const float* x;        // the MoE's input (for the gate's dot product)
    const float* host;     // the RAM-resident experts' weighted sum (hybrid), or null
    int k;
};

__device__ __forceinline__ void add_norm_regs(float* __restrict__ h, const float* __restrict__ a,
                                              const Combine* c, const float* __restrict__ w,
                                              float* __restrict__ y, int width, float eps,
                                              i8* __restrict__ q, float* __restrict__ d) {
    __shared__ float red[32];
    int t = blockIdx.x;
    u64 base = (u64)t * width;
    int step = 4 * blockDim.x;
    float s = 1.0f;
    if (c && c->sh && c->gate) {
        float g = 0.0f;
        for (int i = threadIdx.x; i < width; i += blockDim.x) g += c->gate[i] * c->x[base + i];
        s = sigmoidf_(block_sum(g, red));
    }
    float v[AN_J][4];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < AN_J; j++) {
        int c0 = 4 * threadIdx.x + j * step;
        if (c0 >= width) break;
        float4 hv = *(const float4*)(h + base + c0);
        float4 av;
        if (c) {
            av = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            for (int i = 0; i < c->k; i++) {
                int p = t * c->k + i;
                int r = c->slot_of ? c->slot_of[p] : p;
                if (r < 0) continue;
                float wt = c->weights[p];
                float4 o = *(const float4*)(c->out + (u64)r * width + c0);
                av.x += wt * o.x; av.y += wt * o.y; av.z += wt * o.z; av.w += wt * o.w;
            }
            if (c->host) {
                float4 o = *(const float4*)(c->host + base + c0);
                av.x += o.x; av.y += o.y; av.z += o.z; av.w += o.w;
            }
            if (c->sh) {
                float4 o = *(const float4*)(c->sh + base + c0);
                av.x += s * o.x; av.y += s * o.y; av.z += s * o.z; av.w += s * o.w;
            }
        } else {
            av = *(const float4*)(a + base + c0);
        }
        v[j][0] = hv.x + av.x; v[j][1] = hv.y + av.y; v[j][2] = hv.z + av.z; v[j][3] = hv.w + av.w;
        *(float4*)(h + base + c0) = make_float4(v[j][0], v[j][1], v[j][2], v[j][3]);
#pragma unroll
        for (int i = 0; i < 4; i++) ss += v[j][i] * v[j][i];
    }
    ss = block_sum(ss, red);
    float scale = 1.0f / sqrtf(ss / (float)width + eps);
#pragma unroll
    for (int j = 0; j < AN_J; j++) {
        int c0 = 4 * threadIdx.x + j * step;
        if (c0 >= width) break;
        float4 wv = *(const float4*)(w + c0);
        v[j][0] *= scale * wv.x; v[j][1] *= scale * wv.y; v[j][2] *= scale * wv.z; v[j][3] *= scale * wv.w;
        *(float4*)(y + base + c0) = make_float4(v[j][0], v[j][1], v[j][2], v[j][3]);
        if (q) q8_pack<4>(v[j], q, d, base + c0);
    }
}

extern "C" __global__ void add_norm_r(float* __restrict__ h, const float* __restrict__ a,
                                      const float* __restrict__ w, float* __restrict__ y,
                                      int width, float eps, i8* __restrict__ q,
                                      float* __restrict__ d) {
    add_norm_regs(h, a, nullptr, w, y, width, eps, q, d);
}

// h += the MoE's sum (see Combine), then the next norm: `moe_combine` and `add_norm` in one.
extern "C" __global__ void moe_combine_norm(float* __restrict__ h, Combine c,
                                            const float* __restrict__ w, float* __restrict__ y,
                                            int width, float eps, i8* __restrict__ q,
                                            float* __restrict__ d) {
    add_norm_regs(h, nullptr, &c, w, y, width, eps, q, d);
}

// y = rms_norm(o) ⊙ w ⊙ silu(z), groups of `width` (spec qwen35moe §4.2 step 7). With `q`
// (width a multiple of 32), y also in 8 bits for `mmvq`, four values a lane.
extern "C" __global__ void norm_gate(const float* __restrict__ o, const float* __restrict__ w,
                                     const float* __restrict__ z, float* __restrict__ y,
                                     int width, int n_groups, float eps, i8* __restrict__ q,
                                     float* __restrict__ d) {
    int grp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (grp >= n_groups) return;
    u64 base = (u64)grp * width;
    float ss = 0.0f;
    for (int i = lane; i < width; i += 32) ss += o[base + i] * o[base + i];
    ss = warp_sum(ss);
    float scale = 1.0f / sqrtf(ss / (float)width + eps);
    if (!q) {
        for (int i = lane; i < width; i += 32)
            y[base + i] = o[base + i] * scale * w[i] * siluf_(z[base + i]);
        return;
    }
    for (int i0 = 4 * lane; i0 < width; i0 += 128) {
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            v[i] = o[base + i0 + i] * scale * w[i0 + i] * siluf_(z[base + i0 + i]);
            y[base + i0 + i] = v[i];
        }
        q8_pack<4>(v, q, d, base + i0);
    }
}

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

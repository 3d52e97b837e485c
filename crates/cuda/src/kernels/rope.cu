// RoPE for a batch of rows at positions pos0[0] + t (read from device memory, so a recorded
// decode step replays for any position): θ_i = pos · base^(−2i/n_rot), pairs (2i, 2i+1)
// (normal) or (i, i + n_rot/2) (NeoX); dimensions past n_rot pass through (llama.cpp
// ggml_rope_ext without scaling, as ops::Rope::apply).

extern "C" __global__ void rope(float* __restrict__ x, const i32* __restrict__ pos0, int n,
                                int n_heads, int head_dim, int n_rot, float base, int neox) {
    int half = n_rot / 2;
    u64 idx = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 total = (u64)n * n_heads * half;
    if (idx >= total) return;
    int i = idx % half;
    u64 th = idx / half;  // t · n_heads + head
    int t = th / n_heads;
    float pos = (float)(pos0[0] + t);
    float theta = pos * powf(base, -2.0f * (float)i / (float)n_rot);
    float s, c;
    sincosf(theta, &s, &c);
    float* hd = x + th * head_dim;
    int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
    float x0 = hd[ia], x1 = hd[ib];
    hd[ia] = x0 * c - x1 * s;
    hd[ib] = x0 * s + x1 * c;
}

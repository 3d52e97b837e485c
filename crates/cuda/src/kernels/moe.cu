// The routing half of a MoE layer (llama.cpp `build_moe_ffn`, softmax gating, top-k weights
// renormalised): the top-k choice per token, the sort of (token, expert) pairs by expert for
// the grouped products, and the weighted sum of the experts' outputs.

// One warp per token: softmax over the router logits (up to 1024, held in registers, 32 a
// lane), then k rounds of a warp arg-max (ties to the lower expert id, as the CPU's sort),
// weights renormalised over the chosen k with ggml's clamp of the sum.
__device__ __forceinline__ void topk_row(const float* __restrict__ l, int n_expert, int k, int t,
                                         i32* __restrict__ ids, float* __restrict__ weights) {
    int lane = threadIdx.x & 31;
    float lv[32];
    float mx = NEG_INF;
#pragma unroll
    for (int i = 0; i < 32; i++) {
        int e = lane + 32 * i;
        lv[i] = e < n_expert ? l[e] : NEG_INF;
        mx = fmaxf(mx, lv[i]);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; i++)
        if (lane + 32 * i < n_expert) sum += expf(lv[i] - mx);
    sum = warp_sum(sum);
    float chosen_sum = 0.0f;
    float my_p = 0.0f;
    int my_e = -1;
    for (int r = 0; r < k; r++) {
        float best = NEG_INF;
        int be = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            if (lv[i] > best) {  // strict: the lowest index wins a tie within the lane
                best = lv[i];
                be = lane + 32 * i;
            }
        }
        warp_argmax(&best, &be);
        float p = expf(best - mx) / sum;
        chosen_sum += p;
        if ((be & 31) == lane) {
#pragma unroll
            for (int i = 0; i < 32; i++)
                if (i == (be >> 5)) lv[i] = NEG_INF;  // taken (constant indices: registers)
        }
        if (lane == r) {
            my_p = p;
            my_e = be;
        }
    }
    float s = fmaxf(chosen_sum, 6.103515625e-5f);
    if (lane < k) {
        ids[(u64)t * k + lane] = my_e;
        weights[(u64)t * k + lane] = my_p / s;
    }
}

// With `slot` (hybrid placement: per expert its slot on this GPU, or −1 where it stays in
// RAM), `gids` gets each pair's slot for the GPU's expert products.
extern "C" __global__ void topk(const float* __restrict__ logits, int n_expert, int k, int n,
                                i32* __restrict__ ids, float* __restrict__ weights,
                                const i32* __restrict__ slot, i32* __restrict__ gids) {
    int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= n) return;
    topk_row(logits + (u64)t * n_expert, n_expert, k, t, ids, weights);
    if (slot) {
        __syncwarp();
        int lane = threadIdx.x & 31;
        if (lane < k) gids[(u64)t * k + lane] = slot[ids[(u64)t * k + lane]];
    }
}

// Decode's router product and top-k in one launch (one token, f32 router weights `K` wide,
// K a multiple of 4): a warp a router row, then the last block to finish — counted in `done`,
// which it sets back to 0 for the next launch (graph replays) — chooses the k experts as
// `topk` does, from the logits as every block left them (read past L1).
extern "C" __global__ void __launch_bounds__(128) route1(const float* __restrict__ w,
                                                        const float* __restrict__ x, int K,
                                                        int n_expert, int k, float* logits,
                                                        unsigned* done, i32* __restrict__ ids,
                                                        float* __restrict__ weights,
                                                        const i32* __restrict__ slot,
                                                        i32* __restrict__ gids) {
    __shared__ bool last;
    __shared__ float sl[1024];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int r = blockIdx.x * 4 + warp;
    if (r < n_expert) {
        const float4* wr = (const float4*)(w + (u64)r * K);
        const float4* xv = (const float4*)x;
        float acc = 0.0f;
        for (int i = lane; i < K / 4; i += 32) {
            float4 a = wr[i], b = xv[i];
            acc += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
        }
        acc = warp_sum(acc);
        if (lane == 0) logits[r] = acc;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last || warp != 0) return;
    for (int e = lane; e < n_expert; e += 32) sl[e] = __ldcg(logits + e);
    __syncwarp();
    if (lane == 0) *done = 0u;
    topk_row(sl, n_expert, k, 0, ids, weights);
    if (slot) {
        __syncwarp();
        if (lane < k) gids[lane] = slot[ids[lane]];
    }
}

// Pairs (token t, slot i) = p = t·k + i sorted by expert, in one block: `slot_of[p]` its
// position in expert order, `x_row[pos]` the token it reads, and tiles of up to `tile` rows
// of one expert ({expert, first, end}) for the grouped product; `n_tiles[0]` their number.
// Dynamic shared memory: 2·n_expert ints.
extern "C" __global__ void moe_sort(const i32* __restrict__ ids, int n_pairs, int k,
                                    int n_expert, int tile, i32* __restrict__ slot_of,
                                    i32* __restrict__ x_row, i32* __restrict__ tiles,
                                    i32* __restrict__ n_tiles) {
    extern __shared__ i32 sh[];
    i32* count = sh;
    i32* cursor = sh + n_expert;
    for (int e = threadIdx.x; e < n_expert; e += blockDim.x) count[e] = 0;
    __syncthreads();
    for (int p = threadIdx.x; p < n_pairs; p += blockDim.x)
        if (ids[p] >= 0) atomicAdd(&count[ids[p]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int off = 0, nt = 0;
        for (int e = 0; e < n_expert; e++) {
            int c = count[e];
            cursor[e] = off;
            for (int s = 0; s < c; s += tile) {
                tiles[3 * nt] = e;
                tiles[3 * nt + 1] = off + s;
                tiles[3 * nt + 2] = off + min(c, s + tile);
                nt++;
            }
            off += c;
        }
        n_tiles[0] = nt;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < n_pairs; p += blockDim.x) {
        if (ids[p] < 0) {  // an expert in RAM (hybrid placement): no row here
            slot_of[p] = -1;
            continue;
        }
        int pos = atomicAdd(&cursor[ids[p]], 1);
        slot_of[p] = pos;
        x_row[pos] = p / k;
    }
}

// y[t] = Σ_i weights[t·k + i] · out[row(t·k + i)] (row = slot_of[p], or p when null; none
// where it is −1), plus the shared expert's output sh[t] scaled by σ(gate · x[t]) (by 1
// without a gate; nothing without a shared expert), plus `host[t]` (the weighted sum of the
// experts computed in RAM, hybrid placement) where given. Block (t, c) takes columns 256c.. of token t (each block of a
// token forms the gate's dot product itself: a row of x, cheaper than a launch).
extern "C" __global__ void moe_combine(const float* __restrict__ out, const i32* __restrict__ slot_of,
                                       const float* __restrict__ weights, const float* __restrict__ sh,
                                       const float* __restrict__ gate, const float* __restrict__ x,
                                       const float* __restrict__ host, float* __restrict__ y,
                                       int k, int width) {
    __shared__ float red[32];
    int t = blockIdx.x;
    u64 base = (u64)t * width;
    float s = 1.0f;
    if (sh && gate) {
        float d = 0.0f;
        for (int i = threadIdx.x; i < width; i += blockDim.x) d += gate[i] * x[base + i];
        s = sigmoidf_(block_sum(d, red));
    }
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= width) return;
    float acc = 0.0f;
    for (int i = 0; i < k; i++) {
        int p = t * k + i;
        int r = slot_of ? slot_of[p] : p;
        if (r >= 0) acc += weights[p] * out[(u64)r * width + c];
    }
    if (sh) acc += s * sh[base + c];
    if (host) acc += host[base + c];
    y[base + c] = acc;
}

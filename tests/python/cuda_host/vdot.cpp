// One weight row (the blocks of type WTYPE in argv[1]) dotted with 8-bit activations (int8
// values in argv[2], one f32 scale a block of 32 in argv[3]) by quant.cuh's VDOT, unit by unit
// as mmvq sums them; the f32 result to stdout.
#include "shim.h"
#include "quant_host.cuh"
#include <vector>
static std::vector<u8> slurp(const char* path) {
    std::vector<u8> buf;
    FILE* f = fopen(path, "rb");
    if (!f) exit(2);
    u8 tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) buf.insert(buf.end(), tmp, tmp + n);
    fclose(f);
    return buf;
}
int main(int argc, char** argv) {
    if (argc != 4) return 2;
    std::vector<u8> w = slurp(argv[1]), xq = slurp(argv[2]), xd = slurp(argv[3]);
    int k = (int)(w.size() / BLOCK_BYTES) * QK;
    if ((int)xq.size() != k || (int)xd.size() != k / 8) return 3;
    float acc = 0.0f;
    for (int u = 0; u < k / QK * UPB; u++)
        acc += VDOT(w.data(), u, (const i8*)xq.data(), (const float*)xd.data());
    fwrite(&acc, 4, 1, stdout);
    return 0;
}

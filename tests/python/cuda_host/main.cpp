// Dequantize a file of ggml blocks of type WTYPE (set with -D) with quant.cuh's device
// functions compiled for the host; f32 values to stdout.
#include "shim.h"
#include "quant_host.cuh"
#include <vector>
int main(int argc, char** argv) {
    if (argc != 2) return 2;
    FILE* f = fopen(argv[1], "rb");
    if (!f) return 2;
    std::vector<u8> buf;
    u8 tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) buf.insert(buf.end(), tmp, tmp + n);
    for (size_t b = 0; b + BLOCK_BYTES <= buf.size(); b += BLOCK_BYTES)
        for (int j = 0; j < QK; j += 8) {
            float y[8];
            deq8(&buf[b], j, y);
            fwrite(y, 4, 8, stdout);
        }
    return 0;
}

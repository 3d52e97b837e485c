# llm-server in a container: a build stage compiles the release binary; the runtime stage is
# NVIDIA's CUDA *runtime* image, which carries the driver-facing libraries the binary opens at
# run time (NVRTC for the kernels, cuBLAS) — no CUDA toolkit and nothing CUDA linked in. The
# GPU comes from the host (`--gpus all` / the compose file's device reservation); without one
# the server says so and runs on the CPU.
#
#   docker build -t llm-server .
#   docker run --gpus all -p 8080:8080 -v $PWD/models:/models llm-server \
#       serve --host 0.0.0.0 -m /models/Qwen3.5-35B-A3B-Q4_K_M.gguf -c 65536
#
# Versions are build arguments, pinned here.
ARG RUST_VERSION=1.95.0
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p llm-server \
    && install -D -m 0755 target/release/llm-server /out/bin/llm-server \
    && install -D -m 0644 models/demo-moe-f16.gguf /out/share/llm-server/demo-moe-f16.gguf

FROM ${CUDA_IMAGE} AS runtime
# curl for the health check only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/bin/llm-server /usr/local/bin/llm-server
# The shipped demo model, found by `serve` without -m (share/llm-server beside bin/).
COPY --from=build /out/share/llm-server /usr/local/share/llm-server
RUN useradd --create-home --uid 10001 llm \
    && mkdir -p /models /home/llm/.cache/llm-server \
    && chown -R llm:llm /models /home/llm/.cache
USER llm
# Model files are mounted here; the kernel cache (NVRTC output) persists in the home volume.
VOLUME ["/models"]
ENV LLM_SERVER_CUDA_CACHE=/home/llm/.cache/llm-server/cuda
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["llm-server"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]

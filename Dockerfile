# The oxinfer model server image: the release binary (default features: tract, onnxruntime,
# candle, plugin), the ONNX Runtime library it loads at run time, CA certificates, nothing else.
# See docs/deploying.md.
#
#   docker build -t oxinfer:0.1.0 \
#     --build-arg VERSION=0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# The base images below are pinned by tag. A tag can be moved by its publisher: in a release
# pipeline pin them by digest as well, e.g.
#   --build-arg RUNTIME_IMAGE=debian:12.12-slim@sha256:<digest>
# (`docker buildx imagetools inspect debian:12.12-slim` prints the digest).

ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG RUNTIME_IMAGE=debian:12.12-slim

# --- 1. the binary ------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Only what the workspace needs to build (.dockerignore keeps the rest out of the context).
COPY . .
RUN cargo build --release --locked -p oxinfer \
    && install -D -m 0755 target/release/oxinfer /out/oxinfer

# --- 2. the ONNX Runtime library, from the pinned PyPI wheel -------------------------------------
# The same wheel (and so the same library) the test suite runs against
# (tests/python/requirements.txt). Only the shared library is kept.
FROM ${PYTHON_IMAGE} AS ort
ARG ORT_VERSION=1.31.1
WORKDIR /wheel
RUN pip download --no-cache-dir --no-deps --only-binary=:all: --dest /wheel "onnxruntime==${ORT_VERSION}" \
    && python -c "import glob, zipfile; zipfile.ZipFile(glob.glob('/wheel/onnxruntime-*.whl')[0]).extract('onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}', '/wheel/x')" \
    && install -D -m 0644 "/wheel/x/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" "/out/libonnxruntime.so.${ORT_VERSION}"

# --- 3. the runtime image ------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
ARG ORT_VERSION=1.31.1
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://example.invalid/oxinfer
LABEL org.opencontainers.image.title="oxinfer" \
      org.opencontainers.image.description="Model server for the Open Inference Protocol (KServe v2), REST and gRPC" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

# CA certificates from the build stage's Debian (no package manager run in this stage).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=ort /out/ /opt/onnxruntime/lib/
COPY --from=build /out/oxinfer /usr/local/bin/oxinfer

# The image runs with a read-only root filesystem. The only paths it writes are these two
# (volumes in Kubernetes, --tmpfs / -v with docker run) and /tmp:
#   /var/cache/oxinfer   the model cache for models named by URI (XDG_CACHE_HOME/oxinfer)
#   /var/lib/oxinfer     the inference log, when [inference_log] points there
RUN mkdir -p /var/cache/oxinfer /var/lib/oxinfer \
    && chown 65532:65532 /var/cache/oxinfer /var/lib/oxinfer

ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    XDG_CACHE_HOME=/var/cache \
    OXINFER_LOG_FORMAT=json

# An unprivileged user by number (no passwd entry needed; Kubernetes' runAsNonRoot can check it).
USER 65532:65532

# 8080: HTTP (OIP REST, /metrics, health); 8081: gRPC (inference.GRPCInferenceService,
# grpc.health.v1).
EXPOSE 8080 8081

ENTRYPOINT ["oxinfer"]
# KServe's single-model form: the storage initializer puts the model under /mnt/models and the
# model is served as "model" (the KServe ServingRuntime passes the InferenceService name instead).
CMD ["serve", "--model-dir", "/mnt/models", "--model-name", "model", "--http", "0.0.0.0:8080", "--grpc", "0.0.0.0:8081", "--log-format", "json"]

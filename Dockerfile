# godwit as a container image: `docker build -t godwit .`
#
# Two stages: the Rust toolchain builds a release binary (`cargo build --release --locked`,
# dependencies in a layer of their own so a source change recompiles only godwit), and the
# runtime is distroless/cc (glibc, libgcc, CA certificates, no shell, no package manager)
# running as the unprivileged numeric user 65532.
#
# The container runs `godwit ARGS`, e.g.
#   docker run --rm -e DATABASE_URL=... godwit run s3://bucket/pipelines/orders.toml --once
# Its health check is `godwit health`, which asks `godwit run`'s /healthz on port 9187: set
# `[metrics] listen = "0.0.0.0:9187"` in the pipeline of a long-running CDC container (a
# batch container without it reports "unhealthy", which changes nothing for a --once run).

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /build

# Dependencies only: rebuilt when Cargo.toml or Cargo.lock change, cached otherwise.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# godwit itself. The touch makes cargo see the real sources as newer than the placeholders.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/godwit /out/usr/local/bin/godwit \
    && install -d -m 0700 /out/var/lib/godwit

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/usr/local/bin/godwit /usr/local/bin/godwit
# The working folder: the events file (./godwit-out/<name>/events.jsonl when the state is on
# S3) and spill files (TMPDIR) go here. A volume, so it stays writable under a read-only root
# file system (ECS readonlyRootFilesystem) and keeps the user's ownership.
COPY --from=build --chown=65532:65532 /out/var/lib/godwit /var/lib/godwit
ENV TMPDIR=/var/lib/godwit
WORKDIR /var/lib/godwit
VOLUME ["/var/lib/godwit"]
USER 65532:65532
EXPOSE 9187
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/godwit", "health", "--url", "http://127.0.0.1:9187/healthz"]
ENTRYPOINT ["/usr/local/bin/godwit"]
CMD ["--help"]

# syntax=docker/dockerfile:1.7
# The AgentRunner operator. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/stigmer/agentrunner-operator:0.1.0 .
# Final image: distroless (glibc, CA bundle, no shell, no package manager), user 65532.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target directory between builds; the binary is copied
# out of the cached target directory because cache mounts are not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p operator \
    && install -D -m 0755 target/release/operator /out/operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/operator /usr/local/bin/operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/operator"]
CMD ["run"]

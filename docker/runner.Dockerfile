# syntax=docker/dockerfile:1.7
# The runner, the control plane (stigmer-server) and the `stigmer` CLI in one image: the
# operator runs this image as the runner container and, in local mode, as the stigmer-server
# native sidecar (/usr/local/bin/runner, /usr/local/bin/stigmer-server); runner-sandbox is
# the command sandbox helper the runner uses when it lies beside it. Build from the
# repository root:
#   docker build -f docker/runner.Dockerfile -t ghcr.io/stigmer/agent-runner:0.1.0 .
#
# Neither binary needs a shell. The final stage is nevertheless a slim Debian, not
# distroless: in local mode the agent's run_command tool executes `sh -c` in the runner
# container, so the image carries the shell and coreutils for the agent's commands.
# RUNNER_BASE=gcr.io/distroless/cc-debian12:nonroot gives a shell-less image for cloud mode,
# where tools run in Daytona sandboxes.

ARG RUST_VERSION=1.95
ARG RUNNER_BASE=debian:bookworm-slim
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p runner -p stigmer-server -p stigmer \
    && for b in runner runner-sandbox stigmer-server stigmer; do install -D -m 0755 "target/release/$b" "/out/$b"; done

FROM ${RUNNER_BASE}
COPY --from=build /out/ /usr/local/bin/
# CA bundle for TLS to hosted LLMs and the cloud backend (the slim base has none).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# The operator runs runner pods as UID/GID 1000 (restricted Pod Security Standard); the same
# numeric user here keeps `docker run` of the image non-root too. No /etc/passwd entry is
# needed: nothing in the image looks the user up.
USER 1000:1000
ENV HOME=/tmp
WORKDIR /workspace
EXPOSE 8080 50051
ENTRYPOINT ["/usr/local/bin/runner"]

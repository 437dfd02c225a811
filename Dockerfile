# syntax=docker/dockerfile:1
# The db-migrate image: one fully static binary (musl; rustls with ring, no OpenSSL, no glibc)
# and the migrations, on distroless static, running as nonroot (65532).
#
#   docker build -t db-migrate .                                    # the machine's platform
#   docker buildx build --platform linux/amd64,linux/arm64 -t db-migrate .
#
# The build stage has no --platform=$BUILDPLATFORM, so buildx builds each platform natively:
# arm64 under QEMU emulation on an amd64 machine. Cross-compiling instead would need a musl
# cross C compiler for ring (aarch64-linux-musl-gcc), which Debian does not package, while
# Debian's musl-tools (musl-gcc) serves a native build on both architectures. The price is an
# emulated arm64 build that is several times slower than an amd64 one.
#
# Dependencies are cached in an image layer built from Cargo.toml and Cargo.lock alone with a
# stub crate, so a change under src/ rebuilds only db-migrate itself. A layer rather than a
# BuildKit cache mount: it works with the classic builder too, and it can be exported with
# --cache-to/--cache-from on CI machines that start empty, where a cache mount starts empty.
FROM rust:1-slim-bookworm AS build

# ring compiles C and assembly, which for a musl target needs musl's headers and the musl-gcc
# wrapper (Debian's musl-tools). DL3008 (pin the version) is ignored because bookworm's
# security updates replace the exact version, and then a pinned install fails.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*

# BuildKit sets TARGETARCH to the platform being built; the classic builder leaves it empty,
# and then the builder's own architecture is the one built for.
ARG TARGETARCH
RUN arch="${TARGETARCH:-$(dpkg --print-architecture)}" \
    && case "$arch" in \
        amd64) target=x86_64-unknown-linux-musl ;; \
        arm64) target=aarch64-unknown-linux-musl ;; \
        *) echo "no musl target is set up for $arch; build for amd64 or arm64" >&2 && exit 1 ;; \
    esac \
    && rustup target add "$target" \
    && echo "$target" > /rust-target
# cc-rs would look for <arch>-linux-musl-gcc first; name the compiler so the choice is plain.
ENV CC_x86_64_unknown_linux_musl=musl-gcc \
    CC_aarch64_unknown_linux_musl=musl-gcc

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --target "$(cat /rust-target)"

COPY src ./src
# COPY keeps the files' modification times from the build context, which can be older than
# the stub's build: touch them, or cargo would count the crate as fresh and keep the stub. The
# --version check fails the build if the stub got through all the same.
RUN touch src/main.rs src/lib.rs \
    && target="$(cat /rust-target)" \
    && cargo build --release --locked --target "$target" \
    && cp "target/$target/release/db-migrate" /db-migrate \
    && /db-migrate --version > /version \
    && grep -q '^db-migrate ' /version

FROM gcr.io/distroless/static-debian12:nonroot

# VERSION is the package version in Cargo.toml (scripts/check-dockerfile.sh checks that they
# agree); SOURCE is the repository's address, given by the pipeline that builds the image.
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="db-migrate" \
    org.opencontainers.image.description="Applies numbered plain-SQL migrations to PostgreSQL as a one-shot deploy job" \
    org.opencontainers.image.source="${SOURCE}" \
    org.opencontainers.image.licenses="MIT" \
    org.opencontainers.image.version="${VERSION}"

COPY --from=build /db-migrate /db-migrate
COPY migrations/ /migrations/
ENV MIGRATIONS_DIR=/migrations
# nonroot:nonroot by number: Kubernetes' runAsNonRoot can only verify a numeric user (DL3066).
USER 65532:65532
ENTRYPOINT ["/db-migrate"]
CMD ["up"]

# klines service image: a release build on Debian, run as an unprivileged
# user. Build: docker build -t klines .   Run: see docker-compose.yml.

# --- build: dependencies first (cached until Cargo.toml/Cargo.lock change)
FROM rust:1-bookworm AS build
WORKDIR /src
# (the workspace's other members, the simulator and the fuzz bodies, only as
# manifests: the image builds and carries the klines binary alone)
COPY Cargo.toml Cargo.lock build.rs ./
COPY sim/Cargo.toml sim/Cargo.toml
COPY fuzz/Cargo.toml fuzz/Cargo.toml
COPY benches benches
COPY migrations migrations
RUN mkdir -p src sim/src fuzz/src && echo 'fn main() {}' > src/main.rs \
    && cp src/main.rs sim/src/main.rs && touch src/lib.rs sim/src/lib.rs fuzz/src/lib.rs \
    && (cargo build --release --locked --bin klines || true)
COPY . .
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin klines \
    && strip target/release/klines

# --- runtime: glibc, CA roots, the binary, the shipped config and SQL
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/klines --create-home klines
COPY --from=build /src/target/release/klines /usr/local/bin/klines
COPY config /etc/klines
COPY sql /usr/share/klines/sql
WORKDIR /var/lib/klines
USER klines
ENV KLINES_CONFIG=/etc/klines/klines.toml \
    KLINES_INGEST__SPOOL_DIR=/var/lib/klines/spool \
    KLINES_API__LISTEN=0.0.0.0:8080
EXPOSE 8080
VOLUME ["/var/lib/klines"]
# SIGTERM: workers stop, sinks drain within ingest.shutdown_grace (25 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["klines"]
CMD ["ingest"]

# klines service image: a release build on Debian, run as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --create-home klines
COPY --from=build /src/target/release/klines /usr/local/bin/klines
COPY config /etc/klines
WORKDIR /var/lib/klines
RUN chown klines /var/lib/klines
USER klines
ENV KLINES_CONFIG=/etc/klines/klines.toml
ENTRYPOINT ["klines"]
CMD ["ingest"]

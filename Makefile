# klines: the two commands that matter are `make demo` and `make test`.
.PHONY: test demo run build migrate fmt clippy

test:            ## fmt check, clippy -D warnings, all tests against a real PostgreSQL
	bash scripts/test.sh

demo:            ## the whole pipeline against the bundled simulator, locally
	bash scripts/demo.sh

run:             ## ingest from the real exchanges (config/klines.toml; set DATABASE_URL)
	cargo run --release -- --config config/klines.toml migrate --create-database
	cargo run --release -- --config config/klines.toml ingest

build:
	cargo build --release

migrate:
	cargo run --release -- --config config/klines.toml migrate

fmt:
	cargo fmt --all

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

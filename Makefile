# The two commands a new user needs: `make run` and `make test`.
CARGO ?= cargo

.PHONY: build run test bench lint fmt clean

build:
	$(CARGO) build --release --bins --examples

# Two demo backends on :3001 and :3002 and the gateway on :8080 (conf/gateway.toml).
# Try: curl localhost:8080/   Stop with Ctrl-C.
run: build
	@mkdir -p conf/run
	@trap 'kill 0' INT TERM EXIT; \
	target/release/examples/demo_backend a 127.0.0.1:3001 & \
	target/release/examples/demo_backend b 127.0.0.1:3002 & \
	target/release/gateway -c conf/gateway.toml

test:
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# Side-by-side load test against nginx and HAProxy (not part of `make test`).
bench: build
	bash benches/compare.sh

clean:
	$(CARGO) clean

# The two commands a new user needs: `make run` and `make test`.
CARGO ?= cargo
BIN ?= target/release

.PHONY: build run test bench bench-balance lint fmt clean install install-files toolchain

PREFIX ?= /usr/local

# rust-toolchain.toml pins the toolchain; on a machine that cannot download it, the
# installed stable of the same version stands for it (tools/toolchain.sh).
toolchain:
	@bash tools/toolchain.sh

build: toolchain
	$(CARGO) build --release --bins --examples

# Two demo backends on :3001 and :3002 and the gateway on :8080 (conf/gateway.toml).
# Try: curl localhost:8080/   Stop with Ctrl-C.
run: build
	@mkdir -p conf/run
	@trap 'kill $$a $$b 2>/dev/null; wait' EXIT; trap 'exit 130' INT; \
	trap 'kill $$g 2>/dev/null; exit 143' TERM; \
	$(BIN)/examples/demo_backend a 127.0.0.1:3001 & a=$$!; \
	$(BIN)/examples/demo_backend b 127.0.0.1:3002 & b=$$!; \
	$(BIN)/gateway -c conf/gateway.toml & g=$$!; \
	wait $$g

# The CLI tests run the demo backend, which `cargo test` builds only as a test binary.
# The container test's engine and base images are readied in the background meanwhile
# (downloads overlapping the build; the test waits for them): see tests/containers.
test: toolchain
	@mkdir -p target/tmp/containers; \
	if command -v docker >/dev/null 2>&1; then \
	  (bash tests/containers/prepare.sh target/tmp/containers >target/tmp/containers/prepare.log 2>&1 &); \
	fi
	$(CARGO) build --examples
	$(CARGO) test --all-targets

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# Side-by-side load test against nginx and HAProxy (not part of `make test`).
bench: build
	bash benches/compare.sh
	bash benches/files.sh
	bash benches/limits.sh
	bash benches/cache.sh
	bash benches/apps.sh

# round_robin, least_conn and least_time (and nginx's least_conn) with one slow, then
# stuck, backend of three: latency percentiles and the slow server's share.
bench-balance: build
	bash benches/balance.sh

# gateway and gatewayctl on the PATH ($(PREFIX)/bin), the systemd unit and sysusers entry.
install: toolchain
	$(CARGO) build --release --bins
	$(MAKE) install-files

# The binaries of $(BIN), stripped of their debug info (the release profile keeps it for
# profiles: 84 and 34 MB, 14 and 6 stripped), and the systemd unit, which runs them from $(PREFIX)/bin.
install-files:
	install -D -m 0755 -s $(BIN)/gateway $(DESTDIR)$(PREFIX)/bin/gateway
	install -D -m 0755 -s $(BIN)/gatewayctl $(DESTDIR)$(PREFIX)/bin/gatewayctl
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|g' docker/gateway.service > $(DESTDIR)$(PREFIX)/lib/systemd/system/gateway.service
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/gateway.service
	install -D -m 0644 docker/gateway.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/gateway.conf

clean:
	$(CARGO) clean

# flatfhir: make help lists the targets.
SHELL := /bin/bash
MODULES := streams shared services/api services/ingester services/planner services/writer services/flatfhir benchmarks deployments
BIN := bin/flatfhir
export FLATFHIR_DATA_DIR ?= $(CURDIR)/var
GO_TEST_FLAGS ?= -count=1 -timeout 20m
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := bin/tools/golangci-lint-$(GOLANGCI_LINT_VERSION)

.PHONY: help deps build run run-cluster test test-cluster fuzz vet lint fmt fmt-check bench clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-13s %s\n", $$1, $$2}'

deps: ## Install what is missing: ClickHouse server and client, ZooKeeper and Chromium (Debian packages) and Go modules
	@if ! command -v clickhouse-server >/dev/null 2>&1 && ! command -v clickhouse >/dev/null 2>&1; then \
		echo "installing clickhouse-server (Debian package)"; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root, or install clickhouse-server yourself" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server >/dev/null; \
	fi
	@if ! command -v clickhouse-client >/dev/null 2>&1 && ! command -v clickhouse >/dev/null 2>&1; then \
		echo "installing clickhouse-client (Debian package; bulkbench measures the insert limit with it)"; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root, or install clickhouse-client yourself" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-client >/dev/null; \
	fi
	@if [ ! -f /usr/share/java/zookeeper.jar ]; then \
		echo "installing zookeeper (Debian package; replicated ClickHouse tables need it)"; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root, or install zookeeper yourself" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null; \
	fi
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing chromium (Debian package; the console's browser test drives it headless)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "chromium is missing: the console's browser test will be skipped (install Debian's chromium as root)"; fi; \
	fi
	@command -v go >/dev/null || { echo "Go is required (https://go.dev/doc/install)" >&2; exit 1; }
	@for m in $(MODULES); do (cd $$m && go mod download) || exit 1; done

build: deps ## Build the engine binary into bin/
	go build -o $(BIN) ./services/flatfhir/cmd/flatfhir

run: build ## Start the whole engine on this machine with sample data (authorization off)
	FLATFHIR_AUTH=$${FLATFHIR_AUTH:-off} FLATFHIR_METRICS_LISTEN=$${FLATFHIR_METRICS_LISTEN-127.0.0.1:9464} $(BIN)

run-cluster: build ## Start a real cluster here: 2x2 ClickHouse, 3 NATS nodes, one process per engine role (authorization off)
	$(BIN) cluster

test: deps ## Run every module's tests against real NATS and ClickHouse
	@fail=0; for m in $(MODULES); do \
		echo "== $$m"; (cd $$m && go test $(GO_TEST_FLAGS) ./...) || fail=1; \
	done; exit $$fail

test-cluster: deps ## The cluster tier: round trip, chained exports and chaos on the make run-cluster topology
	cd services/flatfhir && go test -tags clustertest $(GO_TEST_FLAGS) -run TestCluster -v .

# Each fuzz target runs FUZZTIME with FUZZ_PARALLEL workers. The engine's
# targets start an engine (and a ClickHouse server) in every worker.
FUZZTIME ?= 30s
FUZZ_PARALLEL ?= 1

fuzz: deps ## Run every fuzz target (func Fuzz* in *_test.go) for FUZZTIME each; crashers land in the package's testdata/fuzz
	@set -e; log=$$(mktemp); trap 'rm -f $$log' EXIT; \
	for f in $$(grep -rl --include='*_test.go' '^func Fuzz' $(MODULES) | sort); do \
		d=$$(dirname $$f); \
		for fz in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "== fuzz $$d $$fz for $(FUZZTIME)"; \
			before=$$(ls $$d/testdata/fuzz/$$fz 2>/dev/null | wc -l); \
			rc=0; (cd $$d && go test -run '^$$' -fuzz "^$$fz\$$" -fuzztime $(FUZZTIME) -parallel $(FUZZ_PARALLEL) .) >$$log 2>&1 || rc=$$?; \
			cat $$log; \
			after=$$(ls $$d/testdata/fuzz/$$fz 2>/dev/null | wc -l); \
			if [ $$rc -ne 0 ]; then \
				if [ $$after -eq $$before ] && grep -q 'context deadline exceeded' $$log; then \
					echo "   (not a finding: Go 1.26's fuzz coordinator can report its own -fuzztime deadline as a failure, go.dev/issue/75804; no crasher was written)"; \
				else exit 1; fi; \
			fi; \
		done; \
	done

vet: lint ## go vet and golangci-lint (.golangci.yml) every module
	@for m in $(MODULES); do (cd $$m && go vet -tags clustertest ./...) || exit 1; done

lint: $(GOLANGCI_LINT) ## golangci-lint every module: dependency rules, no sleeping tests, documented exports
	@for m in $(MODULES); do echo "== lint $$m"; (cd $$m && $(CURDIR)/$(GOLANGCI_LINT) run ./...) || exit 1; done

$(GOLANGCI_LINT):
	@mkdir -p bin/tools
	GOBIN=$(CURDIR)/bin/tools go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv bin/tools/golangci-lint $@

fmt: ## gofmt every file
	gofmt -w $$(git ls-files '*.go')

fmt-check: ## Fail when a file is not gofmt-clean
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt-clean:"; echo "$$out"; exit 1; fi

BENCH_FLAGS ?= -profile $(CURDIR)/var/bench/profiles -json $(CURDIR)/var/bench/bench.json
bench: deps ## Ingest and export about a million generated resources and report every figure (BENCH_FLAGS adds or overrides flags)
	mkdir -p var/bench/profiles
	cd benchmarks && go run ./cmd/bulkbench -patients 20000 -runs 3 -client-runs 3 -kill-writer -chain-rounds 3 $(BENCH_FLAGS)

clean: ## Remove build output and local data (var/)
	rm -rf bin var

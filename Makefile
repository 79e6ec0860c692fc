# The two commands a newcomer needs: `make demo` and `make test`.
# Both make (or reuse) .venv with the core, every plugin and the lab installed editable,
# after installing the Debian packages the lab and the plugins use, when missing.

VENV := .venv
PY := $(VENV)/bin/python
KRP := $(VENV)/bin/kube-router-py
PLUGINS := $(wildcard plugins/*)
PLUGIN_PACKAGES := $(notdir $(patsubst %/__init__.py,%,$(wildcard plugins/*/kube_router_*/__init__.py)))
empty :=
MYPYPATH := $(subst $(empty) $(empty),:,core lab $(PLUGINS))
SYSTEM_PACKAGES := user-mode-linux kmod iproute2 ipvsadm ipset iptables conntrack \
	gobgpd golang-github-osrg-gobgp-dev containernetworking-plugins bird2 curl socat util-linux \
	openssl gcc libc6-dev
# The real control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd), built
# from the Go modules pinned in lab/controlplane/ into a cache outside the checkout.
CONTROLPLANE_BUILD := lab/controlplane/build.sh

.PHONY: all venv system test unit kernel lab real controlplane \
	controlplane-background e2e reliability memory demo \
	bench bench-peer kube-router-original lint clean uml-map-count

all: venv

system:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: pyproject.toml lab/pyproject.toml $(wildcard plugins/*/pyproject.toml) \
		$(wildcard tests/thirdparty/*/pyproject.toml)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -e lab $(addprefix -e ,$(PLUGINS)) \
		$(addprefix -e ,$(wildcard tests/thirdparty/*))
	touch $@

venv: system $(VENV)/.installed
	@if [ -d plugins/routing_bgp ]; then $(PY) -m kube_router_routing_bgp.gobgp_api --generate; fi

unit: venv
	$(PY) -m pytest tests/unit

kernel: venv
	$(KRP) lab exec -- $(PY) -m pytest tests/kernel

lab: venv
	$(PY) -m pytest tests/lab -m "not real and not reliability and not memory"

# The lab on the real control plane: the walkthrough and the scenarios that matter most.
controlplane:
	@bash $(CONTROLPLANE_BUILD)

# Start the control plane's build at the lowest priority, so it uses the CPU other jobs
# leave idle (`make controlplane-background lab` ...); `real` then waits for it (build.sh
# holds a lock).
controlplane-background:
	@mkdir -p out
	@echo "building the real control plane in the background (log: out/controlplane-build.log)"
	@(nice -n 19 bash $(CONTROLPLANE_BUILD) > out/controlplane-build.log 2>&1 &)

# The real-control-plane tier: the informer's contract tests against kube-apiserver, then
# the walkthrough and the key proxy, router and API-server-down scenarios on it.
real: venv controlplane
	$(KRP) lab exec --mem 2500M -- $(PY) -m pytest tests/realcp
	$(PY) -m pytest tests/lab -m real

# The end-to-end suite on the lab (a few scenarios through the runner's backends); on a
# machine with Docker and kind, `$(PY) -m pytest tests/e2e` runs it on a kind cluster.
e2e: venv
	$(PY) -m pytest tests/e2e --cluster lab

# faults, bad input, foreign state and contention: one lab boot per scenario (~10 minutes);
# exit status 5 (nothing selected) is not a failure
reliability: venv
	$(PY) -m pytest tests/lab -m reliability || [ $$? -eq 5 ]

# S6: bench.memory at full size, held to its goals (~5 minutes). It runs alone: it needs the
# CPU to keep up with its churn, and it would take it from the other tiers' request loops.
memory: venv uml-map-count
	$(PY) -m pytest tests/lab -m memory -s

# UML maps a guest process's memory page by page: at the host's default vm.max_map_count a
# guest process dies near 256 MiB resident, and the full-size memory benchmark needs more.
uml-map-count:
	@[ "$$(cat /proc/sys/vm/max_map_count)" -ge 262144 ] || \
		sysctl -q -w vm.max_map_count=262144 || \
		echo "warning: vm.max_map_count is below 262144: the full-size memory benchmark will fail"

# The control plane builds (when not cached) at the lowest priority while the other tiers run;
# reliability and real run side by side (their guests mostly wait: load stays near 1), each
# one's output printed whole when it ends; then the memory tier, alone.
test: controlplane-background lint unit kernel lab e2e
	$(MAKE) -j2 --output-sync=target reliability real
	$(MAKE) memory

demo: venv
	$(KRP) lab run examples/seed-walkthrough.yaml --report out/seed-walkthrough.json

bench: venv uml-map-count
	$(PY) -m bench.decode
	$(KRP) lab exec --mem 3G -- $(PY) -m bench.proxy_ipvs --n 1000
	$(KRP) lab exec -- $(PY) -m bench.routing_bgp --n 5000
	$(KRP) lab exec --mem 3G -- $(PY) -m bench.firewall_ipset
	$(KRP) lab exec --mem 3G -- $(PY) -m bench.memory

# The original kube-router, built from its Go module into the user's cache (never into the
# checkout): the lab can run it as a node's agent and bench.peer measures it beside ours.
# It is a measurement reference only, not something this project ships or recommends.
kube-router-original:
	nice -n 10 lab/peer-build/build.sh

bench-peer: venv kube-router-original
	$(KRP) lab exec --mem 3G -- $(PY) -m bench.peer --n 1000

# Style, the layers between core, plugins and lab (contracts in pyproject.toml), then
# types: strict for the core, mypy's defaults for the lab and every plugin.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	MYPYPATH=$(MYPYPATH) $(VENV)/bin/mypy --strict -p kube_router
	MYPYPATH=$(MYPYPATH) $(VENV)/bin/mypy -p kube_router_lab $(addprefix -p ,$(PLUGIN_PACKAGES))

clean:
	rm -rf $(VENV) out

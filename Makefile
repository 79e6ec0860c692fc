# The two commands a newcomer needs: `make demo` and `make test`.
# Both make (or reuse) .venv with the core, every plugin and the lab installed editable,
# after installing the Debian packages the lab and the plugins use, when missing.

VENV := .venv
PY := $(VENV)/bin/python
KRP := $(VENV)/bin/kube-router-py
PLUGINS := $(wildcard plugins/*)
SYSTEM_PACKAGES := user-mode-linux kmod iproute2 ipvsadm ipset iptables conntrack \
	gobgpd golang-github-osrg-gobgp-dev containernetworking-plugins bird2 curl socat util-linux

.PHONY: all venv system test unit kernel lab e2e demo bench lint clean

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
	$(PY) -m pytest tests/lab

# The end-to-end suite on the lab (a few scenarios through the runner's backends); on a
# machine with Docker and kind, `$(PY) -m pytest tests/e2e` runs it on a kind cluster.
e2e: venv
	$(PY) -m pytest tests/e2e --cluster lab

test: unit kernel lab e2e

demo: venv
	$(KRP) lab run examples/seed-walkthrough.yaml --report out/seed-walkthrough.json

bench: venv
	$(PY) -m bench.decode
	$(KRP) lab exec --mem 3G -- $(PY) -m bench.proxy_ipvs --n 1000
	$(KRP) lab exec -- $(PY) -m bench.routing_bgp --n 5000
	$(KRP) lab exec --mem 3G -- $(PY) -m bench.firewall_ipset

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) out

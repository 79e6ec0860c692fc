#!/usr/bin/env bash
# Build the real control plane the lab can run on (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd) from the Go modules pinned in kubernetes/go.mod and etcd/go.mod, into
# a cache outside the checkout keyed by version:
#   ${XDG_CACHE_HOME:-~/.cache}/kube-router-py/<component>/<version>/bin/
# A component already built is left alone. `build.sh --print` prints the two bin directories.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${KUBE_ROUTER_PY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-router-py}"

modversion() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$2"; }
k8s_version="$(modversion k8s.io/kubernetes "$here/kubernetes/go.mod")"
etcd_version="$(modversion go.etcd.io/etcd/server/v3 "$here/etcd/go.mod")"
k8s_dir="$cache/kubernetes/$k8s_version"
etcd_dir="$cache/etcd/$etcd_version"

if [ "${1:-}" = "--print" ]; then
	echo "$k8s_dir/bin"
	echo "$etcd_dir/bin"
	exit 0
fi

go="$(command -v go || true)"
[ -n "$go" ] || go=/usr/local/go/bin/go
[ -x "$go" ] || { echo "build.sh: Go is needed to build the control plane (go not found)" >&2; exit 1; }

export CGO_ENABLED=0 GOFLAGS="-trimpath -mod=mod"
# Go's build cache for these programs lives with them (a few GB: delete it once built), so
# a build cut short goes on where it stopped, and the disk it takes is in one place.
export GOCACHE="${KUBE_ROUTER_PY_GOCACHE:-$cache/go-build}"

# One build at a time: a second one waits, then finds the programs built.
mkdir -p "$cache"
exec 9>"$cache/.build.lock"
flock -n 9 || { echo "build.sh: waiting for the build already running" >&2; flock 9; }

# Build into a fresh directory and rename it into place, so a cut-short build leaves nothing
# that looks complete (and what one left is removed).
build() { # dir module-dir ldflags package...
	local dir="$1" mod="$2" ldflags="$3"; shift 3
	[ -f "$dir/.complete" ] && return 0
	local tmp="$dir.tmp.$$"
	rm -rf "$dir".tmp.* && mkdir -p "$tmp/bin"
	local start=$SECONDS
	for pkg in "$@"; do
		echo "build.sh: building $pkg into $dir/bin" >&2
		(cd "$mod" && "$go" build -ldflags "$ldflags" -o "$tmp/bin/" "$pkg")
	done
	echo "built_seconds=$((SECONDS - start)) go=$("$go" env GOVERSION)" > "$tmp/.complete"
	rm -rf "$dir" && mv "$tmp" "$dir"
}

build "$etcd_dir" "$here/etcd" "-s -w" go.etcd.io/etcd/server/v3
# `go build -o dir/` names the etcd binary after its package directory.
[ -x "$etcd_dir/bin/etcd" ] || mv "$etcd_dir/bin/server" "$etcd_dir/bin/etcd"
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
build "$k8s_dir" "$here/kubernetes" \
	"-s -w -X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler

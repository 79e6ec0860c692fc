#!/bin/sh
# Builds the original kube-router's agent (cmd/kube-router) from its Go module into the
# user's cache, outside the checkout. The lab runs it inside the guest as a behavioural
# reference and bench.peer measures it beside kube-router-py; nothing ships it.
# Usage: build.sh [VERSION]   (default: the version go.mod pins)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
module=github.com/cloudnativelabs/kube-router/v2
go=${GO:-go}
command -v "$go" >/dev/null 2>&1 || go=/usr/local/go/bin/go
version=${1:-$(cd "$here" && "$go" list -m -f '{{.Version}}' "$module")}
cache=${KUBE_ROUTER_PY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-router-py}
out=$cache/kube-router/$version/bin/kube-router
if [ -x "$out" ]; then
	echo "kube-router $version already built: $out"
	exit 0
fi
mkdir -p "$(dirname "$out")"
cd "$here"
# As the original's own release build: static (no cgo), version and date set by the linker.
CGO_ENABLED=0 "$go" build -trimpath -o "$out.tmp" \
	-ldflags "-X $module/pkg/version.Version=$version -X $module/pkg/version.BuildDate=module" \
	"$module/cmd/kube-router"
mv "$out.tmp" "$out"
echo "kube-router $version built: $out"

"""GoBGP's gRPC API as Python modules, generated from the .proto files GoBGP ships.

The .proto files are never part of this tree: they come with the GoBGP Go sources (Debian's
golang-github-osrg-gobgp-dev installs them under /usr/share/gocode). ``--generate`` writes
the stubs into this package at build time; when they are missing at run time they are
generated once into a temporary directory instead.

    python -m kube_router_routing_bgp.gobgp_api --generate [--proto-dir DIR]

Use :func:`load` to get the three modules: ``(gobgp_pb2, gobgp_pb2_grpc, attribute_pb2)``.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

log = logging.getLogger(__name__)

PROTOS = ("gobgp.proto", "attribute.proto", "capability.proto")
PACKAGE_DIR = Path(__file__).resolve().parent
# Where GoBGP's sources put the API definitions, newest layouts first; the environment
# variable wins so a user with GoBGP sources elsewhere can point at them.
_SEARCH_GLOBS = (
    "/usr/share/gocode/src/github.com/osrg/gobgp*/api",
    "/usr/share/gocode/src/github.com/osrg/gobgp*/*/api",
    "/usr/local/share/gocode/src/github.com/osrg/gobgp*/api",
    "/usr/lib/go*/src/github.com/osrg/gobgp*/api",
    "~/go/pkg/mod/github.com/osrg/gobgp*/api",
)


class GobgpApi(NamedTuple):
    gobgp: ModuleType
    grpc: ModuleType
    attribute: ModuleType
    capability: ModuleType


def find_proto_dir() -> Path:
    """Return the directory holding GoBGP's gobgp.proto, or raise FileNotFoundError."""
    env = os.environ.get("GOBGP_PROTO_DIR")
    candidates = [env] if env else []
    for pattern in _SEARCH_GLOBS:
        candidates.extend(sorted(glob.glob(os.path.expanduser(pattern)), reverse=True))
    for cand in candidates:
        if cand and all((Path(cand) / p).is_file() for p in PROTOS):
            return Path(cand)
    raise FileNotFoundError(
        "GoBGP's .proto files were not found (install golang-github-osrg-gobgp-dev, "
        "or set GOBGP_PROTO_DIR to the directory holding gobgp.proto)"
    )


def generate(out_dir: Path, proto_dir: Path | None = None) -> None:
    """Run protoc (grpcio-tools) on GoBGP's protos, writing the stubs into ``out_dir``."""
    from grpc_tools import protoc  # build-time dependency, imported only here

    proto_dir = proto_dir or find_proto_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    # grpc_tools ships the well-known types (google/protobuf/any.proto ...).
    wkt = Path(protoc.__file__).resolve().parent / "_proto"
    argv = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{wkt}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *PROTOS,
    ]
    rc = protoc.main(argv)
    if rc != 0:
        raise RuntimeError(f"protoc failed rc={rc} proto_dir={proto_dir}")


_loaded: GobgpApi | None = None


def _stubs_present(directory: Path) -> bool:
    return all((directory / n).is_file() for n in
               ("gobgp_pb2.py", "gobgp_pb2_grpc.py", "attribute_pb2.py", "capability_pb2.py"))


def load() -> GobgpApi:
    """Import the stubs (generating them into a temporary directory if needed)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    directory = PACKAGE_DIR
    if not _stubs_present(directory):
        directory = Path(tempfile.mkdtemp(prefix="kube-router-gobgp-api-"))
        log.info("generating GoBGP API stubs dir=%s", directory)
        generate(directory)
    # protoc emits flat imports ("import gobgp_pb2"), so the directory must be importable
    # as a top-level location.
    if str(directory) not in sys.path:
        sys.path.append(str(directory))
    _loaded = GobgpApi(
        gobgp=importlib.import_module("gobgp_pb2"),
        grpc=importlib.import_module("gobgp_pb2_grpc"),
        attribute=importlib.import_module("attribute_pb2"),
        capability=importlib.import_module("capability_pb2"),
    )
    return _loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kube_router_routing_bgp.gobgp_api")
    parser.add_argument("--generate", action="store_true",
                        help="write the stubs into the package directory")
    parser.add_argument("--proto-dir", type=Path, default=None,
                        help="directory holding gobgp.proto (default: search)")
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR)
    args = parser.parse_args(argv)
    if not args.generate:
        parser.print_help()
        return 2
    try:
        generate(args.out, args.proto_dir)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"generated GoBGP API stubs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What can be checked of the image without a container engine: every file it copies is in
the repository, every plugin is installed, and its Debian packages provide every program the
code runs and the operators' tools."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
#: What an operator runs in the agent's container (as in the seed: `gobgp neighbor`).
OPERATOR_TOOLS = {"gobgp", "ipvsadm", "ipset", "iptables", "ip"}
#: The CNI plugins the manifests' init container copies from the image.
CNI_DIR = "/usr/lib/cni"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def apt_packages() -> set[str]:
    pkgs: set[str] = set()
    for op, rest in instructions():
        if op == "RUN":
            for cmd in rest.split("&&"):
                words = shlex.split(cmd)
                if words[:2] == ["apt-get", "install"]:
                    pkgs |= {w for w in words[2:] if not w.startswith("-")}
    return pkgs


def programs_the_code_runs() -> set[str]:
    """The heads of the argv lists the code passes to its command runners."""
    found: set[str] = set()
    head = re.compile(r"""(?:\brun|\brun_sync|create_subprocess_exec|\bargv\s*=)\s*\(?\s*\[\s*"""
                      r"""(?:"([a-z][\w+-]*)"|tool\("([a-z][\w-]*)")""")
    for path in [*ROOT.glob("core/kube_router/**/*.py"), *ROOT.glob("plugins/*/*/**/*.py")]:
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for literal, via_tool in head.findall(path.read_text()):
            if literal:
                found.add(literal)
            else:  # kube_router.linux.iptables.tool: the backend's own binaries
                for fam in ("iptables", "ip6tables"):
                    name = via_tool.replace("iptables", fam)
                    prefix, _, suffix = name.partition("-")
                    for backend in ("legacy", "nft"):
                        found.add(f"{prefix}-{backend}" + (f"-{suffix}" if suffix else ""))
    # default values of flags naming a program (--gobgpd-path)
    for path in ROOT.glob("plugins/*/*/**/*.py"):
        found |= set(re.findall(r'add_argument\("--[\w-]+-path", default="([a-z][\w-]*)"',
                                path.read_text()))
    return found


def package_of(program: str) -> str:
    path = shutil.which(program, path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    assert path, f"{program} is not installed here (make system installs the packages)"
    for candidate in dict.fromkeys([path, os.path.realpath(path),
                                    re.sub(r"^/usr/", "/", path)]):
        proc = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        if proc.returncode == 0:
            return proc.stdout.split(":", 1)[0].split(",")[0].strip()
    pytest.fail(f"no Debian package owns {path} ({program})")


@pytest.fixture(scope="module")
def dpkg() -> None:
    if not shutil.which("dpkg-query"):
        pytest.skip("not a Debian system: dpkg-query is missing")


def test_what_it_copies_exists() -> None:
    copies = [rest.split() for op, rest in instructions() if op == "COPY"]
    assert copies
    for words in copies:
        for src in words[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "out" in ignored


def test_it_installs_every_plugin_and_the_core() -> None:
    pip = next(rest for op, rest in instructions() if op == "RUN" and "pip install" in rest)
    words = shlex.split(pip.split("&&")[0])
    assert "." in words
    assert "plugins/*/" in words  # the shell's glob: every plugin folder, the firewall's too
    for pyproject in ROOT.glob("plugins/*/pyproject.toml"):
        assert pyproject.parent.parent.name == "plugins"


def test_entrypoint_picks_the_host_iptables_backend() -> None:
    entry = next(rest for op, rest in instructions() if op == "ENTRYPOINT")
    script_copy = next(rest.split() for op, rest in instructions()
                       if op == "COPY" and rest.split()[-1].endswith(entry.strip('[]"')))
    script = (ROOT / script_copy[0]).read_text()
    assert "from kube_router.linux.iptables import backend" in script
    assert "update-alternatives" in script and "KUBE_ROUTER_IPTABLES" in script
    proc = subprocess.run(["sh", "-n", str(ROOT / script_copy[0])], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_its_packages_provide_every_program_the_code_runs(dpkg: None) -> None:
    wanted = programs_the_code_runs() | OPERATOR_TOOLS
    assert {"ip", "ipset", "modprobe", "conntrack", "gobgpd",
            "iptables-legacy-restore", "iptables-nft-restore"} <= wanted
    pkgs = apt_packages()
    missing = {p: package_of(p) for p in sorted(wanted)}
    missing = {p: pkg for p, pkg in missing.items() if pkg not in pkgs}
    assert not missing, f"programs whose packages the image does not install: {missing}"


def test_its_packages_provide_the_cni_plugins_the_init_container_copies(dpkg: None) -> None:
    manifest = (ROOT / "daemonset" / "kube-router-py-all-features.yaml").read_text()
    names = re.search(r"for p in ([\w -]+); do", manifest).group(1).split()
    assert f"cp {CNI_DIR}/$p" in manifest
    for name in names:
        assert package_of_path(f"{CNI_DIR}/{name}") in apt_packages()


def package_of_path(path: str) -> str:
    proc = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True)
    assert proc.returncode == 0, f"no Debian package owns {path}"
    return proc.stdout.split(":", 1)[0].strip()

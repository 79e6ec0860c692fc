"""The guest kernel as `kube-router-py lab exec` prepares it."""

from __future__ import annotations

import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_exit_status_comes_back(lab) -> None:
    res = lab("exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert res.returncode == 3, res.stdout + res.stderr
    assert "out" in res.stdout.splitlines()
    assert "err" in res.stdout.splitlines()  # the guest console carries both streams


def test_prepared_guest(lab) -> None:
    """IPVS with its schedulers, legacy iptables, dummy links, sets, forwarding, a writable
    TMPDIR and the current directory, all in one boot."""
    script = "\n".join([
        "set -e",
        "pwd",
        "ipvsadm -Ln | head -1",
        "for s in rr wrr lc wlc sh dh mh sed nq; do"
        "  ipvsadm -A -t 10.9.0.1:80 -s $s; ipvsadm -D -t 10.9.0.1:80; done",
        "echo schedulers ok",
        "iptables --version",
        "echo backend=$KUBE_ROUTER_IPTABLES",
        "iptables -t nat -A POSTROUTING -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ"
        " -j MASQUERADE -m comment --comment lab-test",
        "iptables-save -t nat | grep -c lab-test",
        "ip link add d0 type dummy && ip link show d0 >/dev/null && echo dummy ok",
        "ip link add t0 type ipip local 10.0.0.1 remote 10.0.0.2 && echo ipip ok",
        "ipset create s1 hash:ip && ipset add s1 10.0.0.1 && ipset test s1 10.0.0.1",
        "echo forward=$(cat /proc/sys/net/ipv4/ip_forward)"
        " vsconntrack=$(cat /proc/sys/net/ipv4/vs/conntrack)",
        "ip -o link show lo | grep -q 'UP' && echo lo up",
        "touch $TMPDIR/x && echo tmp ok",
        "ip netns add n1 && ip netns exec n1 ip -o link show lo >/dev/null && echo netns ok",
        "ip link show | grep -c '^[0-9]' | sed 's/^/links=/'",
    ])
    t0 = time.monotonic()
    res = lab("exec", "--", "sh", "-c", script, timeout=300)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert out.splitlines()[0] == str(ROOT)
    for needle in ("IP Virtual Server", "schedulers ok", "(legacy)", "backend=legacy",
                   "dummy ok", "ipip ok", "forward=1 vsconntrack=1", "lo up", "tmp ok",
                   "netns ok"):
        assert needle in out, f"{needle!r} missing from:\n{out}"
    # the guest's own links only: lo, the two made above and the ipip fallback tunnel
    links = int(re.search(r"links=(\d+)", out).group(1))
    assert links <= 5, out
    m = re.search(r"boot_to_command_seconds=([\d.]+)", res.stderr)
    assert m, res.stderr
    print(f"boot_to_command_seconds={m.group(1)} total={time.monotonic() - t0:.1f}s")


def test_missing_command_is_an_error(lab) -> None:
    res = lab("exec", "--", "no-such-command-here")
    assert res.returncode == 127, res.stdout + res.stderr
    assert "cannot run no-such-command-here" in res.stdout


def test_invalid_scenario_fails_before_boot(lab, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - run: {in: host, cmd: 'echo ${foo:bar}'}\n")
    t0 = time.monotonic()
    res = lab("run", str(bad))
    assert res.returncode == 2
    assert res.stderr.strip() == f"{bad}: step 1 (run): unknown substitution ${{foo:bar}} " \
        "(known: ${svc:NAMESPACE/NAME}, ${nodeport:NAMESPACE/NAME:PORT}, " \
        "${pod:NAMESPACE/NAME}, ${node:NAME}, ${podcidr:NODE})"
    assert time.monotonic() - t0 < 5  # no guest was booted

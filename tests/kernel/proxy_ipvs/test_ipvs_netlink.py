"""The lean IPVS codec against the kernel, checked through ipvsadm's own view."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

import pytest

from kube_router_proxy_ipvs import ipvs_netlink as nl

pytestmark = pytest.mark.kernel
Rules = Callable[[], list[str]]


def _key(addr: str, port: int, proto: str = "TCP") -> nl.ServiceKey:
    af = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return nl.service_key(af, proto, addr, port)


def test_batch_matches_ipvsadm(clean_ipvs: None, ipvs_rules: Rules) -> None:
    ops = []
    for i in range(20):
        key = _key(f"10.96.1.{i}", 80)
        ops.append(nl.new_service(key, nl.ServiceAttrs()))
        for j in range(3):
            ops.append(nl.new_dest(key, f"10.2.0.{j + 10}", 8080, nl.DestAttrs()))
    udp = _key("10.96.2.1", 53, "UDP")
    ops.append(nl.new_service(udp, nl.ServiceAttrs("lc", nl.SVC_F_PERSISTENT, 600)))
    ops.append(nl.new_dest(udp, "10.2.0.10", 5353, nl.DestAttrs(weight=3)))
    with nl.IPVSSocket() as s:
        assert s.apply(ops) == []
    expected = []
    for i in range(20):
        expected.append(f"-A -t 10.96.1.{i}:80 -s rr")
        expected += [f"-a -t 10.96.1.{i}:80 -r 10.2.0.{j + 10}:8080 -m -w 1" for j in range(3)]
    expected.append("-A -u 10.96.2.1:53 -s lc -p 600")
    expected.append("-a -u 10.96.2.1:53 -r 10.2.0.10:5353 -m -w 3")
    assert ipvs_rules() == sorted(expected)


def test_errors_map_to_their_operation(clean_ipvs: None, ipvs_rules: Rules) -> None:
    key = _key("10.96.3.1", 80)
    good = nl.new_service(key, nl.ServiceAttrs())
    dup = nl.new_service(key, nl.ServiceAttrs())
    missing = nl.del_service(_key("10.96.3.2", 80))
    dest = nl.new_dest(key, "10.2.0.1", 80, nl.DestAttrs())
    with nl.IPVSSocket() as s:
        failures = s.apply([good, dup, missing, dest])
    assert [(op, err.errno) for op, err in failures] == [
        (dup, errno.EEXIST), (missing, errno.ESRCH)
    ]
    assert "10.96.3.2" in str(failures[1][1])
    assert ipvs_rules() == sorted(
        ["-A -t 10.96.3.1:80 -s rr", "-a -t 10.96.3.1:80 -r 10.2.0.1:80 -m -w 1"]
    )


def test_dump_decodes_what_ipvsadm_made(clean_ipvs: None, sh: Callable[..., str]) -> None:
    sh(["ipvsadm", "-R"], stdin="\n".join([
        "-A -t 10.96.4.1:443 -s sh -p 100",
        "-a -t 10.96.4.1:443 -r 10.2.0.7:6443 -m -w 2",
        "-A -u 10.96.4.2:53 -s rr",
        "-A -f 7 -s rr",
        "-A -t [fd00::1]:80 -s rr",
        "-a -t [fd00::1]:80 -r [fd01::5]:8080 -m -w 1",
        "",
    ]))
    with nl.IPVSSocket() as s:
        svcs = {str(d.key) if d.key else f"fwmark {d.fwmark}": d for d in s.services()}
        assert set(svcs) == {"TCP/10.96.4.1:443", "UDP/10.96.4.2:53", "fwmark 7",
                             "TCP/[fd00::1]:80"}
        tcp = svcs["TCP/10.96.4.1:443"]
        assert tcp.attrs == nl.ServiceAttrs("sh", nl.SVC_F_PERSISTENT, 100)
        dests = s.dests(tcp.key)
        assert [(d.addr, d.port, d.attrs) for d in dests] == [
            ("10.2.0.7", 6443, nl.DestAttrs(weight=2))
        ]
        v6 = s.dests(svcs["TCP/[fd00::1]:80"].key)
        assert [(d.addr, d.port) for d in v6] == [("fd01::5", 8080)]


def test_set_service_and_dest_in_place(clean_ipvs: None, ipvs_rules: Rules) -> None:
    key = _key("10.96.5.1", 80)
    with nl.IPVSSocket() as s:
        assert s.apply([nl.new_service(key, nl.ServiceAttrs()),
                        nl.new_dest(key, "10.2.0.1", 80, nl.DestAttrs())]) == []
        assert s.apply([
            nl.set_service(key, nl.ServiceAttrs("mh", nl.SVC_F_SCHED1 | nl.SVC_F_SCHED2, 0)),
            nl.set_dest(key, "10.2.0.1", 80, nl.DestAttrs(weight=0)),
        ]) == []
    assert ipvs_rules() == sorted(
        ["-A -t 10.96.5.1:80 -s mh -b mh-fallback,mh-port",
         "-a -t 10.96.5.1:80 -r 10.2.0.1:80 -m -w 0"]
    )


def test_large_batch_spans_many_sends(clean_ipvs: None, ipvs_rules: Rules) -> None:
    ops = []
    for i in range(500):
        key = _key(f"10.97.{i // 250}.{i % 250}", 80)
        ops.append(nl.new_service(key, nl.ServiceAttrs()))
        ops += [nl.new_dest(key, f"10.3.0.{j + 1}", 80, nl.DestAttrs()) for j in range(10)]
    assert sum(len(op.body) for op in ops) > 2 * nl.BATCH_BYTES
    with nl.IPVSSocket() as s:
        assert s.apply(ops) == []
        # the same batch again: every op fails with EEXIST, and every error is reported
        failures = s.apply(ops)
        assert len(failures) == len(ops)
        assert {e.errno for _, e in failures} == {errno.EEXIST}
        assert len(s.services()) == 500
    assert len(ipvs_rules()) == 5500


def test_stream_names_each_failed_dest_of_one_segment(clean_ipvs: None,
                                                       ipvs_rules: Rules) -> None:
    key = _key("10.96.6.1", 80)
    ips = tuple(f"10.2.6.{i}" for i in range(1, 9))
    with nl.IPVSSocket() as s:
        assert s.apply([nl.new_service(key, nl.ServiceAttrs()),
                        nl.new_dest(key, "10.2.6.3", 80, nl.DestAttrs()),
                        nl.new_dest(key, "10.2.6.6", 80, nl.DestAttrs())]) == []
        # all eight in one segment: two already exist, the last one among the successes
        stream = s.stream()
        stream.dests(nl.CMD_NEW_DEST, key, [((ip, 80), 1) for ip in ips])
        failures = stream.finish()
        assert [(op.desc, err.errno) for op, err in failures] == [
            ("add-dest TCP/10.96.6.1:80 -> 10.2.6.3:80", errno.EEXIST),
            ("add-dest TCP/10.96.6.1:80 -> 10.2.6.6:80", errno.EEXIST)]
        # the same again: now the last message fails too, and still closes the batch
        stream = s.stream()
        stream.dests(nl.CMD_NEW_DEST, key, [((ip, 80), 1) for ip in ips])
        assert len(stream.finish()) == len(ips)
        # and a batch whose last message went out with an earlier chunk ends on a barrier
        stream = s.stream()
        stream.limit = 64
        stream.dests(nl.CMD_SET_DEST, key, [((ip, 80), 2) for ip in ips])
        assert stream.finish() == []
    assert len([r for r in ipvs_rules() if "-w 2" in r]) == len(ips)


def test_a_dump_error_is_raised_as_an_ipvs_error(clean_ipvs: None) -> None:
    with nl.IPVSSocket() as s:
        family, s.family = s.family, 0xFFF0  # a generic netlink family no one registered
        with pytest.raises(nl.IPVSError) as info:
            s.services()
        assert info.value.errno == errno.ENOENT
        s.family = family
        assert s.services() == []  # the socket stays usable

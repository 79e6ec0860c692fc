"""MemberSocket against the kernel's ipset: each test in a network namespace of its own
(ipsets are per namespace), its sets made and read back with the ``ipset`` program."""

from __future__ import annotations

import asyncio
import errno
import subprocess

import pytest

from kube_router.linux import ipset


def _ipset(netns: str, *args: str) -> str:
    proc = subprocess.run(["ip", "netns", "exec", netns, "ipset", *args],
                          capture_output=True, text=True, check=True)
    return proc.stdout


def _members(netns: str, name: str) -> set[str]:
    text = _ipset(netns, "save", name)
    return {line.split(" ", 2)[2] for line in text.splitlines() if line.startswith("add ")}


@pytest.fixture
def sets(netns: str) -> str:
    for args in (("v4", "hash:ip"), ("v6", "hash:ip", "family", "inet6"),
                 ("ports", "hash:ip,port"), ("ports6", "hash:ip,port", "family", "inet6"),
                 ("nets", "hash:net")):
        _ipset(netns, "create", *args)
    return netns


def _change(members: ipset.MemberSocket, name: str, member: str, add: bool) -> None:
    asyncio.run(members.change(name, member, add=add))


@pytest.mark.parametrize(("name", "member"), [
    ("v4", "10.1.2.3"), ("v6", "fd00::1:2"), ("ports", "10.96.0.1,tcp:80"),
    ("ports", "10.96.0.1,udp:53"), ("ports", "10.96.0.1,sctp:9090"),
    ("ports6", "fd00::10,tcp:443"), ("nets", "10.8.0.0/16"), ("nets", "10.9.0.1")])
def test_add_and_delete_one_member(sets: str, name: str, member: str) -> None:
    members = ipset.MemberSocket(netns=sets)
    try:
        _change(members, name, member, True)
        assert _members(sets, name) == {member}
        _change(members, name, member, True)  # already there: no error
        assert _members(sets, name) == {member}
        _change(members, name, member, False)
        assert _members(sets, name) == set()
        _change(members, name, member, False)  # already gone: no error
        assert _members(sets, name) == set()
    finally:
        members.close()


def test_a_batch_in_order(sets: str) -> None:
    members = ipset.MemberSocket(netns=sets)
    moves = [("v4", f"10.0.{i // 256}.{i % 256}", True) for i in range(600)]
    moves += [("v4", f"10.0.0.{i}", False) for i in range(100)]  # after their adds
    moves += [("ports", "10.96.0.1,tcp:80", True), ("v6", "fd00::1", True),
              ("v6", "fd00::1", False), ("v6", "fd00::2", True)]
    try:
        asyncio.run(members.change_many(moves))  # above BULK_CHANGES: from a thread
        assert len(_members(sets, "v4")) == 500
        assert "10.0.0.99" not in _members(sets, "v4")
        assert _members(sets, "v6") == {"fd00::2"}
        asyncio.run(members.change_many(moves[-4:]))  # the same socket, once more
        assert _members(sets, "ports") == {"10.96.0.1,tcp:80"}
    finally:
        members.close()


def test_a_missing_set_is_named_and_the_rest_of_the_batch_applies(sets: str) -> None:
    members = ipset.MemberSocket(netns=sets)
    moves = [("v4", "10.0.0.1", True), ("nosuchset", "10.0.0.2", True),
             ("v4", "10.0.0.3", True)]
    try:
        with pytest.raises(ipset.MemberError) as caught:
            asyncio.run(members.change_many(moves))
        err = caught.value
        assert (err.errno, err.name, err.member, err.add) == (
            errno.ENOENT, "nosuchset", "10.0.0.2", True)
        assert str(err) == "ipset add nosuchset 10.0.0.2: no such set (errno 2)"
        assert _members(sets, "v4") == {"10.0.0.1", "10.0.0.3"}
        _change(members, "v4", "10.0.0.4", True)  # a fresh socket serves the next
        assert "10.0.0.4" in _members(sets, "v4")
    finally:
        members.close()


def test_a_member_of_the_other_family_is_refused(sets: str) -> None:
    members = ipset.MemberSocket(netns=sets)
    try:
        with pytest.raises(ipset.MemberError) as caught:
            _change(members, "v6", "10.0.0.1", True)
        assert caught.value.errno == ipset.IPSET_ERR_PROTOCOL
        assert "ipset add v6 10.0.0.1" in str(caught.value)
    finally:
        members.close()

"""Reading ``ipset save``: the sets asked for, and the held record back when unchanged."""

from __future__ import annotations

from kube_router.linux.ipset import parse_save

SAVED = (
    "create other hash:ip family inet hashsize 1024 maxelem 65536\n"
    "add other 1.2.3.4\n"
    "create ours-a hash:net family inet hashsize 1024 maxelem 65536\n"
    "add ours-a 10.0.0.0/8\n"
    "add ours-a 10.1.0.0/16 nomatch\n"
    "create ours-b hash:ip,port family inet hashsize 1024 maxelem 65536\n"
    "add ours-b 10.96.0.1,tcp:443\n"
    "add ours-b 10.96.0.10,udp:53\n"
    "create ours-empty hash:ip family inet hashsize 1024 maxelem 65536\n"
)


def ours(name: str) -> bool:
    return name.startswith("ours-")


def test_only_the_wanted_sets_with_their_members() -> None:
    assert parse_save(SAVED, ours) == {
        "ours-a": ("hash:net", {"10.0.0.0/8", "10.1.0.0/16 nomatch"}),
        "ours-b": ("hash:ip,port", {"10.96.0.1,tcp:443", "10.96.0.10,udp:53"}),
        "ours-empty": ("hash:ip", set()),
    }
    assert parse_save(SAVED.rstrip("\n"), ours)["ours-empty"] == ("hash:ip", set())
    assert parse_save("", ours) == {}


def test_a_held_set_equal_to_the_kernel_comes_back_itself() -> None:
    a = frozenset({"10.0.0.0/8", "10.1.0.0/16 nomatch"})
    b = {"10.96.0.1,tcp:443", "10.96.0.10,udp:53"}
    found = parse_save(SAVED, ours, {"ours-a": a, "ours-b": frozenset(b)})
    assert found["ours-a"][1] is a
    assert found["ours-b"][1] == b


def test_a_held_set_that_differs_is_replaced_by_what_the_kernel_has() -> None:
    kernel = {"10.0.0.0/8", "10.1.0.0/16 nomatch"}
    for held in ({"10.0.0.0/8"},  # the kernel has one more
                 kernel | {"10.2.0.0/16"},  # one fewer
                 {"10.0.0.0/8", "10.1.0.0/16"},  # the same count, one differs
                 set()):
        got = parse_save(SAVED, ours, {"ours-a": held})["ours-a"][1]
        assert got == kernel and got is not held

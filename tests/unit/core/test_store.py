from kube_router.kube.records import decode_endpointslice
from kube_router.kube.store import Store


def _slice(name: str, svc: str, ns: str = "default"):
    return decode_endpointslice({
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "endpoints": [], "ports": [],
    })


def _by_service(rec):
    return (rec.service_key,) if rec.service_key else ()


def test_index_follows_puts_replacements_and_removals():
    store = Store("EndpointSlice")
    store.add_index("service", _by_service)
    store.put("default/a-1", _slice("a-1", "a"))
    store.put("default/a-2", _slice("a-2", "a"))
    assert {r.meta.name for r in store.by_index("service", "default/a")} == {"a-1", "a-2"}

    store.put("default/a-2", _slice("a-2", "b"))  # the slice moved to another service
    assert [r.meta.name for r in store.by_index("service", "default/a")] == ["a-1"]
    assert [r.meta.name for r in store.by_index("service", "default/b")] == ["a-2"]

    store.remove("default/a-1")
    assert store.by_index("service", "default/a") == []
    assert len(store) == 1


def test_an_index_added_late_covers_existing_records():
    store = Store("EndpointSlice")
    store.put("default/a-1", _slice("a-1", "a"))
    store.add_index("service", _by_service)
    assert [r.meta.name for r in store.by_index("service", "default/a")] == ["a-1"]


def test_put_returns_the_previous_record():
    store = Store("EndpointSlice")
    first = _slice("a-1", "a")
    assert store.put("default/a-1", first) is None
    assert store.put("default/a-1", _slice("a-1", "a")) is first

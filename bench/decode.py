"""How fast the informers fill their stores from a large cluster.

A child process fills the lab's in-memory API with Services, EndpointSlices (10 endpoints
each) and Pods and serves it on 127.0.0.1; this process runs one Informer per kind, exactly
as the agent does, and times them from start until all three are synced. The server runs
in its own process so that its serialization neither shares our GIL nor counts in our
peak memory.

    python -m bench.decode [--services 10000 --slices 10000 --pods 50000]
                           [--page-size 0] [--repeat 3]

The last line printed is one JSON object:
``{"objects", "seconds", "objects_per_second", "peak_rss_mib"}``.

``--records`` measures the records alone, in this process and without a server: for 10,000
objects of each kind (Services, EndpointSlices of 10 endpoints, Pods), shaped as the API
server sends them (uid, resourceVersion, managedFields, and on Services the
last-applied-configuration annotation ``kubectl apply`` leaves), the bytes the decoded
records keep (tracemalloc, the parsed JSON dropped as the informer drops it) and the
seconds their decoding takes (best of several, parsing not included). One JSON object:
``{kind: {"kib", "decode_ms"}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENDPOINTS_PER_SLICE = 10
GOAL_OBJECTS_PER_SECOND = 20_000


def _ip(base: int, i: int) -> str:
    return f"{base}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def service(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % 50}",
                     "labels": {"app": f"app-{i}"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": _ip(10, i), "clusterIPs": [_ip(10, i)],
            "selector": {"app": f"app-{i}"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                      {"name": "metrics", "port": 9090, "targetPort": 9090,
                       "protocol": "TCP"}],
            "sessionAffinity": "None",
        },
    }


def endpointslice(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"svc-{i}-abcde", "namespace": f"ns-{i % 50}",
                     "labels": {"kubernetes.io/service-name": f"svc-{i}",
                                "endpointslice.kubernetes.io/managed-by":
                                    "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [_ip(11, i * ENDPOINTS_PER_SLICE + j)],
             "conditions": {"ready": True, "serving": True, "terminating": False},
             "nodeName": f"node-{j % 100}",
             "targetRef": {"kind": "Pod", "namespace": f"ns-{i % 50}",
                           "name": f"app-{i}-{j}", "uid": f"uid-{i}-{j}"}}
            for j in range(ENDPOINTS_PER_SLICE)
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "metrics", "port": 9090, "protocol": "TCP"}],
    }


def pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"pod-{i}", "namespace": f"ns-{i % 50}",
                     "labels": {"app": f"app-{i // 5}", "pod-template-hash": "5d9f8c7b6"}},
        "spec": {
            "nodeName": f"node-{i % 100}",
            "containers": [{"name": "main", "image": "registry.example/app:1.0",
                            "ports": [{"name": "http", "containerPort": 8080,
                                       "protocol": "TCP"}]}],
            "terminationGracePeriodSeconds": 30,
        },
        "status": {"phase": "Running", "podIP": _ip(12, i), "podIPs": [{"ip": _ip(12, i)}],
                   "hostIP": _ip(192, i % 100)},
    }


def served(obj: dict[str, Any], i: int) -> dict[str, Any]:
    """``obj`` with what the API server adds to it and the records drop or keep as is."""
    md = obj["metadata"]
    kind = obj["kind"]
    if kind == "Service":
        # What kubectl apply stores: the manifest as applied, on one line.
        applied = {"apiVersion": obj["apiVersion"], "kind": kind,
                   "metadata": {"annotations": {}, "labels": md.get("labels", {}),
                                "name": md["name"], "namespace": md["namespace"]},
                   "spec": {k: v for k, v in obj["spec"].items()
                            if k not in ("clusterIP", "clusterIPs")}}
        md["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration":
                             json.dumps(applied, separators=(",", ":")) + "\n"}
        manager = "kubectl-client-side-apply"
    elif kind == "EndpointSlice":
        md["generateName"] = md["name"][:-5]
        manager = "kube-controller-manager"
    else:
        manager = "kube-controller-manager"
    md["uid"] = f"{i:08x}-1c2d-4e5f-8a9b-{i * 7919 % (1 << 48):012x}"
    md["resourceVersion"] = str(1_000_000 + i)
    md["creationTimestamp"] = "2026-12-01T10:00:00Z"
    md["managedFields"] = [{
        "manager": manager, "operation": "Update", "apiVersion": obj["apiVersion"],
        "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {f"f:{k}": {} for k in md.get("labels", {})}},
                     "f:spec": {"f:ports": {}, "f:selector": {}}},
    }]
    return obj


def record_memory(count: int, repeat: int) -> dict[str, dict[str, float]]:
    """The ``--records`` row: KiB kept and decode milliseconds per ``count`` objects of each
    kind. Memory is measured first, from a fresh process, so that anything the records
    module shares between objects is counted with the kind that made it."""
    import gc
    import tracemalloc

    import orjson

    from kube_router.kube import records

    kinds = (("Service", service, records.decode_service),
             ("EndpointSlice", endpointslice, records.decode_endpointslice),
             ("Pod", pod, records.decode_pod))
    payloads = {name: [orjson.dumps(served(make(i), i)) for i in range(count)]
                for name, make, _ in kinds}
    result: dict[str, dict[str, float]] = {}
    kept: list[Any] = []
    for name, _, decode in kinds:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        recs = [decode(orjson.loads(raw)) for raw in payloads[name]]
        gc.collect()
        result[name] = {"kib": round((tracemalloc.get_traced_memory()[0] - before) / 1024)}
        tracemalloc.stop()
        kept.append(recs)  # kept to the end, as the stores keep them
    for name, _, decode in kinds:
        best = float("inf")
        for _ in range(max(1, repeat)):
            parsed = [orjson.loads(raw) for raw in payloads[name]]
            started = time.perf_counter()
            recs = [decode(obj) for obj in parsed]
            best = min(best, time.perf_counter() - started)
            del parsed, recs
        result[name]["decode_ms"] = round(best * 1000, 1)
    return result


def serve(args: argparse.Namespace) -> int:
    """Child process: fill the store, serve it, print the URL, run until stdin closes."""
    from kube_router_lab.apiserver import ApiServer
    from kube_router_lab.apiserver import ApiStore

    store = ApiStore()
    for n, make in ((args.services, service), (args.slices, endpointslice), (args.pods, pod)):
        for i in range(n):
            store.create(make(i))
    server = ApiServer(store, "127.0.0.1", 0)
    server.start()
    print(server.url, flush=True)
    sys.stdin.read()
    server.stop()
    return 0


async def _run_informers(kubeconfig: Path, page_size: int) -> dict[str, Any]:
    from kube_router.kube.client import load_client
    from kube_router.kube.informer import Informer
    from kube_router.kube.kinds import KINDS
    from kube_router.kube.store import Store

    loop = asyncio.get_running_loop()
    api = load_client(str(kubeconfig), None)
    published = 0

    def publish(_event: object) -> None:
        nonlocal published
        published += 1

    informers = [
        Informer(KINDS[k], api, Store(k), publish, loop=loop, page_size=page_size)
        for k in ("Service", "EndpointSlice", "Pod")
    ]
    started = time.perf_counter()
    cpu_started = time.process_time()
    for inf in informers:
        inf.start()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(inf.synced.wait() for inf in informers)), timeout=600
        )
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    finally:
        await asyncio.gather(*(asyncio.to_thread(inf.stop) for inf in informers))
    sizes = {inf.kind.name: len(inf.store) for inf in informers}
    return {"sizes": sizes, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "published": published}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--slices", type=int, default=10_000)
    parser.add_argument("--pods", type=int, default=50_000)
    parser.add_argument("--page-size", type=int, default=0,
                        help="list page size (limit/continue); 0, as the agent does, lists "
                             "each kind in one response")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs against the same server; the fastest is reported (the "
                             "machine may be shared)")
    parser.add_argument("--log-level", default="WARNING",
                        help="INFO shows each informer's fetch/parse/decode times")
    parser.add_argument("--records", type=int, nargs="?", const=10_000, default=0,
                        metavar="N", help="measure the records of N objects of each kind "
                        "(default 10000) and nothing else; see above")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    if args.serve:
        return serve(args)
    if args.records:
        print(json.dumps(record_memory(args.records, max(5, args.repeat))))
        return 0

    counts = ["--services", str(args.services), "--slices", str(args.slices),
              "--pods", str(args.pods)]
    fill_started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.decode", "--serve", *counts],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        if not url:
            print(f"error: the API server process exited with status {child.wait()}",
                  file=sys.stderr)
            return 1
        print(f"filled and serving {url} in {time.perf_counter() - fill_started:.1f}s",
              flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(_kubeconfig(url))
            runs = []
            for _ in range(max(1, args.repeat)):
                runs.append(asyncio.run(_run_informers(kubeconfig, args.page_size)))
                print(f"run seconds={runs[-1]['seconds']:.3f} "
                      f"cpu_seconds={runs[-1]['cpu_seconds']:.3f}", flush=True)
            result = min(runs, key=lambda r: r["seconds"])
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    expected = {"Service": args.services, "EndpointSlice": args.slices, "Pod": args.pods}
    objects = sum(result["sizes"].values())
    print(f"stores={result['sizes']} published={result['published']} "
          f"page_size={args.page_size} cpu_seconds={result['cpu_seconds']:.2f} "
          f"objects_per_cpu_second={objects / result['cpu_seconds']:.0f} "
          f"load_average={os.getloadavg()[0]:.2f}", flush=True)
    if result["sizes"] != expected:
        print(f"error: stores hold {result['sizes']}, expected {expected}", file=sys.stderr)
        return 1
    seconds = result["seconds"]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({
        "objects": objects,
        "seconds": round(seconds, 3),
        "objects_per_second": round(objects / seconds),
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }))
    return 0


def _kubeconfig(url: str) -> str:
    # The child's ApiServer could write one, but it lives in another process; the format
    # is small enough to write here.
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: bench\n  cluster:\n    server: {url}\n"
        "users:\n- name: bench\n  user: {}\n"
        "contexts:\n- name: bench\n  context:\n    cluster: bench\n    user: bench\n"
        "current-context: bench\n"
    )


if __name__ == "__main__":
    sys.exit(main())

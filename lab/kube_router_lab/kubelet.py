"""The lab's kubelet: one per node, wiring the Pods bound to it.

For each Pod with ``spec.nodeName`` set to its node it makes a network namespace, calls the
real CNI plugins named by the config in the node's CNI conf dir (the router plugin writes
``10-kuberouter.conflist`` there; without the router the lab writes its own bridge config),
starts the pod's whats-my-ip ports and reports podIP, Running and Ready.

A Pod marked for deletion ends as a kubelet ends one: its preStop (a container's
``lifecycle.preStop.sleep``, else the lab's pre-stop delay) runs first while the server
still answers, then the server gets SIGTERM, keeps answering for the lab's
serve-after-term seconds (by default until the grace period ends), and exits, finishing the
requests it accepted; the pod is reported not ready and its object deleted. The grace period
caps it all, as SIGKILL would. When the object is gone, CNI DEL and the namespace go too.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kube_router_lab import netns as ns
from kube_router_lab.spec import PodTermination
from kube_router_lab.whatsmyip import PROTOCOLS
from kube_router_lab.whatsmyip import WhatsMyIp

#: Where distributions install the CNI plugins (Debian: /usr/lib/cni).
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni", "/usr/local/lib/cni")
BRIDGE = "kube-bridge"
ROUTER_CONF = "10-kuberouter.conflist"
LAB_CONF = "10-lab-bridge.conflist"
CNI_VERSION = "0.4.0"


class CniError(RuntimeError):
    pass


def cni_bin_dirs() -> list[str]:
    """The plugin directories: $CNI_PATH if set, else every known one holding `bridge`."""
    env = os.environ.get("CNI_PATH")
    if env:
        return [d for d in env.split(os.pathsep) if d]
    found = [d for d in CNI_BIN_DIRS if os.access(os.path.join(d, "bridge"), os.X_OK)]
    if not found:
        raise CniError(f"no CNI bridge plugin found in {', '.join(CNI_BIN_DIRS)} "
                       "(install containernetworking-plugins or set CNI_PATH)")
    return found


def bridge_conflist(*, pod_cidr: str | None, data_dir: Path, name: str = "kube-lab") -> dict:
    """A bridge + host-local config; without ``pod_cidr`` it is the template the router
    plugin completes with the node's range."""
    ipam: dict[str, Any] = {"type": "host-local", "dataDir": str(data_dir)}
    if pod_cidr:
        ipam["ranges"] = [[{"subnet": pod_cidr}]]
    return {"cniVersion": CNI_VERSION, "name": name, "plugins": [
        {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": True,
         "hairpinMode": True, "ipam": ipam}]}


def load_conf(conf_dir: Path) -> dict | None:
    """The first config in ``conf_dir`` by name, as a conflist; None if there is none yet
    or it is half written."""
    try:
        names = sorted(p for p in os.listdir(conf_dir) if p.endswith((".conflist", ".conf")))
    except FileNotFoundError:
        return None
    for fname in names:
        try:
            conf = json.loads((conf_dir / fname).read_text())
        except (OSError, ValueError):
            return None  # being written; the caller retries
        if not isinstance(conf, dict):
            continue
        if fname.endswith(".conf"):
            conf = {"cniVersion": conf.get("cniVersion", CNI_VERSION),
                    "name": conf.get("name", "net"), "plugins": [conf]}
        return conf
    return None


def conf_ready(conf: dict | None) -> bool:
    """True when the config names an address range to give pods."""
    if not conf:
        return False
    for plugin in conf.get("plugins") or []:
        ipam = plugin.get("ipam") or {}
        if ipam.get("subnet") or any(r.get("subnet") for rs in ipam.get("ranges") or []
                                     for r in rs):
            return True
    return False


def cni_call(command: str, conf: dict, *, container_id: str, netns_name: str,
             run_netns: str | None, bin_dirs: list[str], ifname: str = "eth0",
             prev: dict | None = None, timeout: float = 30.0) -> dict | None:
    """Run a conflist's plugins for ADD (in order, chaining prevResult) or DEL (in
    reverse); returns ADD's final result. The plugins run inside ``run_netns``."""
    plugins = list(conf.get("plugins") or [])
    if command == "DEL":
        plugins.reverse()
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
           "CNI_NETNS": str(ns.path_of(netns_name)), "CNI_IFNAME": ifname,
           "CNI_PATH": os.pathsep.join(bin_dirs)}
    result = prev
    errors = []
    for plugin in plugins:
        ptype = plugin.get("type", "")
        binary = next((os.path.join(d, ptype) for d in bin_dirs
                       if ptype and os.access(os.path.join(d, ptype), os.X_OK)), None)
        if binary is None:
            raise CniError(f"CNI plugin {ptype!r} not found in {', '.join(bin_dirs)}")
        stdin = {**plugin, "name": conf.get("name", "net"),
                 "cniVersion": conf.get("cniVersion", CNI_VERSION)}
        if result is not None:
            stdin["prevResult"] = result
        rc, out, err = ns.run_in(run_netns, [binary], input=json.dumps(stdin).encode(),
                                 env=env, timeout=timeout)
        if rc != 0:
            # Plugins report errors as JSON on stdout.
            msg = f"CNI {command} {ptype} rc={rc}: {(out or err).strip()[:400]}"
            if command != "DEL":
                raise CniError(msg)
            errors.append(msg)
            continue
        if command == "ADD":
            try:
                result = json.loads(out)
            except ValueError:
                raise CniError(f"CNI ADD {ptype}: result is not JSON: {out[:200]!r}") from None
    if errors:
        raise CniError("; ".join(errors))
    return result if command == "ADD" else None


def pre_stop_seconds(pod: dict, default: float) -> float:
    """The longest ``lifecycle.preStop.sleep.seconds`` of the pod's containers (they run
    side by side); ``default`` when none has one."""
    found = [h["sleep"]["seconds"] for c in (pod.get("spec") or {}).get("containers") or []
             if isinstance(h := ((c.get("lifecycle") or {}).get("preStop") or {}), dict)
             and isinstance(h.get("sleep"), dict)
             and isinstance(h["sleep"].get("seconds"), int | float)
             and not isinstance(h["sleep"]["seconds"], bool)]
    return float(max(found)) if found else default


def termination_plan(pod: dict, termination: PodTermination) -> tuple[float, float]:
    """(seconds to SIGTERM, seconds to the server's exit) after the deletion, both within
    the pod's deletion grace period."""
    grace = float((pod.get("metadata") or {}).get("deletionGracePeriodSeconds") or 0)
    term = min(pre_stop_seconds(pod, termination.pre_stop), grace)
    linger = termination.serve_after_term
    return term, grace if linger is None else min(term + linger, grace)


def pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def pod_netns_name(namespace: str, name: str) -> str:
    return f"pod-{namespace}-{name}"


def container_ports(pod: dict) -> list[tuple[int, str]]:
    """(number, protocol) of every declared containerPort: TCP, UDP or SCTP. A port's
    ``name`` only matters to those who resolve it (Services, NetworkPolicies)."""
    ports = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            port, proto = p.get("containerPort"), str(p.get("protocol", "TCP")).upper()
            if isinstance(port, int) and 0 < port < 65536 and proto in PROTOCOLS:
                ports.append((port, proto))
    return sorted(set(ports))



@dataclass
class _Wired:
    uid: str
    netns: str
    ip: str
    result: dict | None
    conf: dict
    host: bool = False  # hostNetwork: the node's own namespace


class Kubelet:
    def __init__(self, *, node: str, node_netns: str, node_ip: str, store: Any,
                 servers: WhatsMyIp, conf_dir: Path, log: Callable[[str], None] = print,
                 retry: float = 0.5, termination: PodTermination | None = None) -> None:
        self.node = node
        self.node_netns = node_netns
        self.node_ip = node_ip
        self.store = store
        self.servers = servers
        self.conf_dir = conf_dir
        self.log = log
        self.retry = retry
        self.termination = termination or PodTermination()
        self._wired: dict[str, _Wired] = {}
        self._finishing: set[str] = set()
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._busy = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._stopping = False
        self._bin_dirs = cni_bin_dirs()
        self._waiting_conf_logged = False

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{self.node}",
                                        daemon=True)
        self._thread.start()
        items, _ = self.store.list("Pod")
        for pod in items:
            self._on_event("ADDED", "Pod", pod)

    def stop(self, *, teardown: bool = True) -> None:
        self._stopping = True
        if self._unsubscribe:
            self._unsubscribe()
        if self._thread:
            self._queue.put(None)
            self._thread.join(timeout=30)
        if teardown:
            for key in list(self._wired):
                self._teardown(key)

    def pod_netns(self, namespace: str, name: str) -> str | None:
        w = self._wired.get(f"{namespace}/{name}")
        return w.netns if w else None

    def pod_namespaces(self) -> list[str]:
        """The network namespaces this kubelet made (not hostNetwork pods')."""
        return [w.netns for w in self._wired.values() if not w.host]

    def pod_ip(self, namespace: str, name: str) -> str | None:
        w = self._wired.get(f"{namespace}/{name}")
        return w.ip if w else None

    def idle(self) -> bool:
        return self._queue.empty() and not self._busy.is_set()

    # -- events --------------------------------------------------------------------

    def _on_event(self, event_type: str, kind: str, obj: dict) -> None:
        if kind != "Pod":
            return
        m = obj.get("metadata") or {}
        key = f"{m.get('namespace') or 'default'}/{m.get('name')}"
        if (obj.get("spec") or {}).get("nodeName") == self.node or key in self._wired:
            self._queue.put(("sync", key))

    def _later(self, action: str, key: str, delay: float) -> None:
        def fire() -> None:
            if not self._stopping:
                self._queue.put((action, key))

        t = threading.Timer(delay, fire)
        t.daemon = True
        t.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._busy.set()
            batch = {item}
            while True:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.add(nxt)
            # a SIGTERM due with the exit goes first
            for action, key in sorted(batch, key=lambda a: (a[0] == "finish", a)):
                try:
                    if action == "finish":
                        self._finish(key)
                    elif action == "sigterm":
                        self.log(f"event=pod_sigterm node={self.node} pod={key}")
                    else:
                        self._sync(key)
                except Exception as exc:  # one pod must not stop the node's kubelet
                    self.log(f"event=pod_sync_failed node={self.node} pod={key} "
                             f"error={type(exc).__name__}: {exc}")
                    if action == "sync" and not self._stopping:
                        self._later("sync", key, max(self.retry, 2.0))
            self._busy.clear()

    def _sync(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        pod = self.store.get("Pod", namespace, name)
        wired = self._wired.get(key)
        uid = ((pod or {}).get("metadata") or {}).get("uid", "")
        mine = pod is not None and (pod.get("spec") or {}).get("nodeName") == self.node
        if wired and (not mine or wired.uid != uid):
            self._teardown(key)
            wired = None
        if not mine:
            self._finishing.discard(key)
            return
        assert pod is not None
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            if key not in self._finishing:
                self._finishing.add(key)
                if wired is None:  # nothing runs: it goes at once
                    self._later("finish", key, 0.0)
                    return
                term, end = termination_plan(pod, self.termination)
                self.log(f"event=pod_stopping node={self.node} pod={key} "
                         f"sigterm_in={term:g}s exit_in={end:g}s")
                self._later("sigterm", key, term)
                self._later("finish", key, end)
            return
        if wired is None:
            self._setup(pod)
        elif not pod_ready(pod):
            # Its containers still run, yet someone else marked it not ready (the node
            # lifecycle controller does when the Node's Lease went stale, as during an API
            # server outage): like a kubelet's status manager, report it ready again.
            self._report_ready(pod)

    def _report_ready(self, pod: dict) -> None:
        meta = pod["metadata"]
        namespace, name = meta.get("namespace") or "default", meta["name"]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [{**c, "status": "True", "lastTransitionTime": stamp}
                      if c.get("type") in ("Ready", "ContainersReady") else c
                      for c in (pod.get("status") or {}).get("conditions") or []]
        self.store.patch("Pod", namespace, name, {"status": {"conditions": conditions}})
        self.log(f"event=pod_ready_again node={self.node} pod={namespace}/{name}")

    def _finish(self, key: str) -> None:
        """The server exits: it stops listening, the pod turns not ready (no longer
        serving), and its object goes."""
        namespace, name = key.split("/", 1)
        self.servers.remove_pod(key, drain=True)
        pod = self.store.get("Pod", namespace, name)
        if pod is not None and key in self._wired:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            conditions = [{**c, "status": "False", "lastTransitionTime": stamp}
                          if c.get("type") in ("Ready", "ContainersReady") else c
                          for c in (pod.get("status") or {}).get("conditions") or []]
            try:
                self.store.patch("Pod", namespace, name, {"status": {"conditions": conditions}})
            except Exception as exc:
                if getattr(exc, "code", 0) != 404:
                    raise
        try:
            self.store.delete("Pod", namespace, name)
        except Exception as exc:
            if getattr(exc, "code", 0) != 404:
                raise
        self.log(f"event=pod_finished node={self.node} pod={key}")

    # -- wiring --------------------------------------------------------------------

    def _setup(self, pod: dict) -> None:
        meta = pod["metadata"]
        namespace, name, uid = meta.get("namespace") or "default", meta["name"], meta["uid"]
        key = f"{namespace}/{name}"
        if (pod.get("spec") or {}).get("hostNetwork"):
            # Shares the node's namespace and address: no CNI, nothing to tear down.
            self._wired[key] = _Wired(uid, self.node_netns, self.node_ip, None, {}, host=True)
            self._running(pod, self.node_netns, self.node_ip, time.monotonic())
            return
        conf = load_conf(self.conf_dir)
        if not conf_ready(conf):
            if not self._waiting_conf_logged:
                self.log(f"event=waiting_cni_conf node={self.node} dir={self.conf_dir} "
                         f"pod={key}")
                self._waiting_conf_logged = True
            self._later("sync", key, self.retry)
            return
        assert conf is not None
        started = time.monotonic()
        pod_ns = pod_netns_name(namespace, name)
        if ns.exists(pod_ns):
            self._delete_netns(pod_ns)  # left from an earlier life of the same name
        rc, _, err = ns.run_in(None, ["ip", "netns", "add", pod_ns])
        if rc != 0:
            raise CniError(f"ip netns add {pod_ns} rc={rc}: {err.strip()}")
        try:
            result = cni_call("ADD", conf, container_id=uid, netns_name=pod_ns,
                              run_netns=self.node_netns, bin_dirs=self._bin_dirs)
            ip = _first_ipv4(result)
            if ip is None:
                raise CniError(f"CNI ADD gave no IPv4 address: {json.dumps(result)[:300]}")
            ns.run_in(pod_ns, ["ip", "link", "set", "lo", "up"])
        except Exception:
            self._delete_netns(pod_ns)
            raise
        self._wired[key] = _Wired(uid, pod_ns, ip, result, conf)
        self._running(pod, pod_ns, ip, started)

    def _running(self, pod: dict, pod_ns: str, ip: str, started: float) -> None:
        """Start the pod's servers and report it Running and Ready."""
        meta = pod["metadata"]
        namespace, name = meta.get("namespace") or "default", meta["name"]
        key = f"{namespace}/{name}"
        ports = container_ports(pod)
        try:
            self.servers.add_pod(key, pod_ns, name, ip, ports)
        except OSError as exc:
            self.log(f"event=pod_ports_failed node={self.node} pod={key} error={exc}")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [{"type": t, "status": "True", "lastTransitionTime": stamp}
                      for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        containers = [{"name": c.get("name", f"c{i}"), "ready": True, "started": True,
                       "restartCount": 0, "image": c.get("image", ""),
                       "state": {"running": {"startedAt": stamp}}}
                      for i, c in enumerate((pod.get("spec") or {}).get("containers") or [])]
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                  "hostIP": self.node_ip, "hostIPs": [{"ip": self.node_ip}],
                  "startTime": stamp, "conditions": conditions,
                  "containerStatuses": containers}
        self.store.patch("Pod", namespace, name, {"status": status})
        self.log(f"event=pod_running node={self.node} pod={key} ip={ip} "
                 f"ports={len(ports)} seconds={time.monotonic() - started:.2f}")

    def _teardown(self, key: str) -> None:
        wired = self._wired.pop(key, None)
        self._finishing.discard(key)
        self.servers.remove_pod(key)
        if wired is None or wired.host:
            return
        try:
            cni_call("DEL", wired.conf, container_id=wired.uid, netns_name=wired.netns,
                     run_netns=self.node_netns, bin_dirs=self._bin_dirs, prev=wired.result)
        except CniError as exc:
            self.log(f"event=cni_del_failed node={self.node} pod={key} error={exc}")
        self._delete_netns(wired.netns)
        self.log(f"event=pod_removed node={self.node} pod={key} ip={wired.ip}")

    def _delete_netns(self, name: str) -> None:
        rc, _, err = ns.run_in(None, ["ip", "netns", "delete", name])
        if rc != 0:
            self.log(f"event=netns_delete_failed netns={name} error={err.strip()}")


def _first_ipv4(result: dict | None) -> str | None:
    for entry in (result or {}).get("ips") or []:
        addr = str(entry.get("address", ""))
        if "." in addr:
            return addr.split("/", 1)[0]
    return None


def write_conf(conf_dir: Path, fname: str, conf: dict) -> Path:
    """Write a CNI config atomically (a reader never sees half a file)."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / fname
    tmp = conf_dir / f".{fname}.tmp"
    tmp.write_text(json.dumps(conf, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def reset_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)

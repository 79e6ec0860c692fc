"""bench.peer's summary: a capped run of the original gives a bound, never a ratio."""

from bench import peer


def test_ratio_of_two_finished_runs():
    runs = {peer.OURS: {"cold_sync_seconds": 30.0}, peer.ORIGINAL: {"cold_sync_seconds": 60.0}}
    result: dict = {}
    peer._compare(result, runs, {"cold_sync": ("cold_sync_seconds", 1.0, "seconds", True)})
    peer._bound(result, runs, "cold_sync", "cold_sync_incomplete_after_seconds",
                "cold_sync_seconds")
    assert result["cold_sync_seconds"] == {"ours": 30.0, "original": 60.0}
    assert result["cold_sync_ratio"] == 0.5
    assert "cold_sync_ratio_at_most" not in result


def test_capped_original_is_a_bound():
    runs = {peer.OURS: {"cold_sync_seconds": 30.0},
            peer.ORIGINAL: {"cold_sync_incomplete_after_seconds": 300.0}}
    result: dict = {}
    peer._compare(result, runs, {"cold_sync": ("cold_sync_seconds", 1.0, "seconds", True)})
    peer._bound(result, runs, "cold_sync", "cold_sync_incomplete_after_seconds",
                "cold_sync_seconds")
    assert result["cold_sync_seconds"]["original"] is None
    assert result["cold_sync_seconds"]["original_not_done_after"] == 300.0
    assert result["cold_sync_ratio"] is None
    assert result["cold_sync_ratio_at_most"] == 0.1


def test_firewall_pods_carry_what_a_real_api_server_holds():
    local = peer.fw_pod(10, 100, 10)
    remote = peer.fw_pod(11, 100, 10, name="new0", ip_index=5000, local=False)
    assert (local["spec"]["nodeName"], local["status"]["hostIP"]) == (peer.NODE, peer.NODE_IP)
    assert remote["spec"]["nodeName"] == peer.OTHER_NODE
    assert remote["metadata"]["name"] == "new0" and "uid" not in remote["metadata"]
    assert remote["status"]["podIP"] != peer.fw_pod(11, 100, 10)["status"]["podIP"]

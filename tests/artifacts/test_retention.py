"""Keep-last-K pruning and removal of stale incomplete uploads, on every backend."""

from __future__ import annotations

from artifacts.publish import publish_dir
from artifacts.retention import cleanup_incomplete, prune_committed
from artifacts.store import open_store


def test_prune_keeps_newest_committed(store_uri, sample_dir):
    for step in (5, 10, 20, 40):
        publish_dir(sample_dir, f"{store_uri}/ck/step-{step}", exclude=["sub"])
    open_store(store_uri).put_bytes("ck/step-80/partial.bin", b"x")  # in flight: untouched
    deleted = prune_committed(store_uri, keep=2, prefix="ck")
    assert deleted == ["ck/step-5", "ck/step-10"]
    keys = {o.key.split("/")[1] for o in open_store(store_uri).list("ck")}
    assert keys == {"step-20", "step-40", "step-80"}


def test_cleanup_removes_only_stale_incomplete(store_uri, sample_dir):
    import time

    store = open_store(store_uri)
    publish_dir(sample_dir, f"{store_uri}/ck/step-1", exclude=["sub"])
    store.put_bytes("ck/step-2/shard.bin", b"x")
    assert cleanup_incomplete(store_uri, grace_seconds=3600, prefix="ck") == []
    assert cleanup_incomplete(store_uri, grace_seconds=60, prefix="ck", now=time.time() + 3600) == [
        "ck/step-2"
    ]
    assert {o.key.split("/")[1] for o in store.list("ck")} == {"step-1"}

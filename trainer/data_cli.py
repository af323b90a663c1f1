"""Invoke task ``prepare-data``: the stage-1 corpus → committed token shards, as its own step."""

from __future__ import annotations

from invoke import task

from artifacts.cli_support import user_errors


@task(
    help={
        "config": "run recipe TOML (its [data] section says what to prepare)",
        "run": "run prefix URI or path (default: [run] uri, else a fresh runs/<name>-<time>)",
        "workers": "tokenizer processes (default: data.workers, 0 = one per CPU core)",
        "node_rank": "this node's index on a cluster (each node takes a disjoint set of sources)",
        "node_count": "nodes preparing together (node 0 commits the manifest once all are done)",
    }
)
@user_errors
def prepare_data(c, config, run=None, workers=0, node_rank=0, node_count=1):
    """Tokenize the corpus into committed token shards under <run>/cache/data/ (resumable).

    Sources: local files/folders/globs and s3:// prefixes; plain text (a document per line),
    .jsonl with a "text" field, .gz and .zst. Trains the tokenizer on a bounded seeded sample
    (or uses data.tokenizer), tokenizes in parallel processes, writes fixed-size shards each
    committed as it is done and the manifest last. Rerunning reuses a matching cache or finishes
    an interrupted one. `invoke pretrain` and the trainer run this too when the cache is missing.
    """
    from artifacts.logs import init_logging
    from trainer.prepare import run_prepare

    init_logging()
    run_uri, prepared = run_prepare(config, run, int(workers), int(node_rank), int(node_count))
    meta = prepared.metadata
    verb = "reused" if prepared.reused else "committed"
    print(
        f"{verb} {prepared.cache_uri}: {meta.get('train_tokens', 0):,} train / "
        f"{meta.get('val_tokens', 0):,} validation tokens in {len(meta.get('train', []))} + "
        f"{len(meta.get('val', []))} shards (fingerprint {prepared.fingerprint})"
    )
    print(f"train on it: invoke pretrain --local --config {config} --run {run_uri}")


TASKS = [prepare_data]

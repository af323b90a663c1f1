"""Stage 1 data: corpus → tokenizer → committed token shards → a stream with a global order.

- :mod:`.config`     ``[data]`` of the recipe.
- :mod:`.sources`    what the recipe names: local files, globs, ``s3://`` prefixes; their identity.
- :mod:`.reading`    a source's documents: decompressed bytes, lines or jsonl, a lane's share.
- :mod:`.corpus`     the generated corpus of the tiny recipe (no download).
- :mod:`.tokenizer`  byte-level BPE on a bounded sample, or an existing fast tokenizer.
- :mod:`.clean`      ``[data.clean]``: NFC, control characters, length and Gopher filters (pure).
- :mod:`.dedup`      pure dedup: exact and MinHash keys, the partition join, clusters, keep rule.
- :mod:`.plan`       pure: the fingerprint and the units (byte ranges, lanes of compressed files).
- :mod:`.worker`     one unit of work in a worker process: a source range → token shards.
- :mod:`.scan`       one unit's dedup scan in a worker process: clean → keys by partition.
- :mod:`.shards`     the shard cache in the store: markers, failure, manifest index, size check.
- :mod:`.progress`   bar, log lines and ``STATUS.json`` while preparing.
- :mod:`.pool`       the worker processes: units out, progress back, stopped on bad input.
- :mod:`.deduplicate` the dedup stage across nodes: scan → join partitions → drop set.
- :mod:`.report`     ``DATA_REPORT.json``: in/out, drops per reason, clusters, time per stage.
- :mod:`.prepare`    ``prepare-data``: fingerprint → units → dedup → worker pool → shards → report → manifest.
- :mod:`.loader`     the trainer's side: prepared before any collective, then opened.
- :mod:`.stream`     shard reader, datasets, the global order, the resume position.
- :mod:`.batching`   pure: the global batch split across world sizes, the order contract.
"""

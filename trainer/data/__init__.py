"""Stage 1 data: corpus → tokenizer → committed token shards → a stream with a global order.

- :mod:`.config`     ``[data]`` of the recipe.
- :mod:`.sources`    what the recipe names: local files, globs, ``s3://`` prefixes; documents.
- :mod:`.corpus`     the generated corpus of the tiny recipe (no download).
- :mod:`.tokenizer`  byte-level BPE on a bounded sample, or an existing fast tokenizer.
- :mod:`.worker`     one unit of work in a worker process: a source range → token shards.
- :mod:`.pool`       the worker processes: units out, progress back, stopped on bad input.
- :mod:`.shards`     the shard cache in the store: markers, failure, manifest index, size check.
- :mod:`.progress`   bar, log lines and ``STATUS.json`` while preparing.
- :mod:`.prepare`    ``prepare-data``: fingerprint → units → worker pool → shards → manifest.
- :mod:`.loader`     the trainer's side: prepared before any collective, then opened.
- :mod:`.stream`     shard reader, datasets, the global order, the resume position.
- :mod:`.batching`   pure: the global batch split across world sizes, the order contract.
"""

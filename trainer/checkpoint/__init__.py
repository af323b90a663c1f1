"""Stage 1 checkpoints: committed in the background, manifest last; resumed at any world size.

- :mod:`.committer`   the background committer: snapshot at submit, a queue and a thread, outages.
- :mod:`.commit`      the commit protocol: this node's part, the head's manifest, retention.
- :mod:`.staging`     the upload's hard-link snapshot of a checkpoint folder (the Trainer rotates).
- :mod:`.upload_pool` the node's low-priority upload processes (one per local rank).
- :mod:`.uploaders`   pure: which uploader takes which files, bytes per rank.
- :mod:`.fetch`       each node fetches only its ranks' share (survivors re-use); at another world
                      size only the old files its new ranks read.
- :mod:`.prefetch`    before the collective: local rank 0 fetches and prepares, the others wait;
                      the ranks then agree on the step with one all-reduce.
- :mod:`.reshard`     resume at another world size: each rank reads its slices of the old ZeRO-3
                      shards (mmap) into DeepSpeed's universal load; no conversion.
- :mod:`.resume`      the newest committed checkpoint, downloaded whole and verified (the fallback).
- :mod:`.elastic`     checkpoint facts (world size, batch); the universal conversion (the fallback).
- :mod:`.outage`      store outages are weather: retry for a bounded window, then exit 75.
- :mod:`.schedule`    pure: save every N steps or M minutes, what is at risk.
- :mod:`.report`      what STATUS and the summary say about saves, commits, interruptions.
- :mod:`.export`      consolidated weights of a committed checkpoint (``export-checkpoint``).
"""

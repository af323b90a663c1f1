"""Stage 1 checkpoints: committed in the background, manifest last; resumed at any world size.

- :mod:`.committer`   the commit protocol: snapshot, every node's part, the head's manifest, retention.
- :mod:`.upload_pool` the node's low-priority upload processes (one per local rank).
- :mod:`.uploaders`   pure: which uploader takes which files, bytes per rank.
- :mod:`.fetch`       before the collective: each node fetches only its ranks' share (survivors re-use).
- :mod:`.resume`      the newest committed checkpoint, downloaded whole and verified (the fallback).
- :mod:`.elastic`     resume at another world size: checkpoint facts, universal conversion.
- :mod:`.outage`      store outages are weather: retry for a bounded window, then exit 75.
- :mod:`.schedule`    pure: save every N steps or M minutes, what is at risk.
- :mod:`.report`      what STATUS and the summary say about saves, commits, interruptions.
- :mod:`.export`      consolidated weights of a committed checkpoint (``export-checkpoint``).
"""

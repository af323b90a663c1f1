"""Shared by both stages (trainer/ and local/ import it; it imports neither).

Modules:

- ``store_api``: the store interface (``Store``, ``ObjectInfo``, ``join_key``, progress argument).
- ``store``: ``LocalStore`` and ``open_store`` (picks a store by URI).
- ``s3``: the S3 store, the only module that talks to boto3.
- ``manifest``: ``MANIFEST.json``, the commit marker of every artifact; pure listing functions.
- ``hashing``: hash-while-streaming file wrappers.
- ``signing``: Ed25519 signatures of manifests.
- ``publish``: a folder published as a committed artifact (files first, manifest last).
- ``download``: verified download (temp sibling, verify every byte, atomic rename).
- ``verify``: offline verification of a downloaded artifact folder.
- ``retention``: keep the newest K committed artifacts, drop stale half-uploads.
- ``run``: the run protocol's front door (layout, the ``verdict`` command; re-exports the next two).
- ``status``: ``STATUS.json``, a run's status document (``Status``, ``RunState``).
- ``verdict``: the exit codes and the one rule for what an exit means.
- ``exits``: the launchers' exit codes for a child killed by a signal, in words.
- ``ending``: how a run ended when it could not say (launchers' signal conventions, ``settle``).
- ``convergence``: convergence on validation loss, a pure decision.
- ``config``: the typed config loader every config of the project goes through.
- ``node``: facts about a training node shared by infra/ and trainer/launch/.
- ``ports``: free TCP ports on loopback.
- ``progress``: progress bars for transfers a person waits for.
- ``logs``: logging set-up, one call per entry point.
- ``errors``: the one user-facing exception family.
- ``cli``, ``cli_support``: the artifact tasks and their glue (user errors → exit 2).
"""

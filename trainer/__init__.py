"""Stage 1: DeepSpeed ZeRO-3 pretraining to convergence (``python -m trainer --config FILE.toml``).

Import-light on purpose: torch, transformers and deepspeed are imported inside the functions that
need them, so ``invoke --list`` and config validation stay instant. The map, one line a room:

- :mod:`.__main__`    ``python -m trainer``: the entry point on every rank.
- :mod:`.cli`         the trainer's invoke tasks (``prepare-data``, ``export-checkpoint``).
- :mod:`.config`      the recipe (``[run]``, ``[convergence]`` and the whole ``TrainerConfig``).
- :mod:`.env`         where this process runs: launcher env, node layout, scratch, run URI.
- :mod:`.dist`        the collective helpers (no-ops without a process group).
- :mod:`.status`      ``STATUS.json`` written in the background from rank 0; the loss history.
- :mod:`.errors`      ``TrainerError`` (a user error: one line, exit 2).
- :mod:`.data`        corpus → tokenizer → token shards (``prepare-data``), streamed into training.
- :mod:`.checkpoint`  background commit, resume, elastic resume, outages, save schedule, export.
- :mod:`.spot`        the interruption notice (IMDSv2 + SIGTERM), the deadline decision, the callback.
- :mod:`.loop`        the HF Trainer and all its glue: setup → resume → fit → finish.
- :mod:`.launch`      the cluster (submit → controller → SSM) and the local DeepSpeed launcher.

Dependencies run one way (``tests/test_import_tree.py`` fails on any circle between modules):
``loop`` uses ``checkpoint``, ``spot`` and ``data``; ``checkpoint`` uses ``data.batching`` (the
elastic batch plan); all of them use the top-level rooms and ``artifacts``. ``launch`` uses
``config``, ``env``, ``data.prepare`` and ``checkpoint.elastic``, never the loop (a test holds it).
"""

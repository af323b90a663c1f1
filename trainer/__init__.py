"""Stage 1: DeepSpeed ZeRO-3 pretraining to convergence (``python -m trainer --config FILE.toml``).

Import-light on purpose: torch, transformers and deepspeed are imported inside the functions that
need them, so ``invoke --list`` and config validation stay instant.
"""

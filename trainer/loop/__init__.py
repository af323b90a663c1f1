"""The training loop on every rank: the HF Trainer under DeepSpeed, and all its glue.

- :mod:`.config`      ``[model]``, ``[training]``, ``[deepspeed]``, ``[eval]`` of the recipe.
- :mod:`.train`       ``run_training``: setup → resume → fit → finish on one ``RunContext``.
- :mod:`.args`        HF ``TrainingArguments`` from the recipe.
- :mod:`.dsconfig`    pure: the DeepSpeed JSON from the recipe and the hardware.
- :mod:`.cpu_compat`  every CPU-only adaptation of the DeepSpeed + HF stack.
- :mod:`.model`       the causal LM: GPT-2 or Llama from sizes, or an HF folder.
- :mod:`.hf`          every Trainer subclass and every private HF API use (pins transformers).
- :mod:`.callbacks`   the TrainerCallbacks: convergence, timed saves, commit, data position, timer.
- :mod:`.metrics`     TensorBoard event files (committed in the background) and sample generations.
- :mod:`.reporting`   pure: the HF ``report_to`` integrations a recipe may name, offline or not,
  and the packages each needs.
- :mod:`.publish`     the converged model as ``final/`` with a (signed) manifest.
"""

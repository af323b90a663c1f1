"""``invoke demo``: the whole two-stage pipeline on one CPU box, with no cloud account.

:mod:`demo.pipeline` runs the stages, :mod:`demo.corpus_private` makes the private fine-tune
dataset (encrypted in memory), :mod:`demo.use` evaluates the adapter and exports it to GGUF, :mod:`demo.report` prints the
summary and draws the plot.
"""

"""``invoke demo``: the whole two-stage pipeline on one CPU box, with no cloud account.

- :mod:`demo.cli`: the ``demo`` task (flags in, :func:`demo.pipeline.run_demo` called).
- :mod:`demo.pipeline`: the run — the stages in order, the progress view, the closing list.
- :mod:`demo.stages`: each stage as a user runs it (setup, pretrain with a spot interruption,
  signed download, private data, air-gapped fine-tune, the plaintext search), its summary part.
- :mod:`demo.use`: the adapter evaluated (``invoke evaluate``) and exported to GGUF.
- :mod:`demo.corpus_private`: the private fine-tune dataset, encrypted in memory.
- :mod:`demo.runtime`: the plumbing — workdir, bucket (folder or moto S3), child processes,
  progress bars.
- :mod:`demo.report`: the summary table, ``summary.json`` and the loss plot.
"""

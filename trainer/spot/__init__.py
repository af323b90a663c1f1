"""Spot interruptions: a notice (IMDSv2 or SIGTERM) → save at the next boundary → commit → exit 75.

- :mod:`.config`    ``[spot]`` of the recipe.
- :mod:`.notice`    the watcher: IMDSv2 polling and SIGTERM, the notice and its deadline.
- :mod:`.deadline`  pure: can the interruption checkpoint be committed before the deadline?
- :mod:`.callback`  the thin HF callback that acts on it at a micro-batch or step boundary.
"""

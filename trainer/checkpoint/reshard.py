"""Resume ZeRO-3 at another world size by reading only the old slices each new rank needs.

Why: DeepSpeed loads ZeRO-3 optimizer shards only at the world size that wrote them; its way
across sizes is ``ds_to_universal``, which reads every old shard and writes every parameter's
fp32 weights and both Adam moments again (12 B/param: 84 GB at 7B) before any rank can start —
71 s/GB measured here, the whole checkpoint through one node. But ZeRO-3 partitions every
parameter into contiguous ``ceil(n / W)`` slices by rank, flattened per sub-group in
``param_shapes`` order (DeepSpeed's own ``zero_to_fp32`` and ``ds_to_universal`` read them that
way), so new rank ``r'`` of ``W'`` needs elements ``[r'·p', (r'+1)·p')`` of each parameter,
which lie in a small, computable set of old rank files (:func:`old_ranks_needed`): about
``W / W'`` of them, ~1/N' of the checkpoint per new node.

How (nothing here runs under a collective time-out except the reads of the engine load):

1. before ``torch.distributed`` starts, each node fetches only the old optimizer files its new
   ranks need (:mod:`trainer.checkpoint.fetch`, using :func:`old_ranks_needed` on old rank 0's
   small ``model_states`` file) and :func:`prepare` writes DeepSpeed's universal-load entry
   points beside them: ``latest_universal`` (naming the original tag), ``zero/optimizer_state.pt``
   (the global state: step, loss scale, optimizer hyper-parameters; no tensors) and the
   ``zero/reshard.json`` marker;
2. the DeepSpeed config gets ``load_universal``; DeepSpeed's ZeRO-3 universal load then asks
   ``load_hp_checkpoint_state(folder, key, param)`` for each of this rank's parameters and keys
   (``fp32``, ``exp_avg``, ``exp_avg_sq``) and itself writes the fp32 master partition, the Adam
   moments, the step and the 16-bit partitions into the engine. :func:`install` makes that one
   method answer from :class:`SliceReader` when the marker is there: the old files are opened
   with ``torch.load(mmap=True)`` and only this rank's slices are copied, so a rank reads about
   its own share. Step count, LR schedule (old rank 0's ``model_states``), RNG
   (:func:`trainer.checkpoint.elastic.adapt_rng_files`) and data position (trainer state) come
   as they do for the universal path.

The ``ds_to_universal`` path stays as the checked reference (tests compare the two engines
tensor for tensor) and as the fallback for checkpoints this reader does not cover (not ZeRO-3,
or DeepSpeed's AutoEP partition groups).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts.errors import ArtifactError

log = logging.getLogger(__name__)

MARKER = "reshard.json"
"""In ``<tag>/zero/``: this folder is loaded by :class:`SliceReader`, not from universal files."""
UNIVERSAL_TAG = "latest_universal"
"""The file DeepSpeed reads the tag from when ``checkpoint.load_universal`` is on."""
_OPTIM = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")
MODEL_STATES_0 = "zero_pp_rank_0_mp_rank_00_model_states.pt"
"""Old rank 0's model states: ``param_shapes`` (the flat layout), LR scheduler, step counters."""
KEYS = ("fp32", "exp_avg", "exp_avg_sq")


class ReshardUnsupported(ArtifactError):
    """The checkpoint is not one this reader covers (the universal conversion is used instead)."""


@dataclass(frozen=True)
class Slot:
    """Where one parameter lives in every old rank's flat partitions."""

    group: int
    """Sub-group index (``fp32_flat_groups[group]``, optimizer ``state[group]``)."""
    offset: int
    """Start of this parameter's partition in each old rank's flat sub-group tensor."""
    numel: int
    """Elements of the whole parameter."""
    part: int
    """Elements per old rank: ``ceil(numel / old_world)`` (the last ranks' tails are padding)."""


def layout(param_shapes: list[dict[str, Any]], world: int) -> dict[str, Slot]:
    """Name → :class:`Slot` for a checkpoint written by ``world`` ranks (``ds_to_universal``'s
    ``extract_zero_shards_stage3`` walk: per sub-group, offsets from 0, ``ceil(n/W)`` each)."""
    slots: dict[str, Slot] = {}
    for group, shapes in enumerate(param_shapes):
        offset = 0
        for name, shape in shapes.items():
            numel = math.prod(int(d) for d in shape)
            part = math.ceil(numel / world)
            slots[name] = Slot(group, offset, numel, part)
            offset += part
    return slots


def pieces(slot: Slot, old_world: int, rank: int, world: int) -> list[tuple[int, int, int, int]]:
    """``(old_rank, src_offset, dst_offset, length)`` copies that build new rank ``rank``'s
    partition of this parameter (``src_offset`` inside the old rank's flat sub-group tensor,
    ``dst_offset`` inside the new partition of ``ceil(numel / world)`` elements)."""
    new_part = math.ceil(slot.numel / world)
    start, stop = rank * new_part, min((rank + 1) * new_part, slot.numel)
    out = []
    pos = start
    while pos < stop:
        old = pos // slot.part
        within = pos - old * slot.part
        length = min(stop - pos, slot.part - within)
        out.append((old, slot.offset + within, pos - start, length))
        pos += length
    assert not out or out[-1][0] < old_world, (slot, old_world, rank, world)
    return out


def old_ranks_needed(
    param_shapes: list[dict[str, Any]], old_world: int, new_ranks: set[int], new_world: int
) -> set[int]:
    """The old ranks whose optimizer files the new ranks ``new_ranks`` (of ``new_world``) read."""
    slots = layout(param_shapes, old_world)
    return {
        old
        for slot in slots.values()
        for rank in new_ranks
        for old, *_ in pieces(slot, old_world, rank, new_world)
    }


def optim_files(tag_dir: Path) -> dict[int, Path]:
    """Old rank → its ZeRO optimizer file present in ``tag_dir`` (a node holds only some)."""
    return {int(m.group(1)): p for p in Path(tag_dir).iterdir() if (m := _OPTIM.match(p.name))}


def param_shapes(model_states: Path) -> list[dict[str, Any]]:
    """``param_shapes`` of a ZeRO-3 ``model_states`` file (mmap: the placeholders are not read)."""
    import torch

    doc = torch.load(model_states, map_location="cpu", mmap=True, weights_only=False)
    shapes = doc.get("param_shapes")
    if not isinstance(shapes, list) or not shapes:
        raise ReshardUnsupported(f"{model_states}: no ZeRO-3 param_shapes")
    return shapes


class SliceReader:
    """This rank's partitions, read from the old ranks' optimizer files through mmap."""

    def __init__(self, tag_dir: Path, old_world: int) -> None:
        self.tag_dir = Path(tag_dir)
        self.old_world = old_world
        self.slots = layout(param_shapes(self.tag_dir / MODEL_STATES_0), old_world)
        self.files = optim_files(self.tag_dir)
        self._open: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        #: Bytes copied out of old files (the slices; metadata is a few kB per file).
        self.bytes_read = 0
        #: Old ranks this reader opened.
        self.opened: set[int] = set()

    def _state(self, old: int) -> dict[str, Any]:
        import torch

        with self._lock:
            if old not in self._open:
                path = self.files.get(old)
                if path is None:
                    raise ArtifactError(
                        f"{self.tag_dir}: old rank {old}'s optimizer file is needed and was not "
                        "fetched (the fetch plan and the load disagree)"
                    )
                doc = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
                sd = doc["optimizer_state_dict"]
                if sd.get("ds_zero_partition_groups"):
                    raise ReshardUnsupported(f"{path}: AutoEP partition groups")
                self._open[old] = sd
                self.opened.add(old)
            return self._open[old]

    def _flat(self, old: int, key: str, group: int) -> Any:
        sd = self._state(old)
        if key == "fp32":
            return sd["fp32_flat_groups"][group]
        return sd["optimizer_state_dict"]["state"][group][key]

    def partition(self, name: str, key: str, rank: int, world: int) -> Any:
        """New rank ``rank``'s flat fp32 partition of parameter ``name`` for ``key``, zero-padded
        to ``ceil(numel / world)`` (what DeepSpeed's universal load narrows out of a full
        parameter)."""
        import torch

        slot = self.slots.get(name)
        if slot is None:
            raise ArtifactError(f"{self.tag_dir}: parameter {name!r} is not in the checkpoint")
        out = torch.zeros(math.ceil(slot.numel / world), dtype=torch.float32)
        for old, src, dst, length in pieces(slot, self.old_world, rank, world):
            flat = self._flat(old, key, slot.group)
            out.narrow(0, dst, length).copy_(flat.narrow(0, src, length))
            self.bytes_read += length * flat.element_size()
        return out

    def global_state(self) -> dict[str, Any]:
        """What DeepSpeed's universal ``zero/optimizer_state.pt`` is read for (loss scale, step,
        hyper-parameters), without the old rank's tensors."""
        if not self.files:
            raise ArtifactError(f"{self.tag_dir}: no ZeRO optimizer file")
        sd = self._state(min(self.files))
        out = {k: v for k, v in sd.items() if k not in ("fp32_flat_groups", "optimizer_state_dict")}
        osd = sd["optimizer_state_dict"]
        groups = osd["param_groups"]
        out["optimizer_state_dict"] = {"state": {0: {"step": osd["state"][0]["step"]}},
                                       "param_groups": groups}  # fmt: skip
        out["param_groups"] = groups
        return out


def tag_of(folder: Path) -> str:
    """The ``global_step<N>`` folder DeepSpeed wrote into an HF checkpoint folder."""
    latest = Path(folder) / "latest"
    if latest.exists():
        return latest.read_text().strip()
    tags = sorted(p.name for p in Path(folder).glob("global_step*") if p.is_dir())
    if not tags:
        raise ArtifactError(f"{folder}: no DeepSpeed global_step folder")
    return tags[-1]


def is_zero3(folder: Path) -> bool:
    """Whether the local checkpoint folder holds old rank 0's ZeRO-3 ``model_states`` file."""
    try:
        return (Path(folder) / tag_of(folder) / MODEL_STATES_0).is_file()
    except ArtifactError:
        return False


def prepare(folder: Path, *, old_world: int) -> dict[str, Any]:
    """Write the universal-load entry points into the checkpoint folder (see module docstring);
    idempotent. Returns what the reshard will read (for ``STATUS.json``)."""
    import torch

    folder = Path(folder)
    tag = tag_of(folder)
    reader = SliceReader(folder / tag, old_world)
    zero = folder / tag / "zero"
    zero.mkdir(exist_ok=True)
    tmp = zero / "optimizer_state.pt.tmp"
    torch.save(reader.global_state(), tmp)
    tmp.replace(zero / "optimizer_state.pt")
    doc = {"tag": tag, "old_world": old_world, "old_ranks_here": sorted(reader.files)}
    (zero / MARKER).write_text(json.dumps(doc) + "\n")
    (folder / UNIVERSAL_TAG).write_text(tag)
    return doc


_READERS: dict[str, SliceReader] = {}


def reader_for(zero_dir: Path) -> SliceReader | None:
    """The process's reader for a ``<tag>/zero`` folder :func:`prepare` marked, else None."""
    marker = Path(zero_dir) / MARKER
    if not marker.is_file():
        return None
    key = str(marker.resolve())
    if key not in _READERS:
        doc = json.loads(marker.read_text())
        _READERS[key] = SliceReader(Path(zero_dir).parent, int(doc["old_world"]))
    return _READERS[key]


def install() -> None:
    """Make DeepSpeed's ZeRO-3 universal load read marked folders through :class:`SliceReader`.

    The one DeepSpeed method replaced is ``DeepSpeedZeroOptimizer_Stage3.load_hp_checkpoint_state``
    (0.19: ``(self, folder, key, param=None)`` → this rank's flat partition); a folder without
    the marker goes to DeepSpeed's own code, so the universal path is unchanged. Idempotent.
    """
    import inspect

    from deepspeed import comm as dist
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3 as Stage3

    original = Stage3.load_hp_checkpoint_state
    if getattr(original, "_twostage_reshard", False):
        return
    if list(inspect.signature(original).parameters)[:4] != ["self", "folder", "key", "param"]:
        raise ReshardUnsupported(
            "this DeepSpeed's ZeRO-3 load_hp_checkpoint_state(self, folder, key, param) differs; "
            "the resharding load needs deepspeed 0.19 (pip install 'deepspeed>=0.19,<0.20')"
        )

    def load_hp_checkpoint_state(self: Any, folder: str, key: str, param: Any = None) -> Any:
        reader = reader_for(Path(folder).parent)
        if reader is None:
            return original(self, folder, key, param)
        group = self._get_param_partition_group(param) if param is not None else self.dp_process_group
        return reader.partition(
            Path(folder).name, key, dist.get_rank(group=group), dist.get_world_size(group=group)
        )

    load_hp_checkpoint_state._twostage_reshard = True  # type: ignore[attr-defined]
    Stage3.load_hp_checkpoint_state = load_hp_checkpoint_state


def loaded_report() -> dict[str, Any]:
    """What this process's readers read (bytes of slices, old files opened), for the log."""
    return {
        "bytes_read": sum(r.bytes_read for r in _READERS.values()),
        "old_ranks_opened": sorted({o for r in _READERS.values() for o in r.opened}),
    }

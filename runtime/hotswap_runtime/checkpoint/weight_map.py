"""What a manifest's shards hold, checked against its weight map: one check for every path.

A sharded checkpoint's tensors reach the swapper two ways: parsed while the shards
download (``streaming.StreamParser``) or read back from the cache after a restart, a
rollback or a cache hit (``safetensors_file.read_flat``). Both hand the shards' checked
layouts, in the manifest's order, to ``check_shards``, so a manifest is served by both
or refused by both with the same reason: a revision that passed a canary never leaves a
restarted pod with nothing it may load.

The rules (``weight_map``: tensor name -> index of its shard):

* every tensor a shard holds is one the weight map puts in that very shard, so no
  tensor is in two shards and none is held that the weight map does not list;
* every tensor the weight map lists is held by a shard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hotswap_contract.redact import clip
from hotswap_runtime.checkpoint.layouts import FlatLayout, named
from hotswap_runtime.errors import ManifestError


def check_shard(layout: FlatLayout, index: int, owners: Mapping[str, int], where: str) -> None:
    """Every tensor of shard ``index`` (at ``where``) is where the weight map puts it."""
    for slot in layout.slots:
        if owners.get(slot.name) != index:
            raise ManifestError(
                f"shard {where} holds {clip(slot.name, 100)!r}, which the manifest's "
                "weight_map puts in another shard or does not list"
            )


def check_shards(
    layouts: Sequence[FlatLayout], owners: Mapping[str, int], wheres: Sequence[str]
) -> None:
    """The shards' layouts (in the manifest's order, at ``wheres``) hold exactly the
    tensors of the weight map ``owners``, each in its own shard; else ManifestError."""
    held = 0
    for index, (layout, where) in enumerate(zip(layouts, wheres, strict=True)):
        check_shard(layout, index, owners, where)
        held += len(layout.slots)
    if held != len(owners):  # each slot is a distinct listed tensor (checked above)
        names = {slot.name for layout in layouts for slot in layout.slots}
        missing = sorted(name for name in owners if name not in names)
        raise ManifestError(
            f"the manifest of shards {wheres[0]} (and the rest): weight_map names "
            f"{named(missing)}, which no shard holds; it must list exactly the shards' tensors"
        )

"""The SSL-ALPNet protocol rules: folds, setting-2 label groups, support/query chunks.

**Folds** (``ManualAnnoDatasetv2.get_scanids`` with a circular subject list): subjects are taken in
the order given (the loaders sort them by numeric id, as SSL-ALPNet does). With ``n`` subjects and
5 folds, the block boundaries are ``sep[f] = (f * n) // 5``; this reproduces SSL-ALPNet's
``_SEP=[0,4,8,12,16,20]`` for its 20 MR scans and ``[0,6,...,30]`` for its 30 CT scans, and splits any
other count (our copies: 16 MR → blocks of 3,3,3,3,4; 23 CT → 4,5,4,5,5) into consecutive blocks
covering every subject once. Fold ``f``:

* queries = ``subjects[sep[f]:sep[f+1]]``;
* support = the next subject in circular order, ``subjects[sep[f+1] % n]`` (SSL-ALPNet's ``nsup=1``
  extra scan, picked by ``support_idx=[4]`` / ``[6]``);
* train = everything else (SSL-ALPNet: 15 MR / 23 CT).

**Setting 2** removes, from self-supervised training, every slice containing **any** organ of the
tested label group (:data:`SETTING2_GROUPS`: kidneys; liver + spleen), so each fold needs one
training run per group (:meth:`episodes.protocol.Protocol.training_runs`).

**Chunk protocol** (``n_sup_part=3``, ``ManualAnnoDatasetv2.get_support`` + ``ValidationDataset``):

* support: ``zs`` = sorted slices of the support subject containing the organ, ``L = len(zs)``;
  chunk ``i`` of ``n`` uses ``zs[floor(p * L)]`` with ``p = (2i + 1) / (2n)`` (percentiles 1/6, 1/2,
  5/6 for ``n=3``). For ``k`` shots the ``k`` slices of chunk ``i`` are at
  ``p = (i + (2j + 1) / (2k)) / n``, ``j < k`` (``k=1`` is SSL-ALPNet's rule; SSL-ALPNet's multi-shot
  uses several support *scans* instead). Requires ``k * n <= L`` so the picks are distinct; with
  ``share=True`` (``Protocol.share_support_slices``) an organ with ``k <= L < k * n`` slices is still
  scored: chunk ``i`` takes the ``k`` consecutive organ slices ``zs[s:s + k]`` centred on its
  percentile, ``s = clamp(floor(p * L - k / 2 + 1/2), 0, L - k)`` with ``p = (2i + 1) / (2n)``, so each
  chunk keeps ``k`` distinct slices and neighbouring chunks share some.
* queries: every slice ``z`` in the query's ground-truth range ``z_min..z_max`` (inclusive, also
  slices inside the range without the organ) is scored, with chunk
  ``clamp(floor((z - z_min) / ((z_max - z_min) / n)), 0, n - 1)`` (``0`` when ``z_max == z_min``),
  computed with the same float arithmetic as SSL-ALPNet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "N_FOLDS",
    "SETTING2_GROUPS",
    "SHARE_HINT",
    "FoldSplit",
    "TooFewSupportSlices",
    "fold_boundaries",
    "query_chunk",
    "support_slice_indices",
]

N_FOLDS = 5

#: Ends the :class:`TooFewSupportSlices` message when sharing slices would make the plan possible.
SHARE_HINT = "; share_support_slices lets neighbouring chunks share slices"


class TooFewSupportSlices(ValueError):
    """The support organ covers fewer slices than ``shots * chunks`` distinct picks need.

    ``shareable`` is true when ``share=False`` was asked and sharing would work (``shots <= n_slices``); the
    message then ends with :data:`SHARE_HINT`. ``reason`` is the message without the hint.
    """

    def __init__(self, shots: int, chunks: int, n_slices: int, *, shared: bool, where: str = "") -> None:
        self.shots, self.chunks, self.n_slices = shots, chunks, n_slices
        self.shared, self.where = shared, where
        self.shareable = not shared and shots <= n_slices
        super().__init__(self.reason + (SHARE_HINT if self.shareable else ""))

    @property
    def reason(self) -> str:
        return (
            f"{self.where}{self.shots}-shot with {self.chunks} chunks needs {self.shots * self.chunks} distinct "
            f"support slices, but the organ covers only {self.n_slices} slice(s) "
            f"({self.n_slices // self.chunks} per chunk)"
        )

    def at(self, where: str) -> TooFewSupportSlices:
        """The same error, its message prefixed with ``where`` (e.g. the support subject and organ)."""
        return TooFewSupportSlices(self.shots, self.chunks, self.n_slices, shared=self.shared, where=f"{where}: ")


#: Setting-2 label groups (tested together, excluded together from training), canonical names.
#: SSL-ALPNet: MRI ``[2, 3]`` / ``[1, 4]``, CT ``[2, 3]`` / ``[1, 6]``.
SETTING2_GROUPS: tuple[tuple[str, ...], ...] = (("right_kidney", "left_kidney"), ("liver", "spleen"))


def fold_boundaries(n_subjects: int, n_folds: int = N_FOLDS) -> tuple[int, ...]:
    """Block boundaries ``sep`` (length ``n_folds + 1``): ``sep[f] = (f * n) // n_folds``."""
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    if n_subjects < n_folds + 1:
        raise ValueError(
            f"{n_subjects} subjects are too few for {n_folds} folds (need at least {n_folds + 1}: "
            "every fold needs a query block and a separate support subject)"
        )
    return tuple((f * n_subjects) // n_folds for f in range(n_folds + 1))


@dataclass(frozen=True)
class FoldSplit:
    """Subjects of one fold: self-supervised training, the support scan, the query scans."""

    train: tuple[str, ...]
    support: str | None  # None: no held-out subjects (``Protocol.fold`` None)
    queries: tuple[str, ...]


def support_slice_indices(
    organ_slices: Sequence[int], chunks: int, shots: int, *, share: bool = False
) -> tuple[tuple[int, ...], ...]:
    """Support slices per chunk (see module docs).

    Args:
        organ_slices: sorted slice indices of the support subject that contain the organ.
        chunks: number of chunks ``n``.
        shots: slices per chunk ``k``.
        share: when the organ covers fewer than ``k * n`` slices (but at least ``k``), let neighbouring
            chunks share slices (each chunk: the ``k`` consecutive organ slices around its percentile)
            instead of raising. With ``k * n`` slices or more it changes nothing.

    Returns:
        ``n`` tuples of ``k`` distinct slice indices.

    Raises:
        TooFewSupportSlices: fewer than ``k * n`` organ slices (with ``share``: fewer than ``k``).
    """
    zs = list(organ_slices)
    n_slices = len(zs)
    if chunks < 1 or shots < 1:
        raise ValueError(f"chunks and shots must be >= 1, got chunks={chunks}, shots={shots}")
    if shots * chunks > n_slices:
        if share and shots <= n_slices:
            return tuple(
                tuple(int(z) for z in zs[s : s + shots])
                for s in (
                    min(max(math.floor(Fraction(2 * i + 1, 2 * chunks) * n_slices - Fraction(shots - 1, 2)), 0),
                        n_slices - shots)
                    for i in range(chunks)
                )
            )  # fmt: skip
        raise TooFewSupportSlices(shots, chunks, n_slices, shared=share)
    out = []
    for i in range(chunks):
        picks = []
        for j in range(shots):
            pct = (Fraction(i) + Fraction(2 * j + 1, 2 * shots)) / chunks
            picks.append(zs[math.floor(pct * n_slices)])
        out.append(tuple(int(z) for z in picks))
    return tuple(out)


def query_chunk(z: int, z_min: int, z_max: int, chunks: int) -> int:
    """Chunk of query slice ``z`` in the organ range ``z_min..z_max`` (SSL-ALPNet ``part_assign``)."""
    if z_max == z_min:
        return 0
    part = int((z - z_min) // ((z_max - z_min) / chunks))
    return min(max(part, 0), chunks - 1)

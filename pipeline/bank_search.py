"""Exact nearest-neighbour distances to a PatchCore memory bank, most of the bank skipped.

Every test patch needs its distance to the nearest bank entry. Done by brute force that is one
product of all patches with all entries, and on a CPU it costs a third to a half as much as the
backbone. Where patch features are clustered (on the synthetic print crops, aligned instances of one
template, the median distance between two bank entries is ten times a patch's distance to its
nearest entry), most entries can be ruled out without computing their distance:

1. The bank is split into groups around ``k`` centres that are themselves bank entries, chosen by
   k-center greedy (which keeps the largest group radius small); each group knows its radius ``r``.
2. A patch's distances to the centres are a small product. The nearest centre is a bank entry, so its
   distance ``u`` bounds the answer from above.
3. By the triangle inequality no entry of a group whose centre is at ``d`` is nearer than ``d - r``:
   groups with ``d - r > u`` are skipped. The rest are searched exactly, one product per group over
   the patches that need it.

The result is the brute-force minimum (the same distances up to float rounding: the bound keeps a
small relative margin so that rounding can never skip the group that holds the nearest entry).

Whether it pays depends on the data. On the synthetic print crops about 9 % of the bank is searched
per patch and the search is about 4x faster. On magnetic_tile's and DeepPCB's images the bounds rule
out almost nothing: there a patch's nearest entry is about half as far as a typical pair of entries
(high-dimensional features, not clustered). So the index probes itself when it is built: bank
entries stand in for test patches, and when the bounds would leave more than :data:`WORTH_PRUNING` of
the bank, every search is the full product. A call that finds its own patches over that share after
the first step (images far from anything seen in training) also finishes with the full product. The
choice depends on the bank and the call's patches only, never on earlier calls, and a patch's
distance does not depend on the other patches of its call (see :meth:`BankIndex.nearest_distances`).
A GPU always runs the full product, which is cheap there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from defectscan.pipeline.coreset import k_center_greedy

MARGIN = 1e-4  # relative slack on the pruning bound (see BankIndex.nearest_distances)
WORTH_PRUNING = 0.2  # above this share of the bank left to search, the full product is faster
GATHER_ROWS = 1 << 16  # patch rows gathered at a time for the groups' products (44 MB at D = 168)
FULL_SEARCH_CELLS = 1 << 24  # patches x entries per product of the full search (64 MB of float32)


def _columns(entries: torch.Tensor) -> torch.Tensor:
    """``[-2 y, |y|^2]`` per entry: with a patch as ``[x, 1]``, their product is ``|y|^2 - 2 x.y``,
    the squared distance less ``|x|^2`` (the same for every entry)."""
    return torch.cat([entries * -2, entries.pow(2).sum(1, keepdim=True)], 1)


def _rows(patches: torch.Tensor) -> torch.Tensor:
    return torch.cat([patches, patches.new_ones(patches.shape[0], 1)], 1)


def full_nearest_distances(patches: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Distance from each patch ``(N, D)`` to its nearest entry of ``bank`` ``(M, D)`` by the full
    product. For a GPU, where the product is cheap."""
    least = _least(_rows(patches), _columns(bank))
    return (least + patches.pow(2).sum(1)).clamp_min_(0).sqrt_()


def _products(rows: torch.Tensor, columns: torch.Tensor) -> Iterator[torch.Tensor]:
    """``|y|^2 - 2 x.y`` for every row and column, in blocks of rows so that no block's matrix
    exceeds :data:`FULL_SEARCH_CELLS`."""
    step = max(256, FULL_SEARCH_CELLS // columns.shape[0])
    return (part @ columns.T for part in rows.split(step))


def _nearest(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The column nearest to every row."""
    return torch.cat([block.argmin(1) for block in _products(rows, columns)])


def _least(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``min (|y|^2 - 2 x.y)`` over all columns for every row."""
    return torch.cat([block.amin(1) for block in _products(rows, columns)])


@dataclass
class BankIndex:
    """A memory bank grouped around centres (see the module docstring). Built once per bank."""

    columns: torch.Tensor  # (M, D + 1) the bank's entries as columns, grouped
    offsets: tuple[int, ...]  # group g is columns[offsets[g]:offsets[g + 1]]
    centre_columns: torch.Tensor  # (k, D + 1)
    radii: torch.Tensor  # (k,) largest distance from a centre to an entry of its group
    prunes: bool = True  # False: the bank's own entries say the bounds would not pay (see build)

    @classmethod
    def build(cls, bank: torch.Tensor, groups: int | None = None) -> BankIndex:
        """Groups: about ``2 sqrt(M)`` by default, which balances the per-group overhead against the
        entries searched."""
        bank = bank.float()
        count = groups or round(2 * math.sqrt(bank.shape[0]))
        centres = bank[k_center_greedy(bank, max(1, min(count, bank.shape[0])))]
        centre_columns = _columns(centres)
        # each entry joins its nearest centre
        group = (_rows(bank) @ centre_columns.T).argmin(1)
        order = torch.argsort(group, stable=True)
        sizes = torch.bincount(group, minlength=centres.shape[0])
        members = bank[order]
        radii = torch.zeros(centres.shape[0])
        radii.scatter_reduce_(0, group[order], (members - centres[group[order]]).norm(dim=1), "amax")
        radii[sizes == 0] = -math.inf  # an empty group is never searched
        offsets = (0, *torch.cumsum(sizes, 0).tolist())
        index = cls(_columns(members), offsets, centre_columns, radii)
        index.prunes = index._probe_share(members) <= WORTH_PRUNING
        return index

    def _probe_share(self, members: torch.Tensor, probes: int = 512) -> float:
        """The share of the bank the bounds would leave for patches like the bank's own entries: each
        of up to ``probes`` entries, spread over the bank, stands in for a test patch whose nearest
        entry is its own nearest other entry (for OK patches the two distances are alike). Decided
        once per bank, from the bank alone, so that a score never depends on what was scored before."""
        if members.shape[0] < 2:
            return 1.0
        picked = torch.linspace(0, members.shape[0] - 1, min(probes, members.shape[0])).long()
        rows = _rows(members[picked])
        norms = members[picked].pow(2).sum(1)
        least = rows @ self.columns.T
        least[torch.arange(picked.shape[0]), picked] = math.inf  # not the entry itself
        upper = (least.amin(1) + norms).clamp_min_(0).sqrt_()
        centre_dist = (rows @ self.centre_columns.T).add_(norms[:, None]).clamp_min_(0).sqrt_()
        return self._share(self._unruled(centre_dist, upper))

    def nearest_distances(self, patches: torch.Tensor) -> torch.Tensor:
        """Distance from each patch ``(N, D)`` to its nearest bank entry ``(N,)``.

        A group is skipped only when its bound exceeds the best distance found by more than
        :data:`MARGIN` (relative), so float rounding of the bound cannot skip the group that holds
        the nearest entry; and were the margin too small, a skipped entry would still be no nearer
        than the answer by more than the rounding of the distances themselves.

        When pruning, the products that find the nearest entry have shapes that depend on the other
        patches of the call, and so does their rounding; the distance returned is therefore computed
        again from the patch and the entry found alone, so that a patch gets the same distance in
        any batch. (The full product's rounding does not depend on the other rows either, measured
        for calls of 16 patches or more; BLAS switches kernels below that, and a crop has at least
        16 patches.)
        """
        if not self.prunes:
            rows = _rows(patches.float())
            return (_least(rows, self.columns) + rows[:, :-1].pow(2).sum(1)).clamp_min_(0).sqrt_()
        rows, norms, best, nearest, need = self._first_pass(patches)
        if self._share(need) > WORTH_PRUNING:  # these patches are far from the bank: bounds too loose
            nearest = _nearest(rows, self.columns)
        else:
            group, patch = need.T.nonzero(as_tuple=True)
            found, entry = self._search(rows, patch, group)
            best.scatter_reduce_(0, patch, found, "amin")
            won = found <= best[patch]
            nearest[patch[won]] = entry[won]
        least = (rows * self.columns[nearest]).sum(1)  # this patch and its nearest entry only
        return (least + norms).clamp_min_(0).sqrt_()

    def _share(self, need: torch.Tensor) -> float:
        """Mean share of the bank that ``need`` (patches x groups) leaves to search."""
        sizes = torch.tensor(self.offsets).diff().float()
        return float((need.float() @ sizes).mean()) / self.offsets[-1]

    def searched_fraction(self, patches: torch.Tensor) -> float:
        """Mean share of the bank a patch is compared with, the first step included: 1 for the full
        product, over 1 when a call falls back to it after the first step (for benchmarks)."""
        if not self.prunes:
            return 1.0
        need = self._first_pass(patches)[-1]
        groups = len(self.offsets) - 1
        first = (groups + self.offsets[-1] / groups) / self.offsets[-1]  # centres, then a group
        share = self._share(need)
        return first + (1.0 if share > WORTH_PRUNING else share)

    def _first_pass(
        self, patches: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Search each patch's nearest centre's group (usually the answer, and a tight bound), then
        mark the other groups that the bound cannot rule out: ``rows, |x|^2, best so far, its entry
        (a column), need``."""
        rows = _rows(patches.float())
        norms = patches.float().pow(2).sum(1)
        to_centres = rows @ self.centre_columns.T  # (N, k): squared distances less |x|^2
        home = to_centres.argmin(1)
        order = torch.argsort(home, stable=True)
        best = torch.empty_like(norms)
        nearest = torch.empty_like(home)
        best[order], nearest[order] = self._search(rows, order, home[order])
        upper = (best + norms).clamp_min_(0).sqrt_()
        centre_dist = to_centres.add_(norms[:, None]).clamp_min_(0).sqrt_()
        need = self._unruled(centre_dist, upper)
        need[torch.arange(need.shape[0]), home] = False
        return rows, norms, best, nearest, need

    def _unruled(self, centre_dist: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """Patches x groups that the triangle inequality cannot rule out: no entry of a group is
        nearer than its centre's distance less its radius; ``upper`` bounds each patch's answer."""
        return centre_dist - self.radii[None, :] <= upper[:, None] * (1 + MARGIN) + MARGIN

    def _search(
        self, rows: torch.Tensor, patch: torch.Tensor, group: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``min (|y|^2 - 2 x.y)`` over group ``group[i]`` for patch ``patch[i]``, and the column
        where it is found; ``group`` sorted. The patches' rows are gathered a window of
        :data:`GATHER_ROWS` pairs at a time (or one group's, if larger), so memory stays bounded
        however many pairs the bounds leave."""
        counts = torch.bincount(group, minlength=len(self.offsets) - 1).tolist()
        found = torch.empty(patch.shape[0])
        entry = torch.empty(patch.shape[0], dtype=torch.long)
        window, window_start = rows[:0], 0
        start = 0
        for g, n in enumerate(counts):
            if not n:
                continue
            if start + n > window_start + window.shape[0]:
                window_start = start
                window = rows.index_select(0, patch[start : start + max(n, GATHER_ROWS)])
            part = window[start - window_start : start - window_start + n]
            cols = self.columns[self.offsets[g] : self.offsets[g + 1]]
            torch.min(part @ cols.T, 1, out=(found[start : start + n], entry[start : start + n]))
            entry[start : start + n] += self.offsets[g]
            start += n
        return found, entry

"""The pruned nearest-neighbour search: the brute-force minimum, with most of the bank skipped."""

from __future__ import annotations

import pytest
import torch

from pipeline import bank_search, networks
from pipeline.backbone import DEFAULT_LAYERS, LITE2
from pipeline.bank_search import RETRY_AFTER, BankIndex


def _clustered(count: int, centres: torch.Tensor, spread: float, gen: torch.Generator) -> torch.Tensor:
    """Points scattered around randomly chosen ``centres``, like patch features of a printed part."""
    which = torch.randint(0, centres.shape[0], (count,), generator=gen)
    return centres[which] + spread * torch.randn(count, centres.shape[1], generator=gen)


def _exact(patches: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    return torch.cdist(patches.double(), bank.double()).amin(1).float()


@pytest.fixture(scope="module")
def clustered() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(40, 168, generator=gen)
    return _clustered(2500, centres, 1.0, gen), _clustered(4000, centres, 1.2, gen)


def test_clustered_bank_equals_brute_force_and_is_mostly_skipped(
    clustered: tuple[torch.Tensor, torch.Tensor],
) -> None:
    bank, patches = clustered
    index = BankIndex.build(bank)
    torch.testing.assert_close(index.nearest_distances(patches), _exact(patches, bank), rtol=1e-4, atol=1e-3)
    assert index.searched_fraction(patches) < 0.25
    assert index.full_calls_left == 0  # pruned, no fallback to the full product


def test_rows_gathered_in_small_windows_give_the_same_distances(
    clustered: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory is bounded by gathering a window of pairs at a time; windows smaller than a group's
    pairs (which then get a window of their own) and windows that end inside a group both work."""
    bank, patches = clustered
    monkeypatch.setattr(bank_search, "GATHER_ROWS", 97)
    index = BankIndex.build(bank)
    torch.testing.assert_close(index.nearest_distances(patches), _exact(patches, bank), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("groups", "falls_back"), [(1, False), (7, True), (3000, False)])
def test_unclustered_bank_and_any_group_count_still_give_the_minimum(groups: int, falls_back: bool) -> None:
    """Uniform noise prunes badly (with 7 groups the index falls back to the full product, and stays
    there for a while); a single group (the first step is the whole search) and more groups than
    entries (one entry each: the first step finds the nearest) work too."""
    gen = torch.Generator().manual_seed(1)
    bank, patches = torch.rand(900, 32, generator=gen), torch.rand(700, 32, generator=gen)
    index = BankIndex.build(bank, groups)
    for call in range(2):
        torch.testing.assert_close(
            index.nearest_distances(patches), _exact(patches, bank), rtol=1e-4, atol=1e-4
        )
        assert index.full_calls_left == (RETRY_AFTER - call if falls_back else 0)


def test_duplicates_bank_entries_as_patches_and_a_one_entry_bank() -> None:
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(50, 16, generator=gen)
    bank = torch.cat([base, base, base[:5]])  # duplicated entries leave some groups empty
    patches = torch.cat([bank[::3], torch.randn(40, 16, generator=gen)])
    got = BankIndex.build(bank, 60).nearest_distances(patches)
    torch.testing.assert_close(got, _exact(patches, bank), rtol=1e-4, atol=2e-3)
    assert float(got[: len(bank[::3])].max()) < 2e-3  # a patch that is an entry is at distance 0
    single = BankIndex.build(bank[:1])
    torch.testing.assert_close(
        single.nearest_distances(patches), _exact(patches, bank[:1]), rtol=1e-4, atol=1e-3
    )


def test_patchcore_rebuilds_its_index_when_the_bank_changes(
    clustered: tuple[torch.Tensor, torch.Tensor],
) -> None:
    bank, patches = clustered
    net = networks.build("patchcore", LITE2, DEFAULT_LAYERS).eval()
    net.memory_bank = bank.clone()
    first, _ = net.nearest_neighbors(patches, n_neighbors=1)
    torch.testing.assert_close(first, _exact(patches, bank), rtol=1e-4, atol=1e-3)
    net.memory_bank = bank[::2].clone()  # replaced, as fitting or loading does
    second, _ = net.nearest_neighbors(patches, n_neighbors=1)
    torch.testing.assert_close(second, _exact(patches, bank[::2]), rtol=1e-4, atol=1e-3)
    net.memory_bank.mul_(2)  # changed in place
    third, _ = net.nearest_neighbors(patches, n_neighbors=1)
    torch.testing.assert_close(third, _exact(patches, bank[::2] * 2), rtol=1e-4, atol=2e-3)

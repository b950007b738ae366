"""The pruned nearest-neighbour search: the brute-force minimum, with most of the bank skipped."""

from __future__ import annotations

import pytest
import torch

from defectscan.pipeline import bank_search, networks
from defectscan.pipeline.bank_search import BankIndex
from defectscan.pipeline.model_config import DEFAULT_LAYERS, LITE2


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
    assert index.prunes  # the self-probe saw the clusters


def test_rows_gathered_in_small_windows_give_the_same_distances(
    clustered: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory is bounded by gathering a window of pairs at a time; windows smaller than a group's
    pairs (which then get a window of their own) and windows that end inside a group both work."""
    bank, patches = clustered
    monkeypatch.setattr(bank_search, "GATHER_ROWS", 97)
    index = BankIndex.build(bank)
    torch.testing.assert_close(index.nearest_distances(patches), _exact(patches, bank), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("groups", "prunes"), [(1, False), (7, False), (3000, True)])
def test_unclustered_bank_and_any_group_count_still_give_the_minimum(
    groups: int, prunes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uniform noise prunes badly: the index's self-probe sends it to the full product (one group, 7
    groups), except with one entry per group (3,000 asked for 900 entries), where the first step
    finds the nearest entry. Forced to prune anyway, every path still gives the minimum."""
    gen = torch.Generator().manual_seed(1)
    bank, patches = torch.rand(900, 32, generator=gen), torch.rand(700, 32, generator=gen)
    index = BankIndex.build(bank, groups)
    assert index.prunes == prunes
    exact = _exact(patches, bank)
    torch.testing.assert_close(index.nearest_distances(patches), exact, rtol=1e-4, atol=1e-4)
    index.prunes = True
    monkeypatch.setattr(bank_search, "WORTH_PRUNING", 2.0)  # never fall back after the first step
    torch.testing.assert_close(index.nearest_distances(patches), exact, rtol=1e-4, atol=1e-4)


def test_far_patches_fall_back_and_results_do_not_depend_on_earlier_calls(
    clustered: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Patches far from every cluster (loose bounds) finish with the full product; a call's result is
    the same whatever was searched before it."""
    bank, patches = clustered
    far = 3 * torch.randn(500, bank.shape[1], generator=torch.Generator().manual_seed(3))
    index = BankIndex.build(bank)
    first = index.nearest_distances(patches)
    assert index.searched_fraction(far) > 1  # the first step, then the full product
    torch.testing.assert_close(index.nearest_distances(far), _exact(far, bank), rtol=1e-4, atol=1e-3)
    assert torch.equal(index.nearest_distances(patches), first)
    assert torch.equal(BankIndex.build(bank).nearest_distances(patches), first)


def test_a_patch_gets_the_same_distance_in_any_batch(clustered: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The pruned search's products take their shapes from the whole call; the distance returned does
    not: the same patches searched one at a time, in odd batches and all at once agree to the bit.
    The full product (a bank that does not prune) agrees too for calls of 16 patches or more (BLAS
    changes kernels below that; a crop at 32 px or more is at least 16 patches)."""
    bank, patches = clustered
    spread = torch.rand(2000, bank.shape[1], generator=torch.Generator().manual_seed(4))
    cases = (
        (BankIndex.build(bank), patches, (1, 7, 1000)),
        (BankIndex.build(spread), spread + 0.01, (16, 144, 1000)),
    )
    for index, queries, sizes in cases:
        whole = index.nearest_distances(queries)
        for size in sizes:
            pieces = torch.cat([index.nearest_distances(part) for part in queries[:1400].split(size)])
            assert torch.equal(pieces, whole[:1400])
    assert cases[0][0].prunes and not cases[1][0].prunes


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

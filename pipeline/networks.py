"""anomalib's torch models, built offline on our backbone, and how each one learns from OK images.

* **patchcore**: anomalib's ``PatchcoreModel`` (feature pooling, multi-layer embedding, nearest-neighbour
  patch scores, re-weighted image score, blurred anomaly map). Only the memory bank is ours: it comes
  from :func:`pipeline.coreset.k_center_greedy` instead of anomalib's one-pick-per-pass greedy.
* **padim**: anomalib's ``PadimModel``; the per-location Gaussian is fitted with per-sample weights.
* **stfpm**: anomalib's ``StfpmModel`` (teacher-student feature pyramid matching), built with an offline
  teacher: anomalib's constructor asks timm for pretrained weights, which would reach the network, so
  :class:`OfflineStfpm` builds the same two extractors with our weights in the teacher. The student is
  trained with anomalib's ``STFPMLoss`` applied per sample, so each sample's loss carries its weight.

Auxiliary images (GAN-made or otherwise augmented OK images) enter with a weight ``w`` in (0, 1]:

* *patchcore*: an aux image counts as ``w`` of an image: a share ``w`` of its patches (drawn with a
  fixed seed) joins the OK patches the coreset is chosen from, and they compete as equals. Features seen
  only in aux images are then covered more coarsely the lower ``w`` is, so a test patch that matches
  only them scores higher; at ``w = 1`` aux images count as OK images. (Earlier releases let aux
  patches compete with ``w`` times their distance and gave their entries a distance penalty
  ``(1 - w) * tau``; at ``w = 0.1`` that left almost no aux entry in the bank, so generated images of a
  new condition taught the model nothing. Models saved with penalties still load and score as they
  did.)
* *padim*: the mean and covariance are weighted means over samples, aux samples weighing ``w``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.image.padim.torch_model import PadimModel
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from anomalib.models.image.stfpm.anomaly_map import AnomalyMapGenerator as StfpmMapGenerator
from anomalib.models.image.stfpm.loss import STFPMLoss
from anomalib.models.image.stfpm.torch_model import STFPMModel
from torch import nn

from defectscan.pipeline.backbone import load_weights, trim_unused_stages
from defectscan.pipeline.bank_search import BankIndex, full_nearest_distances
from defectscan.pipeline.blur import use_separable_blur
from defectscan.pipeline.coreset import k_center_greedy


class BankPatchcore(PatchcoreModel):
    """PatchCore whose bank entries may carry a distance penalty (see the module docstring)."""

    def __init__(self, layers: tuple[str, ...], backbone: str, num_neighbors: int) -> None:
        super().__init__(
            layers=list(layers), backbone=backbone, pre_trained=False, num_neighbors=num_neighbors
        )
        self.bank_penalty: torch.Tensor
        self.register_buffer("bank_penalty", torch.empty(0))
        self._index: tuple[tuple[int, tuple[int, ...], int], BankIndex] | None = None

    def nearest_neighbors(
        self, embedding: torch.Tensor, n_neighbors: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """anomalib's search, with the distance to the nearest neighbour (the one every patch needs)
        found without anomalib's full distance matrix: on a CPU through a :class:`BankIndex` that
        rules out most of the bank by the triangle inequality, on a GPU by one product of ``[x, 1]``
        and ``[-2 y, |y|^2]`` per block of patches (``|y|^2 - 2 x.y`` is minimised over the bank;
        only the minimum gets ``|x|^2``, the clamp and the square root). anomalib's
        :meth:`euclidean_dist` makes four more passes over the whole patches x bank matrix, and its
        ``min`` with indices is three times slower on a CPU than the minimum alone. Same distances up
        to float rounding.

        Which entry is nearest is needed only for each image's most anomalous patch (anomalib's
        re-weighting): the locations returned are -1, and :meth:`compute_anomaly_score` finds the
        few it reads."""
        if n_neighbors != 1 or self.bank_penalty.numel():
            return super().nearest_neighbors(embedding, n_neighbors)
        if self.memory_bank.device.type == "cpu":
            distances = self._bank_index().nearest_distances(embedding)
        else:
            distances = full_nearest_distances(embedding, self.memory_bank)
        return distances, torch.full_like(distances, -1, dtype=torch.long)

    def maps_from_patches(
        self, patches: torch.Tensor, images: int, output_size: tuple[int, int]
    ) -> torch.Tensor:
        """The anomaly maps ``(images, 1, *output_size)`` that the eval forward gives for images whose
        patch embeddings (the training forward's rows, image-major) are already known."""
        side = math.isqrt(patches.shape[0] // images)
        scores, _ = self.nearest_neighbors(patches, n_neighbors=1)
        return self.anomaly_map_generator(scores.reshape(images, 1, side, side), output_size)

    def _bank_index(self) -> BankIndex:
        """The index of the current memory bank, built on first use and again whenever the bank is
        replaced or changed in place."""
        bank = self.memory_bank
        key = (bank.data_ptr(), tuple(bank.shape), bank._version)
        if self._index is None or self._index[0] != key:
            self._index = (key, BankIndex.build(bank))
        return self._index[1]

    def compute_anomaly_score(
        self, patch_scores: torch.Tensor, locations: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        """anomalib's re-weighted image score; the nearest entry of each image's top patch is found
        here when :meth:`nearest_neighbors` left the locations out."""
        if self.num_neighbors > 1 and bool((locations < 0).any()):
            batch, patches = patch_scores.shape
            images = torch.arange(batch)
            top = patch_scores.argmax(1)
            features = embedding.reshape(batch, patches, -1)[images, top]
            _, nearest = PatchcoreModel.nearest_neighbors(self, features, n_neighbors=1)
            locations = locations.clone()
            locations[images, top] = nearest.reshape(-1)
        return super().compute_anomaly_score(patch_scores, locations, embedding)

    def euclidean_dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """anomalib's distance, plus each bank entry's penalty when ``y`` is the memory bank itself."""
        distances = PatchcoreModel.euclidean_dist(x, y)
        if self.bank_penalty.numel() and y is self.memory_bank:
            distances = distances + self.bank_penalty[None, :]
        return distances


class OfflineStfpm(STFPMModel):
    """anomalib's STFPM with both extractors built without a download; the teacher gets our weights."""

    def __init__(self, layers: tuple[str, ...], backbone: str) -> None:
        nn.Module.__init__(self)
        self.tiler = None
        self.backbone = backbone
        self.teacher_model = TimmFeatureExtractor(
            backbone=backbone, pre_trained=False, layers=list(layers)
        ).eval()
        self.student_model = TimmFeatureExtractor(
            backbone=backbone, pre_trained=False, layers=list(layers), requires_grad=True
        )
        for parameter in self.teacher_model.parameters():
            parameter.requires_grad = False
        self.anomaly_map_generator = StfpmMapGenerator()


def build(method: str, backbone: str, layers: tuple[str, ...], num_neighbors: int = 9) -> nn.Module:
    """An untrained network of ``method``, its backbone without weights (they are loaded next)."""
    net: nn.Module
    if method == "patchcore":
        net = BankPatchcore(layers, backbone, num_neighbors)
    elif method == "padim":
        torch.manual_seed(0)  # anomalib draws PaDiM's feature subset from the global generator
        net = PadimModel(backbone=backbone, layers=list(layers), pre_trained=False, n_features=100)
    elif method == "stfpm":
        torch.manual_seed(0)  # the student's initial weights
        net = OfflineStfpm(layers, backbone)
    else:
        raise ValueError(f"unknown method {method!r}")
    use_separable_blur(net)
    return trim_unused_stages(net)


def backbone_module(net: nn.Module) -> nn.Module:
    """The timm ``features_only`` module that gets ImageNet weights (STFPM: the teacher)."""
    extractor = net.teacher_model if isinstance(net, STFPMModel) else net.feature_extractor
    assert isinstance(extractor, nn.Module)
    inner = extractor.feature_extractor
    assert isinstance(inner, nn.Module)
    return inner


def load_backbone(net: nn.Module, backbone: str, weights: str | None) -> None:
    load_weights(backbone_module(net), backbone, weights)


Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
"""Yields (normalised images ``(B, 3, S, S)``, per-image weights ``(B,)``) over the training set."""


FoldBank = tuple[torch.Tensor, torch.Tensor]


@dataclass
class PatchcoreFit:
    """What filling a bank gives: statistics, the folds' banks, and every training sample's patch
    embeddings (``per_sample`` rows each, in sample order) for out-of-fold scoring without the backbone."""

    stats: dict[str, float]
    fold_banks: list[FoldBank]
    patches: torch.Tensor
    per_sample: int


"""A memory bank and its entries' penalties, as :func:`fit_patchcore` sets them on the network."""


@torch.no_grad()
def fit_patchcore(
    net: BankPatchcore,
    batches: Batches,
    coreset_ratio: float,
    sources: Sequence[int] = (),
    folds: Sequence[set[int]] = (),
) -> PatchcoreFit:
    """Fill the bank from the training samples' patches (a coreset). With ``sources`` (each sample's
    source image, -1 for one never held out) and ``folds`` (sets of source images), also return, per
    fold, the bank the same coreset rule builds from the *other* folds' patches: the backbone runs once
    for all of them (out-of-fold scoring without training k models).

    A fold's bank has as many entries as the final bank, not ``coreset_ratio`` of its fewer patches: a
    patch's score is mostly its distance to the nearest entry, so a smaller bank would score every
    image higher than the final model does and set the threshold too high (on synthetic crops, out-of-fold
    scores 15 % above those of unseen good crops)."""
    net.train()
    embeddings, weights, rows = [], [], []
    for images, w in batches():
        emb = net(images)  # training mode: (B * h * w, D) patch embeddings
        per_image = emb.shape[0] // images.shape[0]
        embeddings.append(emb)
        weights.append(w.repeat_interleave(per_image))
        rows += [per_image] * images.shape[0]
    net.embedding_store.clear()
    bank = torch.cat(embeddings)
    weight = torch.cat(weights)
    # an aux image counts as w of an image: a share w of its patches may enter the bank
    drawn = torch.rand(weight.shape[0], generator=torch.Generator().manual_seed(0)) < weight
    pool = (weight >= 1) | drawn
    chosen = _coreset(bank, pool, max(int(int(pool.sum()) * coreset_ratio), 1))
    net.memory_bank, net.bank_penalty = bank[chosen].contiguous(), torch.empty(0)
    fold_banks = []
    if folds:
        source = torch.repeat_interleave(torch.tensor(list(sources)), torch.tensor(rows))
        for fold in folds:
            keep = pool & ~torch.isin(source, torch.tensor(sorted(fold)))
            fold_banks.append(
                (bank[_coreset(bank, keep, net.memory_bank.shape[0])].contiguous(), torch.empty(0))
            )
    net.eval()
    stats = {"patches": float(bank.shape[0]), "bank": float(net.memory_bank.shape[0])}
    stats |= {"aux_in_bank": float((weight[chosen] < 1).sum())}
    return PatchcoreFit(stats, fold_banks, bank, rows[0] if rows else 0)


def _coreset(bank: torch.Tensor, pool: torch.Tensor, size: int) -> torch.Tensor:
    """The indices into ``bank`` of a coreset of ``size`` entries chosen among the rows ``pool`` marks."""
    if bool(pool.all()):  # no aux patch left out: no copy of the bank
        return k_center_greedy(bank, min(size, bank.shape[0]))
    among = torch.nonzero(pool).squeeze(1)
    return among[k_center_greedy(bank[among], min(size, among.numel()))]


@torch.no_grad()
def fit_padim(net: PadimModel, batches: Batches) -> dict[str, float]:
    net.train()
    total_w = 0.0
    mean: torch.Tensor | None = None
    outer: torch.Tensor | None = None
    count = 0
    for images, w in batches():
        emb = net(images)  # (B, C, H, W)
        net.memory_bank.clear()
        flat = emb.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        ww = w.to(flat)[None, :, None]
        wsum = (flat * ww).sum(1)
        wouter = torch.einsum("pbc,pbd->pcd", flat * ww, flat)
        mean = wsum if mean is None else mean + wsum
        outer = wouter if outer is None else outer + wouter
        total_w += float(w.sum())
        count += images.shape[0]
    assert mean is not None and outer is not None
    mu = mean / total_w  # (HW, C)
    cov = outer / total_w - torch.einsum("pc,pd->pcd", mu, mu)
    cov = cov * (count / max(count - 1, 1)) + 0.01 * torch.eye(cov.shape[-1])
    net.gaussian.mean = mu.T.contiguous()  # anomalib keeps (C, HW)
    net.gaussian.inv_covariance = torch.linalg.inv(cov)
    net.eval()
    return {"samples": float(count), "features": float(mu.shape[1])}


def fit_stfpm(net: OfflineStfpm, batches: Batches, epochs: int, lr: float = 0.4) -> dict[str, float]:
    """Train the student for ``epochs`` passes with anomalib's optimiser settings (SGD, momentum 0.9,
    weight decay 1e-4) and anomalib's loss, each sample's loss multiplied by its weight."""
    loss_fn = STFPMLoss()
    optimizer = torch.optim.SGD(net.student_model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    last = 0.0
    for _ in range(epochs):
        net.train()
        net.teacher_model.eval()
        total, count = 0.0, 0
        for images, weights in batches():
            teacher, student = net(images)
            losses = [
                loss_fn(
                    {k: v[i : i + 1] for k, v in teacher.items()},
                    {k: v[i : i + 1] for k, v in student.items()},
                )
                for i in range(images.shape[0])
            ]
            loss = (torch.stack(losses) * weights.to(images)).sum() / images.shape[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * images.shape[0]
            count += images.shape[0]
        last = total / max(count, 1)
    net.eval()
    return {"epochs": float(epochs), "final_loss": last}

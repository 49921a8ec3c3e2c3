"""PatchCore (Roth et al., CVPR'22) as the official code computes it (spec section 10; Part A).

Training-free (``fitted``): one pass over the training features builds a memory bank.

- Embedding (spec 10.3): each level is unfolded into 3x3 neighbourhoods (stride 1, zero padding
  1); the unfolded deeper level is bilinearly resized (align_corners=False) to the first level's
  grid as C*9 separate maps; each (C, ky, kx) row is ``adaptive_avg_pool1d``-ed to
  ``pretrain_embed_dimension`` per level, the levels stacked (first level first) and pooled again
  to ``target_embed_dimension``. For WRN-50-2 layers 2+3 at 1024/1024, dims 0..511 are a 3x3
  average of layer2 channel c with centre weight 0.2 and neighbours 0.1 (zero padding counted).
- Coreset (spec 10.4): approximate greedy coreset on a 128-d bias-free random projection (PyTorch's
  default Linear init, seeded); 10 start points drawn without replacement seed every point with
  its mean Euclidean distance to them and are not kept; int(N * p) argmax/min iterations; the
  chosen rows of the full-dimensional features form the bank.
- Score (spec 10.5): exact nearest-neighbour search returning squared L2 (faiss IndexFlatL2, or
  the same search in torch), mean over k; image score the max patch score; the paper's eq. 7
  reweighting (absent from the official code, applied by anomalib, spec 10.9) is ``reweight``.
- Map (spec 10.6): patch scores on the first level's grid, bilinear (align_corners=False) to the
  image size, then a Gaussian with scipy's semantics (sigma 4, truncate 4: radius 16, 'reflect').
  Map values are the patch scores divided by the embedding dimension, so that the float16 maps
  the harness stores cannot overflow (a constant factor: no metric changes); image scores are not.
- Multi-class (Part A): one bank for the whole dataset (``bank: unified``, as ADer runs it) or one
  per class (``bank: per_class``, each coreset seeded alike, as the official per-class runs).

The harness resizes images square to ``image_size`` without the official 256 -> 224 centre crop
(one protocol for every method's feature cache; docs/methods/patchcore.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import register
from methods.base import SHARED_CONFIG_SCHEMA, AnomalyMethod, Prediction, check_features
from methods.blocks.scoring import default_kernel_size, gaussian_smooth
from methods.config_schema import Bool, Choice, Int, Real

BANKS = ("unified", "per_class")
SEARCH_BACKENDS = ("auto", "faiss", "torch")
_TORCH_SEARCH_ELEMENTS = 1 << 25  # queries x bank distances held at once by the torch search

_PAPER = {
    # torchvision's wide_resnet50_2(pretrained=True), the ImageNet-1k V1 weights (spec 10.2).
    "backbone": "wide_resnet50_2.tv_in1k",
    "backbone_levels": [2, 3],  # timm out_indices of layer2 (512 @ stride 8) and layer3 (1024 @ 16)
    "feature_dtype": "float32",  # the feature cache's storage precision (float16: half the disk, methods/base.py)
    "backbone_weights": "auto",
    "image_size": 224,
    "eval_size": 224,
    "epochs": 1,  # unused: fitted in one pass
    "batch_size": 2,  # the official training loader's batch
    "amp": False,
    "grad_clip": None,
    "seed": 0,
    "patch_size": 3,
    "pretrain_embed_dimension": 1024,
    "target_embed_dimension": 1024,
    "coreset_ratio": 0.1,
    "coreset_starting_points": 10,
    "coreset_projection_dim": 128,
    "num_neighbours": 1,
    "reweight": False,  # eq. 7 as anomalib applies it; the official code does not
    "reweight_neighbours": 9,  # anomalib's num_neighbors, used only by reweight
    "smoothing_sigma": 4.0,
    "smoothing_truncate": 4.0,
    "bank": "unified",
    "search": "auto",  # faiss when importable, else the same exact search in torch
}

_CPU = {
    **_PAPER,
    # Packaged ImageNet weights (no download); lite0's stride-8 and stride-16 levels (40 and 112
    # channels) play layer2 and layer3.
    "backbone": "tf_efficientnet_lite0",
    "backbone_levels": [2, 3],
    # A 16x16 patch grid: the greedy loop costs N x int(N p) and N grows with the square of the size.
    # Chosen on the seed-1 copy of the embedded dataset (docs/methods/patchcore.md): 128 px with
    # p 0.05 gave class-mean I-AUROC 0.993; p 0.1 0.990 (and 1.6x the fit); 160 px p 0.02 0.981,
    # p 0.05 0.989; 224 px p 0.01 0.960.
    "image_size": 128,
    "eval_size": 128,
    "batch_size": 16,
    "coreset_ratio": 0.05,  # 92k training patches (360 images x 256): 4,608 greedy steps
}


def unfold_patches(feature: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, C * ps * ps, H, W): each cell's zero-padded ps x ps block, (c, ky, kx) order."""
    b, c, h, w = feature.shape
    blocks = F.unfold(feature, kernel_size=patch_size, padding=(patch_size - 1) // 2, stride=1)
    return blocks.view(b, c * patch_size * patch_size, h, w)


def patch_embedding(levels: Sequence[Tensor], patch_size: int, pretrain_dim: int, target_dim: int) -> Tensor:
    """Spec 10.3: (B, C_l, H_l, W_l) levels -> (B, H_0 * W_0, target_dim) descriptors, row-major on level 0's grid."""
    grid = levels[0].shape[-2:]
    pooled = []
    for feature in levels:
        blocks = unfold_patches(feature.float(), patch_size)
        if blocks.shape[-2:] != grid:
            blocks = F.interpolate(blocks, size=grid, mode="bilinear", align_corners=False)
        rows = blocks.flatten(2).transpose(1, 2).reshape(-1, 1, blocks.shape[1])  # (B * H0 * W0, 1, C * ps^2)
        pooled.append(F.adaptive_avg_pool1d(rows, pretrain_dim))
    stacked = torch.cat(pooled, dim=2)  # levels side by side, the first level first
    return F.adaptive_avg_pool1d(stacked, target_dim).view(levels[0].shape[0], -1, target_dim)


def random_projection(features: Tensor, dim: int, seed: int) -> Tensor:
    """Spec 10.4: features through a bias-free Linear(D -> dim) with PyTorch's default init, seeded."""
    if features.shape[1] == dim:
        return features
    generator = torch.Generator(device=features.device)
    generator.manual_seed(seed)
    weight = torch.empty(dim, features.shape[1], device=features.device)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)  # nn.Linear's reset_parameters
    return features @ weight.T


def _euclidean_to(points: Tensor, squared_norms: Tensor, centres: Tensor) -> Tensor:
    """(N, d) points, their squared norms, (K, d) centres -> (N, K) sqrt(clamp(|a|^2 + |b|^2 - 2ab, 0))."""
    products = points @ centres.T
    return (squared_norms[:, None] + centres.pow(2).sum(1)[None, :] - 2 * products).clamp_min(0).sqrt()


def approximate_greedy_coreset(
    features: Tensor, ratio: float, seed: int, starting_points: int = 10, projection_dim: int = 128
) -> Tensor:
    """Spec 10.4 ``approx_greedy_coreset``: indices (int(N * ratio),) of the chosen rows, in the order chosen."""
    n = features.shape[0]
    projected = random_projection(features.float(), projection_dim, seed)
    norms = projected.pow(2).sum(1)
    starts = np.random.RandomState(seed).choice(n, min(starting_points, n), replace=False)
    distances = _euclidean_to(projected, norms, projected[torch.from_numpy(starts)]).mean(1)
    chosen = torch.empty(int(n * ratio), dtype=torch.long)
    to_pick = torch.empty_like(distances)
    for step in range(len(chosen)):
        pick = int(torch.argmax(distances))
        chosen[step] = pick
        # sqrt(clamp(|a|^2 + |b|^2 - 2ab, 0)) to the pick, fused: one pass over the projected points
        torch.addmv(norms, projected, projected[pick], alpha=-2, out=to_pick)
        to_pick.add_(norms[pick]).clamp_(min=0).sqrt_()
        torch.minimum(distances, to_pick, out=distances)
    return chosen


class ExactSearch:
    """Exact k-nearest-neighbour search of one bank, squared L2 as faiss IndexFlatL2 returns it."""

    def __init__(self, bank: Tensor, backend: str = "auto"):
        self.bank = bank.float().contiguous()
        self.backend = _search_backend(backend)
        self.index = _faiss_index(self.bank) if self.backend == "faiss" else None

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(Q, D) -> squared distances (Q, k) ascending and bank indices (Q, k)."""
        if self.index is not None:
            import faiss

            faiss.omp_set_num_threads(torch.get_num_threads())
            distances, indices = self.index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
            return torch.from_numpy(distances).to(queries.device), torch.from_numpy(indices).to(queries.device)
        return _torch_search(queries.float(), self.bank.to(queries.device), k)


def _search_backend(backend: str) -> str:
    if backend == "torch":
        return "torch"
    try:
        import faiss  # noqa: F401
    except ImportError:
        if backend == "faiss":
            raise ImportError("search: faiss needs faiss-cpu (or faiss-gpu) installed; or set search=torch") from None
        return "torch"
    return "faiss"


def _faiss_index(bank: Tensor):
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    if bank.is_cuda and hasattr(faiss, "StandardGpuResources"):  # faiss-gpu: GpuIndexFlatL2, as --faiss_on_gpu
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), bank.device.index or 0, index)
    index.add(np.ascontiguousarray(bank.cpu().numpy()))
    return index


def _torch_search(queries: Tensor, bank: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Brute force in chunks of queries: |q|^2 + |b|^2 - 2 q.b, clamped at 0, k smallest."""
    bank_norms = bank.pow(2).sum(1)
    chunk = max(1, _TORCH_SEARCH_ELEMENTS // max(1, bank.shape[0]))
    distances, indices = [], []
    for part in queries.split(chunk):
        squared = (part.pow(2).sum(1, keepdim=True) + bank_norms[None, :] - 2 * part @ bank.T).clamp_min(0)
        best = squared.topk(k, dim=1, largest=False)
        distances.append(best.values)
        indices.append(best.indices)
    return torch.cat(distances), torch.cat(indices)


def reweighted_scores(patch_scores: Tensor, embedding: Tensor, nearest: Tensor, bank: Tensor, search: ExactSearch, neighbours: int) -> Tensor:
    """Eq. 7 as anomalib computes it: s* (1 - softmax(||m_test* - N_b(m*)||)[0]) per image.

    patch_scores (B, P), embedding (B, P, D), nearest (B, P): bank index of each patch's neighbour.
    N_b(m*) are the ``neighbours`` bank vectors nearest to m*, the bank vector nearest to the
    image's most anomalous patch m_test*; distances are Euclidean, as in anomalib.
    """
    rows = torch.arange(patch_scores.shape[0], device=patch_scores.device)
    top = patch_scores.argmax(1)
    score = patch_scores[rows, top]
    if neighbours <= 1:
        return score
    m_star = bank[nearest[rows, top]]
    _, support = search.search(m_star, min(neighbours, bank.shape[0]))
    distances = (embedding[rows, top][:, None, :] - bank[support]).norm(dim=2)
    return (1 - distances.softmax(1)[:, 0]) * score


@register("patchcore")
class PatchCore(AnomalyMethod):
    """PatchCore: a coreset memory bank of locally aggregated frozen features, nearest-neighbour scores."""

    version = 1
    fitted = True
    presets = {"paper": _PAPER, "cpu": _CPU}
    config_schema = {
        **SHARED_CONFIG_SCHEMA,
        "patch_size": Int(min=1),
        "pretrain_embed_dimension": Int(min=1),
        "target_embed_dimension": Int(min=1),
        "coreset_ratio": Real(positive=True, max=1),
        "coreset_starting_points": Int(min=1),
        "coreset_projection_dim": Int(min=1),
        "num_neighbours": Int(min=1),
        "reweight": Bool(),
        "reweight_neighbours": Int(min=1),
        "smoothing_sigma": Real(min=0),
        "smoothing_truncate": Real(positive=True),
        "bank": Choice(*BANKS),
        "search": Choice(*SEARCH_BACKENDS),
    }

    def __init__(self, config, feature_channels, feature_reductions):
        super().__init__(config, feature_channels, feature_reductions)
        dim = int(self.config["target_embed_dimension"])
        self.register_buffer("memory_bank", torch.zeros(0, dim))
        self.register_buffer("bank_class", torch.zeros(0, dtype=torch.long))  # class index per vector; -1: unified
        self._searches: dict[int, tuple[ExactSearch, Tensor]] = {}
        # The trial seed: the loop seeds torch with it just before building the method, as the
        # official run seeds before each fit (utils.fix_seeds, spec 10.4).
        self.coreset_seed = torch.initial_seed() % 2**32

    # --- fit ----------------------------------------------------------------------------------
    def embed(self, features: Sequence[Tensor]) -> Tensor:
        """Batch features -> (B, P, D) patch descriptors (spec 10.3)."""
        check_features(self, features)
        c = self.config
        return patch_embedding(features, int(c["patch_size"]), int(c["pretrain_embed_dimension"]), int(c["target_embed_dimension"]))

    @torch.no_grad()
    def fit(self, batches: Iterable[dict]) -> None:
        """One pass: every training patch embedded, then one coreset per bank (spec 10.4, Part A)."""
        per_class = self.config["bank"] == "per_class"
        groups: dict[int, list[Tensor]] = {}
        for batch in batches:
            embedding = self.embed(batch["features"]).cpu()
            for row, cls in zip(embedding, batch["class_index"].tolist()):
                groups.setdefault(cls if per_class else -1, []).append(row)
        banks, owners = [], []
        for cls in sorted(groups):
            bank = self._coreset(torch.cat(groups.pop(cls)))
            banks.append(bank)
            owners.append(torch.full((len(bank),), cls, dtype=torch.long))
        self.memory_bank = torch.cat(banks).to(self.memory_bank.device)
        self.bank_class = torch.cat(owners).to(self.memory_bank.device)
        self._searches = {}

    def _coreset(self, patches: Tensor) -> Tensor:
        c = self.config
        chosen = approximate_greedy_coreset(
            patches, float(c["coreset_ratio"]), self.coreset_seed, int(c["coreset_starting_points"]), int(c["coreset_projection_dim"])
        )
        return patches[chosen]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("memory_bank", "bank_class"):  # the bank's size is known only once fitted
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        self._searches = {}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- score --------------------------------------------------------------------------------
    def _search(self, cls: int) -> tuple[ExactSearch, Tensor]:
        """The exact search of class ``cls``'s bank (-1: the unified bank) and its rows in memory_bank."""
        if cls not in self._searches:
            rows = torch.nonzero(self.bank_class == cls).flatten()
            self._searches[cls] = (ExactSearch(self.memory_bank[rows], self.config["search"]), rows)
        return self._searches[cls]

    def patch_scores(self, embedding: Tensor, class_index: Tensor) -> tuple[Tensor, Tensor]:
        """(B, P, D) -> mean squared L2 to the k nearest bank vectors (B, P), nearest bank row (B, P)."""
        k = int(self.config["num_neighbours"])
        b, p, d = embedding.shape
        scores = embedding.new_empty(b, p)
        nearest = torch.empty(b, p, dtype=torch.long, device=embedding.device)
        owners = class_index.tolist() if self.config["bank"] == "per_class" else [-1] * b
        for cls in sorted(set(owners)):
            images = torch.tensor([i for i, o in enumerate(owners) if o == cls], device=embedding.device)
            search, rows = self._search(cls)
            distances, indices = search.search(embedding[images].reshape(-1, d), k)
            scores[images] = distances.mean(1).view(len(images), p)
            nearest[images] = rows.to(embedding.device)[indices[:, 0]].view(len(images), p)
        return scores, nearest

    @torch.no_grad()
    def predict(self, batch: dict) -> Prediction:
        if self.memory_bank.shape[0] == 0:
            raise RuntimeError("patchcore: predict before fit; the loop fits it on the training features first")
        features = batch["features"]
        embedding = self.embed(features)
        scores, nearest = self.patch_scores(embedding, batch["class_index"])
        if self.config["reweight"]:
            owners = batch["class_index"] if self.config["bank"] == "per_class" else None
            image_scores = self._reweighted(scores, embedding, nearest, owners)
        else:
            image_scores = scores.amax(1)
        grid = features[0].shape[-2:]
        # per dimension: the harness stores maps as float16, which squared L2 of 1024-d features
        # can overflow; a positive constant changes no pixel metric
        per_dimension = scores / embedding.shape[-1]
        return Prediction(image_scores=image_scores, anomaly_maps=self.anomaly_maps(per_dimension.view(-1, 1, *grid)))

    def _reweighted(self, scores: Tensor, embedding: Tensor, nearest: Tensor, owners: Tensor | None) -> Tensor:
        neighbours = int(self.config["reweight_neighbours"])
        out = scores.new_empty(scores.shape[0])
        for i in range(scores.shape[0]):
            search, rows = self._search(int(owners[i]) if owners is not None else -1)
            local = torch.searchsorted(rows.to(nearest.device), nearest[i : i + 1])  # rows are sorted
            out[i] = reweighted_scores(scores[i : i + 1], embedding[i : i + 1], local, search.bank.to(scores.device), search, neighbours)[0]
        return out

    def anomaly_maps(self, patch_maps: Tensor) -> Tensor:
        """Spec 10.6: (B, 1, h, w) patch scores -> bilinear to image_size, scipy-style Gaussian, then eval_size."""
        c = self.config
        size, eval_size = int(c["image_size"]), int(c["eval_size"])
        maps = F.interpolate(patch_maps, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        sigma = float(c["smoothing_sigma"])
        maps = gaussian_smooth(maps, sigma, default_kernel_size(sigma, float(c["smoothing_truncate"])), boundary="symmetric")
        if eval_size != size:
            maps = F.interpolate(maps[:, None], size=(eval_size, eval_size), mode="bilinear", align_corners=False)[:, 0]
        return maps

    # --- size ---------------------------------------------------------------------------------
    def memory_bank_size(self, train_images: dict[str, int]) -> dict:
        """Spec 10.8: bank vectors for a dataset, per class (int(p * n_c * grid^2) each) and unified."""
        c = self.config
        side = -(-int(c["image_size"]) // self.feature_reductions[0])
        ratio, dims = float(c["coreset_ratio"]), int(c["target_embed_dimension"])
        patches = {name: n * side * side for name, n in train_images.items()}
        per_class = sum(int(ratio * n) for n in patches.values())
        unified = int(ratio * sum(patches.values()))
        vectors = per_class if c["bank"] == "per_class" else unified
        return {
            "bank": c["bank"],
            "patch_grid": side,
            "vectors_before_coreset": sum(patches.values()),
            "vectors": vectors,
            "dims": dims,
            "bytes": vectors * dims * 4,
            "bytes_before_coreset": sum(patches.values()) * dims * 4,
            "vectors_per_class_total": per_class,
            "vectors_unified": unified,
        }

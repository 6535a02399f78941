"""What a trained AlexNet learned, as the paper's section 6.1 shows it.

Three PNGs from a model and its data (:func:`write_figures`):

- ``conv1_kernels.png``: the 96 first-layer kernels, the two towers apart (conv2's groups=2 see
  only their own half of conv1's maps: kernels 0-47 and 48-95), as the paper's Figure 3;
- ``top5.png``: validation images with their five most probable labels (Figure 4, left);
- ``neighbours.png``: validation images, each followed by the six training images whose fc7
  activations are nearest in Euclidean distance (Figure 4, right);
- ``conv1_learned.png``, when the run's initial conv1 weights are known (a checkpoint keeps
  them): the change since initialisation, laid out as ``conv1_kernels.png``. A short run
  changes conv1 by a fraction of its random start, so the kernels themselves still look like
  noise; the change shows what the gradient put there.

and the numbers that say what the first layer holds (:func:`conv1_measures`): per tower, the
colour share (the paper sees one tower colour-agnostic, the other colour-specific) and the
roughness (per-pixel noise against smooth filters).
"""

import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from fastalex.training import plots
from fastalex.training.data import datasets, shards
from fastalex.training.startup import install_warning_format

CONV1_KERNELS = "conv1_kernels.png"
TOP5 = "top5.png"
NEIGHBOURS = "neighbours.png"
CONV1_LEARNED = "conv1_learned.png"
FILES = (CONV1_KERNELS, TOP5, NEIGHBOURS)  # and CONV1_LEARNED when the initial conv1 is known

NEIGHBOURS_PER_QUERY = 6
TOP5_IMAGES = 8
NEIGHBOUR_QUERIES = 5
# Training images searched for neighbours at most (a fixed random sample beyond it): fc7 of
# 10,000 images is one pass over them, and the search keeps only queries x batch distances.
NEIGHBOUR_IMAGES = 10_000


class FigureWarning(UserWarning):
    """A figure could not be written (the run that asked for it still succeeds)."""


# --- the first layer -----------------------------------------------------------------------------

def towers(weight: torch.Tensor, groups: int = 2) -> tuple[torch.Tensor, ...]:
    """conv1's kernels [K, 3, h, w] split into the ``groups`` towers that conv2's groups read
    (kernels 0-47 and 48-95 in the paper's network)."""
    if weight.shape[0] % groups:
        raise ValueError(f"{weight.shape[0]} kernels do not split into {groups} towers")
    return tuple(weight.chunk(groups, dim=0))


def colour_share(weight: torch.Tensor) -> torch.Tensor:
    """Per kernel of ``weight`` [K, 3, h, w]: the share of its energy (sum of squares, after
    removing its mean) that is not in its grey component, the per-pixel mean of R, G and B
    repeated in the three channels. 0 for a grey kernel (R = G = B everywhere), 1 for a purely
    colour-opponent one (R + G + B = 0 at every pixel); 2/3 on average for random noise, whose
    energy spreads evenly over the grey direction and the two colour directions."""
    w = weight.detach().double()
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    colour = w - w.mean(dim=1, keepdim=True)
    return (colour.square().sum((1, 2, 3)) / w.square().sum((1, 2, 3)).clamp_min(1e-300)).float()


def roughness(weight: torch.Tensor) -> torch.Tensor:
    """Per kernel of ``weight`` [K, C, h, w]: the mean squared difference between horizontally
    and vertically adjacent weights over twice the weights' variance. About 1 for independent
    per-pixel noise (the N(0, 0.01) initialisation), towards 0 for smooth filters (edges,
    blobs, gratings wider than a pixel), up to 2 for a checkerboard."""
    w = weight.detach().double()
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    dx = (w[..., :, 1:] - w[..., :, :-1]).square()
    dy = (w[..., 1:, :] - w[..., :-1, :]).square()
    mean_sq_diff = (dx.sum((1, 2, 3)) + dy.sum((1, 2, 3))) / (dx[0].numel() + dy[0].numel())
    return (mean_sq_diff / (2 * w.square().mean((1, 2, 3))).clamp_min(1e-300)).float()


def conv1_measures(weight: torch.Tensor, groups: int = 2) -> dict:
    """``{"colour_tower1", "colour_tower2", "roughness_tower1", "roughness_tower2"}``: the mean
    over each tower's kernels of :func:`colour_share` and :func:`roughness`."""
    out = {}
    for name, measure in (("colour", colour_share), ("roughness", roughness)):
        for i, tower in enumerate(towers(weight, groups), start=1):
            out[f"{name}_tower{i}"] = round(measure(tower).mean().item(), 4)
    return out


def describe_measures(measures: dict) -> str:
    """The measures as one line of a log."""
    towers_ = sorted({k.rsplit("tower", 1)[1] for k in measures if "_tower" in k})
    colour = ", ".join(f"{measures[f'colour_tower{t}']:.3f}" for t in towers_)
    rough = ", ".join(f"{measures[f'roughness_tower{t}']:.3f}" for t in towers_)
    return (f"conv1 colour share per tower {colour} (grey 0, colour-opponent 1, noise 0.67); "
            f"roughness {rough} (smooth 0, per-pixel noise 1)")


def first_layer_measures(model, conv1_init: torch.Tensor | None = None) -> dict:
    """:func:`conv1_measures` of ``model``'s conv1, plus ``"learned"``: those of its change
    since ``conv1_init`` when that is known."""
    weight, groups = conv1_weight(model)
    out = conv1_measures(weight, groups)
    if conv1_init is not None:
        out["learned"] = conv1_measures(learned(weight, conv1_init), groups)
    return out


def describe_first_layer(measures: dict) -> list[str]:
    """:func:`first_layer_measures` as log lines."""
    lines = [describe_measures(measures)]
    if "learned" in measures:
        lines.append("learned since initialisation: " + describe_measures(measures["learned"]))
    return lines


def learned(weight: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """conv1's change since initialisation, ``weight - initial`` (float32, on the CPU)."""
    weight = weight.detach().float().cpu()
    initial = torch.as_tensor(initial).float().cpu()
    if initial.shape != weight.shape:
        raise ValueError(f"conv1_init: shape {list(initial.shape)} does not match conv1's "
                         f"{list(weight.shape)}")
    return weight - initial


def conv1_weight(model) -> tuple[torch.Tensor, int]:
    """conv1's weight [96, 3, 11, 11] and the number of towers: conv2's groups."""
    return model.features.conv1.weight, model.features.conv2.groups


# --- forward passes -------------------------------------------------------------------------------

@torch.no_grad()
def fc7_features(model, images: torch.Tensor) -> torch.Tensor:
    """The last hidden layer's activations [N, 4096]: fc7 after its ReLU, as float32.
    ``model`` is the paper's AlexNet (``features``, then ``classifier`` ending in fc8), in eval
    mode (no dropout); everything before fc8 runs."""
    classifier = model.classifier
    if list(classifier._modules)[-1] != "fc8":
        raise ValueError("model.classifier must end with fc8")
    x = torch.flatten(model.features(images), 1)
    return classifier[:-1](x).float()


@torch.no_grad()
def top_k(model, images: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities [N, k], labels [N, k]) of the ``k`` most probable classes, most probable
    first (softmax of the logits, float32)."""
    probs = model(images).float().softmax(dim=1)
    return probs.topk(min(k, probs.shape[1]), dim=1)


class _Indexed(Dataset):
    """``dataset``'s items ``indices`` as (image, label, index); ``None`` for an unreadable one
    (dropped by the collate function)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        item = self.dataset[self.indices[i]]
        return None if item is None else (*item, self.indices[i])


def searched_indices(n: int, max_images: int) -> list[int]:
    """The training images searched for neighbours: all of them, or a fixed random sample of
    ``max_images`` (seed 0, in index order)."""
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    if n <= max_images:
        return list(range(n))
    generator = torch.Generator().manual_seed(0)
    return sorted(torch.randperm(n, generator=generator)[:max_images].tolist())


@torch.no_grad()
def nearest_neighbours(model, queries: torch.Tensor, dataset, *, k: int = NEIGHBOURS_PER_QUERY,
                       max_images: int = NEIGHBOUR_IMAGES, batch_size: int = 128, workers: int = 0,
                       device="cpu", worker_init_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances [Q, k], dataset indices [Q, k]) of the ``k`` items of ``dataset`` whose fc7
    activations are nearest, in Euclidean distance, to those of ``queries`` [Q, 3, H, W],
    nearest first. One pass over the (at most ``max_images``) items in batches; only the best
    ``k`` and one batch's distances are kept, so memory stays bounded whatever the dataset.
    Items that are ``None`` (unreadable images) are skipped."""
    q = fc7_features(model, queries.to(device))
    best_d = torch.full((q.shape[0], 0), float("inf"), device=device)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)
    loader = DataLoader(_Indexed(dataset, searched_indices(len(dataset), max_images)),
                        batch_size=batch_size, num_workers=workers,
                        collate_fn=datasets.collate_skip_none, worker_init_fn=worker_init_fn)
    for batch in loader:
        if batch is None:
            continue
        images, _, index = batch
        f = fc7_features(model, images.to(device))
        d = torch.cdist(q, f, compute_mode="donot_use_mm_for_euclid_dist")
        best_d = torch.cat([best_d, d], dim=1)
        best_i = torch.cat([best_i, index.to(device).expand(q.shape[0], -1)], dim=1)
        keep = best_d.topk(min(k, best_d.shape[1]), dim=1, largest=False)
        best_d, best_i = keep.values, best_i.gather(1, keep.indices)
    return best_d.cpu(), best_i.cpu()


# --- display ------------------------------------------------------------------------------------

def unnormalise(images: torch.Tensor, image_stats, per_channel_mean: bool = False) -> torch.Tensor:
    """What the network saw, [N, 3, h, w] minus the training mean, back as a picture in [0, 1]:
    the mean added back (the mean image's centre crop, as the evaluation transform crops, or
    the per-channel mean), divided by 255."""
    if per_channel_mean:
        mean = torch.as_tensor(image_stats.mean_rgb, dtype=torch.float32).view(3, 1, 1)
    else:
        mean = TF.center_crop(torch.as_tensor(image_stats.mean_image, dtype=torch.float32),
                              list(images.shape[-2:]))
    return ((images.detach().float().cpu() + mean) / 255).clamp(0, 1)


def spread_indices(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)`` (an ImageFolder is in class order, so
    they span the classes); all of them when ``n <= count``."""
    if n <= count:
        return list(range(n))
    return torch.linspace(0, n - 1, count).round().long().tolist()


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def top5_figure(pictures: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor,
                targets, classes, path, *, columns: int = 4) -> Path:
    """Each picture [N, 3, h, w] (in [0, 1]) above its top-5 bars, the true label's bar red
    (grey otherwise) and named in the title, as the paper's Figure 4 (left)."""
    plt = plots.pyplot()
    n = pictures.shape[0]
    columns = min(columns, n)
    rows = -(-n // columns)
    fig = plt.figure(figsize=(2.6 * columns, 4.0 * rows), dpi=100)
    grid = fig.add_gridspec(2 * rows, columns, height_ratios=[1.3, 1.0] * rows)
    for i in range(n):
        r, c = divmod(i, columns)
        ax = fig.add_subplot(grid[2 * r, c])
        ax.imshow(pictures[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(_short(classes[int(targets[i])]), fontsize=9)
        ax.axis("off")
        bars = fig.add_subplot(grid[2 * r + 1, c])
        p, lab = probs[i].tolist(), labels[i].tolist()
        colours = ["tab:red" if j == int(targets[i]) else "tab:gray" for j in lab]
        ypos = list(range(len(p)))[::-1]  # most probable on top
        bars.barh(ypos, p, color=colours)
        bars.set_yticks(ypos, [_short(classes[j]) for j in lab], fontsize=7)
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    return plots.save_figure(fig, path)


def neighbours_figure(queries: torch.Tensor, neighbours: torch.Tensor, path, *,
                      scale: int = 2) -> Path:
    """One row per query: the query picture [Q, 3, h, w], a gap, then its neighbours
    [Q, k, 3, h, w], nearest first (pictures in [0, 1]), as the paper's Figure 4 (right)."""
    tiles = torch.cat([queries.unsqueeze(1), neighbours], dim=1)
    h = queries.shape[-2]
    image = plots.montage(tiles, pad=2, col_gap_after=[0], gap=max(4, h // 4))
    return plots.save_image(image, path, scale=scale)


# --- everything at once ---------------------------------------------------------------------------

def data_root(split_dataset) -> Path:
    """The data directory that a split's dataset (ImageFolder or prepared) was loaded from."""
    root = Path(split_dataset.root)
    return root if shards.is_prepared(root) else root.parent


def write_figures(model, data_dir, output_dir, *, image_stats, args, classes, device="cpu",
                  max_neighbour_images: int = NEIGHBOUR_IMAGES, batch_size: int = 128,
                  workers: int = 0, warn_unreadable: bool = True,
                  conv1_init: torch.Tensor | None = None) -> list[Path]:
    """Write :data:`FILES` into ``output_dir`` for ``model`` (the paper's AlexNet, put in eval
    mode and back) on ``data_dir`` (an ImageFolder tree or prepared data), seen through the run's evaluation
    transform (``args``: the run's configuration, its ``image_size``, ``crop`` and
    ``per_channel_mean``). Returns the paths. ``warn_unreadable=False`` skips unreadable
    images silently (at the end of a run, whose epochs already named each of them).
    ``conv1_init`` (conv1's initial weight) adds :data:`CONV1_LEARNED`."""
    from fastalex.training import builders

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    weight, groups = conv1_weight(model)
    plots.kernel_grid(weight, output_dir / CONV1_KERNELS, groups=groups)
    written = [output_dir / name for name in FILES]
    if conv1_init is not None:
        plots.kernel_grid(learned(weight, conv1_init), output_dir / CONV1_LEARNED, groups=groups)
        written.append(output_dir / CONV1_LEARNED)

    transform = builders.val_transform(args, image_stats, ten_crop=False)
    val_set = builders.load_val_split(Path(data_dir), transform)
    train_set = (shards.PreparedImages(data_dir, "train", transform=transform)
                 if shards.is_prepared(data_dir) else
                 datasets.load_split(data_dir, "train", transform))
    if val_set.classes != list(classes) or train_set.classes != list(classes):
        raise datasets.DataError(f"{data_dir}: its classes differ from the model's "
                                 f"({len(train_set.classes)} vs {len(classes)})")

    def pictures(dataset, indices):
        items = [dataset[i] for i in indices]
        kept = [(i, item) for i, item in zip(indices, items) if item is not None]
        images = torch.stack([item[0] for _, item in kept])
        return images, torch.tensor([item[1] for _, item in kept]), [i for i, _ in kept]

    def show(images):
        return unnormalise(images, image_stats, args.per_channel_mean)

    training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            if not warn_unreadable:
                _ignore_unreadable()
            images, targets, _ = pictures(val_set, spread_indices(len(val_set), TOP5_IMAGES))
            probs, labels = top_k(model, images.to(device))
            top5_figure(show(images), probs.cpu(), labels.cpu(), targets, classes,
                        output_dir / TOP5)

            queries, _, _ = pictures(val_set, spread_indices(len(val_set), NEIGHBOUR_QUERIES))
            _, nearest = nearest_neighbours(
                model, queries, train_set, max_images=max_neighbour_images,
                batch_size=batch_size, workers=workers, device=device,
                worker_init_fn=install_warning_format if warn_unreadable else _ignore_unreadable)
            found = [pictures(train_set, row.tolist())[0] for row in nearest]
            k = min(len(f) for f in found)
            neighbours_figure(show(queries), torch.stack([show(f[:k]) for f in found]),
                              output_dir / NEIGHBOURS)
    finally:
        model.train(training)
    return written


def _ignore_unreadable(*_) -> None:
    """Skip unreadable images without a warning, in this process (also a DataLoader
    ``worker_init_fn``)."""
    warnings.simplefilter("ignore", datasets.CorruptImageWarning)

"""A training run's parts, built from its configuration (the namespace of
:func:`fastalex.training.options.resolve`): data, loaders, model, optimizer and schedule."""

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from fastalex.models import alexnet, convnet4
from fastalex.training import distributed, schedules
from fastalex.training.data import builtin, datasets, shards, stats, transforms
from fastalex.training.startup import install_warning_format


def stats_cache_file(data_dir: Path, output_dir: Path, size: int) -> Path:
    """Next to the data when it is writable (shared by every run on it), else in the run's
    output directory."""
    name = f"fastalex-stats-{size}px.pt"
    if os.access(data_dir, os.W_OK):
        return data_dir / name
    return output_dir / name


def locate_data(args, info, output_dir: Path) -> tuple[Path, stats.ImageStats]:
    """The data's root (the built-in tree generated first when needed) and its training-set
    statistics (cached). Rank 0 does the work first; the other ranks then read its results."""
    progress = info.is_main and not args.no_progress
    if args.data:
        data_dir = Path(args.data).expanduser().absolute()
        if not data_dir.is_dir():
            raise datasets.DataError(f"--data {args.data}: no such directory (expected an "
                                     "ImageFolder tree: DIR/train/<class>/<image> and "
                                     "DIR/val/<class>/<image>, or python -m fastalex.prepare's "
                                     "output)")
        if shards.is_prepared(data_dir):
            return data_dir, prepared_stats(args, data_dir)

    def locate():
        root = data_dir if args.data else builtin.ensure_builtin_dataset(
            image_size=args.builtin_image_size, train_per_class=args.builtin_train_per_class,
            val_per_class=args.builtin_val_per_class, seed=0, progress=progress)
        return root, stats.load_or_compute_stats(
            root / "train", stats_cache_file(root, output_dir, args.image_size),
            size=args.image_size, max_images=args.stats_images, progress=progress)

    if info.is_main:
        located = locate()
    distributed.barrier(info)
    if not info.is_main:
        located = locate()
    return located


def prepared_stats(args, data_dir: Path) -> stats.ImageStats:
    """The statistics that ``python -m fastalex.prepare`` wrote beside its data."""
    manifest = shards.read_manifest(data_dir)
    if manifest["size"] != args.image_size:
        raise datasets.DataError(
            f"--image-size {args.image_size}: the prepared data in {data_dir} holds "
            f"{manifest['size']} px images (use --image-size {manifest['size']}, or prepare "
            f"again with --size {args.image_size})")
    found = stats.load_stats(data_dir / manifest["stats"]["file"], manifest["stats"]["key"])
    if found is None:
        raise datasets.DataError(f"--data {data_dir}: {manifest['stats']['file']} is missing or "
                                 "not this data's: run python -m fastalex.prepare again")
    return found


def val_transform(args, image_stats: stats.ImageStats, ten_crop: bool):
    """The validation transform of a run: centre crop, or the paper's ten crops."""
    return transforms.eval_transform(image_stats, size=args.image_size, crop=args.crop,
                                     per_channel_mean=args.per_channel_mean, ten_crop=ten_crop)


def load_val_split(data_dir: Path, transform):
    """The validation split of ``data_dir``, prepared data or an ImageFolder tree, each item
    ``(transform(image), target)``."""
    if shards.is_prepared(data_dir):
        return shards.PreparedImages(data_dir, "val", transform=transform)
    return datasets.load_split(data_dir, "val", transform)


def build_datasets(args, data_dir: Path, image_stats: stats.ImageStats):
    """(train_set, val_set). With ``--gpu-decode`` the training items are the files' bytes,
    decoded and transformed by :func:`train_batch_preparer`. Prepared data
    (:mod:`~fastalex.training.data.shards`): the training items are the decoded uint8 images
    (or with ``--gpu-decode`` their JPEG bytes), augmented on the device by
    :func:`train_batch_preparer`; the validation items are transformed in the workers."""
    if shards.is_prepared(data_dir):
        train_set = shards.PreparedImages(data_dir, "train", encoded=args.gpu_decode)
        return train_set, load_val_split(data_dir, val_transform(args, image_stats,
                                                                  args.ten_crop))
    if args.gpu_decode:
        train_folder, train_tf = datasets.EncodedImageFolder, None
    else:
        train_folder = datasets.SafeImageFolder
        train_tf = transforms.train_transform(
            image_stats, size=args.image_size, crop=args.crop,
            per_channel_mean=args.per_channel_mean, pca_std=args.pca_std,
            crop_flip=args.crop_flip)
    return datasets.build_datasets(data_dir, train_tf, val_transform(args, image_stats,
                                                                     args.ten_crop),
                                   train_folder=train_folder)


def train_batch_preparer(args, image_stats: stats.ImageStats, device):
    """How a training batch reaches the device: ``None`` (the engine's default: move the
    transformed CPU batch), or a function that applies the training transform on ``device``,
    batched: with ``--gpu-decode`` after decoding the batch's files there; for prepared data
    (:mod:`~fastalex.training.data.shards`) after moving the uint8 batch the workers decoded."""
    prepared = bool(args.data) and shards.is_prepared(Path(args.data).expanduser())
    if not args.gpu_decode and not prepared:
        return None
    transform = transforms.BatchTrainTransform(
        image_stats, size=args.image_size, crop=args.crop,
        per_channel_mean=args.per_channel_mean, pca_std=args.pca_std,
        crop_flip=args.crop_flip).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    if not args.gpu_decode:
        def prepare_decoded(batch):
            images, targets = batch
            images = transform(images.to(device, non_blocking=True))
            return (images.contiguous(memory_format=memory_format),
                    targets.to(device, non_blocking=True))

        return prepare_decoded

    def prepare(batch):
        files, targets, paths = batch
        images, keep = datasets.decode_images(files, paths, device)
        if not keep:  # every file of the batch was unreadable (each named in a warning)
            return None
        images = transform(images).contiguous(memory_format=memory_format)
        return images, targets[keep].to(device, non_blocking=True)

    return prepare


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The data loader's generator is re-seeded from (seed, epoch, rank) at every epoch: the
    shuffle and the workers' augmentation seeds of an epoch do not depend on how the run got
    there (straight or resumed)."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)


def _loader_options(workers: int, device, generator=None) -> dict:
    options = dict(num_workers=workers, pin_memory=device.type == "cuda",
                   collate_fn=datasets.collate_skip_none, generator=generator,
                   worker_init_fn=install_warning_format,  # one line per unreadable file
                   # Not persistent: workers are re-created each epoch from the re-seeded
                   # generator, which keeps the augmentation identical after --resume.
                   persistent_workers=False)
    if workers > 0:
        options["prefetch_factor"] = 4
    return options


def val_loader(val_set, *, batch_size: int, ten_crop: bool, workers: int, device, info,
               generator=None) -> DataLoader:
    """Validation batches in order (each rank its shard under DDP); a 10-crop batch holds
    ``batch_size // 10`` images, so it feeds the network ``batch_size`` crops."""
    sampler = DistributedSampler(val_set, info.world_size, info.rank, shuffle=False) \
        if info.enabled else SequentialSampler(val_set)
    return DataLoader(val_set, batch_size=max(1, batch_size // 10) if ten_crop else batch_size,
                      sampler=sampler, **_loader_options(workers, device, generator))


def make_loaders(args, info, train_set, val_set, device, generator: torch.Generator):
    """(train_loader, val_loader, train_sampler): the training order and the workers'
    augmentation seeds come from ``generator`` (re-seeded per epoch with :func:`epoch_seed`)."""
    if info.enabled and isinstance(train_set, shards.PreparedImages):
        train_sampler = shards.ShardSampler(train_set, info.world_size, info.rank, shuffle=True,
                                            seed=args.seed)  # each rank its own shards
    elif info.enabled:
        train_sampler = DistributedSampler(train_set, info.world_size, info.rank, shuffle=True,
                                           seed=args.seed)
    else:
        train_sampler = RandomSampler(train_set, generator=generator)
    options = _loader_options(args.workers, device, generator)
    if args.gpu_decode:  # the batches are (files, targets, paths), decoded on the device
        options["collate_fn"] = datasets.collate_encoded
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=train_sampler,
                              drop_last=args.cuda_graph, **options)  # a graph has one shape
    return train_loader, val_loader(val_set, batch_size=args.batch_size, ten_crop=args.ten_crop,
                                    workers=args.workers, device=device, info=info,
                                    generator=generator), train_sampler


def build_model(args, num_classes: int, device) -> torch.nn.Module:
    """The paper's AlexNet with the run's ablation switches, or with ``--model convnet4`` the
    four-layer CNN of its Figure 1, on ``device``."""
    if args.model == "convnet4":
        model = convnet4(num_classes, activation=args.activation, image_size=args.crop,
                         impl=args.impl).to(device)
    else:
        model = alexnet(num_classes, args.dropout, activation=args.activation,
                        pooling=args.pooling, lrn=args.lrn, image_size=args.crop,
                        impl=args.impl, conv4=args.conv4, init=args.init,
                        positive_bias=args.init_bias, input_scale=args.input_scale).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(args, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or AdamW; fused where torch has a fused kernel for the device
    and dtype (one pass over each parameter instead of several)."""
    params = list(model.parameters())
    if args.optimizer == "sgd":
        cls, kwargs = torch.optim.SGD, dict(momentum=args.momentum)
    else:
        cls, kwargs = (torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW), {}
    try:
        return cls(params, lr=args.lr, weight_decay=args.wd, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device or dtype
        return cls(params, lr=args.lr, weight_decay=args.wd, **kwargs)


def build_scheduler(args, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The run's learning-rate schedule (:mod:`fastalex.training.schedules`)."""
    if args.lr_schedule == "plateau":
        return schedules.plateau(optimizer, patience=args.lr_patience, max_decays=args.lr_decays)
    if args.lr_schedule == "cosine":
        return schedules.warmup_cosine(
            optimizer, total_steps=args.epochs * steps_per_epoch,
            warmup_steps=round(args.warmup_epochs * steps_per_epoch))
    return schedules.constant(optimizer)

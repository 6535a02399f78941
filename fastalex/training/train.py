"""Train the paper's AlexNet: ``python -m fastalex.train [--data DIR] [options]``.

Without ``--data`` it trains on the built-in "shapes" dataset (generated on first use, no
download) with a quick preset (fastalex.presets); with ``--data DIR`` (an ImageFolder tree with
train/ and val/, e.g. ILSVRC-2012) it follows the paper's recipe. Flags given on the command line
override the preset. ``torchrun --nproc_per_node=N -m fastalex.train ...`` trains with
DistributedDataParallel.

Outputs in ``--output-dir``: metrics.jsonl (one JSON line per epoch), checkpoint.pt (after every
epoch, written atomically; ``--resume`` continues it exactly), model_best.pt (lowest validation
top-1 error), curves.png (learning curves) and conv1_kernels.png (the 96 first-layer kernels).

torch and the data pipeline are imported inside the functions that need them, so ``--help`` and
flag errors answer at once.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXAMPLES = """\
examples:
  python -m fastalex.train                                  # built-in dataset, quick preset
  python -m fastalex.train --data ~/imagenet --amp bf16 --channels-last -j 16
  torchrun --nproc_per_node=8 -m fastalex.train --data ~/imagenet --amp bf16 -b 128
  python -m fastalex.train --resume runs/shapes/checkpoint.pt           # continue a run
  python -m fastalex.train --evaluate --resume runs/shapes/model_best.pt --ten-crop
"""

# Flags that define a run: --resume takes them from the checkpoint unless given again.
RUN_KEYS = (
    "data", "epochs", "batch_size", "optimizer", "lr", "momentum", "wd", "lr_schedule",
    "lr_patience", "lr_decays", "warmup_epochs", "image_size", "crop", "dropout", "pca_std",
    "per_channel_mean", "activation", "pooling", "lrn", "impl", "seed", "amp", "channels_last",
    "builtin_image_size", "builtin_train_per_class", "builtin_val_per_class", "stats_images",
)


class UsageError(Exception):
    """A problem with the command line or its inputs: printed without a traceback (exit 2)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastalex.train",
        description="Train the 2012 AlexNet (fastalex's fused Triton kernels on a GPU). Without "
                    "--data: the built-in generated 'shapes' dataset and its quick preset; with "
                    "--data: the paper's recipe. Flags override the preset; "
                    "defaults shown as 'preset' come from fastalex/presets.py.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="DIR",
                   help="ImageFolder tree with train/<class>/* and val/<class>/* (ILSVRC-2012 "
                        "layout, Imagenette, ...). Default: the built-in shapes dataset, "
                        "generated into $FASTALEX_CACHE or ~/.cache/fastalex on first use")
    d.add_argument("--image-size", type=int, metavar="N",
                   help="shorter side resized to N, centre N x N crop (paper: 256; preset)")
    d.add_argument("--crop", type=int, metavar="N",
                   help="random N x N training crops, centre crop for validation: the network's "
                        "input size (paper: 227; at least 67; preset)")
    d.add_argument("--per-channel-mean", action=argparse.BooleanOptionalAction, default=None,
                   help="subtract the per-channel mean instead of the paper's mean image")
    d.add_argument("--pca-std", type=float, metavar="S",
                   help="std of the fancy-PCA lighting coefficients (paper: 0.1; 0 turns it off)")
    d.add_argument("--stats-images", type=int, metavar="N",
                   help="images sampled for the mean image and RGB PCA (default 10000); cached "
                        "next to the data, or in --output-dir if that is read-only")
    d.add_argument("-j", "--workers", type=int, metavar="N",
                   help="data-loading processes per training process (default: CPUs - 1, at "
                        "most 8; the CPU preset uses 0 or 1, see fastalex/presets.py)")
    d.add_argument("--gpu-decode", action="store_true",
                   help="decode the training JPEGs on the training device (nvJPEG on a GPU) and "
                        "crop, flip and light them there, batched; the loader workers only read "
                        "files. For when CPU decoding cannot keep up with the GPU (validation "
                        "stays on the CPU path)")
    d.add_argument("--builtin-image-size", type=int, metavar="N",
                   help="built-in dataset: side of the generated images (preset)")
    d.add_argument("--builtin-train-per-class", type=int, metavar="N",
                   help="built-in dataset: training images per class (preset)")
    d.add_argument("--builtin-val-per-class", type=int, metavar="N",
                   help="built-in dataset: validation images per class (preset)")

    m = p.add_argument_group("model (the paper's network; options for its ablations)")
    m.add_argument("--impl", choices=("fastalex", "torch"),
                   help="fastalex layers (Triton kernels on a GPU) or the same network from "
                        "plain torch.nn (default fastalex)")
    m.add_argument("--dropout", type=float, metavar="P", help="dropout in fc6 and fc7 (0.5)")
    m.add_argument("--activation", choices=("relu", "tanh"), help="relu (paper) or tanh")
    m.add_argument("--pooling", choices=("overlapping", "non-overlapping"),
                   help="max-pool 3x3 stride 2 (paper) or 2x2 stride 2")
    m.add_argument("--lrn", action=argparse.BooleanOptionalAction, default=None,
                   help="local response normalisation after conv1 and conv2 (paper: on)")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, metavar="N", help="epochs to train (paper: 90; preset)")
    o.add_argument("-b", "--batch-size", type=int, metavar="N",
                   help="images per process and step; under torchrun the global batch is "
                        "N x processes (paper: 128; preset)")
    o.add_argument("--optimizer", choices=("sgd", "adam", "adamw"),
                   help="sgd with momentum (paper) or Adam/AdamW (preset)")
    o.add_argument("--lr", type=float, metavar="LR", help="initial learning rate (paper: 0.01)")
    o.add_argument("--momentum", type=float, metavar="M", help="SGD momentum (paper: 0.9)")
    o.add_argument("--wd", "--weight-decay", dest="wd", type=float, metavar="W",
                   help="weight decay (paper: 5e-4)")
    o.add_argument("--lr-schedule", choices=("plateau", "cosine", "constant"),
                   help="plateau: divide lr by 10 when the val top-1 error has not improved for "
                        "--lr-patience epochs, at most --lr-decays times (paper); cosine: "
                        "--warmup-epochs linear warm-up, then cosine to 0 per step; constant")
    o.add_argument("--lr-patience", type=int, metavar="N",
                   help="plateau schedule: epochs without improvement before a decay (5)")
    o.add_argument("--lr-decays", type=int, metavar="N",
                   help="plateau schedule: most decays by 10 (paper: 3)")
    o.add_argument("--warmup-epochs", type=float, metavar="E",
                   help="cosine schedule: epochs of linear lr warm-up")

    r = p.add_argument_group("run")
    r.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: cuda if available)")
    r.add_argument("--amp", choices=("bf16", "fp16"),
                   help="autocast mixed precision (fp16 adds a GradScaler); default fp32")
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format for images and conv weights")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--seed", type=int, help="seed of every random number generator (0)")
    r.add_argument("--resume", metavar="PATH",
                   help="continue from a checkpoint.pt exactly (its flags are reused unless "
                        "given again); with --evaluate: the checkpoint to score")
    r.add_argument("--output-dir", metavar="DIR",
                   help="where metrics.jsonl, checkpoints and PNGs go (default: runs/<dataset>, "
                        "or the --resume checkpoint's directory)")
    r.add_argument("--evaluate", action="store_true",
                   help="only score the --resume checkpoint on the validation set (top-1/top-5 "
                        "error, centre crop; 10-crop too with --ten-crop) and exit")
    r.add_argument("--ten-crop", action="store_true",
                   help="validate with the paper's 10 crops (corners + centre, and their "
                        "mirror images), averaging the softmax; default: centre crop")
    r.add_argument("--stop-after", type=int, metavar="N",
                   help="end this run after epoch N as if it were interrupted (the schedule "
                        "still spans --epochs); continue it with --resume. For time-limited "
                        "jobs")
    r.add_argument("--print-freq", type=int, default=10, metavar="N",
                   help="refresh the progress bar's loss, lr and images/s every N steps (10)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# -------------------------------------------------------------------------------------------
# Configuration: command line, then checkpoint (--resume), then preset
# -------------------------------------------------------------------------------------------


def resolve_device(name):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine "
                         "(use --device cpu)")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_args(args, device) -> str:
    """Fill every flag left out; returns the name of the recipe used."""
    from fastalex.training import checkpoint, presets

    if args.resume and not args.evaluate:
        path = Path(args.resume).expanduser()
        if not path.is_file():
            raise UsageError(f"--resume {args.resume}: no such file")
        try:
            saved = checkpoint.load(path)["args"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
            raise UsageError(f"--resume {args.resume}: not a fastalex checkpoint ({exc})") from None
        for key in RUN_KEYS:
            if getattr(args, key) is None and key in saved:
                setattr(args, key, saved[key])
    recipe = "paper" if args.data else f"builtin-{'cuda' if device.type == 'cuda' else 'cpu'}"
    preset = presets.PAPER if args.data else presets.builtin_preset(device.type)
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key, value in dict(impl="fastalex", activation="relu", pooling="overlapping", lrn=True,
                           seed=0, channels_last=False, stats_images=10000).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key, value in presets.BUILTIN_DATA.items():
        if getattr(args, f"builtin_{key}") is None:
            setattr(args, f"builtin_{key}", value)
    if args.workers is None:
        args.workers = preset.get("workers", presets.default_workers(device.type))
    check_args(args)
    return recipe


def check_args(args) -> None:
    from fastalex.models.alexnet import MIN_IMAGE_SIZE

    def positive(name, value, minimum=1):
        if value < minimum:
            raise UsageError(f"--{name} must be >= {minimum}, got {value}")

    positive("epochs", args.epochs)
    positive("batch-size", args.batch_size)
    positive("image-size", args.image_size)
    positive("crop", args.crop, MIN_IMAGE_SIZE)
    positive("workers", args.workers, 0)
    positive("print-freq", args.print_freq)
    if args.stop_after is not None:
        positive("stop-after", args.stop_after)
    positive("stats-images", args.stats_images)
    positive("lr-patience", args.lr_patience, 0)
    positive("lr-decays", args.lr_decays, 0)
    if args.crop > args.image_size:
        raise UsageError(f"--crop {args.crop} must not exceed --image-size {args.image_size}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if args.wd < 0 or not 0 <= args.momentum < 1:
        raise UsageError("--wd must be >= 0 and --momentum in [0, 1)")
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.pca_std < 0 or args.warmup_epochs < 0:
        raise UsageError("--pca-std and --warmup-epochs must be >= 0")
    if args.evaluate and not args.resume:
        raise UsageError("--evaluate needs --resume PATH (the checkpoint to score)")


# -------------------------------------------------------------------------------------------
# Building blocks
# -------------------------------------------------------------------------------------------


def log(info, *parts) -> None:
    if info.is_main:
        from tqdm.auto import tqdm

        tqdm.write(" ".join(str(p) for p in parts), file=sys.stdout)
        sys.stdout.flush()


def prepare_data(args, info, output_dir: Path):
    """(data_dir, stats, train_set, val_set): the dataset (generated first for the built-in one,
    by rank 0 while the others wait), its cached statistics and the transformed datasets."""
    from fastalex.training import distributed
    from fastalex.training.data import builtin, datasets, stats, transforms

    if args.data:
        data_dir = Path(args.data).expanduser().absolute()
        if not data_dir.is_dir():
            raise datasets.DataError(f"--data {args.data}: no such directory (expected an "
                                     "ImageFolder tree: DIR/train/<class>/<image> and "
                                     "DIR/val/<class>/<image>)")

    def locate():
        root = data_dir if args.data else builtin.ensure_builtin_dataset(
            image_size=args.builtin_image_size, train_per_class=args.builtin_train_per_class,
            val_per_class=args.builtin_val_per_class, seed=0,
            progress=info.is_main and not args.no_progress)
        return root, stats.load_or_compute_stats(
            root / "train", stats_cache_file(root, output_dir, args.image_size),
            size=args.image_size, max_images=args.stats_images,
            progress=info.is_main and not args.no_progress)

    # Rank 0 generates the built-in data and caches the statistics; the others then read them.
    if info.is_main:
        data_dir, image_stats = locate()
    distributed.barrier(info)
    if not info.is_main:
        data_dir, image_stats = locate()

    common = dict(size=args.image_size, crop=args.crop, per_channel_mean=args.per_channel_mean)
    val_tf = transforms.eval_transform(image_stats, ten_crop=args.ten_crop, **common)
    if args.gpu_decode:  # the workers read file bytes; train_batch_preparer decodes them
        train_folder, train_tf = datasets.EncodedImageFolder, None
    else:
        train_folder = datasets.SafeImageFolder
        train_tf = transforms.train_transform(image_stats, pca_std=args.pca_std, **common)
    train_set, val_set = datasets.build_datasets(data_dir, train_tf, val_tf,
                                                 train_folder=train_folder)
    return data_dir, image_stats, train_set, val_set


def train_batch_preparer(args, image_stats, device):
    """How a training batch reaches the device: ``None`` (the engine's default: move the
    transformed CPU batch), or with ``--gpu-decode`` a function that decodes the batch's
    files on ``device`` and applies the training transform there, batched."""
    if not args.gpu_decode:
        return None
    import torch

    from fastalex.training.data import datasets, transforms

    transform = transforms.BatchTrainTransform(
        image_stats, size=args.image_size, crop=args.crop,
        per_channel_mean=args.per_channel_mean, pca_std=args.pca_std).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    def prepare(batch):
        datas, targets, paths = batch
        images, keep = datasets.decode_images(datas, paths, device)
        if not keep:  # every file of the batch was unreadable (each named in a warning)
            return None
        images = transform(images).contiguous(memory_format=memory_format)
        return images, targets[keep].to(device, non_blocking=True)

    return prepare


def stats_cache_file(data_dir: Path, output_dir: Path, size: int) -> Path:
    """Next to the data when it is writable (shared by every run on it), else in the run's
    output directory."""
    name = f"fastalex-stats-{size}px.pt"
    if os.access(data_dir, os.W_OK):
        return data_dir / name
    return output_dir / name


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The data loader's generator is re-seeded from (seed, epoch, rank) at every epoch: the
    shuffle and the workers' augmentation seeds of an epoch do not depend on how the run got
    there (straight or resumed)."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)


def make_loaders(args, info, train_set, val_set, device, generator):
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from fastalex.training.data.datasets import collate_encoded, collate_skip_none

    common = dict(num_workers=args.workers, pin_memory=device.type == "cuda",
                  collate_fn=collate_skip_none, generator=generator,
                  # Not persistent: workers are re-created each epoch from the re-seeded
                  # generator, which keeps the augmentation identical after --resume.
                  persistent_workers=False)
    if args.workers > 0:
        common["prefetch_factor"] = 4
    if info.enabled:
        train_sampler = DistributedSampler(train_set, info.world_size, info.rank, shuffle=True,
                                           seed=args.seed)
        val_sampler = DistributedSampler(val_set, info.world_size, info.rank, shuffle=False)
    else:
        train_sampler = torch.utils.data.RandomSampler(train_set, generator=generator)
        val_sampler = torch.utils.data.SequentialSampler(val_set)
    val_batch = max(1, args.batch_size // 10) if args.ten_crop else args.batch_size
    # --gpu-decode: the training batches are (files, targets, paths), decoded on the device
    train_collate = collate_encoded if args.gpu_decode else collate_skip_none
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=train_sampler,
                              drop_last=False, **{**common, "collate_fn": train_collate})
    val_loader = DataLoader(val_set, batch_size=val_batch, sampler=val_sampler, **common)
    return train_loader, val_loader, train_sampler


def build_model(args, num_classes, device):
    import torch

    from fastalex.models import alexnet

    model = alexnet(num_classes, args.dropout, activation=args.activation, pooling=args.pooling,
                    lrn=args.lrn, image_size=args.crop, impl=args.impl)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(args, model):
    """SGD / Adam / AdamW, fused where torch has a fused kernel for the device: one pass over
    each parameter instead of several (on the CPU, measured: Adam's update of the 20M-parameter
    67 px model 37 ms fused vs 249 ms unfused, SGD 26 vs 146 ms; that is a third of a batch-64
    step)."""
    import torch

    params = list(model.parameters())
    if args.optimizer == "sgd":
        cls, kwargs = torch.optim.SGD, dict(momentum=args.momentum)
    else:
        cls, kwargs = (torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW), {}
    try:
        return cls(params, lr=args.lr, weight_decay=args.wd, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for this device or dtype
        return cls(params, lr=args.lr, weight_decay=args.wd, **kwargs)


def build_scheduler(args, optimizer, steps_per_epoch):
    from fastalex.training import schedules

    if args.lr_schedule == "plateau":
        return schedules.PlateauDecay(optimizer, factor=0.1, patience=args.lr_patience,
                                         max_decays=args.lr_decays)
    if args.lr_schedule == "cosine":
        return schedules.warmup_cosine(
            optimizer, total_steps=args.epochs * steps_per_epoch,
            warmup_steps=round(args.warmup_epochs * steps_per_epoch))
    return schedules.constant(optimizer)


def stats_dict(image_stats) -> dict:
    return {k: getattr(image_stats, k) for k in
            ("mean_image", "mean_rgb", "eigvals", "eigvecs", "num_images", "size")}


def write_jsonl(path: Path, rows) -> None:
    """Replace ``path`` with ``rows`` (atomically: a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


# -------------------------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------------------------


def run(args) -> int:
    import torch

    from fastalex.training import distributed

    device = resolve_device(args.device)
    recipe = resolve_args(args, device)
    info = distributed.init(device.type)
    try:
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        if args.evaluate:
            from fastalex.training import evaluate

            return evaluate.evaluate_checkpoint(
                args.resume, data=args.data, device=device, ten_crop=args.ten_crop,
                center=True, workers=args.workers, batch_size=args.batch_size,
                amp=args.amp, channels_last=args.channels_last, progress=not args.no_progress,
                info=info)
        return train(args, recipe, device, info)
    finally:
        distributed.shutdown()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(args, recipe, device, info) -> int:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from fastalex.training import checkpoint, distributed, engine, plots
    from fastalex.backend import describe

    dataset_name = Path(args.data).expanduser().name if args.data else "shapes"
    if args.output_dir is None:  # a resumed run goes on writing beside its checkpoint
        args.output_dir = str(Path(args.resume).parent if args.resume
                              else Path("runs") / dataset_name)
    output_dir = Path(args.output_dir).expanduser()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    kernels = describe(device) if args.impl == "fastalex" else \
        f"{device}: plain torch.nn build (--impl torch, no fastalex kernels)"
    log(info, f"device: {device}" + (f" x {info.world_size} processes (DDP, "
                                     f"{'nccl' if device.type == 'cuda' else 'gloo'})"
                                     if info.enabled else ""))
    log(info, f"kernels: {kernels}")
    log(info, f"recipe: {recipe} (fastalex/presets.py); flags on the command line override it")

    # Every rank seeds alike so the model starts identical (DDP also broadcasts rank 0's);
    # the data order and augmentation differ per rank through the sampler and epoch_seed.
    seed_everything(args.seed + info.rank)
    data_dir, image_stats, train_set, val_set = prepare_data(args, info, output_dir)
    classes = train_set.classes
    if info.is_main:  # created once the data is known good: a typo in --data leaves nothing
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_stale_temporaries(output_dir)
    distributed.barrier(info)
    log(info, f"dataset: {data_dir} ({len(classes)} classes; train {len(train_set)} images, "
              f"val {len(val_set)}; {args.image_size} px -> {args.crop} px crops; "
              f"{'per-channel mean' if args.per_channel_mean else 'mean image'} from "
              f"{image_stats.num_images} images)")

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    raw_model = build_model(args, len(classes), device)
    torch.manual_seed(args.seed + info.rank)
    n_params = sum(p.numel() for p in raw_model.parameters())
    log(info, f"model: AlexNet ({args.impl}) {n_params:,} parameters "
              f"({n_params * 4 / 2**20:.1f} MiB fp32), input {args.crop}x{args.crop}, "
              f"{len(classes)} classes, activation {args.activation}, pooling {args.pooling}, "
              f"LRN {'on' if args.lrn else 'off'}, dropout {args.dropout}")

    prepare_train_batch = train_batch_preparer(args, image_stats, device)
    loader_generator = torch.Generator()
    train_loader, val_loader, train_sampler = make_loaders(args, info, train_set, val_set,
                                                           device, loader_generator)
    optimizer = build_optimizer(args, raw_model)
    scheduler = build_scheduler(args, optimizer, len(train_loader))
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    log(info, f"optimisation: {args.optimizer} lr {args.lr:g}"
              + (f" momentum {args.momentum:g}" if args.optimizer == "sgd" else "")
              + f" weight decay {args.wd:g}, batch {args.batch_size}"
              + (f" x {info.world_size}" if info.enabled else "")
              + f", {args.epochs} epochs, lr schedule {args.lr_schedule}"
              + (f" (patience {args.lr_patience}, at most {args.lr_decays} decays)"
                 if args.lr_schedule == "plateau" else "")
              + (f" (warm-up {args.warmup_epochs:g} epochs)" if args.lr_schedule == "cosine"
                 else "")
              + f", amp {args.amp or 'off (fp32)'}, channels-last {args.channels_last}, "
                f"workers {args.workers}"
              + (f", JPEG decoding and training transform on {device}" if args.gpu_decode
                 else ""))

    start_epoch, step, best, history = 0, 0, None, []
    if args.resume:
        state = checkpoint.load(args.resume, map_location="cpu")
        try:
            raw_model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise UsageError(f"--resume {args.resume}: the checkpoint's model does not match "
                             f"this configuration ({str(exc).splitlines()[0]})") from None
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, step = state["epoch"], state["step"]
        best, history = state.get("best"), list(state.get("history", []))
        checkpoint.set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)],
                                 loader_generator)
        log(info, f"resumed from {args.resume}: {start_epoch} epochs done, step {step}")

    model = raw_model
    if info.enabled:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)

    metrics_path = output_dir / "metrics.jsonl"
    if info.is_main:
        write_jsonl(metrics_path, history)  # a resumed run keeps the rows it had checkpointed
    log(info, f"output: {output_dir.absolute()}")

    last_epoch = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    for epoch in range(start_epoch, last_epoch):
        epoch_start = time.perf_counter()
        loader_generator.manual_seed(epoch_seed(args.seed, epoch, info.rank))
        if info.enabled:
            train_sampler.set_epoch(epoch)
        step_scheduler = scheduler if getattr(scheduler, "per_step", False) else None
        lr = optimizer.param_groups[0]["lr"]
        train_metrics = engine.train_one_epoch(
            model, train_loader, optimizer, device, epoch=epoch + 1, epochs=args.epochs,
            scaler=scaler, amp=args.amp, channels_last=args.channels_last,
            step_scheduler=step_scheduler, print_freq=args.print_freq, info=info,
            progress=not args.no_progress, prepare=prepare_train_batch)
        step += train_metrics["steps"]
        val = engine.evaluate(model, val_loader, device, amp=args.amp,
                              channels_last=args.channels_last, info=info,
                              progress=not args.no_progress,
                              desc=f"epoch {epoch + 1}/{args.epochs} val")
        decayed = False
        if not getattr(scheduler, "per_step", False):
            decayed = scheduler.step(val["top1_error"])
        row = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": train_metrics["train_loss"],
            "train_top1_error": train_metrics["train_top1_error"],
            "val_loss": val["loss"],
            "val_top1_error": val["top1_error"],
            "val_top5_error": val["top5_error"],
            "val_crops": 10 if args.ten_crop else 1,
            "lr": lr,
            "images_per_s": train_metrics["images_per_s"],
            "train_seconds": train_metrics["seconds"],
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(row)
        is_best = best is None or val["top1_error"] < best["val_top1_error"]
        if is_best:
            best = {"epoch": epoch + 1, "val_top1_error": val["top1_error"],
                    "val_top5_error": val["top5_error"]}
        log(info, f"epoch {epoch + 1}/{args.epochs}: train loss {row['train_loss']:.4f}, "
                  f"val top-1 error {100 * val['top1_error']:.2f}%, top-5 "
                  f"{100 * val['top5_error']:.2f}%, lr {lr:.3g}, "
                  f"{row['images_per_s']:.0f} images/s, {row['seconds']:.1f} s"
                  + (" (best)" if is_best else "")
                  + ("; lr divided by 10" if decayed else ""))

        # Every rank's RNG state is kept (ranks draw different augmentations and dropout).
        rng = [checkpoint.rng_state(loader_generator)]
        if info.enabled:
            rng = gather_objects(rng[0], info)
        if info.is_main:
            append_jsonl(metrics_path, row)
            common = {"args": vars(args), "model_config": raw_model.config,
                      "classes": classes, "stats": stats_dict(image_stats),
                      "epoch": epoch + 1, "step": step, "best": best, "metrics": row}
            checkpoint.save_atomic({
                **common, "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng, "history": history,
            }, output_dir / checkpoint.CHECKPOINT)
            if is_best:
                checkpoint.save_atomic({**common, "model": raw_model.state_dict()},
                                       output_dir / checkpoint.BEST)

    if info.enabled:
        same = distributed.parameters_in_sync(raw_model, info)
        log(info, f"DDP check: parameters {'identical' if same else 'DIFFER'} on all "
                  f"{info.world_size} ranks")
        if not same:
            raise RuntimeError("DDP replicas diverged: parameters differ between ranks")
    if info.is_main and history:
        plots.training_curves(history, output_dir / "curves.png")
        plots.kernel_grid(raw_model.features.conv1.weight, output_dir / "conv1_kernels.png")
        last = history[-1]
        log(info, f"done: val top-1 error {100 * last['val_top1_error']:.2f}% "
                  f"(top-5 {100 * last['val_top5_error']:.2f}%) after {last['epoch']} epochs; "
                  f"best {100 * best['val_top1_error']:.2f}% at epoch {best['epoch']}")
        if last["epoch"] < args.epochs:
            log(info, f"stopped after epoch {last['epoch']} of {args.epochs} (--stop-after): "
                      f"continue with --resume {output_dir / checkpoint.CHECKPOINT}")
        log(info, f"wrote {metrics_path}, {output_dir / 'checkpoint.pt'}, "
                  f"{output_dir / 'model_best.pt'}, {output_dir / 'curves.png'}, "
                  f"{output_dir / 'conv1_kernels.png'}")
    return 0


def gather_objects(obj, info) -> list:
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fastalex.training.data.datasets import DataError

    try:
        return run(args)
    except (UsageError, DataError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; the last checkpoint.pt written stays loadable",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

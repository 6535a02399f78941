"""Score a checkpoint: ``python -m fastalex.evaluate CHECKPOINT [--data DIR] [options]``.

Top-1 and top-5 error on the validation split, with the single centre crop and with the
paper's 10 crops (four corners and the centre, each also mirrored; softmax averaged), and the
first layer's colour and roughness per tower. ``--figures`` also writes what the network
learned (:mod:`fastalex.training.figures`). The checkpoint carries everything else: the model
configuration, the class names, the training set's mean image (so no statistics are
recomputed) and the data flags it was trained with.
"""

import argparse
import json
from pathlib import Path

from fastalex.training import presets
from fastalex.training.startup import (
    HelpFormatter,
    UsageError,
    log,
    resolve_device,
    run_cli,
    session,
)

PROG = "python -m fastalex.evaluate"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Top-1/top-5 error of a fastalex checkpoint (checkpoint.pt or "
                    "model_best.pt) on the validation split: centre crop and 10-crop.")
    p.add_argument("checkpoint", help="checkpoint.pt or model_best.pt written by fastalex.train")
    p.add_argument("--data", metavar="DIR",
                   help="ImageFolder tree with val/ (default: the data the checkpoint was "
                        "trained on; the built-in dataset is regenerated if missing)")
    p.add_argument("--crops", choices=("center", "ten", "both"), default="both",
                   help="centre crop, the paper's 10 crops, or both")
    p.add_argument("--ten-crop", dest="crops", action="store_const", const="ten",
                   help="only the 10-crop score (same as --crops ten)")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("-b", "--batch-size", type=int, default=128, metavar="N",
                   help="images per batch (10-crop batches hold N/10 images)")
    p.add_argument("-j", "--workers", type=int, default=presets.default_workers(), metavar="N",
                   help="data-loading processes")
    p.add_argument("--amp", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast mixed precision")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--figures", action="store_true",
                   help="also write conv1_kernels.png, top5.png, neighbours.png and, when the "
                        "checkpoint keeps conv1's initial weights, conv1_learned.png (the "
                        "paper's Figures 3 and 4)")
    p.add_argument("--output-dir", metavar="DIR",
                   help="where --figures writes (default: the checkpoint's directory)")
    p.add_argument("--neighbour-images", type=int, metavar="N",
                   help="training images searched for each query's nearest fc7 neighbours: "
                        "all of them up to N, else a fixed random sample of N (default: "
                        "10000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def load_model(state: dict, device):
    """The checkpoint's network (AlexNet, or the four-layer CNN of ``--model convnet4``) with
    its weights, in eval mode, on ``device``."""
    from fastalex.models import alexnet, convnet4

    build = convnet4 if state["args"].get("model") == "convnet4" else alexnet
    model = build(**state["model_config"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def _load(path: Path, device) -> tuple[dict, object]:
    from fastalex.training import checkpoint

    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint file")
    try:
        state = checkpoint.load(path)
        return state, load_model(state, device)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise UsageError(f"{path}: not a fastalex checkpoint ({exc})") from None


def _data_dir(data, saved: dict, progress: bool) -> Path:
    from fastalex.training.data import builtin

    data = data or saved.get("data")
    if data:
        return Path(data).expanduser()
    return builtin.ensure_builtin_dataset(
        image_size=saved["builtin_image_size"], train_per_class=saved["builtin_train_per_class"],
        val_per_class=saved["builtin_val_per_class"], seed=0, progress=progress)


def evaluate_checkpoint(path, *, data=None, device=None, ten_crop=True, center=True,
                        workers=None, batch_size=128, amp=None, channels_last=False,
                        progress=True, info=None, json_path=None, write_figures=False,
                        output_dir=None, neighbour_images=None) -> dict:
    """The centre-crop and/or 10-crop scores of checkpoint ``path`` (printed on rank 0):
    ``{"checkpoint", "epoch", "conv1", "center": {...}, "ten_crop": {...}}``, each score
    holding top1_error, top5_error, loss and images, ``conv1`` the first layer's
    :func:`~fastalex.training.figures.conv1_measures`. ``data`` defaults to the checkpoint's
    data, ``device`` to cuda when available; ``info`` is the process group's (one process if
    None). ``write_figures`` also writes the figures (rank 0) into ``output_dir`` (default:
    the checkpoint's directory) and adds ``"figures"``, their paths.
    """
    import torch

    from fastalex.training import builders, distributed, engine, figures
    from fastalex.training.data.stats import ImageStats

    info = info or distributed.DistInfo()
    device = device if isinstance(device, torch.device) else resolve_device(device)
    path = Path(path).expanduser()
    state, model = _load(path, device)
    saved = argparse.Namespace(**state["args"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    data_dir = _data_dir(data, state["args"], progress and info.is_main)
    image_stats = ImageStats(**state["stats"])
    if write_figures and getattr(saved, "model", "alexnet") == "convnet4":
        raise UsageError("--figures: the figures show AlexNet's two towers and fc7; this "
                         "checkpoint holds the four-layer CNN (--model convnet4)")
    if write_figures and info.is_main and not (data_dir / "train").is_dir():
        raise UsageError(f"--figures: {data_dir} has no train/ split to find the nearest "
                         "training images in")
    workers = presets.default_workers() if workers is None else workers

    log(info, f"checkpoint: {path} (epoch {state.get('epoch')}, {len(state['classes'])} "
              f"classes, input {saved.crop} px)")
    results = {"checkpoint": str(path), "epoch": state.get("epoch"),
               "conv1": figures.first_layer_measures(model, state.get("conv1_init"))}
    for line in figures.describe_first_layer(results["conv1"]):
        log(info, line)
    for name, ten in (("center", False), ("ten_crop", True)):
        if (ten and not ten_crop) or (not ten and not center):
            continue
        val_set = builders.load_val_split(data_dir, builders.val_transform(saved, image_stats,
                                                                           ten))
        if val_set.classes != list(state["classes"]):
            raise UsageError(f"{data_dir}: its classes differ from the checkpoint's "
                             f"({len(val_set.classes)} vs {len(state['classes'])})")
        loader = builders.val_loader(val_set, batch_size=batch_size, ten_crop=ten,
                                     workers=workers, device=device, info=info)
        out = engine.evaluate(model, loader, device, amp=amp, channels_last=channels_last,
                              info=info, progress=progress,
                              desc="10-crop" if ten else "centre crop")
        results[name] = {k: out[k] for k in ("top1_error", "top5_error", "loss", "images")}
        log(info, f"{'10-crop' if ten else 'centre crop':>11}: top-1 error "
                  f"{100 * out['top1_error']:.2f}%, top-5 error {100 * out['top5_error']:.2f}% "
                  f"({out['images']} images of {data_dir / 'val'})")
    if write_figures and info.is_main:
        out_dir = Path(output_dir).expanduser() if output_dir else path.parent
        written = figures.write_figures(
            model, data_dir, out_dir, image_stats=image_stats, args=saved,
            classes=state["classes"], device=device,
            max_neighbour_images=neighbour_images or figures.NEIGHBOUR_IMAGES,
            batch_size=batch_size, workers=workers, conv1_init=state.get("conv1_init"))
        results["figures"] = [str(p) for p in written]
        log(info, "wrote " + ", ".join(results["figures"]))
    if json_path and info.is_main:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> int:
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.neighbour_images is not None and args.neighbour_images < 1:
            raise UsageError(f"--neighbour-images must be >= 1, got {args.neighbour_images}")
        if args.output_dir and Path(args.output_dir).exists() \
                and not Path(args.output_dir).is_dir():
            raise UsageError(f"--output-dir {args.output_dir}: not a directory")
        with session(args.device) as (device, info):
            evaluate_checkpoint(
                args.checkpoint, data=args.data, device=device, ten_crop=args.crops != "center",
                center=args.crops != "ten", workers=args.workers, batch_size=args.batch_size,
                amp=args.amp, channels_last=args.channels_last, progress=not args.no_progress,
                info=info, json_path=args.json, write_figures=args.figures,
                output_dir=args.output_dir, neighbour_images=args.neighbour_images)
        return 0

    return run_cli(PROG, command)

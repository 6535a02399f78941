"""Score a checkpoint: ``python -m fastalex.evaluate CHECKPOINT [--data DIR] [options]``.

Top-1 and top-5 error on the validation split, with the single centre crop and with the
paper's 10 crops (four corners and the centre, each also mirrored; softmax averaged). The
checkpoint carries everything else: the model configuration, the class names, the training
set's mean image (so no statistics are recomputed) and the data flags it was trained with.
``python -m fastalex.train --evaluate --resume CHECKPOINT`` runs the same code.
"""

import argparse
import json
import sys
from pathlib import Path


from fastalex.training.train import UsageError, resolve_device


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastalex.evaluate",
        description="Top-1/top-5 error of a fastalex checkpoint (checkpoint.pt or "
                    "model_best.pt) on the validation split: centre crop and 10-crop.")
    p.add_argument("checkpoint", help="checkpoint.pt or model_best.pt written by fastalex.train")
    p.add_argument("--data", metavar="DIR",
                   help="ImageFolder tree with val/ (default: the data the checkpoint was "
                        "trained on; the built-in dataset is regenerated if missing)")
    p.add_argument("--crops", choices=("center", "ten", "both"), default="both",
                   help="centre crop, the paper's 10 crops, or both (default both)")
    p.add_argument("--ten-crop", dest="crops", action="store_const", const="ten",
                   help="only the 10-crop score (same as --crops ten)")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("-b", "--batch-size", type=int, default=128, metavar="N",
                   help="images per batch (10-crop batches hold N/10 images) (128)")
    p.add_argument("-j", "--workers", type=int, default=None, metavar="N",
                   help="data-loading processes (default: CPUs - 1, at most 8)")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="autocast mixed precision")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def load_model(state: dict, device):
    """The checkpoint's AlexNet with its weights, in eval mode, on ``device``."""
    from fastalex.models import alexnet

    model = alexnet(**state["model_config"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def evaluate_checkpoint(path, *, data=None, device=None, ten_crop=True, center=True, workers=None,
                        batch_size=128, amp=None, channels_last=False, progress=True, info=None,
                        json_path=None) -> int:
    """Print (and return 0 after) the centre-crop and/or 10-crop errors of checkpoint ``path``."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from fastalex.training import checkpoint, distributed, engine, presets
    from fastalex.training.data import builtin, datasets, transforms
    from fastalex.training.data.stats import ImageStats

    info = info or distributed.DistInfo()
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint file")
    try:
        state = checkpoint.load(path)
        saved = state["args"]
        model = load_model(state, device)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise UsageError(f"{path}: not a fastalex checkpoint ({exc})") from None
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    data = data or saved.get("data")
    if data:
        data_dir = Path(data).expanduser()
    else:
        data_dir = builtin.ensure_builtin_dataset(
            image_size=saved["builtin_image_size"],
            train_per_class=saved["builtin_train_per_class"],
            val_per_class=saved["builtin_val_per_class"], seed=0, progress=progress)
    image_stats = ImageStats(**state["stats"])
    if workers is None:
        workers = presets.default_workers(device.type)

    def line(*parts):
        if info.is_main:
            print(*parts, flush=True)

    line(f"checkpoint: {path} (epoch {state.get('epoch')}, {len(state['classes'])} classes, "
         f"input {saved['crop']} px)")
    results = {"checkpoint": str(path), "epoch": state.get("epoch")}
    for name, ten in (("center", False), ("ten_crop", True)):
        if (ten and not ten_crop) or (not ten and not center):
            continue
        tf = transforms.eval_transform(image_stats, size=saved["image_size"], crop=saved["crop"],
                                       per_channel_mean=saved["per_channel_mean"], ten_crop=ten)
        _, val_set = datasets.build_datasets(data_dir, None, tf)
        if val_set.classes != list(state["classes"]):
            raise UsageError(f"{data_dir}: its classes differ from the checkpoint's "
                             f"({len(val_set.classes)} vs {len(state['classes'])})")
        sampler = DistributedSampler(val_set, info.world_size, info.rank, shuffle=False) \
            if info.enabled else None
        loader = DataLoader(val_set, batch_size=max(1, batch_size // 10) if ten else batch_size,
                            sampler=sampler, num_workers=workers,
                            pin_memory=device.type == "cuda",
                            collate_fn=datasets.collate_skip_none)
        out = engine.evaluate(model, loader, device, amp=amp, channels_last=channels_last,
                              info=info, progress=progress,
                              desc="10-crop" if ten else "centre crop")
        results[name] = {k: out[k] for k in ("top1_error", "top5_error", "loss", "images")}
        line(f"{'10-crop' if ten else 'centre crop':>11}: top-1 error "
             f"{100 * out['top1_error']:.2f}%, top-5 error {100 * out['top5_error']:.2f}% "
             f"({out['images']} images of {data_dir / 'val'})")
    if json_path and info.is_main:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fastalex.training import distributed
    from fastalex.training.data.datasets import DataError

    try:
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
        device = resolve_device(args.device)
        info = distributed.init(device.type)
        try:
            if info.enabled and device.type == "cuda":
                import torch

                device = torch.device("cuda", info.local_rank)
            return evaluate_checkpoint(
                args.checkpoint, data=args.data, device=device, ten_crop=args.crops != "center",
                center=args.crops != "ten", workers=args.workers, batch_size=args.batch_size,
                amp=args.amp, channels_last=args.channels_last, progress=not args.no_progress,
                info=info, json_path=args.json)
        finally:
            distributed.shutdown()
    except (UsageError, DataError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

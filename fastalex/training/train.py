"""A training run, from its configuration to its files: ``python -m fastalex.train``.

:func:`run` trains one run of a configuration that :func:`fastalex.training.options.resolve`
made; :func:`main` is the command line. Outputs in the run's ``output_dir``: metrics.jsonl (one
JSON line per epoch), checkpoint.pt (after every epoch, written atomically; ``--resume``
continues it exactly), model_best.pt (lowest validation top-1 error), curves.png (learning
curves) and the figures of what the network learned (:mod:`fastalex.training.figures`:
conv1_kernels.png, top5.png, neighbours.png).
"""

import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastalex.backend import describe
from fastalex.training import (
    builders,
    checkpoint,
    distributed,
    engine,
    evaluate,
    figures,
    metrics,
    options,
    plots,
    presets,
    schedules,
)
from fastalex.training.graphed_step import GraphedTrainStep
from fastalex.training.startup import TrainingError, UsageError, log, run_cli, session


@dataclass
class Run:
    """A run in progress: its configuration, what was built from it, and how far it got."""

    args: object
    device: torch.device
    info: distributed.DistInfo
    output_dir: Path
    model: torch.nn.Module  # what the loop calls: DDP- and compile-wrapped as asked
    raw_model: torch.nn.Module  # the AlexNet itself, whose state is saved
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    train_loader: object
    val_loader: object
    train_sampler: object
    generator: torch.Generator
    prepare: object
    image_stats: object
    classes: list
    train_step: object = None  # (images, targets, weight) -> (loss, logits): see _wrap
    start_epoch: int = 0
    step: int = 0
    best: dict | None = None
    history: list = field(default_factory=list)
    conv1_init: torch.Tensor | None = None  # conv1's initial weight, for figures.learned


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _describe_optimisation(args, info, device) -> str:
    text = (f"{args.optimizer} lr {args.lr:g}"
            + (f" momentum {args.momentum:g}" if args.optimizer == "sgd" else "")
            + f" weight decay {args.wd:g}, batch {args.batch_size}"
            + (f" x {info.world_size}" if info.enabled else "")
            + f", {args.epochs} epochs, lr schedule {args.lr_schedule}")
    if args.lr_schedule == "plateau":
        text += f" (patience {args.lr_patience}, at most {args.lr_decays} decays)"
    if args.lr_schedule == "cosine":
        text += f" (warm-up {args.warmup_epochs:g} epochs)"
    text += (f", amp {args.amp or 'fp32'}, channels-last {args.channels_last}, "
             f"workers {args.workers}")
    if args.cuda_graph:
        text += ", each step replayed as one CUDA graph (the last short batch dropped)"
    if args.compile:
        text += f", torch.compile mode {args.compile_mode}"
    if args.gpu_decode:
        text += f", JPEG decoding and training transform on {device}"
    return text


def _log_start(args, device, info) -> None:
    kernels = describe(device) if args.impl == "fastalex" else \
        f"{device}: plain torch.nn build (--impl torch, no fastalex kernels)"
    backend = "nccl" if device.type == "cuda" else "gloo"
    log(info, f"device: {device}" + (f" x {info.world_size} processes (DDP, {backend})"
                                     if info.enabled else ""))
    log(info, f"kernels: {kernels}")
    log(info, f"recipe: {presets.recipe(args.data, device.type)[0]} (docs/training.md); "
              "flags on the command line override it")


def _build(args, device, info, output_dir: Path) -> Run:
    """Data, model, loaders, optimizer and schedule of a new run (logged on rank 0)."""
    # Every rank seeds alike so the model starts identical (DDP also broadcasts rank 0's);
    # the data order and augmentation differ per rank through the sampler and epoch_seed.
    seed_everything(args.seed + info.rank)
    data_dir, image_stats = builders.locate_data(args, info, output_dir)
    train_set, val_set = builders.build_datasets(args, data_dir, image_stats)
    classes = train_set.classes
    if info.is_main:  # created once the data is known good: a typo in --data leaves nothing
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_stale_temporaries(output_dir, (metrics.METRICS,))
    distributed.barrier(info)
    log(info, f"dataset: {data_dir} ({len(classes)} classes; train {len(train_set)} images, "
              f"val {len(val_set)}; {args.image_size} px -> {args.crop} px crops; "
              f"{'per-channel mean' if args.per_channel_mean else 'mean image'} from "
              f"{image_stats.num_images} images)")

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    raw_model = builders.build_model(args, len(classes), device)
    torch.manual_seed(args.seed + info.rank)
    n_params = sum(p.numel() for p in raw_model.parameters())
    log(info, f"model: {type(raw_model).__name__} ({args.impl}) {n_params:,} parameters "
              f"({n_params * 4 / 2**20:.1f} MiB fp32), input {args.crop}x{args.crop}, "
              f"{len(classes)} classes, activation {args.activation}" + (
                  f", pooling {args.pooling}, LRN {'on' if args.lrn else 'off'}, dropout "
                  f"{args.dropout}{'' if args.conv4 else ', no conv4'}; init {args.init}, "
                  f"biases {args.init_bias:g}, input x {args.input_scale:g}"
                  if args.model == "alexnet" else ""))

    prepare = builders.train_batch_preparer(args, image_stats, device)
    generator = torch.Generator()
    train_loader, val_loader, train_sampler = builders.make_loaders(
        args, info, train_set, val_set, device, generator)
    optimizer = builders.build_optimizer(args, raw_model)
    scheduler = builders.build_scheduler(args, optimizer, len(train_loader))
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    log(info, f"optimisation: {_describe_optimisation(args, info, device)}")
    return Run(args, device, info, output_dir, raw_model, raw_model, optimizer, scheduler,
               scaler, train_loader, val_loader, train_sampler, generator, prepare, image_stats,
               classes, conv1_init=raw_model.features.conv1.weight.detach().float().cpu().clone())


def _restore(run: Run, path) -> None:
    """Continue ``run`` from checkpoint ``path``: weights, optimizer, schedule, scaler, RNGs,
    history. A checkpoint whose model or schedule this configuration cannot continue is a
    :class:`UsageError`."""
    state = checkpoint.load(path, map_location="cpu")
    try:
        run.raw_model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UsageError(f"--resume {path}: the checkpoint's model does not match this "
                         f"configuration ({str(exc).splitlines()[0]})") from None
    saved_schedule = state["args"].get("lr_schedule")
    changed = schedules.shape_differences(run.scheduler.state_dict(), state["scheduler"])
    if saved_schedule != run.args.lr_schedule or changed:
        graph = state["args"].get("cuda_graph", False) != run.args.cuda_graph
        raise UsageError(f"--resume {path}: the checkpoint's learning-rate schedule "
                         f"({saved_schedule}) differs from this configuration's "
                         f"({run.args.lr_schedule}; {', '.join(changed) or 'another kind'}): "
                         "a resumed run keeps the --lr, --lr-schedule, --epochs, batch size "
                         "and schedule flags it started with"
                         + (" (--cuda-graph, which drops each epoch's last short batch, "
                            "changes the steps per epoch)" if graph else ""))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.step = state["epoch"], state["step"]
    run.best, run.history = state.get("best"), list(state.get("history", []))
    run.conv1_init = state.get("conv1_init")
    rng = state["rng"]
    checkpoint.set_rng_state(rng[min(run.info.rank, len(rng) - 1)], run.generator)
    log(run.info, f"resumed from {path}: {run.start_epoch} epochs done, step {run.step}")


def _wrap(run: Run) -> None:
    """DistributedDataParallel under torchrun, torch.compile when asked; the training step:
    eager, or replayed as a CUDA graph with --cuda-graph."""
    args = run.args
    if run.info.enabled:
        run.model = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if args.compile:
        run.model = torch.compile(run.model, mode=args.compile_mode)
    eager = engine.EagerStep(
        run.model, run.optimizer, run.device, amp=args.amp, scaler=run.scaler,
        mark_cudagraph_step=args.compile and args.compile_mode != "default")
    run.train_step = eager
    if args.cuda_graph:
        try:
            run.train_step = GraphedTrainStep(
                run.model, run.optimizer, eager, batch_size=args.batch_size,
                amp_dtype=engine.AMP_DTYPES.get(args.amp))
        except ValueError as exc:
            raise UsageError(f"--cuda-graph: {exc}") from None


def _train_epoch(run: Run, epoch: int) -> tuple[dict, bool]:
    """Epoch ``epoch`` (0-based): train, validate, step a per-epoch schedule. Returns the
    metrics row and whether the lr was just decayed."""
    args, info = run.args, run.info
    start = time.perf_counter()
    run.generator.manual_seed(builders.epoch_seed(args.seed, epoch, info.rank))
    if info.enabled:
        run.train_sampler.set_epoch(epoch)
    per_step = schedules.per_step(run.scheduler)
    lr = run.optimizer.param_groups[0]["lr"]
    try:
        train = engine.train_one_epoch(
            run.model, run.train_loader, run.optimizer, run.device, epoch=epoch + 1,
            epochs=args.epochs, scaler=run.scaler, channels_last=args.channels_last,
            step_scheduler=run.scheduler if per_step else None, print_freq=args.print_freq,
            info=info, progress=not args.no_progress, prepare=run.prepare,
            step=run.train_step, first_step=run.step,
            placeholder=lambda: engine.placeholder_batch(args.crop, run.device,
                                                         args.channels_last))
    except engine.NonFiniteLoss as exc:
        raise TrainingError(f"{exc}: the run stopped; {_last_good(run)}") from None
    run.step += train["steps"]
    if train["nonfinite_steps"]:
        log(info, f"epoch {epoch + 1}: the fp16 loss scaler skipped {train['nonfinite_steps']} "
                  "steps whose loss was not finite")
    val = engine.evaluate(run.model, run.val_loader, run.device, amp=args.amp,
                          channels_last=args.channels_last, info=info,
                          progress=not args.no_progress,
                          desc=f"epoch {epoch + 1}/{args.epochs} val")
    if not per_step:
        run.scheduler.step(val["top1_error"])
    row = {
        "epoch": epoch + 1,
        "step": run.step,
        "train_loss": train["train_loss"],
        "train_top1_error": train["train_top1_error"],
        "val_loss": val["loss"],
        "val_top1_error": val["top1_error"],
        "val_top5_error": val["top5_error"],
        "val_crops": 10 if args.ten_crop else 1,
        "lr": lr,
        "images_per_s": train["images_per_s"],
        "train_seconds": train["seconds"],
        "seconds": time.perf_counter() - start,
    }
    return row, not per_step and run.optimizer.param_groups[0]["lr"] < lr


def _last_good(run: Run) -> str:
    """Where the run's last good state is, for the message of a run that stopped."""
    if not run.history:
        return "no checkpoint was written (no epoch finished)"
    return (f"{run.output_dir / checkpoint.CHECKPOINT} (epoch {run.history[-1]['epoch']}) is "
            "the last good checkpoint")


def _record(run: Run, row: dict, decayed: bool) -> None:
    """Log an epoch, append it to metrics.jsonl, write checkpoint.pt (and model_best.pt)."""
    run.history.append(row)
    is_best = run.best is None or row["val_top1_error"] < run.best["val_top1_error"]
    if is_best:
        run.best = {"epoch": row["epoch"], "val_top1_error": row["val_top1_error"],
                    "val_top5_error": row["val_top5_error"]}
    log(run.info, f"epoch {row['epoch']}/{run.args.epochs}: train loss {row['train_loss']:.4f}, "
                  f"val top-1 error {100 * row['val_top1_error']:.2f}%, top-5 "
                  f"{100 * row['val_top5_error']:.2f}%, lr {row['lr']:.3g}, "
                  f"{row['images_per_s']:.0f} images/s, {row['seconds']:.1f} s"
                  + (" (best)" if is_best else "") + ("; lr divided by 10" if decayed else ""))
    # Every rank's RNG state is kept (ranks draw different augmentations and dropout).
    rng = distributed.gather_objects(checkpoint.rng_state(run.generator), run.info)
    if not run.info.is_main:
        return
    metrics.append_jsonl(run.output_dir / metrics.METRICS, row)
    image_stats = {k: getattr(run.image_stats, k) for k in
                   ("mean_image", "mean_rgb", "eigvals", "eigvecs", "num_images", "size")}
    common = {"args": vars(run.args), "model_config": run.raw_model.config,
              "classes": run.classes, "stats": image_stats, "epoch": row["epoch"],
              "step": run.step, "best": run.best, "metrics": row, "conv1_init": run.conv1_init}
    checkpoint.save({
        **common, "model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "rng": rng, "history": run.history,
    }, run.output_dir / checkpoint.CHECKPOINT)
    if is_best:
        checkpoint.save({**common, "model": run.raw_model.state_dict()},
                        run.output_dir / checkpoint.BEST)


def _write_figures(run: Run) -> list:
    """The figures of the final weights; a failure is one warning line, never a failed run."""
    try:
        return figures.write_figures(
            run.raw_model, figures.data_root(run.val_loader.dataset), run.output_dir,
            image_stats=run.image_stats, args=run.args, classes=run.classes, device=run.device,
            batch_size=run.args.batch_size, workers=run.args.workers, warn_unreadable=False,
            conv1_init=run.conv1_init)
    except Exception as exc:  # noqa: BLE001 - the training itself is done and saved
        warnings.warn(f"figures not written: {type(exc).__name__}: {exc}", figures.FigureWarning)
        return []


def _finish(run: Run) -> dict:
    """The end of a run: the DDP replica check, the PNGs, the summary."""
    info, out = run.info, run.output_dir
    if info.enabled:
        same = distributed.parameters_in_sync(run.raw_model, info)
        log(info, f"DDP check: parameters {'identical' if same else 'DIFFER'} on all "
                  f"{info.world_size} ranks")
        if not same:
            raise RuntimeError("DDP replicas diverged: parameters differ between ranks")
    conv1 = None
    if info.is_main and run.history:
        plots.training_curves(run.history, out / "curves.png")
        conv1 = figures.first_layer_measures(run.raw_model, run.conv1_init)
        # The figures show AlexNet's towers and fc7; the four-layer CNN has neither.
        written = _write_figures(run) if run.args.model == "alexnet" else []
        last, best = run.history[-1], run.best
        log(info, f"done: val top-1 error {100 * last['val_top1_error']:.2f}% "
                  f"(top-5 {100 * last['val_top5_error']:.2f}%) after {last['epoch']} epochs; "
                  f"best {100 * best['val_top1_error']:.2f}% at epoch {best['epoch']}")
        if last["epoch"] < run.args.epochs:
            log(info, f"stopped after epoch {last['epoch']} of {run.args.epochs} "
                      f"(--stop-after): continue with --resume {out / checkpoint.CHECKPOINT}")
        for line in figures.describe_first_layer(conv1):
            log(info, line)
        log(info, "wrote " + ", ".join(str(p) for p in (
            out / metrics.METRICS, out / checkpoint.CHECKPOINT, out / checkpoint.BEST,
            out / "curves.png", *written)))
    return {"output_dir": out, "epochs_done": run.history[-1]["epoch"] if run.history else 0,
            "best": run.best, "history": run.history, "conv1": conv1}


def run(args) -> dict:
    """Train the run that ``args`` (from :func:`fastalex.training.options.resolve`) describes,
    in this process (joining the process group of a torchrun launch). Returns ``output_dir``,
    ``epochs_done``, ``best`` (epoch and validation errors of the best epoch), ``history``
    (the rows of metrics.jsonl) and ``conv1`` (the final first layer's colour and roughness
    per tower, :func:`fastalex.training.figures.conv1_measures`; None on ranks other than 0)."""
    options.check(args)
    with session(args.device) as (device, info):
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        _log_start(args, device, info)
        state = _build(args, device, info, Path(args.output_dir).expanduser())
        if args.resume:
            _restore(state, args.resume)
        _wrap(state)
        if info.is_main:  # a resumed run keeps the rows it had checkpointed
            metrics.write_jsonl(state.output_dir / metrics.METRICS, state.history)
        log(info, f"output: {state.output_dir.absolute()}")
        last = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
        for epoch in range(state.start_epoch, last):
            _record(state, *_train_epoch(state, epoch))
        return _finish(state)


def _evaluate(args) -> int:
    """``--evaluate``: :func:`fastalex.training.evaluate.evaluate_checkpoint` on ``--resume``."""
    with session(args.device) as (device, info):
        evaluate.evaluate_checkpoint(
            args.resume, data=args.data, device=device, ten_crop=args.ten_crop, center=True,
            workers=args.workers, batch_size=args.batch_size, amp=args.amp,
            channels_last=args.channels_last, progress=not args.no_progress, info=info)
    return 0


def main(argv=None) -> int:
    def command() -> int:
        args = options.resolve(argv)
        if args.evaluate:
            return _evaluate(args)
        run(args)
        return 0

    return run_cli(options.PROG, command,
                   interrupted="interrupted; the last checkpoint.pt written stays loadable")

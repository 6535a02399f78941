"""The configuration of a training run: the command line of ``python -m fastalex.train``.

Two passes, as timm's train.py does for its config file: the first reads only what chooses the
defaults (``--data``, ``--device``, ``--resume``); the recipe of fastalex.training.presets, then
the resumed checkpoint's flags, become the parser's defaults; the second pass reads the whole
command line over them. So ``--help`` shows the defaults that apply, and a flag given on the
command line always wins. :func:`resolve` does both and checks the result.
"""

import argparse
import math
import os
from pathlib import Path

from fastalex.training import presets
from fastalex.training.startup import HelpFormatter, UsageError, resolve_device

PROG = "python -m fastalex.train"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
MODELS = ("alexnet", "convnet4")

DESCRIPTION = (
    "Train the 2012 AlexNet (fastalex's fused Triton kernels on a GPU). Without --data: the "
    "built-in generated 'shapes' dataset and a quick recipe; with --data: the paper's recipe "
    "(docs/training.md says why they differ). Defaults shown are those of this command: the "
    "recipe for its data and device, and with --resume the checkpoint's flags."
)

EXAMPLES = """\
examples:
  python -m fastalex.train                                  # built-in dataset, quick recipe
  python -m fastalex.train --data ~/imagenet --amp bf16 --channels-last -j 16 --cuda-graph
  torchrun --nproc_per_node=8 -m fastalex.train --data ~/imagenet --amp bf16 -b 128
  python -m fastalex.train --resume runs/shapes/checkpoint.pt           # continue a run
  python -m fastalex.evaluate runs/shapes/model_best.pt                 # score a checkpoint
"""


def _data_flags(d) -> None:
    d.add_argument("--data", metavar="DIR",
                   help="ImageFolder tree with train/<class>/* and val/<class>/* (ILSVRC-2012 "
                        "layout, Imagenette, ...), or a directory made from one by python -m "
                        "fastalex.prepare; default: the built-in shapes dataset, "
                        "generated into $FASTALEX_CACHE or ~/.cache/fastalex on first use")
    d.add_argument("--image-size", type=int, metavar="N",
                   help="shorter side resized to N, centre N x N crop (paper: 256)")
    d.add_argument("--crop", type=int, metavar="N",
                   help="random N x N training crops, centre crop for validation: the network's "
                        "input size (paper: 227; at least 67, 15 for convnet4)")
    d.add_argument("--per-channel-mean", action=argparse.BooleanOptionalAction,
                   help="subtract the per-channel mean instead of the paper's mean image")
    d.add_argument("--crop-flip", action=argparse.BooleanOptionalAction,
                   help="train on random crops and horizontal flips (paper); --no-crop-flip "
                        "trains on the centre crop, the augmentation ablation")
    d.add_argument("--pca-std", type=float, metavar="S",
                   help="std of the fancy-PCA lighting coefficients (paper: 0.1; 0 turns it off)")
    d.add_argument("--stats-images", type=int, metavar="N",
                   help="images sampled for the mean image and RGB PCA; cached next to the "
                        "data, or in --output-dir if that is read-only")
    d.add_argument("--ten-crop", action=argparse.BooleanOptionalAction,
                   help="validate with the paper's 10 crops (corners + centre, and their "
                        "mirror images), averaging the softmax, instead of the centre crop")
    d.add_argument("--builtin-image-size", type=int, metavar="N",
                   help="built-in dataset: side of the generated images")
    d.add_argument("--builtin-train-per-class", type=int, metavar="N",
                   help="built-in dataset: training images per class")
    d.add_argument("--builtin-val-per-class", type=int, metavar="N",
                   help="built-in dataset: validation images per class")


def _model_flags(m) -> None:
    m.add_argument("--model", choices=MODELS,
                   help="alexnet (the paper's network) or convnet4, the four-layer CNN of the "
                        "paper's Figure 1 (3 x 5x5 conv + 3x3/2 max-pool, one fc layer; it "
                        "takes --activation and --impl, ignores the AlexNet switches below)")
    m.add_argument("--impl", choices=("fastalex", "torch"),
                   help="fastalex layers (Triton kernels on a GPU) or the same network from "
                        "plain torch.nn")
    m.add_argument("--dropout", type=float, metavar="P", help="dropout in fc6 and fc7")
    m.add_argument("--activation", choices=("relu", "tanh"), help="relu (paper) or tanh")
    m.add_argument("--pooling", choices=("overlapping", "non-overlapping"),
                   help="max-pool 3x3 stride 2 (paper) or 2x2 stride 2")
    m.add_argument("--lrn", action=argparse.BooleanOptionalAction,
                   help="local response normalisation after conv1 and conv2 (paper: on)")
    m.add_argument("--init", choices=("paper", "he"),
                   help="initial weights: paper N(0, 0.01), or he N(0, 2/fan_in) (He et al., "
                        "2015), which keeps the activations at the input's scale")
    m.add_argument("--init-bias", type=float, metavar="B",
                   help="initial bias of conv2, conv4, conv5, fc6 and fc7 (paper: 1; Caffe's "
                        "reference AlexNet: 0.1); the other biases start at 0")
    m.add_argument("--input-scale", type=float, metavar="S",
                   help="the network multiplies its input (0-255 pixel values minus the mean) "
                        "by S first (paper: 1; 1/64 is about unit variance)")
    m.add_argument("--conv4", action=argparse.BooleanOptionalAction,
                   help="AlexNet's conv4 (paper: on); --no-conv4 removes it, conv3's 384 "
                        "maps feed conv5 directly: the depth ablation")


def _optimisation_flags(o) -> None:
    o.add_argument("--epochs", type=int, metavar="N", help="epochs to train (paper: 90)")
    o.add_argument("-b", "--batch-size", type=int, metavar="N",
                   help="images per process and step; under torchrun the global batch is "
                        "N x processes (paper: 128)")
    o.add_argument("--optimizer", choices=("sgd", "adam", "adamw"),
                   help="sgd with momentum (paper) or Adam/AdamW")
    o.add_argument("--lr", type=float, metavar="LR", help="initial learning rate (paper: 0.01)")
    o.add_argument("--momentum", type=float, metavar="M", help="SGD momentum (paper: 0.9)")
    o.add_argument("--wd", "--weight-decay", dest="wd", type=float, metavar="W",
                   help="weight decay (paper: 5e-4)")
    o.add_argument("--lr-schedule", choices=("plateau", "cosine", "constant"),
                   help="plateau: divide lr by 10 when the val top-1 error has not improved for "
                        "--lr-patience epochs, at most --lr-decays times (paper); cosine: "
                        "--warmup-epochs linear warm-up, then cosine to 0 per step; constant")
    o.add_argument("--lr-patience", type=int, metavar="N",
                   help="plateau schedule: epochs without improvement before a decay")
    o.add_argument("--lr-decays", type=int, metavar="N",
                   help="plateau schedule: most decays by 10 (paper: 3)")
    o.add_argument("--warmup-epochs", type=float, metavar="E",
                   help="cosine schedule: epochs of linear lr warm-up")
    o.add_argument("--seed", type=int, help="seed of every random number generator")
    o.add_argument("--amp", choices=("fp32", "bf16", "fp16"),
                   help="autocast mixed precision (fp16 adds a GradScaler), or fp32 throughout")
    o.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC memory format for images and conv weights")
    o.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction,
                   help="replay each training step (forward, backward, optimizer step) as one "
                        "CUDA graph, captured after a warm-up: no kernel launch cost. Needs a "
                        "CUDA device, one process, --amp fp32 or bf16 and no --compile; drops "
                        "each epoch's last short batch (so a resumed run keeps it; validation "
                        "runs eagerly)")


def _process_flags(r) -> list:
    """The flags of this process, not of the run: never taken from a checkpoint."""
    return [
        r.add_argument("--device", help="cuda, cuda:1, cpu, ... (cuda when available)"),
        r.add_argument("-j", "--workers", type=int, metavar="N",
                       help="data-loading processes per training process"),
        r.add_argument("--gpu-decode", action="store_true",
                       help="decode the training JPEGs on the training device (nvJPEG on a "
                            "GPU) and crop, flip and light them there, batched; the loader "
                            "workers only read files. For when CPU decoding cannot keep up "
                            "with the GPU (validation stays on the CPU path)"),
        r.add_argument("--compile", action="store_true",
                       help="torch.compile the model (fastalex's ops are custom ops: one node "
                            "each in the compiled graph)"),
        r.add_argument("--compile-mode", choices=COMPILE_MODES,
                       help="torch.compile's mode with --compile: reduce-overhead and "
                            "max-autotune also replay the compiled code as CUDA graphs"),
        r.add_argument("--resume", metavar="PATH",
                       help="continue from a checkpoint.pt exactly, with its flags as the "
                            "defaults (default: none, a new run)"),
        r.add_argument("--output-dir", metavar="DIR",
                       help="where metrics.jsonl, checkpoints and PNGs go (runs/<dataset>, or "
                            "the --resume checkpoint's directory)"),
        r.add_argument("--stop-after", type=int, metavar="N",
                       help="end this process after epoch N as if it were interrupted (the "
                            "schedule still spans --epochs); continue with --resume. For "
                            "time-limited jobs (default: none, train all --epochs)"),
        r.add_argument("--evaluate", action="store_true",
                       help="only score the --resume checkpoint as python -m fastalex.evaluate "
                            "does (centre crop; 10-crop too with --ten-crop) and exit"),
        r.add_argument("--print-freq", type=int, metavar="N",
                       help="refresh the progress bar's loss, lr and images/s every N steps"),
        r.add_argument("--no-progress", action="store_true", help="no progress bars"),
    ]


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The parser, without defaults: :func:`resolve` sets them."""
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                epilog=EXAMPLES,
                                formatter_class=HelpFormatter, add_help=add_help)
    _data_flags(p.add_argument_group("data"))
    _model_flags(p.add_argument_group("model (the paper's network; options for its ablations)"))
    _optimisation_flags(p.add_argument_group("optimisation"))
    _process_flags(p.add_argument_group(
        "this process", "Not part of the run: a resumed run takes these from its command line."))
    return p


def process_flags() -> frozenset[str]:
    """The names (``dest``) of the flags a checkpoint does not carry over."""
    return frozenset(a.dest for a in _process_flags(argparse.ArgumentParser(add_help=False)))


def _saved_flags(resume, dests) -> dict:
    """The run flags stored in the checkpoint ``resume`` (those among ``dests``)."""
    from fastalex.training import checkpoint

    path = Path(resume).expanduser()
    if not path.is_file():
        raise UsageError(f"--resume {resume}: no such file")
    try:
        saved = checkpoint.load(path)["args"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise UsageError(f"--resume {resume}: not a fastalex checkpoint ({exc})") from None
    run_flags = set(dests) - process_flags()
    return {key: value for key, value in saved.items() if key in run_flags}


def resolve(argv=None, **overrides) -> argparse.Namespace:
    """The complete, checked configuration of a run from a command line (``argv``, default
    ``sys.argv[1:]``) and keyword ``overrides`` (flag names as attributes, e.g. ``epochs=3``).

    Precedence, lowest first: the recipe (presets.recipe), the flags saved in the ``--resume``
    checkpoint, the command line, ``overrides``. Prints the help and exits for ``--help``.
    """
    parser = build_parser()
    dests = set(vars(build_parser(add_help=False).parse_args([])))
    unknown = sorted(set(overrides) - dests)
    if unknown:
        raise TypeError(f"resolve() got unknown flags {unknown}")
    first, _ = build_parser(add_help=False).parse_known_args(argv)
    for key in ("data", "device", "resume"):
        if key in overrides:
            setattr(first, key, overrides[key])
    saved = _saved_flags(first.resume, dests) if first.resume else {}
    data = first.data if first.data is not None else saved.get("data")
    device = resolve_device(first.device)
    recipe, defaults = presets.recipe(data, device.type)
    parser.set_defaults(**defaults)
    parser.set_defaults(**saved)
    if first.resume:
        output_dir = Path(first.resume).expanduser().parent
    else:
        output_dir = Path("runs") / (Path(data).expanduser().name if data else "shapes")
    parser.set_defaults(device=first.device or device.type, output_dir=str(output_dir))
    parser.description = f"{DESCRIPTION} This command's recipe: {recipe}."
    args = parser.parse_args(argv)
    for key, value in overrides.items():
        setattr(args, key, value)
    check(args)
    return args


def check(args) -> None:
    """A :class:`UsageError` naming the first flag whose value cannot work."""
    from fastalex.models.alexnet import MIN_IMAGE_SIZE as ALEXNET_MIN
    from fastalex.models.convnet4 import MIN_IMAGE_SIZE as CONVNET4_MIN

    def at_least(name, value, minimum=1):
        if value < minimum:
            raise UsageError(f"--{name} must be >= {minimum}, got {value}")

    for name in ("epochs", "batch-size", "image-size", "print-freq", "stats-images"):
        at_least(name, getattr(args, name.replace("-", "_")))
    min_size = CONVNET4_MIN if args.model == "convnet4" else ALEXNET_MIN
    at_least("crop", args.crop, min_size)
    for name in ("workers", "lr-patience", "lr-decays"):
        at_least(name, getattr(args, name.replace("-", "_")), 0)
    if args.stop_after is not None:
        at_least("stop-after", args.stop_after)
    if args.crop > args.image_size:
        raise UsageError(f"--crop {args.crop} must not exceed --image-size {args.image_size}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if args.wd < 0 or not 0 <= args.momentum < 1:
        raise UsageError("--wd must be >= 0 and --momentum in [0, 1)")
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    if not args.input_scale > 0:
        raise UsageError(f"--input-scale must be > 0, got {args.input_scale}")
    if not math.isfinite(args.init_bias):
        raise UsageError(f"--init-bias must be a finite number, got {args.init_bias}")
    if args.pca_std < 0 or args.warmup_epochs < 0:
        raise UsageError("--pca-std and --warmup-epochs must be >= 0")
    if args.evaluate and not args.resume:
        raise UsageError("--evaluate needs --resume PATH (the checkpoint to score)")
    if args.compile_mode != "default" and not args.compile:
        raise UsageError(f"--compile-mode {args.compile_mode} needs --compile")
    if args.cuda_graph and not args.evaluate:
        _check_cuda_graph(args)


def _check_cuda_graph(args) -> None:
    """What ``--cuda-graph`` cannot run with, as a UsageError."""
    from fastalex.training import distributed

    if str(args.device).split(":")[0] != "cuda":
        raise UsageError(f"--cuda-graph needs a CUDA device, got --device {args.device} "
                         "(a resumed run turns it off with --no-cuda-graph)")
    if args.amp == "fp16":
        raise UsageError("--cuda-graph cannot run --amp fp16: its GradScaler synchronises "
                         "with the host on every step (use --amp bf16)")
    if args.compile:
        raise UsageError("--cuda-graph and --compile exclude each other (--compile "
                         "--compile-mode reduce-overhead replays torch.compile's own CUDA "
                         "graphs)")
    if distributed.launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        raise UsageError("--cuda-graph runs one process: under torchrun (DDP) train without it")

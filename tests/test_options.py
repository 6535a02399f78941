"""fastalex.training.options: every default from the recipe or the resumed checkpoint, shown by
--help; flags on the command line win."""

import re
from pathlib import Path

import pytest

from fastalex.training import checkpoint, options, presets
from fastalex.training.startup import UsageError

# The flags of one process, never carried over by --resume.
PROCESS_FLAGS = {"device", "workers", "gpu_decode", "compile", "compile_mode", "resume",
                 "output_dir", "stop_after", "evaluate", "print_freq", "no_progress"}


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        options.resolve([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _entries(text: str) -> dict[str, str]:
    """Option string -> its help entry, the wrapped lines joined (argparse indents an entry by
    two spaces; its continuation lines by more)."""
    entries, current = {}, None
    for line in text.splitlines():
        start = re.match(r"  (-\S.*?)(?:  +|$)", line)
        if start and not line.startswith("   "):
            current = []
            for invocation in start.group(1).split(", "):
                entries[invocation.split()[0]] = current
            current.append(line[start.end():])
        elif current is not None and line.startswith("   "):
            current.append(line.strip())
        else:
            current = None
    return {flag: re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(" ".join(lines).split()))
            for flag, lines in entries.items()}


def _check_every_default_shown(argv, capsys, given=()) -> dict:
    """Every option's help entry shows the value it has when not given (``given``: the dests
    that ``argv`` sets)."""
    text = _help(argv, capsys)
    entries = _entries(text)
    effective = vars(options.resolve(argv))
    for action in options.build_parser()._actions:
        if not action.option_strings or action.dest in ("help", *given):
            continue
        entry = entries[action.option_strings[0]]
        value = effective[action.dest]
        if value is None:  # no value: the help says in words what happens without the flag
            assert "default:" in entry, (action.option_strings, entry)
        else:
            assert f"(default: {value})" in entry, (action.option_strings, value, entry)
    return effective


def test_help_explains_every_flag(capsys):
    text = _help([], capsys)
    for flag in ("--data", "--epochs", "--batch-size", "-b", "--lr", "--momentum", "--wd",
                 "--workers", "-j", "--amp", "--channels-last", "--compile", "--device",
                 "--seed", "--resume", "--output-dir", "--evaluate", "--ten-crop",
                 "--print-freq", "--image-size", "--crop", "--lr-patience", "torchrun",
                 "--cuda-graph", "--no-cuda-graph", "--compile-mode"):
        assert flag in text, flag


def test_help_shows_every_effective_default(tmp_path, capsys):
    """Each option's help ends with the value a run without it would use: the built-in recipe,
    the paper's with --data, and a resumed checkpoint's flags with --resume."""
    builtin = _check_every_default_shown([], capsys)
    assert builtin["epochs"] == presets.recipe(None, builtin["device"])[1]["epochs"]
    paper = _check_every_default_shown(["--data", str(tmp_path)], capsys, given={"data"})
    assert (paper["epochs"], paper["optimizer"], paper["crop"]) == (90, "sgd", 227)
    saved = vars(options.resolve(["--epochs", "3", "--lr", "0.25", "--no-lrn"]))
    checkpoint.save({"args": saved}, tmp_path / "checkpoint.pt")
    resumed = _check_every_default_shown(["--resume", str(tmp_path / "checkpoint.pt")], capsys,
                                         given={"resume"})
    assert (resumed["epochs"], resumed["lr"], resumed["lrn"]) == (3, 0.25, False)
    assert "(default: 0.25)" in _entries(_help(["--resume", str(tmp_path / "checkpoint.pt")],
                                                capsys))["--lr"]


def test_the_help_check_catches_a_missing_default(monkeypatch, capsys):
    """The check above fails when an option's help does not show its default."""
    monkeypatch.setattr(options.HelpFormatter, "_get_help_string",
                        lambda self, action: action.help or "")
    with pytest.raises(AssertionError):
        _check_every_default_shown([], capsys)


def test_process_flags():
    assert options.process_flags() == PROCESS_FLAGS


def _saved_run(tmp_path, **flags):
    args = vars(options.resolve([]))
    args.update(flags)
    return checkpoint.save({"args": args}, tmp_path / "run" / "checkpoint.pt")


def test_resume_takes_the_run_flags_from_the_checkpoint(tmp_path):
    path = _saved_run(tmp_path, epochs=3, lr=0.25, lrn=False, ten_crop=True, seed=7,
                      stop_after=1, workers=5, output_dir="elsewhere", print_freq=3)
    args = options.resolve(["--resume", str(path)])
    assert (args.epochs, args.lr, args.lrn, args.ten_crop, args.seed) == (3, 0.25, False, True, 7)
    # The process's own flags come from this command line and the recipe, never the checkpoint.
    assert args.stop_after is None and args.print_freq == presets.COMMON["print_freq"]
    assert args.output_dir == str(path.parent)  # a resumed run writes beside its checkpoint
    assert args.workers == presets.recipe(None, args.device)[1]["workers"]


def test_flags_given_on_the_command_line_win(tmp_path):
    path = _saved_run(tmp_path, epochs=3, lrn=False, ten_crop=True)
    preset_epochs = presets.recipe(None, options.resolve([]).device)[1]["epochs"]
    args = options.resolve(["--resume", str(path), "--epochs", str(preset_epochs), "--lrn",
                            "--no-ten-crop", "--output-dir", str(tmp_path / "new")])
    # Given explicitly, even when equal to the recipe's default, a flag beats the checkpoint.
    assert (args.epochs, args.lrn, args.ten_crop) == (preset_epochs, True, False)
    assert args.output_dir == str(tmp_path / "new")


def test_the_data_chooses_the_recipe(tmp_path):
    args = options.resolve(["--data", str(tmp_path / "imagenet")])
    assert {k: getattr(args, k) for k in presets.PAPER} == presets.PAPER
    assert args.output_dir == str(Path("runs") / "imagenet")
    # A resumed run's data comes from its checkpoint, and chooses the recipe of the defaults
    # the checkpoint does not hold.
    path = checkpoint.save({"args": {"data": str(tmp_path / "imagenet"), "epochs": 4}},
                           tmp_path / "checkpoint.pt")
    resumed = options.resolve(["--resume", str(path)])
    assert resumed.data == str(tmp_path / "imagenet") and resumed.epochs == 4
    assert resumed.lr_schedule == presets.PAPER["lr_schedule"] != presets.BUILTIN_CPU["lr_schedule"]


def test_overrides_beat_everything(tmp_path):
    path = _saved_run(tmp_path, epochs=3)
    args = options.resolve(["--resume", str(path), "--epochs", "5"], epochs=8, seed=11)
    assert (args.epochs, args.seed) == (8, 11)
    with pytest.raises(TypeError, match="bogus"):
        options.resolve([], bogus=1)
    with pytest.raises(UsageError, match="--epochs must be >= 1"):
        options.resolve([], epochs=0)


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="not a fastalex checkpoint"):
        options.resolve(["--resume", str(tmp_path / "junk.pt")])
    with pytest.raises(UsageError, match="no such file"):
        options.resolve(["--resume", str(tmp_path / "missing.pt")])


def test_compile_mode_choices_and_default(capsys):
    text = _help([], capsys)
    assert "--compile-mode {default,reduce-overhead,max-autotune}" in text
    assert _entries(text)["--compile-mode"].endswith("(default: default)")
    assert "(default: False)" in _entries(_help([], capsys))["--cuda-graph"]
    args = options.resolve(["--compile", "--compile-mode", "max-autotune"])
    assert (args.compile, args.compile_mode) == (True, "max-autotune")
    with pytest.raises(UsageError, match="--compile-mode reduce-overhead needs --compile"):
        options.resolve(["--compile-mode", "reduce-overhead"])


def _graph_args(**changes):
    """A configuration that --cuda-graph accepts (as on a CUDA machine), then ``changes``."""
    args = options.resolve(["--device", "cpu"])
    for key, value in {"device": "cuda", "cuda_graph": True, "amp": "bf16", **changes}.items():
        setattr(args, key, value)
    return args


@pytest.mark.parametrize("changes,message", [
    ({"device": "cpu"}, "--cuda-graph needs a CUDA device, got --device cpu"),
    ({"amp": "fp16"}, "--cuda-graph cannot run --amp fp16"),
    ({"compile": True}, "--cuda-graph and --compile exclude each other"),
])
def test_cuda_graph_refusals(changes, message, monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    options.check(_graph_args())
    with pytest.raises(UsageError, match=message) as exc:
        options.check(_graph_args(**changes))
    assert "\n" not in str(exc.value)


def test_cuda_graph_refuses_ddp(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="--cuda-graph runs one process: under torchrun"):
        options.check(_graph_args())
    monkeypatch.setenv("WORLD_SIZE", "1")
    options.check(_graph_args())


def test_cuda_graph_is_a_run_flag(tmp_path):
    """It drops each epoch's last short batch, so a resumed run keeps it (and its schedule);
    --no-cuda-graph turns it off."""
    path = _saved_run(tmp_path, cuda_graph=True)
    assert options.resolve(["--resume", str(path), "--no-cuda-graph"]).cuda_graph is False
    args = options.build_parser().parse_args(["--resume", str(path)])
    assert args.cuda_graph is None  # not given: resolve takes the checkpoint's
    saved = options._saved_flags(path, {"cuda_graph"})
    assert saved == {"cuda_graph": True}


def test_the_ablation_flags_and_their_defaults():
    args = options.resolve([])
    assert (args.model, args.conv4, args.crop_flip) == ("alexnet", True, True)
    args = options.resolve(["--model", "convnet4", "--no-conv4", "--no-crop-flip"])
    assert (args.model, args.conv4, args.crop_flip) == ("convnet4", False, False)
    for recipe in (presets.PAPER, presets.BUILTIN_CPU, presets.BUILTIN_CUDA):
        assert recipe["crop_flip"] is True


def test_the_initialisation_flags():
    paper = options.resolve(["--data", "/data/imagenet"], device="cpu")
    assert (paper.init, paper.init_bias, paper.input_scale) == ("paper", 1.0, 1.0)
    args = options.resolve(["--init", "paper", "--init-bias", "0.5", "--input-scale", "0.02"])
    assert (args.init, args.init_bias, args.input_scale) == ("paper", 0.5, 0.02)
    with pytest.raises(UsageError, match="--input-scale must be > 0, got 0.0"):
        options.resolve(["--input-scale", "0"])
    with pytest.raises(UsageError, match="--init-bias must be a finite number, got nan"):
        options.resolve(["--init-bias", "nan"])


def test_the_smallest_input_depends_on_the_model():
    args = options.resolve(["--model", "convnet4", "--image-size", "32", "--crop", "15"])
    assert args.crop == 15
    with pytest.raises(UsageError, match="--crop must be >= 15, got 14"):
        options.resolve(["--model", "convnet4", "--image-size", "32", "--crop", "14"])
    with pytest.raises(UsageError, match="--crop must be >= 67, got 32"):
        options.resolve(["--image-size", "32", "--crop", "32"])

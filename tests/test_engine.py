"""fastalex.training.engine: the counts of one training epoch and of an evaluation pass,
against explicit computations (10-crop scored by the averaged softmax, top-5 capped by the
number of classes, unreadable batches skipped)."""

import pytest
import torch
import torch.nn.functional as F

from fastalex.kernels._runtime import INTERPRET
from fastalex.training import engine

CUDA = torch.cuda.is_available() and not INTERPRET


class Fixed(torch.nn.Module):
    """Logits looked up by the first pixel of each image: its index into ``table``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()] * self.scale


def test_evaluate_counts_against_an_explicit_score():
    torch.manual_seed(0)
    table = torch.randn(12, 7)
    images = torch.arange(12.0).view(12, 1, 1, 1).expand(12, 3, 2, 2)
    targets = torch.randint(0, 7, (12,))
    loader = [(images[:5], targets[:5]), None, (images[5:], targets[5:])]  # None: unreadable
    out = engine.evaluate(Fixed(table), loader, torch.device("cpu"), progress=False)
    top5 = table.topk(5, dim=1).indices
    assert out["images"] == 12
    assert out["top1_error"] == 1 - (table.argmax(1) == targets).double().mean().item()
    assert out["top5_error"] == 1 - (top5 == targets[:, None]).any(1).double().mean().item()
    assert abs(out["loss"] - F.cross_entropy(table.double(), targets).item()) < 1e-6


def test_ten_crop_averages_the_softmax():
    torch.manual_seed(1)
    table = torch.randn(20, 3)  # 3 classes: top-5 counts every image
    crops = torch.arange(20.0).view(2, 10, 1, 1, 1).expand(2, 10, 3, 2, 2)  # [N, 10, 3, H, W]
    targets = torch.tensor([0, 2])
    out = engine.evaluate(Fixed(table), [(crops, targets)], torch.device("cpu"), progress=False)
    probs = table.softmax(1).view(2, 10, 3).mean(1)
    assert out["top1_error"] == 1 - (probs.argmax(1) == targets).double().mean().item()
    assert out["top5_error"] == 0.0
    expected = F.nll_loss(probs.double().log(), targets).item()
    assert abs(out["loss"] - expected) < 1e-6


def test_train_one_epoch_steps_and_counts():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    data = [(torch.randn(3, 3, 2, 2), torch.randint(0, 4, (3,))) for _ in range(4)]
    before = [p.detach().clone() for p in model.parameters()]
    out = engine.train_one_epoch(model, [data[0], None, *data[1:]], opt, torch.device("cpu"),
                                 epoch=1, epochs=1, step_scheduler=sched, progress=False)
    assert out["steps"] == 4 and out["images"] == 12
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 5)  # stepped after each step
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert 0 <= out["train_top1_error"] <= 1 and out["train_loss"] > 0


def _tiny(seed=3):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    data = [(torch.randn(3, 3, 2, 2), torch.randint(0, 4, (3,))) for _ in range(6)]
    return model, torch.optim.SGD(model.parameters(), lr=0.1), data


@pytest.mark.parametrize("print_freq", [1, 100])
def test_a_non_finite_loss_stops_naming_epoch_and_step(print_freq):
    """Without a GradScaler a NaN loss is an error naming the run's step where it appeared
    (checked every print_freq steps and at the end, without a host sync per step)."""
    model, opt, data = _tiny()
    data[3][0][1, 0, 0, 0] = float("nan")  # the 4th batch of the epoch
    seen = []

    def counting(images, targets, weight):
        seen.append(images.shape[0])
        return engine.EagerStep(model, opt, torch.device("cpu"))(images, targets, weight)

    with pytest.raises(engine.NonFiniteLoss, match="at epoch 2, step 14$") as exc:
        engine.train_one_epoch(model, data, opt, torch.device("cpu"), epoch=2, epochs=3,
                               progress=False, step=counting, first_step=10,
                               print_freq=print_freq)
    assert (exc.value.epoch, exc.value.step) == (2, 14)
    assert len(seen) == (4 if print_freq == 1 else 6)  # print_freq 1: stopped at once


def test_fp16_scaler_skips_a_non_finite_step_without_error():
    """With fp16 and a GradScaler a non-finite loss is a skipped step (weights untouched), not
    an error; it is counted, and left out of the mean loss. An epoch in which every loss was
    non-finite is an error all the same."""
    model, opt, data = _tiny()
    data[2][0][0, 0, 0, 0] = float("inf")
    scaler = torch.amp.GradScaler("cpu")
    before = {}

    def watching(images, targets, weight):
        if not torch.isfinite(images).all():
            before.update(weights=[p.detach().clone() for p in model.parameters()])
            loss, logits = step(images, targets, weight)
            after = [p.detach() for p in model.parameters()]
            before.update(unchanged=all(map(torch.equal, before["weights"], after)))
            return loss, logits
        return step(images, targets, weight)

    step = engine.EagerStep(model, opt, torch.device("cpu"), amp="fp16", scaler=scaler)
    out = engine.train_one_epoch(model, data, opt, torch.device("cpu"), epoch=1, epochs=1,
                                 progress=False, step=watching, scaler=scaler, print_freq=2)
    assert before["unchanged"] and out["nonfinite_steps"] == 1 and out["steps"] == 6
    assert torch.isfinite(torch.tensor(out["train_loss"])) and out["images"] == 18

    for images, _ in data:
        images[0, 0, 0, 0] = float("nan")
    with pytest.raises(engine.NonFiniteLoss, match="at epoch 1, step 1$"):
        engine.train_one_epoch(model, data, opt, torch.device("cpu"), epoch=1, epochs=1,
                               progress=False, amp="fp16", scaler=scaler)


def test_placeholder_batch_has_no_weight():
    """The batch a data-parallel rank runs when all its images were unreadable: gradients of
    exactly zero (the all-reduce then averages the other ranks' in), no images counted."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 67 * 67, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    images, targets = engine.placeholder_batch(67, torch.device("cpu"), channels_last=True)
    assert images.shape == (1, 3, 67, 67) and images.is_contiguous(
        memory_format=torch.channels_last) and targets.tolist() == [0]
    loss, _ = engine.EagerStep(model, opt, torch.device("cpu"))(images, targets, 0.0)
    assert torch.isfinite(loss)
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_a_compiled_training_step_through_fastalex_ops(mode):
    """--compile: training steps of a network of fastalex layers (custom ops: Triton kernels,
    on a CPU through the interpreter) compiled by torch.compile equal the eager steps. On a
    CPU the backend is aot_eager (Inductor's C++ build would take minutes; the mode is then
    only passed through); on CUDA, Inductor in the mode given."""
    from fastalex import layers

    device = torch.device("cuda" if CUDA else "cpu")
    backend = "inductor" if CUDA else "aot_eager"
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            layers.Conv2dReLU(3, 8, 3, padding=1), layers.LRN(5), layers.MaxPool2d(3, 2),
            torch.nn.Flatten(), layers.LinearReLU(72, 16, p=0.5), layers.Linear(16, 4),
        ).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        net = torch.compile(model, mode=mode, backend=backend, fullgraph=True) \
            if compiled else model
        step = engine.EagerStep(net, opt, device, mark_cudagraph_step=mode != "default")
        torch.manual_seed(1)
        losses = [step(torch.randn(2, 3, 7, 7, device=device) * 3,
                       torch.randint(0, 4, (2,), device=device))[0].detach().clone()
                  for _ in range(3)]
        results.append((torch.stack(losses), [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_params), (compiled_losses, compiled_params) = results
    tol = dict(rtol=1e-4, atol=1e-5) if CUDA else dict(rtol=1e-5, atol=1e-6)  # Inductor's sums
    torch.testing.assert_close(compiled_losses, eager_losses, **tol)
    for a, b in zip(compiled_params, eager_params):
        torch.testing.assert_close(a, b, **tol)

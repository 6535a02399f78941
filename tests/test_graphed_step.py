"""The CUDA-graph training step: refused where it cannot be right, equal to eager steps where it
runs (dropout masks included: the warm-up puts the RNG states back), learning rates that torch's
schedulers set reach the replays, and batches of another shape run eagerly."""

import pytest
import torch

from fastalex.kernels._runtime import INTERPRET
from fastalex.models import alexnet
from fastalex.training import engine, schedules
from fastalex.training.graphed_step import (
    GraphedStep,
    GraphedTrainStep,
    _Snapshot,
    check_optimizer,
)

CUDA = torch.cuda.is_available() and not INTERPRET
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def _optimizer(model, kind):
    params = model.parameters()
    if kind == "sgd":  # fused: the trainer's SGD (builders.build_optimizer)
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
    if kind == "adam":
        return torch.optim.Adam(params, lr=1e-4, fused=True)
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)  # foreach, not capturable


def _setup(device, *, dropout=0.0, batch=4, optimizer="sgd"):
    torch.manual_seed(0)
    model = alexnet(10, dropout, image_size=67).to(device).to(memory_format=torch.channels_last)
    images = (torch.randn(batch, 3, 67, 67, device=device) * 50).contiguous(
        memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (batch,), device=device)
    return model, _optimizer(model, optimizer), images, targets


def test_refuses_cpu_tensors():
    model, opt, images, targets = _setup("cpu")
    with pytest.raises(ValueError, match="needs CUDA tensors, got images on cpu"):
        GraphedStep(model, opt, images, targets)


def test_refuses_fp16_autocast():
    model, opt, images, targets = _setup("cpu")
    with pytest.raises(ValueError, match="fp16 autocast"):
        GraphedStep(model, opt, images, targets, amp_dtype=torch.float16)


def test_refuses_an_optimizer_it_cannot_capture_or_restart():
    params = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="got RMSprop"):
        check_optimizer(torch.optim.RMSprop(params))
    with pytest.raises(ValueError, match=r"SGD\(fused=True\)"):
        check_optimizer(torch.optim.SGD(params, lr=0.1, momentum=0.9))
    for opt in (torch.optim.SGD(params, lr=0.1, fused=True), torch.optim.Adam(params),
                torch.optim.AdamW(params, fused=True)):
        check_optimizer(opt)


def test_other_batches_run_eagerly():
    """A batch of another size, or a weight-0 batch, never reaches the graph."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
    calls = []

    def eager(images, targets, weight):
        calls.append((images.shape[0], weight))
        return engine.EagerStep(model, opt, torch.device("cpu"))(images, targets, weight)

    step = GraphedTrainStep(model, opt, eager, batch_size=4)
    x, y = torch.randn(3, 3, 2, 2), torch.randint(0, 4, (3,))
    step(x, y)
    step(x, y, 0.0)
    assert calls == [(3, 1.0), (3, 0.0)] and step.graphed is None
    assert all(p.grad is None for p in model.parameters())  # the eager gradients are freed
    with pytest.raises(ValueError, match="needs CUDA tensors"):  # a full batch is captured
        step(torch.randn(4, 3, 2, 2), torch.randint(0, 4, (4,)))


@pytest.mark.parametrize("kind", ["sgd", "sgd-fresh", "adam", "adamw-fresh"])
def test_the_restored_state_steps_like_the_state_before_the_warm_up(kind):
    """After warm-up steps and the restore (state the warm-up created zero-filled), the next
    step is bit for bit the step the optimizer would have taken without them; "-fresh": the
    warm-up creates the state, otherwise the optimizer had stepped before."""
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Dropout(0.5),
                                    torch.nn.Linear(5, 3))
        if kind.startswith("sgd"):
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        else:
            cls = torch.optim.AdamW if kind.startswith("adamw") else torch.optim.Adam
            opt = cls(model.parameters(), lr=1e-2, weight_decay=0.01)
        return model, opt

    cpu = torch.device("cpu")
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    runs = []
    for warm in (False, True):
        model, opt = make()
        step = engine.EagerStep(model, opt, cpu)
        if not kind.endswith("fresh"):
            step(x * 2, y)
        torch.manual_seed(5)
        if warm:
            saved = _Snapshot(model, opt, cpu)
            for _ in range(3):
                step(torch.randn(4, 6), torch.randint(0, 3, (4,)))
            saved.restore(model, opt)
        step(x, y)
        runs.append((model, opt))
    (plain, plain_opt), (warmed, warmed_opt) = runs
    for p, q in zip(plain.parameters(), warmed.parameters()):
        assert torch.equal(p, q)
        for key, value in plain_opt.state[p].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(warmed_opt.state[q][key]))


def _batches(n, batch=4):
    return [((torch.randn(batch, 3, 67, 67, device="cuda") * 50).contiguous(
        memory_format=torch.channels_last), torch.randint(0, 10, (batch,), device="cuda"))
        for _ in range(n)]


@needs_cuda
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw-foreach"])
@pytest.mark.parametrize("amp", ["fp32", "bf16"])
def test_replays_equal_eager_steps(optimizer, amp):
    """Same weights, same batches, dropout on, the cosine schedule per step: eager steps, then
    graphed ones (a short batch among them runs eagerly) give an eager run's losses and
    parameters; the warm-up leaves no trace (weights, optimizer state, RNG)."""
    batches = _batches(7)
    batches[4] = (batches[4][0][:3], batches[4][1][:3])
    results = []
    for graphed in (False, True):
        model, opt, _, _ = _setup("cuda", dropout=0.5, optimizer=optimizer)
        schedule = schedules.warmup_cosine(opt, total_steps=7, warmup_steps=2)
        eager = engine.EagerStep(model, opt, torch.device("cuda"), amp=amp)
        step = GraphedTrainStep(model, opt, eager, batch_size=4,
                                amp_dtype=engine.AMP_DTYPES.get(amp)) if graphed else eager
        torch.manual_seed(1)
        losses = []
        for i, (x, y) in enumerate(batches):
            loss, _ = (eager if i < 2 else step)(x, y, 1.0)  # two eager steps first
            schedule.step()
            losses.append(loss.float().clone())
        assert not graphed or step.graphed is not None
        results.append((torch.stack(losses), [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_params), (graph_losses, graph_params) = results
    # fp32: the graph reads the lr as a float32 tensor, eager as a double (1 ulp of the lr)
    tol = dict(rtol=1e-5, atol=1e-6) if amp == "fp32" else dict(rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(graph_losses, eager_losses, **tol)
    for p_graph, p_eager in zip(graph_params, eager_params):
        torch.testing.assert_close(p_graph, p_eager, **tol)


@needs_cuda
def test_plateau_decays_reach_the_replays():
    """ReduceLROnPlateau changes the group's float lr between replays; the replays use it (lr
    0 after enough decays is checked through unchanged weights)."""
    model, opt, images, targets = _setup("cuda")
    plateau = schedules.plateau(opt, patience=0, max_decays=2)
    step = GraphedStep(model, opt, images, targets)
    step(images, targets)
    for value in (1.0, 2.0, 3.0, 4.0):  # worse every epoch: two decays, then capped
        plateau.step(value)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.1 * 0.1)
    assert not isinstance(opt.param_groups[0]["lr"], torch.Tensor)
    assert step._lrs[0].item() == pytest.approx(0.01)  # filled at the next replay
    step(images, targets)
    assert step._lrs[0].item() == pytest.approx(1e-4)
    opt.param_groups[0]["lr"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    step(images, targets)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    assert any(not torch.equal(opt.state[p]["momentum_buffer"], m)
               for p, m in zip(model.parameters(), momentum))


@needs_cuda
def test_every_replay_draws_a_fresh_dropout_mask():
    model, opt, images, targets = _setup("cuda", dropout=0.5)
    opt.param_groups[0]["lr"] = 0.0  # weights fixed: the logits differ only by the masks
    step = GraphedStep(model, opt, images, targets)
    first = step(images, targets)[1].clone()
    second = step(images, targets)[1].clone()
    assert not torch.equal(first, second)


@needs_cuda
def test_refuses_another_batch_shape():
    model, opt, images, targets = _setup("cuda")
    step = GraphedStep(model, opt, images, targets)
    with pytest.raises(ValueError, match="runs batches of"):
        step(images[:2], targets[:2])

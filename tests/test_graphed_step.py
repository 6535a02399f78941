"""The CUDA-graph training step: refused where it cannot be right, equal to eager steps where it
runs."""

import pytest
import torch
import torch.nn.functional as F

from fastalex.kernels._runtime import INTERPRET
from fastalex.models import alexnet
from fastalex.training.graphed_step import GraphedStep

CUDA = torch.cuda.is_available() and not INTERPRET


def _setup(device, *, dropout=0.0, batch=4, optimizer="sgd"):
    torch.manual_seed(0)
    model = alexnet(10, dropout, image_size=67).to(device).to(memory_format=torch.channels_last)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, capturable=device == "cuda")
    images = (torch.randn(batch, 3, 67, 67, device=device) * 50).contiguous(
        memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (batch,), device=device)
    return model, opt, images, targets


def test_refuses_cpu_tensors():
    model, opt, images, targets = _setup("cpu")
    with pytest.raises(ValueError, match="needs CUDA tensors, got images on cpu"):
        GraphedStep(model, opt, images, targets)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_refuses_fp16_autocast():
    model, opt, images, targets = _setup("cuda")
    with pytest.raises(ValueError, match="fp16 autocast"):
        GraphedStep(model, opt, images, targets, amp_dtype=torch.float16)


def test_refuses_an_optimizer_it_cannot_restart():
    model, _, images, targets = _setup("cpu")
    opt = torch.optim.RMSprop(model.parameters())
    with pytest.raises(ValueError, match="got RMSprop"):
        GraphedStep(model, opt, images, targets)


def _eager_steps(model, opt, batches, amp_dtype, scheduler=None):
    losses = []
    for images, targets in batches:
        with torch.autocast("cuda", dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach().float())
    return torch.stack(losses)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_replays_equal_eager_steps(optimizer, amp_dtype):
    """Same weights, same batches, a per-step schedule: the replayed steps give the eager run's
    losses and parameters (no dropout: nothing random), the warm-up leaving no trace."""
    batches = [(torch.randn(4, 3, 67, 67, device="cuda").contiguous(
        memory_format=torch.channels_last) * 50, torch.randint(0, 10, (4,), device="cuda"))
        for _ in range(5)]
    results = []
    for graphed in (False, True):
        model, opt, images, targets = _setup("cuda", optimizer=optimizer)
        if graphed:
            step = GraphedStep(model, opt, images, targets, amp_dtype=amp_dtype)
        schedule = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=5)
        if graphed:
            losses = []
            for x, y in batches:
                loss, _ = step(x, y)
                schedule.step()
                losses.append(loss.float().clone())
            losses = torch.stack(losses)
        else:
            losses = _eager_steps(model, opt, batches, amp_dtype, schedule)
        results.append((losses, [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_params), (graph_losses, graph_params) = results
    tol = dict(rtol=1e-5, atol=1e-6) if amp_dtype is None else dict(rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(graph_losses, eager_losses, **tol)
    for p_graph, p_eager in zip(graph_params, eager_params):
        torch.testing.assert_close(p_graph, p_eager, **tol)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_every_replay_draws_a_fresh_dropout_mask():
    model, opt, images, targets = _setup("cuda", dropout=0.5)
    opt.param_groups[0]["lr"] = 0.0  # weights fixed: the logits differ only by the masks
    step = GraphedStep(model, opt, images, targets)
    first = step(images, targets)[1].clone()
    second = step(images, targets)[1].clone()
    assert not torch.equal(first, second)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_refuses_another_batch_shape():
    model, opt, images, targets = _setup("cuda")
    step = GraphedStep(model, opt, images, targets)
    with pytest.raises(ValueError, match="runs batches of"):
        step(images[:2], targets[:2])

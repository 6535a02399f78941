"""fastalex.training.engine: the counts of one training epoch and of an evaluation pass,
against explicit computations (10-crop scored by the averaged softmax, top-5 capped by the
number of classes, unreadable batches skipped)."""

import pytest
import torch
import torch.nn.functional as F

from fastalex.training import engine


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

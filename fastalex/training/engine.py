"""One training epoch and one evaluation pass (fastalex.training.train runs them per epoch).

Both loops keep their running sums on the device and only synchronise every ``print_freq``
steps (a ``.item()`` per step would stall a GPU on every batch), and both sum over the ranks of
a distributed run so every rank returns the same numbers.
"""

import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastalex.training import distributed

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str | None):
    """Mixed precision for the forward pass (``amp`` "bf16"/"fp16"), or nothing ("fp32"/None)."""
    if amp in (None, "fp32"):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def _to_device(images, targets, device, channels_last):
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def _topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """How many rows have the target among their k best scores, for each k (capped at the number
    of classes: with fewer than five classes, top-5 counts every row)."""
    maxk = min(max(ks), logits.shape[1])
    best = logits.topk(maxk, dim=1).indices  # [B, maxk]
    hit = best.eq(targets[:, None])
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks]


def train_one_epoch(model, loader, optimizer, device, *, epoch: int, epochs: int, scaler=None,
                    amp=None, channels_last=False, step_scheduler=None, print_freq=10,
                    info=distributed.DistInfo(), progress=True, prepare=None) -> dict:
    """One pass over ``loader``; returns train_loss, train_top1_error, images, seconds,
    images_per_s and steps (summed over ranks).

    ``step_scheduler`` (optional) is stepped after every optimizer step (per-iteration
    schedules); ``scaler`` is the fp16 GradScaler; ``prepare(batch) -> (images, targets) or
    None`` puts a batch on the device (default: move the loader's tensors there), e.g. decoding
    it on the GPU.
    """
    model.train()
    zero = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum, correct, seen = zero.clone(), zero.clone(), 0
    steps, start = 0, time.perf_counter()
    total = len(loader)
    bar = tqdm(loader, total=total, desc=f"epoch {epoch}/{epochs} train", unit="batch",
               disable=not (progress and info.is_main), dynamic_ncols=True, leave=True)
    for batch in bar:
        if batch is not None:
            batch = prepare(batch) if prepare else _to_device(*batch, device, channels_last)
        if batch is None:  # every image of this batch was unreadable
            continue
        images, targets = batch
        with autocast(device, amp):
            logits = model(images)
            loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if step_scheduler is not None:
            step_scheduler.step()
        n = targets.shape[0]
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(1) == targets).sum()
        seen += n
        steps += 1
        if steps % print_freq == 0 or steps == total:
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                            img_s=f"{seen * info.world_size / max(elapsed, 1e-9):.0f}",
                            refresh=False)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = distributed.all_reduce_max(time.perf_counter() - start, info, device)
    loss_total, correct_total, seen_total = distributed.all_reduce_sum(
        [loss_sum.item(), correct.item(), seen], info, device)
    seen_total = max(seen_total, 1)
    return {
        "train_loss": loss_total / seen_total,
        "train_top1_error": 1.0 - correct_total / seen_total,
        "images": int(seen_total),
        "seconds": seconds,
        "images_per_s": seen_total / max(seconds, 1e-9),
        "steps": steps,
    }


@torch.no_grad()
def evaluate(model, loader, device, *, amp=None, channels_last=False, info=distributed.DistInfo(),
             progress=True, desc="val") -> dict:
    """Top-1/top-5 error and loss over ``loader``.

    Batches of 5-D images [B, n_crops, 3, H, W] (10-crop) are scored by averaging the softmax
    of the crops, as in the paper; the loss is then the NLL of that average. In a distributed run
    each rank scores its shard and the counts are summed (a DistributedSampler pads the last
    shard with repeats of a few images, so the error can differ from a single process's by
    those repeats).
    """
    model.eval()
    zero = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum, top1, top5, seen = zero.clone(), zero.clone(), zero.clone(), 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", disable=not (progress and info.is_main),
               dynamic_ncols=True, leave=False)
    for batch in bar:
        if batch is None:
            continue
        images, targets = batch
        crops = images.shape[1] if images.dim() == 5 else 0
        if crops:
            images = images.flatten(0, 1)
        images, targets = _to_device(images, targets, device, channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        if crops:
            probs = logits.softmax(dim=1).view(targets.shape[0], crops, -1).mean(dim=1)
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), targets, reduction="sum")
            scores = probs
        else:
            loss = F.cross_entropy(logits, targets, reduction="sum")
            scores = logits
        c1, c5 = _topk_correct(scores, targets)
        loss_sum += loss.double()
        top1 += c1
        top5 += c5
        seen += targets.shape[0]
    bar.close()
    loss_total, top1_total, top5_total, seen_total = distributed.all_reduce_sum(
        [loss_sum.item(), top1.item(), top5.item(), seen], info, device)
    seen_total = max(seen_total, 1)
    return {
        "loss": loss_total / seen_total,
        "top1_error": 1.0 - top1_total / seen_total,
        "top5_error": 1.0 - top5_total / seen_total,
        "images": int(seen_total),
        "seconds": time.perf_counter() - start,
    }

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


def _bar(total: int, desc: str, show: bool, leave: bool):
    """A progress bar advanced by hand: given the loader itself, tqdm.auto's asyncio flavour
    calls ``iter()`` on it once more, which starts (and discards) a second set of workers."""
    return tqdm(total=total, desc=desc, unit="batch", disable=not show, dynamic_ncols=True,
                leave=leave)


def _topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """How many rows have the target among their k best scores, for each k (capped at the number
    of classes: with fewer than five classes, top-5 counts every row)."""
    maxk = min(max(ks), logits.shape[1])
    best = logits.topk(maxk, dim=1).indices  # [B, maxk]
    hit = best.eq(targets[:, None])
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks]


class NonFiniteLoss(RuntimeError):
    """A training loss that is NaN or infinite (without an fp16 GradScaler, which skips such a
    step itself): ``epoch`` (1-based) and the run's optimizer ``step`` (1-based) where it
    first appeared."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"non-finite training loss (NaN or Inf) at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


class EagerStep:
    """One training step op by op: forward under autocast, cross-entropy, backward (through the
    fp16 ``scaler`` when given: it skips a step whose gradients are not finite), optimizer step.

    ``step(images, targets, weight=1.0) -> (loss, logits)``; the gradients are those of
    ``weight * loss`` (0: a batch that only joins the data-parallel collectives).
    ``mark_cudagraph_step``: tell torch.compile's CUDA graphs (``reduce-overhead``,
    ``max-autotune``) that a new iteration begins.
    """

    def __init__(self, model, optimizer, device, *, amp=None, scaler=None,
                 mark_cudagraph_step=False):
        self.model, self.optimizer, self.device = model, optimizer, device
        self.amp, self.scaler, self.mark_cudagraph_step = amp, scaler, mark_cudagraph_step

    def __call__(self, images, targets, weight=1.0):
        if self.mark_cudagraph_step:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(self.device, self.amp):
            logits = self.model(images)
            loss = F.cross_entropy(logits, targets)
        objective = loss if weight == 1.0 else loss * weight
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(objective).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            objective.backward()
            self.optimizer.step()
        return loss, logits


def placeholder_batch(crop: int, device, channels_last=False):
    """One black image and label 0: what a data-parallel rank whose whole batch was unreadable
    runs, with weight 0, so that it joins the step's gradient all-reduce like every other rank
    (a rank that skipped the step would leave the others waiting in it)."""
    images = torch.zeros(1, 3, crop, crop, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.zeros(1, dtype=torch.int64, device=device)


class _Tally:
    """An epoch's running sums, kept on the device (no host synchronisation per step): loss over
    the images whose loss was finite, correct top-1 predictions, steps with a non-finite loss
    and the first of them (as a run step number; inf while there is none)."""

    def __init__(self, device):
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.loss_sum, self.counted, self.correct, self.nonfinite = (zero.clone() for _ in "abcd")
        self.first_bad = torch.full((), float("inf"), dtype=torch.float64, device=device)
        self.seen = 0

    def add(self, loss, logits, targets, step: int) -> None:
        n = targets.shape[0]
        loss = loss.detach().double()
        finite = torch.isfinite(loss)
        self.loss_sum += torch.where(finite, loss * n, 0.0)
        self.counted += finite * n
        self.nonfinite += ~finite
        self.first_bad = torch.where(finite, self.first_bad, self.first_bad.clamp(max=step))
        self.correct += (logits.detach().argmax(1) == targets).sum()
        self.seen += n

    def check(self, epoch: int, info, device, scaler) -> None:
        """Raise :class:`NonFiniteLoss` (on every rank alike) when a step's loss was not finite.
        With an fp16 GradScaler such a step is skipped (its gradients are not finite: the
        weights stay as they were), so only an epoch whose every loss so far was not finite
        is an error."""
        if scaler is not None:
            counted, seen = distributed.all_reduce_sum([self.counted.item(), self.seen], info,
                                                       device)
            if counted or not seen:
                return
        first = distributed.all_reduce_min(self.first_bad.item(), info, device)
        if first != float("inf"):
            raise NonFiniteLoss(epoch, int(first))


def _next_batch(batch, prepare, device, channels_last, info, placeholder):
    """(images, targets, weight) of a loader item on the device, or None to skip it: a batch
    whose every image was unreadable, which under DDP becomes the weight-0 ``placeholder()``."""
    if batch is not None:
        batch = prepare(batch) if prepare else _to_device(*batch, device, channels_last)
    if batch is not None:
        return (*batch, 1.0)
    if info.enabled:
        if placeholder is None:
            raise RuntimeError("a data-parallel epoch needs a placeholder batch for the steps "
                               "whose every image is unreadable")
        return (*placeholder(), 0.0)
    return None


def train_one_epoch(model, loader, optimizer, device, *, epoch: int, epochs: int, scaler=None,
                    amp=None, channels_last=False, step_scheduler=None, print_freq=10,
                    info=distributed.DistInfo(), progress=True, prepare=None, step=None,
                    placeholder=None, first_step=0) -> dict:
    """One pass over ``loader``; returns train_loss, train_top1_error, images, seconds,
    images_per_s, steps and nonfinite_steps (steps whose loss was not finite: with an fp16
    GradScaler, which skipped them) (summed over ranks).

    ``step(images, targets, weight) -> (loss, logits)`` trains on one batch (default: an
    :class:`EagerStep` with ``amp`` and ``scaler``; or a CUDA-graph step). ``step_scheduler``
    (optional) is stepped after every optimizer step (per-iteration schedules); ``scaler`` is
    the fp16 GradScaler; ``prepare(batch) -> (images, targets) or None`` puts a batch on the
    device (default: move the loader's tensors there), e.g. decoding it on the GPU. A batch
    whose every image was unreadable is skipped, or under DDP replaced by the weight-0
    ``placeholder()`` batch (:func:`placeholder_batch`). A non-finite loss raises
    :class:`NonFiniteLoss` naming the run step (``first_step`` + the steps of this epoch),
    checked every ``print_freq`` steps and at the end.
    """
    model.train()
    if step is None:
        step = EagerStep(model, optimizer, device, amp=amp, scaler=scaler)
    tally, steps, start = _Tally(device), 0, time.perf_counter()
    total = len(loader)
    bar = _bar(total, f"epoch {epoch}/{epochs} train", progress and info.is_main, leave=True)
    for batch in loader:
        bar.update()
        batch = _next_batch(batch, prepare, device, channels_last, info, placeholder)
        if batch is None:
            continue
        images, targets, weight = batch
        loss, logits = step(images, targets, weight)
        if step_scheduler is not None:
            step_scheduler.step()
        steps += 1
        if weight:
            tally.add(loss, logits, targets, first_step + steps)
        if steps % print_freq == 0:
            tally.check(epoch, info, device, scaler)
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{tally.loss_sum.item() / max(tally.counted.item(), 1):.4f}",
                            lr=f"{float(optimizer.param_groups[0]['lr']):.3g}",
                            img_s=f"{tally.seen * info.world_size / max(elapsed, 1e-9):.0f}",
                            refresh=False)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tally.check(epoch, info, device, scaler)
    seconds = distributed.all_reduce_max(time.perf_counter() - start, info, device)
    loss_total, counted, correct_total, seen_total, nonfinite = distributed.all_reduce_sum(
        [tally.loss_sum.item(), tally.counted.item(), tally.correct.item(), tally.seen,
         tally.nonfinite.item()], info, device)
    return {
        "train_loss": loss_total / max(counted, 1),
        "train_top1_error": 1.0 - correct_total / max(seen_total, 1),
        "images": int(seen_total),
        "seconds": seconds,
        "images_per_s": seen_total / max(seconds, 1e-9),
        "steps": steps,
        "nonfinite_steps": int(nonfinite),
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
    bar = _bar(len(loader), desc, progress and info.is_main, leave=False)
    for batch in loader:
        bar.update()
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

"""The compiled train step: loss and gradients, accumulation, averaging across devices, clipping, AdamW.

With gradient_accumulation_steps = 1 one Cell does everything (one graph, one call per step).
With N > 1, `TrainStep` adds each micro-batch's gradients to a buffer of Parameters inside the
graph and `ApplyAccumulated` (a second, small graph) updates the weights from the buffer once
every N micro-batches, then clears it: the optimizer, and with it the lr schedule, counts
optimizer steps, not micro-batches.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn, ops

_hyper_map = ops.HyperMap()
_divide = ops.MultitypeFuncGraph("divide")
_clear = ops.MultitypeFuncGraph("clear")
_flat = ops.MultitypeFuncGraph("flat")
_scale = ops.MultitypeFuncGraph("scale")


@_divide.register("Number", "Tensor")
def _divide_tensor(divisor, grad):
    return grad / divisor


@_flat.register("Tensor")
def _flat_fp32(tensor):
    return ops.reshape(tensor, (-1,)).astype(ms.float32)


@_scale.register("Tensor", "Tensor")
def _scale_tensor(scale, grad):
    return grad * scale.astype(grad.dtype)


@_clear.register("Tensor")
def _clear_tensor(buffer):
    return ops.assign(buffer, ops.zeros_like(buffer))


class ScaledTotal(nn.Cell):
    """A single-output loss times a constant (static loss scaling)."""

    def __init__(self, loss_net: nn.Cell, scale: float):
        super().__init__()
        self.loss_net, self.scale = loss_net, scale

    def construct(self, *inputs):
        return self.loss_net(*inputs) * self.scale


class ScaledLoss(nn.Cell):
    """The loss times a constant (static loss scaling for fp16: small gradients stay representable); terms unscaled."""

    def __init__(self, loss_net: nn.Cell, scale: float):
        super().__init__()
        self.loss_net, self.scale = loss_net, scale

    def construct(self, *inputs):
        outputs = self.loss_net(*inputs)
        return (outputs[0] * self.scale,) + outputs[1:]


# Up to this many trained weights, clipping takes the norm over one concatenated copy of the gradients (256 MB at most
# in fp32); above it (full fine-tuning of a real UNet), per weight, as MindSpore does, with no copy.
FLAT_NORM_WEIGHTS = 1 << 26


def clip_by_global_norm(grads: tuple, max_norm: float) -> tuple:
    """`ops.clip_by_global_norm`'s result (every gradient times max_norm / max(norm, max_norm)), with the norm taken
    over one concatenation of the gradients: a few kernels instead of two per weight, which on a CPU is a third of
    the optimizer update's time (bench/optimizer.py)."""
    flat = ops.cat(_hyper_map(_flat, grads))
    clip = ms.Tensor(max_norm, ms.float32)
    return _hyper_map(ops.partial(_scale, clip / ops.maximum(ops.sqrt(ops.sum(flat * flat)), clip)), grads)


class ApplyGrads(nn.Cell):
    """Average gradients across devices, undo loss scale and accumulation, clip, and take one AdamW step."""

    def __init__(self, optimizer: nn.Optimizer, max_grad_norm: float, reducer: nn.Cell | None = None,
                 divisor: float = 1.0):
        super().__init__()
        self.optimizer, self.reducer = optimizer, reducer
        self.max_grad_norm, self.divisor = max_grad_norm, divisor
        self.flat_norm = sum(int(np.prod(p.shape)) for p in optimizer.parameters) <= FLAT_NORM_WEIGHTS

    def construct(self, grads):
        if self.reducer is not None:
            grads = self.reducer(grads)
        if self.divisor != 1.0:
            grads = _hyper_map(ops.partial(_divide, self.divisor), grads)
        if self.max_grad_norm > 0:
            if self.flat_norm:
                grads = clip_by_global_norm(grads, self.max_grad_norm)
            else:
                grads = ops.clip_by_global_norm(grads, self.max_grad_norm)
        return self.optimizer(grads)


class TrainStep(nn.Cell):
    """One micro-batch: the loss and its gradients, then either an update (no buffer) or accumulation.

    A loss network whose `terms` name several outputs returns (loss, *terms): only the loss is differentiated and
    the step returns them all, so that every term can be logged. One returning the loss alone gives (loss,).
    """

    def __init__(self, loss_net: nn.Cell, apply: ApplyGrads, buffer: ms.ParameterTuple | None = None,
                 loss_scale: float = 1.0):
        super().__init__()
        self.with_terms = len(getattr(loss_net, "terms", ("loss",))) > 1
        if loss_scale != 1.0:
            loss_net = ScaledLoss(loss_net, loss_scale) if self.with_terms else ScaledTotal(loss_net, loss_scale)
        self.loss_net = loss_net
        self.update, self.buffer, self.loss_scale = apply, buffer, loss_scale
        self.grad_fn = ms.value_and_grad(self.loss_net, None, apply.optimizer.parameters, has_aux=self.with_terms)

    def construct(self, *inputs):
        outputs, grads = self.grad_fn(*inputs)
        if self.buffer is None:
            self.update(grads)
        else:
            _hyper_map(ops.assign_add, self.buffer, grads)
        if self.with_terms:
            return (outputs[0] / self.loss_scale,) + outputs[1:]
        return (outputs / self.loss_scale,)


class ApplyAccumulated(nn.Cell):
    """Update the weights from the accumulated gradients, then clear the buffer."""

    def __init__(self, apply: ApplyGrads, buffer: ms.ParameterTuple):
        super().__init__()
        self.update, self.buffer = apply, buffer

    def construct(self):
        self.update(self.buffer)
        _hyper_map(_clear, self.buffer)  # after the update: side effects on Parameters keep program order
        return True


def adamw(params, lr_schedule: list[float], weight_decay: float, beta1: float = 0.9, beta2: float = 0.999,
          eps: float = 1e-8) -> nn.Optimizer:
    """AdamW reading its learning rate from a per-step schedule (one entry per optimizer step, plus a spare)."""
    return nn.AdamWeightDecay(params, learning_rate=lr_schedule, beta1=beta1, beta2=beta2, eps=eps,
                              weight_decay=weight_decay)


def schedule_values(name: str, peak: float, warmup: int, total_steps: int, cycles: int = 1,
                    power: float = 1.0) -> list[float]:
    """Learning rate of every optimizer step from mindone's schedulers, plus one spare entry.

    mindone 0.3.0 returns exactly `total_steps` values and the optimizer reads index `total_steps`
    after the last update; CPU kernels bounds-check that read, so one extra value is appended.
    """
    from mindone.diffusers.optimization import get_scheduler

    values = get_scheduler(name, lr=peak, num_warmup_steps=warmup, num_training_steps=total_steps,
                           num_cycles=cycles, power=power)
    values = [float(v) for v in values]
    return values + values[-1:]


def lr_schedule(config, total_steps: int, world_size: int = 1) -> list[float]:
    """The schedule a TrainConfig asks for (lr_scheduler, learning_rate, lr_warmup_steps, ...), plus one spare entry."""
    return schedule_values(config.lr_scheduler, config.learning_rate_for(world_size), config.lr_warmup_steps,
                           total_steps, config.lr_num_cycles, config.lr_power)


def make_step(loss_net: nn.Cell, optimizer: nn.Optimizer, max_grad_norm: float, accumulation: int = 1,
              reducer: nn.Cell | None = None, loss_scale: float = 1.0) -> tuple[TrainStep, ApplyAccumulated | None]:
    """The step Cell, and with accumulation the Cell that applies the accumulated gradients."""
    apply = ApplyGrads(optimizer, max_grad_norm, reducer, loss_scale * accumulation)
    if accumulation == 1:
        return TrainStep(loss_net, apply, None, loss_scale), None
    buffer = optimizer.parameters.clone(prefix="accumulated", init="zeros")
    return TrainStep(loss_net, apply, buffer, loss_scale), ApplyAccumulated(apply, buffer)

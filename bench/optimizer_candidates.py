"""A candidate optimizer update, timed by bench/optimizer.py against MindSpore's own path (ops.clip_by_global_norm,
then nn.AdamWeightDecay) and the engine's: clipping and AdamW over one flat buffer. It computes the same update and
is no faster on this CPU (README, "What did not help"), so the engine does not use it."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from dreambooth_nb.train.step import _flat  # the engine's: a tensor flattened to fp32

_hyper_map = ops.HyperMap()
_write_back = ops.MultitypeFuncGraph("write_back")


@_write_back.register("Tensor", "Tensor", "Number", "Number")
def _write_back_tensor(flat, param, offset, size):
    part = ops.reshape(flat[offset:offset + size], ops.shape(param))
    return ops.assign(param, part if param.dtype == ms.float32 else part.astype(param.dtype))


BUCKET_WEIGHTS = 1 << 24  # weights per flat buffer (64 MB in fp32): the update's extra memory stays bounded


class FlatAdamW(nn.Cell):
    """Gradient clipping and AdamW over the trained weights laid end to end in a few flat buffers.

    The same update as MindSpore's `nn.AdamWeightDecay` after `ops.clip_by_global_norm` (the mindone reference's
    optimizer: no bias correction; decoupled weight decay, `param -= lr * (m / (sqrt(v) + eps) + wd * param)`), but a
    handful of large kernels a step instead of several per weight: on a CPU, where each kernel launch costs more than
    the arithmetic of a small weight, that is most of the optimizer's time. The moments live in one buffer per
    bucket of consecutive weights; a checkpoint would store them per weight.
    """

    def __init__(self, groups: list[dict], beta1: float, beta2: float, eps: float, max_grad_norm: float = 0.0):
        super().__init__()
        params, self.buckets, lrs, decays = [], [], [], []
        for index, group in enumerate(groups):
            first = len(params)
            params += group["params"]
            lrs.append(ms.Tensor(np.asarray(group["lr"], np.float32)))
            decays.append(float(group["weight_decay"]))
            self.buckets += [(index, start, end) for start, end in _bucket_bounds(params, first)]
        self.buckets = tuple(self.buckets)
        self.parameters = ms.ParameterTuple(params)
        self.lr_values, self.decays = tuple(lrs), tuple(decays)
        self.sizes = tuple(int(np.prod(p.shape)) for p in params)
        self.offsets = tuple(int(sum(self.sizes[start:i])) for _, start, end in self.buckets for i in range(start, end))
        self.beta1, self.beta2, self.eps, self.max_grad_norm = beta1, beta2, eps, float(max_grad_norm)
        self.global_step = ms.Parameter(ms.Tensor(np.zeros(1, np.int32)), name="global_step", requires_grad=False)
        self.moments1 = ms.ParameterTuple([self._zeros(f"adam_m.{b}", start, end) for b, (_, start, end) in enumerate(self.buckets)])
        self.moments2 = ms.ParameterTuple([self._zeros(f"adam_v.{b}", start, end) for b, (_, start, end) in enumerate(self.buckets)])

    def _zeros(self, name: str, start: int, end: int) -> ms.Parameter:
        """A zero moment buffer as long as weights start..end together."""
        return ms.Parameter(ms.Tensor(np.zeros(sum(self.sizes[start:end]), np.float32)), name=name, requires_grad=False)

    def construct(self, grads):
        lrs = ()
        for values in self.lr_values:  # read before the counter moves: step k uses entry k of the schedule
            lrs += (ops.gather(values, self.global_step, 0),)
        flats = ()
        for _, start, end in self.buckets:
            flats += (ops.cat(_hyper_map(_flat, grads[start:end])),)
        if self.max_grad_norm > 0:
            flats = self._clipped(flats)
        done = ops.assign_add(self.global_step, ms.Tensor(np.ones(1, np.int32)))
        for b, (group, start, end) in enumerate(self.buckets):
            done = ops.depend(done, self._update(b, flats[b], lrs[group], self.decays[group]))
        return done

    def _clipped(self, flats):
        """The gradients scaled so that their global norm is at most max_grad_norm (ops.clip_by_global_norm's rule)."""
        square_sum = ops.sum(flats[0] * flats[0])
        for flat in flats[1:]:
            square_sum = square_sum + ops.sum(flat * flat)
        norm = ops.sqrt(square_sum)
        clip = ms.Tensor(self.max_grad_norm, ms.float32)
        scale = clip / ops.maximum(norm, clip)
        clipped = ()
        for flat in flats:
            clipped += (flat * scale,)
        return clipped

    def _update(self, b: int, grad, lr, weight_decay: float):
        """Bucket b's AdamW step: its moments in place, its weights written back one by one."""
        _, start, end = self.buckets[b]
        m, v = self.moments1[b], self.moments2[b]
        next_m = self.beta1 * m + (1.0 - self.beta1) * grad
        next_v = self.beta2 * v + (1.0 - self.beta2) * grad * grad
        weights = ops.cat(_hyper_map(_flat, self.parameters[start:end]))
        new = weights - lr * (next_m / (self.eps + ops.sqrt(next_v)) + weight_decay * weights)
        done = ops.depend(ops.assign(m, next_m), ops.assign(v, next_v))
        written = _hyper_map(ops.partial(_write_back, new), self.parameters[start:end], self.offsets[start:end],
                             self.sizes[start:end])
        return ops.depend(done, written)



def _bucket_bounds(params: list, first: int) -> list[tuple[int, int]]:
    """Consecutive runs of params[first:] holding at most BUCKET_WEIGHTS weights each (a larger weight alone)."""
    bounds, start, count = [], first, 0
    for i in range(first, len(params)):
        size = int(np.prod(params[i].shape))
        if i > start and count + size > BUCKET_WEIGHTS:
            bounds.append((start, i))
            start, count = i, 0
        count += size
    if start < len(params):
        bounds.append((start, len(params)))
    return bounds

"""The compiled train step on a small network: accumulation, loss scaling and the optimizer's step counter."""

import numpy as np
import pytest

from dreambooth_nb.common import runtime
from dreambooth_nb import losses


def _mse(net):
    """A loss Cell: mean squared error of `net` (defined here so mindspore is imported after setup)."""
    from mindspore import nn

    class Mse(nn.Cell):
        def __init__(self):
            super().__init__()
            self.net = net

        def construct(self, x, y):
            return ((self.net(x) - y) ** 2).mean()

    return Mse()


def _train(accumulation: int, loss_scale: float = 1.0, steps: int = 3):
    """Weights after `steps` optimizer steps on fixed data of 4 examples per step, split in `accumulation` parts."""
    import mindspore as ms
    from mindspore import nn

    from dreambooth_nb.train.step import make_step

    rng = np.random.default_rng(1)
    xs = rng.standard_normal((steps, 4, 4)).astype(np.float32)
    ys = rng.standard_normal((steps, 4, 3)).astype(np.float32)
    net = nn.Dense(4, 3)
    net.weight.set_data(ms.Tensor(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)))
    net.bias.set_data(ms.Tensor(np.zeros(3, np.float32)))
    optimizer = nn.AdamWeightDecay(net.trainable_params(), learning_rate=[0.1, 0.05, 0.02, 0.02], weight_decay=0.01)
    step, apply = make_step(_mse(net), optimizer, 0.5, accumulation, loss_scale=loss_scale)
    part = 4 // accumulation
    losses = []
    for s in range(steps):
        for m in range(accumulation):
            loss, = step(ms.Tensor(xs[s, m * part:(m + 1) * part]), ms.Tensor(ys[s, m * part:(m + 1) * part]))
            losses.append(float(loss.asnumpy()))
        if apply is not None:
            apply()
    return net.weight.asnumpy(), int(optimizer.global_step.asnumpy()[0]), losses


@pytest.mark.slow
def test_accumulating_two_halves_equals_one_full_batch():
    runtime.setup(device="CPU", show=False)
    full, full_steps, _ = _train(1)
    halves, half_steps, losses = _train(2)
    assert full_steps == half_steps == 3  # the optimizer (and the lr schedule) counts updates, not micro-batches
    assert len(losses) == 6
    np.testing.assert_allclose(halves, full, atol=1e-6)
    assert not np.allclose(full, _train(1, steps=2)[0])  # the weights really moved at step 3


@pytest.mark.slow
def test_static_loss_scale_changes_nothing_in_fp32():
    runtime.setup(device="CPU", show=False)
    plain, _, plain_losses = _train(2)
    scaled, _, scaled_losses = _train(2, loss_scale=1024.0)
    np.testing.assert_allclose(scaled, plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scaled_losses, plain_losses, rtol=1e-6)  # the reported loss is unscaled


@pytest.mark.slow
def test_clipping_over_one_concatenation_equals_mindspores():
    import mindspore as ms
    from mindspore import nn, ops

    from dreambooth_nb.train.step import clip_by_global_norm

    runtime.setup(device="CPU", show=False)
    rng = np.random.default_rng(2)
    grads = tuple(ms.Tensor(rng.standard_normal(shape).astype(np.float32) * 2) for shape in [(3, 4), (5,), (2, 2, 2)])

    class Both(nn.Cell):
        def __init__(self, max_norm):
            super().__init__()
            self.max_norm = max_norm

        def construct(self, g):
            return clip_by_global_norm(g, self.max_norm), ops.clip_by_global_norm(g, self.max_norm)

    for max_norm in (0.5, 100.0):  # clipped, and left alone
        ours, theirs = Both(max_norm)(grads)
        for a, b, g in zip(ours, theirs, grads):
            np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-6, atol=1e-7)
        norm = np.sqrt(sum(float((o.asnumpy() ** 2).sum()) for o in ours))
        assert norm == pytest.approx(min(max_norm, np.sqrt(sum(float((g.asnumpy() ** 2).sum()) for g in grads))), rel=1e-5)

"""GroupNorm on this CPU: MindSpore's GroupNorm kernel (what mindone 0.3.0 uses on MindSpore >= 2.3) against the same
normalisation written as reductions and element-wise ops (mindone's own fallback, `layers_compat._group_norm`).

    python bench/group_norm.py [--calls 30]

Each form runs compiled, forward and backward (gradients for the input, the scale and the shift), ten GroupNorms in a
chain so that one call is more than its launch; the shapes are the 142 M-parameter UNet's at 64 px with prior
(batch 2, latents 8 x 8 down to 2 x 2) and the toy model's. Both forms give the same loss (printed). Prints
milliseconds per GroupNorm (median of the calls after the first) and the ratio written-out / kernel (> 1: the kernel is faster). README, "What did not help".
"""

from __future__ import annotations

import argparse

import numpy as np

from common import time_calls

SHAPES = [(2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2), (2, 64, 8, 8), (4, 96, 4, 4), (2, 128, 32, 32)]
CHAIN = 10  # GroupNorms per call


def compiled_step(norm, channels: int, groups: int = 32):
    """A compiled function: the loss of CHAIN GroupNorms of x and its gradients."""
    import mindspore as ms
    from mindspore import nn

    class Chain(nn.Cell):
        def __init__(self):
            super().__init__()
            self.scale = ms.Parameter(ms.Tensor(np.ones(channels, np.float32)), name="scale")
            self.shift = ms.Parameter(ms.Tensor(np.zeros(channels, np.float32)), name="shift")

        def construct(self, x):
            for _ in range(CHAIN):
                x = norm(x, groups, self.scale, self.shift, 1e-5)
            return (x * x).sum()

    chain = Chain()
    grads = ms.value_and_grad(chain, grad_position=0, weights=chain.trainable_params())

    @ms.jit
    def step(x):
        return grads(x)

    return step


def ms_per_norm(step, x, calls: int) -> tuple[float, float]:
    """(milliseconds per GroupNorm, the median of `calls` calls after the compiling one; loss)."""
    timed = time_calls(lambda i: step(x)[0].asnumpy(), repeats=calls)
    return timed["steady_s"] / CHAIN * 1000, float(step(x)[0].asnumpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    import mindspore as ms
    from mindone.diffusers.models.layers_compat import _group_norm

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    print(f"{'shape':<20} {'kernel ms':>10} {'written-out ms':>15} {'ratio':>6}  same loss")
    for shape in SHAPES:
        x = ms.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        kernel, loss_k = ms_per_norm(compiled_step(ms.mint.nn.functional.group_norm, shape[1]), x, args.calls)
        written, loss_w = ms_per_norm(compiled_step(_group_norm, shape[1]), x, args.calls)
        same = abs(loss_k - loss_w) <= 1e-5 * abs(loss_k)
        print(f"{str(shape):<20} {kernel:10.3f} {written:15.3f} {written / kernel:6.2f}  {same}", flush=True)


if __name__ == "__main__":
    main()

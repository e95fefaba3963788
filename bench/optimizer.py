"""The optimizer update alone, side by side: MindSpore's per-weight path (ops.clip_by_global_norm, then
nn.AdamWeightDecay: the mindone reference's), the engine's (the norm over one concatenation of the gradients, then the
same AdamW) and a flat-buffer candidate (bench/optimizer_candidates.py), on the trainable weights of a model's UNet.

    python bench/optimizer.py                      # the shipped toy-world UNet
    python bench/optimizer.py --model PATH --calls 40

All are compiled (GRAPH mode) in one process and called in turn with the same gradients, after a check that they
take the same steps (three steps; a weight whose gradient is at the scale of epsilon may differ); the table gives the median milliseconds per update and the ratio to MindSpore's path.
Results also go to outputs/bench/optimizer.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LR = [1e-4] * 1000


def updates(arrays: dict[str, np.ndarray], clip: float = 1.0) -> dict:
    """{name: (update Cell, its weights)}, each over its own fresh copy of `arrays`."""
    import mindspore as ms
    from mindspore import nn, ops

    sys.path.insert(0, str(HERE))
    from optimizer_candidates import FlatAdamW

    from dreambooth_nb.train.step import clip_by_global_norm

    def weights(tag):
        return [ms.Parameter(ms.Tensor(a.astype(np.float32)), name=f"{tag}.{name}") for name, a in arrays.items()]

    class ClipThenAdamW(nn.Cell):
        def __init__(self, params, clip_fn):
            super().__init__()
            self.optimizer = nn.AdamWeightDecay(params, learning_rate=LR, weight_decay=1e-2, eps=1e-8)
            self.clip_fn = clip_fn

        def construct(self, grads):
            return self.optimizer(self.clip_fn(grads, clip))

    made = {}
    w = weights("per_weight")
    made["per weight (MindSpore's)"] = (ClipThenAdamW(w, ops.clip_by_global_norm), w)
    w = weights("engine")
    made["concatenated clip (engine)"] = (ClipThenAdamW(w, clip_by_global_norm), w)
    w = weights("flat")
    made["one flat buffer"] = (FlatAdamW([{"params": w, "lr": LR, "weight_decay": 1e-2}], 0.9, 0.999, 1e-8, clip), w)
    return made


def time_calls(update, weight, grads, calls: int) -> list[float]:
    """Seconds of each call, up to the moment an updated weight can be read."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        update(grads)
        weight.asnumpy()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model folder (default: the shipped toy-world model)")
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()

    import mindspore as ms
    from safetensors.numpy import load_file

    import dreambooth_nb as db
    from dreambooth_nb.common.assets import resolve_model

    db.setup(device="CPU", show=False)
    arrays = load_file(str(Path(resolve_model(args.model)) / "unet" / "diffusion_pytorch_model.safetensors"))
    rng = np.random.default_rng(0)
    grads = tuple(ms.Tensor(rng.standard_normal(a.shape).astype(np.float32)) for a in arrays.values())
    made = updates(arrays)
    count = sum(a.size for a in arrays.values())
    for update, weights in made.values():
        time_calls(update, weights[-1], grads, 3)  # compile, then two more steps
    reference = [p.asnumpy() for p in next(iter(made.values()))[1]]
    start = [a.astype(np.float32) for a in arrays.values()]
    for name, (_, weights) in made.items():
        off = sum(int((np.abs(p.asnumpy() - r) > 0.01 * np.abs(r - s).max()).sum())
                  for p, r, s in zip(weights, reference, start))
        assert off <= count * 1e-5, f"{name}: {off} of {count} weights took another step than with MindSpore's optimizer"
    times = {name: [] for name in made}
    for _ in range(args.calls):
        for name, (update, weights) in made.items():
            times[name] += time_calls(update, weights[-1], grads, 1)
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    base = next(iter(medians.values()))
    print(f"optimizer update (clip at 1.0 + AdamW), {len(arrays)} weights, {count / 1e6:.2f} M, "
          f"median of {args.calls} calls; the same steps "
          "as MindSpore's (all but at most 1 in 100,000 weights within 1 % of a step):")
    for name, ms_ in medians.items():
        print(f"  {name:26s} {ms_:7.1f} ms   ratio {ms_ / base:.2f}")
    out = ROOT / "outputs" / "bench" / "optimizer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"weights": len(arrays), "count": int(count), "ms": medians}, indent=1))


if __name__ == "__main__":
    main()

"""`python -m dreambooth_nb.demo`: the main job on the embedded defaults, offline.

Fine-tunes the default model on the offline subject photos, then writes a before/after grid and
the loss plot under outputs/demo/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROMPTS = ["a photo of sks person", "a photo of sks person on the beach", "a painting of sks person", "a photo of a person"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dreambooth_nb.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="folder for the model, grid and plot")
    parser.add_argument("--steps", type=int, default=60, help="training steps")
    parser.add_argument("--model", default=None, help="model (default: the embedded default)")
    parser.add_argument("--device", default=None, help="auto, Ascend, GPU or CPU")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from dreambooth_nb.runtime import friendly_errors

    args = parse_args(argv)
    with friendly_errors(Path(args.out) / "error.log"):
        return run(args)


def run(args: argparse.Namespace) -> int:
    """Sample before, fine-tune, sample after; save the grid and the loss plot."""
    import dreambooth_nb as db
    from dreambooth_nb.infer import pipeline_from_components, with_scheduler
    from dreambooth_nb.train import fast
    from dreambooth_nb.viz import image_grid, save_atomic

    out = Path(args.out)
    db.setup(device=args.device, seed=0)
    config = fast(db.TrainConfig(
        pretrained_model_name_or_path=args.model or db.DEFAULT_MODEL, output_dir=str(out / "model"),
        resolution=64, train_batch_size=1, max_train_steps=args.steps, learning_rate=1e-4,
        lr_warmup_steps=0, seed=0, center_crop=True,
    ))
    components = db.load_components(config.pretrained_model_name_or_path)
    pipe = with_scheduler(pipeline_from_components(components))
    pipe.set_progress_bar_config(disable=True)
    seeds = list(range(len(PROMPTS)))
    print("sampling before training ...")
    before = db.generate(pipe, PROMPTS, seeds, num_inference_steps=20)
    result = db.train_dreambooth(config, components)
    print("sampling after training ...")
    after = db.generate(pipe, PROMPTS, seeds, num_inference_steps=20)
    grid = save_atomic(image_grid(before + after, ncols=len(PROMPTS)), out / "before_after.png")
    fig = result.plot()
    fig.savefig(out / "loss.png", dpi=120)
    print(f"before (top) / after (bottom) grid: {grid}\nloss plot: {out / 'loss.png'}\nmodel: {result.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

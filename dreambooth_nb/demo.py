"""`python -m dreambooth_nb.demo`: the main job on the embedded defaults, offline.

Fine-tunes the default model (toy-world) on the offline subject photos (a purple star with yellow
stripes that it never saw), then writes a before/after grid and the loss plot under outputs/demo/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import defaults

PROMPTS = ["a photo of sks star", "a photo of sks star on a white background", "a photo of a big sks star",
           "a photo of sks star on a green background", "a photo of a star", "a photo of a red circle"]


def parse_args(argv=None) -> argparse.Namespace:
    from dreambooth_nb.common.commands import QuietParser

    parser = QuietParser(prog="python -m dreambooth_nb.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/demo", help="folder for the model, grid and plot")
    parser.add_argument("--steps", type=int, default=100, help="training steps")
    parser.add_argument("--model", default=None, help="model (default: the embedded default)")
    parser.add_argument("--device", default=None, help="auto, Ascend, GPU or CPU")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from dreambooth_nb.common.commands import run_command

    args = parse_args(argv)
    return run_command("demo", lambda: run(args), args.out)


def run(args: argparse.Namespace) -> int:
    """Sample before, fine-tune, sample after; save the grid and the loss plot."""
    import dreambooth_nb as db
    from dreambooth_nb.common.files import save_atomic
    from dreambooth_nb.sampling import sampling_pipeline

    out = Path(args.out)
    db.setup(device=args.device)
    config = db.subject_config(  # shortened under DREAMBOOTH_NB_FAST=1
        with_prior=False, pretrained_model_name_or_path=args.model or db.DEFAULT_MODEL, output_dir=str(out / "model"),
        train_batch_size=4, max_train_steps=args.steps, learning_rate=defaults.TOY_LEARNING_RATE, lr_warmup_steps=0,
    )
    components = db.load_components(config.pretrained_model_name_or_path)
    pipe = sampling_pipeline(components)
    seeds = list(range(len(PROMPTS)))
    print("sampling before training ...")
    before = db.generate(pipe, PROMPTS, seeds, num_inference_steps=20)
    result = db.train_dreambooth(config, components)
    print("sampling after training ...")
    after = db.generate(pipe, PROMPTS, seeds, num_inference_steps=20)
    titles = [f"before: {p}" for p in PROMPTS] + [f"after: {p}" for p in PROMPTS]
    grid = save_atomic(db.show_images(before + after, titles=titles, ncols=len(PROMPTS)), out / "before_after.png")
    save_atomic(result.plot(), out / "loss.png")
    print(f"before (top) / after (bottom) grid: {grid}\nloss plot: {out / 'loss.png'}\nmodel: {result.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The noise-schedule pilot: which schedule lets a prompt's context words set the background and the place?

    python -m dreambooth_nb.toyworld.pilot [--steps 1000] [--batch 32] [--out outputs/pilot]
    python -m dreambooth_nb.toyworld.pilot --before MODEL   # the failure, recorded from a model with SD v1's schedule

Every candidate trains the same fresh UNet + text encoder (same seed, same data, same steps, the committed VAE's
latents) and is then probed with prompts that differ only in one context word, each group drawn from one starting
noise (evaluate.context_following). With SD v1's schedule the noisiest latent keeps 0.068 of the picture, so the
starting noise's mean already decides the background and the words are not needed to lower the loss. Each candidate
checkpoints as it trains and writes its result: run the command again and it continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..common import defaults, runtime, scenes
from ..common.files import save_atomic, write_json_atomic
from ..common.tables import Table
from . import pretrain
from .evaluate import PROBE_OBJECTS

# name: (pretrain --schedule, --offset_noise, --snr_gamma); Min-SNR weighting is left out with v-prediction, where it
# gives the noisiest steps (SNR 0) no weight at all: min(SNR, 5) / (SNR + 1) = 0
CANDIDATES = {
    "sd": ("sd", 0.0, 5.0),
    "offset": ("sd", 0.1, 5.0),
    "zero-snr": ("zero-snr", 0.0, 0.0),
    "cosine-v": ("cosine-v", 0.0, 0.0),
}
LABELS = {"sd": "SD v1 schedule (today)", "offset": "SD v1 + offset noise 0.1",
          "zero-snr": "zero terminal SNR + v-prediction", "cosine-v": "cosine schedule + v-prediction"}
SCORES = ("background follows", "backgrounds per noise", "place follows", "shape", "colour")


def candidate_args(name: str, args: argparse.Namespace, base_model: str) -> argparse.Namespace:
    """pretrain's settings for one candidate: the pilot's steps and batch, the committed VAE, the candidate's schedule."""
    schedule, offset, gamma = CANDIDATES[name]
    return pretrain.parse_args([
        f"--unet_steps={args.steps}", f"--batch={args.batch}", f"--lr={args.lr}", f"--images={args.images}",
        f"--schedule={schedule}", f"--offset_noise={offset}", f"--snr_gamma={gamma}", f"--vae_from={base_model}",
        f"--seed={args.seed}", "--curve_every=0"])


def run_candidate(name: str, args: argparse.Namespace, data, out: Path) -> dict:
    """Train one candidate (resuming), probe it, write out/<name>/result.json; reads that file when it exists."""
    from ..common.assets import toy_world_dir
    from ..sampling import pipeline_from_components
    from .evaluate import context_following, prompt_following

    done = out / name / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    settings = candidate_args(name, args, str(toy_world_dir() / "model"))
    components = pretrain.build_components(out / name, settings.seed, settings.schedule, settings.vae_from)
    images, captions = data
    latents = pretrain.scaled_latents(components, images, out, keep_scale=True)
    log = pretrain.train_unet(components, latents, captions, settings, out / name)
    pipe = pipeline_from_components(components, scheduler=pretrain.SAMPLER)
    steps, guidance = defaults.INFERENCE_STEPS, defaults.TOY_GUIDANCE
    probe = context_following(pipe, args.seed, steps=steps, guidance=guidance)
    following = prompt_following(pipe, args.seed, n=40, per_shape=2, steps=steps, guidance=guidance)
    result = {**{k: v for k, v in probe.items() if not k.endswith("images")},
              "shape": following["shape"], "colour": following["colour"],
              "loss": float(np.mean(log.history[-100:])), "minutes": log.seconds / 60}
    save_atomic(probe_figure(probe, LABELS[name]), out / name / "probe.png")
    np.savez_compressed(out / name / "probe.npz", background=np.asarray([[np.asarray(im) for im in g] for g in
                        probe["background images"]]), place=np.asarray([[np.asarray(im) for im in g]
                                                                        for g in probe["place images"]]))
    write_json_atomic(done, result)
    return result


def probe_figure(probe: dict, label: str, groups: int = 2):
    """The first groups' pictures: one row per starting noise, the background words then the place words."""
    from ..common.viz import show_images
    from .evaluate import PROBE_BACKGROUNDS

    images, titles = [], []
    for g in range(groups):
        images += probe["background images"][g] + probe["place images"][g]
        titles += [f"on {b}" for b in PROBE_BACKGROUNDS] + [scenes.PLACES[p] for p in scenes.PLACES]
    return show_images(images, titles=titles, ncols=len(PROBE_BACKGROUNDS) + len(scenes.PLACES), scale=1.2,
                       suptitle=label)


class PilotTable(Table):
    """One row per candidate schedule: context following, then shape and colour, loss and minutes."""

    header = ("schedule", "background follows", "backgrounds / noise", "place follows", "shape", "colour", "min")

    def __init__(self, results: dict[str, dict], caption: str = ""):
        self.results, self.caption = results, caption

    def rows(self) -> list[tuple]:
        return [(LABELS[k], f"{100 * r['background follows']:.0f} %", f"{r['backgrounds per noise']:.1f} of 5",
                 f"{100 * r['place follows']:.0f} %", f"{100 * r['shape']:.0f} %", f"{100 * r['colour']:.0f} %",
                 f"{r['minutes']:.0f}") for k, r in self.results.items()]


def pilot_figure(out: Path, names) -> "object":
    """All candidates' first probe row side by side (one starting noise per row, the same for every candidate)."""
    from ..common.viz import show_images
    from .evaluate import PROBE_BACKGROUNDS

    images, titles = [], []
    for name in names:
        with np.load(out / name / "probe.npz") as f:
            row = list(f["background"][0]) + list(f["place"][0])
        images += row
        words = [f"on {b}" for b in PROBE_BACKGROUNDS] + [scenes.PLACES[p] for p in scenes.PLACES]
        titles += [f"{LABELS[name]}\n{w}" if i == 0 else w for i, w in enumerate(words)]
    return show_images(images, titles=titles, ncols=len(PROBE_BACKGROUNDS) + len(scenes.PLACES), scale=1.3,
                       suptitle="a photo of a red circle on a <word> background | a photo of a red circle <place>")


def before_figure(model: str, target: Path) -> dict:
    """The failure the schedule change fixes, recorded from a model trained with SD v1's schedule (the toy world
    before v4): one starting noise per row, only the background word changing; then every noise shifted by what SD
    v1's last timestep keeps of a blue picture. Writes target/schedule-before.{png,json}; returns the numbers."""
    from ..infer import load_pipeline
    from ..sampling import background_probe, show_background_probes

    pipe = load_pipeline(model)
    probes = [background_probe(pipe), background_probe(pipe, shift_toward="blue")]
    figure = show_background_probes(probes, suptitle="before: a model trained with SD v1's schedule (terminal SNR 0.0047)")
    save_atomic(figure, target / "schedule-before.png")
    numbers = {p.label: {"background as asked": p.followed, "drawn": p.got} for p in probes}
    write_json_atomic(target / "schedule-before.json", {"model": str(model), "probes": numbers})
    return numbers


def main(argv=None) -> PilotTable:
    """Run (or continue) every candidate, print the table, write it with the figure into --results."""
    from ..common.assets import results_dir

    p = argparse.ArgumentParser(prog="python -m dreambooth_nb.toyworld.pilot", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/pilot", help="Folder for checkpoints and each candidate's result.")
    p.add_argument("--steps", type=int, default=1000, help="UNet + text encoder steps of every candidate.")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--images", type=int, default=20000, help="Pictures (and captions) in the pilot's training set.")
    p.add_argument("--seed", type=int, default=defaults.SEED)
    p.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    p.add_argument("--results", default=None, help="Where the table and figure go (default: the committed results).")
    p.add_argument("--before", default=None, metavar="MODEL", help="Only record the failure on a model trained with "
                   "SD v1's schedule (schedule-before.png and .json) and stop.")
    args = p.parse_args(argv)
    target = Path(args.results) if args.results else results_dir()
    if args.before:
        runtime.setup(show=False, seed=args.seed)
        print(json.dumps(before_figure(args.before, target), indent=1))
        return None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runtime.setup(show=False, seed=args.seed)
    images, captions, _ = scenes.dataset(args.images, args.seed)
    results = {name: run_candidate(name, args, (images, captions), out) for name in args.only}
    table = PilotTable(results, caption=(
        f"{args.steps} UNet + text encoder steps, batch {args.batch}, {args.images} pictures, seed {args.seed}; probe: "
        f"{2 * len(PROBE_OBJECTS)} starting noises x 5 background words and x 4 places, {defaults.INFERENCE_STEPS} DPM-Solver++ steps, guidance {defaults.TOY_GUIDANCE}; shape and colour "
        f"over 40 fresh captions"))
    print(table)
    target.mkdir(parents=True, exist_ok=True)
    (target / "pilot.txt").write_text(str(table) + "\n", encoding="utf-8")
    write_json_atomic(target / "pilot.json", {"args": vars(args), "results": results})
    save_atomic(pilot_figure(out, list(results)), target / "pilot.png")
    return table


if __name__ == "__main__":
    main()

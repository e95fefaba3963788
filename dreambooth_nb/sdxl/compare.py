"""Stable Diffusion against SDXL, the same DreamBooth LoRA run on each toy model: what each trains and shares, how
fast and large its training process is, and how well the judge finds the subject afterwards."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..common.assets import resolve_model
from ..common.tables import Table, measure_rows
from ..models import count_parameters
from ..lora import adapter_file, adapter_scores, finished_run_of, pipeline_bytes


def text_parameters(pipe) -> int:
    """Weights of the pipeline's text encoder(s): one for SD, two for SDXL."""
    return sum(count_parameters(net) for net in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
               if net is not None)


def adapter_parameters(folder) -> int:
    """Numbers in an adapter file (every lora down/up matrix)."""
    from safetensors.numpy import load_file

    return sum(int(v.size) for k, v in load_file(str(adapter_file(folder))).items() if ".lora" in k)


def trained_or_reused(config) -> dict:
    """The run's resources.json (its process's step times and peak memory): read when the folder holds this run
    finished, else trained now by its command line in a fresh process."""
    from ..train.cli import run_in_fresh_process
    from ..train.engine import RESOURCES_FILE

    saved = Path(config.output_dir) / RESOURCES_FILE
    if finished_run_of(config) and saved.is_file():
        print(f"reusing the finished run in {config.output_dir}")
        return json.loads(saved.read_text(encoding="utf-8"))
    return run_in_fresh_process(config)


@dataclass(repr=False)
class ModelComparison(Table):
    """SD and SDXL toy models, the same LoRA recipe on each, side by side."""

    measures: dict  # "SD" / "SDXL" -> {measure: value}
    seed: int = 0
    images: dict = field(default_factory=dict)  # "SD" / "SDXL" -> the judged `a photo of sks star` pictures
    header = ("", "SD (toy-world)", "SDXL (toy-world-xl)")
    ROWS = (("unet", "UNet weights", "{:,}"),
            ("text", "text-encoder weights", "{:,}"),
            ("model_mb", "model files (networks)", "{:.1f} MB"),
            ("adapters", "LoRA weights trained", "{:,}"),
            ("file_kb", "adapter file", "{:.0f} KB"),
            ("median_step_s", "seconds per step (median; CPU)", "{:.3f}"),
            ("peak_rss_mb", "peak memory of the training process", "{:.0f} MB"),
            ("subject fidelity", "`a photo of sks star` judged the subject", "{:.0%}"),
            ("class kept", "`a photo of a star` stays a plain star", "{:.0%}"))

    def rows(self) -> list[tuple]:
        return measure_rows(self.ROWS, [self.measures["SD"], self.measures["SDXL"]])

    def figure(self, per_model: int = 4):
        """The first judged `a photo of sks star` pictures of each model with its adapter (the same seeds)."""
        from ..common.viz import show_images

        images, titles = [], []
        for name in ("SD", "SDXL"):
            images += self.images[name][:per_model]
            titles += [f"{name} + LoRA" if i == 0 else "" for i in range(per_model)]
        return show_images(images, titles=titles, ncols=per_model, scale=1.6,
                           suptitle="`a photo of sks star`, the same seeds: SD toy (top), SDXL toy (bottom)")


def measure(pipe, config, seed: int) -> tuple[dict, list]:
    """One model's row (its sizes and the judge's scores with the adapters merged in, or as kept by an earlier chapter's
    judging of the same run: adapter_scores) and its judged subject pictures."""
    row = dict(unet=count_parameters(pipe.unet), text=text_parameters(pipe),
               model_mb=pipeline_bytes(resolve_model(config.pretrained_model_name_or_path)) / 2**20,
               adapters=adapter_parameters(config.output_dir),
               file_kb=adapter_file(config.output_dir).stat().st_size / 2**10)
    scores = adapter_scores(pipe, config.output_dir, seed)
    return {**row, **{k: v for k, v in scores.items() if k != "images"}}, scores["images"]["subject"]


def compare_sd_sdxl(sd_config, sdxl_config, *, sd_pipe=None, sdxl_pipe=None, seed: int = 0) -> ModelComparison:
    """Train (or reuse) the same LoRA recipe on the SD and the SDXL toy model, each by its command line in a fresh
    process, then measure both (see ModelComparison.ROWS). The pipelines judge with the adapters merged in and get
    their own weights back; None loads one."""
    from ..infer import load_pipeline
    from .model import load_sdxl_pipeline

    measures, images = {}, {}
    for name, config, pipe, loader in (("SD", sd_config, sd_pipe, load_pipeline),
                                       ("SDXL", sdxl_config, sdxl_pipe, load_sdxl_pipeline)):
        resources = trained_or_reused(config)
        pipe = pipe if pipe is not None else loader(config.pretrained_model_name_or_path)
        row, images[name] = measure(pipe, config, seed)
        measures[name] = {**row, **resources}
    return ModelComparison(measures, seed, images)


# ------------------------------------------------------------------------------ the recipe over seeds
SEEDS_DIR = Path("outputs") / "09-sdxl" / "seeds"
FIDELITY_TARGET = 0.70  # `a photo of sks star` judged the subject, SDXL LoRA with prior preservation, mean over seeds
RESULTS = "dreambooth-lora"  # the tables (.txt) beside the toy SDXL's model card


def recipes() -> dict:
    """{name: changes to chapter 08's LoRA run}: the reference's attention adapters, and adapters on every layer."""
    from ..common.config import EVERY_LAYER_LORA

    return {"reference": {}, "every-layer": EVERY_LAYER_LORA}


def results_file(suffix: str = ".txt", recipe: str = "reference") -> Path:
    """The committed results of `python -m dreambooth_nb.sdxl.compare --recipe RECIPE --install`, beside the toy
    SDXL's card."""
    from ..common.assets import toy_world_dir

    return toy_world_dir() / "xl" / f"{RESULTS}{'' if recipe == 'reference' else '-' + recipe}{suffix}"


def seed_configs(seed: int, recipe: str = "reference") -> dict:
    """Chapter 09's two runs (LoRA with prior on the toy SD and on the toy SDXL) for one seed and recipe, each in its
    own folder."""
    from ..common.config import lora_config, sdxl_lora_config

    changes, tag = recipes()[recipe], "" if recipe == "reference" else f"{recipe}-"
    return {"SD + LoRA": lora_config(seed=seed, output_dir=str(SEEDS_DIR / f"sd-{tag}{seed}"), **changes),
            "SDXL + LoRA": sdxl_lora_config(seed=seed, output_dir=str(SEEDS_DIR / f"sdxl-{tag}{seed}"),
                                            validation_prompt=None, **changes)}


def lora_over_seeds(seeds=(0, 1, 2), progress: bool = True, recipe: str = "reference"):
    """The same LoRA recipe with prior preservation on both toy models, one run per seed (trained here unless
    finished), judged with chapter 06's prompts: mean ± sd per score, the SDXL fidelity target met or not."""
    from ..infer import load_pipeline
    from ..lora import train_lora
    from ..toyworld.evaluate import Scores, over_seeds
    from ..toyworld.experiments import MAIN_SCORES
    from .model import load_sdxl_pipeline
    from .training import train_sdxl_lora

    pipes = {"SD + LoRA": load_pipeline(), "SDXL + LoRA": load_sdxl_pipeline()}
    trainers = {"SD + LoRA": train_lora, "SDXL + LoRA": train_sdxl_lora}
    runs = {name: [] for name in pipes}
    for seed in seeds:
        for name, config in seed_configs(seed, recipe).items():
            if not finished_run_of(config):
                trainers[name](config, progress=progress)
            runs[name].append(adapter_scores(pipes[name], config.output_dir, seed))
    spreads = {name: {k: v for k, v in over_seeds(r).items() if k in MAIN_SCORES} for name, r in runs.items()}
    fidelity = spreads["SDXL + LoRA"]["subject fidelity"].mean
    config = seed_configs(seeds[0], recipe)["SDXL + LoRA"]
    where = "every convolution and linear layer" if config.lora_layers == "all" else "the attention projections"
    return Scores(spreads, targets={"subject fidelity": f"SDXL >= {FIDELITY_TARGET:.0%}: "
                                                        f"{'met' if fidelity >= FIDELITY_TARGET else 'not met'}"},
                  caption=f"DreamBooth LoRA with prior preservation (adapters on {where}, rank {config.lora_rank}, "
                          f"lr {config.learning_rate:g}, prior weight {config.prior_loss_weight:g}, "
                          f"{config.max_train_steps} steps, {config.num_class_images} class images), mean ± sd over "
                          f"seeds {list(seeds)}:")


def main(argv=None):
    """Print (and with --install, keep beside the toy SDXL's card) a recipe's scores over seeds."""
    import argparse

    from ..common import runtime

    p = argparse.ArgumentParser(prog="python -m dreambooth_nb.sdxl.compare", description=main.__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipe", choices=list(recipes()), default="reference",
                   help="reference: chapter 08's run (adapters on the attention projections); every-layer: "
                        "--lora_layers=all with the settings of config.EVERY_LAYER_LORA.")
    p.add_argument("--install", action="store_true", help="Write the table into dreambooth_nb/assets/toyworld/xl/.")
    args = p.parse_args(argv)
    runtime.setup(show=False)
    table = lora_over_seeds(tuple(args.seeds), recipe=args.recipe)
    print(table)
    if args.install:
        results_file(".txt", args.recipe).write_text(str(table) + "\n", encoding="utf-8")
    return table


def committed_lora_over_seeds(recipe: str = "reference"):
    """The table of the committed full-profile run of `python -m dreambooth_nb.sdxl.compare --seeds 0 1 2 --recipe
    RECIPE --install`."""
    from ..toyworld.experiments import Printed

    return Printed(results_file(".txt", recipe).read_text(encoding="utf-8").rstrip())


if __name__ == "__main__":
    main()


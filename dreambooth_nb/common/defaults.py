"""Every default value of the course, in one place: models, seeds, sampling steps, guidance, profiles.

A chapter, a panel or the command line that needs one of these reads it from here, never a literal of its own.
"""

from __future__ import annotations

import os

# ---------------------------------------------------------------------------- models
TOY_MODEL = "toy-world"  # the committed Stable Diffusion of coloured shapes: the course's default model
TINY_MODEL = "tiny-random"  # a randomly initialised tiny SD, built offline in seconds (unit tests of the mechanics)
TOY_XL_MODEL = "toy-world-xl"  # the committed SDXL of the toy world (chapter 09), derived from toy-world
DEFAULT_MODEL = TOY_MODEL
EMBEDDED_MODELS = (TOY_MODEL, TINY_MODEL, TOY_XL_MODEL)

# ---------------------------------------------------------------------------- randomness
SEED = 0  # seed of setup(), training runs, class images and samples unless one is given

# ---------------------------------------------------------------------------- sampling
INFERENCE_STEPS = 25  # denoising steps of samples, class images and validation images (the reference's 25)
FAST_INFERENCE_STEPS = 10  # under the test profile (DPM-Solver++ is usable from about 10)
SAMPLER = "DPMSolverMultistepScheduler"  # the sampler of every chapter (DPM-Solver++)
TOY_GUIDANCE = 4.0  # classifier-free guidance for the toy-world models: prompts followed, colours not burnt
REFERENCE_GUIDANCE = 7.5  # what diffusers' pipelines use for Stable Diffusion 1.x/2.x (hub models)
SAMPLE_BATCH = 4  # pictures per compiled sampling call (a short batch is padded to it)

# ---------------------------------------------------------------------------- the toy world's DreamBooth recipe
TOY_LEARNING_RATE = 1e-4  # full fine-tuning of the toy model (chapters 04-07, make demo); LoRA takes 10x
# (full profile, test profile) pairs: chapter 06's runs and what is judged of them per seed and model
TOY_STEPS = (300, 20)
TOY_CLASS_IMAGES = (48, 24)
TOY_JUDGED = ({"n": 16, "per_context": 8}, {"n": 8, "per_context": 4})
TOY_FOLLOWING = ({"n": 100}, {"n": 40, "per_shape": 4})

# ---------------------------------------------------------------------------- profiles
FAST_ENV = "DREAMBOOTH_NB_FAST"  # "1": the short test profile (nbval, CI)
TEST_PROFILE_STEPS = 8  # training steps of a run under the test profile
TEST_PROFILE_CLASS_IMAGES = 4  # class images of a run under the test profile (chapter 06 keeps its own)


def fast_profile() -> bool:
    """True when DREAMBOOTH_NB_FAST=1 asks for the short settings used by tests."""
    return os.environ.get(FAST_ENV, "").strip().lower() in {"1", "true", "yes"}


def by_profile(pair: tuple):
    """The full profile's value of a (full, test) pair, or the test profile's under DREAMBOOTH_NB_FAST=1."""
    return pair[1] if fast_profile() else pair[0]


def inference_steps() -> int:
    """Denoising steps for samples, class images and validation images: fewer under the test profile."""
    return FAST_INFERENCE_STEPS if fast_profile() else INFERENCE_STEPS

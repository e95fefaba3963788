"""PyTorch side of the benchmarks: the same DreamBooth step (full fine-tuning, or LoRA adapters through PEFT as
diffusers' train_dreambooth_lora.py adds them) and sampling with diffusers on CPU.

Run by bench/run.py with a venv holding torch==2.13.0, diffusers and peft (bench/requirements-torch.txt).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from common import (CLASS_PROMPT, INSTANCE_PROMPT, LORA_RANK, LORA_TARGETS, STEADY_STEPS, WARMUP_STEPS,
                    native_resolution, report, summarise, time_calls, worker_args)


def load_pixels(photos: str, size: int) -> np.ndarray:
    """Photos resized (shorter side) and center-cropped to size x size, CHW in [-1, 1]."""
    from PIL import Image

    out = []
    for path in sorted(p for p in Path(photos).iterdir() if p.suffix.lower() in {".jpg", ".png"}):
        im = Image.open(path).convert("RGB")
        scale = size / min(im.size)
        im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BILINEAR)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
        out.append(np.asarray(im, np.float32).transpose(2, 0, 1) / 127.5 - 1)
    return np.stack(out)


def trained_parameters(unet, lora: bool) -> list:
    """The whole UNet, or (lora) rank-4 adapters on its attention projections with the base frozen."""
    if lora:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian",
                                    target_modules=list(LORA_TARGETS)))
    return [p for p in unet.parameters() if p.requires_grad]


def bench_train(model: str, photos: str, batch: int, prior: bool, lora: bool = False) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder").eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").train()
    scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    params = trained_parameters(unet, lora)
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    pixels_all = torch.from_numpy(load_pixels(photos, native_resolution(model)))

    def ids(prompt: str, n: int):
        tok = tokenizer([prompt] * n, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt")
        return tok.input_ids

    rng = np.random.default_rng(0)
    seconds = []
    for step in range(WARMUP_STEPS + STEADY_STEPS + 1):
        start = time.perf_counter()
        index = rng.integers(0, len(pixels_all), batch)
        pixels, input_ids = pixels_all[index], ids(INSTANCE_PROMPT, batch)
        if prior:
            pixels = torch.cat([pixels, pixels_all[rng.integers(0, len(pixels_all), batch)]])
            input_ids = torch.cat([input_ids, ids(CLASS_PROMPT, batch)])
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            embeddings = text_encoder(input_ids)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))
        pred = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, embeddings).sample
        if prior:
            pred, prior_pred = pred.chunk(2)
            noise, prior_noise = noise.chunk(2)
            loss = F.mse_loss(pred, noise) + 1.0 * F.mse_loss(prior_pred, prior_noise)
        else:
            loss = F.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        float(loss)
        seconds.append(time.perf_counter() - start)
    return {**summarise(seconds), "trained_params": sum(p.numel() for p in params)}


def bench_sample(model: str, steps: int) -> dict:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return time_calls(lambda i: pipe(INSTANCE_PROMPT, num_inference_steps=steps, height=size, width=size,
                                     generator=torch.Generator().manual_seed(i)))


def main() -> None:
    args = worker_args()
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.task in ("train", "lora"):
        result = bench_train(args.model, args.photos, args.batch, args.prior, lora=args.task == "lora")
    else:
        result = bench_sample(args.model, args.steps)
    report({"framework": "pytorch", **vars(args), **result})


if __name__ == "__main__":
    main()

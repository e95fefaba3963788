"""MindSpore side of the benchmarks: dreambooth_nb's compiled train step (full fine-tuning, or LoRA adapters), or
25-step sampling.

Run by bench/run.py with the project's venv: python bench/ms_worker.py train|lora|sample --model DIR ...
"""

from __future__ import annotations

import time

import numpy as np

from common import (CLASS_PROMPT, INSTANCE_PROMPT, LORA_RANK, STEADY_STEPS, WARMUP_STEPS, native_resolution, report,
                    summarise, time_calls, worker_args)


def bench_train(model: str, photos: str, batch: int, prior: bool, lora: bool = False, resolution: int | None = None,
                checkpointing: bool = False, fp16: bool = False) -> dict:
    """Seconds of each engine step; with lora, the engine's LoRA method (rank-4 adapters, the base frozen).

    The memory levers: --gradient_checkpointing as the engine applies it; fp16 as the engine sets it up on Ascend
    (frozen networks stored in fp16, the UNet computing in fp16, loss scale 65536), which its CPU path refuses, so
    that what fp16 would do on this CPU is measured, not assumed."""
    from dreambooth_nb.batches import BatchMaker, latent_shape, load_image_set
    from dreambooth_nb.common.config import LoraTrainConfig, TrainConfig
    from dreambooth_nb.lora import LORA
    from dreambooth_nb.models import load_components
    from dreambooth_nb.common.graph_cache import cached_compile
    from dreambooth_nb.train.engine import (FULL_FINE_TUNING, Precision, apply_precision, build_trainer,
                                            training_graph_parts)

    size = resolution or native_resolution(model)
    settings = dict(pretrained_model_name_or_path=model, instance_data_dir=photos, resolution=size,
                    train_batch_size=batch, learning_rate=1e-4, lr_warmup_steps=0, center_crop=True, seed=0,
                    instance_prompt=INSTANCE_PROMPT, class_prompt=CLASS_PROMPT, gradient_checkpointing=checkpointing)
    config = LoraTrainConfig(**settings, lora_rank=LORA_RANK) if lora else TrainConfig(**settings)
    components = load_components(model)
    images = load_image_set(photos, config.instance_prompt, components.tokenizer, size)
    classes = load_image_set(photos, config.class_prompt, components.tokenizer, size) if prior else None
    config = config.replace(with_prior_preservation=prior, class_data_dir=photos if prior else None)
    steps = WARMUP_STEPS + STEADY_STEPS + 1
    precision = Precision("float16", 65536.0) if fp16 else Precision()
    apply_precision(components, precision, train_text_encoder=False)
    method = LORA if lora else FULL_FINE_TUNING
    trainer = build_trainer(config, components, steps, precision=precision, method=method)
    make = BatchMaker(images, classes, config, latent_shape(components, size), 1000, 0)
    seconds, losses = [], []

    def timed_step(step: int) -> None:  # the engine's own step: host batch, compiled graph, loss read
        start = time.perf_counter()
        losses.append(trainer.run(make, step)["loss"])
        seconds.append(time.perf_counter() - start)

    # the first step as the engine runs it: in the compile cache's block (warm where this case compiled before)
    with cached_compile("train step", training_graph_parts(config, trainer, method)) as cached:
        timed_step(0)
    for step in range(1, steps):
        timed_step(step)
    trained = sum(p.size for net in trainer.nets.values() for p in net.trainable_params())
    return {**summarise(seconds), "first_cached": bool(cached), "trained_params": int(trained),
            "mean_loss": round(float(np.mean(losses)), 5)}


def bench_sample(model: str, steps: int, pipeline_loop: bool = False) -> dict:
    """Seconds of generate() drawing one picture (as the PyTorch side), its denoising loop one compiled graph; with
    pipeline_loop, mindone's pipeline called directly instead (its loop steps from Python: the lever off)."""
    import numpy as np

    from dreambooth_nb.infer import load_pipeline
    from dreambooth_nb.sampling import generate

    pipe = load_pipeline(model, scheduler="PNDMScheduler")
    if pipeline_loop:
        return time_calls(lambda i: pipe([INSTANCE_PROMPT], num_inference_steps=steps, guidance_scale=4.0,
                                         generator=[np.random.default_rng(i)]))
    return time_calls(lambda i: generate(pipe, [INSTANCE_PROMPT], [i], num_inference_steps=steps, batch_size=1))


def main() -> None:
    args = worker_args()
    import dreambooth_nb as db

    db.setup(device="CPU", show=False)
    if args.task in ("train", "lora"):
        result = bench_train(args.model, args.photos, args.batch, args.prior, lora=args.task == "lora",
                             resolution=args.resolution, checkpointing=args.gradient_checkpointing, fp16=args.fp16)
    else:
        result = bench_sample(args.model, args.steps, args.pipeline_loop)
    report({"framework": "mindspore", **vars(args), **result})


if __name__ == "__main__":
    main()

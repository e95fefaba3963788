"""Fixtures shared by several test modules (each costs a compiled training run, so it runs once per session)."""

from pathlib import Path

import pytest

TINY = "tiny-random"


def lora_test_config(output_dir, **changes):
    """A short LoRA run on the tiny random model: UNet and text encoder, lr 1e-2 (adapters that visibly move the
    picture), a checkpoint every 2 steps."""
    from dreambooth_nb.common.config import LoraTrainConfig

    settings = dict(pretrained_model_name_or_path=TINY, output_dir=str(output_dir), resolution=32, train_batch_size=1,
                    max_train_steps=6, learning_rate=1e-2, lr_warmup_steps=0, seed=0, checkpointing_steps=2,
                    report_to="none", train_text_encoder=True, lora_rank=4)
    return LoraTrainConfig(**{**settings, **changes})


@pytest.fixture(scope="session")
def lora_runs(tmp_path_factory):
    """A LoRA run that never stops (root/full), and its checkpoint-2 resumed in the same networks (root/resumed: see
    resumed_in_place_from_a_copy); with the UNet's and text encoder's weights before training, and the components."""
    from dreambooth_nb.common import runtime
    from dreambooth_nb.lora import train_lora
    from dreambooth_nb.models import load_components

    runtime.setup(device="CPU", show=False)
    root = tmp_path_factory.mktemp("lora")
    full_components = load_components(TINY)
    before = {net: {k: p.asnumpy().copy() for k, p in getattr(full_components, net).parameters_and_names()}
              for net in ("unet", "text_encoder")}
    full = train_lora(lora_test_config(root / "full"), full_components, progress=False)
    resumed = resumed_in_place_from_a_copy(train_lora, lora_test_config(root / "resumed"), full_components,
                                           root / "full" / "checkpoint-2")
    return dict(root=root, full=full, resumed=resumed, before=before, components=full_components)


def resumed_in_place_from_a_copy(train, config, components, checkpoint: Path):
    """A finished run's `checkpoint` (its checkpoint-N) copied into config.output_dir, and the run resumed there from it
    in the same networks after every trainable weight was moved away, so that only the checkpoint (weights and
    optimizer state) can bring back what the uninterrupted run did after step N: its result should be that run's. The
    compiled step is reused (no second compile). test_train_engine stops a run and resumes it in fresh networks, as a
    new process does."""
    import dataclasses
    import shutil

    shutil.copytree(checkpoint, Path(config.output_dir) / checkpoint.name)
    move_trainable_weights(components)
    return train(dataclasses.replace(config, resume_from_checkpoint="latest"), components, progress=False)


def move_trainable_weights(components, by: float = 0.5) -> None:
    """Add `by` to every trainable weight of the components' networks, in place."""
    from dreambooth_nb.common import runtime
    from dreambooth_nb.train.engine import NETWORK_NAMES

    for name in NETWORK_NAMES:
        net = getattr(components, name, None)
        for p in net.trainable_params() if net is not None else ():
            runtime.write_in_place(p, p.asnumpy() + by)


def sdxl_test_config(output_dir, model, **changes):
    """A short SDXL LoRA run on `model` (the tiny random SDXL): 64 px, 4 steps, rank 2, lr 1e-2, a checkpoint every 2."""
    from dreambooth_nb.common.config import SDXLLoraTrainConfig

    settings = dict(pretrained_model_name_or_path=model, output_dir=str(output_dir), resolution=64,
                    train_batch_size=1, max_train_steps=4, learning_rate=1e-2, text_encoder_lr=1e-2,
                    lr_warmup_steps=0, seed=0, checkpointing_steps=2, report_to="none", lora_rank=2)
    return SDXLLoraTrainConfig(**{**settings, **changes})


@pytest.fixture(scope="session")
def tiny_xl():
    """The tiny random SDXL's folder (built once, then cached)."""
    from dreambooth_nb.common import runtime
    from dreambooth_nb.sdxl.toy import tiny_sdxl_path

    runtime.setup(device="CPU", show=False)
    return str(tiny_sdxl_path())


@pytest.fixture(scope="session", autouse=True)
def compile_cache_off():
    """Unit tests compile every graph anew (DREAMBOOTH_NB_GRAPH_CACHE=0, inherited by the processes they start): a
    test that patches what a step computes must not be served the graph of the same settings unpatched.
    test_graph_cache turns it on for its own runs."""
    from dreambooth_nb.common.graph_cache import GRAPH_CACHE_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(GRAPH_CACHE_ENV, "0")
        yield

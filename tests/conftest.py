"""Fixtures shared by several test modules (each costs a compiled training run, so it runs once per session)."""

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
    """A LoRA run that never stops (root/full), and one stopped after 3 steps then resumed in the same networks
    (root/stopped); with the UNet's and text encoder's weights before training and the full run's components after it."""
    from dreambooth_nb.common import runtime
    from dreambooth_nb.lora import train_lora
    from dreambooth_nb.models import load_components

    runtime.setup(device="CPU", show=False)
    root = tmp_path_factory.mktemp("lora")
    full_components = load_components(TINY)
    before = {net: {k: p.asnumpy().copy() for k, p in getattr(full_components, net).parameters_and_names()}
              for net in ("unet", "text_encoder")}
    full = train_lora(lora_test_config(root / "full"), full_components, progress=False)
    resumed = stopped_then_resumed_in_place(train_lora, lambda **c: lora_test_config(root / "stopped", **c),
                                            load_components(TINY))
    return dict(root=root, full=full, resumed=resumed, before=before, components=full_components)


def stopped_then_resumed_in_place(train, config_for, components, stop: int = 3):
    """Train `components` with config_for(), stopped after `stop` steps, then resumed from 'latest' in the same
    networks after every trainable weight was moved away (so only the checkpoint can bring it back): the resume of a
    run in the same kernel, which reuses the compiled step (no second compile). test_train_engine resumes in fresh
    networks, as a new process does."""
    import dreambooth_nb as db

    train(config_for(), components, progress=False, on_step=db.stop_after(stop))
    move_trainable_weights(components)
    return train(config_for(resume_from_checkpoint="latest"), components, progress=False)


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

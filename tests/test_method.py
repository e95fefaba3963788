"""The training-method interface (train/method.py): three sibling methods, each complete; an incomplete one is refused."""

import dataclasses

import pytest

from dreambooth_nb.train.method import HOOKS, TrainingMethod, missing_hooks


def methods():
    from dreambooth_nb.lora import LORA
    from dreambooth_nb.sdxl.training import SDXL_LORA
    from dreambooth_nb.train.engine import FULL_FINE_TUNING

    return {"full": FULL_FINE_TUNING, "lora": LORA, "sdxl-lora": SDXL_LORA}


@pytest.mark.parametrize("name", ["full", "lora", "sdxl-lora"])
def test_each_method_provides_every_hook(name):
    method = methods()[name]
    assert missing_hooks(method) == []
    assert isinstance(method, TrainingMethod)
    assert method.result_kind in ("pipeline", "adapters")
    assert method.command.startswith("dreambooth_nb.")


def test_methods_are_siblings_not_a_chain():
    classes = [type(m) for m in methods().values()]
    for cls in classes:
        assert not any(issubclass(cls, other) for other in classes if other is not cls), cls


def test_a_method_missing_a_hook_is_refused_naming_it():
    from dreambooth_nb.train.engine import FULL_FINE_TUNING, check_method

    @dataclasses.dataclass(frozen=True)
    class NoSave:
        pass

    incomplete = NoSave()
    for name in HOOKS:
        if name != "save_result":
            object.__setattr__(incomplete, name, getattr(FULL_FINE_TUNING, name))
    assert missing_hooks(incomplete) == ["save_result"]
    with pytest.raises(TypeError, match="lacks save_result"):
        check_method(incomplete)


def test_each_method_names_its_own_config_and_command():
    from dreambooth_nb.common.config import LoraTrainConfig, SDXLLoraTrainConfig, TrainConfig

    found = {name: (m.config_class, m.command) for name, m in methods().items()}
    assert found == {"full": (TrainConfig, "dreambooth_nb.train"), "lora": (LoraTrainConfig, "dreambooth_nb.train_lora"),
                     "sdxl-lora": (SDXLLoraTrainConfig, "dreambooth_nb.train_sdxl_lora")}


@pytest.mark.parametrize("config_class, name, value", [
    ("TrainConfig", "text_encoder_use_attention_mask", True),
    ("LoraTrainConfig", "lora_rank", 8),
    ("SDXLLoraTrainConfig", "text_encoder_lr", 1e-5),
    ("SDXLLoraTrainConfig", "random_flip", True),
    ("SDXLLoraTrainConfig", "repeats", 3),
])
def test_a_resume_that_changes_a_resume_must_match_setting_is_refused(tmp_path, config_class, name, value):
    from dreambooth_nb.common import config as configs
    from dreambooth_nb.train import checkpoint as ckpt

    config = getattr(configs, config_class)(output_dir=str(tmp_path))
    state = {"config": dataclasses.asdict(config)}
    ckpt.check_settings(tmp_path / "checkpoint-2", state, config)  # the same settings resume
    with pytest.raises(ckpt.CheckpointError, match=f"--{name} was"):
        ckpt.check_settings(tmp_path / "checkpoint-2", state, config.replace(**{name: value}))

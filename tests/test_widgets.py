"""Chapter 07 panels: build, refuse invalid values next to the field, Stop, and the experiment log."""

import threading

import pytest

pytest.importorskip("ipywidgets")

from dreambooth_nb.common.config import ConfigError, TrainConfig
from dreambooth_nb.train import TrainResult  # noqa: E402
from dreambooth_nb.widgets import ExperimentLog, TrainPanel, changed_flags, problems_by_flag  # noqa: E402


@pytest.fixture
def panel(tmp_path):
    config = TrainConfig(resolution=32, max_train_steps=8, seed=0, report_to="none", output_dir=str(tmp_path / "model"))
    return TrainPanel(config)


def fake_engine(stop_at=None, panel=None):
    """Stands in for train_dreambooth: calls on_step like the engine and turns KeyboardInterrupt into interrupted."""
    def train(config, components=None, progress=True, on_step=None):
        result = TrainResult(config.output_dir)
        try:
            for step in range(config.max_train_steps):
                loss = 1.0 / (step + 1)
                result.history.append({"step": step + 1, "loss": loss, "instance_loss": loss, "prior_loss": 0.0})
                result.steps = step + 1
                if stop_at is not None and step + 1 == stop_at:
                    panel.stop_button.click()
                on_step(result.history)
        except KeyboardInterrupt:
            result.interrupted = True
        return result
    return train


def test_panel_builds_from_its_config(panel):
    assert panel.fields["resolution"].value == 32
    assert panel.fields["max_train_steps"].value == 8
    assert panel.fields["learning_rate"].value == pytest.approx(panel.config.learning_rate)
    sliders = [w for w in panel.fields.values() if hasattr(w, "continuous_update") and "Slider" in type(w).__name__]
    assert sliders and all(not w.continuous_update for w in sliders)
    assert {b.description for b in (panel.train_button, panel.stop_button)} == {"Train", "Stop"}


def test_invalid_value_shows_message_next_to_field_and_keeps_config(panel):
    config = panel.config
    problems = panel.set("resolution", 60)
    assert problems and problems[0].startswith("--resolution=60")
    assert "--resolution=60" in panel.messages["resolution"].value
    assert panel.messages["learning_rate"].value == ""
    assert config.resolution == 32 and panel.train_button.disabled
    assert panel.set("resolution", 64) == []
    assert panel.messages["resolution"].value == "" and not panel.train_button.disabled
    assert panel.config is config and config.resolution == 64


def test_prior_without_class_prompt_is_refused_on_its_checkbox(panel):
    panel.set("with_prior_preservation", True)
    assert "--class_prompt" in panel.messages["with_prior_preservation"].value
    assert panel.config.with_prior_preservation is False


def test_empty_instance_prompt_is_refused(panel):
    panel.set("instance_prompt", "  ")
    assert "--instance_prompt" in panel.messages["instance_prompt"].value
    assert panel.config.instance_prompt == "a photo of sks star"


def test_problems_are_routed_by_flag():
    config = TrainConfig(resolution=30, learning_rate=-1.0, with_prior_preservation=True)
    routed = problems_by_flag(config, {"resolution", "learning_rate", "with_prior_preservation"})
    assert set(routed) == {"resolution", "learning_rate", "with_prior_preservation"}
    with pytest.raises(ConfigError):
        config.validate()


def test_stop_button_interrupts_training_in_the_background(panel, monkeypatch):
    monkeypatch.setattr("dreambooth_nb.train.train_dreambooth", fake_engine(stop_at=3, panel=panel))
    thread = panel.start()
    assert isinstance(thread, threading.Thread)
    thread.join(timeout=30)
    assert panel.result.interrupted and panel.result.steps == 3
    assert panel.log.rows[-1]["stopped"] and not panel.train_button.disabled and panel.stop_button.disabled


def test_log_records_each_run_with_changed_flags(panel, monkeypatch):
    monkeypatch.setattr("dreambooth_nb.train.train_dreambooth", fake_engine())
    panel.train()
    panel.set("learning_rate", 1e-4)
    panel.train()
    assert [r["changed"] for r in panel.log.rows] == [{}, {"learning_rate": pytest.approx(1e-4)}]
    last = [1 / 7, 1 / 8]  # the last 20 % of 8 steps: steps 7 and 8
    assert panel.log.rows[1]["instance"] == pytest.approx(sum(last) / 2) and panel.log.rows[1]["prior"] is None
    assert "--learning_rate=0.0001" in panel.log_view.value and "(documented run)" in panel.log_view.value


def test_changed_flags_and_empty_log():
    base = TrainConfig()
    assert changed_flags(base, base.replace(seed=3)) == {"seed": 3}
    assert "No runs yet" in ExperimentLog()._repr_html_()


@pytest.mark.slow
def test_real_engine_stops_when_stop_is_clicked(tmp_path):
    """Compiles the toy-world train step in a background thread; Stop after 2 steps saves the model."""
    import time

    import dreambooth_nb as db

    db.setup(show=False)
    panel = TrainPanel(db.playground_config(output_dir=str(tmp_path / "model"), max_train_steps=50))
    panel.start()
    deadline = time.time() + 300
    while panel.progress.value < 2 and panel.running and time.time() < deadline:
        time.sleep(0.2)
    panel.stop_button.click()
    panel.thread.join(timeout=120)
    assert panel.result.interrupted and 2 <= panel.result.steps < 50
    assert (tmp_path / "model" / "model_index.json").is_file()
    assert panel.log.rows[-1]["stopped"]


def test_lora_panels_add_a_switch_a_rank_an_adapter_picker_and_a_strength(tmp_path, monkeypatch):
    import dreambooth_nb as db
    from dreambooth_nb import lora
    from dreambooth_nb.common.config import LoraTrainConfig

    config = LoraTrainConfig(resolution=32, max_train_steps=4, seed=0, report_to="none", output_dir=str(tmp_path / "a"))
    train, generate = lora.LoraTrainPanel(config), lora.LoraGeneratePanel("toy-world", adapters=str(tmp_path / "a"))
    assert train.fields["lora_rank"].value == 4 and train.use_lora.value
    assert train.set("lora_rank", 8) == [] and train.config.lora_rank == 8
    assert train.fields["lora_layers"].value == "" and train.config.lora_layers is None  # the reference's layers
    calls = []
    monkeypatch.setattr(lora, "train_lora", lambda c, *a, **k: calls.append(("lora", c.lora_rank, c.lora_layers)) or fake_engine()(c, *a, **k))
    train.train()
    assert train.set("lora_layers", "all") == [] and train.config.lora_layers == "all"
    train.train()
    assert "lora_layers" in train.log.rows[-1]["changed"]
    assert train.set("lora_layers", "") == [] and train.config.lora_layers is None
    train.use_lora.value = False
    monkeypatch.setattr("dreambooth_nb.train.train_dreambooth", lambda c, *a, **k: calls.append(("full", type(c).__name__)) or fake_engine()(c, *a, **k))
    train.train()
    assert calls == [("lora", 8, None), ("lora", 8, "all"), ("full", "TrainConfig")]
    named = lora.LoraTrainPanel(config.replace(lora_layers="to_q,to_v"))  # a typed list stays until the choice changes
    assert named.fields["lora_layers"].value == "" and named.set("seed", 3) == [] and named.config.lora_layers == "to_q,to_v"
    for flag, value in db.EVERY_LAYER_LORA.items():  # chapter 09's every-layer recipe, set with the panel's widgets
        assert named.set(flag, value) == [] and getattr(named.config, flag) == value, flag
        widget = named.fields[flag]
        if type(widget).__name__ == "FloatSlider":  # a value between two of the slider's stops cannot be dragged to
            assert abs((value - widget.min) / widget.step - round((value - widget.min) / widget.step)) < 1e-9, flag
    assert list(generate.adapter.options) == ["none", "trained"] and generate.strength.value == 1.0


def test_the_generation_panel_swaps_base_and_fine_tuned_weights_in_one_pipeline(tmp_path):
    """Base and fine-tuned share one pipeline (one compiled sampler); the fine-tuned weights are swapped in, the
    base's back, and a new training run's weights replace the older run's."""
    import numpy as np

    from dreambooth_nb.common import assets, runtime
    from dreambooth_nb.models import load_components
    from dreambooth_nb.sampling import save_pipeline
    from dreambooth_nb.widgets import GeneratePanel

    runtime.setup(device="CPU", show=False)
    base = str(assets.tiny_model_path())

    def save_run(shift: float) -> np.ndarray:
        components = load_components(base)
        weight = components.unet.conv_in.weight
        runtime.write_in_place(weight, weight.asnumpy() + shift)
        save_pipeline(components, tmp_path / "tuned", TrainConfig(pretrained_model_name_or_path=base))
        return weight.asnumpy()

    def conv_in(pipe) -> np.ndarray:
        return pipe.unet.conv_in.weight.asnumpy()

    first = save_run(0.5)
    panel = GeneratePanel(base, str(tmp_path / "tuned"))
    pipe = panel.pipeline("base")
    original = conv_in(pipe)
    assert panel.pipeline("fine-tuned") is pipe and np.array_equal(conv_in(pipe), first)
    assert panel.pipeline("base") is pipe and np.array_equal(conv_in(pipe), original)
    second = save_run(-0.5)
    assert panel.pipeline("fine-tuned") is pipe and np.array_equal(conv_in(pipe), second)

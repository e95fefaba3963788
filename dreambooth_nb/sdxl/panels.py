"""Chapter 08's LoRA panels with a model switch: the toy-world Stable Diffusion or the toy-world SDXL."""

from __future__ import annotations

from ..common import defaults
from ..common.config import SDXLLoraTrainConfig, sdxl_config_of
from ..lora import LoraGeneratePanel, LoraTrainPanel
from .model import load_sdxl_pipeline
from .training import train_sdxl_lora

FAMILIES = ("SD", "SDXL")


class SDXLChoiceTrainPanel(LoraTrainPanel):
    """The LoRA training panel with a model switch: SD trains as in chapter 08; SDXL trains the same settings as
    DreamBooth LoRA on the toy SDXL (`train_dreambooth_lora_sdxl.py`'s method), into output_dir/../xl."""

    def make_fields(self, w) -> dict:
        self.family = w.ToggleButtons(options=FAMILIES, value="SDXL", description="model")
        return super().make_fields(w)

    def _build(self) -> None:
        super()._build()
        self.widget.children = (self.family, *self.widget.children)

    def run_config(self):
        """The panel's settings as an SD LoRA run, or as the same run on the toy SDXL."""
        config = super().run_config()
        return sdxl_config_of(config) if self.family.value == "SDXL" else config

    def run_training(self, config, components, progress: bool):
        """SDXL: always LoRA (as the reference script; full fine-tuning of SDXL is not offered); SD: chapter 08's."""
        if isinstance(config, SDXLLoraTrainConfig):
            return train_sdxl_lora(config, None, progress=progress, on_step=self.on_step)
        return super().run_training(config, components, progress)


class SDXLChoiceGeneratePanel(LoraGeneratePanel):
    """The LoRA generation panel with a model switch: each family samples its own base model with its own adapter."""

    def __init__(self, sd_adapters: str | None = None, xl_adapters: str | None = None, prompt: str | None = None):
        self.families = {"SD": (defaults.TOY_MODEL, sd_adapters), "SDXL": (defaults.TOY_XL_MODEL, xl_adapters)}
        super().__init__(defaults.TOY_MODEL, xl_adapters or sd_adapters, prompt)

    def extra_controls(self, w, style: dict) -> list:
        self.family = w.ToggleButtons(options=FAMILIES, value="SDXL", description="model", **style)
        return [self.family, *super().extra_controls(w, style)]

    def pipeline(self, name: str):
        """The chosen family's base pipeline (the SDXL one loaded once)."""
        if self.family.value == "SD":
            return super().pipeline(name)
        if "SDXL" not in self._pipes:
            self._pipes["SDXL"] = (None, load_sdxl_pipeline())
        return self._pipes["SDXL"][1]

    def prepared(self, name: str):
        """The chosen family's pipeline with its own adapter merged at the chosen strength."""
        self.adapter_folders["trained"] = self.families[self.family.value][1]
        return super().prepared(name)


def sdxl_panels(config=None) -> tuple[SDXLChoiceTrainPanel, SDXLChoiceGeneratePanel]:
    """Chapter 08's LoRA panels with an SD / SDXL switch, sharing the adapter folders."""
    from ..common.config import lora_playground_config

    train = SDXLChoiceTrainPanel(config or lora_playground_config())
    return train, SDXLChoiceGeneratePanel(train.config.output_dir, sdxl_config_of(train.config).output_dir)

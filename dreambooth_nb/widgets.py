"""Chapter 07: a playground of widget panels (train, generate, compare) around the same engine and config.

Every panel works with a widget front end (buttons run the work in a background thread, so the
Stop button stays live) and without one: `panel.run()` and `panel.generate()` do what the buttons
do, with the current settings, in the calling cell.
"""

from __future__ import annotations

import dataclasses
import html
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .common import defaults, scenes
from .common.assets import guidance_for
from .common.config import ConfigError, playground_config
from .common.viz import in_ipython
from .common.errors import MissingFileError

ERROR_STYLE = "color:#b00020"


def problems_by_flag(config, names) -> dict[str, list[str]]:
    """config.validate()'s problems, filed under the flag each message starts with (others under '')."""

    routed: dict[str, list[str]] = {}
    try:
        config.validate()
    except ConfigError as error:
        for problem in error.problems:
            flag = problem[2:].split("=")[0].split(" ")[0] if problem.startswith("--") else ""
            routed.setdefault(flag if flag in names else "", []).append(problem)
    return routed


def changed_flags(base, config) -> dict[str, Any]:
    """Settings of `config` that differ from `base` (the panel's starting point)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(base, f.name)}


# --------------------------------------------------------------------------- experiment log
@dataclass
class ExperimentLog:
    """One row per training run: what changed from the documented run, steps, final loss."""

    rows: list = field(default_factory=list)
    on_change: Callable[[], None] | None = None

    def record(self, base, config, result) -> dict:
        """Add a run; returns its row. Runs are compared by each loss term's mean over the last 20 % of their steps
        and by the fixed-noise validation loss: one step's loss jumps with the timestep it drew."""
        last = result.history[-1] if result.history else {}
        row = {"run": len(self.rows) + 1, "changed": changed_flags(base, config), "steps": result.steps,
               "instance": result.recent("instance_loss"), "prior": result.recent("prior_loss") if config.with_prior_preservation else None,
               "validation": last.get("val_loss"), "stopped": result.interrupted}
        self.rows.append(row)
        if self.on_change is not None:
            self.on_change()
        return row

    COLUMNS = ("run", "changed flags", "steps", "instance loss (last 20 %)", "prior loss (last 20 %)",
               "validation loss", "stopped")

    def cells(self, row: dict) -> list[str]:
        """A row's values as text, in COLUMNS order."""
        def number(value):
            return "-" if value is None else f"{value:.4f}"
        return [str(row["run"]), "", str(row["steps"]), number(row["instance"]), number(row["prior"]),
                number(row["validation"]), "yes" if row["stopped"] else ""]

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in self.COLUMNS)
        body = ""
        for r in self.rows:
            cells = self.cells(r)
            cells[1] = _flags_html(r["changed"])
            body += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        return f"<table class='db-log'><tr>{head}</tr>{body}</table>" if self.rows else "<p>No runs yet: press Train.</p>"

    def __str__(self) -> str:
        lines = [f"run {r['run']}: {r['steps']} steps, instance {self.cells(r)[3]}, prior {self.cells(r)[4]}, "
                 f"validation {self.cells(r)[5]}{' (stopped)' if r['stopped'] else ''}, changed: {r['changed'] or 'nothing'}"
                 for r in self.rows]
        return "\n".join(lines) or "no runs yet"


def _error_html(problems: list[str]) -> str:
    return f"<span style='{ERROR_STYLE}'>{html.escape(' '.join(problems))}</span>" if problems else ""


def _flags_html(changed: dict) -> str:
    return ", ".join(f"<code>--{k}={html.escape(repr(v))}</code>" for k, v in changed.items()) or "(documented run)"


# --------------------------------------------------------------------------- shared helpers
def _widgets():
    import ipywidgets

    return ipywidgets


def _in_background(work: Callable[[], None], status, done: Callable[[], None]) -> threading.Thread:
    """Run `work` in a thread (widget messages keep flowing); errors go to the `status` widget; then `done`."""
    def target():
        try:
            work()
        except Exception as error:  # shown next to the buttons: a thread has no cell to print into
            status.value = _error_html([f"{type(error).__name__}: {error}"])
        finally:
            done()

    thread = threading.Thread(target=target, name="dreambooth-nb-panel", daemon=True)
    thread.start()
    return thread


def _figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards)."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _picture(w, css: str):
    """An Image widget, hidden until it gets a picture (a thread can update it; a display() could not)."""
    image = w.Image(format="png", layout={"display": "none", "max_width": "720px"})
    image.add_class(css)
    return image


def _set_picture(image, png: bytes) -> None:
    image.value = png
    image.layout.display = None


class WidgetPlot:
    """The live loss plot of the Train button: viz.plot_loss redrawn into an Image widget in place."""

    def __init__(self, image, every: int = 2, smooth: int = 10):
        self.image, self.every, self.smooth = image, every, smooth

    def __call__(self, history, force: bool = False) -> None:
        from matplotlib.figure import Figure  # not pyplot: this runs in the training thread

        from .common.viz import plot_loss

        if not history or (len(history) % self.every and not force):
            return
        fig = Figure(figsize=(5, 3))
        ax = fig.subplots()
        plot_loss(history, ax, self.smooth)
        _set_picture(self.image, _figure_png(fig))


# --------------------------------------------------------------------------- training panel
def _train_fields(w) -> dict[str, Any]:
    """One widget per editable flag, named after the flag."""
    slider = dict(continuous_update=False, style={"description_width": "150px"}, layout={"width": "420px"})
    text = dict(continuous_update=False, style={"description_width": "150px"}, layout={"width": "420px"})
    return {
        "learning_rate": w.FloatLogSlider(min=-7, max=-2, step=0.25, description="learning rate", readout_format=".1e", **slider),
        "max_train_steps": w.IntSlider(min=1, max=1000, description="steps", **slider),
        "train_batch_size": w.IntSlider(min=1, max=8, description="batch size", **slider),
        "with_prior_preservation": w.Checkbox(description="prior preservation", indent=False),
        "prior_loss_weight": w.FloatSlider(min=0.0, max=3.0, step=0.05, description="prior weight λ", **slider),
        "num_class_images": w.IntSlider(min=1, max=200, description="class images", **slider),
        "train_text_encoder": w.Checkbox(description="train text encoder", indent=False),
        "resolution": w.IntText(description="resolution (px)", **text),
        "seed": w.IntText(description="seed", **text),
        "instance_prompt": w.Text(description="instance prompt", **text),
        "class_prompt": w.Text(description="class prompt", **text),
    }


class TrainPanel:
    """Sliders bound to a TrainConfig, a Train and a Stop button, a progress bar and a live loss plot."""

    def __init__(self, config=None, log: ExperimentLog | None = None, plot_every: int = 2):
        self.config = config if config is not None else playground_config()
        self.base = dataclasses.replace(self.config)
        self.log = log if log is not None else ExperimentLog()
        self.plot_every = plot_every
        self.result = None
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._build()

    # ----- widgets
    def _build(self) -> None:
        w = _widgets()
        self.fields = self.make_fields(w)
        self.messages = {name: w.HTML(layout={"width": "440px"}) for name in self.fields}
        for name, widget in self.fields.items():
            widget.value = self._widget_value(name)
            widget.observe(self._on_edit, names="value")
        self.train_button = w.Button(description="Train", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.progress = w.IntProgress(min=0, max=1, description="step 0")
        self.status = w.HTML()
        self.plot = _picture(w, "db-train-plot")
        self.log_view = w.HTML(self.log._repr_html_())
        self.log.on_change = self._refresh_log
        self.train_button.on_click(lambda _: self.start())
        self.progress_button = w.Button(description="Samples over steps", icon="th", layout={"width": "180px"})
        self.progress_button.on_click(lambda _: self.show_progress(in_cell=False))
        self.stop_button.on_click(lambda _: self.stop())
        rows = [w.HBox([self.fields[n], self.messages[n]]) for n in self.fields]
        buttons = w.HBox([self.train_button, self.stop_button, self.progress_button, self.progress, self.status])
        self.widget = w.VBox(rows + [buttons, self.plot, self.log_view])
        self.widget.add_class("db-train-panel")

    def make_fields(self, w) -> dict:
        """The editable flags' widgets (chapter 08's panel adds the LoRA switch and rank)."""
        return _train_fields(w)

    def _widget_value(self, name: str):
        value = getattr(self.config, name)
        return ("" if value is None else value) if name.endswith("prompt") else (0 if value is None else value)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ----- editing: validate the edited copy, refuse with a message next to the field
    def form(self) -> dict[str, Any]:
        """The settings the widgets show now (empty optional prompts read as None)."""
        values = {name: widget.value for name, widget in self.fields.items()}
        if not values["class_prompt"]:
            values["class_prompt"] = None
        return values

    def check(self) -> dict[str, list[str]]:
        """Validate a copy of the config with the form applied; show each problem next to its field.

        The panel's config takes the form's values only when the copy is valid.
        """
        edited = self.config.replace(**self.form())
        problems = problems_by_flag(edited, self.fields)
        for flag, message in self.messages.items():
            message.value = _error_html(problems.get(flag, []))
        self.status.value = _error_html(problems.get("", []))
        if not problems:
            for name, value in self.form().items():
                setattr(self.config, name, value)  # the panel's own config object: no globals
        self.train_button.disabled = bool(problems) or self.running
        return problems

    def set(self, name: str, value) -> list[str]:
        """Edit one setting as its widget would; returns the problems that refused the form (empty: accepted)."""
        self.fields[name].value = value  # fires _on_edit
        return [p for ps in self.check().values() for p in ps]

    def _on_edit(self, change) -> None:
        self.check()

    # ----- training
    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def on_step(self, history: list) -> None:
        """Called by the engine after every step: progress, live plot, and Stop (as KeyboardInterrupt)."""
        step = len(history)
        self.progress.value = min(step, self.progress.max)
        self.progress.description = f"step {step}"
        self.status.value = f"loss {history[-1]['loss']:.4f}"
        self.live(history)
        if self._stop.is_set():
            raise KeyboardInterrupt("Stop pressed")

    def train(self, components=None, progress: bool = False, in_cell: bool = False):
        """Train with the current config (what the Train button runs); records the run in the log.

        The live loss plot goes to the panel's picture, or to this cell's output when in_cell.
        """
        from .common.viz import LivePlot

        config = self.run_config()
        self._stop.clear()
        self.progress.max, self.progress.value = config.max_train_steps or 1, 0
        every = max(self.plot_every, (config.max_train_steps or 0) // 50)
        self.live = LivePlot(every=every) if in_cell else WidgetPlot(self.plot, every)
        self.result = self.run_training(config, components, progress)
        self.live(self.result.history, force=True)
        row = self.log.record(self.base, config, self.result)
        self.status.value = f"run {row['run']}: {row['steps']} steps, instance loss {self.log.cells(row)[3]}" + (
            f", prior loss {self.log.cells(row)[4]}" if row["prior"] is not None else "") + (
            " (stopped)" if self.result.interrupted else "")
        return self.result

    def run_config(self):
        """A copy of the panel's config for one run (a subclass may turn it into another kind of run)."""
        return dataclasses.replace(self.config)

    def run_training(self, config, components, progress: bool):
        """The engine call behind Train: full fine-tuning here (chapter 08's panel trains LoRA adapters instead)."""
        from .train import train_dreambooth

        return train_dreambooth(config, components, progress=progress, on_step=self.on_step)

    def run(self, components=None):
        """Train in this cell without a widget front end (nbval, scripts): a progress bar, a live plot, a summary."""
        result = self.train(components, progress=True, in_cell=True)
        print(self.status.value)
        return result

    def start(self) -> threading.Thread | None:
        """What the Train button does: train in a background thread so Stop stays clickable."""
        if self.running:
            return self.thread
        self.train_button.disabled, self.stop_button.disabled = True, False
        self.thread = _in_background(self.train, self.status, self._finished)
        return self.thread

    def show_progress(self, in_cell: bool = True):
        """What 'Samples over steps' does: the run's validation images, a row per validation step; returns the figure."""
        from .train.report import samples_over_steps

        try:
            fig = samples_over_steps(self.config.output_dir)
        except FileNotFoundError as error:
            self.status.value = _error_html([str(error)])
            return None
        png = _figure_png(fig)
        _set_picture(self.plot, png)
        if in_cell and in_ipython():
            from IPython.display import Image, display

            display(Image(png))
        return fig

    def stop(self) -> None:
        """What the Stop button does: the next step ends training; the engine saves what it has."""
        self._stop.set()
        self.status.value = "stopping after this step ..."

    def _finished(self) -> None:
        self.train_button.disabled, self.stop_button.disabled = False, True

    def _refresh_log(self) -> None:
        self.log_view.value = self.log._repr_html_()


# --------------------------------------------------------------------------- generation panel
class GeneratePanel:
    """Prompt, seed, steps and guidance widgets; Generate shows a gallery, Compare puts two models side by side."""

    def __init__(self, model: str | None = None, tuned: str | None = None, prompt: str | None = None):
        config = playground_config()
        self.models = {"base": model or config.pretrained_model_name_or_path, "fine-tuned": tuned or config.output_dir}
        self._pipes: dict[str, tuple] = {}
        self.images: list = []
        self.thread: threading.Thread | None = None
        self._build(prompt or scenes.SUBJECT_PROMPT)

    def _build(self, prompt: str) -> None:
        w = _widgets()
        style = dict(style={"description_width": "130px"}, layout={"width": "420px"})
        slider = dict(continuous_update=False, **style)
        self.prompt = w.Text(prompt, description="prompt", continuous_update=False, **style)
        self.negative_prompt = w.Text("", description="negative prompt", continuous_update=False, **style)
        self.seed = w.BoundedIntText(0, min=0, max=2**31 - 1, description="seed", **style)
        self.steps = w.IntSlider(defaults.inference_steps(), min=1, max=100, description="steps", **slider)
        self.guidance = w.FloatSlider(guidance_for(self.models["base"]), min=1.0, max=15.0, step=0.5,
                                      description="guidance scale", **slider)
        self.count = w.IntSlider(4, min=1, max=8, description="images", **slider)
        self.model = w.Dropdown(options=list(self.models), value="base", description="model", **style)
        self.generate_button = w.Button(description="Generate", button_style="primary", icon="image")
        self.compare_button = w.Button(description="Compare base / fine-tuned", icon="columns", layout={"width": "240px"})
        self.status = w.HTML()
        self.gallery = _picture(w, "db-gallery")
        self.generate_button.on_click(lambda _: self._start(self.generate))
        self.compare_button.on_click(lambda _: self._start(self.compare))
        controls = [self.prompt, self.negative_prompt, self.seed, self.steps, self.guidance, self.count, self.model,
                    *self.extra_controls(w, style)]
        buttons = w.HBox([self.generate_button, self.compare_button, self.status])
        self.widget = w.VBox(controls + [buttons, self.gallery])
        self.widget.add_class("db-generate-panel")

    def extra_controls(self, w, style: dict) -> list:
        """Widgets a subclass adds under the model picker (none here)."""
        return []

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def pipeline(self, name: str):
        """One pipeline for both models: the base model's, with the named model's weights swapped in when it holds
        the other one (or an older run of it), so base and fine-tuned share one compiled sampler and one copy of its
        graphs in memory. A fine-tuned model that does not fit the base's networks gets a pipeline of its own."""
        from .common.assets import resolve_model
        from .common.errors import InputError
        from .infer import load_pipeline, swap_weights

        source = self.models[name]
        stamp = _model_stamp(source)
        if stamp is None and name != "base":
            raise MissingFileError(f"No fine-tuned model in {source}: press Train (or run panel.run()) first.")
        if name in self._pipes and self._pipes[name][0] == stamp:  # a pipeline of its own, still current
            return self._pipes[name][1]
        if "shared" not in self._pipes:
            self._pipes["shared"] = (("base", _model_stamp(self.models["base"])), load_pipeline(self.models["base"]))
        held, pipe = self._pipes["shared"]
        if held != (name, stamp):
            try:
                swap_weights(pipe, source if name != "base" else resolve_model(source))
            except InputError:  # trained from another model: its own pipeline (the shared one swapped anew next time)
                self._pipes["shared"] = ((None, None), pipe)
                self._pipes[name] = (stamp, load_pipeline(source))
                return self._pipes[name][1]
            self._pipes["shared"] = ((name, stamp), pipe)
        return pipe

    def sample(self, name: str) -> list:
        """Images from one model with the panel's prompt, seeds seed..seed+n-1, steps and guidance."""
        from .sampling import generate

        n = self.count.value
        return generate(self.prepared(name), [self.prompt.value] * n, list(range(self.seed.value, self.seed.value + n)),
                        num_inference_steps=self.steps.value, guidance_scale=self.guidance.value,
                        negative_prompt=self.negative_prompt.value or None)

    def prepared(self, name: str):
        """The pipeline to sample the named model with (chapter 08's panel merges an adapter into it first)."""
        return self.pipeline(name)

    def generate(self, in_cell: bool = True) -> list:
        """What Generate does: a gallery from the chosen model (in the panel, and in this cell); returns the images."""
        from .common.viz import show_images

        self.images = self.sample(self.model.value)
        seeds = range(self.seed.value, self.seed.value + len(self.images))
        self._present(show_images(self.images, titles=[f"seed {s}" for s in seeds],
                                  suptitle=f"{self.model.value}: {self.prompt.value}"), in_cell)
        return self.images

    def _present(self, fig, in_cell: bool) -> None:
        png = _figure_png(fig)
        _set_picture(self.gallery, png)
        if in_cell and in_ipython():
            from IPython.display import Image, display

            display(Image(png))

    def compare(self, in_cell: bool = True) -> list:
        """What Compare does: base (top row) and fine-tuned (bottom row) with the same seeds."""
        from .common.viz import show_images

        base, tuned = self.sample("base"), self.sample("fine-tuned")
        self.images = base + tuned
        titles = [f"base, seed {s}" for s in range(self.seed.value, self.seed.value + len(base))]
        titles += [f"fine-tuned, seed {s}" for s in range(self.seed.value, self.seed.value + len(tuned))]
        self._present(show_images(self.images, titles=titles, ncols=len(base), suptitle=self.prompt.value), in_cell)
        return self.images

    def _start(self, work: Callable[..., list]) -> threading.Thread | None:
        """What the buttons do: sample in a background thread, the picture going to the panel."""
        if self.thread is not None and self.thread.is_alive():
            return self.thread
        self.generate_button.disabled = self.compare_button.disabled = True
        self.status.value = "sampling ..."
        self.thread = _in_background(lambda: self._report(work), self.status, self._finished)
        return self.thread

    def _report(self, work: Callable[..., list]) -> None:
        work(in_cell=False)
        self.status.value = f"{len(self.images)} images"

    def _finished(self) -> None:
        self.generate_button.disabled = self.compare_button.disabled = False


def _model_stamp(source: str) -> float | None:
    """When a local model folder last changed (None when it is not a local folder)."""
    folder = Path(source)
    files = [p for p in folder.rglob("*") if p.is_file()] if (folder / "model_index.json").is_file() else []
    return max(p.stat().st_mtime for p in files) if files else None


def playground(config=None) -> tuple[TrainPanel, GeneratePanel]:
    """A training panel and a generation panel that share the model folder."""
    train = TrainPanel(config)
    return train, GeneratePanel(train.config.pretrained_model_name_or_path, train.config.output_dir)

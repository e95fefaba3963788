"""Prepare MindSpore once, the same way for notebooks, the demo and the command line (chapter 00 explains it)."""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import io
import os
import platform
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import defaults
from .files import cache_dir
from .tables import Table
from .viz import in_ipython
from .errors import InputError

# The pair this package is tested with; setup() warns when another pair is installed.
TESTED_VERSIONS = {"mindspore": "2.7.1", "mindone": "0.3.0"}
TESTED_ON = "x86_64 CPU with Python 3.11"
DEVICE_ENV = "DREAMBOOTH_NB_DEVICE"
DEVICE_ORDER = ("Ascend", "GPU", "CPU")
# Set by the launchers in every worker: msrun (MS_ROLE), a rank table (RANK_TABLE_FILE), mpirun (OMPI_*).
LAUNCHER_ENV = ("MS_ROLE", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE")


@dataclass(repr=False)
class RuntimeInfo(Table):
    """What setup() chose, shown as a small table."""

    device: str
    mode: str
    seed: int
    versions: dict = field(default_factory=dict)
    onednn_isa: str | None = None
    notes: list = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        rows = [("device", self.device), ("mode", self.mode), ("seed", str(self.seed))]
        rows += [(name, version) for name, version in self.versions.items()]
        if self.onednn_isa:
            rows.append(("ONEDNN_MAX_CPU_ISA", self.onednn_isa))
        return rows

    def __str__(self) -> str:
        return "\n".join([super().__str__()] + [f"note: {n}" for n in self.notes])

    def summary_line(self) -> str:
        """One line for a command's start: versions, device, mode, seed (and any version note)."""
        v = self.versions
        line = (f"MindSpore {v.get('mindspore')} + mindone {v.get('mindone')} on {self.device} "
                f"({self.mode.upper()} mode), seed {self.seed}")
        return "\n".join([line] + [f"note: {n}" for n in self.notes])

    def _repr_html_(self) -> str:
        import html

        return super()._repr_html_() + "".join(f"<p>{html.escape(n)}</p>" for n in self.notes)


def installed_version(package: str) -> str:
    """The installed version of a distribution, or 'not installed'."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def peak_rss_mb() -> float | None:
    """The most resident memory this process has used so far, in MB (None where the OS does not tell)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024  # bytes on macOS, KB on Linux


def launched_by_launcher() -> bool:
    """True inside a worker that msrun (or a rank table / mpirun) started."""
    return any(os.environ.get(name) for name in LAUNCHER_ENV)


def quiet_environment() -> None:
    """Keep MindSpore's C++ log and transformers' advisories out of notebook output."""
    os.environ.setdefault("GLOG_v", "3")
    os.environ.setdefault("GLOG_logtostderr", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("MS_OM_PATH", str(cache_dir() / "mindspore-ir"))  # analyze_fail.ir goes here, not into the working folder
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(mindone|mindspore|transformers)")


def cpu_has_avx512() -> bool:
    """True on x86 CPUs that advertise AVX-512 (Linux only; False elsewhere)."""
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def needs_onednn_avx2_cap(mindspore_version: str) -> bool:
    """MindSpore >= 2.8 on AVX-512 CPUs sends convolutions to oneDNN's slow reference path.

    Capping oneDNN at AVX2 makes it pick its fast GEMM kernels (measured 80x faster per conv with
    2.10.0). 2.7.1 picks a fast kernel by itself, so nothing is changed there.
    """
    try:
        major, minor = (int(part) for part in mindspore_version.split(".")[:2])
    except ValueError:
        return False
    return platform.machine() in {"x86_64", "AMD64"} and (major, minor) >= (2, 8) and cpu_has_avx512()


def apply_onednn_fix() -> str | None:
    """Set ONEDNN_MAX_CPU_ISA=AVX2 where it helps; must run before MindSpore's first op."""
    if "ONEDNN_MAX_CPU_ISA" in os.environ:
        return os.environ["ONEDNN_MAX_CPU_ISA"]
    if needs_onednn_avx2_cap(installed_version("mindspore")):
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        return "AVX2"
    return None


def import_quietly(module: str):
    """Import a module while swallowing what it prints on import (mindone prints banners)."""
    import importlib

    with contextlib.redirect_stdout(io.StringIO()):
        return importlib.import_module(module)


def write_in_place(param, value) -> None:
    """Copy an array into a weight's own memory. Compiled graphs see it: Parameter.set_data swaps the memory
    instead, and a graph with a loop compiled before (the sampler's) would go on reading the old values."""
    import mindspore as ms

    param.copy_(ms.Tensor(value, dtype=param.dtype))


def write_weights(params: dict, arrays: dict, source: str, advice: str) -> None:
    """Copy arrays into the parameters of the same key, in place; every one must be there, with the same shape
    (checked before anything is written). InputError naming `source`, with `advice`, otherwise."""
    missing = [key for key in params if key not in arrays]
    if missing:
        raise InputError(f"{source} lacks {len(missing)} weights (e.g. {missing[0]}): it was written for another "
                         f"model or other training settings. {advice}")
    for key, p in params.items():
        if tuple(arrays[key].shape) != tuple(p.shape):
            raise InputError(f"{source}: {key} has shape {tuple(arrays[key].shape)}, the model expects "
                             f"{tuple(p.shape)}. {advice}")
    for key, p in params.items():
        write_in_place(p, arrays[key])


def available_device() -> str:
    """The best device MindSpore can use here: Ascend, then GPU, then CPU."""
    import mindspore as ms

    for device in DEVICE_ORDER[:-1]:
        with contextlib.redirect_stderr(io.StringIO()):
            try:
                if ms.hal.is_available(device):
                    return device
            except (RuntimeError, ValueError, AttributeError):
                continue
    return "CPU"


def choose_device(requested: str | None = None) -> str:
    """The device to use: the argument, else DREAMBOOTH_NB_DEVICE, else the best available."""
    wanted = requested or os.environ.get(DEVICE_ENV) or "auto"
    if wanted.lower() == "auto":
        return available_device()
    for device in DEVICE_ORDER:
        if wanted.lower() == device.lower():
            return device
    raise InputError(
        f"Unknown device {wanted!r} (from {'the device argument' if requested else DEVICE_ENV}). "
        f"Use one of: auto, {', '.join(DEVICE_ORDER)}."
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and MindSpore from one number."""
    import mindspore as ms
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


def version_notes(versions: dict) -> list[str]:
    """A note for each package whose version differs from the tested pair."""
    notes = []
    for package, tested in TESTED_VERSIONS.items():
        found = versions.get(package)
        if found != tested:
            notes.append(
                f"{package} {found} is installed; dreambooth-nb is tested with {package}=={tested} "
                f"(pair: mindspore {TESTED_VERSIONS['mindspore']} + mindone {TESTED_VERSIONS['mindone']}, "
                f"{TESTED_ON}). Run `make install` to get the tested stack."
            )
    return notes


_STATE: dict = {}


def setup(device: str | None = None, mode: str = "graph", seed: int = defaults.SEED, show: bool = True) -> RuntimeInfo:
    """Quiet the logs, pick the device and the compiled mode, seed everything; return what was chosen (printed outside notebooks).

    device: "auto" (default), "Ascend", "GPU" or "CPU"; DREAMBOOTH_NB_DEVICE overrides "auto".
    mode: "graph" compiles every network call (use it: PyNative is ~50x slower for small UNets);
    "pynative" runs op by op, for debugging.
    """
    if mode not in {"graph", "pynative"}:
        raise InputError(f"mode must be 'graph' or 'pynative', not {mode!r}.")
    quiet_environment()
    isa = apply_onednn_fix()
    import mindspore as ms

    chosen = choose_device(device)
    try:
        ms.set_device(chosen)
    except RuntimeError as error:  # kernels already ran (a pipeline sampled before setup): the device is fixed now
        if "initialized" not in str(error):
            raise
        chosen = ms.get_context("device_target")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    seed_everything(seed)
    import_quietly("mindone.diffusers")
    import_quietly("mindone.transformers")
    import_quietly("mindone.diffusers.utils.logging").disable_progress_bar()
    versions = {p: installed_version(p) for p in ("mindspore", "mindone", "transformers")}
    versions["python"] = platform.python_version()
    info = RuntimeInfo(chosen, mode, seed, versions, isa, version_notes(versions))
    _STATE["info"] = info
    if show:
        _show(info)
    return info


def ensure_setup() -> RuntimeInfo:
    """The RuntimeInfo of the last setup() call, running setup() quietly first if none ran yet."""
    return _STATE.get("info") or setup(show=False)


def _show(info: RuntimeInfo) -> None:
    """Print the table outside IPython; in a notebook the returned RuntimeInfo renders itself (once)."""
    if not in_ipython():
        print(info)


@dataclass(repr=False)
class SpeedCheck(Table):
    """How fast one UNet forward runs compiled (GRAPH mode) and op by op (PyNative dispatch)."""

    input_shape: tuple
    compile_s: float
    compiled_ms: float
    eager_ms: float

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("UNet forward, latents", str(self.input_shape)),
            ("first call (compiles)", f"{self.compile_s:.1f} s"),
            ("compiled", f"{self.compiled_ms:.0f} ms"),
            ("op by op", f"{self.eager_ms:.0f} ms"),
            ("speed-up", f"{self.eager_ms / self.compiled_ms:.0f}x"),
        ]


def speed_check(unet, batch: int = 2, repeats: int = 3) -> SpeedCheck:
    """Time a UNet forward compiled (a Cell call in GRAPH mode) and op by op (its construct called directly).

    unet: any UNet2DConditionModel, e.g. db.load_components().unet.
    """
    import time

    import mindspore as ms
    import numpy as np

    cfg = unet.config
    size = cfg.sample_size
    rng = np.random.default_rng(0)
    latents = ms.Tensor(rng.standard_normal((batch, cfg.in_channels, size, size), dtype=np.float32))
    steps = ms.Tensor(np.linspace(1, 999, batch).astype(np.int32))
    text = ms.Tensor(rng.standard_normal((batch, 77, cfg.cross_attention_dim), dtype=np.float32))

    def seconds(fn) -> float:
        start = time.perf_counter()
        fn(latents, steps, text)[0].asnumpy()
        return time.perf_counter() - start

    from .waits import said_wait

    shape = f"UNet {size} px, batch {batch}"
    with said_wait("compiling the UNet's forward pass", f"speed check, compile: {shape}"):
        compile_s = seconds(unet)
    compiled = min(seconds(unet) for _ in range(repeats))
    with said_wait("the same forward pass op by op (PyNative), twice", f"speed check, eager: {shape}",
                   first_time="the first time here: up to a minute on a CPU"):
        seconds(unet.construct)  # the first eager call also initialises kernels
        eager = seconds(unet.construct)
    return SpeedCheck(tuple(latents.shape), compile_s, compiled * 1e3, eager * 1e3)

"""Write a trained model in a layout diffusers on PyTorch loads: a diffusers folder, or one original-layout file.

`python -m dreambooth_nb.export SOURCE --to diffusers-pt DEST` or `--to single-file DEST.safetensors`. The tensors
are copied exactly; names, layout and the safetensors format tag change. SOURCE is a training --output_dir, any
saved pipeline folder, or a single .safetensors file (--to diffusers-pt turns it back into a folder). A LoRA run's
adapter file needs no export: diffusers on PyTorch loads it as it is (the command says so and writes nothing).
"""

from __future__ import annotations

import os
from pathlib import Path

from .common.commands import QuietParser, run_command
from .common.errors import MissingFileError
from .common.files import share_modes, write_json_atomic

TARGETS = ("diffusers-pt", "single-file")
# How export knows a target is its own earlier output (and may be replaced): a folder holds this file; a single file
# carries this key in its safetensors metadata. Anything else already there is the user's and is never overwritten.
EXPORT_MARK = ".dreambooth-nb-export.json"
EXPORT_TAG = "dreambooth_nb_export"


def earlier_export(dest: Path) -> bool:
    """True when `dest` is what an earlier export wrote (its mark is there)."""
    if dest.is_dir():
        return (dest / EXPORT_MARK).is_file()
    from safetensors import safe_open

    try:
        with safe_open(str(dest), framework="np") as f:
            return EXPORT_TAG in (f.metadata() or {})
    except Exception:  # not a safetensors file at all
        return False


def check_target(dest: Path, to: str) -> None:
    """Refuse a target that already holds something other than an empty folder or an earlier export of ours."""
    from .common.formats import FormatError

    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        return
    if dest.is_dir() != (to == "diffusers-pt"):
        kind = "a folder" if dest.is_dir() else "a file"
        raise FormatError(f"{dest} is {kind}; --to {to} writes {'a folder' if to == 'diffusers-pt' else 'one file'}: "
                          f"give another name. Nothing was written.")
    if not earlier_export(dest):
        raise FormatError(f"{dest} already holds files that no export wrote (it has no {EXPORT_MARK}"
                          f"{'' if dest.is_dir() else ' tag'}), and export replaces its target whole: give a new "
                          f"name, or move those files away first. Nothing was written.")


def base_model_folder(source: Path) -> Path | None:
    """The local folder of the model a training run started from (None for a hub id or an untrained folder)."""
    from .common.assets import resolve_model, training_settings

    base = training_settings(source).get("pretrained_model_name_or_path") if source.is_dir() else None
    if not base:
        return None
    folder = Path(resolve_model(base))
    return folder if folder.is_dir() else None


def export_model(source: str | os.PathLike, to: str, dest: str | os.PathLike, base: str | os.PathLike | None = None,
                 config: str | os.PathLike | None = None) -> Path:
    """Write `source` as `to` ('diffusers-pt' folder or 'single-file') at `dest`; parts it lacks come from `base`."""
    from .common import formats

    source, dest = Path(source).expanduser(), Path(dest).expanduser()
    if not source.exists():
        raise MissingFileError(f"{source} does not exist: pass a training --output_dir, a saved pipeline folder or "
                                f"a .safetensors single file.")
    if to not in TARGETS:
        raise formats.FormatError(f"--to {to!r} is not a target: use one of {', '.join(TARGETS)}.")
    if formats.detect_layout(source) == "lora":
        raise formats.FormatError(
            f"{source} holds a LoRA adapter, already one file ({formats.LORA_FILES[0]}) that diffusers on PyTorch "
            f"loads as it is: pipe.load_lora_weights({str(source)!r}). Export the base model it was trained on "
            f"instead.")
    check_target(dest, to)
    if source.is_file():
        if to != "diffusers-pt":
            raise formats.FormatError(f"{source} is already a single file; export it --to diffusers-pt.")
        return marked(formats.single_file_to_folder(source, dest, config), source)
    fill = Path(base).expanduser() if base else base_model_folder(source)
    if to == "diffusers-pt":
        return marked(formats.to_diffusers_pt(source, dest, fill), source)
    return share_modes(formats.write_single_file(source, dest, fill, extra_metadata={EXPORT_TAG: str(source)}))


def marked(folder: Path, source: Path) -> Path:
    """An exported folder with its mark (so a later export may replace it) and shareable file modes."""
    write_json_atomic(folder / EXPORT_MARK, {"exported_from": str(source)})
    return share_modes(folder)


def loading_hint(to: str, dest: Path) -> str:
    """How PyTorch's diffusers loads what was written (offline included)."""
    if to == "diffusers-pt":
        from .common.formats import detect_layout

        pipeline = "StableDiffusionXLPipeline" if detect_layout(dest) == "sdxl" else "StableDiffusionPipeline"
        return f"diffusers: {pipeline}.from_pretrained({str(dest)!r}); mindone reads it too"
    return (f"diffusers: StableDiffusionPipeline.from_single_file({str(dest)!r}, config=<a diffusers folder of this "
            f"model, e.g. one written with --to diffusers-pt>); dreambooth_nb takes it as "
            f"--pretrained_model_name_or_path={dest}")


def main(argv: list[str] | None = None) -> int:
    parser = QuietParser(prog="python -m dreambooth_nb.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a training --output_dir, a saved pipeline folder, or a .safetensors single file")
    parser.add_argument("--to", required=True, choices=TARGETS,
                        help="diffusers-pt: a folder for diffusers' from_pretrained; single-file: one .safetensors in "
                             "the original Stable Diffusion layout, for from_single_file")
    parser.add_argument("dest", help="the folder (diffusers-pt) or the .safetensors file (single-file) to write")
    parser.add_argument("--base", help="where parts the run did not save come from (default: its base model)")
    parser.add_argument("--config", help="for a single file without configs inside: a diffusers folder of the same model")
    args = parser.parse_args(argv)

    def work() -> int:
        dest = export_model(args.source, args.to, args.dest, args.base, args.config)
        size = sum(p.stat().st_size for p in ([dest] if dest.is_file() else dest.rglob("*")) if p.is_file())
        print(f"wrote {dest} ({size / 2**20:.1f} MB); {loading_hint(args.to, dest)}")
        return 0

    return run_command("export", work)


if __name__ == "__main__":
    raise SystemExit(main())

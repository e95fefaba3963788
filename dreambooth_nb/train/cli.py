"""Command line: parse the reference script's flags into a TrainConfig and run the same engine."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields


from ..common.commands import EXIT_ERROR, EXIT_INTERRUPTED, QuietParser, run_command
from ..common.config import ConfigError, TrainConfig, offered_fields

GROUP_TITLES = {
    "model": "model", "data": "data and prior preservation", "training": "training",
    "device": "devices and precision", "validation": "validation and logging",
    "hub": "hub (needs a network)", "unsupported": "accepted for compatibility, refused",
}


def _value_type(annotation: str):
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("list", str)):
        if annotation.startswith(name):
            return kind
    return str


def _yes_no(text: str) -> bool:
    """A boolean flag's value: true/false, yes/no, 1/0 (the reference's `type=bool` took any text as True)."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def build_parser(config_class=TrainConfig, prog: str = "python -m dreambooth_nb.train",
                 description: str = "DreamBooth fine-tuning with MindSpore + mindone; flags match mindone's "
                                    "train_dreambooth.py.") -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the config class, grouped, with the reference defaults."""
    parser = QuietParser(
        prog=prog,
        allow_abbrev=False,  # a mistyped flag is an error, never silently another flag
        description=description,
    )
    parser.add_argument("--device", default=None, help="auto (default), Ascend, GPU or CPU.")
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for f in offered_fields(config_class):
        meta = f.metadata
        default = f.default if f.default is not MISSING else f.default_factory()
        kind = _value_type(str(f.type))
        group = groups[meta["group"]]
        if kind is bool and default is True:  # the reference's `type=bool, default=True` flags take a value
            group.add_argument(f"--{f.name}", type=_yes_no, nargs="?", const=True, default=True, help=meta["help"])
            continue
        if kind is bool:
            group.add_argument(f"--{f.name}", action="store_true", default=default, help=meta["help"])
            continue
        choices = [c for c in meta["choices"] if c is not None] if meta["choices"] else None
        group.add_argument(f"--{f.name}", type=kind, default=default, choices=choices,
                           nargs=meta["nargs"], help=f"{meta['help']} (default: {default})")
    return parser


def parse_config(argv: list[str] | None = None, config_class=TrainConfig, parser=None):
    """A config from command-line arguments (argparse exits with one line on unknown flags)."""
    namespace = (parser or build_parser(config_class)).parse_args(argv)
    values = {f.name: getattr(namespace, f.name) for f in offered_fields(config_class)}
    return config_class(**values), namespace


def checked(config) -> bool:
    """Print every problem of the flags at once (nothing started) and the notes; True when the config can run."""
    try:
        config.validate()
    except ConfigError as err:
        print(f"error: these flags cannot work (nothing was started):\n{err}", file=sys.stderr)
        return False
    for note in config.notes():
        print(f"warning: {note}", file=sys.stderr)
    return True


def start(device: str | None, seed: int) -> None:
    """Set MindSpore up and say so in one line (a signal during its import is honoured once the import is done)."""
    from ..common import runtime
    from ..common.commands import signals_deferred

    with signals_deferred() as stop_requested:
        info = runtime.setup(device=device, seed=seed, show=False)
    if stop_requested():
        raise KeyboardInterrupt("stopped while MindSpore started")
    print(info.summary_line())


def finished(result) -> int:
    """The closing line of a run and its exit code."""
    state = "interrupted after" if result.interrupted else "finished after"
    untrained = " (untrained: no step was done)" if result.steps == 0 else ""
    print(f"{state} {result.steps} steps; model saved in {result.output_dir}{untrained}")
    return EXIT_INTERRUPTED if result.interrupted else 0


def hub_repo(config) -> str:
    """The repository to push to: --hub_model_id, else the output folder's name (as the reference)."""
    from pathlib import Path

    return config.hub_model_id or Path(config.output_dir).resolve().name


def push_ready(config, result_kind: str = "pipeline") -> str | None:
    """With --push_to_hub: the token, after checking (in seconds, before any work) that a push can work, and that
    what the run will leave (result_kind: a pipeline or an adapter folder) is something the hub push takes."""
    if not config.push_to_hub:
        return None
    from ..common.hub import push_preflight, require_pushable_kind, resolve_token

    require_pushable_kind(result_kind)
    token = resolve_token(config.hub_token)
    push_preflight(hub_repo(config), token, output_dir=config.output_dir)
    return token


def push(config, token: str) -> None:
    """Upload the finished output folder to its (private) hub repository; one line says where."""
    from ..common.hub import push_folder

    url = push_folder(config.output_dir, hub_repo(config), token, private=True)
    print(f"pushed {config.output_dir} to {url} (private)")


def main(argv: list[str] | None = None, method=None) -> int:
    """The command line of a training method (train.method; full fine-tuning when None): validate its flags, set up
    MindSpore, train, say where the result went (exit 2 on a user mistake). `python -m dreambooth_nb.train`,
    `train_lora` and `train_sdxl_lora` are this function with their method."""
    if method is None:
        from .engine import FULL_FINE_TUNING as method
    parser = build_parser(method.config_class, prog=f"python -m {method.command}", description=method.description)
    config, namespace = parse_config(argv, method.config_class, parser)
    if not checked(config):
        return EXIT_ERROR

    def work() -> int:
        token = push_ready(config, method.result_kind)
        start(namespace.device, config.seed_used)  # imports MindSpore with signals deferred
        from .engine import train_dreambooth

        result = train_dreambooth(config, method=method)
        code = finished(result)
        if config.push_to_hub and not result.interrupted:
            push(config, token)
        return code

    return run_command(method.command.rsplit(".", 1)[-1], work, config.output_dir)


def run_in_fresh_process(config) -> dict:
    """Run a config's command line (`python -m dreambooth_nb.train ...`, or train_lora's) in a new Python, as a
    practitioner would; returns its resources.json (step times and peak memory of that process alone)."""
    import json
    import os
    import subprocess
    from pathlib import Path

    from ..common.commands import ends_with_this_process
    from ..common.errors import UserError
    from ..common.waits import said_wait
    from .engine import RESOURCES_FILE

    command = [sys.executable, "-m", config.COMMAND, *config.to_args()]
    print("$", config.command(), flush=True)
    key = f"fresh process: {config.COMMAND} {config.resolution} px, {config.max_train_steps} steps"
    with said_wait("training in a fresh process (start, compile, train, save)", key,
                   first_time="the first time here: a minute or more on a CPU"):
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              preexec_fn=ends_with_this_process())
        if done.returncode != 0:  # inside the wait: a run that failed is not remembered as how long a run takes
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise UserError(f"`{config.command()}` failed with exit status {done.returncode}:\n{tail}")
    return json.loads((Path(config.output_dir) / RESOURCES_FILE).read_text(encoding="utf-8"))

"""`python -m dreambooth_nb.train`: the reference script's flags, and clear refusals (exit 2, no traceback)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreambooth_nb.train import cli

from reference_flags import REFERENCE_DEFAULTS, REFERENCE_FLAGS  # noqa: E402


def _argv(flags: dict) -> list[str]:
    argv = []
    for name, value in flags.items():
        if value is True:
            argv.append(f"--{name}")
        elif isinstance(value, list):
            argv += [f"--{name}", *value]
        else:
            argv.append(f"--{name}={value}")
    return argv


def test_every_reference_flag_is_parsed():
    config, _ = cli.parse_config(_argv(REFERENCE_FLAGS))
    for name, value in REFERENCE_FLAGS.items():
        assert getattr(config, name) == value, name


def test_reference_defaults():
    config, _ = cli.parse_config([])
    for name, value in REFERENCE_DEFAULTS.items():
        assert getattr(config, name) == value, name


def test_config_round_trips_through_the_command_line_except_the_token():
    config, _ = cli.parse_config(_argv(REFERENCE_FLAGS))
    again, _ = cli.parse_config(config.to_args())
    assert again == config.replace(hub_token=None)
    assert "--hub_token" not in config.command() and "(hidden)" in config._repr_html_()


@pytest.mark.parametrize("argv, expected", [
    (["--push_to_hub", "--hub_token=hf_fake"], "drop --push_to_hub, train, and push later with"),
    (["--push_to_hub", "--hub_model_id=a/b/c", "--hub_token=hf_fake"], "a/b/c"),
    (["--enable_xformers_memory_efficient_attention"], "Ascend"),
    (["--use_8bit_adam"], "--use_8bit_adam"),
    (["--allow_tf32"], "--allow_tf32"),
    (["--set_grads_to_none"], "--set_grads_to_none"),
    (["--with_prior_preservation"], "--class_prompt"),
    (["--train_text_encoder", "--pre_compute_text_embeddings"], "--pre_compute_text_embeddings"),
    (["--distributed"], "msrun"),
    (["--resolution=30"], "--resolution=30"),
    (["--report_to=wandb"], "--report_to"),
    (["--instance_data_dir=/no/such/folder"], "--instance_data_dir=/no/such/folder"),
    (["--learning_rate=0"], "--learning_rate=0"),
    (["--resume_from_checkpoint=checkpoint-7"], "--resume_from_checkpoint=checkpoint-7"),
])
def test_invalid_flags_exit_2_before_any_work(argv, expected, capsys, tmp_path, monkeypatch):
    for name in ("MS_ROLE", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DREAMBOOTH_NB_OFFLINE", "1")  # no hub, whatever the machine can reach
    out = tmp_path / "out"
    assert cli.main([*argv, f"--output_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not out.exists()  # nothing was started


@pytest.mark.parametrize("argv", [["--no_such_flag"], ["--lr_scheduler=sometimes"], ["--train_batch_size=two"],
                                  ["--learning_rat=1e-4"]])  # no abbreviations: a typo is an error
def test_argparse_refusals_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_lists_the_groups():
    done = subprocess.run([sys.executable, "-m", "dreambooth_nb.train", "--help"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0
    assert "--with_prior_preservation" in done.stdout and "accepted for compatibility, refused" in done.stdout


@pytest.mark.slow
def test_missing_model_is_one_clear_line(capsys, tmp_path):
    assert cli.main(["--pretrained_model_name_or_path=/no/such/model", f"--output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "/no/such/model" in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists(), "a failed start leaves no output folder behind"


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_130(tmp_path):
    """SIGTERM (what a scheduler or msrun sends) stops training like Ctrl-C: a checkpoint of the last step, the model saved."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dreambooth_nb.train", f"--output_dir={out}", "--resolution=32",
               "--train_batch_size=1", "--max_train_steps=100000", "--checkpointing_steps=3", "--report_to=none",
               "--checkpoints_total_limit=2",
               "--lr_warmup_steps=0", "--device=CPU"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint-3").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-2000:]
    assert "interrupted after" in output and "Traceback" not in output
    from dreambooth_nb.train.checkpoint import list_checkpoints

    last = list_checkpoints(out)[-1]
    step = int(last.name.split("-")[1])
    assert step >= 3 and f"interrupted after {step} steps" in output
    assert (out / "model_index.json").is_file() and not list(out.glob(".*tmp*"))


def _other_value(f, config_class):
    """A value of the field's type unlike its default: 0 / 0.0 for numbers whose default is not zero, True <-> False,
    a choice other than the default, a short text."""
    from dataclasses import MISSING

    from dreambooth_nb.common.config import _kind

    default = f.default if f.default is not MISSING else f.default_factory()
    kind, _ = _kind(str(f.type))
    choices = [c for c in (f.metadata.get("choices") or ()) if c is not None and c != default]
    if choices:
        return choices[0]
    if kind is bool:
        return not default
    if kind is int:
        return 0 if default != 0 else 3
    if kind is float:
        return 0.0 if default != 0.0 else 0.5
    if kind is list:
        return ["x.png"]
    return "" if default not in ("", None) else "some-text"


@pytest.mark.parametrize("command", ["train", "train_lora", "train_sdxl_lora"])
def test_every_offered_setting_survives_the_command_line_zero_included(command):
    """config -> command line -> config is the same config, for each setting changed alone (0, 0.0, False where the
    default is True, an empty text)."""
    from dreambooth_nb.common.config import LoraTrainConfig, SDXLLoraTrainConfig, TrainConfig, offered_fields

    config_class = {"train": TrainConfig, "train_lora": LoraTrainConfig, "train_sdxl_lora": SDXLLoraTrainConfig}[command]
    parser = cli.build_parser(config_class)
    checked = 0
    for f in offered_fields(config_class):
        if f.metadata.get("secret"):
            continue
        config = config_class(**{f.name: _other_value(f, config_class)})
        again, _ = cli.parse_config(config.to_args(), config_class, parser)
        assert getattr(again, f.name) == getattr(config, f.name), (f.name, config.to_args())
        checked += 1
    assert checked > 50


def test_zero_values_reach_the_command_line():
    from dreambooth_nb.common.config import TrainConfig

    args = TrainConfig(seed=0, lr_warmup_steps=0, prior_loss_weight=0.0).to_args()
    assert {"--seed=0", "--lr_warmup_steps=0", "--prior_loss_weight=0.0"} <= set(args)


def test_one_main_serves_the_three_commands(capsys):
    """Each command line is train.cli.main with its method: its own flags and prog name."""
    from dreambooth_nb import train_lora, train_sdxl_lora

    for main, prog, own in ((train_lora.main, "train_lora", "--lora_rank"),
                            (train_sdxl_lora.main, "train_sdxl_lora", "--text_encoder_lr")):
        with pytest.raises(SystemExit):
            main(["--help"])
        shown = capsys.readouterr().out
        assert f"python -m dreambooth_nb.{prog}" in shown and own in shown


def test_a_run_in_a_fresh_process_is_a_said_wait_and_returns_its_resources(tmp_path, monkeypatch, capsys):
    """The command runs with its output captured, so the wait is said (the command, then a counted wait)."""
    import json

    from dreambooth_nb.common import waits
    from dreambooth_nb.common.config import TrainConfig

    monkeypatch.setenv("DREAMBOOTH_NB_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(instance_data_dir="photos", instance_prompt="a photo of sks star", output_dir=str(tmp_path / "run"),
                         max_train_steps=3)
    ran, real_run = [], subprocess.run

    def fake_run(command, **kwargs):
        if not (isinstance(command, list) and command[1:2] == ["-m"]):
            return real_run(command, **kwargs)  # anything else the libraries run (lscpu, ...)
        ran.append(command)
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "run" / "resources.json").write_text(json.dumps({"peak_rss_mb": 1.0}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert cli.run_in_fresh_process(config) == {"peak_rss_mb": 1.0}
    assert ran and ran[0][1:3] == ["-m", config.COMMAND] and "--max_train_steps=3" in ran[0]
    out = capsys.readouterr()
    assert out.out.startswith("$ ") and "training in a fresh process" in out.err and "done in" in out.err
    assert (tmp_path / "cache" / waits.TIMES_FILE).is_file()  # a finished run is remembered as the wait's duration


def test_a_failed_run_in_a_fresh_process_says_its_tail_and_is_not_remembered_as_a_wait(tmp_path, monkeypatch):
    from dreambooth_nb.common import waits
    from dreambooth_nb.common.config import TrainConfig
    from dreambooth_nb.common.errors import UserError

    monkeypatch.setenv("DREAMBOOTH_NB_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(instance_data_dir="photos", instance_prompt="a photo of sks star", output_dir=str(tmp_path / "run"))
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(
        command, 2, "", "error: outputs/x is in use by another training run") if command[1:2] == ["-m"]
        else real_run(command, **kw))
    with pytest.raises(UserError, match="exit status 2:\nerror: outputs/x is in use"):
        cli.run_in_fresh_process(config)
    assert not (tmp_path / "cache" / waits.TIMES_FILE).is_file()  # nothing remembered

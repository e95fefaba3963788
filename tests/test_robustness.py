"""What a new user meets (issue: robustness): each finding injected, the outcome asserted (exit code, message,
files left intact). Checkpoint damage, locks and earlier runs are in test_train_units.py; the random kill
sweep is bench/faults.py."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreambooth_nb.common import config as config_mod
from dreambooth_nb.common import runtime
from dreambooth_nb.common.config import ConfigError, TrainConfig
from dreambooth_nb.train import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flag", ["--learning_rate=nan", "--learning_rate=inf", "--snr_gamma=nan",
                                  "--prior_loss_weight=-inf", "--adam_epsilon=nan"])
def test_non_finite_numbers_are_refused_before_any_work(flag, tmp_path, capsys):
    assert cli.main([flag, f"--output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert flag.split("=")[0] in err and "finite" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes, said", [
    ({"learning_rate": "1e-4"}, "--learning_rate='1e-4' is a str"),
    ({"resolution": None}, "--resolution=None is a NoneType"),
    ({"train_batch_size": 1.5}, "--train_batch_size=1.5 is a float"),
    ({"with_prior_preservation": "yes"}, "--with_prior_preservation='yes' is a str"),
])
def test_wrong_types_from_python_are_config_errors_not_type_errors(changes, said):
    with pytest.raises(ConfigError, match=said):
        TrainConfig(**changes).validate()


def test_a_wrong_type_does_not_hide_the_other_problems():
    with pytest.raises(ConfigError) as raised:
        TrainConfig(learning_rate=float("nan"), train_batch_size=1.5, adam_beta2=1.5).validate()
    said = str(raised.value)
    assert "--train_batch_size=1.5 is a float" in said and "--adam_beta2=1.5 must be in [0, 1)" in said
    assert said.count("--learning_rate=nan") == 1 and "finite" in said


def test_an_empty_output_dir_or_a_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--output_dir is empty"):
        TrainConfig(output_dir=" ").validate()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        TrainConfig(output_dir=str(tmp_path / "f")).validate()
    with pytest.raises(ConfigError, match="--class_data_dir=.* is a file"):
        TrainConfig(with_prior_preservation=True, class_prompt="a dog", class_data_dir=str(tmp_path / "f")).validate()


def test_a_torn_metrics_line_does_not_block_resume(tmp_path):
    from dreambooth_nb.train.report import MetricsLog, read_metrics

    log = MetricsLog(tmp_path)
    for step in range(1, 6):
        log.scalars({"step": step, "loss": 0.1 * step})
    log.close()
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # a process killed mid-write
    MetricsLog(tmp_path).truncate(3)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_what_a_killed_final_save_leaves_is_cleaned_up(tmp_path):
    from dreambooth_nb.train import output

    for name in (".pipeline.tmp-4242", ".unet.old-4242", ".checkpoint-8.tmp-4242"):
        (tmp_path / name).mkdir()
    (tmp_path / ".samples.tmp4242.png").write_bytes(b"half")
    (tmp_path / "unet").mkdir()
    removed = {p.name for p in output.remove_stale_temporaries(tmp_path)}
    assert removed == {".pipeline.tmp-4242", ".unet.old-4242", ".checkpoint-8.tmp-4242", ".samples.tmp4242.png"}
    assert (tmp_path / "unet").is_dir()


def test_a_model_folder_without_a_tokenizer_is_one_line(tmp_path):
    from dreambooth_nb.models import require_model_parts

    for part in ("unet", "text_encoder", "scheduler", "vae"):
        (tmp_path / part).mkdir()
    with pytest.raises(FileNotFoundError) as error:
        require_model_parts(str(tmp_path))
    assert "no tokenizer/ folder" in str(error.value) and "\n" not in str(error.value)
    require_model_parts(str(tmp_path), tokenizer_name="openai/clip-vit-large-patch14")  # --tokenizer_name given


def test_a_hub_id_offline_fails_in_seconds_with_one_line(monkeypatch):
    from dreambooth_nb import models
    from dreambooth_nb.common import hub

    monkeypatch.setattr(hub, "offline_reason", lambda: "huggingface.co:443 could not be reached (probe of 3 s)")
    with pytest.raises(FileNotFoundError) as error:
        models.hub_access("someone/not-cached-model")
    assert "could not be reached" in str(error.value) and "huggingface-cli download" in str(error.value)
    monkeypatch.setattr(models, "read_subfolder_config", lambda *a, **k: {"sample_size": 64})
    assert models.hub_access("someone/cached-model") == {"local_files_only": True}


def test_a_missing_model_folder_suggests_the_default_model(tmp_path):
    from dreambooth_nb.common.assets import resolve_model

    with pytest.raises(FileNotFoundError, match="'toy-world'"):
        resolve_model(str(tmp_path / "missing" / "model"))


def test_gif_photos_are_used(tmp_path):
    from dreambooth_nb import data

    Image.new("RGB", (64, 64), "red").save(tmp_path / "photo.gif")
    report = data.check_images(tmp_path, resolution=32)
    assert [c.verdict for c in report.checks] == ["converted"] and report.usable


def test_the_photo_check_is_a_command_with_the_notebooks_table(tmp_path, capsys):
    from dreambooth_nb import check, data

    Image.new("RGB", (12, 9), "red").save(tmp_path / "small.png")
    (tmp_path / "notes.txt").write_text("not a photo")
    assert check.main([str(tmp_path), "--resolution", "32"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == str(data.check_images(tmp_path, 32)).strip()
    assert "smaller than 32 px" in out and "not an image file" in out
    (tmp_path / "small.png").unlink()
    assert check.main([str(tmp_path)]) == 2
    assert "No usable image" in capsys.readouterr().err


def test_prompts_that_train_but_not_as_meant_get_a_note():
    from dreambooth_nb.train.engine import prompt_notes

    class Tokenizer:  # one token per word, plus start and end
        model_max_length = 8

        def __call__(self, text, truncation=False, max_length=None):
            ids = list(range(len(text.split()) + 2))
            return type("T", (), {"input_ids": ids[:max_length] if truncation else ids})

        def decode(self, ids, skip_special_tokens=True):
            return f"{len(ids)} tokens"

    long = TrainConfig(instance_prompt="a photo of sks dog sitting on a red chair in the sun")
    assert any("--instance_prompt is 15 tokens long; the text encoder reads the first 8" in n
               for n in prompt_notes(long, Tokenizer()))
    same = TrainConfig(instance_prompt="a photo of a dog", class_prompt="a photo of a dog")
    assert any("adds no word to --class_prompt" in n for n in prompt_notes(same, Tokenizer()))
    assert prompt_notes(TrainConfig(instance_prompt="a photo of sks dog", class_prompt="a photo of a dog"), Tokenizer()) == []


@pytest.mark.slow
def test_the_saved_pipeline_keeps_the_base_models_sampler(tmp_path):
    from dreambooth_nb.models import load_components
    from dreambooth_nb.sampling import save_pipeline

    runtime.setup(device="CPU", show=False)
    components = load_components("tiny-random")
    components.scheduler_class = "DDPMScheduler"  # as a model shipped with DDPM sampling would say
    save_pipeline(components, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DDPMScheduler"


@pytest.mark.slow
def test_a_diverging_run_stops_saves_nothing_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--pretrained_model_name_or_path=tiny-random", "--resolution=32", "--train_batch_size=1",
            "--lr_warmup_steps=0", "--max_train_steps=40", "--checkpointing_steps=2", "--report_to=none",
            f"--output_dir={out}", "--device=CPU"]
    assert cli.main([*argv, "--learning_rate=1e-3", "--max_train_steps=2"]) == 0  # a good checkpoint-2 first
    capsys.readouterr()
    assert cli.main([*argv, "--learning_rate=1e-4", "--resume_from_checkpoint=latest"]) == 2
    err = capsys.readouterr().err
    assert "--learning_rate was 0.001, now 0.0001" in err and "--max_train_steps" not in err  # more steps are allowed
    boom = tmp_path / "boom"
    code = cli.main([*argv, "--learning_rate=1e30", f"--output_dir={boom}"])  # weights overflow within a few steps
    err = capsys.readouterr().err
    assert code == 2 and "training stopped at step" in err and "--learning_rate (now 1e+30)" in err, err
    assert not (boom / "model_index.json").exists(), "no model of nans is saved"
    from dreambooth_nb.train import checkpoint as ckpt

    assert all(ckpt.damage(p) is None for p in ckpt.list_checkpoints(boom)), "checkpoints left are whole and finite"


@pytest.mark.slow
def test_sigterm_while_starting_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "dreambooth_nb.train", f"--output_dir={out}", "--resolution=32",
                                "--max_train_steps=5", "--device=CPU"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    import time

    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None and "mindspore" not in maps.read_text():
        time.sleep(0.02)  # wait until MindSpore's libraries are being loaded: the moment that used to abort Python
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "Traceback" not in output and len(output.strip().splitlines()) <= 2, output
    assert not (tmp_path / "rank_0").exists() and not out.exists()


def test_make_lab_runs_as_root():
    if os.geteuid() != 0:
        pytest.skip("the --allow-root path is for root; this test runs as another user")
    done = subprocess.run(["make", "-s", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "jupyter lab notebooks/" in done.stdout
    shell = done.stdout.strip().splitlines()[-1]
    assert "--allow-root" in subprocess.run(["bash", "-c", f"echo {shell.split('notebooks/', 1)[1]}"],
                                            capture_output=True, text=True).stdout


def test_a_child_run_stops_when_the_process_that_started_it_is_killed(tmp_path):
    """A training run started from a notebook (a fresh process, msrun) must not outlive a kernel that is SIGKILLed
    (the out-of-memory killer, a forced restart): it is sent the signal asked for (SIGTERM, which the commands turn
    into save-and-stop; msrun gets Ctrl-C, on which it stops its workers)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("parent-death signals are a Linux feature")
    marker = tmp_path / "child-got-sigterm"
    child = ("import signal, sys, time, pathlib\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r}).write_text('1'), sys.exit(0)))\n"
             "print('ready', flush=True)\n"
             "time.sleep(60)\n")
    parent = ("import subprocess, sys, time\n"
              "from dreambooth_nb.common.commands import ends_with_this_process\n"
              f"child = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True,\n"
              "                         preexec_fn=ends_with_this_process())\n"
              "print(child.pid, child.stdout.readline().strip(), flush=True)\n"
              "time.sleep(60)\n")
    started = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        child_pid, said = started.stdout.readline().split()
        assert said == "ready"
        started.kill()  # SIGKILL: the parent can do nothing about it
        started.wait(10)
        for _ in range(100):
            if marker.exists():
                break
            time.sleep(0.1)
        assert marker.exists(), "the child was not told that its parent died"
    finally:
        started.kill()
        with contextlib.suppress(ProcessLookupError, ValueError, NameError):
            os.kill(int(child_pid), signal.SIGKILL)

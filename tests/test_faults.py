"""Faults a held-out sweep found, each injected and its outcome asserted (exit code, one line naming the problem and
what to do, files intact)."""

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from dreambooth_nb.common.commands import EXIT_ERROR, run_command
from dreambooth_nb.train import checkpoint as ckpt


def _checkpoint_with_weights(folder: Path, step: int, value: float) -> Path:
    from safetensors.numpy import save_file

    path = folder / f"checkpoint-{step}"
    (path / "unet").mkdir(parents=True)
    (path / ckpt.STATE_FILE).write_text(json.dumps({"step": step}))
    save_file({"w": np.full((4,), value, np.float32)}, str(path / "unet" / "diffusion_pytorch_model.safetensors"))
    save_file({"m": np.zeros((4,), np.float32)}, str(path / ckpt.OPTIMIZER_FILE))
    ckpt.write_manifest(path)
    return path


@pytest.mark.parametrize("poisoned", ["unet/diffusion_pytorch_model.safetensors", "optimizer.safetensors"])
def test_a_checkpoint_with_nan_is_refused_naming_it_and_the_newest_finite_one(tmp_path, poisoned):
    from safetensors.numpy import save_file

    _checkpoint_with_weights(tmp_path, 8, 1.0)
    latest = _checkpoint_with_weights(tmp_path, 16, 1.0)
    key = "w" if poisoned.startswith("unet") else "m"
    save_file({key: np.array([1.0, np.nan, 0.0, 0.0], np.float32)}, str(latest / poisoned))
    ckpt.write_manifest(latest)  # the digests rewritten to match: only the numbers tell
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.find_checkpoint("latest", tmp_path)
    message = str(error.value)
    assert "checkpoint-16" in message and "nan or inf" in message and poisoned in message
    assert "--resume_from_checkpoint=checkpoint-8" in message


@pytest.mark.parametrize("code, said", [
    (errno.ENOSPC, "no space left on the disk that holds"),
    (errno.EROFS, "is on a read-only file system: choose a folder you can write to"),
    (errno.EACCES, "no permission to write"),
])
def test_disk_and_folder_problems_are_one_line_naming_the_place(tmp_path, capsys, code, said):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint-2").mkdir()

    def work():
        raise OSError(code, os.strerror(code), str(out / ".dreambooth-nb.lock"))

    assert run_command("train", work, out) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {said}") or said in err
    assert str(out) in err and ".dreambooth-nb.lock" not in err
    assert "traceback" not in err and len(err.splitlines()) == 1
    assert not (out / "error.log").exists() and (out / "checkpoint-2").is_dir()


def test_a_bug_keeps_its_traceback_and_a_user_mistake_does_not(tmp_path, capsys):
    from dreambooth_nb.common.errors import InputError

    def bug():
        raise ValueError("a library's own ValueError")

    def mistake():
        raise InputError("--resolution=30 must be a multiple of 8")

    assert run_command("train", bug) == EXIT_ERROR
    assert "full traceback in" in capsys.readouterr().err
    assert run_command("train", mistake) == EXIT_ERROR
    assert capsys.readouterr().err.strip() == "error: --resolution=30 must be a multiple of 8"


def test_share_modes_makes_weights_readable_by_others(tmp_path):
    from dreambooth_nb.common.files import share_modes

    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"x")
    os.chmod(weights, 0o600)
    os.chmod(folder / "unet", 0o700)
    old = os.umask(0o022)
    try:
        share_modes(folder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644
    assert stat.S_IMODE((folder / "unet").stat().st_mode) == 0o755


def test_export_never_replaces_a_folder_of_the_users_and_replaces_its_own(tmp_path, capsys):
    from dreambooth_nb import export
    from dreambooth_nb.common import assets

    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file")
    src = str(assets.toy_model_path())
    assert export.main([src, "--to", "diffusers-pt", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "no export wrote" in err and "Nothing was written" in err and err.count("\n") == 1
    assert (mine / "notes.txt").read_text() == "my own file" and len(list(mine.iterdir())) == 1
    out = tmp_path / "pt"
    assert export.main([src, "--to", "diffusers-pt", str(out)]) == 0
    assert (out / export.EXPORT_MARK).is_file()
    assert stat.S_IMODE((out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mode) & 0o044 == 0o044
    assert export.main([src, "--to", "diffusers-pt", str(out)]) == 0  # its own earlier export: replaced
    single = tmp_path / "toy.safetensors"
    assert export.main([src, "--to", "single-file", str(single)]) == 0
    assert export.main([src, "--to", "single-file", str(single)]) == 0
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not ours")
    assert export.main([src, "--to", "single-file", str(other)]) == 2
    assert other.read_bytes() == b"not ours"


@pytest.mark.parametrize("call, said", [
    (lambda db: db.train_dreambooth("outputs/x"), "train_dreambooth takes a TrainConfig"),
    (lambda db: db.check_images(".", resolution="512"), "resolution='512'"),
    (lambda db: db.generate(None, prompts=None), "prompts=None"),
    (lambda db: db.generate(None, "a photo of sks star", seeds="zero"), "seeds='zero'"),
    (lambda db: db.generate(None, "a photo of sks star", num_inference_steps=0), "num_inference_steps=0"),
])
def test_python_mistakes_are_user_errors_saying_what_to_give(call, said):
    import dreambooth_nb as db
    from dreambooth_nb.common.errors import UserError

    with pytest.raises(UserError, match=said):
        call(db)


def test_a_prompt_without_an_identifier_gets_a_note_without_prior_too():
    from transformers import CLIPTokenizer

    from dreambooth_nb.common import assets
    from dreambooth_nb.common.config import TrainConfig
    from dreambooth_nb.train.engine import prompt_notes

    tokenizer = CLIPTokenizer.from_pretrained(str(assets.toy_model_path() / "tokenizer"))
    notes = prompt_notes(TrainConfig(instance_prompt="a photo of a star"), tokenizer)
    assert any("no identifier before the class word 'star'" in n for n in notes)
    assert not prompt_notes(TrainConfig(instance_prompt="a photo of sks star"), tokenizer)


def test_the_card_counts_the_toy_models_parameters_from_its_weights():
    from dreambooth_nb.common import assets
    from dreambooth_nb.common.cards import embedded_description, weights_in
    from dreambooth_nb.models import load_components

    counted = sum(load_components("toy-world").parameter_counts().values())
    assert weights_in(assets.toy_model_path()) == counted
    assert f"a {counted / 1e6:.1f} M-parameter" in embedded_description("toy-world")


def test_setup_after_kernels_already_ran_keeps_their_device():
    """ensure_class_images (or any helper that sets MindSpore up) after a pipeline already sampled in the kernel."""
    import subprocess
    import sys

    code = ("import numpy as np, mindspore as ms; x = ms.Tensor(np.ones(3, np.float32)); (x + x).asnumpy(); "
            "from dreambooth_nb.common import runtime; print('device', runtime.setup(show=False).device)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    assert "device CPU" in done.stdout

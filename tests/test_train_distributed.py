"""Data-parallel training under msrun: 2 CPU workers over loopback end with identical weights."""

import pytest

import dreambooth_nb as db
from dreambooth_nb.train.distributed import msrun_command, run_msrun


def test_msrun_command_starts_the_module_with_distributed():
    command = msrun_command(["--resolution=512"], workers=8, master_port=8118, log_dir="logs")
    assert command[:6] == ["msrun", "--worker_num=8", "--local_worker_num=8", "--master_port=8118",
                           "--log_dir=logs", "--join=True"]
    assert command[6:] == ["python", "-m", "dreambooth_nb.train", "--distributed", "--resolution=512"]


@pytest.mark.slow
def test_two_workers_end_with_identical_weights(tmp_path):
    config = db.TrainConfig(output_dir=str(tmp_path / "out"), resolution=32, train_batch_size=1, max_train_steps=3,
                            learning_rate=1e-3, lr_warmup_steps=0, seed=0, report_to="none", checkpointing_steps=2)
    result = run_msrun(config, workers=2, log_dir=tmp_path / "logs")
    assert sorted(result.digests) == [0, 1]
    assert result.same_weights, str(result)
    assert all(d["world"] == 2 for d in result.digests.values())
    out = tmp_path / "out"
    assert (out / "model_index.json").is_file() and (out / "checkpoint-2").is_dir()  # written by rank 0
    saved = db.load_components(str(out)).unet
    assert db.weight_digest({"unet": saved})["sha256"] == result.digests[0]["sha256"]

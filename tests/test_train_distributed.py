"""Data-parallel training under msrun: the command, and the report that checks the ranks (chapter 04 runs two CPU
workers over loopback for real and asserts it)."""

from dreambooth_nb.train.distributed import msrun_command


def test_msrun_command_starts_the_module_with_distributed():
    command = msrun_command(["--resolution=512"], workers=8, master_port=8118, log_dir="logs")
    assert command[:6] == ["msrun", "--worker_num=8", "--local_worker_num=8", "--master_port=8118",
                           "--log_dir=logs", "--join=True"]
    assert command[6:] == ["python", "-m", "dreambooth_nb.train", "--distributed", "--resolution=512"]


def test_the_report_holds_every_rank_equal_and_the_saved_model_to_them(tmp_path):
    """Chapter 04 runs msrun with two workers for real and asserts both properties; here, what makes each false."""
    from dreambooth_nb.train.distributed import MsrunResult

    digest = {"sha256": "a" * 64, "sum": 1.0, "networks": ["unet"]}
    ranks = {r: {**digest, "rank": r, "world": 2} for r in (0, 1)}

    def report(digests, saved=None):
        return MsrunResult(0, digests, tmp_path, 1.0, saved)

    assert report(ranks).same_weights and not report(ranks).saved_as_trained  # nothing saved
    assert report(ranks, digest).saved_as_trained and "the saved model has them" in report(ranks, digest).caption
    assert not report(ranks, {**digest, "sha256": "b" * 64}).saved_as_trained
    assert not report({0: ranks[0]}).same_weights  # one worker proves nothing
    assert not report({0: ranks[0], 2: {**ranks[1], "rank": 2}}).same_weights  # rank 1 missing
    assert not report({r: {**d, "world": 3} for r, d in ranks.items()}).same_weights  # a third rank never reported
    assert not report({0: ranks[0], 1: {**ranks[1], "sha256": "c" * 64}}).same_weights

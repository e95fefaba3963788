"""Waits are said: one line before a compile with last time's seconds, the seconds shown while it runs."""

import pytest

from dreambooth_nb.common import waits


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_NB_CACHE", str(tmp_path))
    monkeypatch.setattr(waits, "TICK_SECONDS", 0.05)


def test_first_wait_says_it_was_never_measured_then_remembers(capsys):
    import time

    with waits.said_wait("compiling the sampler", "sampling: toy 32 px"):
        time.sleep(0.2)
    first = capsys.readouterr().err
    assert "compiling the sampler (the first time here" in first
    assert "compiling the sampler: 0 s" in first and "done in 0 s" in first  # the ticker ran, then the total
    assert waits.last_seconds("sampling: toy 32 px") == pytest.approx(0.2, abs=0.15)

    with waits.said_wait("compiling the sampler", "sampling: toy 32 px"):
        pass
    assert "about 0 s last time on this machine" in capsys.readouterr().err


def test_a_failed_wait_records_nothing():
    with pytest.raises(KeyboardInterrupt):
        with waits.said_wait("compiling the training step", "train step"):
            raise KeyboardInterrupt
    assert waits.last_seconds("train step") is None


def test_seconds_go_on_the_progress_bar_when_there_is_one(capsys):
    import time

    class Bar:
        postfixes = []

        def set_postfix_str(self, text, refresh=True):
            self.postfixes.append(text)

    bar = Bar()
    with waits.said_wait("compiling the training step", "train step", bar=bar):
        time.sleep(0.2)
    assert bar.postfixes and bar.postfixes[0].startswith("compiling the training step: ")
    assert "done in" not in capsys.readouterr().err  # the bar carries the seconds, no extra line


def test_unreadable_times_file_is_no_reason_to_fail(tmp_path):
    (tmp_path / waits.TIMES_FILE).write_text("not json")
    assert waits.last_seconds("x") is None
    waits.remember_seconds("x", 3.0)
    assert waits.last_seconds("x") == 3.0

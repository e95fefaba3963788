"""Waits are said: one line before a compile with last time's seconds, the seconds shown while it runs."""

import pytest

from dreambooth_nb.common import waits


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_NB_CACHE", str(tmp_path))
    monkeypatch.setattr(waits, "TICK_SECONDS", 0.05)


def test_first_wait_says_it_was_never_measured_then_remembers(capsys, monkeypatch):
    import time

    monkeypatch.setattr(waits, "counter_can_redraw", lambda: True)  # a terminal or a notebook

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


def test_a_failed_wait_ends_its_counter_line_so_the_error_starts_on_its_own(capsys, monkeypatch):
    monkeypatch.setattr(waits, "counter_can_redraw", lambda: True)
    with pytest.raises(RuntimeError):
        with waits.said_wait("training in a fresh process", "fresh"):
            raise RuntimeError("exit status 2")
    err = capsys.readouterr().err
    assert err.endswith("\r  training in a fresh process: stopped after 0 s\n"), err


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


def test_in_a_log_file_the_wait_is_two_lines_without_a_counter(capsys, monkeypatch):
    """Where a line cannot be drawn over (stderr is a file), the seconds are not ticked: the start and the total."""
    import time

    monkeypatch.setattr(waits, "counter_can_redraw", lambda: False)
    with waits.said_wait("compiling the sampler", "sampling: log"):
        time.sleep(0.2)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "\r" not in "".join(lines), lines
    assert lines[0].startswith("compiling the sampler (") and lines[1].strip() == "compiling the sampler: done in 0 s"


def test_in_a_notebook_the_counter_is_one_output_updated_in_place(capsys, monkeypatch):
    """A notebook keeps every stream write as an output: the seconds go to one display, updated, not to stderr."""
    import time

    from dreambooth_nb.common import viz

    shown = []

    class Handle:
        def update(self, data, raw=False):
            shown.append(data["text/plain"])

    monkeypatch.setattr(waits, "counter_can_redraw", lambda: True)
    monkeypatch.setattr(viz, "in_notebook", lambda: True)
    def display(*args, **kwargs):  # the real display returns a handle only when asked for one
        return Handle() if kwargs.get("display_id") is True else None

    monkeypatch.setattr("IPython.display.display", display)
    with waits.said_wait("compiling the sampler", "sampling: notebook"):
        time.sleep(0.2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\r" not in err, err  # the start line only
    assert len(shown) >= 2 and shown[0].strip() == "compiling the sampler: 0 s", shown  # a tick, then the end
    assert shown[-1].strip() == "compiling the sampler: done in 0 s"

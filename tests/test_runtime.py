"""runtime.setup(): device choice, compiled mode, seeding, the oneDNN rule, the info table."""

import os

import numpy as np
import pytest

from dreambooth_nb.common import runtime
from dreambooth_nb.common import defaults


def test_setup_chooses_cpu_graph_mode_and_reports_versions():
    import mindspore as ms

    info = runtime.setup(device="CPU", seed=3, show=False)
    assert info.device == "CPU" and ms.get_context("device_target") == "CPU"
    assert ms.get_context("mode") == ms.GRAPH_MODE
    assert info.versions["mindspore"] == runtime.installed_version("mindspore")
    text = str(info)
    assert "device" in text and "mindone" in text
    assert "<table>" in info._repr_html_()


def test_setup_seeds_numpy_and_mindspore_from_one_seed():
    import mindspore as ms
    from mindspore import nn

    runtime.setup(device="CPU", seed=7, show=False)
    first = (np.random.rand(3), nn.Dense(4, 4).weight.asnumpy())
    runtime.setup(device="CPU", seed=7, show=False)
    second = (np.random.rand(3), nn.Dense(4, 4).weight.asnumpy())
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert ms.get_seed() == 7


def test_device_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv(runtime.DEVICE_ENV, "cpu")
    assert runtime.choose_device() == "CPU"
    assert runtime.choose_device("auto") == "CPU"


def test_unknown_device_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="Use one of: auto, Ascend, GPU, CPU"):
        runtime.choose_device("TPU")
    monkeypatch.setenv(runtime.DEVICE_ENV, "npu")
    with pytest.raises(ValueError, match=runtime.DEVICE_ENV):
        runtime.choose_device()


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="graph"):
        runtime.setup(mode="eager", show=False)


@pytest.mark.parametrize("version,avx512,expected", [
    ("2.10.0", True, True), ("2.8.0", True, True), ("2.7.1", True, False), ("2.10.0", False, False), ("dev", True, False),
])
def test_onednn_cap_only_where_it_helps(monkeypatch, version, avx512, expected):
    monkeypatch.setattr(runtime, "cpu_has_avx512", lambda: avx512)
    monkeypatch.setattr(runtime.platform, "machine", lambda: "x86_64")
    assert runtime.needs_onednn_avx2_cap(version) is expected


def test_onednn_fix_respects_a_user_setting(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert runtime.apply_onednn_fix() == "AVX512_CORE"
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"


def test_version_notes_name_the_tested_pair():
    notes = runtime.version_notes({"mindspore": "2.10.0", "mindone": "0.3.0"})
    assert len(notes) == 1 and "mindspore==2.7.1" in notes[0]
    assert runtime.version_notes(dict(runtime.TESTED_VERSIONS)) == []


def test_fast_profile_reads_the_environment(monkeypatch):
    monkeypatch.setenv(defaults.FAST_ENV, "1")
    assert defaults.fast_profile()
    monkeypatch.setenv(defaults.FAST_ENV, "0")
    assert not defaults.fast_profile()


def test_importing_the_package_changes_no_global_state():
    import subprocess
    import sys

    code = ("import os, sys; before = dict(os.environ); import dreambooth_nb as db; "
            "assert dict(os.environ) == before; assert 'mindspore' not in sys.modules; "
            "assert callable(db.show_images)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_commands_print_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    from dreambooth_nb.common import commands

    monkeypatch.setenv("DREAMBOOTH_NB_CACHE", str(tmp_path / "cache"))

    def user_mistake():
        from dreambooth_nb.common.errors import MissingFileError

        raise MissingFileError("folder photos/ does not exist")

    def bug():
        raise RuntimeError("\n----\n- Kernel X failed\n----\n")

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model_index.json").write_text("{}")
    assert commands.run_command("t", user_mistake, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err == "error: folder photos/ does not exist\n"
    assert commands.run_command("t", bug, tmp_path / "out") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: RuntimeError: Kernel X failed" and err[1].startswith("(full traceback in")
    assert "Traceback" in (tmp_path / "out" / "error.log").read_text()
    assert commands.run_command("t", bug, tmp_path / "new") == 2 and not (tmp_path / "new").exists()
    assert list((tmp_path / "cache" / "logs").glob("t-*.log")), "a folder that did not exist gets no error.log"


def test_an_unwritable_log_place_does_not_crash_the_error_handler(tmp_path, capsys, monkeypatch):
    from dreambooth_nb.common import commands

    monkeypatch.setattr(commands, "cache_dir", lambda: tmp_path / "file")
    (tmp_path / "file").write_text("a file, not a folder")

    def bug():
        raise RuntimeError("broken")

    assert commands.run_command("t", bug, None) == 2
    assert "could not be written" in capsys.readouterr().err


def test_interrupts_and_a_typo_are_one_line(capsys):
    from dreambooth_nb.common import commands

    def stop():
        raise KeyboardInterrupt

    assert commands.run_command("t", stop, None) == 130
    assert capsys.readouterr().err.count("\n") == 1
    parser = commands.QuietParser(prog="prog")
    parser.add_argument("--learning_rate")
    with pytest.raises(SystemExit) as stop_info:
        parser.parse_args(["--learning_rat=1"])
    assert stop_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean --learning_rate?" in err


def test_mindspore_out_of_memory_becomes_one_line_with_what_to_change():
    from dreambooth_nb.common.commands import error_summary

    error = RuntimeError("\n----\n- Memory not enough:\n----\nMemory isn't enough and alloc failed, kernel name: x, "
                         "alloc size: 68719476736B.\n\n----\n- C++ Call Stack: (For framework developers)\n----\n")
    line = error_summary(error)
    assert "64.0 GiB" in line and "--resolution" in line and "\n" not in line
    assert "--resolution" in error_summary(RuntimeError("std::bad_alloc"))
    assert error_summary(RuntimeError("\n-----\n- Kernel X failed\n-----\n")) == "RuntimeError: Kernel X failed"

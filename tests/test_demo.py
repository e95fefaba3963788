"""`python -m dreambooth_nb.demo` (make demo): the main job runs offline on the defaults and writes its pictures."""

from PIL import Image

from dreambooth_nb import demo


def test_demo_writes_the_before_after_grid_the_loss_plot_and_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_NB_FAST", "1")
    assert demo.main(["--out", str(tmp_path), "--steps", "2"]) == 0
    grid = Image.open(tmp_path / "before_after.png")
    assert grid.width > grid.height > 200, "two rows of titled pictures"
    assert Image.open(tmp_path / "loss.png").size[0] > 200
    assert (tmp_path / "model" / "unet" / "config.json").is_file()
    assert not list(tmp_path.glob(".*.tmp*")), "no temporary file left behind"

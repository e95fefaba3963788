"""Chapter 01 helpers: getting the photos, checking a folder, transforms and the training batch layout."""

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreambooth_nb import data
from dreambooth_nb.common import hub
from dreambooth_nb import prior
from dreambooth_nb import batches
from dreambooth_nb.common import config as config_mod
from dreambooth_nb.common import assets, files


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_NB_CACHE", str(tmp_path / "cache"))
    for name in hub.OFFLINE_FLAGS:
        monkeypatch.delenv(name, raising=False)


def photo(size=(96, 80), seed=0) -> Image.Image:
    """A random RGB picture (different seeds give different content)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def messy(tmp_path) -> Path:
    """One file for each problem the check handles, plus two good photos."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(seed=1).save(folder / "good.jpg")
    photo(seed=2).save(folder / "good2.png")
    (folder / "notes.txt").write_text("hello")
    buffer = io.BytesIO()
    photo(seed=3).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "fake.png").write_text("not really a png")
    photo(seed=4).convert("CMYK").save(folder / "cmyk.jpg")
    rgba = photo(seed=5).convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: must become white
    rgba.save(folder / "rgba.png")
    photo(seed=6).convert("L").save(folder / "gray.png")
    Image.fromarray(np.full((80, 96), 65535, dtype=np.uint16)).save(folder / "deep.png")
    exif = Image.Exif()
    exif[data.EXIF_ORIENTATION] = 6
    photo((120, 80), seed=7).save(folder / "rotated.jpg", exif=exif)
    photo((40, 40), seed=8).save(folder / "small.png")
    (folder / "copy.png").write_bytes((folder / "good2.png").read_bytes())
    photo(seed=9).save(folder / ".hidden.jpg")
    return folder


def snapshot(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def by_name(report) -> dict:
    return {c.path.name: c for c in report.checks}


# ------------------------------------------------------------------------------- checks
def test_each_problem_gets_its_verdict(messy):
    checks = by_name(data.check_images(messy, resolution=64))
    assert checks["good.jpg"].verdict == "ok" and not checks["good.jpg"].notes
    assert checks["good.jpg"].size == (96, 80) and checks["good.jpg"].mode == "RGB"
    assert checks["notes.txt"].verdict == "skipped" and "not an image" in checks["notes.txt"].notes[0]
    for name in ("truncated.jpg", "fake.png"):
        assert checks[name].verdict == "skipped" and "unreadable" in checks[name].notes[0], name
    for name, mode in [("cmyk.jpg", "CMYK"), ("rgba.png", "RGBA"), ("gray.png", "L"), ("deep.png", "I;16")]:
        assert checks[name].verdict == "converted" and checks[name].mode == mode, name
    assert checks["rotated.jpg"].verdict == "converted" and checks["rotated.jpg"].size == (80, 120)
    assert "EXIF" in checks["rotated.jpg"].notes[0]
    assert checks["small.png"].verdict == "warning" and "smaller than 64" in checks["small.png"].notes[0]
    assert checks[".hidden.jpg"].verdict == "skipped" and checks[".hidden.jpg"].notes == ["hidden file"]


def test_exact_duplicates_are_found_by_content(messy):
    checks = by_name(data.check_images(messy, resolution=64))
    duplicate = [c for c in (checks["copy.png"], checks["good2.png"]) if c.verdict == "warning"]
    assert len(duplicate) == 1 and "same content as" in duplicate[0].notes[0]
    assert duplicate[0].usable


def test_checking_and_loading_change_nothing_in_the_folder(messy):
    before = snapshot(messy)
    data.check_images(messy, resolution=64)
    batches.load_image_set(messy, "a photo of sks dog", FakeTokenizer(), resolution=64)
    assert snapshot(messy) == before


def test_load_rgb_converts_to_upright_8bit_rgb(messy):
    for name in ("cmyk.jpg", "rgba.png", "gray.png", "deep.png", "rotated.jpg"):
        assert data.load_rgb(messy / name).mode == "RGB", name
    assert data.load_rgb(messy / "rgba.png").getpixel((0, 0)) == (255, 255, 255)
    assert data.load_rgb(messy / "deep.png").getpixel((0, 0)) == (255, 255, 255)
    assert data.load_rgb(messy / "rotated.jpg").size == (80, 120)
    with pytest.raises(data.DataError, match="truncated.jpg"):
        data.load_rgb(messy / "truncated.jpg")


def test_report_shows_as_text_and_html(messy):
    report = data.check_images(messy, resolution=64)
    text, page = str(report), report._repr_html_()
    assert "9 usable of 13 files" in text
    for name in ("notes.txt", "cmyk.jpg", "small.png"):
        assert name in text and name in page
    assert "<table>" in page and "skipped" in page


def test_missing_folder_and_a_file_are_clear_errors(tmp_path):
    with pytest.raises(data.DataError, match=r"missing.*does not exist.*photos"):
        data.check_images(tmp_path / "missing")
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(data.DataError, match="is a file, not a folder"):
        data.check_images(tmp_path / "a.jpg")


def test_folder_without_usable_images_names_folder_and_files(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    report = data.check_images(folder)
    assert report.usable == []
    with pytest.raises(data.DataError, match=r"No usable image in .*bad") as error:
        report.require_usable()
    assert "notes.txt (not an image file (.txt))" in str(error.value)
    assert "broken.jpg (unreadable: not a valid JPG file)" in str(error.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError, match="holds no image files"):
        batches.load_image_set(empty, "a photo of sks dog", FakeTokenizer(), resolution=64)


class FakeTokenizer:
    """Enough of a tokenizer for load_image_set: fixed-length ids."""

    model_max_length = 8

    def __call__(self, prompts, **kwargs):
        class Out:
            input_ids = np.array([[1] + [len(p)] + [0] * 6 for p in prompts])
            attention_mask = np.array([[1, 1] + [0] * 6 for _ in prompts])

        return Out()


def test_training_skips_bad_files_with_the_same_rules(messy):
    report = data.check_images(messy, resolution=64)
    images = batches.load_image_set(messy, "a photo of sks dog", FakeTokenizer(), resolution=64)
    assert "notes.txt" in str(images.report) and images.report.count("skipped") == report.count("skipped")
    assert len(images) == len(report.usable) == 9
    assert all(im.mode == "RGB" and min(im.size) == 64 for im in images.images)
    limited = batches.load_image_set(messy, "p", FakeTokenizer(), resolution=64, limit=3)
    assert len(limited) == 3


# -------------------------------------------------------------------------- getting photos
def test_offline_flag_falls_back_to_the_sample_photos_in_one_sentence(monkeypatch, capsys):
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: pytest.fail("must not probe when offline"))
    folder = data.get_instance_photos(offline=True)
    assert folder == assets.subject_photos_dir() and len(data.list_images(folder)) == 5
    said = capsys.readouterr().out.strip()
    assert said.count(".") == 1 and "diffusers/dog-example" in said and "offline=True" in said
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert data.get_instance_photos() == folder
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().out


def test_unreachable_hub_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("must not download"))
    assert data.get_instance_photos() == assets.subject_photos_dir()
    assert "could not be reached" in capsys.readouterr().out


def test_hub_probe_gives_up_without_waiting_for_a_hanging_lookup(monkeypatch):
    import socket
    import threading

    release, finished = threading.Event(), []

    def hang(*args, **kwargs):  # a name lookup that does not answer until released
        release.wait(10)
        finished.append(True)
        raise OSError("too late")

    monkeypatch.setattr(socket, "create_connection", hang)
    assert hub.hub_reachable(timeout=0.1) is False
    assert not finished, "the probe waited for the connection attempt instead of its timeout"
    release.set()


def fake_snapshot(repo_id, repo_type, local_dir, ignore_patterns):
    assert repo_type == "dataset" and ignore_patterns == ".gitattributes"
    folder = Path(local_dir)
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    for i in range(3):
        photo(seed=i).save(folder / f"dog{i}.jpeg")
    return str(folder)


def test_download_goes_to_the_cache_once(monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(1) or fake_snapshot(*a, **k))
    folder = data.get_instance_photos(offline=False)
    assert [p.name for p in data.list_images(folder)] == ["dog0.jpeg", "dog1.jpeg", "dog2.jpeg"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"
    assert data.get_instance_photos(offline=True) == folder and len(calls) == 1


def test_failed_download_falls_back_and_unknown_repo_is_an_error(monkeypatch, capsys):
    import huggingface_hub

    def broken(*a, **k):
        raise ConnectionError("reset by peer")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", broken)
    assert data.get_instance_photos(offline=False) == assets.subject_photos_dir()
    assert "ConnectionError" in capsys.readouterr().out

    class RepositoryNotFoundError(Exception):
        pass

    def missing(*a, **k):
        raise RepositoryNotFoundError("404")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", missing)
    with pytest.raises(data.DataError, match="someone/nothing is neither a local folder nor a dataset"):
        data.get_instance_photos("someone/nothing", offline=False)


def test_a_local_folder_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: pytest.fail("a folder needs no hub"))
    (tmp_path / "mine").mkdir()
    assert data.get_instance_photos(tmp_path / "mine") == tmp_path / "mine"
    with pytest.raises(data.DataError, match="does not exist"):
        data.get_instance_photos(str(tmp_path / "not-there"))
    assert data.get_instance_photos(None) == assets.subject_photos_dir()


def test_problem_examples_cover_every_verdict(tmp_path):
    report = data.check_images(data.make_problem_examples(tmp_path / "messy"), resolution=64)
    assert {c.verdict for c in report.checks} == {"ok", "converted", "warning", "skipped"}
    assert len(report.checks) == 11


# ------------------------------------------------------------------------------ transforms
def test_transform_steps_resize_then_crop():
    image = photo((200, 100))
    steps = data.transform_steps(image, 64, seed=0, random_crops=2)
    sizes = [im.size for im in steps.values()]
    assert sizes == [(200, 100), (128, 64), (64, 64), (64, 64), (64, 64)]
    resized = list(steps.values())[1]
    assert np.array_equal(np.asarray(list(steps.values())[2]), np.asarray(resized.crop((32, 0, 96, 64))))
    pixels = data.normalize(list(steps.values())[2])
    assert pixels.shape == (3, 64, 64) and pixels.dtype == np.float32
    assert -1.0 <= pixels.min() and pixels.max() <= 1.0
    np.testing.assert_allclose(data.denormalize(pixels) * 255, np.asarray(list(steps.values())[2]), atol=1e-3)


def test_batch_indices_are_full_shuffled_epochs():
    rows = [batches.batch_indices(5, 2, seed=3, step=s) for s in range(5)]
    assert all(len(r) == 2 for r in rows)
    flat = np.concatenate(rows)
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert np.array_equal(rows[3], batches.batch_indices(5, 2, seed=3, step=3))


def test_sample_config_is_short_under_the_fast_profile(monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_NB_FAST", "1")
    config = config_mod.subject_config()
    assert config.with_prior_preservation and config.num_class_images == 4
    assert config.pretrained_model_name_or_path == "toy-world" and config.resolution == 32, "the model's own size"
    config.validate()
    monkeypatch.setenv("DREAMBOOTH_NB_FAST", "0")
    assert config_mod.subject_config(with_prior=False, num_class_images=8).num_class_images == 8
    other = config_mod.subject_config(pretrained_model_name_or_path="tiny-random")
    assert other.resolution == 64
    assert other.class_data_dir != config.class_data_dir, "each model keeps its own class images"


def test_training_batch_puts_the_instance_half_first(tmp_path):
    from dreambooth_nb.common import runtime
    from dreambooth_nb.models import load_components, tokenize

    runtime.ensure_setup()  # setup() must come before MindSpore's first kernel

    classes = tmp_path / "classes"
    classes.mkdir()
    for i in range(3):
        photo((64, 64), seed=20 + i).save(classes / f"c{i}.png")
    config = config_mod.subject_config(pretrained_model_name_or_path="tiny-random", class_data_dir=str(classes),
                                num_class_images=3, train_batch_size=2, center_crop=True)
    components = load_components(config.pretrained_model_name_or_path)
    batch = prior.training_batch(config, components, step=0)
    assert batch.halves == ["instance", "instance", "class", "class"]
    assert batch.pixels.shape == (4, 3, 64, 64) and batch.noise.shape == (4, 4, 32, 32)
    ids = {p: tokenize(components.tokenizer, p)[0] for p in (config.instance_prompt, config.class_prompt)}
    for row, prompt in zip(batch.input_ids, batch.prompts):
        np.testing.assert_array_equal(row, ids[prompt])
    assert batch.prompts == [config.instance_prompt] * 2 + [config.class_prompt] * 2
    class_pixels = {data.normalize(data.crop(data.resize_shorter(data.load_rgb(p), 64), 64)).tobytes()
                    for p in data.list_images(classes)}
    assert all(p.tobytes() in class_pixels for p in batch.pixels[2:])
    assert not any(p.tobytes() in class_pixels for p in batch.pixels[:2])
    assert "class" in batch._repr_html_() and batch.titles()[2].startswith("2: class, t=")
    import matplotlib.pyplot as plt

    figure = batch.show()
    assert [ax.get_title() for ax in figure.axes] == batch.titles()
    plt.close(figure)


def test_long_titles_are_wrapped_to_the_panel_width():
    from dreambooth_nb.common.viz import wrap_title

    title = wrap_title("base · seed 2\na painting of sks person in the style of van gogh", scale=2.0)
    lines = title.splitlines()
    assert lines[0] == "base · seed 2" and len(lines) == 3 and max(map(len, lines)) <= 28
    assert " ".join(lines[1:]) == "a painting of sks person in the style of van gogh"


def test_the_photos_are_described_by_where_they_came_from(tmp_path):
    assert "offline sample photos" in data.describe_photos(assets.subject_photos_dir())
    hub_copy = files.cache_dir() / "data" / "diffusers--dog-example"
    hub_copy.mkdir(parents=True)
    assert "hub dataset diffusers/dog-example" in data.describe_photos(hub_copy)
    assert data.describe_photos(tmp_path) == f"0 photos from your folder {tmp_path}."

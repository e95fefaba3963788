"""Sharing and moving a trained model: run card and model card, the push to a hub (through a stand-in HTTP server),
the token never written anywhere, and export to diffusers on PyTorch (a folder, and the original single file)
checked against PyTorch's own loaders, numerically."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from dreambooth_nb import export, push
from dreambooth_nb.common import assets, cards, formats, hub
from dreambooth_nb.common.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
TORCH_PYTHON = Path(os.environ.get("DREAMBOOTH_NB_TORCH_PYTHON", ROOT / ".venv-bench" / "bin" / "python"))
FAKE_TOKEN = "hf_FAKEtokenDoNotLeak0123456789"
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DREAMBOOTH_NB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT")
UNET_TOLERANCE = 1e-4  # max |PyTorch - MindSpore| of one UNet output (float32, values of order 1)
PIXEL_TOLERANCE = 1e-3  # max |PyTorch - MindSpore| of a generated picture's pixels in [0, 1] (a quarter of 1/255)


# ------------------------------------------------------------------------------ a stand-in hub
class FakeHubServer:
    """A stand-in for the Hugging Face hub's HTTP API on 127.0.0.1: answers what HfApi.create_repo and
    upload_folder send (repos/create, validate-yaml, preupload, commit) and keeps what it received."""

    def __init__(self, refuse_with: int | None = None):
        self.refuse_with = refuse_with  # answer every request with this status (401: a bad token)
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.repos: dict[str, dict] = {}  # repo id -> the create request's JSON
        self.files: dict[str, dict[str, bytes]] = {}  # repo id -> {path: content}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeHubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests.append(("POST", self.path, dict(self.headers)))
                status, answer = fake.answer(self.path.split("?")[0], body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep the test output clean
                pass

        return Handler

    def answer(self, path: str, body: bytes) -> tuple[int, dict]:
        """The status and JSON the hub would answer."""
        if self.refuse_with:
            return self.refuse_with, {"error": "refused by the stand-in hub"}
        if path == "/api/repos/create":
            request = json.loads(body)
            repo = f"{request.get('organization') or 'me'}/{request['name']}"
            self.repos[repo] = request
            return 200, {"url": f"{self.url}/{repo}"}
        if path == "/api/validate-yaml":
            return 200, {}
        parts = path.strip("/").split("/")  # api, models, owner, name, preupload|commit, revision
        repo = "/".join(parts[2:4])
        if len(parts) == 6 and parts[4] == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if len(parts) == 6 and parts[4] == "commit":
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files.setdefault(repo, {})[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            # huggingface_hub parses commitUrl against its default endpoint, as the real hub's answer would read
            return 200, {"commitUrl": f"https://huggingface.co/{repo}/commit/{'0' * 40}", "commitOid": "0" * 40,
                         "pullRequestUrl": None}
        return 404, {"error": f"{path} is not emulated"}


@pytest.fixture
def clean_env(monkeypatch):
    """No offline flag, token or endpoint from the surrounding shell (nor the offline flag huggingface_hub read from
    it when it was first imported, which depends on what ran before)."""
    import huggingface_hub.constants

    for name in OFFLINE_FLAGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


def fake_output_dir(folder: Path) -> Path:
    """A folder shaped like a training output (a model plus what stays local), without real weights."""
    for name, text in {
        "model_index.json": json.dumps({"_class_name": "StableDiffusionPipeline"}),
        "unet/config.json": "{}", "unet/diffusion_pytorch_model.safetensors": "weights",
        "README.md": "---\ntags:\n- dreambooth\n---\n# card\n", "run_card.json": "{}",
        "train_config.json": json.dumps({"logging_dir": "tb", "hub_model_id": "me/sks"}),
        "checkpoint-2/state.json": "{}", "tb/metrics.jsonl": "{}", "logs/old.txt": "x", "error.log": "trace",
        ".dreambooth-nb.lock": "{}", ".unet.tmp123.json": "half", "validation/step-2/p0-0.png": "png",
    }.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def files_holding(folder: Path, secret: str) -> list[str]:
    """Every file under `folder` whose bytes contain `secret` (weights included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes())


# ------------------------------------------------------------------------------ run card and model card
@pytest.fixture
def trained(tmp_path):
    """An output folder with a sample grid, two instance photos, and the config and history of a short run."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(photos / f"dog-{i}.png")
    (photos / "notes.txt").write_text("not a picture")
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (8, 8)).save(out / "samples.png")
    config = TrainConfig(pretrained_model_name_or_path="someone/sd-base", instance_data_dir=str(photos),
                         instance_prompt="a photo of sks dog", output_dir=str(out), hub_token=FAKE_TOKEN,
                         max_train_steps=10, seed=7)
    history = [{"step": s + 1, "loss": float(s), "instance_loss": float(s), "prior_loss": None} for s in range(10)]
    return out, config, history


def test_run_card_holds_the_exact_run_and_never_the_token(trained):
    out, config, history = trained
    path = cards.write_run_card(out, config, history, steps_done=10, device="CPU", seed=7)
    card = json.loads(path.read_text())
    assert path == out / "run_card.json" and (out / "README.md").is_file()
    assert "hub_token" not in card["config"] and card["config"]["instance_prompt"] == "a photo of sks dog"
    assert set(card["versions"]) == {"mindspore", "mindone", "transformers", "dreambooth-nb"}
    assert card["device"] == "CPU" and card["seed"] == 7 and card["steps_done"] == 10
    assert card["final_loss"] == {"loss": 8.5, "instance_loss": 8.5, "prior_loss": None}  # mean of steps 9 and 10
    assert card["data"]["instance_images"]["count"] == 2 and card["data"]["class_images"] is None
    assert card["sample_image"] == "samples.png"
    assert files_holding(out, FAKE_TOKEN) == []


def test_image_digest_names_the_pictures_not_the_folder(trained, tmp_path):
    out, config, _ = trained
    photos = Path(config.instance_data_dir)
    first = cards.images_digest(cards.image_files(photos))
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in cards.image_files(photos):
        (copy / p.name).write_bytes(p.read_bytes())
    assert cards.images_digest(cards.image_files(copy)) == first  # same pictures, same names: same digest
    (copy / "dog-0.png").write_bytes((copy / "dog-1.png").read_bytes())
    assert cards.images_digest(cards.image_files(copy)) != first


def test_model_card_yaml_and_body(trained):
    from huggingface_hub import ModelCard

    out, config, history = trained
    cards.write_run_card(out, config, history, steps_done=10, device="CPU", seed=7)
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "someone/sd-base" and data["instance_prompt"] == "a photo of sks dog"
    assert set(data["tags"]) >= {"dreambooth", "mindspore", "mindone", "text-to-image"}
    assert "license" not in data  # the base model's card is not readable offline here
    text = card.text
    assert "StableDiffusionPipeline.from_pretrained" in text and "mindone.diffusers" in text
    assert f"python -m dreambooth_nb.export {out} --to diffusers-pt" in text and "--to single-file" in text
    assert "![before and after](samples.png)" in text and "learning_rate" in text


def test_card_of_a_local_base_carries_its_license_and_no_hub_id(trained, tmp_path):
    from huggingface_hub import ModelCard

    out, config, history = trained
    base = tmp_path / "my-sd"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n# my sd\n")
    run = cards.run_card(config.replace(pretrained_model_name_or_path=str(base)), history, steps_done=10,
                         device="CPU", seed=7)
    data = ModelCard(cards.model_card_text(run, out)).data.to_dict()
    assert data.get("license") == "creativeml-openrail-m" and "base_model" not in data


def test_card_of_a_fine_tuned_folder_names_the_hub_model_at_the_root(trained, tmp_path, monkeypatch):
    import huggingface_hub

    out, config, history = trained
    first = tmp_path / "first-run"
    first.mkdir()
    (first / "train_config.json").write_text(json.dumps({"pretrained_model_name_or_path": "someone/sd-base"}))
    readme = tmp_path / "cached-README.md"
    readme.write_text("---\nlicense: openrail\n---\n")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name, **kw: str(readme) if (repo, name) == ("someone/sd-base", "README.md") else None)
    run = cards.run_card(config.replace(pretrained_model_name_or_path=str(first)), history, steps_done=10,
                         device="CPU", seed=7)
    text = cards.model_card_text(run, out)
    data = huggingface_hub.ModelCard(text).data.to_dict()
    assert data["base_model"] == "someone/sd-base" and data["license"] == "openrail"
    assert "the local model `first-run`, itself fine-tuned from [someone/sd-base]" in text


def test_card_of_the_embedded_model_describes_it(trained):
    out, config, history = trained
    text = cards.model_card_text(cards.run_card(config.replace(pretrained_model_name_or_path="toy-world"),
                                                history, steps_done=10, device="CPU", seed=7), out)
    assert "base_model" not in text.split("---")[1] and "toy-world model shipped with dreambooth-nb" in text


def test_the_card_of_an_adapter_run_loads_base_and_adapters_and_needs_no_export(trained):
    from dreambooth_nb.common.config import LoraTrainConfig, SDXLLoraTrainConfig

    out, config, history = trained
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k in dataclasses.asdict(LoraTrainConfig())}
    for config_class, pipeline in ((LoraTrainConfig, "StableDiffusionPipeline"),
                                   (SDXLLoraTrainConfig, "StableDiffusionXLPipeline")):
        card = cards.run_card(config_class(**settings), history, steps_done=10, device="CPU", seed=7)
        text = cards.model_card_text(card, out)
        assert card["result_kind"] == "adapters" and f"{pipeline}.from_pretrained(\"someone/sd-base\")" in text
        assert f'pipe.load_lora_weights("{out}")' in text and "dreambooth_nb.export" not in text
    whole = cards.model_card_text(cards.run_card(config, history, steps_done=10, device="CPU", seed=7), out)
    assert "dreambooth_nb.export" in whole and "load_lora_weights" not in whole and "NonZeroExt" in whole


def test_an_adapter_folder_pushes_and_an_empty_one_does_not(clean_env, tmp_path):
    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_text("weights")
    (folder / "README.md").write_text("---\ntags:\n- dreambooth\n---\n# card\n")
    (folder / "scores.json").write_text("{}")  # the toy world's judging, kept beside the adapters: stays local
    (folder / "pictures.npz").write_bytes(b"judged pictures")
    assert hub.folder_kind(folder) == "adapters"
    with FakeHubServer() as server:
        hub.push_folder(folder, "me/sks-lora", FAKE_TOKEN, endpoint=server.url)
    assert sorted(server.files["me/sks-lora"]) == ["README.md", "pytorch_lora_weights.safetensors"]
    with pytest.raises(hub.PushError, match="holds no trained model"):
        hub.require_model_folder(tmp_path)
    with pytest.raises(hub.PushError, match="cannot be pushed"):
        hub.require_pushable_kind("something else")


# ------------------------------------------------------------------------------ token and preflight
def test_token_comes_from_the_flag_then_the_environment_then_the_login(clean_env):
    import huggingface_hub

    clean_env.setattr(huggingface_hub, "get_token", lambda: "saved")
    assert hub.resolve_token(None) == "saved"
    clean_env.setenv("HF_TOKEN", "from-env")
    assert hub.resolve_token(None) == "from-env"
    assert hub.resolve_token("explicit") == "explicit"


@pytest.mark.parametrize("model_id, token, expected", [
    (None, FAKE_TOKEN, "--hub_model_id is missing"),
    ("a/b/c", FAKE_TOKEN, "is not a repository name"),
    ("me/sks dog", FAKE_TOKEN, "is not a repository name"),
    ("me/sks-dog", None, "huggingface-cli login"),
])
def test_preflight_refuses_in_one_line(clean_env, model_id, token, expected):
    with pytest.raises(hub.PushError) as err:
        hub.push_preflight(model_id, token)
    message = str(err.value)
    assert expected in message and "\n" not in message and FAKE_TOKEN not in message
    if token is None:
        assert "HF_TOKEN" in message and "--hub_token" in message


def test_preflight_offline_is_refused_at_once_with_the_later_command(clean_env):
    clean_env.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(hub.PushError) as err:
        hub.push_preflight("me/sks-dog", FAKE_TOKEN, output_dir="out/sks")
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert "HF_HUB_OFFLINE=1" in message and "python -m dreambooth_nb.push out/sks --hub_model_id me/sks-dog" in message
    assert "\n" not in message and FAKE_TOKEN not in message


def test_preflight_unreachable_endpoint_is_refused_within_the_probe(clean_env):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(hub.PushError, match="could not be reached"):
        hub.push_preflight("me/sks-dog", FAKE_TOKEN, endpoint=f"http://127.0.0.1:{port}", timeout=1.0)
    assert time.perf_counter() - start < 2.0


def test_preflight_against_the_real_hub_decides_within_seconds(clean_env):
    """Offline (as here) the probe gives up after 3 s; online it passes. Either way it decides quickly."""
    start = time.perf_counter()
    try:
        hub.push_preflight("me/sks-dog", FAKE_TOKEN)
    except hub.PushError as err:
        assert "could not be reached" in str(err)
    assert time.perf_counter() - start < hub.PROBE_SECONDS + 1.5


# ------------------------------------------------------------------------------ pushing
def test_push_uploads_the_model_and_keeps_the_rest_local(clean_env, tmp_path):
    folder = fake_output_dir(tmp_path / "out")
    with FakeHubServer() as server:
        hub.push_preflight("me/sks-dog", FAKE_TOKEN, endpoint=server.url)
        url = hub.push_folder(folder, "me/sks-dog", FAKE_TOKEN, endpoint=server.url)
    assert url == f"{server.url}/me/sks-dog"
    assert server.repos["me/sks-dog"]["private"] is True
    assert sorted(server.files["me/sks-dog"]) == [
        "README.md", "model_index.json", "run_card.json", "train_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors", "validation/step-2/p0-0.png"]
    assert all(h.get("authorization") == f"Bearer {FAKE_TOKEN}" for _, _, h in server.requests)
    assert not any(FAKE_TOKEN.encode() in content for content in server.files["me/sks-dog"].values())


def test_push_public_on_request(clean_env, tmp_path):
    folder = fake_output_dir(tmp_path / "out")
    with FakeHubServer() as server:
        hub.push_folder(folder, "me/sks-dog", FAKE_TOKEN, private=False, endpoint=server.url)
    assert server.repos["me/sks-dog"]["private"] is False


def test_push_refuses_a_folder_holding_the_token(clean_env, tmp_path):
    folder = fake_output_dir(tmp_path / "out")
    (folder / "train_config.json").write_text(json.dumps({"hub_token": FAKE_TOKEN}))
    with FakeHubServer() as server:
        with pytest.raises(hub.PushError, match="train_config.json contains the hub token") as err:
            hub.push_folder(folder, "me/sks-dog", FAKE_TOKEN, endpoint=server.url)
    assert server.requests == [] and FAKE_TOKEN not in str(err.value)


def test_push_refused_token_is_one_line(clean_env, tmp_path):
    folder = fake_output_dir(tmp_path / "out")
    with FakeHubServer(refuse_with=401) as server:
        with pytest.raises(hub.PushError, match="refused the token") as err:
            hub.push_folder(folder, "me/sks-dog", FAKE_TOKEN, endpoint=server.url)
    assert "\n" not in str(err.value) and FAKE_TOKEN not in str(err.value)


def test_an_error_quoting_the_token_is_masked(clean_env, tmp_path, monkeypatch):
    import huggingface_hub

    def fail(*args, **kwargs):
        raise ValueError(f"Invalid header value b'Bearer {FAKE_TOKEN}'")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fail)
    with pytest.raises(hub.PushError, match=r"Bearer \*\*\*") as err:
        hub.push_folder(fake_output_dir(tmp_path / "out"), "me/sks-dog", FAKE_TOKEN, endpoint="http://127.0.0.1:9")
    assert FAKE_TOKEN not in str(err.value)
    assert hub.resolve_token(f" {FAKE_TOKEN}\n") == FAKE_TOKEN


def test_push_command_says_private_and_fails_in_one_line(clean_env, tmp_path, capsys):
    folder = fake_output_dir(tmp_path / "out")
    with FakeHubServer() as server:
        clean_env.setenv("HF_ENDPOINT", server.url)
        assert push.main([str(folder), "--hub_model_id", "me/sks-dog", "--hub_token", FAKE_TOKEN]) == 0
    said = capsys.readouterr()
    assert said.out.count("\n") == 1 and "private" in said.out and f"{server.url}/me/sks-dog" in said.out
    assert FAKE_TOKEN not in said.out + said.err
    clean_env.setattr("huggingface_hub.get_token", lambda: None)
    assert push.main([str(folder), "--hub_model_id", "me/sks-dog"]) == 2
    said = capsys.readouterr()
    assert said.err.count("\n") == 1 and said.err.startswith("error: no hub token") and "Traceback" not in said.err
    clean_env.setenv("HF_HUB_OFFLINE", "1")
    assert push.main([str(folder), "--hub_model_id", "me/sks-dog", "--hub_token", FAKE_TOKEN]) == 2
    assert "run the same command again once the hub can be reached" in capsys.readouterr().err
    assert push.main([str(tmp_path / "nothing"), "--hub_model_id", "me/sks-dog"]) == 2
    assert "holds no trained model" in capsys.readouterr().err


# ------------------------------------------------------------------------------ formats (no MindSpore, no PyTorch)
SD15_UNET = {"layers_per_block": 2, "block_out_channels": [320, 640, 1280, 1280],
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
SD15_VAE = {"layers_per_block": 2, "block_out_channels": [128, 256, 512, 512]}


@pytest.mark.parametrize("diffusers_prefix, ldm_prefix", [
    # pairs of diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py for Stable Diffusion 1.5
    ("down_blocks.0.resnets.1.", "input_blocks.2.0."), ("down_blocks.0.attentions.0.", "input_blocks.1.1."),
    ("down_blocks.2.downsamplers.0.conv.", "input_blocks.9.0.op."), ("down_blocks.3.resnets.1.", "input_blocks.11.0."),
    ("up_blocks.0.resnets.2.", "output_blocks.2.0."), ("up_blocks.0.upsamplers.0.", "output_blocks.2.1."),
    ("up_blocks.1.upsamplers.0.", "output_blocks.5.2."), ("up_blocks.3.attentions.2.", "output_blocks.11.1."),
    ("mid_block.resnets.1.", "middle_block.2."), ("time_embedding.linear_2.", "time_embed.2."),
])
def test_unet_table_matches_the_reference_for_sd15(diffusers_prefix, ldm_prefix):
    assert (diffusers_prefix, ldm_prefix) in {(b.diffusers, b.ldm) for b in formats.unet_blocks(SD15_UNET)}


@pytest.mark.parametrize("diffusers_key, ldm_key", [
    ("encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "encoder.down.1.block.0.nin_shortcut.weight"),
    ("encoder.down_blocks.0.downsamplers.0.conv.bias", "encoder.down.0.downsample.conv.bias"),
    ("decoder.up_blocks.0.resnets.2.norm1.weight", "decoder.up.3.block.2.norm1.weight"),
    ("decoder.up_blocks.2.upsamplers.0.conv.weight", "decoder.up.1.upsample.conv.weight"),
    ("decoder.mid_block.attentions.0.to_out.0.bias", "decoder.mid.attn_1.proj_out.bias"),
    ("encoder.conv_norm_out.weight", "encoder.norm_out.weight"), ("quant_conv.weight", "quant_conv.weight"),
])
def test_vae_table_matches_the_reference_for_sd15(diffusers_key, ldm_key):
    blocks = formats.vae_blocks(SD15_VAE)
    value = np.zeros(3, np.float32)
    assert list(formats.rename_keys({diffusers_key: value}, blocks, True, "VAE")) == [ldm_key]
    assert list(formats.rename_keys({ldm_key: value}, blocks, False, "VAE")) == [diffusers_key]


def test_vae_attention_weights_become_1x1_convolutions_and_back():
    blocks = formats.vae_blocks(SD15_VAE)
    weight = np.arange(16, dtype=np.float32).reshape(4, 4)
    ldm = formats.rename_keys({"encoder.mid_block.attentions.0.to_q.weight": weight}, blocks, True, "VAE")
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (4, 4, 1, 1)
    back = formats.rename_keys(ldm, blocks, False, "VAE")
    np.testing.assert_array_equal(back["encoder.mid_block.attentions.0.to_q.weight"], weight)


def test_sdxl_unet_is_refused_by_name():
    with pytest.raises(formats.FormatError, match="addition_embed_type"):
        formats.unet_blocks({**SD15_UNET, "addition_embed_type": "text_time"})


def test_toy_model_exports_exactly_and_comes_back(tmp_path):
    """The committed toy-world model: PyTorch names and format pt; the single file in LDM keys; back again, bit for bit."""
    from safetensors import safe_open

    src = assets.toy_model_path()
    folder = formats.to_diffusers_pt(src, tmp_path / "pt")
    for path in folder.rglob("*.safetensors"):
        tensors, metadata = formats.read_weights(path)
        assert metadata["format"] == "pt"
        assert not [k for k in tensors if k.endswith((".embedding_table", ".gamma", ".beta"))]
    single = formats.write_single_file(src, tmp_path / "toy.safetensors")
    with safe_open(str(single), framework="np") as f:
        keys = list(f.keys())
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys and "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    back = formats.single_file_to_folder(single, tmp_path / "back")
    for name in formats.NETWORKS:
        a, b = formats.network_weights(folder / name), formats.network_weights(back / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name
    assert json.loads((back / "unet" / "config.json").read_text()) == json.loads((src / "unet" / "config.json").read_text())


def test_single_file_without_configs_asks_for_one(tmp_path):
    single = formats.write_single_file(assets.toy_model_path(), tmp_path / "bare.safetensors", embed_configs=False)
    with pytest.raises(formats.FormatError, match="no configs inside.*--config BASE_FOLDER"):
        formats.single_file_to_folder(single, tmp_path / "back")
    formats.single_file_to_folder(single, tmp_path / "back", config=assets.toy_model_path())
    assert formats.detect_layout(tmp_path / "back") == "diffusers-pt"


def test_layouts_are_told_apart_and_unsupported_ones_explained(tmp_path):
    from safetensors.numpy import save_file

    assert formats.detect_layout(assets.toy_model_path()) == "mindone"
    lora = tmp_path / "lora"
    lora.mkdir()
    save_file({"unet.down.lora_A.weight": np.zeros(2, np.float32)}, str(lora / "pytorch_lora_weights.safetensors"))
    xl = tmp_path / "xl"
    (xl / "unet").mkdir(parents=True)
    (xl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    for path, layout, advice in ((lora, "lora", "LoRA adapter"), (lora / "pytorch_lora_weights.safetensors", "lora", "LoRA"),
                                 (tmp_path / "model.ckpt", "pickle", "PyTorch pickle")):
        assert formats.detect_layout(path) == layout
        with pytest.raises(formats.FormatError, match=advice):
            assets.resolve_model(str(path))
    assert formats.detect_layout(xl) == "sdxl" and Path(assets.resolve_model(str(xl))) == xl  # train_sdxl_lora's models


def test_export_takes_parts_a_run_did_not_save_from_its_base_model(tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(assets.toy_model_path(), run)
    shutil.rmtree(run / "text_encoder")  # as --skip_save_text_encoder leaves it
    (run / "train_config.json").write_text(json.dumps({"pretrained_model_name_or_path": "toy-world"}))
    folder = export.export_model(run, "diffusers-pt", tmp_path / "pt")
    assert (folder / "text_encoder" / "model.safetensors").is_file() and not (folder / "train_config.json").exists()
    with pytest.raises(formats.FormatError, match="--base"):
        formats.write_single_file(run, tmp_path / "x.safetensors")


def test_export_command_errors_are_one_line(tmp_path, capsys):
    assert export.main([str(tmp_path), "--to", "diffusers-pt", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a Stable Diffusion folder" in err
    assert export.main([str(assets.toy_model_path()), "--to", "single-file", str(tmp_path / "x.bin")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the token is written nowhere (trains)
@pytest.mark.slow
def test_training_with_a_token_writes_it_nowhere_and_push_keeps_it_out(clean_env, tmp_path):
    from dreambooth_nb.common import runtime
    from dreambooth_nb.train import cli

    out = tmp_path / "run"
    code = cli.main(["--pretrained_model_name_or_path=tiny-random", "--resolution=32", "--max_train_steps=2",
                     "--train_batch_size=1", "--checkpointing_steps=1", "--validation_prompt=a photo of sks dog",
                     "--validation_steps=2", "--num_validation_images=1", f"--output_dir={out}",
                     f"--hub_token={FAKE_TOKEN}", "--hub_model_id=me/sks-dog"])
    assert code == 0
    cards.write_run_card(out, TrainConfig(output_dir=str(out), hub_token=FAKE_TOKEN,
                                          pretrained_model_name_or_path="tiny-random"),
                         [{"loss": 0.1}], steps_done=2, device=runtime.ensure_setup().device, seed=0)
    holding = files_holding(out, FAKE_TOKEN)
    assert not holding, f"the hub token was written to {holding}"
    with FakeHubServer() as server:
        hub.push_folder(out, "me/sks-dog", FAKE_TOKEN, endpoint=server.url)
    assert "unet/diffusion_pytorch_model.safetensors" in server.files["me/sks-dog"]
    assert not [p for p in server.files["me/sks-dog"] if p.startswith(("checkpoint-", "logs/"))]


# ------------------------------------------------------------------------------ export checked by PyTorch
TORCH_SIDE = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    folder, single, inputs, result = sys.argv[1:5]
    given = np.load(inputs)
    out = {}
    for how in ("pt", "single"):
        if how == "pt":
            pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
        else:  # offline: the configs come from the exported folder
            pipe = StableDiffusionPipeline.from_single_file(single, config=folder, safety_checker=None,
                                                            local_files_only=True)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        latents = torch.from_numpy(given["latents"])
        with torch.no_grad():
            out[how + "_eps"] = pipe.unet(latents, torch.tensor([int(given["timestep"])]),
                                          encoder_hidden_states=torch.from_numpy(given["text"])).sample.numpy()
            out[how + "_text"] = pipe.text_encoder(torch.from_numpy(given["ids"]).long())[0].numpy()
            out[how + "_image"] = pipe(str(given["prompt"]), num_inference_steps=int(given["steps"]),
                                       guidance_scale=float(given["guidance"]), latents=latents, height=64, width=64,
                                       output_type="np").images
    np.savez(result, **out)
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny random model, exported both ways by the command line, with its MindSpore outputs on fixed inputs."""
    from dreambooth_nb.common import runtime

    runtime.setup(show=False)
    tiny = assets.tiny_model_path()
    tmp = tmp_path_factory.mktemp("export")
    assert export.main([str(tiny), "--to", "diffusers-pt", str(tmp / "pt")]) == 0
    assert export.main([str(tiny), "--to", "single-file", str(tmp / "tiny.safetensors")]) == 0
    return tiny, tmp


def mindspore_outputs(model: Path, given: dict) -> dict:
    """UNet, text encoder and a DDIM picture from the mindone pipeline on the given inputs."""
    import mindspore as ms

    from dreambooth_nb.common.runtime import import_quietly

    diffusers = import_quietly("mindone.diffusers")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    latents = ms.Tensor(given["latents"])
    eps = pipe.unet(latents, ms.Tensor(np.array([given["timestep"]], np.int32)),
                    encoder_hidden_states=ms.Tensor(given["text"]))[0].asnumpy()
    text = pipe.text_encoder(ms.Tensor(given["ids"]))[0].asnumpy()
    image = pipe(str(given["prompt"]), num_inference_steps=int(given["steps"]), guidance_scale=float(given["guidance"]),
                 latents=latents, height=64, width=64, output_type="np")[0]
    return {"eps": eps, "text": text, "image": np.asarray(image)}


@pytest.mark.slow
@pytest.mark.skipif(not TORCH_PYTHON.exists(), reason=f"no PyTorch environment at {TORCH_PYTHON} (make bench builds it)")
def test_exports_match_mindspore_on_pytorch(exported):
    tiny, tmp = exported
    rng = np.random.default_rng(0)
    prompt = "a photo of a star"
    from transformers import CLIPTokenizer

    ids = CLIPTokenizer.from_pretrained(str(tiny / "tokenizer"))(prompt, padding="max_length", return_tensors="np").input_ids
    given = {"latents": rng.standard_normal((1, 4, 32, 32)).astype(np.float32), "timestep": 500,
             "text": rng.standard_normal((1, 77, 32)).astype(np.float32), "ids": ids.astype(np.int32),
             "prompt": prompt, "steps": 4, "guidance": 4.0}
    np.savez(tmp / "inputs.npz", **given)
    ours = mindspore_outputs(tiny, given)
    run = subprocess.run([str(TORCH_PYTHON), "-c", TORCH_SIDE, str(tmp / "pt"), str(tmp / "tiny.safetensors"),
                          str(tmp / "inputs.npz"), str(tmp / "torch.npz")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = np.load(tmp / "torch.npz")
    for how in ("pt", "single"):
        unet = float(np.abs(theirs[f"{how}_eps"] - ours["eps"]).max())
        text = float(np.abs(theirs[f"{how}_text"] - ours["text"]).max())
        pixels = float(np.abs(theirs[f"{how}_image"] - ours["image"]).max())
        print(f"{how}: UNet max |PyTorch - MindSpore| = {unet:.2e}, text encoder {text:.2e}, "
              f"DDIM picture (4 steps, guidance 4) {pixels:.2e}")
        assert unet <= UNET_TOLERANCE and text <= UNET_TOLERANCE and pixels <= PIXEL_TOLERANCE


@pytest.mark.slow
def test_exports_load_back_as_base_models(exported):
    """A PyTorch-layout folder and a single file load in this package with the same weights as the original."""
    from dreambooth_nb.models import load_components

    tiny, tmp = exported
    original = load_components(str(tiny))
    for source in (tmp / "pt", tmp / "tiny.safetensors"):
        assert formats.detect_layout(source) in ("diffusers-pt", "single-file")
        loaded = load_components(str(source))
        for part in ("unet", "vae", "text_encoder"):
            a = {p.name: p.asnumpy() for p in getattr(original, part).get_parameters()}
            b = {p.name: p.asnumpy() for p in getattr(loaded, part).get_parameters()}
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), (source.name, part)
    cached = Path(assets.resolve_model(str(tmp / "tiny.safetensors")))
    assert cached.is_relative_to(formats.cache_dir() / formats.IMPORT_DIR)
    assert assets.resolve_model(str(tmp / "tiny.safetensors")) == str(cached)  # converted once


@pytest.mark.slow
def test_mindone_from_single_file_reads_the_export_offline_with_a_config_folder(exported):
    """mindone 0.3.0's own loader takes the single file offline when config= names a local diffusers folder.

    Without config= it fails before asking the hub: its model-type guess tests a list of keys with `in` (TypeError).
    """
    from dreambooth_nb.common.runtime import import_quietly

    tiny, tmp = exported
    diffusers = import_quietly("mindone.diffusers")
    original = diffusers.StableDiffusionPipeline.from_pretrained(str(tiny))
    loaded = diffusers.StableDiffusionPipeline.from_single_file(str(tmp / "tiny.safetensors"), config=str(tmp / "pt"),
                                                                local_files_only=True)
    for part in ("unet", "vae", "text_encoder"):
        a = {p.name: p.asnumpy() for p in getattr(original, part).get_parameters()}
        b = {p.name: p.asnumpy() for p in getattr(loaded, part).get_parameters()}
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), part
    with pytest.raises(TypeError):
        diffusers.StableDiffusionPipeline.from_single_file(str(tmp / "tiny.safetensors"), local_files_only=True)

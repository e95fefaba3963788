"""The Hugging Face hub: is it reachable now (a quick probe), is a name a hub id, and pushing a trained model there
(the token found, the push checked in seconds before any work, the folder uploaded to a private repo by default).

A token is never printed, logged or written to a file by this module; messages say where a token comes from,
never what it is."""

from __future__ import annotations

import glob
import os
import re
import threading
from pathlib import Path

from .errors import UserError
from .files import JUDGED_FILES

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DREAMBOOTH_NB_OFFLINE")
HUB_ADDRESS = ("huggingface.co", 443)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PROBE_SECONDS = 3.0


def is_hub_id(name: str) -> bool:
    """True for names shaped like 'owner/repo'."""
    return bool(HUB_ID.match(str(name)))


def offline_reason(offline: bool | None = None, timeout: float = PROBE_SECONDS,
                   endpoint: str | None = None) -> str | None:
    """Why the hub (or the hub at `endpoint`) cannot be used now (a flag, or no answer), or None when it can."""
    if offline:
        return "offline=True was passed"
    if offline is None:
        for name in OFFLINE_FLAGS:
            if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}:
                return f"{name}={os.environ[name]} is set"
        address = endpoint_address(endpoint)
        if not (hub_reachable(timeout) if address == HUB_ADDRESS else hub_reachable(timeout, address)):
            return f"{address[0]}:{address[1]} could not be reached (probe of {timeout:g} s)"
    return None


def endpoint_address(endpoint: str | None = None) -> tuple[str, int]:
    """(host, port) of a hub endpoint URL; huggingface.co:443 for None and the default endpoint."""
    from urllib.parse import urlsplit

    if not endpoint:
        return HUB_ADDRESS
    url = urlsplit(endpoint)
    return url.hostname or HUB_ADDRESS[0], url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = PROBE_SECONDS, address: tuple[str, int] = HUB_ADDRESS) -> bool:
    """True when a TCP connection to `address` (huggingface.co:443) opens within `timeout` seconds (lookup included)."""
    import socket

    result = []

    def probe():
        try:
            socket.create_connection(address, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


# ---------------------------------------------------------------------------- pushing a trained model
TOKEN_ENV = "HF_TOKEN"
ENDPOINT_ENV = "HF_ENDPOINT"
PUSH_COMMAND = "python -m dreambooth_nb.push {folder} --hub_model_id {name}"
# what stays local: resumable checkpoints, logs, earlier runs, a failed run's traceback, temporaries, hidden files
PUSH_IGNORED = ("checkpoint-*/", "logs/", "previous-runs/", "rank-digests/", "error.log", "*.tmp*", ".*", "*/.*",
                *JUDGED_FILES)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt")


class PushError(UserError, ValueError):
    """A push that cannot work (no token, no hub, no repository name, a refusal); one line says what to do."""


def resolve_token(explicit: str | None = None) -> str | None:
    """The hub token to push with: --hub_token, else HF_TOKEN, else the one `huggingface-cli login` saved."""
    if explicit and explicit.strip():
        return explicit.strip()  # a pasted newline would otherwise end up in an HTTP header, and in its error
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    from huggingface_hub import get_token

    return get_token()


def check_repo_id(hub_model_id: str | None) -> str:
    """The repository name, checked the way the hub checks it; PushError when it is missing or malformed."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not hub_model_id:
        raise PushError("--hub_model_id is missing: name the repository to create, e.g. --hub_model_id=your-name/sks-dog.")
    try:
        validate_repo_id(hub_model_id)
    except HFValidationError:
        raise PushError(f"--hub_model_id={hub_model_id!r} is not a repository name: use owner/name with letters, digits, "
                        f"'-', '_' or '.' (at most 96 characters), e.g. your-name/sks-dog.") from None
    return hub_model_id


def push_preflight(hub_model_id: str | None, token: str | None, *, output_dir: str | os.PathLike | None = None,
                   endpoint: str | None = None, offline: bool | None = None, timeout: float = PROBE_SECONDS,
                   before_training: bool = True) -> None:
    """Raise PushError (one line) when a push cannot work now: no repository name, no token, no hub (seconds at most).

    before_training: the advice for no hub is to train without --push_to_hub and push later (else: retry later).
    """
    check_repo_id(hub_model_id)
    if not token:
        raise PushError("no hub token: log in once with `huggingface-cli login`, or set HF_TOKEN, or pass --hub_token.")
    reason = offline_reason(offline, timeout, endpoint or os.environ.get(ENDPOINT_ENV))
    if reason:
        later = PUSH_COMMAND.format(folder=output_dir or "OUTPUT_DIR", name=hub_model_id)
        advice = (f"drop --push_to_hub, train, and push later with: {later}" if before_training else
                  "nothing was uploaded; run the same command again once the hub can be reached.")
        raise PushError(f"the hub cannot be reached, {reason}: {advice}")


PUSHABLE_KINDS = ("pipeline", "adapters")  # what a training method leaves (train.method.TrainingMethod.result_kind)


def folder_kind(folder: str | os.PathLike) -> str | None:
    """'pipeline' (a saved pipeline: model_index.json), 'adapters' (a LoRA file), or None (neither)."""
    from .formats import LORA_FILES

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return "pipeline"
    if any((folder / name).is_file() for name in LORA_FILES):
        return "adapters"
    return None


def require_pushable_kind(kind: str) -> None:
    """PushError (before any training) when a method leaves something the hub push does not take."""
    if kind not in PUSHABLE_KINDS:
        raise PushError(f"a run that leaves {kind!r} cannot be pushed (only {' or '.join(PUSHABLE_KINDS)}); "
                        f"drop --push_to_hub.")


def require_model_folder(folder: str | os.PathLike) -> Path:
    """The folder, when it holds a saved pipeline or LoRA adapters; PushError otherwise."""
    folder = Path(folder)
    if folder_kind(folder) is None:
        raise PushError(f"{folder} holds no trained model (no model_index.json, no pytorch_lora_weights.safetensors): "
                        f"pass the --output_dir of a finished training run.")
    return folder


def files_to_push(folder: str | os.PathLike) -> list[str]:
    """The files push_folder uploads (relative paths): everything but PUSH_IGNORED and the run's logging_dir."""
    import json

    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    settings = folder / "train_config.json"
    logging_dir = json.loads(settings.read_text(encoding="utf-8")).get("logging_dir") if settings.is_file() else None
    ignored = [*PUSH_IGNORED, *([f"{logging_dir.strip('/')}/"] if logging_dir else [])]
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=ignored))


def holds_secret(path: Path, secret: str) -> bool:
    """True when the file's text (a weight file's header only) contains `secret`."""
    needle = secret.encode()
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            size = int.from_bytes(f.read(8), "little")
            return needle in f.read(min(size, 1 << 27))
        if path.suffix in WEIGHT_SUFFIXES:
            return False
        tail = b""
        for block in iter(lambda: f.read(1 << 20), b""):
            if needle in tail + block:
                return True
            tail = block[-len(needle):]
    return False


def push_folder(folder: str | os.PathLike, repo_id: str, token: str, private: bool = True,
                endpoint: str | None = None, commit_message: str | None = None) -> str:
    """Create the repository (private unless private=False) and upload the trained model folder to it; its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    folder = require_model_folder(folder)
    check_repo_id(repo_id)
    files = files_to_push(folder)
    leaking = [name for name in files if len(token) >= 8 and holds_secret(folder / name, token)]
    if leaking:
        raise PushError(f"{folder / leaking[0]} contains the hub token, so nothing was uploaded: remove the token "
                        f"from it (or delete the file) and push again.")
    api = HfApi(endpoint=endpoint or os.environ.get(ENDPOINT_ENV), token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=url.repo_id, allow_patterns=[glob.escape(f) for f in files],
                          commit_message=commit_message or "DreamBooth model trained with dreambooth-nb")
    except HfHubHTTPError as err:
        raise PushError(refusal(err, repo_id, token)) from None
    except OSError as err:  # requests' connection errors are OSErrors too
        raise PushError(f"the upload to {repo_id} stopped ({type(err).__name__}): check the connection and run "
                        f"the same push again (files already there are skipped).") from None
    except Exception as err:  # anything else, told in one line with the token masked (never logged with it)
        raise PushError(f"the push of {repo_id} failed: {masked(err, token)}") from None
    return str(url)


def masked(err: BaseException, token: str) -> str:
    """An error's type and first line, with the token (if the message quotes it) replaced by ***."""
    first = (str(err).splitlines() or [""])[0]
    return f"{type(err).__name__}: {first.replace(token, '***') if token else first}"


def refusal(err, repo_id: str, token: str) -> str:
    """One line for an HTTP refusal of the hub, with what to do (the token masked if the server echoed it)."""
    status = getattr(err.response, "status_code", None)
    if status == 401:
        return ("the hub refused the token (401): make a token with write access at "
                "https://huggingface.co/settings/tokens, then `huggingface-cli login` (or HF_TOKEN) and push again.")
    if status == 403:
        return (f"the token may not create or write {repo_id} (403): check the owner part of --hub_model_id and "
                f"that the token has write access.")
    return f"the hub refused the push of {repo_id} ({status}): {masked(err, token)}"

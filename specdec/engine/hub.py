"""Finding a model by name: a local HF-format directory, or a hub id fetched through
huggingface_hub (HF_TOKEN for gated models, as the QEfficient examples do) or taken from its
cache where the hub cannot be asked. Every failure is one line that says what to do."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

# What a hub id fetches: config, tokenizer and weights; a tokenizer-only fetch skips the weights.
HUB_FILES = ("*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt")
WEIGHT_FILES = "*.safetensors"


def resolve_model_path(name: str, weights: bool = True) -> Path:
    """A local directory, else a hub id fetched through huggingface_hub (honouring HF_TOKEN for
    gated models, as the QEfficient examples do), or taken from its cache where the hub cannot
    be asked. weights=False fetches config and tokenizer only (a client encoding prompts).
    Every failure is a FileNotFoundError of one line that names the model and what to do."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _is_hub_id(name):
        what = "not a directory" if path.exists() else "no such directory"
        raise FileNotFoundError(f"model {name!r}: {what} (expected an HF-format checkpoint "
                                "directory with config.json and *.safetensors)")
    return _from_hub(name, [p for p in HUB_FILES if weights or p != WEIGHT_FILES])


def _is_hub_id(name: str) -> bool:
    """`namespace/name` as the hub spells ids; anything else can only have been meant as a path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _from_hub(name: str, patterns: list[str]) -> Path:
    """The hub's snapshot of `name`, else a complete cached one when the hub cannot give it. The
    revision is looked up first, under HF_HUB_ETAG_TIMEOUT (10 s unless set): snapshot_download's
    own look-up has no timeout and, where packets are dropped, waits out the OS's (minutes)."""
    from huggingface_hub import HfApi, constants, snapshot_download

    if constants.HF_HUB_OFFLINE:
        return _cached(name, patterns) or _not_fetched(
            name, f"HF_HUB_OFFLINE is set; {_download_elsewhere(name)}, or unset HF_HUB_OFFLINE")
    token = os.environ.get("HF_TOKEN") or None   # None: the library's own (`hf auth login`)
    try:
        revision = HfApi(token=token).repo_info(name, timeout=constants.HF_HUB_ETAG_TIMEOUT).sha
        return Path(snapshot_download(name, revision=revision, token=token, allow_patterns=patterns))
    except Exception as exc:   # what fails differs with the library's version and transport
        return _cached(name, patterns) or _not_fetched(name, _hub_failure(name, exc))


def _cached(name: str, patterns: list[str]) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except OSError:   # not cached, or only in part
        return None


def _hub_failure(name: str, exc: Exception) -> str:
    """Why the hub did not give `name` and what to do, as the end of a sentence."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    said = _first_line(exc)
    if isinstance(exc, GatedRepoError):
        return (f"it is gated on the hub ({said}): accept its licence on "
                f"https://huggingface.co/{name} and set HF_TOKEN to a token of that account")
    if isinstance(exc, RepositoryNotFoundError):
        return (f"the hub has no model of that id this token may read ({said}): check the name, "
                "or set HF_TOKEN for a private model")
    if isinstance(exc, HfHubHTTPError):
        return f"the hub answered with an error ({said}); {_download_elsewhere(name)}"
    if isinstance(exc, (ConnectionError, TimeoutError)) or _transport(exc):
        return f"the hub is unreachable ({type(exc).__name__}: {said}); {_download_elsewhere(name)}"
    return f"fetching it from the hub failed ({type(exc).__name__}: {said})"


def _transport(exc: Exception) -> bool:
    """A failure of the HTTP library under huggingface_hub (no DNS, refused, timed out, a proxy),
    which is httpx, httpx2 or requests as its version goes."""
    return type(exc).__module__.partition(".")[0] in ("httpx", "httpx2", "requests", "urllib3")


def _not_fetched(name: str, why: str) -> NoReturn:
    """One line: the model, why the hub did not give it, and what to do."""
    raise FileNotFoundError(f"model {name!r} is neither a local directory nor a complete "
                            f"snapshot in the hub cache, and {why}")


def _download_elsewhere(name: str) -> str:
    return (f"download it where the hub is reachable (`hf download {name} --local-dir DIR`, with "
            "HF_TOKEN set for a gated model) and pass DIR as the model")


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")

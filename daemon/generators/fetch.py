"""Model files on this machine: fetching hub models into the HF cache, and finding them there.

Jobs never download: the backend only asks ``locate_*`` here, which look in the local cache
and folders. ``fetch_models`` (``dropforge models fetch``) is the one place that goes to the
network, run by a person on a machine that has it. Only configs, tokenizer files and
``.safetensors`` weights are fetched or accepted, never pickle files (.bin, .ckpt, .pt).
Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from daemon.errors import ModelUnavailable
from daemon.values import LoraSource, ModelSource

# Component folders of a diffusers repo; root-level files of such repos are configs or, for
# Stable Diffusion, multi-GB original checkpoints that dropforge does not use.
ALLOW_PATTERNS = [
    "model_index.json",
    "*/*.json",
    "*/*.txt",
    "*/*.model",
    "*/*.safetensors",
]
# fp16 variants and non-EMA weights double the download and are never loaded.
CONFIG_PATTERNS = ["*.json", "*.txt", "*.model"]
_PICKLE_NOTE = "dropforge never loads .bin/.ckpt pickle files"
IGNORE_PATTERNS = [
    "*.fp16.*",
    "*non_ema*",
    "*.bin",
    "*.ckpt",
    "*.pt",
    "*.pth",
    "*.onnx",
    "*.msgpack",
]


def hub_cache_dir() -> str | None:
    """Return the Hugging Face cache folder named by ``HF_HUB_CACHE``, or None for the default.

    Read at call time (huggingface_hub reads it once at import) so a changed environment counts.
    """
    return os.environ.get("HF_HUB_CACHE") or None


def fetch_models(
    sources: list[ModelSource], on_progress: Callable[[str], None] | None = None
) -> list[str]:
    """Download every hub-id source into the local HF cache; return one result line per source.

    ``on_progress`` receives a line as each source starts. Folder and file sources are local
    and reported as such. Raises ``ModelUnavailable`` when a download fails.
    """
    from huggingface_hub import snapshot_download

    results: list[str] = []
    for source in sources:
        if source.kind != "hub":
            results.append(f"{source.alias}: {source.ref} (local, nothing to fetch)")
            continue
        if on_progress is not None:
            on_progress(f"{source.alias}: fetching {source.ref}")
        try:
            folder = snapshot_download(
                source.ref,
                cache_dir=hub_cache_dir(),
                allow_patterns=ALLOW_PATTERNS,
                ignore_patterns=IGNORE_PATTERNS,
            )
        except Exception as exc:  # network, auth, unknown repo: all reported as one line
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelUnavailable(
                f'could not fetch model "{source.alias}" ({source.ref}): {first_line}'
            ) from exc
        results.append(f"{source.alias}: {source.ref} fetched to {folder}")
    return results


def _label(source: ModelSource) -> str:
    return f'model "{source.alias}" ({source.ref})'


def _cached_snapshot(repo: str, allow_patterns: list[str] | None = None) -> Path:
    """Return the local snapshot folder of ``repo``; raise OSError/ValueError if not cached."""
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            repo, cache_dir=hub_cache_dir(), local_files_only=True, allow_patterns=allow_patterns
        )
    )


def locate_model(source: ModelSource) -> Path:
    """Return the diffusers folder of a hub or folder source; raise ``ModelUnavailable`` if none."""
    if source.kind == "hub":
        try:
            folder = _cached_snapshot(source.ref)
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"{_label(source)} is not in the local Hugging Face cache: run "
                '"dropforge models fetch" on a machine with network access, or point '
                f"[models] {source.alias} at a local diffusers folder"
            ) from exc
    else:
        folder = Path(source.ref)
        if not folder.is_dir():
            raise ModelUnavailable(
                f"{_label(source)} is not a folder: point [models] {source.alias} at a "
                "diffusers folder"
            )
    if not (folder / "model_index.json").is_file():
        raise ModelUnavailable(
            f"{_label(source)} is not a diffusers pipeline (no model_index.json)"
        )
    if not any(folder.rglob("*.safetensors")):
        if source.kind == "hub":  # a partial snapshot, or a repo of pickle weights only
            raise ModelUnavailable(
                f"{_label(source)} has no .safetensors weights in the local Hugging Face cache: "
                f'run "dropforge models fetch", which fetches only those ({_PICKLE_NOTE})'
            )
        raise ModelUnavailable(f"{_label(source)} has no .safetensors weights ({_PICKLE_NOTE})")
    return folder


def _locate_safetensors(label: str, path: Path) -> Path:
    if path.suffix != ".safetensors":
        raise ModelUnavailable(f"{label} is not a .safetensors file ({_PICKLE_NOTE})")
    if not path.is_file():
        raise ModelUnavailable(f"{label}: file not found")
    return path


def locate_single_file(source: ModelSource) -> Path:
    """Return the checkpoint of a file source; raise ``ModelUnavailable`` if it cannot be used."""
    return _locate_safetensors(_label(source), Path(source.ref))


def locate_lora(lora: LoraSource) -> Path:
    """Return the .safetensors file of a LoRA; raise ``ModelUnavailable`` if it cannot be used."""
    return _locate_safetensors(f'LoRA "{lora.alias}" ({lora.path})', Path(lora.path))


def locate_configs(source: ModelSource, repo: str) -> Path:
    """Return the cached configs of ``repo`` that the single-file ``source`` is built with."""
    try:
        return _cached_snapshot(repo, CONFIG_PATTERNS)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            f"{_label(source)} needs the {repo} configs, which are not in the local Hugging Face "
            f"cache: run \"hf download {repo} --include '*.json' '*.txt'\" on a machine with "
            f"network access, or point [models] {source.alias} at a diffusers folder"
        ) from exc

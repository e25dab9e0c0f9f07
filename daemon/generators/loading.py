"""Loading diffusers pipelines from disk onto a device: image models and Shap-E mesh models.

Models come from the local HF cache, a diffusers folder or a single .safetensors file (image
models only), never from the network and never from pickle files. torch and diffusers are
imported on first use, never at import, so that the CLI starts fast.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import ConfigError, ModelUnavailable
from daemon.generators.fetch import locate_configs, locate_model, locate_single_file
from daemon.values import ModelSource

if TYPE_CHECKING:
    import torch

MESH_PIPELINE = "ShapEImg2ImgPipeline"


@dataclass(frozen=True)
class MemorySavers:
    """The optional memory savers from config.toml."""

    cpu_offload: bool = False  # CUDA only
    vae_slicing: bool = False
    vae_tiling: bool = False
    attention_slicing: bool = False


def backend_versions() -> dict[str, str]:
    """Return the installed diffusers, torch and transformers versions, without importing them."""
    versions: dict[str, str] = {}
    for name in ("diffusers", "torch", "transformers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def is_out_of_memory(exc: BaseException) -> bool:
    """Tell whether ``exc`` is an accelerator or host out-of-memory error."""
    # By class name, so that telling does not import torch (torch.OutOfMemoryError).
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


# Image processors diffusers imports from transformers (its Stable Diffusion, SDXL and Shap-E
# pipelines, and its IP-adapter loader, which every image pipeline pulls in).
_IMAGE_PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor")


def use_pillow_image_processors() -> None:
    """Without torchvision, let transformers' image processors be its Pillow ones, quietly.

    transformers 5 gives ``CLIPImageProcessor`` a torchvision backend; without torchvision the
    name falls back to ``CLIPImageProcessorPil`` with a warning per name, which every
    ``import diffusers`` set off and no user can act on (dropforge needs no torchvision). Bound
    here before diffusers looks them up, the names resolve to the class transformers' own
    fallback picks, without that warning. Nothing changes with torchvision installed, or with a
    transformers that has no ``…Pil`` classes.
    """
    if importlib.util.find_spec("torchvision") is not None:
        return
    transformers = importlib.import_module("transformers")
    for name in _IMAGE_PROCESSORS:
        if name in vars(transformers):
            continue  # already resolved (by us, or by transformers' fallback)
        try:
            pillow = getattr(transformers, f"{name}Pil")
        except (AttributeError, ImportError):
            continue  # an older transformers: the plain name is the Pillow processor
        setattr(transformers, name, pillow)


def diffusers_module(submodule: str = "") -> Any:
    """Import diffusers (or one of its submodules) on first use; it is only partly typed."""
    use_pillow_image_processors()
    return importlib.import_module("diffusers" + (f".{submodule}" if submodule else ""))


def first_line(exc: BaseException) -> str:
    """Return the first line of an exception's message, or its class name when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def resolve_device(requested: str, threads: int | None) -> str:
    """Turn ``auto``/``cuda``/... into the torch device to use; raise ConfigError if absent."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    wanted = requested
    if wanted == "auto":
        if torch.cuda.is_available():
            wanted = "cuda:0"
        elif torch.backends.mps.is_available():
            wanted = "mps"
        else:
            wanted = "cpu"
    elif wanted == "cuda":
        wanted = "cuda:0"
    if wanted.startswith("cuda"):
        index = wanted.partition(":")[2]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise ConfigError(
                f'device "{requested}" is not available: torch sees '
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif wanted == "mps" and not torch.backends.mps.is_available():
        raise ConfigError('device "mps" is not available on this machine')
    elif wanted != "cpu":
        raise ConfigError(f'device must be auto, cpu, cuda, cuda:N or mps, got "{requested}"')
    return wanted


def dtype_for(device: str) -> torch.dtype:
    """Return the weights' dtype: fp16 halves memory on CUDA; MPS and CPU stay in fp32."""
    import torch

    return torch.float16 if device.startswith("cuda") else torch.float32


def _quiet() -> None:
    """Silence loading bars and notes, which would litter a daemon's log; failures raise."""
    transformers_logging = importlib.import_module("transformers.utils.logging")
    for logging in (diffusers_module().utils.logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def _label(source: ModelSource) -> str:
    return f'model "{source.alias}" ({source.ref})'


def _options(device: str) -> dict[str, Any]:
    return {"dtype": dtype_for(device), "use_safetensors": True, "local_files_only": True}


def _place(pipe: Any, device: str, savers: MemorySavers) -> None:
    pipe.set_progress_bar_config(disable=True)
    if savers.cpu_offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)


def load_image_pipeline(source: ModelSource, device: str, savers: MemorySavers) -> Any:
    """Load the text-to-image pipeline of ``source`` onto ``device`` with ``savers`` applied."""
    diffusers = diffusers_module()
    _quiet()
    try:
        if source.kind == "file":
            pipe = _load_single_file(source, _options(device))
        else:
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
                str(locate_model(source)), **_options(device)
            )
    except ModelUnavailable:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelUnavailable(f"{_label(source)} could not be loaded: {first_line(exc)}") from exc
    _place(pipe, device, savers)
    apply_savers(pipe, savers.vae_slicing, savers.vae_tiling, savers.attention_slicing)
    return pipe


def load_mesh_pipeline(source: ModelSource, device: str, savers: MemorySavers) -> Any:
    """Load the Shap-E image-to-3D pipeline of ``source`` onto ``device``."""
    if source.kind == "file":
        raise ModelUnavailable(
            f"{_label(source)} is a single file; a mesh model is a diffusers folder or a hub id "
            "(e.g. openai/shap-e-img2img)"
        )
    folder = locate_model(source)
    class_name = _pipeline_class(folder)
    if class_name != MESH_PIPELINE:
        raise ModelUnavailable(
            f"{_label(source)} is a {class_name}, not a Shap-E image-to-3D pipeline "
            f"({MESH_PIPELINE})"
        )
    _quiet()
    try:
        pipe = diffusers_module().ShapEImg2ImgPipeline.from_pretrained(
            str(folder), **_options(device)
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelUnavailable(f"{_label(source)} could not be loaded: {first_line(exc)}") from exc
    _place(pipe, device, savers)
    return pipe


def _pipeline_class(folder: Path) -> str:
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    return str(index.get("_class_name", "unknown pipeline"))


@dataclass(frozen=True)
class _Shape:
    """Stands in for a tensor where diffusers only looks at ``.shape``."""

    shape: list[int]


def _load_single_file(source: ModelSource, options: dict[str, Any]) -> Any:
    """Load a single-file checkpoint with its architecture's configs from the local cache."""
    from safetensors import safe_open

    path = locate_single_file(source)
    # Only key names and shapes tell the architecture: read the header, not the weights.
    with safe_open(str(path), framework="pt") as handle:
        names = handle.keys()
        shapes = {name: _Shape(handle.get_slice(name).get_shape()) for name in names}
    single_file_utils = diffusers_module("loaders.single_file_utils")
    repo = single_file_utils.fetch_diffusers_config(shapes)["pretrained_model_name_or_path"]
    # Located here because diffusers itself would go online for missing configs.
    config = locate_configs(source, str(repo))
    class_name = _pipeline_class(config)
    pipeline_class = getattr(diffusers_module(), class_name, None)
    if pipeline_class is None or not hasattr(pipeline_class, "from_single_file"):
        raise ModelUnavailable(
            f"{_label(source)}: {class_name} cannot load single-file checkpoints"
        )
    return pipeline_class.from_single_file(str(path), config=str(config), **options)


def apply_savers(pipe: Any, vae_slicing: bool, vae_tiling: bool, attention: bool) -> None:
    """Switch on the chosen memory savers of an image pipeline."""
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    if attention:
        pipe.enable_attention_slicing()

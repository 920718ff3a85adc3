"""Pipeline folders that any diffusers loader opens: the layout of diffusers' custom-code repositories.

``save_pipeline`` writes ``save_pretrained``'s files and makes the folder self-contained:

    model_index.json      {"_class_name": ["pipeline", "UnconditionalPipeline"],
                           "unet": ["unet", "UNet"], "scheduler": ["scheduler", "NoiseScheduler"]}
    pipeline.py           the pipeline class (a copy of diffusion/pipeline.py)
    unet/unet.py          the model class beside its config.json and weights
    scheduler/scheduler.py  the scheduler class beside scheduler_config.json
    README.md             the model card; samples.png, the grid it shows

diffusers resolves a ``[module, class]`` pair whose ``<module>.py`` lies in the component's folder (or, for
``_class_name``, in the pipeline folder) from that file, so ``DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)`` loads it with no rlgen import; ``trust_remote_code`` is diffusers' consent to run the
folder's code. ``load_pipeline`` builds the pipeline from the installed ``diffusion`` classes instead and runs no
code from the folder.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .files import replace_folder_atomically, write_text_atomically

if TYPE_CHECKING:
    from .pipeline import UnconditionalPipeline

MODEL_INDEX = "model_index.json"
CARD = "README.md"
GRID = "samples.png"
_COMPONENTS = ("unet", "scheduler")  # the model_index.json entries load_pipeline needs, each a folder beside it
_SOURCES = {"pipeline": ("pipeline.py", "UnconditionalPipeline"), "unet": ("unet.py", "UNet"),
            "scheduler": ("scheduler.py", "NoiseScheduler")}


class PipelineFolderError(ValueError):
    """A pipeline folder whose model_index.json (or a component folder it names) is missing or malformed."""


def _make_self_contained(folder: Path) -> None:
    """Copy the class files into the folder and point model_index.json at them."""
    here = Path(__file__).parent
    index = json.loads((folder / MODEL_INDEX).read_text())
    for component, (file_name, class_name) in _SOURCES.items():
        target = folder / file_name if component == "pipeline" else folder / component / file_name
        shutil.copyfile(here / file_name, target)
        entry = [Path(file_name).stem, class_name]
        index["_class_name" if component == "pipeline" else component] = entry
    (folder / MODEL_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_pipeline(unet: torch.nn.Module, scheduler: Any, path: str | os.PathLike, config: Any = None,
                  grid: str | os.PathLike | None = None, evaluation: dict[str, Any] | None = None) -> Path:
    """Write the pipeline folder atomically (built beside ``path``, then swapped in), model card included."""
    from .pipeline import UnconditionalPipeline

    def write(tmp: Path) -> None:
        UnconditionalPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(tmp))
        _make_self_contained(tmp)
        if grid is not None and Path(grid).is_file():
            shutil.copyfile(grid, tmp / GRID)
        (tmp / CARD).write_text(model_card(unet, scheduler, config, (tmp / GRID).is_file(), evaluation))

    return replace_folder_atomically(path, write)


def find_pipeline_dir(model_dir: str | os.PathLike) -> Path:
    """The pipeline folder of a run folder (or the folder itself); a clear error when there is none."""
    model_dir = Path(model_dir)
    if not (model_dir / MODEL_INDEX).is_file() and (model_dir / "pipeline" / MODEL_INDEX).is_file():
        model_dir = model_dir / "pipeline"
    if not (model_dir / MODEL_INDEX).is_file():
        raise FileNotFoundError(
            f"{model_dir} is not a trained pipeline (no model_index.json); pass the --output folder of "
            "`rlgen diffusion train` or its pipeline/ subfolder"
        )
    return model_dir


def check_model_index(folder: str | os.PathLike) -> dict[str, Any]:
    """Read a pipeline folder's model_index.json; `PipelineFolderError` naming the file and what is wrong with it."""
    index_file = Path(folder) / MODEL_INDEX
    try:
        index = json.loads(index_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineFolderError(f"{index_file} is unreadable or not JSON ({type(exc).__name__}: {exc})") from exc
    if not isinstance(index, dict):
        raise PipelineFolderError(f"{index_file} must hold a JSON object, got {type(index).__name__}")
    for key in _COMPONENTS:
        entry = index.get(key)
        if entry is None:
            raise PipelineFolderError(f"{index_file} has no {key!r} entry (needs {', '.join(map(repr, _COMPONENTS))}); "
                                      "re-export the pipeline with `rlgen diffusion train` or diffusion.export.save_pipeline")
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            raise PipelineFolderError(f"{index_file}: entry {key!r} must be a [module, class] pair, got {entry!r}")
        if not (Path(folder) / key).is_dir():
            raise PipelineFolderError(f"{index_file} names {key!r} but the folder {Path(folder) / key} is missing")
    return index


def load_pipeline(model_dir: str | os.PathLike) -> UnconditionalPipeline:
    """Load a trained pipeline from a run folder (or its ``pipeline/`` subfolder) with the installed classes."""
    from .pipeline import UnconditionalPipeline
    from .scheduler import NoiseScheduler
    from .unet import UNet

    folder = find_pipeline_dir(model_dir)
    check_model_index(folder)
    unet = UNet.from_pretrained(str(folder), subfolder="unet")
    scheduler = NoiseScheduler.from_pretrained(str(folder), subfolder="scheduler")
    return UnconditionalPipeline(unet=unet, scheduler=scheduler)


def model_card(unet: Any, scheduler: Any, config: Any = None, has_grid: bool = False,
               evaluation: dict[str, Any] | None = None) -> str:
    """The README.md of a pipeline folder: model, noise schedule, training config, sample grid and FID."""
    u, s = unet.config, scheduler.config
    params = sum(p.numel() for p in unet.parameters())
    lines = [
        "---", "library_name: diffusers", "tags:", "- unconditional-image-generation", "- ddpm", "- rlgen", "---", "",
        "# Unconditional DDPM", "",
        f"Hand-written DDPM U-Net ({params:,} parameters) trained with `rlgen diffusion train`.", "",
        "## Use", "", "```python", "from diffusers import DiffusionPipeline", "",
        'pipe = DiffusionPipeline.from_pretrained("PATH/TO/THIS/FOLDER", trust_remote_code=True)',
        f"images = pipe(batch_size=4, num_inference_steps={min(50, s.num_train_timesteps)}).images", "```", "",
        "Any diffusers scheduler swaps in with `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`.", "",
        "## Model", "",
        f"- sample size {u.sample_size}, {u.in_channels} channel(s), base width {u.dim}, "
        f"width multipliers {list(u.dim_mults)}, attention {u.attention_heads} x {u.attention_head_dim}",
        "", "## Noise schedule", "",
        f"- {s.beta_schedule} betas over {s.num_train_timesteps} timesteps (beta {s.beta_start} to {s.beta_end}), "
        f"prediction type {s.prediction_type}, timestep spacing {s.timestep_spacing}", "",
    ]
    if config is not None:
        data = config.to_json() if hasattr(config, "to_json") else dict(config)
        lines += ["## Training config", "", "```json", json.dumps(data, indent=2), "```", ""]
    if has_grid:
        lines += ["## Samples", "", f"![samples]({GRID})", ""]
    lines += ["## Evaluation", ""]
    if evaluation:
        e = evaluation
        lines += [
            f"Domain FID {e['fid']:.3f} against the real-vs-real floor {e['floor_fid']:.3f} "
            f"(ratio {e['fid_ratio']:.2f}x; {e['n']} samples, {e['scheduler']} {e['steps']} steps).", "",
        ]
    else:
        lines += ["Not evaluated yet: `rlgen diffusion evaluate RUN_FOLDER` writes the domain FID and its "
                  "real-vs-real floor here.", ""]
    return "\n".join(lines)


def update_model_card(model_dir: str | os.PathLike, config: Any = None,
                      evaluation: dict[str, Any] | None = None, pipe: Any = None) -> Path:
    """Rewrite a pipeline folder's model card (after an evaluation, say); ``pipe``: that folder's pipeline when the
    caller has it loaded already (it is not loaded again)."""
    folder = find_pipeline_dir(model_dir)
    pipe = load_pipeline(folder) if pipe is None else pipe
    text = model_card(pipe.unet, pipe.scheduler, config, (folder / GRID).is_file(), evaluation)
    return write_text_atomically(folder / CARD, text)

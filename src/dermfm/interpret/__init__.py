"""Interpretability of dermfm models: sparse autoencoders on image embeddings, latent naming
and browsing, concept-bottleneck classifiers and artifact suppression.

* :mod:`~dermfm.interpret.sae`: TopK / ReLU+L1 sparse autoencoders trained on cached embeddings.
* :mod:`~dermfm.interpret.naming`: latents named by text embeddings of a vocabulary.
* :mod:`~dermfm.interpret.gallery`: top-activating image grids, an HTML gallery, per-image
  explanations.
* :mod:`~dermfm.interpret.bottleneck`: sparse logistic regression on SAE activations.
* :mod:`~dermfm.interpret.artifacts`: artifact latents, projection off their directions.
* :mod:`~dermfm.interpret.synthetic`: the artifact kinds and synthetic artifacts drawn on
  images, for measurement.

An SAE folder (``sae_config.json`` + ``sae.safetensors``) may hold ``artifacts.json``, the
artifact latents found for it; a model folder may hold its SAE in ``sae/`` (the bundled model
ships one), which :func:`load_suppressor` then uses by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dermfm.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from dermfm.interpret.artifacts import ArtifactSuppressor
    from dermfm.models.base import DermModel

#: File of an SAE folder holding its artifact latents and their directions.
ARTIFACTS_FILE = "artifacts.json"


def default_sae_folder(model: DermModel) -> Path | None:
    """The SAE shipped with a model (``<model folder>/sae/``), if there is one."""
    loaded_from = Path(model.card.loaded_from) if model.card.loaded_from else None
    if loaded_from is None:
        return None
    folder = (loaded_from if loaded_from.is_dir() else loaded_from.parent) / "sae"
    return folder if (folder / "sae_config.json").is_file() else None


def load_suppressor(model: DermModel, sae: str | Path | None = None) -> ArtifactSuppressor:
    """The artifact suppressor of an SAE folder (the model's shipped SAE by default).

    Raises:
        ModelNotAvailableError: no SAE is given or shipped for the model, or the SAE folder
            has no artifact latents yet (``dermfm sae suppress`` finds them).
    """
    import json

    from dermfm.interpret.artifacts import ArtifactSuppressor

    folder = Path(sae) if sae is not None else default_sae_folder(model)
    if folder is None:
        raise ModelNotAvailableError(
            f"no sparse autoencoder ships with model {model.name!r}: train one with "
            "`dermfm sae train`, find its artifact latents with `dermfm sae suppress`, then pass "
            "its folder (--sae FOLDER)"
        )
    file = folder / ARTIFACTS_FILE
    if not file.is_file():
        raise ModelNotAvailableError(
            f"{folder}: no {ARTIFACTS_FILE}; run `dermfm sae suppress {folder}` to find the "
            "artifact latents first"
        )
    suppressor = ArtifactSuppressor.from_dict(json.loads(file.read_text(encoding="utf-8")))
    if suppressor.directions.shape[-1] != model.embed_dim:
        raise ModelNotAvailableError(
            f"{file}: directions of size {suppressor.directions.shape[-1]} do not fit model "
            f"{model.name!r} (embedding size {model.embed_dim})"
        )
    return suppressor


__all__ = ["ARTIFACTS_FILE", "default_sae_folder", "load_suppressor"]

"""Zero-shot differential diagnosis with prompt ensembles and ontology roll-up.

The classifier follows open_clip's ``build_zero_shot_classifier``: each class name is put into every
template, the normalised text embeddings are averaged and re-normalised, and an image's logits are
its cosine similarities times ``1 / temperature`` (the model's own logit scale by default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from dermfm import cache
from dermfm._inputs import ModelSpec, as_batch, resolve_model
from dermfm.io import ImageInput
from dermfm.knowledge import (
    LabelSet,
    Ontology,
    diagnosis_templates,
    fill,
    load_label_set,
    load_ontology,
)
from dermfm.results import ADAPTER_SCORE_KIND, Diagnosis, Prediction, RollupEntry

if TYPE_CHECKING:
    from dermfm.adapters import AdapterSpec


def class_text_embeddings(
    model: ModelSpec, names: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """``(len(names), embed_dim)`` prompt-ensemble class embeddings, cached by content."""
    model = resolve_model(model)
    key = cache.content_key("zeroshot", model.cache_key, list(names), list(templates))

    def compute() -> torch.Tensor:
        prompts = [p for name in names for p in fill(tuple(templates), name)]
        emb = model.encode_texts(prompts).reshape(len(names), len(templates), -1)
        return torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)

    return cache.cached_tensor("classifiers", key, compute, model.cacheable)


class EmbeddingFilter(Protocol):
    """Something that rewrites image embeddings before scoring, e.g. an artifact suppressor
    (:class:`dermfm.interpret.artifacts.ArtifactSuppressor`)."""

    #: what it removes, reported with each diagnosis (e.g. ``["ruler", "hair"]``)
    artifacts: list[str]

    def transform(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Filtered, L2-normalised embeddings of the same shape."""
        ...


class ZeroShotClassifier:
    """Differential diagnosis over a label set, scikit-learn style (``predict_proba``).

    Args:
        model: a loaded :class:`~dermfm.models.DermModel`, a registry name/path, or ``None``.
        labels: a packaged label-set name (``ham7``, ``pad6``, ``derm7pt``, ``f17k114``,
            ``dermnet``, ``all``), a file, a list of class names, or a :class:`LabelSet`.
        templates: a template-set name from the packaged templates file, or a list of templates.
        temperature: softmax temperature over cosine similarities; ``None`` uses the model's
            logit scale (``1 / logit_scale``), as CLIP does.
        ontology: the ontology used for roll-up (packaged one by default).
        suppressor: an :class:`EmbeddingFilter` applied to image embeddings before scoring
            (artifact suppression: see :func:`dermfm.interpret.load_suppressor`).
        adapter: an :class:`~dermfm.adapters.Adapter` (or its file) blended with the zero-shot
            scores, whose calibrated probabilities then replace them; ``True`` uses the one
            shipped with the model for this label set when there is one; ``None`` / ``False``
            (default) scores zero-shot. See :func:`dermfm.adapters.resolve_adapter`.
    """

    def __init__(
        self,
        model: ModelSpec = None,
        labels: str | Path | Sequence[str] | LabelSet = "all",
        templates: str | Sequence[str] = "skin8",
        temperature: float | None = None,
        ontology: Ontology | None = None,
        suppressor: EmbeddingFilter | None = None,
        adapter: AdapterSpec = None,
    ) -> None:
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.model = resolve_model(model)
        self.ontology = ontology or load_ontology()
        self.label_set = load_label_set(labels, self.ontology)
        self.templates = (
            diagnosis_templates(templates) if isinstance(templates, str) else tuple(templates)
        )
        self.temperature = temperature if temperature is not None else 1.0 / self.model.logit_scale
        self.suppressor = suppressor
        self._weights: torch.Tensor | None = None
        self._rollup_nodes, self._rollup_matrix = self._build_rollup()
        from dermfm.adapters import resolve_adapter

        self.adapter = resolve_adapter(self.model, self.label_set, adapter)
        if self.adapter is not None and temperature is not None:
            raise ValueError(
                "an adapter carries its own calibrated temperature: drop temperature, or "
                "pass adapter=False (--no-adapter)"
            )

    @property
    def weights(self) -> torch.Tensor:
        """``(n_classes, embed_dim)`` class embeddings (built on first use, then cached)."""
        if self._weights is None:
            self._weights = class_text_embeddings(self.model, self.label_set.names, self.templates)
        return self._weights

    def _build_rollup(self) -> tuple[list[str], torch.Tensor]:
        """Ancestor ids and the ``(n_ancestors, n_classes)`` 0/1 membership matrix."""
        nodes: list[str] = []
        position: dict[str, int] = {}
        pairs: list[tuple[int, int]] = []
        for c, cls in enumerate(self.label_set.classes):
            if cls.node is None:
                continue
            for anc in self.ontology.ancestors(cls.node):
                if anc.id not in position:
                    position[anc.id] = len(nodes)
                    nodes.append(anc.id)
                pairs.append((position[anc.id], c))
        matrix = torch.zeros(len(nodes), len(self.label_set))
        for row, col in pairs:
            matrix[row, col] = 1.0
        return nodes, matrix

    def similarities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(N, n_classes)`` cosine similarities of image and class embeddings (after the
        suppressor, when there is one)."""
        return self._filtered(embeddings) @ self.weights.T

    def _filtered(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.suppressor is not None:
            return self.suppressor.transform(embeddings.float())
        return embeddings.float()

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(N, n_classes)`` cosine similarities divided by the temperature, or with an
        adapter its calibrated logits (:meth:`dermfm.adapters.Adapter.logits`)."""
        if self.adapter is not None:
            filtered = self._filtered(embeddings)
            return self.adapter.logits(filtered, filtered @ self.weights.T)
        return self.similarities(embeddings) / self.temperature

    def predict_proba(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(N, n_classes)`` softmax probabilities from image embeddings: uncalibrated, or
        calibrated on a validation split with an adapter (:attr:`score_kind` says which)."""
        return self.logits(embeddings).softmax(dim=-1)

    @property
    def score_kind(self) -> str:
        """What :meth:`predict_proba` returns (the ``score_kind`` of each :class:`Diagnosis`)."""
        return ADAPTER_SCORE_KIND if self.adapter is not None else Diagnosis.score_kind

    def _class_attribute(self, attribute: str) -> list[str]:
        return [
            self.ontology.attribute(c.node, attribute) if c.node else "unknown"
            for c in self.label_set.classes
        ]

    def summarise(
        self,
        source: str,
        probs: torch.Tensor,
        top_k: int = 5,
        tta: bool = False,
        fast_decode: bool = False,
    ) -> Diagnosis:
        """The :class:`Diagnosis` of one image from its class probabilities ``(n_classes,)``
        (top-k predictions, ontology roll-up, malignancy and urgency mass, entropy, margin);
        ``tta`` and ``fast_decode`` record how its embedding was computed."""
        classes = self.label_set.classes
        order = torch.argsort(probs, descending=True).tolist()
        predictions = [
            Prediction(
                classes[i].label,
                classes[i].name,
                classes[i].node,
                float(probs[i]),
                self.ontology[classes[i].node].icd10cm if classes[i].node else None,
            )
            for i in order[: max(1, top_k)]
        ]
        mass = (self._rollup_matrix @ probs).tolist()
        rollup = sorted(
            (
                RollupEntry(n, self.ontology[n].name, self.ontology.depth(n), float(p))
                for n, p in zip(self._rollup_nodes, mass, strict=True)
            ),
            key=lambda r: (r.depth, -r.probability),
        )
        groups: dict[str, dict[str, float]] = {"malignancy": {}, "urgency": {}}
        for attribute, totals in groups.items():
            for value, p in zip(self._class_attribute(attribute), probs.tolist(), strict=True):
                totals[value] = totals.get(value, 0.0) + p
        n = len(classes)
        entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum())
        entropy = entropy / math.log(n) if n > 1 else 0.0
        top2 = probs[order[:2]].tolist()
        return Diagnosis(
            source=source,
            model=self.model.name,
            label_set=self.label_set.name,
            predictions=predictions,
            rollup=rollup,
            malignancy=dict(sorted(groups["malignancy"].items(), key=lambda kv: -kv[1])),
            urgency=dict(sorted(groups["urgency"].items(), key=lambda kv: -kv[1])),
            entropy=entropy,
            margin=float(top2[0] - top2[1]) if len(top2) == 2 else 1.0,
            temperature=self.adapter.temperature_ if self.adapter else self.temperature,
            score_kind=self.score_kind,
            suppressed=sorted(set(self.suppressor.artifacts)) if self.suppressor else [],
            adapter=self.adapter.describe() if self.adapter else None,
            tta=tta,
            fast_decode=fast_decode,
        )

    def diagnose(
        self,
        images: Sequence[ImageInput],
        top_k: int = 5,
        batch_size: int = 32,
        show_progress: bool | None = None,
        tta: bool = False,
        fast_decode: bool = False,
    ) -> list[Diagnosis]:
        """One :class:`Diagnosis` per input, in order; unreadable inputs carry ``error``.
        ``tta``: average the embeddings of flipped and rotated views of each image
        (:meth:`~dermfm.models.DermModel.encode_images`). ``fast_decode``: decode large JPEGs at
        a reduced scale (:meth:`~dermfm.models.DermModel.embed_images`; default: full
        resolution, the reference decode)."""
        embedded = self.model.embed_images(
            images,
            batch_size=batch_size,
            show_progress=show_progress,
            tta=tta,
            fast_decode=fast_decode,
        )
        probs = self.predict_proba(embedded.vectors) if embedded.ok else None
        row = {i: r for r, i in enumerate(embedded.ok)}
        results = []
        for i, source in enumerate(embedded.sources):
            if i in embedded.errors:
                results.append(
                    Diagnosis(
                        source,
                        self.model.name,
                        self.label_set.name,
                        error=embedded.errors[i].reason,
                    )
                )
            else:
                results.append(self.summarise(source, probs[row[i]], top_k, tta, fast_decode))
        return results


def diagnose(
    images: ImageInput | Sequence[ImageInput],
    model: ModelSpec = None,
    labels: str | Path | Sequence[str] | LabelSet = "all",
    top_k: int = 5,
    templates: str | Sequence[str] = "skin8",
    temperature: float | None = None,
    batch_size: int = 32,
    show_progress: bool | None = None,
    suppress_artifacts: bool | str | Path = False,
    adapter: AdapterSpec = True,
    tta: bool = False,
    fast_decode: bool = False,
) -> Diagnosis | list[Diagnosis]:
    """Differential diagnosis in one call.

    Returns one :class:`Diagnosis` for a single image, or a list for a sequence of images (failed
    inputs keep their place, with ``error`` set). Probabilities are uncalibrated zero-shot
    softmax scores over the label set, or an adapter's calibrated ones (``score_kind`` says
    which); ``rollup`` sums them up the ontology (e.g. malignant vs benign).
    ``suppress_artifacts``: ``True`` projects the image embeddings off the artifact directions
    (rulers, ink, hair, dermoscope borders, gel, watermarks) of the model's shipped sparse
    autoencoder, or of the SAE folder given as a path (:func:`dermfm.interpret.load_suppressor`).
    ``adapter``: ``True`` (default) uses the adapter shipped with the model for this label set
    when there is one, a path or :class:`~dermfm.adapters.Adapter` that adapter, ``False``
    none. ``tta``: test-time augmentation (flips and 90-degree rotations, embeddings averaged).
    ``fast_decode``: decode camera-size JPEGs at a reduced scale (faster; the default full
    resolution decode is the reference, docs/benchmarks.md measures the difference).
    """
    batch, single = as_batch(images)
    model = resolve_model(model)
    suppressor = None
    if suppress_artifacts:
        from dermfm.interpret import load_suppressor

        sae = None if suppress_artifacts is True else suppress_artifacts
        suppressor = load_suppressor(model, sae)  # type: ignore[arg-type]
    clf = ZeroShotClassifier(
        model, labels, templates, temperature, suppressor=suppressor, adapter=adapter
    )
    results = clf.diagnose(
        batch,
        top_k=top_k,
        batch_size=batch_size,
        show_progress=show_progress,
        tta=tta,
        fast_decode=fast_decode,
    )
    return results[0] if single else results

"""Concept annotation with the MONET protocol (Kim et al., Nature Medicine 2024).

For each template ``t``, a concept's target similarity is the image's cosine similarity to the
template filled with each synonym, averaged over synonyms; the reference similarity is the mean
similarity to the template's reference prompts. The score is the mean over templates of
``softmax([target, reference] / temperature)[0]``. Scores are raw (uncalibrated); ``present`` is
``score >= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from dermfm import cache
from dermfm._inputs import ModelSpec, as_batch, resolve_model
from dermfm.io import ImageInput
from dermfm.knowledge import ConceptProtocol, ConceptVocabulary, concept_protocol, resolve_concepts
from dermfm.models import DermModel
from dermfm.results import ConceptAnnotation, ConceptScore


def _prompt_embeddings(model: DermModel, prompts: list[str]) -> torch.Tensor:
    """Normalised embeddings of ``prompts``, cached by model and prompt text."""
    key = cache.content_key("concept-prompts", model.cache_key, prompts)
    return cache.cached_tensor(
        "concepts", key, lambda: model.encode_texts(prompts), model.cacheable
    )


class ConceptAnnotator:
    """Scores every concept of a vocabulary on images.

    Args:
        model: a loaded model, a registry name/path, or ``None`` for the default.
        concepts: a :class:`ConceptVocabulary`, a path to a vocabulary file, a list of concept
            ids and/or group names to select from the packaged vocabulary, or ``None`` for all.
        protocol: a packaged protocol name (``monet``) or a :class:`ConceptProtocol`.
        threshold: score at or above which a concept is reported present.
        temperature: overrides the protocol's temperature.
    """

    def __init__(
        self,
        model: ModelSpec = None,
        concepts: ConceptVocabulary | str | Path | Sequence[str] | None = None,
        protocol: str | ConceptProtocol = "monet",
        threshold: float = 0.5,
        temperature: float | None = None,
    ) -> None:
        self.model = resolve_model(model)
        self.vocabulary = resolve_concepts(concepts)
        self.protocol = concept_protocol(protocol) if isinstance(protocol, str) else protocol
        self.temperature = temperature or self.protocol.temperature
        self.threshold = threshold
        self._targets: torch.Tensor | None = None
        self._reference: torch.Tensor | None = None

    def _prepare(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, T, D)`` synonym-mean target and ``(T, D)`` reference-mean embeddings.

        Similarity is linear, so the mean similarity over synonyms (or reference prompts) equals
        the similarity to the mean of their normalised embeddings.
        """
        if self._targets is None or self._reference is None:
            targets = []
            for concept in self.vocabulary:
                prompts = [
                    t.replace("{}", s) for t in self.protocol.targets for s in concept.synonyms
                ]
                emb = _prompt_embeddings(self.model, prompts)
                targets.append(
                    emb.reshape(len(self.protocol.targets), len(concept.synonyms), -1).mean(dim=1)
                )
            self._targets = torch.stack(targets)
            self._reference = torch.stack(
                [
                    _prompt_embeddings(self.model, list(refs)).mean(dim=0)
                    for refs in self.protocol.references
                ]
            )
        return self._targets, self._reference

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(N, n_concepts)`` MONET scores of L2-normalised image embeddings ``(N, D)``."""
        targets, reference = self._prepare()
        x = embeddings.float()
        target_sim = torch.einsum("nd,ktd->nkt", x, targets)
        reference_sim = (x @ reference.T).unsqueeze(1)  # (N, 1, T)
        return torch.sigmoid((target_sim - reference_sim) / self.temperature).mean(dim=-1)

    def annotate(
        self,
        images: Sequence[ImageInput],
        batch_size: int = 32,
        show_progress: bool | None = None,
    ) -> list[ConceptAnnotation]:
        """One :class:`ConceptAnnotation` per input, in order; failed inputs carry ``error``."""
        embedded = self.model.embed_images(
            images, batch_size=batch_size, show_progress=show_progress
        )
        table = self.scores(embedded.vectors) if embedded.ok else None
        row = {i: r for r, i in enumerate(embedded.ok)}
        out = []
        for i, source in enumerate(embedded.sources):
            if i in embedded.errors:
                result = ConceptAnnotation(source, self.model.name, threshold=self.threshold)
                result.error = embedded.errors[i].reason
            else:
                result = self.annotation(source, table[row[i]])
            out.append(result)
        return out

    def annotation(self, source: str, scores: torch.Tensor) -> ConceptAnnotation:
        """The :class:`ConceptAnnotation` of one image from its row of :meth:`scores`."""
        return ConceptAnnotation(
            source,
            self.model.name,
            scores=[
                ConceptScore(c.id, c.name, c.group, float(s), bool(s >= self.threshold))
                for c, s in zip(self.vocabulary, scores.tolist(), strict=True)
            ],
            threshold=self.threshold,
        )


def annotate_concepts(
    images: ImageInput | Sequence[ImageInput],
    model: ModelSpec = None,
    concepts: ConceptVocabulary | str | Path | Sequence[str] | None = None,
    threshold: float = 0.5,
    batch_size: int = 32,
    show_progress: bool | None = None,
) -> ConceptAnnotation | list[ConceptAnnotation]:
    """Score clinical concepts on one image (returns one result) or many (returns a list)."""
    batch, single = as_batch(images)
    annotator = ConceptAnnotator(model, concepts, threshold=threshold)
    results = annotator.annotate(batch, batch_size=batch_size, show_progress=show_progress)
    return results[0] if single else results

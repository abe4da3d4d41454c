"""A grounded consultation about one skin image: the model decides, text only explains.

:class:`Assistant` holds what is loaded once (model, classifier, concept annotator, calibration,
rules, knowledge base, writer, case index) and :meth:`Assistant.consult` runs the steps in order:

1. image quality and relevance (:mod:`~dermfm.assistant.quality`): a blank, blurry, dark or
   non-skin photo gets a request for a better photo instead of a guess;
2. modality (zero-shot, or as given);
3. characteristics (MONET concept scores);
4. differential over the ontology's label set, with calibrated probabilities and a conformal
   prediction set when the model has a calibration (:mod:`~dermfm.assistant.calibration`),
   re-weighted by what the patient said through text prompts;
5. triage by explicit rules (:mod:`~dermfm.assistant.rules`);
6. similar reference cases, knowledge-base information, limitations, disclaimer;
7. a narrative by the writer, validated, with the template writer as fallback.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dermfm._inputs import ModelSpec, resolve_model
from dermfm.assistant.calibration import AssistantCalibration, load_calibration
from dermfm.assistant.modality import MODALITIES, modality_scores
from dermfm.assistant.quality import SKIN_REFERENCE_FILE, SkinReference, check_quality, unreadable
from dermfm.assistant.report import (
    Candidate,
    CategoryScore,
    Characteristic,
    ConsultReport,
    DicomReference,
    Differential,
    Limitation,
    Message,
    Modality,
    PatientDetails,
    PredictionSet,
    SimilarCase,
    Triage,
    percent,
)
from dermfm.assistant.settings import load_settings
from dermfm.errors import ImageError
from dermfm.io import DicomFrame, ImageInput, load_image
from dermfm.results import ADAPTER_SCORE_KIND

if TYPE_CHECKING:
    from dermfm.adapters import AdapterSpec
    from dermfm.assistant.writers import Writer
    from dermfm.retrieval import Index
    from dermfm.zeroshot import ZeroShotClassifier


def context_templates(
    settings: Mapping[str, Any], patient: PatientDetails, modality: str
) -> list[str]:
    """The context prompt templates (``{}`` = class name) that the patient details fill."""
    section = settings["context"]
    values: dict[str, str] = {"modality": settings["modality"][modality][0]}
    if patient.site:
        values["site"] = patient.site
    if patient.age is not None:
        values["age"] = str(patient.age)
    if patient.sex:
        values["sex"] = patient.sex
    phrases = [section["evolution"][e] for e in patient.evolution if e in section["evolution"]]
    if phrases:
        values["evolution"] = " and ".join(phrases)
    if set(values) == {"modality"}:
        return []
    out = []
    for template in section["templates"]:
        try:
            out.append(template.replace("{}", "{name}").format_map({**values, "name": "{}"}))
        except KeyError:
            continue
    return out


class Assistant:
    """Grounded consultations with one model.

    Args:
        model: a loaded model, a registry name or path, or ``None`` (the bundled model).
        writer: a :class:`~dermfm.assistant.writers.Writer`, or ``None`` for the template writer.
        cases: a case index (:class:`~dermfm.Index` or its folder) for similar cases.
        calibration: a calibration folder; ``None`` uses the model's own (when it has one),
            ``False`` uses none (probabilities are then labelled raw scores).
        rules: extra rule files (add or override rules by id).
        knowledge: extra patient-information files.
        settings: a ``consult.yaml``-style file overriding the packaged settings.
        skin_reference: a :class:`~dermfm.assistant.quality.SkinReference` file for the
            "is this skin?" check (``None``: the packaged one; ``False``: no check, and the
            report says so).
        suppress_artifacts: project artifact directions out of the embedding first (``True``:
            the model's shipped SAE; a path: that SAE folder).
        encode: embeds one preprocessed image ``(3, H, W)`` to ``(D,)`` instead of calling the
            model directly (the server passes its micro-batcher).
        adapter: the differential's adapter (:func:`dermfm.adapters.resolve_adapter`):
            ``True`` (default) the model's shipped adapter for the label set when there is
            one, unless the calibration was fitted on zero-shot scores; a file or
            :class:`~dermfm.adapters.Adapter`; ``False`` none. The calibration's temperature
            and conformal threshold apply only to the scores they were fitted on
            (``dermfm assistant calibrate --adapter``); an adapter whose scores they were not
            fitted on shows its own calibrated probabilities without a prediction set.
    """

    def __init__(
        self,
        model: ModelSpec = None,
        *,
        writer: Writer | None = None,
        cases: Index | str | Path | None = None,
        calibration: str | Path | bool | None = None,
        rules: Sequence[str | Path] = (),
        knowledge: Sequence[str | Path] = (),
        settings: str | Path | None = None,
        skin_reference: str | Path | bool | None = None,
        suppress_artifacts: bool | str | Path = False,
        encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        adapter: AdapterSpec = True,
    ) -> None:
        from dermfm.assistant.rules import load_rules
        from dermfm.assistant.writers import TemplateWriter
        from dermfm.concepts import ConceptAnnotator
        from dermfm.knowledge.patient_info import load_patient_info
        from dermfm.retrieval import Index
        from dermfm.zeroshot import ZeroShotClassifier

        self.model = resolve_model(model)
        self.encode = encode or (lambda pixels: self.model.encode_images(pixels[None])[0])
        self.settings = load_settings(settings)
        self.calibration: AssistantCalibration | None = (
            None
            if calibration is False
            else load_calibration(self.model, None if calibration in (None, True) else calibration)
        )
        self.suppressor = None
        if suppress_artifacts:
            from dermfm.interpret import load_suppressor

            sae = None if suppress_artifacts is True else suppress_artifacts
            self.suppressor = load_suppressor(self.model, sae)  # type: ignore[arg-type]
        dx = self.settings["differential"]
        label_set = self.calibration.label_set if self.calibration else dx["label_set"]
        self.templates = self.calibration.templates if self.calibration else dx["templates"]
        if adapter is True and self.calibration and self.calibration.adapter is None:
            adapter = False  # a calibration of zero-shot scores: the shipped adapter defers
        self.classifier = ZeroShotClassifier(self.model, label_set, self.templates, adapter=adapter)
        fitted_with = self.classifier.adapter.identity if self.classifier.adapter else None
        #: the calibration of the differential's scores (``None`` when it was fitted on others)
        self.differential_calibration = (
            self.calibration
            if self.calibration and self.calibration.adapter == fitted_with
            else None
        )
        self.annotator = ConceptAnnotator(self.model, self.settings["characteristics"]["groups"])
        self.rules = load_rules(rules)
        self.patient_info = load_patient_info(knowledge)
        self.writer: Writer = writer or TemplateWriter()
        self.skin_reference = (
            None
            if skin_reference is False
            else SkinReference.load(
                SKIN_REFERENCE_FILE if skin_reference in (None, True) else skin_reference
            )
        )
        self.index = Index.open(cases, self.model) if isinstance(cases, str | Path) else cases

    # ------------------------------------------------------------------ steps

    def _embed(self, image: Any) -> torch.Tensor:
        embedding = self.encode(self.model.preprocess(image))
        if self.suppressor is not None:  # one embedding for every step: artifacts removed
            embedding = self.suppressor.transform(embedding[None])[0]
        return embedding

    def _modality(self, embedding: torch.Tensor, patient: PatientDetails) -> Modality:
        if patient.modality:
            return Modality(
                label=patient.modality, probability=1.0, given=True, score_kind="stated by the user"
            )
        probs = modality_scores(self.model, embedding[None], self.settings)[0]
        best = int(probs.argmax())
        return Modality(label=MODALITIES[best], probability=float(probs[best]))

    def _characteristics(self, embedding: torch.Tensor) -> list[Characteristic]:
        scores = self.annotator.scores(embedding[None])[0].tolist()
        threshold = self.annotator.threshold
        found = [
            Characteristic(id=c.id, name=c.name, group=c.group, score=s, present=s >= threshold)
            for c, s in zip(self.annotator.vocabulary, scores, strict=True)
        ]
        present = sorted((c for c in found if c.present), key=lambda c: -c.score)
        return present[: int(self.settings["characteristics"]["max_listed"])]

    def _classifier_for(self, context: list[str]) -> ZeroShotClassifier:
        from dermfm.zeroshot import ZeroShotClassifier

        if not context:
            return self.classifier
        return ZeroShotClassifier(
            self.model,
            self.classifier.label_set,
            [*self.classifier.templates, *context],
            ontology=self.classifier.ontology,
            suppressor=None,
            adapter=self.classifier.adapter,
        )

    def _candidates(
        self, clf: ZeroShotClassifier, embedding: torch.Tensor, source: str, modality: str
    ) -> tuple[list[Candidate], Any, PredictionSet | None]:
        logits = clf.logits(embedding[None])[0]
        calibration = self.differential_calibration
        probs = calibration.probabilities(logits, modality) if calibration else logits.softmax(-1)
        top_k = int(self.settings["differential"]["top_k"])
        summary = clf.summarise(source, probs, top_k)
        classes = clf.label_set.classes
        in_set: list[int] = calibration.prediction_set(probs, modality) if calibration else []
        ontology = clf.ontology

        def candidate(rank: int, index: int) -> Candidate:
            cls = classes[index]
            node = cls.node
            parent = ontology[node].parent if node else None
            return Candidate(
                rank=rank,
                label=cls.label,
                name=ontology[node].name if node else cls.name,
                node=node,
                probability=float(probs[index]),
                in_prediction_set=index in in_set,
                malignancy=ontology.attribute(node, "malignancy") if node else "unknown",
                urgency=ontology.attribute(node, "urgency") if node else "unknown",
                category=ontology[parent].name if parent else None,
                icd10cm=ontology[node].icd10cm if node else None,
            )

        order = torch.argsort(probs, descending=True).tolist()
        candidates = [candidate(r + 1, i) for r, i in enumerate(order[:top_k])]
        # members of a small prediction set beyond the top-k are listed too (the set is the
        # safety net); a large set is only named in ``prediction_set``
        if len(in_set) <= int(self.settings["differential"]["max_listed_set"]):
            candidates += [
                candidate(order.index(i) + 1, i) for i in in_set if order.index(i) >= top_k
            ]
        prediction_set = None
        if calibration:
            group = calibration.group(modality)
            prediction_set = PredictionSet(
                labels=[classes[i].label for i in in_set],
                names=[classes[i].name for i in in_set],
                codes=[
                    ontology[classes[i].node].icd10cm if classes[i].node else None for i in in_set
                ],
                coverage=calibration.coverage,
                measured_coverage=group.measured.get("coverage"),
                method=calibration.method,
                calibrated_on=group.calibrated_on,
            )
        return candidates, summary, prediction_set

    def _differential(
        self, embedding: torch.Tensor, source: str, modality: str, patient: PatientDetails
    ) -> Differential:
        candidates, summary, prediction_set = self._candidates(
            self.classifier, embedding, source, modality
        )
        context = context_templates(self.settings, patient, modality)
        image_only = None
        if context:
            image_only = candidates
            candidates, summary, prediction_set = self._candidates(
                self._classifier_for(context), embedding, source, modality
            )
        calibration, adapter = self.differential_calibration, self.classifier.adapter
        kind = (
            f"calibrated probability (temperature {calibration.group(modality).temperature:.2f} "
            f"fitted on {calibration.group(modality).calibrated_on})"
            if calibration
            else "raw model score (uncalibrated softmax)"
        )
        if adapter is not None:
            kind = f"{ADAPTER_SCORE_KIND} probability (adapter {adapter.describe()}" + (
                f"; temperature {calibration.group(modality).temperature:.2f} fitted on "
                f"{calibration.group(modality).calibrated_on})"
                if calibration
                else "; temperature fitted on its validation split; no prediction set: the "
                "assistant's calibration was fitted on other scores)"
            )
        categories = [
            CategoryScore(node=r.node, name=r.name, depth=r.depth, probability=r.probability)
            for r in summary.rollup
            if 1 <= r.depth <= 2 and r.probability >= 0.05
        ]
        return Differential(
            label_set=self.classifier.label_set.name,
            candidates=candidates,
            categories=sorted(categories, key=lambda c: (c.depth, -c.probability)),
            malignancy=summary.malignancy,
            probability_kind=kind,
            calibrated=calibration is not None or adapter is not None,
            score_kind=ADAPTER_SCORE_KIND if adapter else "calibrated" if calibration else "raw",
            adapter=adapter.describe() if adapter else None,
            prediction_set=prediction_set,
            context=patient.context_phrases() if context else [],
            image_only=image_only,
        )

    def _similar(self, embedding: torch.Tensor) -> list[SimilarCase]:
        if self.index is None:
            return []
        hits = self.index.search_vector(embedding.numpy(), k=int(self.settings["similar_cases"]))
        return [
            SimilarCase(
                rank=h.rank, path=h.path, label=h.label, caption=h.caption, similarity=h.score
            )
            for h in hits
        ]

    def _information(self, differential: Differential) -> list[Any]:
        out, seen = [], set()
        for c in differential.candidates[: int(self.settings["information_for"])]:
            info = self.patient_info.lookup(c.node, self.classifier.ontology) if c.node else None
            if info is not None and info.node not in seen:
                seen.add(info.node)
                out.append(info)
        return out

    def _limitations(
        self, report: ConsultReport, modality: Modality | None, differential: Differential | None
    ) -> list[Limitation]:
        msg = self.settings["messages"]
        lim = self.settings["limitations"]
        out: list[Limitation] = []

        def add(kind: str, **values: Any) -> None:
            out.append(Limitation(kind=kind, message=msg[kind].format(**values)))

        if differential is None:
            add("not_assessed")
        else:
            if not differential.calibrated:
                add("uncalibrated")
            top = differential.candidates[0]
            if top.probability < float(lim["low_confidence_probability"]):
                add("low_confidence", probability=percent(top.probability))
            ps = differential.prediction_set
            if ps and len(ps.labels) > int(lim["large_prediction_set"]):
                add("large_prediction_set", n=len(ps.labels))
            if differential.context:
                add("context_used", context="; ".join(differential.context))
        if modality is not None:
            if not modality.given and modality.probability < 0.75:
                add(
                    "modality_uncertain",
                    probability=percent(modality.probability),
                    label=modality.label,
                )
            calibration = self.differential_calibration
            if calibration and modality.label in calibration.groups:
                measured = calibration.groups[modality.label].measured
                accuracy = measured.get("top1_accuracy")
                if accuracy is not None and accuracy < float(lim["weak_top1_accuracy"]):
                    add(
                        "weak_modality",
                        modality=modality.label,
                        accuracy=percent(accuracy),
                        n=int(measured.get("n_test", 0)),
                    )
        patient = report.patient
        if patient.skin_type is None:
            add("skin_type_unknown")
        elif patient.skin_type in lim["darker_skin_types"]:
            add("skin_type_dark", skin_type=patient.skin_type)
        if patient.site and patient.site in lim["weak_sites"]:
            add("weak_site", site=patient.site)
        if self.index is None and differential is not None:
            add("no_case_index")
        if self.suppressor is not None:
            add("artifacts_suppressed", artifacts=", ".join(sorted(set(self.suppressor.artifacts))))
        return out

    # ------------------------------------------------------------------ public

    def consult(
        self,
        image: ImageInput,
        question: str | None = None,
        patient: PatientDetails | None = None,
        *,
        case_id: str | None = None,
        history: Sequence[Message] = (),
        dicom: DicomReference | None = None,
    ) -> ConsultReport:
        """The structured report on one image (see the module doc for the steps).

        A DICOM image (a file or one frame of a multi-frame file) completes ``patient`` with the
        age, sex, body site and modality it states (what the user gave wins), and the report
        carries its :class:`DicomReference`; ``dicom`` gives that reference for an image that
        is no longer DICOM (a case's stored, metadata-free copy).

        An image that cannot be read or assessed gives a report with status
        ``needs_better_photo`` and no findings, never an exception.
        """
        from dermfm.assistant.dicom import reference_of, with_dicom
        from dermfm.assistant.rules import triage
        from dermfm.assistant.writers import write_narrative
        from dermfm.io.images import image_digest

        context, reference = reference_of(image)
        patient = with_dicom(patient, context)
        dicom = reference or dicom
        source = str(image) if isinstance(image, str | Path | DicomFrame) else "<image>"
        digest = None
        try:
            if isinstance(image, str | Path | DicomFrame):
                digest = image_digest(image)
            decoded = load_image(image)
        except ImageError as exc:
            decoded, quality, embedding = None, unreadable(exc.reason), None
        if decoded is not None:
            quality = check_quality(
                decoded,
                self.skin_reference,
                self.calibration.limits if self.calibration else None,
            )
            embedding = self._embed(decoded) if quality.usable else None
        modality = differential = None
        characteristics: list[Characteristic] = []
        if embedding is not None:
            modality = self._modality(embedding, patient)
            characteristics = self._characteristics(embedding)
            differential = self._differential(embedding, source, modality.label, patient)
        verdict = triage(self.rules, differential, patient)
        if differential is None and verdict.level == "none":
            verdict = Triage(level="none", advice=" ".join(p.message for p in quality.problems))
        report = ConsultReport(
            case_id=case_id or uuid.uuid4().hex[:12],
            source=source,
            image_sha256=digest,
            model=self.model.name,
            status="complete" if differential else "needs_better_photo",
            question=question,
            quality=quality,
            modality=modality,
            characteristics=characteristics,
            differential=differential,
            triage=verdict,
            similar_cases=self._similar(embedding) if differential is not None else [],
            information=self._information(differential) if differential else [],
            patient=patient,
            dicom=dicom,
            narrative={"summary": "", "writer": "none"},
            disclaimer=self.settings["disclaimer"],
        )
        report.limitations = self._limitations(report, modality, differential)
        report.narrative = write_narrative(self.writer, report, question, history)
        return report


def consult(
    image: ImageInput,
    question: str | None = None,
    model: ModelSpec = None,
    patient: PatientDetails | Mapping[str, Any] | None = None,
    **options: Any,
) -> ConsultReport:
    """One-call consultation: ``Assistant(model, **options).consult(image, question, patient)``.

    ``patient`` may be a :class:`PatientDetails` or a mapping of its fields (validated).
    """
    from dermfm.assistant.patient import details_from_fields

    if isinstance(patient, Mapping):
        patient = details_from_fields(**patient)
    return Assistant(model, **options).consult(image, question, patient)


__all__ = ["Assistant", "consult", "context_templates", "load_settings", "modality_scores"]

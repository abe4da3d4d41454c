"""What a consultation takes from a DICOM image besides its pixels: the patient context (age,
sex, body site, modality from the SOP class) and the reference back to the study.

The details the user states always win over the file's; the reference holds UIDs only.
"""

from __future__ import annotations

from pathlib import Path

from dermfm.assistant.report import DicomReference, PatientDetails
from dermfm.errors import ImageError
from dermfm.io import DicomContext, DicomFrame, ImageInput, is_dicom, read_dicom_context


def dicom_context(image: ImageInput) -> DicomContext | None:
    """The context of a DICOM input (a DICOM file or one of its frames); ``None`` for any other
    input, or a DICOM file whose header cannot be read (decoding then reports why)."""
    if isinstance(image, DicomFrame) or (isinstance(image, str | Path) and is_dicom(image)):
        try:
            return read_dicom_context(image)
        except ImageError:
            return None
    return None


def with_dicom(patient: PatientDetails | None, context: DicomContext | None) -> PatientDetails:
    """``patient`` completed with what the DICOM object states (age, sex, site, modality);
    every detail the user gave is kept as given. A value the file states that the assistant
    does not accept (e.g. an age over 120) is left out."""
    from dermfm.assistant.patient import details_from_fields

    given = patient or PatientDetails()
    if context is None:
        return given
    found = PatientDetails()
    for name, value in context.patient_fields().items():
        try:
            found = details_from_fields(**{name: value}, previous=found)
        except ValueError:
            continue
    stated = {k: v for k, v in given.model_dump().items() if v not in (None, [])}
    return found.model_copy(update=stated)


def dicom_reference(
    context: DicomContext | None, frame: int | None = None
) -> DicomReference | None:
    """The :class:`DicomReference` of a DICOM object (``frame`` from 0, for multi-frame)."""
    if context is None:
        return None
    return DicomReference(
        study_uid=context.study_uid,
        series_uid=context.series_uid,
        instance_uid=context.instance_uid,
        sop_class_uid=context.sop_class_uid,
        sop_class=context.sop_class,
        frame=frame + 1 if frame is not None and context.frames > 1 else None,
        frames=context.frames,
    )


def reference_of(image: ImageInput) -> tuple[DicomContext | None, DicomReference | None]:
    """The context and the reference of an input (both ``None`` when it is not DICOM)."""
    context = dicom_context(image)
    frame = image.index if isinstance(image, DicomFrame) else None
    return context, dicom_reference(context, frame)


__all__ = ["dicom_context", "dicom_reference", "reference_of", "with_dicom"]

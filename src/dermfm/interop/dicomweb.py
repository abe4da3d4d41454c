"""DICOMweb with a PACS: pull a study's photos (QIDO-RS, WADO-RS), consult each one, and push
the results back (STOW-RS) as DICOM objects linked to the source study.

- :class:`Pacs` talks to one DICOMweb service (``dicomweb-client``) at a URL that comes from the
  operator (``dermfm serve --pacs URL``, ``dermfm consult --dicomweb URL``), never from a
  request. Study Instance UIDs are checked to be UIDs before they are put into a URL.
- :func:`structured_report` makes a Comprehensive SR (``highdicom``) of a report's findings:
  the impression, the triage, each differential candidate as a coded finding (ICD-10-CM, scheme
  ``I10C``; dermfm's ontology id otherwise) with its probability and probability kind and
  whether it is in the prediction set, the characteristics present, and the source image (with
  its frame) as evidence.
- :func:`encapsulated_pdf` wraps the clinician's PDF report as an Encapsulated PDF object with
  the source image in its Source Instance Sequence.

Both go into the source study (its Study Instance UID, and the patient and study attributes
copied from the source instance, so the PACS files them with the photos), in new series. The
patient attributes are read from the PACS and sent back to it only: never logged, never stored
in a case.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dermfm import __version__
from dermfm.assistant.report import ConsultReport
from dermfm.errors import DermfmError

if TYPE_CHECKING:
    from pydicom import Dataset

#: What a DICOM UID looks like (at most 64 characters of digits and dots).
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")

#: SOP class of Encapsulated PDF Storage.
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

#: The coding scheme designator of ICD-10-CM in DICOM (HL7 table 0396).
ICD10CM_SCHEME = "I10C"

#: dermfm's private coding scheme (DICOM private designators start with ``99``).
DERMFM_SCHEME = "99DERMFM"

#: Manufacturer and series descriptions of what dermfm stores.
MANUFACTURER = "dermfm"


class PacsError(DermfmError):
    """A PACS that cannot be reached or refuses a request; a study that does not exist."""


def check_uid(uid: str) -> str:
    """``uid`` when it is a DICOM UID, else :class:`PacsError` (never put into a URL)."""
    if len(uid) > 64 or not UID_PATTERN.fullmatch(uid):
        raise PacsError("not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


@dataclass
class PulledStudy:
    """The photos of one study, saved as files in ``folder`` (deleted with the object's
    context, see :meth:`Pacs.pulled`); ``skipped`` counts instances that are no photos (other
    SOP classes, earlier SRs and PDFs)."""

    study_uid: str
    folder: Path
    files: list[Path] = field(default_factory=list)
    skipped: int = 0


class Pacs:
    """One DICOMweb service.

    Args:
        url: its base URL (e.g. ``http://pacs:8042/dicom-web``): configuration, never request
            data.
        timeout: seconds per HTTP request.
        max_instances: most instances pulled from one study.
        headers: extra HTTP headers (e.g. ``Authorization``).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        max_instances: int = 64,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        from dicomweb_client.api import DICOMwebClient

        if not re.match(r"https?://", url):
            raise PacsError(f"{url}: a DICOMweb URL starts with http:// or https://")
        self.url = url.rstrip("/")
        self.max_instances = max_instances
        self.client = DICOMwebClient(url=self.url, headers=dict(headers or {}), timeout=timeout)

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        import requests

        try:
            return call()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise PacsError(f"{self.url}: {what} failed (HTTP {status})") from None
        except requests.RequestException as exc:
            raise PacsError(f"{self.url}: {what} failed ({type(exc).__name__})") from None

    def instances(self, study_uid: str) -> list[dict[str, str]]:
        """The instances of a study (QIDO-RS): SOP class, series and instance UIDs.

        Raises:
            PacsError: not a UID, the PACS fails, or the study has no instance.
        """
        check_uid(study_uid)
        found = self._call(
            "search",
            lambda: self.client.search_for_instances(
                study_instance_uid=study_uid, limit=self.max_instances + 1
            ),
        )
        if not found:
            raise PacsError(f"{self.url}: no study {study_uid}")

        def value(item: Mapping[str, Any], tag: str) -> str:
            values = item.get(tag, {}).get("Value") or [""]
            return str(values[0])

        return [
            {
                "sop_class": value(item, "00080016"),
                "series": value(item, "0020000E"),
                "instance": value(item, "00080018"),
            }
            for item in found
        ]

    @contextmanager
    def pulled(self, study_uid: str) -> Iterator[PulledStudy]:
        """The study's photos (WADO-RS), as files in a private temporary folder that is deleted
        when the context ends.

        Raises:
            PacsError: as :meth:`instances`, or a study with more than ``max_instances``.
        """
        from dermfm.io.dicom import photo_sop_classes

        listed = self.instances(study_uid)
        if len(listed) > self.max_instances:
            raise PacsError(
                f"{self.url}: study {study_uid} has over {self.max_instances} instances"
            )
        with tempfile.TemporaryDirectory(prefix="dermfm-pacs-") as tmp:
            study = PulledStudy(study_uid, Path(tmp))
            photos = photo_sop_classes()
            for n, item in enumerate(listed):
                if item["sop_class"] not in photos:
                    study.skipped += 1
                    continue
                ds = self.retrieve(study_uid, item["series"], item["instance"])
                file = study.folder / f"{n:04d}.dcm"
                ds.save_as(file, enforce_file_format=True)
                study.files.append(file)
            yield study

    def store(self, datasets: Sequence[Dataset]) -> None:
        """Store DICOM objects (STOW-RS).

        Raises:
            PacsError: the PACS refuses them.
        """
        for ds in datasets:  # written as Part 10 files (with preamble), as PACS expect
            if getattr(ds, "preamble", None) is None:
                ds.preamble = b"\0" * 128
        self._call("store", lambda: self.client.store_instances(list(datasets)))

    def retrieve(self, study_uid: str, series_uid: str, instance_uid: str) -> Dataset:
        """One instance (WADO-RS), in the transfer syntax the PACS chooses (the standard's
        default: explicit VR little endian). Asking for ``transfer-syntax=*`` is avoided: some
        PACS (Orthanc's DICOMweb plugin 1.7) then answer parts without their file meta."""
        return self._call(
            "retrieve",
            lambda: self.client.retrieve_instance(
                check_uid(study_uid),
                check_uid(series_uid),
                check_uid(instance_uid),
                media_types=("application/dicom",),
            ),
        )


def _code(value: str, scheme: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


def _now() -> tuple[str, str]:
    moment = datetime.now()
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


def structured_report(
    report: ConsultReport, source: Dataset, *, series_number: int = 901
) -> Dataset:
    """A DICOM Comprehensive SR of a report's findings, in the source's study (see the module
    doc for its content), with the source instance as evidence."""
    import highdicom as hd
    from highdicom.sr import (
        CodeContentItem,
        ContainerContentItem,
        ImageContentItem,
        NumContentItem,
        TextContentItem,
    )

    contains, has_properties = "CONTAINS", "HAS PROPERTIES"
    items: list[Any] = []

    def text(code: Any, value: str, relationship: str = contains) -> Any:
        return TextContentItem(name=code, value=value or "-", relationship_type=relationship)

    ref = report.dicom
    image = ImageContentItem(
        name=_code("121112", "DCM", "Source of Measurement"),
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=ref.frame if ref and ref.frame else None,
        relationship_type=contains,
    )
    items.append(image)
    items.append(text(_code("121073", "DCM", "Impression"), report.narrative.summary))
    items.append(
        text(
            _code("triage", DERMFM_SCHEME, "Triage"),
            f"{report.triage.level}: {report.triage.advice}",
        )
    )
    d = report.differential
    if d is not None:
        for c in d.candidates:
            value = (
                _code(c.icd10cm, ICD10CM_SCHEME, c.name)
                if c.icd10cm
                else _code(c.node or c.label, DERMFM_SCHEME, c.name)
            )
            finding = CodeContentItem(
                name=_code("121071", "DCM", "Finding"), value=value, relationship_type=contains
            )
            finding.ContentSequence = [
                NumContentItem(
                    name=_code("probability", DERMFM_SCHEME, "Probability"),
                    value=round(c.probability, 6),
                    unit=_code("1", "UCUM", "no units"),
                    relationship_type=has_properties,
                ),
                text(
                    _code("probability-kind", DERMFM_SCHEME, "Probability kind"),
                    d.probability_kind,
                    has_properties,
                ),
                text(
                    _code("prediction-set", DERMFM_SCHEME, "In conformal prediction set"),
                    "yes" if c.in_prediction_set else "no",
                    has_properties,
                ),
            ]
            items.append(finding)
    for ch in report.characteristics:
        items.append(text(_code("characteristic", DERMFM_SCHEME, "Characteristic"), f"{ch.name}"))
    items.append(text(_code("121106", "DCM", "Comment"), report.disclaimer))
    root = ContainerContentItem(name=_code("18748-4", "LN", "Diagnostic imaging report"))
    root.ContentSequence = items
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=root,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    sr.SeriesDescription = "dermfm findings (decision support, not a diagnosis)"
    sr.SoftwareVersions = __version__
    return sr


#: Patient and study attributes copied from the source instance into what is stored back, so
#: that the PACS files it in the same study.
_COPIED = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def encapsulated_pdf(
    report: ConsultReport, source: Dataset, pdf: bytes, *, series_number: int = 902
) -> Dataset:
    """The PDF report as a DICOM Encapsulated PDF object in the source's study, with the source
    instance in its Source Instance Sequence."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    for keyword in _COPIED:
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DOC"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = __version__
    ds.ConversionType = "WSD"
    ds.ContentDate, ds.ContentTime = _now()
    ds.AcquisitionDateTime = "".join(_now())
    ds.BurnedInAnnotation = "NO"
    ds.DocumentTitle = f"dermfm report {report.case_id}"
    ds.SeriesDescription = "dermfm report (decision support, not a diagnosis)"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "18748-4", "LN"
    concept.CodeMeaning = "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = [concept]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceInstanceSequence = [reference]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


@dataclass
class StudyResult:
    """One consulted photo (or frame) of a study, and the UIDs of what was stored back."""

    report: ConsultReport
    stored: list[str] = field(default_factory=list)


def consult_study(
    consult: Callable[[Path], list[ConsultReport]],
    pacs: Pacs,
    study_uid: str,
    *,
    store_back: bool = False,
) -> list[StudyResult]:
    """Pull a study's photos, consult each (``consult`` turns one file into its reports: one
    per frame), and with ``store_back`` store an SR and an Encapsulated PDF per report.

    Raises:
        PacsError: the PACS cannot be reached, the study does not exist or has no photo.
    """
    from pydicom import dcmread

    from dermfm.interop.fhir import report_pdf

    results: list[StudyResult] = []
    with pacs.pulled(study_uid) as study:
        if not study.files:
            raise PacsError(f"{pacs.url}: study {study_uid} has no photo to consult")
        for file in study.files:
            source = dcmread(file, stop_before_pixels=True)
            for report in consult(file):
                # named by its UIDs, not by the temporary file
                frame = (
                    f"#frame={report.dicom.frame}" if report.dicom and report.dicom.frame else ""
                )
                report.source = f"dicomweb:{study_uid}/{source.SOPInstanceUID}{frame}"
                result = StudyResult(report)
                if store_back and report.status == "complete":
                    made = [
                        structured_report(report, source),
                        encapsulated_pdf(report, source, report_pdf(report)),
                    ]
                    pacs.store(made)
                    result.stored = [str(ds.SOPInstanceUID) for ds in made]
                results.append(result)
    return results


__all__ = [
    "ENCAPSULATED_PDF",
    "ICD10CM_SCHEME",
    "Pacs",
    "PacsError",
    "PulledStudy",
    "StudyResult",
    "check_uid",
    "consult_study",
    "encapsulated_pdf",
    "structured_report",
]

"""The assistant's commands: ``dermfm consult``, ``dermfm chat`` and
``dermfm assistant calibrate|cases|documents``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dermfm.cli.common import (
    AdapterOpt,
    JsonOpt,
    ModelOpt,
    NoAdapterOpt,
    adapter_choice,
    err,
    fail,
    load_model_or_fail,
    out,
    print_json,
)

assistant_app = typer.Typer(
    help="The assistant's calibration, stored cases and documents.", no_args_is_help=True
)

WriterOpt = Annotated[
    str,
    typer.Option(
        "--writer",
        help="template (default, offline), openai (any OpenAI-compatible chat endpoint: "
        "--llm-url, --llm-model, --llm-key) or llama-cpp (local GGUF; pip install "
        "'dermfm[llm]').",
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--llm-url", help="Base URL of the endpoint, e.g. http://localhost:11434/v1."),
]
LlmModelOpt = Annotated[str | None, typer.Option("--llm-model", help="Model name at the endpoint.")]
KeyOpt = Annotated[
    str | None,
    typer.Option("--llm-key", envvar="DERMFM_LLM_KEY", help="API key (or $DERMFM_LLM_KEY)."),
]
TimeoutOpt = Annotated[float, typer.Option("--llm-timeout", min=0.1, help="Seconds per answer.")]
GgufOpt = Annotated[Path | None, typer.Option("--gguf", help="GGUF file for llama-cpp.")]
CasesOpt = Annotated[
    Path | None, typer.Option("--cases", help="Case index folder (`dermfm index build`).")
]
CaseStoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--case-store", help="Folder of stored cases (default $DERMFM_CASES or ~/.dermfm/cases)."
    ),
]
AgeOpt = Annotated[int | None, typer.Option("--age", help="Patient age in years.")]
SexOpt = Annotated[str | None, typer.Option("--sex", help="female or male.")]
SiteOpt = Annotated[str | None, typer.Option("--site", help="Body site, e.g. back, face, leg.")]
DurationOpt = Annotated[str | None, typer.Option("--duration", help="e.g. '3 months'.")]
SkinTypeOpt = Annotated[str | None, typer.Option("--skin-type", help="Fitzpatrick I-VI.")]
ModalityOpt = Annotated[
    str | None, typer.Option("--modality", help="dermoscopy or clinical (else inferred).")
]
RulesOpt = Annotated[
    list[Path] | None, typer.Option("--rules", help="Extra safety-rule file (repeatable).")
]
KnowledgeOpt = Annotated[
    list[Path] | None,
    typer.Option("--knowledge", help="Extra patient-information file (repeatable)."),
]
SettingsOpt = Annotated[Path | None, typer.Option("--settings", help="Consult settings file.")]
CalibrationOpt = Annotated[
    Path | None,
    typer.Option("--calibration", help="Calibration folder (default: the model's own)."),
]
SuppressOpt = Annotated[
    bool, typer.Option("--suppress-artifacts", help="Remove artifact directions first.")
]


def _assistant(
    model: Any,
    writer: Any,
    cases: Path | None,
    calibration: Path | None,
    rules: list[Path] | None,
    knowledge: list[Path] | None,
    settings: Path | None,
    suppress: bool,
    adapter: Any = True,
) -> Any:
    from dermfm.assistant.consult import Assistant
    from dermfm.errors import DermfmError

    try:
        return Assistant(
            model,
            writer=writer,
            cases=cases,
            calibration=calibration,
            rules=rules or (),
            knowledge=knowledge or (),
            settings=settings,
            suppress_artifacts=suppress,
            adapter=adapter,
        )
    except (DermfmError, ValueError) as exc:
        raise fail(str(exc)) from None


def _writer(
    kind: str,
    url: str | None,
    model: str | None,
    key: str | None,
    timeout: float,
    gguf: Path | None,
) -> Any:
    from dermfm.assistant.writers import WriterError, make_writer

    try:
        return make_writer(kind, url=url, model=model, api_key=key, timeout=timeout, gguf=gguf)
    except WriterError as exc:
        raise fail(str(exc)) from None


def _patient(**fields: Any) -> Any:
    from dermfm.assistant.patient import details_from_fields

    try:
        return details_from_fields(**fields)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _print_report(report: Any) -> None:
    """A short terminal view: the full report is in --json and the documents."""
    from rich.table import Table

    out.print(f"[bold]{report.source}[/bold]  case {report.case_id}", highlight=False)
    if report.status != "complete":
        out.print("[yellow]A better photo is needed:[/yellow]")
        for p in report.quality.problems:
            out.print(f"  - {p.message}", highlight=False)
    else:
        dx = report.differential
        table = Table(title=f"Differential ({dx.probability_kind})", title_justify="left")
        for column in ("#", "condition", "ICD-10-CM", "probability", "in set", "malignancy"):
            table.add_column(column)
        for c in dx.candidates:
            table.add_row(
                str(c.rank),
                c.name,
                c.icd10cm or "",
                f"{c.probability:.1%}",
                "yes" if c.in_prediction_set else "",
                c.malignancy,
            )
        out.print(table)
        if dx.prediction_set:
            ps = dx.prediction_set
            out.print(
                f"Prediction set ({ps.coverage:.0%} target coverage"
                + (f", {ps.measured_coverage:.0%} measured" if ps.measured_coverage else "")
                + f"): {', '.join(ps.names)}",
                highlight=False,
            )
    colour = {"emergency": "red", "urgent": "red", "soon": "yellow"}.get(report.triage.level, "")
    level = f"[{colour}]{report.triage.level}[/{colour}]" if colour else report.triage.level
    out.print(f"Triage: {level}. {report.triage.advice}", highlight=False)
    for hit in report.triage.fired:
        out.print(f"  rule {hit.rule} ({hit.level}): {hit.reason}", highlight=False)
    out.print(report.narrative.summary, highlight=False)
    if report.narrative.answer:
        out.print(f"\n[bold]Answer:[/bold] {report.narrative.answer}", highlight=False)
    if report.narrative.fallback:
        err.print(f"[yellow]note:[/yellow] {report.narrative.fallback}", highlight=False)
    for lim in report.limitations:
        out.print(f"[dim]Limitation: {lim.message}[/dim]", highlight=False)
    out.print(f"[dim]{report.disclaimer}[/dim]", highlight=False)


def _write_documents(report: Any, folder: Path, formats: str, overwrite: bool) -> None:
    from dermfm.assistant.documents import write_documents

    try:
        written = write_documents(
            report,
            folder,
            formats=[f.strip() for f in formats.split(",") if f.strip()],
            overwrite=overwrite,
        )
    except (FileExistsError, ValueError) as exc:
        raise fail(str(exc)) from None
    err.print(f"wrote {len(written)} files to {folder}", highlight=False)


def _stem(image: Any) -> str:
    """A folder name for one input's documents (``scan-frame2`` for a DICOM frame)."""
    from dermfm.io import DicomFrame

    if isinstance(image, DicomFrame):
        return f"{image.path.stem}-frame{image.index + 1}"
    return Path(image).stem


def consult_command(
    images: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Skin photos or DICOM files (one report each; one per frame of a "
            "multi-frame DICOM file)."
        ),
    ] = None,
    question: Annotated[
        str | None, typer.Option("--question", "-q", help="A question about the image.")
    ] = None,
    model: ModelOpt = None,
    writer: WriterOpt = "template",
    llm_url: UrlOpt = None,
    llm_model: LlmModelOpt = None,
    llm_key: KeyOpt = None,
    llm_timeout: TimeoutOpt = 30.0,
    gguf: GgufOpt = None,
    cases: CasesOpt = None,
    age: AgeOpt = None,
    sex: SexOpt = None,
    site: SiteOpt = None,
    duration: DurationOpt = None,
    skin_type: SkinTypeOpt = None,
    modality: ModalityOpt = None,
    rules: RulesOpt = None,
    knowledge: KnowledgeOpt = None,
    settings: SettingsOpt = None,
    calibration: CalibrationOpt = None,
    suppress_artifacts: SuppressOpt = False,
    adapter: AdapterOpt = None,
    no_adapter: NoAdapterOpt = False,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write report, SOAP note, handout and referral here "
            "(one sub-folder per image when several).",
        ),
    ] = None,
    formats: Annotated[str, typer.Option("--formats", help="Document formats: md,pdf.")] = "md,pdf",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace documents.")] = False,
    schema: Annotated[
        bool, typer.Option("--schema", help="Print the report's JSON schema.")
    ] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the full reports as Markdown.")
    ] = False,
    dicomweb: Annotated[
        str | None,
        typer.Option(
            "--dicomweb",
            help="Consult the photos of a study in this PACS (DICOMweb base URL, e.g. "
            "http://pacs:8042/dicom-web) instead of IMAGES; needs --study.",
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Study Instance UID (with --dicomweb).")
    ] = None,
    store_back: Annotated[
        bool,
        typer.Option(
            "--store-back",
            help="With --dicomweb: store each report in the study as a DICOM SR and an "
            "Encapsulated PDF.",
        ),
    ] = False,
    fhir: Annotated[
        Path | None,
        typer.Option(
            "--fhir",
            help="Write the report as a FHIR R4 Bundle (JSON) to this file "
            "(several inputs: FILE-<input>.json each); see docs/interop.md.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """A grounded consultation report per image: quality check, modality, characteristics,
    differential with calibrated probabilities and a prediction set, triage rules, similar
    cases, information, limitations. Decision support, not a diagnosis."""
    from dermfm.assistant.report import ConsultReport

    if schema:
        print_json(ConsultReport.model_json_schema())
        raise typer.Exit(0)
    if (dicomweb is None) != (study is None):
        raise fail("--dicomweb and --study go together")
    if dicomweb and images:
        raise fail("give IMAGES or --dicomweb/--study, not both")
    if store_back and not dicomweb:
        raise fail("--store-back needs --dicomweb and --study")
    if not images and not dicomweb:
        raise fail("give at least one image (or --dicomweb URL --study UID, or --schema)")
    patient = _patient(
        age=age, sex=sex, site=site, duration=duration, skin_type=skin_type, modality=modality
    )
    chosen = _writer(writer, llm_url, llm_model, llm_key, llm_timeout, gguf)
    assistant = _assistant(
        load_model_or_fail(model, None),
        chosen,
        cases,
        calibration,
        rules,
        knowledge,
        settings,
        suppress_artifacts,
        adapter_choice(adapter, no_adapter),
    )
    from dermfm.io import expand_frames

    if dicomweb:
        reports = _consult_study(assistant, dicomweb, str(study), store_back, question, patient)
        inputs: list[Any] = [Path(f"{study}-{n + 1}") for n in range(len(reports))]
    else:
        inputs = expand_frames(images or [])  # a multi-frame DICOM file: one report per frame
        reports = [assistant.consult(image, question, patient) for image in inputs]
    if json_out:
        print_json([r.model_dump(mode="json") for r in reports])
    elif markdown:
        from dermfm.assistant.documents import report_markdown

        sys.stdout.write("\n\n".join(report_markdown(r) for r in reports) + "\n")
    else:
        for report in reports:
            _print_report(report)
    if out_dir is not None:
        for report, image in zip(reports, inputs, strict=True):
            folder = out_dir / _stem(image) if len(inputs) > 1 else out_dir
            _write_documents(report, folder, formats, overwrite)
    if fhir is not None:
        _write_fhir(reports, inputs, fhir, overwrite)
    unreadable = [r for r in reports if any(p.kind == "unreadable" for p in r.quality.problems)]
    raise typer.Exit(1 if unreadable else 0)


def _consult_study(
    assistant: Any, url: str, study: str, store_back: bool, question: Any, patient: Any
) -> list[Any]:
    """Reports on every photo (and frame) of a PACS study; with ``store_back`` each one goes
    back into the study as a DICOM SR and an Encapsulated PDF."""
    from dermfm.interop.dicomweb import Pacs, PacsError, consult_study
    from dermfm.io import expand_frames

    try:
        results = consult_study(
            lambda file: [assistant.consult(f, question, patient) for f in expand_frames([file])],
            Pacs(url),
            study,
            store_back=store_back,
        )
    except PacsError as exc:
        raise fail(str(exc)) from None
    for result in results:
        if result.stored:
            err.print(
                f"stored in study {study}: SR {result.stored[0]}, PDF {result.stored[1]}",
                highlight=False,
            )
    return [r.report for r in results]


def _write_fhir(reports: list[Any], inputs: list[Any], target: Path, overwrite: bool) -> None:
    """One FHIR bundle per report: ``target``, or ``<target stem>-<input>.json`` for several."""
    import json

    from dermfm.interop import fhir_bundle

    for report, image in zip(reports, inputs, strict=True):
        file = (
            target if len(reports) == 1 else target.with_name(f"{target.stem}-{_stem(image)}.json")
        )
        if file.exists() and not overwrite:
            raise fail(f"{file}: exists (use --overwrite)")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(fhir_bundle(report), indent=1), encoding="utf-8")
        err.print(f"wrote FHIR bundle {file}", highlight=False)


def chat_command(
    image: Annotated[Path | None, typer.Argument(help="Skin photo (omit with --case).")] = None,
    case: Annotated[str | None, typer.Option("--case", help="Resume a stored case.")] = None,
    message: Annotated[
        list[str] | None,
        typer.Option("--message", "-q", help="Send these messages instead of reading stdin."),
    ] = None,
    model: ModelOpt = None,
    writer: WriterOpt = "template",
    llm_url: UrlOpt = None,
    llm_model: LlmModelOpt = None,
    llm_key: KeyOpt = None,
    llm_timeout: TimeoutOpt = 30.0,
    gguf: GgufOpt = None,
    cases: CasesOpt = None,
    case_store: CaseStoreOpt = None,
    age: AgeOpt = None,
    sex: SexOpt = None,
    site: SiteOpt = None,
    skin_type: SkinTypeOpt = None,
    modality: ModalityOpt = None,
    calibration: CalibrationOpt = None,
    adapter: AdapterOpt = None,
    no_adapter: NoAdapterOpt = False,
) -> None:
    """Talk about a case: symptoms, duration, itch, change over time, history. Details you give
    update the report; the case and its history are stored (resume with --case ID)."""
    import sys

    from dermfm.assistant.conversation import CaseError, CaseStore, Consultation

    if (image is None) == (case is None):
        raise fail("give an IMAGE to start a case, or --case ID to resume one")
    store = CaseStore(case_store)
    chosen = _writer(writer, llm_url, llm_model, llm_key, llm_timeout, gguf)
    assistant = _assistant(
        load_model_or_fail(model, None),
        chosen,
        cases,
        calibration,
        None,
        None,
        None,
        False,
        adapter_choice(adapter, no_adapter),
    )
    try:
        if case is not None:
            consultation = Consultation.resume(assistant, case, store)
        else:
            patient = _patient(age=age, sex=sex, site=site, skin_type=skin_type, modality=modality)
            consultation = Consultation.start(assistant, image, patient, store=store)
            _print_report(consultation.report)
    except CaseError as exc:
        raise fail(str(exc)) from None
    err.print(
        f"case {consultation.case.case_id} (stored in {store.root}); type a message, or 'quit'",
        highlight=False,
    )
    lines = iter(message) if message else (line.rstrip("\n") for line in sys.stdin)
    for text in lines:
        if text.strip().lower() in ("quit", "exit"):
            break
        if not text.strip():
            continue
        reply = consultation.ask(text)
        if reply.changed:
            err.print(
                f"[dim]recorded: {', '.join(reply.changed)}"
                + ("; report updated" if reply.report_updated else "")
                + "[/dim]"
            )
        out.print(f"[bold]assistant:[/bold] {reply.answer}", highlight=False)
        if reply.report_updated:
            r = reply.report
            top = (
                ", ".join(f"{c.name} {c.probability:.0%}" for c in r.differential.candidates[:3])
                if r.differential
                else "not assessed"
            )
            out.print(
                f"[dim]updated differential: {top}; triage {r.triage.level}[/dim]", highlight=False
            )


@assistant_app.command("calibrate")
def calibrate_command(
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset",
            "-d",
            help="DATASET:MODALITY[:CALIBRATION_SPLIT], e.g. "
            "ham10000:dermoscopy, dermnet_nz:clinical, derm7pt:dermoscopy:none "
            "(none: test only).",
        ),
    ],
    root: Annotated[Path, typer.Option("--root", help="Folder holding the datasets.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder (default: the model's own).")
    ] = None,
    model: ModelOpt = None,
    coverage: Annotated[float, typer.Option(help="Target coverage of prediction sets.")] = 0.9,
    labels: Annotated[str, typer.Option("--labels", help="Differential label set.")] = "assistant",
    adapter: Annotated[
        Path | None,
        typer.Option(
            "--adapter",
            help="Calibrate this adapter's scores (the assistant then uses the calibration "
            "with that adapter only); default: zero-shot scores.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fit and store the assistant's calibration of a model (temperature and conformal set per
    modality on validation splits; coverage, set size and accuracy measured on test splits)."""
    from dermfm.assistant.calibration import (
        CalibrationSource,
        calibrate,
        model_calibration_folder,
    )
    from dermfm.errors import DermfmError

    sources = []
    for item in dataset:
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise fail(f"--dataset {item!r}: expected DATASET:MODALITY[:SPLIT]")
        split = parts[2] if len(parts) == 3 else "val"
        sources.append(
            CalibrationSource(parts[0], root, parts[1], None if split.lower() == "none" else split)
        )
    loaded = load_model_or_fail(model, None)
    try:
        calibration = calibrate(
            loaded, sources, coverage=coverage, label_set=labels, adapter=adapter
        )
        folder = calibration.save(output or model_calibration_folder(loaded), overwrite)
    except (DermfmError, ValueError, FileExistsError) as exc:
        raise fail(str(exc)) from None
    if json_out:
        print_json(calibration.to_dict())
        return
    for modality, group in calibration.groups.items():
        m = group.measured
        out.print(
            f"{modality}: T={group.temperature:.2f}, coverage {m['coverage']:.3f} "
            f"(target {coverage}), mean set size {m['mean_set_size']:.1f}, top-1 "
            f"{m['top1_accuracy']:.3f} on {int(m['n_test'])} test images",
            highlight=False,
        )
    out.print(f"saved to {folder}", highlight=False)


@assistant_app.command("cases")
def cases_command(store: CaseStoreOpt = None, json_out: JsonOpt = False) -> None:
    """List stored cases, newest first."""
    from dermfm.assistant.conversation import CaseStore

    found = CaseStore(store).list()
    if json_out:
        print_json(
            [
                {
                    "case_id": c.case_id,
                    "created": c.created,
                    "source": c.source,
                    "messages": len(c.messages),
                    "reports": len(c.reports),
                }
                for c in found
            ]
        )
        return
    for c in found:
        level = c.reports[-1].triage.level if c.reports else "-"
        out.print(
            f"{c.case_id}  {c.created}  {c.source}  {len(c.messages)} messages, triage {level}",
            highlight=False,
        )


@assistant_app.command("documents")
def documents_command(
    case: Annotated[str, typer.Argument(help="Case id.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    store: CaseStoreOpt = None,
    formats: Annotated[str, typer.Option("--formats")] = "md,pdf",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Write a stored case's latest report, SOAP note, handout and referral letter."""
    from dermfm.assistant.conversation import CaseError, CaseStore

    try:
        report = CaseStore(store).load(case).report
    except CaseError as exc:
        raise fail(str(exc)) from None
    _write_documents(report, out_dir, formats, overwrite)

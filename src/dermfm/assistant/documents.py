"""Documents written from a consultation report, as Markdown and PDF.

* :func:`report_markdown`: the whole report, for a clinician;
* :func:`soap_note`: a visit summary in SOAP form;
* :func:`patient_handout`: plain language for the patient, ending with its reading level;
* :func:`referral_letter`: a letter to a dermatologist.

Every fixed heading and sentence comes from ``documents.yaml`` beside this module; the
documents only arrange the report's findings, never add any. Each one carries the report's
disclaimer and states the differential as model output, not a diagnosis. :func:`markdown_to_pdf`
renders the Markdown subset these documents use, with DejaVu fonts so any Unicode text prints.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from dermfm.assistant.readability import flesch_kincaid_grade
from dermfm.assistant.report import Candidate, ConditionInfo, ConsultReport, percent
from dermfm.errors import KnowledgeError
from dermfm.knowledge.files import read_document, require, string_list

#: File formats :func:`write_documents` writes.
FORMATS: tuple[str, ...] = ("md", "pdf")


@dataclass(frozen=True)
class DocumentTexts:
    """The fixed texts of the documents (a ``documents.yaml`` file), looked up by dotted key."""

    source: Path
    data: Mapping[str, Any]

    def _get(self, key: str) -> Any:
        node: Any = self.data
        parts = key.split(".")
        for depth, part in enumerate(parts):
            node = require(node, part, self.source, ".".join(parts[:depth]) or "top level")
        return node

    def text(self, key: str, **values: Any) -> str:
        """The text at ``key`` (``"report.title"``) with its ``{placeholders}`` filled."""
        template = self._get(key)
        if not isinstance(template, str):
            raise KnowledgeError(self.source, f"{key}: expected a text")
        try:
            return " ".join(template.split()).format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise KnowledgeError(self.source, f"{key}: cannot fill placeholder ({exc})") from exc

    def words(self, key: str) -> tuple[str, ...]:
        """The list of texts at ``key`` (table columns)."""
        return string_list(self._get(key), self.source, key)

    def count(self, key: str) -> int:
        """The positive whole number at ``key``."""
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise KnowledgeError(self.source, f"{key}: expected a positive whole number")
        return value


def document_texts(path: str | Path | None = None) -> DocumentTexts:
    """The documents' fixed texts: the packaged ``documents.yaml`` (read once) or a file of its
    schema (read at each call)."""
    if path is None:
        return _packaged_texts()
    return DocumentTexts(source=Path(path), data=read_document(path))


@lru_cache(maxsize=1)
def _packaged_texts() -> DocumentTexts:
    return document_texts(Path(str(resources.files("dermfm.assistant"))) / "documents.yaml")


# --- Markdown building blocks ---------------------------------------------------------------


def _join(blocks: Iterable[str]) -> str:
    return "\n\n".join(b for b in blocks if b) + "\n"


def _heading(text: str, level: int = 2) -> str:
    return f"{'#' * level} {text}"


def _bullets(items: Iterable[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(columns), line(["---"] * len(columns)), *map(line, rows)])


def _num(value: float) -> str:
    return f"{value:.2f}"


def _answer(t: DocumentTexts, flag: bool) -> str:
    return t.text("common.answer_yes" if flag else "common.answer_no")


# --- Pieces shared by several documents -----------------------------------------------------


def _problem_lines(report: ConsultReport, t: DocumentTexts) -> list[str]:
    lines = []
    for p in report.quality.problems:
        line = t.text("common.quality_problem", kind=p.kind, message=p.message)
        if p.value is not None and p.threshold is not None:
            line += " " + t.text(
                "common.quality_value", value=_num(p.value), threshold=_num(p.threshold)
            )
        lines.append(line)
    return lines


def _modality(report: ConsultReport, t: DocumentTexts) -> str | None:
    m = report.modality
    if m is None:
        return None
    if m.given:
        return t.text("report.modality_given", label=m.label)
    return t.text(
        "report.modality_line",
        label=m.label,
        score_kind=m.score_kind,
        probability=_num(m.probability),
    )


def _present_characteristics(report: ConsultReport, t: DocumentTexts) -> list[str]:
    return [
        t.text("common.characteristic", name=c.name, group=c.group, score=_num(c.score))
        for c in report.characteristics
        if c.present
    ]


def _patient_lines(report: ConsultReport, t: DocumentTexts) -> list[str]:
    notes = [t.text("report.note", note=n) for n in report.patient.notes]
    return report.patient.context_phrases() + notes


def _candidate_table(candidates: Sequence[Candidate], t: DocumentTexts) -> str:
    rows = [
        [
            str(c.rank),
            c.name,
            c.icd10cm or t.text("common.missing"),
            c.category or t.text("common.missing"),
            _num(c.probability),
            _answer(t, c.in_prediction_set),
            c.malignancy,
        ]
        for c in candidates
    ]
    return _table(t.words("common.differential_columns"), rows)


def _differential_blocks(report: ConsultReport, t: DocumentTexts) -> list[str]:
    """Probability kind, the differential table and the prediction set (or 'not assessed')."""
    d = report.differential
    if d is None:
        return [t.text("common.not_assessed")]
    blocks = [
        t.text("common.probability_kind", kind=d.probability_kind)
        + " "
        + t.text("common.model_output"),
        _candidate_table(d.candidates, t),
    ]
    if d.prediction_set is not None:
        ps = d.prediction_set
        line = t.text(
            "common.prediction_set",
            names=", ".join(
                t.text("common.coded_name", name=name, code=code) if code else name
                for name, code in zip(ps.names, ps.codes or [None] * len(ps.names), strict=True)
            )
            or t.text("common.missing"),
            coverage=percent(ps.coverage),
            method=ps.method,
            calibrated_on=ps.calibrated_on,
        )
        if ps.measured_coverage is not None:
            line += " " + t.text("common.measured_coverage", measured=percent(ps.measured_coverage))
        blocks.append(line)
    return blocks


def _triage_blocks(report: ConsultReport, t: DocumentTexts) -> list[str]:
    tr = report.triage
    rules = [t.text("common.rule", rule=r.rule, level=r.level, reason=r.reason) for r in tr.fired]
    return [
        t.text("common.triage_level", level=tr.level),
        t.text("common.triage_advice", advice=tr.advice),
        _bullets(rules) if rules else t.text("common.no_rule"),
    ]


def _info_for(report: ConsultReport, candidate: Candidate) -> ConditionInfo | None:
    for info in report.information:
        if info.node == candidate.node or info.name == candidate.name:
            return info
    return None


def _disclaimer(report: ConsultReport, t: DocumentTexts) -> str:
    return t.text("common.disclaimer", disclaimer=report.disclaimer)


def _findings(report: ConsultReport, t: DocumentTexts) -> list[str]:
    """Photo quality (and its problems), then modality and the characteristics present, or
    that they were not assessed."""
    state = "common.photo_usable" if report.quality.usable else "common.photo_unusable"
    lines = [t.text("common.photo_quality", state=t.text(state)), *_problem_lines(report, t)]
    if report.status != "complete":
        return [*lines, t.text("common.not_assessed")]
    present = _present_characteristics(report, t)
    return [
        *lines,
        t.text("common.modality", modality=_modality(report, t) or t.text("common.not_assessed")),
        t.text("common.characteristics", items="; ".join(present))
        if present
        else t.text("common.no_characteristic"),
    ]


def _status(report: ConsultReport, t: DocumentTexts) -> list[str]:
    if report.status == "complete":
        return [t.text("report.status_complete")]
    return [t.text("report.status_better_photo"), _bullets(_problem_lines(report, t))]


def _or_none(t: DocumentTexts, lines: list[str]) -> str:
    return _bullets(lines) if lines else t.text("common.none_given")


# --- The documents --------------------------------------------------------------------------


def report_markdown(report: ConsultReport) -> str:
    """The whole consultation report as Markdown, for a clinician."""
    t = document_texts()
    d = report.differential
    blocks = [
        _heading(t.text("report.title"), 1),
        t.text(
            "report.meta",
            case_id=report.case_id,
            created=report.created,
            model=report.model,
            source=report.source,
        ),
        *_status(report, t),
    ]
    if report.question:
        blocks += [_heading(t.text("report.question")), report.question]
    q = report.quality
    measures = [t.text("report.measure", name=k, value=_num(v)) for k, v in q.measures.items()]
    blocks += [
        _heading(t.text("report.quality")),
        _bullets(
            [
                t.text("report.usable", answer=_answer(t, q.usable)),
                t.text("report.relevance_checked", answer=_answer(t, q.relevance_checked)),
                *measures,
                # a photo that needs replacing has its problems listed under the status
                *(_problem_lines(report, t) if report.status == "complete" else []),
            ]
        ),
        _heading(t.text("report.modality")),
        _modality(report, t) or t.text("common.not_assessed"),
        _heading(t.text("report.characteristics")),
        (_bullets(_present_characteristics(report, t)) or t.text("report.no_characteristic"))
        if report.status == "complete"
        else t.text("common.not_assessed"),
    ]
    blocks.append(_heading(t.text("report.differential")))
    if d is not None:
        blocks.append(t.text("report.label_set", label_set=d.label_set))
    blocks += _differential_blocks(report, t)
    if d is not None and d.malignancy:
        values = ", ".join(f"{k} {_num(v)}" for k, v in d.malignancy.items())
        blocks.append(t.text("report.malignancy", values=values))
    if d is not None and d.categories:
        blocks += [
            _heading(t.text("report.categories"), 3),
            _table(
                t.words("report.category_columns"),
                [[c.name, _num(c.probability)] for c in d.categories],
            ),
        ]
    if d is not None and d.context:
        blocks += [
            _heading(t.text("report.context"), 3),
            t.text("report.context_line", context="; ".join(d.context)),
        ]
        if d.image_only:
            blocks += [t.text("report.image_only"), _candidate_table(d.image_only, t)]
    blocks += [_heading(t.text("report.triage")), *_triage_blocks(report, t)]
    if report.similar_cases:
        blocks += [
            _heading(t.text("report.similar_cases")),
            _table(
                t.words("report.similar_columns"),
                [
                    [
                        str(s.rank),
                        s.label or s.caption or t.text("report.unlabelled"),
                        _num(s.similarity),
                    ]
                    for s in report.similar_cases
                ],
            ),
        ]
    if report.information:
        blocks.append(_heading(t.text("report.information")))
        for info in report.information:
            blocks += [
                _heading(info.name, 3),
                _bullets(
                    [
                        t.text("report.what_it_is", text=info.what_it_is),
                        t.text("report.usual_course", text=info.usual_course),
                        t.text("report.treatments", text=info.treatments),
                        t.text("report.when_to_seek_care", text=info.when_to_seek_care),
                        t.text("report.info_source", source=info.source),
                    ]
                ),
            ]
    n = report.narrative
    blocks += [
        _heading(t.text("report.patient")),
        _or_none(t, _patient_lines(report, t)),
        _heading(t.text("report.limitations")),
        _or_none(
            t,
            [
                t.text("report.limitation", message=x.message, kind=x.kind)
                for x in report.limitations
            ],
        ),
        _heading(t.text("report.summary")),
        n.summary,
        t.text("report.answer", answer=n.answer) if n.answer else "",
        t.text("report.writer", writer=n.writer),
        t.text("report.fallback", reason=n.fallback) if n.fallback else "",
        _disclaimer(report, t),
    ]
    return _join(blocks)


def soap_note(report: ConsultReport) -> str:
    """A visit summary in SOAP form (Subjective, Objective, Assessment, Plan) as Markdown."""
    t = document_texts()
    subjective = _patient_lines(report, t)
    if report.question:
        subjective.append(t.text("soap.question", question=report.question))
    objective = [t.text("soap.image", source=report.source), *_findings(report, t)]
    steps = [t.text(f"soap.steps.{report.triage.level}")]
    if report.status != "complete":
        steps.insert(0, t.text("soap.steps.better_photo"))
    steps += [t.text("soap.treatments", name=i.name, text=i.treatments) for i in report.information]
    return _join(
        [
            _heading(t.text("soap.title"), 1),
            t.text("soap.meta", case_id=report.case_id, created=report.created, model=report.model),
            _heading(t.text("soap.subjective")),
            _or_none(t, subjective),
            _heading(t.text("soap.objective")),
            _bullets(objective),
            _heading(t.text("soap.assessment")),
            t.text("soap.assessment_intro") if report.differential else "",
            *_differential_blocks(report, t),
            _heading(t.text("soap.plan")),
            *_triage_blocks(report, t),
            t.text("soap.next_steps"),
            _bullets(steps),
            _disclaimer(report, t),
        ]
    )


def patient_handout(report: ConsultReport) -> str:
    """A plain-language handout for the patient, ending with its Flesch-Kincaid reading level.

    It names the computer model's leading possibilities (never what the patient "has"), what
    each is and when to seek care (from the report's knowledge-base information), the triage
    advice and the disclaimer.
    """
    t = document_texts()
    d = report.differential
    blocks = [
        _heading(t.text("handout.title"), 1),
        t.text("handout.intro"),
        _heading(t.text("handout.found")),
    ]
    if report.status != "complete" or d is None:
        problems = [p.message for p in report.quality.problems]
        blocks += [t.text("handout.better_photo"), _bullets(problems), t.text("handout.retake")]
    else:
        blocks.append(t.text("handout.leading"))
        for c in d.candidates[: t.count("handout.max_candidates")]:
            info = _info_for(report, c)
            about = []
            if info is not None:
                about = [
                    t.text("handout.what_it_is", text=info.what_it_is),
                    t.text("handout.when_to_seek_care", text=info.when_to_seek_care),
                ]
            blocks += [
                _heading(c.name, 3),
                t.text("handout.score", percent=round(100 * c.probability)),
                _bullets(about),
            ]
        blocks.append(t.text("handout.calibrated" if d.calibrated else "handout.uncalibrated"))
    blocks += [
        _heading(t.text("handout.next")),
        report.triage.advice,
        t.text("handout.worried"),
        t.text("handout.share"),
        _heading(t.text("handout.note")),
        report.disclaimer,
    ]
    body = _join(blocks)
    grade = max(1, round(flesch_kincaid_grade(body)))
    return body + "\n" + t.text("handout.reading_level", grade=grade) + "\n"


def referral_letter(
    report: ConsultReport, referrer: str | None = None, recipient: str | None = None
) -> str:
    """A referral letter to a dermatologist: reason (triage level and rules), findings,
    the model's differential, patient details, attachments and the disclaimer.

    Args:
        report: the consultation report.
        referrer: who signs the letter (default: a neutral "referring clinician").
        recipient: who it is addressed to (default: the dermatology service).
    """
    t = document_texts()
    referrer = referrer or t.text("referral.referrer")
    return _join(
        [
            _heading(t.text("referral.title"), 1),
            "  \n".join(
                [
                    t.text("referral.date", created=report.created),
                    t.text("referral.to", recipient=recipient or t.text("referral.recipient")),
                    t.text("referral.from", referrer=referrer),
                    t.text("referral.regarding", case_id=report.case_id, source=report.source),
                ]
            ),
            t.text("referral.greeting"),
            t.text("referral.intro", model=report.model),
            t.text("referral.better_photo") if report.status != "complete" else "",
            _heading(t.text("referral.reason")),
            *_triage_blocks(report, t),
            _heading(t.text("referral.findings")),
            _bullets(_findings(report, t)),
            _heading(t.text("referral.differential")),
            *_differential_blocks(report, t),
            _heading(t.text("referral.patient")),
            _or_none(t, _patient_lines(report, t)),
            _heading(t.text("referral.attachments")),
            t.text("referral.attachments_text", source=report.source),
            _disclaimer(report, t),
            t.text("referral.closing") + "  \n" + referrer,
        ]
    )


#: The documents by kind: each takes a report and returns Markdown.
DOCUMENTS: dict[str, Callable[[ConsultReport], str]] = {
    "report": report_markdown,
    "soap": soap_note,
    "handout": patient_handout,
    "referral": referral_letter,
}
DOCUMENT_KINDS: tuple[str, ...] = tuple(DOCUMENTS)


# --- PDF ------------------------------------------------------------------------------------

_FONT = "DejaVuSans"
_HEADING_SIZES = {1: 16.0, 2: 13.0, 3: 11.0}
_BODY_SIZE = 10.0
_LINE = 5.0  # mm
_HEADING_LINE = 0.55  # line height (mm) per point of heading size
_INDENT = 5.0
_MAX_COLUMN_MM = 70.0  # longer cells wrap
_COLUMN_PAD_MM = 4.0
_HEADING = re.compile(r"^(#{1,3})\s+(.*)$")
_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_TABLE_RULE = re.compile(r"^\s*\|(\s*:?-{3,}:?\s*\|)+\s*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_FPDF_MARKERS = re.compile(r"(__|~~|--)")


def _cells(line: str) -> list[str]:
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(inner)]


def parse_markdown(markdown: str) -> list[tuple[str, Any]]:
    """The blocks of the Markdown subset the documents use, in order: ``("heading", (level,
    text))``, ``("paragraph", text)``, ``("bullet", text)`` and ``("table", (rows,
    has_header))``. Paragraph lines ending in two spaces keep their line break."""
    blocks: list[tuple[str, Any]] = []
    paragraph: list[str] = []
    table: list[list[str]] = []
    header = False

    def flush() -> None:
        nonlocal header
        if paragraph:
            text = "".join(
                line.rstrip() + ("\n" if line.endswith("  ") else " ") for line in paragraph
            )
            blocks.append(("paragraph", text.strip()))
            paragraph.clear()
        if table:
            blocks.append(("table", ([list(r) for r in table], header)))
            table.clear()
            header = False

    for line in markdown.splitlines():
        if line.lstrip().startswith("|"):
            if paragraph:
                flush()
            if _TABLE_RULE.match(line):
                header = len(table) == 1
            else:
                table.append(_cells(line))
            continue
        if table or not line.strip():
            flush()
        if not line.strip():
            continue
        if heading := _HEADING.match(line):
            flush()
            blocks.append(("heading", (len(heading.group(1)), heading.group(2).strip())))
        elif bullet := _BULLET.match(line):
            flush()
            blocks.append(("bullet", bullet.group(1).strip()))
        else:
            paragraph.append(line)
    flush()
    return blocks


def _inline(text: str) -> str:
    """``**bold**`` kept for fpdf2's markdown; its other markers (``__ ~~ --``) escaped."""
    return _FPDF_MARKERS.sub(r"\\\1", text)


def _pdf_table(pdf: Any, rows: list[list[str]], has_header: bool) -> None:
    """A table whose columns are as wide as their text (long cells wrap), words never split."""
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    pdf.set_font(_FONT, "B", _BODY_SIZE)  # measured in bold: the widest the text can be
    columns = [[r[i] for r in rows] for i in range(width)]
    least = [
        max(pdf.get_string_width(w) for c in col for w in c.split() or [""]) for col in columns
    ]
    wanted = [
        max(low, min(_MAX_COLUMN_MM, max(map(pdf.get_string_width, col))))
        for low, col in zip(least, columns, strict=True)
    ]
    room = pdf.epw - _COLUMN_PAD_MM * width
    if sum(wanted) > room:  # give each column its longest word, share the rest by need
        spare = max(0.0, room - sum(least)) / max(1e-6, sum(wanted) - sum(least))
        wanted = [low + (want - low) * spare for low, want in zip(least, wanted, strict=True)]
    col_widths = tuple(w + _COLUMN_PAD_MM for w in wanted)
    pdf.set_font(_FONT, "", _BODY_SIZE)
    with pdf.table(
        col_widths=col_widths,
        width=min(sum(col_widths), pdf.epw),
        align="LEFT",
        first_row_as_headings=has_header,
        markdown=True,
        text_align="LEFT",
        line_height=_LINE,
    ) as table:
        for r in rows:
            row = table.row()
            for cell in r:
                row.cell(_inline(cell))


def markdown_to_pdf(markdown: str, path: str | Path) -> Path:
    """Render Markdown (headings ``#``-``###``, paragraphs, bullet lists, ``**bold**``, pipe
    tables) to a PDF at ``path``, written atomically; returns the path.

    Text is set in DejaVu Sans (the TTF fonts shipped with matplotlib), so any Unicode text
    (accents, dashes, ``≥``) prints as written.
    """
    import matplotlib
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    from dermfm.cache import atomic_write_bytes

    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    pdf = FPDF(format="A4")
    pdf.add_font(_FONT, "", str(fonts / "DejaVuSans.ttf"))
    pdf.add_font(_FONT, "B", str(fonts / "DejaVuSans-Bold.ttf"))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    flow = {"new_x": XPos.LMARGIN, "new_y": YPos.NEXT, "markdown": True, "align": "L"}
    previous = None
    for kind, content in parse_markdown(markdown):
        if previous == "bullet" and kind != "bullet":
            pdf.ln(2)
        previous = kind
        if kind == "heading":
            level, text = content
            pdf.set_font(_FONT, "B", _HEADING_SIZES[level])
            pdf.ln(2)
            pdf.multi_cell(0, _HEADING_SIZES[level] * _HEADING_LINE, _inline(text), **flow)
            pdf.ln(1)
            continue
        pdf.set_font(_FONT, "", _BODY_SIZE)
        if kind == "paragraph":
            pdf.multi_cell(0, _LINE, _inline(content), **flow)
        elif kind == "bullet":
            pdf.set_x(pdf.l_margin + _INDENT)
            pdf.cell(_INDENT, _LINE, "•")
            pdf.multi_cell(0, _LINE, _inline(content), **flow)
            continue
        else:
            _pdf_table(pdf, *content)
        pdf.ln(2)
    path = Path(path)
    atomic_write_bytes(path, bytes(pdf.output()))
    return path


def write_documents(
    report: ConsultReport,
    folder: str | Path,
    kinds: Sequence[str] = DOCUMENT_KINDS,
    formats: Sequence[str] = FORMATS,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the documents of ``report`` into ``folder`` (created when missing).

    Writes ``<kind>.<format>`` for each kind (keys of :data:`DOCUMENTS`) and format (``md``,
    ``pdf``), plus ``report.json`` (the report itself). Returns the paths by file name.

    Raises:
        ValueError: an unknown kind or format.
        FileExistsError: a target file exists and ``overwrite`` is false (nothing is written).
    """
    from dermfm.cache import atomic_write_bytes

    unknown = [k for k in kinds if k not in DOCUMENTS] + [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(
            f"unknown document kind or format {unknown}: kinds are {list(DOCUMENTS)}, "
            f"formats {list(FORMATS)}"
        )
    folder = Path(folder)
    targets = {f"{k}.{f}": folder / f"{k}.{f}" for k in kinds for f in formats}
    targets["report.json"] = folder / "report.json"
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)}: already exists (pass overwrite=True to replace)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        markdown = DOCUMENTS[kind](report)
        if "md" in formats:
            atomic_write_bytes(targets[f"{kind}.md"], markdown.encode("utf-8"))
        if "pdf" in formats:
            markdown_to_pdf(markdown, targets[f"{kind}.pdf"])
    atomic_write_bytes(targets["report.json"], report.model_dump_json(indent=2).encode("utf-8"))
    return targets


__all__ = [
    "DOCUMENTS",
    "DOCUMENT_KINDS",
    "FORMATS",
    "DocumentTexts",
    "document_texts",
    "markdown_to_pdf",
    "parse_markdown",
    "patient_handout",
    "referral_letter",
    "report_markdown",
    "soap_note",
    "write_documents",
]

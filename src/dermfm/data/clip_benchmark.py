"""CLIP_benchmark's webdataset format: export records to it and read such folders back.

The layout is what ``clip_benchmark.datasets.builder.build_wds_dataset`` reads (and what its
``webdataset_builder.convert_dataset`` writes) for a classification dataset::

    <folder>/classnames.txt                          one class name per line (label order)
    <folder>/zeroshot_classification_templates.txt   one template per line, "{c}" = class name
    <folder>/<split>/nshards.txt                     number of shards
    <folder>/<split>/0.tar, 1.tar, ...               samples: <key>.jpg|png|webp + <key>.cls

``<key>.cls`` holds the class index as decimal text; keys are ``s0000000``, ``s0000001``... as
CLIP_benchmark writes them. Exported JPEG, PNG and WebP files are stored byte for byte, images in
other formats are re-encoded as (lossless) PNG.

Reading: :class:`~dermfm.data.manifest.Record` points at an image file, so the images of the
shards are extracted once into a folder of plain files, by default in the dermfm cache
(``DERMFM_CACHE/clip_benchmark_wds/<key>/``, the key being the shards' paths, sizes and
modification times, so a changed shard is extracted afresh) or into ``extract_to``; files already
extracted with the right size are not written again. A spec with ``layout: clip_benchmark_wds``
reads such a folder through :func:`~dermfm.data.sources.read_dataset`
(:func:`~dermfm.data.sources.read_clip_benchmark_wds` for a folder as it is).
"""

from __future__ import annotations

import io
import re
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dermfm.cache import atomic_write_bytes, cache_dir, content_key
from dermfm.data.labels import class_finder
from dermfm.data.manifest import ManifestError, Record
from dermfm.data.shards import _add_member
from dermfm.errors import ImageError
from dermfm.io import load_image
from dermfm.knowledge import LabelClass, LabelSet, diagnosis_templates, load_label_set
from dermfm.progress import Advance, progress

CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
NSHARDS = "nshards.txt"
#: Image member extensions CLIP_benchmark decodes, in the order it looks for them.
IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
_STORED_AS_IS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
_SHARD = re.compile(r"^\d+\.tar$")


@dataclass(frozen=True)
class WdsSample:
    """One classification sample of a webdataset split, its image extracted to a file."""

    shard: Path
    key: str
    image: Path
    label: int


@dataclass
class WdsExport:
    """What :func:`export_clip_benchmark_wds` wrote.

    Attributes:
        folder: the dataset folder.
        classnames: the class names, in label order (``classnames.txt``).
        samples: split -> samples written.
        shards: split -> shard files written.
        errors: records whose image could not be read; they are in no shard.
        unlabelled: images of records whose label is not a class of the label set; left out.
    """

    folder: Path
    classnames: list[str]
    samples: dict[str, int] = field(default_factory=dict)
    shards: dict[str, list[Path]] = field(default_factory=dict)
    errors: list[ImageError] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)


def _lines(path: Path) -> list[str]:
    """Stripped lines of a text file, as CLIP_benchmark reads them."""
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise ManifestError(path, f"cannot read ({exc.strerror or exc})") from exc


def wds_splits(folder: str | Path) -> list[str]:
    """The split folders (those holding ``nshards.txt``) of a webdataset folder, sorted."""
    return sorted(p.parent.name for p in Path(folder).glob(f"*/{NSHARDS}"))


def wds_classnames(folder: str | Path) -> list[str]:
    """The class names of a webdataset folder (``classnames.txt``), in label order."""
    path = Path(folder) / CLASSNAMES
    if not path.is_file():
        raise ManifestError(path, "not found: a classification webdataset needs class names")
    return _lines(path)


def wds_templates(folder: str | Path) -> list[str]:
    """The zero-shot templates of a webdataset folder (``{c}`` marks the class), or none."""
    path = Path(folder) / TEMPLATES
    return [t for t in _lines(path) if t] if path.is_file() else []


def _shards(folder: Path, split: str) -> list[Path]:
    count_file = folder / split / NSHARDS
    text = _lines(count_file)
    try:
        count = int(text[0])
    except (IndexError, ValueError):
        raise ManifestError(count_file, f"expected a number of shards, not {text!r}") from None
    shards = [folder / split / f"{i}.tar" for i in range(count)]
    for shard in shards:
        if not shard.is_file():
            raise ManifestError(shard, f"not found ({count_file} lists {count} shards)")
    return shards


def read_wds_split(
    folder: str | Path, split: str, extract_to: str | Path | None = None
) -> list[WdsSample]:
    """The samples of one split, images extracted to files (see the module docstring).

    Raises:
        ManifestError: a missing ``nshards.txt`` or shard, or a sample without an image or
            ``.cls`` (multi-label ``.npy`` and retrieval ``.txt`` datasets are not classification
            datasets and are refused).
    """
    folder = Path(folder)
    shards = _shards(folder, split)
    if extract_to is None:
        stamp = [(str(s.resolve()), s.stat().st_size, s.stat().st_mtime_ns) for s in shards]
        target = cache_dir("clip_benchmark_wds", content_key("wds-extract-v1", stamp))
    else:
        target = Path(extract_to)
    samples: list[WdsSample] = []
    for shard in shards:
        try:
            with tarfile.open(shard) as tar:
                for key, parts in _grouped_members(tar):
                    samples.append(_extracted(shard, key, parts, target / split / shard.stem))
        except (OSError, tarfile.TarError) as exc:
            raise ManifestError(shard, f"cannot extract the shard ({exc})") from exc
    return samples


def _grouped_members(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, streaming: as webdataset, a sample is the run of
    consecutive members whose names share the part before the first dot of the file name."""
    key, parts = "", {}
    for member in tar:
        folder, _, name = member.name.rpartition("/")
        stem, dot, ext = name.partition(".")
        if not member.isfile() or not dot or not stem:
            continue
        stem = f"{folder}/{stem}" if folder else stem
        if stem != key and parts:
            yield key, parts
            parts = {}
        key = stem
        data = tar.extractfile(member)
        parts[ext.lower()] = data.read() if data else b""
    if parts:
        yield key, parts


def _extracted(shard: Path, key: str, parts: dict[str, bytes], folder: Path) -> WdsSample:
    """The sample with its image written to ``folder`` (kept when already there)."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
    if ext is None or "cls" not in parts:
        raise ManifestError(
            f"{shard}:{key}",
            f"sample has members {sorted(parts)}; a classification sample needs an image "
            f"({', '.join(IMAGE_EXTENSIONS)}) and a .cls label",
        )
    try:
        label = int(parts["cls"].decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise ManifestError(f"{shard}:{key}", f"bad .cls {parts['cls'][:20]!r}") from None
    image = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.{ext}"
    if not (image.is_file() and image.stat().st_size == len(parts[ext])):
        atomic_write_bytes(image, parts[ext])
    return WdsSample(shard, key, image, label)


def _classes(records: Sequence[Record], label_set: str | LabelSet | None) -> LabelSet:
    """The export's classes: the given label set, or the records' labels sorted."""
    if label_set is not None:
        return load_label_set(label_set)
    found: dict[str, LabelClass] = {}
    for r in records:
        label = r.metadata.get("dataset_label") or r.label
        if label and label not in found:
            found[label] = LabelClass(label, r.metadata.get("class_name") or label, None)
    return LabelSet(name="records", classes=tuple(found[k] for k in sorted(found)))


def _sample_image(record: Record) -> tuple[str, bytes]:
    """(extension, bytes) to store; raises :class:`ImageError` when the image is unreadable."""
    image = load_image(record.image)  # full decode: a broken file never reaches a shard
    ext = _STORED_AS_IS.get(Path(record.image).suffix.lower())
    if ext:
        try:
            return ext, Path(record.image).read_bytes()
        except OSError as exc:
            raise ImageError(record.image, f"cannot read file ({exc.strerror or exc})") from exc
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "png", buffer.getvalue()


def _refuse(path: Path, overwrite: bool, content: str | None = None) -> None:
    if overwrite or not path.exists():
        return
    if content is not None and path.read_text(encoding="utf-8") == content:
        return
    raise ManifestError(path, "already exists; pass overwrite=True to replace it")


def export_clip_benchmark_wds(
    records: Sequence[Record],
    out_dir: str | Path,
    *,
    label_set: str | LabelSet | None = None,
    templates: str | Sequence[str] | None = "skin8",
    max_count: int = 10_000,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> WdsExport:
    """Write records as a CLIP_benchmark webdataset folder, one split folder per record split.

    Args:
        records: the records; each goes to ``<out_dir>/<record.split>/``.
        out_dir: the dataset folder (created if needed).
        label_set: the classes and their order (a record's class is its
            ``metadata['dataset_label']``, else its ontology node); by default the records'
            labels, sorted. ``classnames.txt`` holds the classes' prompt names.
        templates: a dermfm diagnosis template set name, templates with ``{}``, or ``None``
            for no templates file.
        max_count: samples per shard.
        overwrite: replace existing shards of the exported splits and differing metadata files;
            without it nothing existing is touched and an error names the file.
        show_progress: progress bar (``None``: only on a terminal).

    Raises:
        ManifestError: an output file exists (and ``overwrite`` is false).
        ValueError: a bad ``max_count``, a template without ``{}``, a class name with a line
            break, or a split name that cannot be a folder name.
    """
    if max_count < 1:
        raise ValueError(f"max_count must be at least 1, not {max_count}")
    classes = _classes(records, label_set)
    names = classes.names
    if any("\n" in n or "\r" in n for n in names):
        raise ValueError("class names must not contain line breaks (one per line in the file)")
    if isinstance(templates, str):
        templates = diagnosis_templates(templates)
    for template in templates or ():
        if "{}" not in template:
            raise ValueError(f"template {template!r} has no '{{}}' for the class name")
    out = Path(out_dir)
    splits: dict[str, list[Record]] = {}
    for record in records:
        splits.setdefault(record.split, []).append(record)
    for split in splits:
        if not split or split.startswith(".") or "/" in split or "\\" in split:
            raise ValueError(f"split {split!r} cannot be a folder name")
    classnames_text = "".join(f"{n}\n" for n in names)
    templates_text = "".join(f"{t.replace('{}', '{c}')}\n" for t in templates or ())
    _refuse(out / CLASSNAMES, overwrite, classnames_text)
    if templates:
        _refuse(out / TEMPLATES, overwrite, templates_text)
    for split in splits:
        for path in [out / split / NSHARDS, *(out / split).glob("*.tar")]:
            _refuse(path, overwrite)

    report = WdsExport(out, names)
    find_class = class_finder(classes)
    index = {c.label: i for i, c in enumerate(classes.classes)}
    with progress("Exporting webdataset", len(records), show_progress) as advance:
        for split, members in splits.items():
            labelled = []
            for record in members:
                cls = find_class(record.metadata.get("dataset_label", ""))
                cls = cls or find_class(record.label or "")
                if cls is None:
                    report.unlabelled.append(record.image)
                else:
                    labelled.append((record, index[cls.label]))
            report.samples[split], report.shards[split] = _write_split(
                out / split, labelled, max_count, report.errors, advance
            )
            advance(len(members) - len(labelled))
    (out / CLASSNAMES).write_text(classnames_text, encoding="utf-8")
    if templates:
        (out / TEMPLATES).write_text(templates_text, encoding="utf-8")
    return report


def _write_split(
    folder: Path,
    samples: Sequence[tuple[Record, int]],
    max_count: int,
    errors: list[ImageError],
    advance: Advance,
) -> tuple[int, list[Path]]:
    """Write one split's shards (each through a temporary name) and ``nshards.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if _SHARD.match(stale.name) or stale.name == NSHARDS:
            stale.unlink()
    shards: list[Path] = []
    written = 0
    tar: tarfile.TarFile | None = None
    mtime = time.time()

    def close() -> None:
        assert tar is not None
        tar.close()
        Path(str(tar.name)).replace(shards[-1])

    for record, label in samples:
        advance()
        try:
            ext, data = _sample_image(record)
        except ImageError as exc:
            errors.append(exc)
            continue
        if tar is None:
            shards.append(folder / f"{len(shards)}.tar")
            tmp = shards[-1].with_suffix(".tar.tmp")
            tar = tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        key = f"s{written:07d}"
        _add_member(tar, f"{key}.{ext}", data, mtime)
        _add_member(tar, f"{key}.cls", str(label).encode(), mtime)
        written += 1
        if written % max_count == 0:
            close()
            tar = None
    if tar is not None:
        close()
    if shards:
        (folder / NSHARDS).write_text(f"{len(shards)}\n", encoding="utf-8")
    elif not any(folder.iterdir()):
        folder.rmdir()  # no readable sample: no split folder CLIP_benchmark would choke on
    return written, shards

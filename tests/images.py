"""Realistic test photos drawn here, deterministically (seeded), so that the headline tests run
without ``../shared/data``: skin of Fitzpatrick types I-VI with texture, shading, pores and
hairs; lesions of the seven HAM10000 kinds (irregular, variegated melanoma; round, even nevus;
pink basal cell carcinoma with vessels; ...); dermoscopy framing; a millimetre ruler; JPEGs with
EXIF camera, date and GPS blocks; PNG, WebP and HEIC files; and phone-size 4000x3000 JPEGs.

Nothing here is patient data; the same seed always gives the same pixels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

#: Mean skin colour (sRGB) per Fitzpatrick skin type.
SKIN_TONES: dict[str, tuple[float, float, float]] = {
    "I": (242.0, 208.0, 190.0),
    "II": (228.0, 185.0, 160.0),
    "III": (206.0, 158.0, 128.0),
    "IV": (170.0, 122.0, 92.0),
    "V": (122.0, 82.0, 58.0),
    "VI": (78.0, 52.0, 40.0),
}

#: The seven HAM10000 classes: pigment colours (darkest first), border irregularity, the
#: radius as a share of the shorter side, and extras drawn on top.
LESIONS: dict[str, dict[str, object]] = {
    "mel": {
        "colours": [(40, 22, 18), (92, 52, 34), (70, 78, 104), (150, 96, 70)],
        "irregular": 0.13,
        "radius": 0.28,
    },
    "nv": {"colours": [(96, 58, 38), (120, 76, 50)], "irregular": 0.04, "radius": 0.20},
    "bkl": {
        "colours": [(150, 110, 78), (120, 86, 60)],
        "irregular": 0.07,
        "radius": 0.26,
        "speckle": True,
    },
    "bcc": {
        "colours": [(220, 160, 160), (200, 130, 135)],
        "irregular": 0.08,
        "radius": 0.18,
        "vessels": True,
    },
    "akiec": {
        "colours": [(196, 104, 96), (214, 150, 132)],
        "irregular": 0.14,
        "radius": 0.24,
        "scale": True,
    },
    "df": {
        "colours": [(110, 70, 52), (136, 92, 70)],
        "irregular": 0.05,
        "radius": 0.16,
        "centre": (226, 206, 196),
    },
    "vasc": {"colours": [(150, 30, 52), (110, 24, 64)], "irregular": 0.05, "radius": 0.13},
}

#: EXIF tag numbers.
MAKE, MODEL, DATETIME, ORIENTATION, GPS_IFD = 0x010F, 0x0110, 0x0132, 0x0112, 0x8825
#: The position written into tagged photos (degrees, minutes, seconds).
GPS_LATITUDE = (51.0, 30.0, 12.5)
GPS_LONGITUDE = (0.0, 7.0, 39.0)
CAMERA = ("PhoneMaker", "PhoneCam 12")


def _field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth noise, about unit variance, with ``cells`` blobs across the shorter side."""
    scale = min(height, width) / max(cells, 1)
    gh, gw = max(2, round(height / scale) + 2), max(2, round(width / scale) + 2)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    big = Image.fromarray(small, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    out = np.asarray(big, dtype=np.float32)
    return out / max(float(out.std()), 1e-6)


def skin(
    width: int, height: int, *, seed: int = 0, tone: str = "III", hairs: int = 6
) -> np.ndarray:
    """``(height, width, 3)`` float32 skin: tone, blotches, fine texture, pores, shading, hairs."""
    rng = np.random.default_rng(seed)
    base = np.array(SKIN_TONES[tone], dtype=np.float32)
    pixels = np.empty((height, width, 3), dtype=np.float32)
    pixels[:] = base
    blotch = _field(rng, height, width, 3)[..., None]
    redness = _field(rng, height, width, 6)[..., None]
    pixels += blotch * 0.03 * base
    pixels += redness * np.array([4.0, -1.5, -1.0], dtype=np.float32) * base / 200.0
    pixels += _field(rng, height, width, max(8, min(height, width) // 6))[..., None] * 4.0
    pixels += rng.normal(0.0, 3.0, (height, width, 1)).astype(np.float32)
    # pores: small darker dots
    n = (height * width) // 900
    ys, xs = rng.integers(0, height, n), rng.integers(0, width, n)
    pixels[ys, xs] *= 0.85
    # light from the upper left
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1.06 - 0.16 * ((xx / width - 0.3) ** 2 + (yy / height - 0.25) ** 2)
    pixels *= light[..., None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    hair = tuple(int(c * 0.25) for c in base)
    for _ in range(hairs):
        x, y = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        angle, points = float(rng.uniform(0, 2 * np.pi)), []
        for _ in range(12):
            points.append((x, y))
            angle += float(rng.normal(0, 0.15))
            x += np.cos(angle) * min(height, width) / 20
            y += np.sin(angle) * min(height, width) / 20
        draw.line(points, fill=hair, width=max(1, min(height, width) // 300))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(0.5)), dtype=np.float32)


def _shape(
    rng: np.random.Generator, height: int, width: int, radius: float, irregular: float
) -> np.ndarray:
    """A soft ``(height, width)`` mask of a blob with a wavy, asymmetric border."""
    cy = height / 2 + rng.normal(0, height * 0.04)
    cx = width / 2 + rng.normal(0, width * 0.04)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta, dist = np.arctan2(yy - cy, xx - cx), np.hypot(yy - cy, xx - cx)
    border = np.ones_like(theta)
    for k in range(2, 8):
        border += irregular / k**0.5 * rng.normal() * np.cos(k * theta + rng.uniform(0, 6.3))
    r = radius * min(height, width) * border
    return 1.0 / (1.0 + np.exp(-(r - dist) / max(1.5, 0.015 * min(height, width))))


def lesion(pixels: np.ndarray, kind: str, *, seed: int = 0) -> np.ndarray:
    """``pixels`` with a lesion of one of the :data:`LESIONS` kinds drawn in the middle."""
    spec = LESIONS[kind]
    rng = np.random.default_rng(seed + 1000)
    height, width = pixels.shape[:2]
    mask = _shape(rng, height, width, float(spec["radius"]), float(spec["irregular"]))[..., None]
    # the same lesion is darker on darker skin
    colours = np.array(spec["colours"], dtype=np.float32)
    colours *= float(np.clip(pixels.mean() / np.mean(SKIN_TONES["III"]), 0.4, 1.0))
    # variegation: each colour where its smooth field is highest
    weights = np.stack([_field(rng, height, width, 5) * 1.5 for _ in colours], axis=-1)
    weights = np.exp(weights - weights.max(axis=-1, keepdims=True))
    pigment = (weights / weights.sum(axis=-1, keepdims=True)) @ colours
    pigment += _field(rng, height, width, 40)[..., None] * 6.0  # network-like fine texture
    out = pixels * (1 - 0.9 * mask) + pigment * 0.9 * mask
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    side = min(height, width)
    if spec.get("centre"):
        dist = np.hypot(yy - height / 2, xx - width / 2) / (0.05 * side)
        centre = np.clip(1.0 - dist, 0, 1)[..., None] * mask
        out = out * (1 - 0.8 * centre) + np.array(spec["centre"]) * 0.8 * centre
    if spec.get("speckle"):
        dots = (rng.random((height, width)) < 0.01).astype(np.float32)[..., None] * mask
        out = out * (1 - 0.5 * dots) + np.array([230.0, 220.0, 190.0]) * 0.5 * dots
    if spec.get("scale"):
        flakes = np.clip(_field(rng, height, width, 30) - 1.0, 0, 1)[..., None] * mask
        out = out * (1 - 0.6 * flakes) + 235.0 * 0.6 * flakes
    image = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    if spec.get("vessels"):
        draw = ImageDraw.Draw(image)
        for _ in range(5):
            x = width / 2 + rng.normal(0, side * 0.06)
            y = height / 2 + rng.normal(0, side * 0.06)
            points = [(x, y)]
            for _ in range(8):
                x += rng.normal(0, side * 0.02)
                y += rng.normal(0, side * 0.02)
                points.append((x, y))
            draw.line(points, fill=(170, 40, 50), width=max(1, side // 250))
    return np.asarray(image, dtype=np.float32)


def add_ruler(image: Image.Image, *, seed: int = 0) -> Image.Image:
    """A millimetre ruler along the bottom edge (ticks every mm, longer every 5 and 10, with
    centimetre numbers), as on many clinical and dermoscopy photos."""
    rng = np.random.default_rng(seed + 2000)
    out = image.copy()
    draw = ImageDraw.Draw(out)
    width, height = out.size
    strip = max(12, height // 12)
    top = height - strip - int(rng.integers(0, max(1, height // 40)))
    draw.rectangle([0, top, width, top + strip], fill=(238, 232, 205))
    mm = max(3.0, width / 110)
    x, i = float(rng.uniform(2, 2 * mm)), 0
    while x < width:
        length = strip * (0.75 if i % 10 == 0 else 0.5 if i % 5 == 0 else 0.3)
        draw.line([(x, top), (x, top + length)], fill=(20, 20, 20), width=1)
        if i % 10 == 0 and i:
            draw.text((x + 2, top + strip * 0.55), str(i // 10), fill=(20, 20, 20))
        x, i = x + mm, i + 1
    return out


def dermoscopy_frame(image: Image.Image) -> Image.Image:
    """Black corners outside a round field of view, as a contact dermatoscope gives."""
    width, height = image.size
    mask = Image.new("L", image.size, 0)
    inset = 0.04 * min(width, height)
    ImageDraw.Draw(mask).ellipse(
        [-0.08 * width + inset, -0.1 * height + inset, 1.08 * width - inset, 1.1 * height - inset],
        fill=255,
    )
    black = Image.new("RGB", image.size, (8, 6, 6))
    return Image.composite(image, black, mask.filter(ImageFilter.GaussianBlur(4)))


def skin_photo(
    width: int = 600,
    height: int = 450,
    *,
    kind: str | None = "mel",
    seed: int = 0,
    tone: str = "III",
    ruler: bool = False,
    dermoscopy: bool = False,
) -> Image.Image:
    """An RGB photo of skin with a lesion of ``kind`` (``None``: skin only)."""
    pixels = skin(width, height, seed=seed, tone=tone)
    if kind:
        pixels = lesion(pixels, kind, seed=seed)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if dermoscopy:
        image = dermoscopy_frame(image)
    if ruler:
        image = add_ruler(image, seed=seed)
    return image


def phone_photo(
    kind: str = "mel", *, seed: int = 0, tone: str = "III", size: tuple[int, int] = (4000, 3000)
) -> Image.Image:
    """A phone-camera-size photo: drawn at a quarter of the size, enlarged, with sensor noise."""
    width, height = size
    small = skin_photo(width // 4, height // 4, kind=kind, seed=seed, tone=tone, ruler=True)
    big = small.resize(size, Image.Resampling.BICUBIC)
    tile = Image.effect_noise((509, 509), 6).convert("RGB")  # sensor noise, tiled
    noise = Image.new("RGB", size)
    for x in range(0, width, 509):
        for y in range(0, height, 509):
            noise.paste(tile, (x, y))
    return ImageChops.add(big, noise, scale=1.0, offset=-128)


def camera_exif(*, gps: bool = True, orientation: int | None = None) -> Image.Exif:
    """EXIF of a phone photo: make, model, date and time, and (``gps``) the position."""
    exif = Image.Exif()
    exif[MAKE], exif[MODEL] = CAMERA
    exif[DATETIME] = "2026:01:02 03:04:05"
    if orientation:
        exif[ORIENTATION] = orientation
    if gps:
        block = exif.get_ifd(GPS_IFD)
        block[1], block[2] = "N", GPS_LATITUDE  # GPSLatitudeRef, GPSLatitude
        block[3], block[4] = "W", GPS_LONGITUDE  # GPSLongitudeRef, GPSLongitude
    return exif


def heic_available() -> bool:
    """Whether HEIC can be written and read here (the ``pillow-heif`` package)."""
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def reference_open(path: Path) -> Image.Image:
    """A file decoded by plain PIL (HEIC through pillow-heif's opener) and converted to RGB, as
    the reference pipelines of open_clip and transformers read it."""
    if Path(path).suffix.lower() in (".heic", ".heif"):
        from pillow_heif import register_heif_opener

        register_heif_opener()
    with Image.open(path) as image:
        return image.convert("RGB")


def encode(image: Image.Image, fmt: str, *, exif: Image.Exif | None = None, **options) -> bytes:
    """The bytes of ``image`` in ``fmt`` (JPEG, PNG, WEBP or HEIF), with ``exif`` if given."""
    fmt = fmt.upper()
    if fmt in ("HEIC", "HEIF"):
        from pillow_heif import register_heif_opener

        register_heif_opener()
        fmt = "HEIF"
    defaults = {"JPEG": {"quality": 92}, "WEBP": {"quality": 90}, "HEIF": {"quality": 90}}
    kwargs = {**defaults.get(fmt, {}), **options}
    if exif is not None:
        kwargs["exif"] = exif
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def save(image: Image.Image, path: Path, *, exif: Image.Exif | None = None, **options) -> Path:
    """Write ``image`` to ``path`` in the format its suffix names."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}.get(
        path.suffix.lower(), "HEIF"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(image, fmt, exif=exif, **options))
    return path


#: The generated set: (file name, HAM10000 label, size, skin type, ruler, dermoscopy frame,
#: EXIF with GPS). A spread like :func:`conftest.real_images`: dermoscopy and clinical photos,
#: every skin type, four file formats.
PHOTO_SET = [
    ("derm_mel_1.jpg", "mel", (600, 450), "II", False, True, True),
    ("derm_nv_1.jpg", "nv", (600, 450), "III", False, True, False),
    ("derm_bkl_1.jpg", "bkl", (600, 450), "I", True, False, True),
    ("derm_bcc_1.jpg", "bcc", (600, 450), "IV", False, True, False),
    ("derm_akiec_1.png", "akiec", (640, 480), "III", True, False, False),
    ("derm_df_1.webp", "df", (600, 450), "V", False, False, True),
    ("derm_vasc_1.jpg", "vasc", (600, 450), "II", False, True, True),
    ("derm_mel_2.png", "mel", (512, 512), "IV", False, True, False),
    ("clin_nv_2.jpg", "nv", (480, 640), "VI", True, False, True),
    ("clin_mel_3.webp", "mel", (720, 540), "V", True, False, False),
    ("clin_bcc_2.jpg", "bcc", (720, 540), "I", False, False, True),
    ("clin_bkl_2.png", "bkl", (540, 720), "VI", False, False, False),
]


def photo_set(folder: Path, *, heic: bool = True, phone: bool = False) -> list[tuple[Path, str]]:
    """Write :data:`PHOTO_SET` (plus, when ``heic`` and pillow-heif is installed, a HEIC photo,
    and with ``phone`` a 4000x3000 phone JPEG with GPS) to ``folder``: ``(path, label)``."""
    out = []
    for i, (name, label, (w, h), tone, ruler, derm, gps) in enumerate(PHOTO_SET):
        image = skin_photo(w, h, kind=label, seed=i, tone=tone, ruler=ruler, dermoscopy=derm)
        exif = camera_exif() if gps else None
        out.append((save(image, folder / name, exif=exif), label))
    if heic and heic_available():
        image = skin_photo(400, 300, kind="nv", seed=40, tone="IV", ruler=True)
        out.append((save(image, folder / "phone_nv.heic", exif=camera_exif()), "nv"))
    if phone:
        image = phone_photo("mel", seed=50, tone="III")
        out.append((save(image, folder / "phone_mel.jpg", exif=camera_exif()), "mel"))
    return out

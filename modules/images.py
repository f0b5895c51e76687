"""Saving images with their infotext, reading it back, base64 transport, and grids.

Files are laid out as A1111 does: ``outdir/YYYY-MM-DD/NNNNN-SEED.png`` (``.jpg``, ``.webp`` with
the setting ``samples_format``), where NNNNN is one more than the highest number already in that
folder. Each file is written to a hidden temporary file in the same folder and moved into place
with ``os.replace``, so a crash never leaves a half-written image under a real name. The infotext
travels in the PNG text chunk ``parameters`` (JPEG/WebP: the EXIF UserComment, as A1111 writes it).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import errno
import io
import logging
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from modules.infotext import parse_infotext

logger = logging.getLogger(__name__)

DEFAULT_PATTERN = "[number]-[seed]"
PATTERN_TOKENS = ("number", "seed", "date", "datetime", "width", "height", "prompt_words")
PROMPT_WORDS_MAX_WORDS = 8
PROMPT_WORDS_MAX_CHARS = 80
NUMBER_DIGITS = 5
INFOTEXT_KEY = "parameters"
EXIF_IFD = 0x8769
EXIF_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\0"
_ASCII_PREFIX = b"ASCII\0\0\0"
_TOKEN_RE = re.compile(r"\[([^\[\]]*)\]")
_UNSAFE_FILENAME_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16")
_ENCODE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "JPG": "JPEG", "WEBP": "WEBP"}
FILE_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}  # by PIL format


# ---------------------------------------------------------------------------------------------
# File names


def check_pattern(pattern: str) -> None:
    """Raise ValueError when ``pattern`` has an unknown token or characters unsafe in file names."""
    for token in _TOKEN_RE.findall(pattern):
        if token not in PATTERN_TOKENS:
            known = ", ".join(f"[{t}]" for t in PATTERN_TOKENS)
            raise ValueError(f"file name pattern {pattern!r}: unknown token [{token}]; known tokens: {known}")
    literal = _TOKEN_RE.sub("", pattern)
    if _UNSAFE_FILENAME_CHARS.search(literal) or not pattern.strip() or pattern.strip(". ") == "":
        raise ValueError(
            f"file name pattern {pattern!r} is not usable as a file name; use tokens such as"
            f" {DEFAULT_PATTERN!r} and no path separators or any of <>:\"|?*"
        )


def prompt_words(prompt: str) -> str:
    """The first words of ``prompt`` as a file-name-safe string of at most 80 characters."""
    words = re.findall(r"\w+", prompt)[:PROMPT_WORDS_MAX_WORDS]
    text = " ".join(words)[:PROMPT_WORDS_MAX_CHARS].strip()
    return text or "empty"


def next_sequence_number(folder: Path, prefix: str = "") -> int:
    """1 + the highest number that follows ``prefix`` at the start of a name in ``folder`` (else 0)."""
    if not folder.is_dir():
        return 0
    return next_number(os.listdir(folder), prefix)


def next_number(names: Iterable[str], prefix: str = "") -> int:
    """1 + the highest number that follows ``prefix`` at the start of one of ``names`` (else 0)."""
    highest = -1
    for name in names:
        if not name.startswith(prefix):
            continue
        match = re.match(r"\d+", name[len(prefix):])
        if match:
            highest = max(highest, int(match.group()))
    return highest + 1


def _render(pattern: str, values: dict[str, str]) -> str:
    return _TOKEN_RE.sub(lambda m: values[m.group(1)], pattern)


def _timestamp(date: dt.date | None) -> dt.datetime:
    """The moment a file is named for: ``date`` (with the current time if it is a plain date)."""
    now = dt.datetime.now()
    if date is None:
        return now
    if isinstance(date, dt.datetime):
        return date
    return dt.datetime.combine(date, now.time())


# ---------------------------------------------------------------------------------------------
# Saving


TEMP_PREFIX, TEMP_SUFFIX = ".", ".png.tmp"  # a PNG being written: hidden, renamed into place when complete
STALE_TEMP_AGE_S = 60.0  # a temporary PNG older than this was left by a crash (a save takes well under a second)
# why a folder cannot take a file, by errno, as the user should read it
_SAVE_PROBLEMS = {
    errno.ENOSPC: "the disk is full",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "the folder is not writable (permission denied)",
    errno.EPERM: "the folder is not writable (operation not permitted)",
}
if hasattr(errno, "EDQUOT"):  # not on Windows
    _SAVE_PROBLEMS[errno.EDQUOT] = "the disk quota is used up"


class ImageSaveError(OSError):
    """An image could not be written to ``folder`` (disk full, quota, read-only, no permission, ...).

    The image itself is fine: callers keep it and report this message. ``errno`` is the cause's.
    """

    def __init__(self, folder: Path | str, cause: OSError) -> None:
        problem = _SAVE_PROBLEMS.get(cause.errno or 0) or (cause.strerror or str(cause) or type(cause).__name__)
        super().__init__(cause.errno, problem, str(folder))
        self.folder = folder if isinstance(folder, str) else Path(folder)  # a str: an --outputs-url location
        self.problem = problem

    def __str__(self) -> str:
        return f"could not save the image in {self.folder}: {self.problem}; free some space or make the folder writable"


def image_format(name: str) -> str:
    """PIL's format for an A1111 ``samples_format`` (png, jpg, jpeg, webp; any case); ValueError otherwise."""
    fmt = _ENCODE_FORMATS.get(name.strip().upper())
    if fmt is None:
        raise ValueError(f"image format {name!r} is not supported; use one of png, jpg, webp")
    return fmt


class ImageOutputs(Protocol):
    """Somewhere other than the local folder that saved images go (``modules.outputs_url``).

    ``save`` stores one encoded file in the place standing for the local ``folder``: it calls
    ``write`` to encode it, ``free_name(names, tag)`` with the names already there (holding
    ``lock``) to name it, and returns where it went. A failure raises :class:`ImageSaveError`.
    """

    def save(self, folder: Path, write: Callable[[BinaryIO], None],
             free_name: Callable[[Iterable[str], str], str], lock: threading.Lock) -> str: ...


class ImageSaver:
    """Saves images A1111-style; one instance shared by all callers keeps file numbers unique.

    Files are ``file_format`` (A1111's ``samples_format``: PNG, JPEG or WebP), the infotext in the
    PNG ``parameters`` chunk or the EXIF UserComment. The lock covers only choosing the number and
    the final ``os.replace`` (encoding happens before it), so concurrent saves stay fast. Saves
    through different ImageSaver objects (or processes) into the same folder are not serialised;
    share one instance. A save that fails for lack of room or rights raises
    :class:`ImageSaveError` and leaves no temporary file.

    ``outputs`` (None: the local folder given to ``save_image``, the default) sends the files
    elsewhere, e.g. an fsspec URL shared by Serve replicas (``modules.outputs_url``); ``save_image``
    then returns that location as a string.
    """

    def __init__(self, file_format: str = "png", outputs: ImageOutputs | None = None) -> None:
        self._lock = threading.Lock()
        self.file_format = image_format(file_format)
        self.outputs = outputs

    def set_file_format(self, name: str) -> None:
        """Save the next images as ``name`` (png, jpg or webp): the setting ``samples_format`` changed."""
        self.file_format = image_format(name)

    def save_image(
        self,
        image: Image.Image,
        outdir: Path,
        seed: int,
        infotext: str,
        *,
        pattern: str = DEFAULT_PATTERN,
        date: dt.date | None = None,
        use_date_subdir: bool = True,
    ) -> Path | str:
        """Save ``image`` in ``file_format`` with ``infotext`` (PNG chunk or EXIF); return the path
        (with ``outputs``: the location it gave, a URL).

        The path is ``outdir/YYYY-MM-DD/<pattern>.png`` (``.jpg``, ``.webp``; no date folder if ``use_date_subdir`` is
        False). Tokens: [number] (next free 5-digit number), [seed], [date] (YYYY-MM-DD),
        [datetime] (YYYYMMDDhhmmss), [width], [height], [prompt_words]. A pattern without
        [number] whose name is taken gets ``-1``, ``-2``, ... appended.
        """
        check_pattern(pattern)
        when = _timestamp(date)
        folder = Path(outdir) / when.strftime("%Y-%m-%d") if use_date_subdir else Path(outdir)
        values = {
            "seed": str(seed),
            "date": when.strftime("%Y-%m-%d"),
            "datetime": when.strftime("%Y%m%d%H%M%S"),
            "width": str(image.width),
            "height": str(image.height),
            "prompt_words": "",
        }
        if "[prompt_words]" in pattern:
            values["prompt_words"] = prompt_words(parse_infotext(infotext)["Prompt"])
        fmt = self.file_format
        if self.outputs is not None:
            extension = FILE_EXTENSIONS[fmt]
            return self.outputs.save(folder, lambda handle: _write_image(handle, image, fmt, infotext),
                                     lambda names, tag: free_name(names, pattern, values, extension, tag), self._lock)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            temp = _write_temp_image(image, folder, infotext, fmt)
            try:
                with self._lock:
                    final = _free_path(folder, pattern, values, FILE_EXTENSIONS[fmt])
                    os.replace(temp, final)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        except OSError as err:
            raise ImageSaveError(folder, err) from err
        return final


def save_image(
    image: Image.Image,
    outdir: Path,
    seed: Any,
    infotext: Any = None,
    *a1111_args: Any,
    pattern: str = DEFAULT_PATTERN,
    date: dt.date | None = None,
    use_date_subdir: bool = True,
    **a1111_kwargs: Any,
) -> Any:
    """``ImageSaver().save_image(...)`` for one-off saves; concurrent savers should share one ImageSaver.

    Called the A1111 way by an extension, ``save_image(image, path, basename, seed, prompt, extension,
    info, ..., p=p)`` (a ``basename`` string third), it is ``modules.a1111_compat.images.save_image``."""
    if isinstance(seed, str) or a1111_args or a1111_kwargs:
        from modules.a1111_compat.images import save_image as a1111_save_image

        return a1111_save_image(image, outdir, seed, infotext, *a1111_args, **a1111_kwargs)
    return ImageSaver().save_image(
        image, outdir, seed, infotext, pattern=pattern, date=date, use_date_subdir=use_date_subdir
    )


def _free_path(folder: Path, pattern: str, values: dict[str, str], extension: str = ".png") -> Path:
    """The first unused ``folder/<pattern><extension>``; call with the saver's lock held."""
    return folder / free_name(os.listdir(folder) if folder.is_dir() else [], pattern, values, extension)


def free_name(names: Iterable[str], pattern: str, values: dict[str, str], extension: str = ".png", tag: str = "") -> str:
    """The first file name ``<pattern>[-<tag>]<extension>`` not among ``names`` (a folder's contents).

    ``[number]`` becomes one more than the highest number already there; a pattern without it gets
    ``-1``, ``-2``, ... when its name is taken. ``tag`` (a Serve replica's id) keeps the names that
    two writers of one shared folder choose at the same moment apart.
    """
    taken = set(names)
    ending = f"-{tag}{extension}" if tag else extension
    if "[number]" in pattern:
        prefix = _render(pattern.split("[number]", 1)[0], values)
        number = next_number(taken, prefix)
        while True:
            name = _render(pattern, {**values, "number": f"{number:0{NUMBER_DIGITS}d}"}) + ending
            if name not in taken:
                return name
            number += 1
    stem = _render(pattern, values)
    name = f"{stem}{ending}"
    suffix = 1
    while name in taken:
        name = f"{stem}-{suffix}{ending}"
        suffix += 1
    return name


def _png_ready(image: Image.Image) -> Image.Image:
    """``image`` in a mode PNG can store (RGB or RGBA otherwise)."""
    if image.mode in _PNG_MODES:
        return image
    return image.convert("RGBA" if "A" in image.getbands() else "RGB")


def _write_temp_image(image: Image.Image, folder: Path, infotext: str | None, fmt: str = "PNG") -> Path:
    """Write a complete image file (PIL format ``fmt``) to a hidden temporary file in ``folder``
    (flushed to disk; named ``TEMP_SUFFIX`` whatever the format, so a crash's leftovers are found)."""
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_image(handle, image, fmt, infotext)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def remove_stale_temp_files(folders: list[Path], older_than_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Delete the hidden ``.*.png.tmp`` files that crashed saves left in ``folders`` and their date
    subfolders (one level down, as ``save_image`` lays them out); return the paths deleted.

    Only files older than ``older_than_s`` seconds go: a save running now (another process sharing
    the folder) keeps its file. Folders that do not exist are skipped; a file that cannot be
    deleted is logged and left.
    """
    cutoff = dt.datetime.now().timestamp() - older_than_s
    removed: list[Path] = []
    for folder in folders:
        for directory in [Path(folder), *_subfolders(Path(folder))]:
            for path in _stale_temps(directory, cutoff):
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as err:
                    logger.warning("could not delete the stale temporary file %s: %s", path, err)
                    continue
                removed.append(path)
    if removed:
        logger.info("deleted %d temporary PNG file(s) left by interrupted saves", len(removed))
    return removed


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:  # missing or unreadable: nothing to clean
        return []


def _stale_temps(folder: Path, cutoff: float) -> list[Path]:
    """The temporary PNGs in ``folder`` last written before ``cutoff`` (a POSIX time)."""
    found: list[Path] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not (entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX)):
                    continue
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        found.append(Path(entry.path))
                except OSError:  # gone meanwhile
                    continue
    except OSError:
        return []
    return found


def _png_info(infotext: str | None) -> PngInfo | None:
    if not infotext:
        return None
    info = PngInfo()
    info.add_text(INFOTEXT_KEY, infotext)  # becomes iTXt (UTF-8) when not Latin-1
    return info


# ---------------------------------------------------------------------------------------------
# Reading the infotext back


def read_infotext(source: Path | bytes | Image.Image) -> str | None:
    """The infotext stored in an image (PNG ``parameters``, or JPEG/WebP EXIF UserComment); None if absent.

    An unreadable file or non-image bytes raise ValueError.
    """
    if isinstance(source, Image.Image):
        return _infotext_of(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as image:
            image.load()  # text chunks after the pixel data are read only now
            return _infotext_of(image)
    except Exception as err:  # PIL raises many types for bad files
        where = "the given bytes" if isinstance(source, (bytes, bytearray)) else str(source)
        raise ValueError(f"{where} is not a readable image ({type(err).__name__}: {err})") from err


def _infotext_of(image: Image.Image) -> str | None:
    text = image.info.get(INFOTEXT_KEY)
    if isinstance(text, str) and text:
        return text
    try:
        comment = image.getexif().get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
    except Exception:  # a broken EXIF block just means no infotext
        return None
    return _decode_user_comment(comment)


def _decode_user_comment(comment: bytes | str | None) -> str | None:
    """Decode an EXIF UserComment (8-byte charset header, then the text; A1111 writes UTF-16-BE)."""
    if comment is None:
        return None
    if isinstance(comment, str):
        text = comment
    elif comment.startswith(_UNICODE_PREFIX):
        payload = comment[len(_UNICODE_PREFIX):]
        codec = "utf-16" if payload[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-16-be"
        text = payload.decode(codec, errors="replace")
    elif comment.startswith(_ASCII_PREFIX) or comment[:8] == b"\0" * 8:
        text = comment[8:].decode("utf-8", errors="replace")
    else:
        text = comment.decode("utf-8", errors="replace")
    text = text.rstrip("\0")
    return text or None


def _user_comment(text: str) -> bytes:
    return _UNICODE_PREFIX + text.encode("utf-16-be")


# ---------------------------------------------------------------------------------------------
# Base64 transport


BYTES_PER_PIXEL = 4  # what PIL holds per decoded pixel of an RGB/RGBA image (and what we count for any mode)


class ImageTooLarge(ValueError):
    """An input image's header says it decodes to more pixels than allowed; nothing was decoded.

    ``width``/``height`` are from the header; ``max_pixels`` is the limit it was checked against.
    """

    def __init__(self, message: str, width: int = 0, height: int = 0, max_pixels: int = 0) -> None:
        super().__init__(message)
        self.width, self.height, self.max_pixels = width, height, max_pixels


def limit_decoded_pixels(max_pixels: int) -> None:
    """Set PIL's own decompression-bomb limit from the ``max_input_pixels`` setting.

    A backstop for images decoded outside ``decode_image`` (Gradio's uploads in the web UI): PIL
    warns above ``Image.MAX_IMAGE_PIXELS`` and refuses (``DecompressionBombError``) above twice it.
    It is PIL's process-wide value: call this once, in the composition root, when serving.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    Image.MAX_IMAGE_PIXELS = max_pixels


def decode_image(data: bytes | str, max_pixels: int | None = None) -> Image.Image:
    """Decode raw image bytes, base64 text, or a ``data:image/...;base64,`` URL into a loaded image.

    The header is read first: an image of more than ``max_pixels`` pixels (width x height) raises
    :class:`ImageTooLarge` before any pixel is decoded (None: no limit but PIL's own). Anything
    that is not a readable image raises ValueError (never another exception type).
    """
    if isinstance(data, str):
        raw = _decode_base64(data)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise ValueError(
            f"decode_image: a {type(data).__name__} is not a readable image; pass image bytes or base64 text"
        )
    try:
        image = Image.open(io.BytesIO(raw))  # lazy: reads the header only
    except Image.DecompressionBombError:  # PIL's own limit (limit_decoded_pixels) fired first, on the header
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageTooLarge(f"decode_image: more than {limit} pixels (read from its header)",
                            max_pixels=max_pixels or limit) from None
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise _unreadable(err) from err
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            f"decode_image: the image is {width}x{height} = {width * height} pixels; at most {max_pixels} pixels"
            " are accepted: send a smaller image", width, height, max_pixels,
        )
    try:
        image.load()
    except Exception as err:
        raise _unreadable(err) from err
    return image


def _unreadable(err: Exception) -> ValueError:
    return ValueError(
        f"decode_image: the input is not a readable image ({type(err).__name__}: {err}); expected"
        " PNG/JPEG/WebP bytes, base64 text or a data:image/...;base64, URL"
    )


def _decode_base64(text: str) -> bytes:
    payload = text.strip()
    if payload.startswith("data:"):
        header, comma, payload = payload.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ValueError(
                f"decode_image: data URL {header[:60]!r}... is not a readable image; expected"
                " 'data:image/<type>;base64,<data>'"
            )
    payload = "".join(payload.split())
    payload += "=" * (-len(payload) % 4)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(
            f"decode_image: the text is not a readable image (invalid base64: {err}); expected"
            " base64 image data or a data:image/...;base64, URL"
        ) from err


def encode_image_base64(image: Image.Image, format: str = "PNG", infotext: str | None = None) -> str:
    """Encode ``image`` as base64 text (no ``data:`` prefix), keeping its infotext.

    ``infotext`` defaults to the one the image already carries. PNG stores it in the
    ``parameters`` chunk, JPEG/WebP in the EXIF UserComment.
    """
    fmt = _ENCODE_FORMATS.get(format.upper())
    if fmt is None:
        raise ValueError(f"image format {format!r} is not supported; use one of PNG, JPEG, WEBP")
    text = infotext if infotext is not None else _infotext_of(image)
    buffer = io.BytesIO()
    _write_image(buffer, image, fmt, text)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _write_image(handle: BinaryIO, image: Image.Image, fmt: str, infotext: str | None) -> None:
    """Write ``image`` as PIL format ``fmt`` to ``handle``: PNG with ``infotext`` in its ``parameters``
    chunk, JPEG/WebP (quality 95) with it in the EXIF UserComment."""
    if fmt == "PNG":
        _png_ready(image).save(handle, format="PNG", pnginfo=_png_info(infotext))
        return
    keeps_mode = image.mode in ("RGB", "L") or (fmt == "WEBP" and image.mode == "RGBA")
    converted = image if keeps_mode else image.convert("RGB")
    exif = Image.Exif()
    if infotext:
        exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = _user_comment(infotext)
    converted.save(handle, format=fmt, exif=exif.tobytes(), quality=95)


# ---------------------------------------------------------------------------------------------
# Grids


def _cell_size(images: list[Image.Image]) -> tuple[int, int]:
    if not images:
        raise ValueError("a grid needs at least one image (got an empty list)")
    return max(im.width for im in images), max(im.height for im in images)


def _paste_centered(canvas: Image.Image, image: Image.Image, box: tuple[int, int, int, int]) -> None:
    left, top, width, height = box
    canvas.paste(image.convert("RGB"), (left + (width - image.width) // 2, top + (height - image.height) // 2))


def grid_shape(count: int, rows: int | None = None) -> tuple[int, int]:
    """(rows, cols) for ``count`` images: near-square (rows = round(sqrt(count))) unless ``rows`` is given."""
    if rows is None:
        rows = max(1, round(math.sqrt(count)))
    if rows < 1:
        raise ValueError(f"a grid needs at least 1 row (got rows={rows})")
    cols = math.ceil(count / min(rows, count))
    return math.ceil(count / cols), cols


def image_grid(images: list[Image.Image], rows: int | None = None) -> Image.Image:
    """Paste ``images`` row by row into one RGB grid on black (A1111-like near-square layout).

    Cells are as large as the largest image; smaller images are centred. Rows that would stay
    empty are dropped (5 images with rows=4 give 3 rows of 2).
    """
    width, height = _cell_size(images)
    n_rows, n_cols = grid_shape(len(images), rows)
    grid = Image.new("RGB", (n_cols * width, n_rows * height), "black")
    for index, image in enumerate(images):
        row, col = divmod(index, n_cols)
        _paste_centered(grid, image, (col * width, row * height, width, height))
    return grid


Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Font, max_width: int) -> str:
    """``text`` with line breaks so that each line fits ``max_width`` pixels where possible."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=font) > max_width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return "\n".join(lines)


def _load_font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def labelled_grid(images: list[Image.Image], row_labels: list[str], col_labels: list[str]) -> Image.Image:
    """A grid of ``len(row_labels)`` x ``len(col_labels)`` images (row by row) with text labels.

    Column labels go above the columns, row labels left of the rows, in PIL's default font on a
    white background. An empty label list means one unlabelled row (or column).
    """
    width, height = _cell_size(images)
    n_rows, n_cols = max(1, len(row_labels)), max(1, len(col_labels))
    if len(images) != n_rows * n_cols:
        raise ValueError(
            f"labelled grid: {len(row_labels)} row labels x {len(col_labels)} column labels need"
            f" {n_rows * n_cols} images (got {len(images)})"
        )
    font = _load_font(max(12, (width + height) // 25))
    margin = max(4, int(getattr(font, "size", 12)) // 3)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def block(text: str, max_width: int) -> tuple[str, int, int]:
        wrapped = _wrap(measure, text, font, max_width)
        left, top, right, bottom = measure.multiline_textbbox((0, 0), wrapped, font=font, align="center")
        return wrapped, math.ceil(right - left), math.ceil(bottom - top)  # bboxes may be floats

    cols = [block(label, width - 2 * margin) for label in col_labels]
    rows = [block(label, max(width * 3 // 4, 1)) for label in row_labels]
    pad_top = max(h for _, _, h in cols) + 2 * margin if cols else 0
    pad_left = max(w for _, w, _ in rows) + 2 * margin if rows else 0

    canvas = Image.new("RGB", (pad_left + n_cols * width, pad_top + n_rows * height), "white")
    draw = ImageDraw.Draw(canvas)
    for index, image in enumerate(images):
        row, col = divmod(index, n_cols)
        _paste_centered(canvas, image, (pad_left + col * width, pad_top + row * height, width, height))
    for col, (text, w, h) in enumerate(cols):
        _draw_block(draw, text, font, (pad_left + col * width, 0, width, pad_top), (w, h))
    for row, (text, w, h) in enumerate(rows):
        _draw_block(draw, text, font, (0, pad_top + row * height, pad_left, height), (w, h))
    return canvas


def _draw_block(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: Font,
    box: tuple[int, int, int, int],
    size: tuple[int, int],
) -> None:
    """Draw multi-line ``text`` (of pixel ``size``) centred in ``box`` (left, top, width, height)."""
    left, top, width, height = box
    bbox = draw.multiline_textbbox((0, 0), text, font=font, align="center")
    x = left + (width - size[0]) // 2 - int(bbox[0])
    y = top + (height - size[1]) // 2 - int(bbox[1])
    draw.multiline_text((x, y), text, fill="black", font=font, align="center")

"""Documents sent as `file` parts: decoded, parsed (text, markdown, PDF) and chunked.

Pure logic: bytes in, text chunks out. A chunk breaks at paragraph ends where it can, so a
RawFileMemory reads as a passage, not a cut-off line.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.parse
from dataclasses import dataclass

from pypdf import PdfReader

from memos_ray.errors import BadRequestError, MemosError, PayloadTooLargeError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".csv", ".json", ".log", ".html")
# Chunks of this many characters at most become RawFileMemory items.
CHUNK_CHARS = 1500
# Pages looked at in one PDF: a few kilobytes can declare a great many pages.
MAX_PDF_PAGES = 5_000


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    file_id: str | None = None


def decode_file_data(file_data: str, name: str = "") -> tuple[bytes, str | None]:
    """(bytes, mime type) of a `file` part's `file_data` (MemOS's convention, made exact).

    - A `data:` URL says how it is encoded: `;base64` is decoded (invalid base64 is a 400),
      otherwise the payload is percent-encoded text.
    - Otherwise the value is base64 only where decoding it gives what the file must be: a PDF
      (by name or by its `%PDF` magic), or for any other file valid UTF-8 text. Plain text
      that merely happens to be valid base64 ("abcd", "Test") is kept as the text it is.
    """
    if file_data.startswith("data:"):
        header, _, payload = file_data.partition(",")
        mime = header[5:].split(";")[0] or None
        if ";base64" in header:
            return _b64(payload), mime
        return urllib.parse.unquote_to_bytes(_utf8(payload, name)), mime
    compact = "".join(file_data.split())
    if compact and re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", compact) and len(compact) % 4 == 0:
        try:
            decoded = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            decoded = None
        if decoded is not None:
            if decoded.startswith(b"%PDF") or name.lower().endswith(".pdf"):
                return decoded, "application/pdf"
            if _is_text(decoded):
                return decoded, None
    return _utf8(file_data, name), "text/plain"


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\n\r\f" for ch in text)


def _utf8(text: str, name: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escaped in JSON
        raise BadRequestError(f"{name or 'file'}: file_data is not valid Unicode: {exc}") from None


def _b64(payload: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"file_data is not valid base64: {exc}") from exc


def parse_document(
    name: str, data: bytes, mime: str | None = None, *, max_chars: int | None = None
) -> str:
    """The document's text; PDF through pypdf, text formats as strict UTF-8.

    Over `max_chars` of text is a PayloadTooLargeError, raised while a PDF is being read, so
    a small file that expands to megabytes stops early.
    """
    lower = name.lower()
    if lower.endswith(".pdf") or mime == "application/pdf" or data.startswith(b"%PDF"):
        text = _pdf_text(name, data, max_chars)
    else:
        textual = mime is None or mime.startswith("text/") or lower.endswith(TEXT_SUFFIXES)
        if not textual and mime not in ("application/json", "application/xml"):
            raise BadRequestError(f"{name}: unsupported file type {mime} (text, markdown, PDF)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequestError(
                f"{name}: a text file must be UTF-8; byte {exc.start} is not ({exc.reason})"
            ) from None
    _check_chars(name, len(text), max_chars)
    return text


def _check_chars(name: str, chars: int, max_chars: int | None) -> None:
    if max_chars is not None and chars > max_chars:
        raise PayloadTooLargeError(
            f"{name}: the extracted text is over {max_chars} characters "
            f"(limits.max_document_chars); nothing was stored"
        )


def _pdf_text(name: str, data: bytes, max_chars: int | None) -> str:
    """Page by page, stopping at the character limit. pypdf fails in many ways on hostile
    files (NotImplementedError, TypeError, LimitReachedError, RecursionError, ...): every
    one of them means 'not a PDF we can read', a 400."""

    pages: list[str] = []
    total = 0
    try:
        reader = PdfReader(io.BytesIO(data))
        count = len(reader.pages)
        if count > MAX_PDF_PAGES:
            raise PayloadTooLargeError(
                f"{name}: {count} pages; the limit is {MAX_PDF_PAGES}; nothing was stored"
            )
        for page in reader.pages:
            text = (page.extract_text() or "").strip()
            if text:
                pages.append(text)
                total += len(text) + 2
                _check_chars(name, total, max_chars)
    except MemosError:
        raise
    except Exception as exc:  # any parser failure is the file's fault
        raise BadRequestError(
            f"{name}: not a readable PDF ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    return "\n\n".join(pages)


def chunk_text(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Paragraph-packed chunks of at most `max_chars` (a longer paragraph is split by sentence)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for paragraph in paragraphs:
        if len(paragraph) <= max_chars:
            pieces.append(paragraph)
            continue
        sentences = re.split(r"(?<=[.!?])\s+", paragraph)
        current = ""
        for sentence in sentences:
            while len(sentence) > max_chars:
                pieces.append(sentence[:max_chars])
                sentence = sentence[max_chars:]
            if current and len(current) + 1 + len(sentence) > max_chars:
                pieces.append(current)
                current = sentence
            else:
                current = f"{current} {sentence}".strip()
        if current:
            pieces.append(current)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > max_chars:
            chunks.append(current)
            current = piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks

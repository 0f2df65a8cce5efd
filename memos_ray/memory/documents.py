"""Documents sent as `file` parts: decoded, parsed (text, markdown, PDF) and chunked.

Pure logic: bytes in, text chunks out. A chunk breaks at paragraph ends where it can, so a
RawFileMemory reads as a passage, not a cut-off line.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

from memos_ray.errors import BadRequestError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".csv", ".json", ".log", ".html")


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    file_id: str | None = None


def decode_file_data(file_data: str) -> tuple[bytes, str | None]:
    """(bytes, mime type): a `data:` URL, plain base64, or else the text itself."""
    if file_data.startswith("data:"):
        header, _, payload = file_data.partition(",")
        mime = header[5:].split(";")[0] or None
        if ";base64" in header:
            return _b64(payload), mime
        return payload.encode(), mime
    compact = "".join(file_data.split())
    if compact and re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", compact) and len(compact) % 4 == 0:
        try:
            return base64.b64decode(compact, validate=True), None
        except (binascii.Error, ValueError):
            pass
    return file_data.encode(), "text/plain"


def _b64(payload: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(f"file_data is not valid base64: {exc}") from exc


def parse_document(name: str, data: bytes, mime: str | None = None) -> str:
    """The document's text; PDF through pypdf, text formats as UTF-8."""
    lower = name.lower()
    if lower.endswith(".pdf") or mime == "application/pdf" or data.startswith(b"%PDF"):
        return _pdf_text(name, data)
    textual = mime is None or mime.startswith("text/") or lower.endswith(TEXT_SUFFIXES)
    if not textual and mime not in ("application/json", "application/xml"):
        raise BadRequestError(f"{name}: unsupported file type {mime} (text, markdown, PDF)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _pdf_text(name: str, data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as exc:
        raise BadRequestError(f"{name}: not a readable PDF: {exc}") from exc
    return "\n\n".join(p.strip() for p in pages if p.strip())


def chunk_text(text: str, max_chars: int = 1500) -> list[str]:
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

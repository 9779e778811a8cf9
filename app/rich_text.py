"""Answers written in Markdown, shown as formatted text, safely.

Qwen2 answers with lists, emphasis, code blocks and tables. Qt's own Markdown reader (md4c, GitHub dialect) turns
them into a document, with raw HTML switched off so ``<b>`` or ``<script>`` in an answer shows as the text it is.
The model's words must not act on anything: links lose their target (the address is shown after the link text
instead) and images become a line of text, so nothing is fetched or opened, and no local file is read because an
answer names it. What leaves here is HTML that Qt itself wrote from that cleaned document.
"""

from __future__ import annotations

import re

from PySide6.QtGui import (
    QColor,
    QFont,
    QFontDatabase,
    QTextBlockFormat,
    QTextCharFormat,
    QTextCursor,
    QTextDocument,
    QTextFormat,
    QTextTable,
)

_FEATURES = QTextDocument.MarkdownFeature.MarkdownDialectGitHub | QTextDocument.MarkdownFeature.MarkdownNoHTML
CODE_BACKGROUND = "#f0f0f0"
_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.DOTALL)


def markdown_document(text: str) -> QTextDocument:
    """The answer as a document, with links made plain text and images replaced by a note."""
    doc = QTextDocument()
    doc.setMarkdown(text, _FEATURES)
    _defuse(doc)
    _monospace_code(doc)
    _table_headers(doc)
    return doc


def markdown_html(text: str) -> str:
    """An HTML fragment (no <html> or <body>) to put in the transcript."""
    match = _BODY.search(markdown_document(text).toHtml())
    return match.group(1).strip() if match else ""


def _defuse(doc: QTextDocument) -> None:
    """Replace every link by its text plus the address, every image by a note; changes go last-first so the
    positions collected still hold."""
    found: list[tuple[int, int, QTextCharFormat, str]] = []
    block = doc.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            fragment = it.fragment()
            fmt = fragment.charFormat()
            if fmt.isImageFormat() or fmt.isAnchor():
                found.append((fragment.position(), fragment.length(), fmt, fragment.text()))
            it += 1
        block = block.next()
    cursor = QTextCursor(doc)
    for position, length, fmt, text in reversed(found):
        plain = QTextCharFormat(fmt)
        for prop in (QTextFormat.Property.IsAnchor, QTextFormat.Property.AnchorHref, QTextFormat.Property.AnchorName,
                     QTextFormat.Property.ForegroundBrush, QTextFormat.Property.TextUnderlineStyle,
                     QTextFormat.Property.FontUnderline, QTextFormat.Property.ObjectType,
                     QTextFormat.Property.ImageName, QTextFormat.Property.ImageAltText,
                     QTextFormat.Property.ImageTitle, QTextFormat.Property.ImageWidth,
                     QTextFormat.Property.ImageHeight):
            plain.clearProperty(prop)
        if fmt.isImageFormat():
            image = fmt.toImageFormat()
            alt = str(image.property(QTextFormat.Property.ImageAltText) or "").strip()
            shown = f"[picture not shown: {alt or image.name()}]"
        else:
            href = fmt.anchorHref()
            shown = text if not href or href == text else f"{text} ({href})"
        cursor.setPosition(position)
        cursor.setPosition(position + length, QTextCursor.MoveMode.KeepAnchor)
        cursor.insertText(shown, plain)


def monospace_format() -> QTextCharFormat:
    """The platform's fixed-width font, named explicitly: Qt's Markdown reader leaves code to a style hint that
    some font setups resolve to the proportional default."""
    fmt = QTextCharFormat()
    fixed = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    fmt.setFontFamilies([f for f in fixed.families() if f] + ["monospace", "DejaVu Sans Mono", "Courier New"])
    fmt.setFontFixedPitch(True)
    fmt.setFontStyleHint(QFont.StyleHint.TypeWriter)
    return fmt


def _monospace_code(doc: QTextDocument) -> None:
    """Code blocks and inline code in the fixed-width font."""
    spans: list[tuple[int, int]] = []
    block = doc.begin()
    while block.isValid():
        if block.blockFormat().nonBreakableLines():
            spans.append((block.position(), block.position() + block.length() - 1))
        else:
            it = block.begin()
            while not it.atEnd():
                fragment = it.fragment()
                if fragment.charFormat().fontFixedPitch():
                    spans.append((fragment.position(), fragment.position() + fragment.length()))
                it += 1
        block = block.next()
    mono = monospace_format()
    shaded = QTextBlockFormat()
    shaded.setBackground(QColor(CODE_BACKGROUND))
    cursor = QTextCursor(doc)
    for start, end in spans:  # formatting changes no positions, so they can be applied after the walk
        cursor.setPosition(start)
        cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
        cursor.mergeCharFormat(mono)
        if cursor.block().blockFormat().nonBreakableLines():
            cursor.mergeBlockFormat(shaded)


def _table_headers(doc: QTextDocument) -> None:
    """A Markdown table's first row is its header: bold, all of it (Qt's reader leaves the first cell plain)."""
    bold = QTextCharFormat()
    bold.setFontWeight(QFont.Weight.Bold)
    for frame in doc.rootFrame().childFrames():
        if isinstance(frame, QTextTable):
            for column in range(frame.columns()):
                cell = frame.cellAt(0, column)
                cursor = cell.firstCursorPosition()
                cursor.setPosition(cell.lastPosition(), QTextCursor.MoveMode.KeepAnchor)
                cursor.mergeCharFormat(bold)


def code_block_at(doc: QTextDocument, position: int) -> str:
    """The text of the code block around ``position`` (its lines joined), or "" when that is not in one."""
    block = doc.findBlock(position)
    if not block.isValid() or not block.blockFormat().nonBreakableLines():
        return ""
    first = block
    while first.previous().isValid() and first.previous().blockFormat().nonBreakableLines():
        first = first.previous()
    lines = []
    current = first
    while current.isValid() and current.blockFormat().nonBreakableLines():
        lines.append(current.text())
        current = current.next()
    return "\n".join(lines)

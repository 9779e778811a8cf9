"""Answers are shown as formatted Markdown, safely, streamed without redrawing on every token; captions and exports
keep the text as written."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QGuiApplication, QImage, QTextCursor, QTextDocument, QTextFormat
from pytestqt.qtbot import QtBot

from glimpse.app.export import CaptionEntry, ChatTurn, conversation_markdown
from glimpse.app.rich_text import CODE_BACKGROUND, code_block_at, markdown_document, markdown_html
from glimpse.app.widgets.caption_panel import CaptionPanel
from glimpse.app.widgets.chat_panel import RENDER_INTERVAL_MS, ChatPanel
from glimpse.app.worker import Reply

ANSWER = """The picture shows **a red car** and *two* trees.

- first item
- second item with `inline code`

1. one
2. two

```python
print("hello")
x = 1
```

| colour | count |
|---|---|
| red | 3 |

See [the docs](file:///etc/passwd) or https://example.org/run.sh <b>raw</b> <script>alert(1)</script>

![a chart](http://remote.example/track.png) ![local](/home/someone/secret.png)
"""


def _fragments(doc: QTextDocument) -> list[tuple[str, QTextFormat]]:
    out = []
    block = doc.begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            out.append((it.fragment().text(), it.fragment().charFormat()))
            it += 1
        block = block.next()
    return out


def _blocks(doc: QTextDocument) -> list:
    out = []
    block = doc.begin()
    while block.isValid():
        out.append(block)
        block = block.next()
    return out


def _monospace(fmt: QTextFormat) -> bool:
    char = fmt.toCharFormat()
    families = [char.font().family(), *(char.fontFamilies() or [])]
    return char.fontFixedPitch() or any("mono" in str(f).lower() for f in families)


def _stream(chat: ChatPanel, text: str, piece: int = 3) -> None:
    chat.new_picture("a picture")
    chat.begin_answer("What is it?")
    for i in range(0, len(text), piece):
        chat.append(text[i:i + piece])


def _check_formatted(doc: QTextDocument) -> None:
    fragments = _fragments(doc)
    text = doc.toPlainText()
    assert "**" not in text and "```" not in text and "|---" not in text
    bold = [t for t, f in fragments if f.toCharFormat().fontWeight() >= 700]
    assert "a red car" in bold
    assert any(t == "two" and f.toCharFormat().fontItalic() for t, f in fragments)
    code = [t for t, f in fragments if "print" in t or "inline code" in t]
    assert len(code) == 2 and all(_monospace(f) for t, f in fragments if t in code)
    assert not any(_monospace(f) for t, f in fragments if "first item" in t)
    lists = set()
    block = doc.begin()
    while block.isValid():
        if block.textList() is not None:
            lists.add(block.textList().format().style())
        block = block.next()
    assert len(lists) == 2  # a bulleted and a numbered list
    cursor = QTextCursor(doc)
    assert cursor.movePosition(QTextCursor.MoveOperation.End)
    tables = [f for f in doc.rootFrame().childFrames() if f.__class__.__name__ == "QTextTable"]
    assert tables and tables[0].rows() == 2 and tables[0].columns() == 2
    assert "colour" in bold and "count" in bold and "red" not in bold  # the header row, all of it
    code_blocks = [b for b in _blocks(doc) if "print(" in b.text()]
    assert code_blocks and code_blocks[0].blockFormat().background().color().name() == CODE_BACKGROUND


def _check_safe(doc: QTextDocument) -> None:
    fragments = _fragments(doc)
    assert not any(f.isAnchor() or f.toCharFormat().anchorHref() for _, f in fragments)
    assert not any(f.isImageFormat() for _, f in fragments)
    text = doc.toPlainText()
    # The raw HTML is shown as the text it is; the addresses are visible but inert.
    assert "<b>raw</b>" in text and "<script>alert(1)</script>" in text
    assert "the docs (file:///etc/passwd)" in text and "https://example.org/run.sh" in text
    assert "[picture not shown: a chart]" in text and "[picture not shown: local]" in text


def test_markdown_document_formats_and_defuses() -> None:
    doc = markdown_document(ANSWER)
    _check_formatted(doc)
    _check_safe(doc)
    html = markdown_html(ANSWER)
    assert "<a " not in html and "<img" not in html and "<script" not in html and "<body" not in html


def test_a_streamed_answer_renders_markdown_in_the_chat(qtbot: QtBot) -> None:
    chat = ChatPanel()
    qtbot.addWidget(chat)
    chat.resize(600, 400)
    _stream(chat, ANSWER)
    # Three characters at a time, with no event loop in between: no redraw per piece.
    assert chat.renders <= 3
    qtbot.waitUntil(lambda: "second item" in chat.transcript.toPlainText(), timeout=RENDER_INTERVAL_MS * 20)
    chat.finish(Reply(ANSWER, "stop"))
    doc = chat.transcript.document()
    _check_formatted(doc)
    _check_safe(doc)
    # The question is shown as typed, even when it looks like Markdown.
    chat.begin_answer("Is **this** bold?")
    chat.finish(Reply("No.", "stop"))
    assert "Is **this** bold?" in chat.plain_text()


def test_the_transcript_loads_nothing_an_answer_names(qtbot: QtBot, tmp_path: Path) -> None:
    picture = tmp_path / "secret.png"
    QGuiApplication.primaryScreen()  # make sure a GUI app exists for QImage

    QImage(4, 4, QImage.Format.Format_RGB32).save(str(picture))
    chat = ChatPanel()
    qtbot.addWidget(chat)
    assert chat.transcript.loadResource(2, picture.as_uri()) is None
    chat.new_picture("a picture")
    chat.begin_answer("Show me")
    chat.finish(Reply(f"![x]({picture.as_uri()}) and <img src='{picture}'>", "stop"))
    assert not any(f.isImageFormat() for _, f in _fragments(chat.transcript.document()))


def test_code_blocks_can_be_copied(qtbot: QtBot) -> None:
    chat = ChatPanel()
    qtbot.addWidget(chat)
    chat.resize(600, 500)
    chat.show()
    _stream(chat, ANSWER)
    chat.finish(Reply(ANSWER, "stop"))
    doc = chat.transcript.document()
    at = doc.toPlainText().index("print(")
    assert code_block_at(doc, at) == 'print("hello")\nx = 1'
    assert code_block_at(doc, doc.toPlainText().index("first item")) == ""
    cursor = QTextCursor(doc)
    cursor.setPosition(at)
    chat.transcript.setTextCursor(cursor)
    chat.transcript.ensureCursorVisible()
    point = chat.transcript.cursorRect(cursor).center()
    menu = chat.transcript.context_menu(point)
    actions = [a.text() for a in menu.actions()]
    assert actions[0] == "Copy code block"
    menu.actions()[0].trigger()
    assert QGuiApplication.clipboard().text() == 'print("hello")\nx = 1'
    elsewhere = chat.transcript.cursorRect(QTextCursor(doc)).center() + QPoint(1, 0)
    assert "Copy code block" not in [a.text() for a in chat.transcript.context_menu(elsewhere).actions()]


def test_streaming_keeps_the_place_of_a_reader_who_scrolled_back(qtbot: QtBot) -> None:
    chat = ChatPanel()
    qtbot.addWidget(chat)
    chat.resize(400, 200)
    chat.show()
    chat.new_picture("a picture")
    for i in range(8):
        chat.begin_answer(f"Question {i}?")
        chat.finish(Reply("\n\n".join(f"Paragraph {j} of answer {i}." for j in range(6)), "stop"))
    bar = chat.transcript.verticalScrollBar()
    assert bar.maximum() > 0 and bar.value() == bar.maximum()  # following the end
    bar.setValue(bar.maximum() // 3)
    kept = bar.value()
    chat.begin_answer("One more?")
    for word in ("More ", "words ", "arrive."):
        chat.append(word)
        qtbot.wait(RENDER_INTERVAL_MS * 2)
    assert "arrive." in chat.transcript.toPlainText() and bar.value() == kept


def test_export_keeps_the_markdown_source() -> None:

    text = conversation_markdown([ChatTurn("What?", ANSWER, 0.0)], model="m", source="s")
    assert "> The picture shows **a red car** and *two* trees." in text
    assert "> ```python" in text and "> | red | 3 |" in text


def test_captions_stay_plain(qtbot: QtBot) -> None:


    panel = CaptionPanel()
    qtbot.addWidget(panel)
    caption = "A **red** car <b>and</b> `code`"
    panel.add(CaptionEntry(caption, 0.0, 0.0))
    assert panel.current.textFormat() == Qt.TextFormat.PlainText and panel.current.text() == caption
    assert panel.history.item(0).text().endswith(caption)

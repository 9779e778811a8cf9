"""The model manager's list: every catalogue model and every installed one, with its size and state."""

from __future__ import annotations

from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from glimpse.engine import CatalogEntry, Store, catalog, human_bytes


class ModelTable(QTableWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, 3, parent)
        self.setHorizontalHeaderLabels(["Model", "Size", "Status"])
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().hide()
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.setAccessibleName("Models")
        self._names: list[str] = []

    def fill(self, store: Store, active: str) -> None:
        """List the catalogue, then installed models that are not in it; keep the selection."""
        installed = {m.name: m for m in store.installed()}
        partial = {d.name: d for d in store.downloads()}
        selected = self.selected_name()
        rows: list[tuple[str, CatalogEntry | None]] = [(e.name, e) for e in catalog.CATALOG]
        rows += [(name, None) for name in sorted(installed) if catalog.find(name) is None]
        self._names = [name for name, _ in rows]
        self.setRowCount(len(rows))
        for row, (name, entry) in enumerate(rows):
            model = installed.get(name)
            label = entry.display_name if entry else name
            if name == active and model is not None:
                label += "  (in use)"
            if model is not None:
                size = human_bytes(model.size_bytes)
                status = ("Installed" + (f", {model.quant}" if model.quant else "")
                          + (f", vision {model.vision}" if model.vision else "") if model.complete
                          else f"Damaged: {model.problem}")
            else:
                size = f"≈ {human_bytes(entry.approx_download_bytes)} download" if entry else "-"
                download = partial.get(name)
                if download is not None and download.complete:
                    status = "Downloaded, not converted yet: Download finishes it"
                elif download is not None:
                    of = f" of {human_bytes(download.total_bytes)}" if download.total_bytes else ""
                    status = f"Partly downloaded ({human_bytes(download.done_bytes)}{of}): Download resumes it"
                else:
                    status = "Not installed"
            for col, text in enumerate((label, size, status)):
                item = QTableWidgetItem(text)
                # The status's tooltip says why the vision encoder has the precision it has.
                why = model.vision_reason if model is not None and model.complete and col == 2 else ""
                item.setToolTip(f"{text}\n{why}" if why else text)
                self.setItem(row, col, item)
        self.select(selected if selected in self._names else self._names[0])

    def selected_name(self) -> str:
        model = self.selectionModel()
        rows = model.selectedRows() if model is not None else []
        return self._names[rows[0].row()] if rows and rows[0].row() < len(self._names) else ""

    def select(self, name: str) -> None:
        if name in self._names:
            self.selectRow(self._names.index(name))

    def status_of(self, name: str) -> str:
        item = self.item(self._names.index(name), 2) if name in self._names else None
        return item.text() if item is not None else ""

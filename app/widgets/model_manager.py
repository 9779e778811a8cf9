"""The model manager: download a catalogue model (licence shown and accepted first), import a local folder,
remove a model, and choose the one to use. Shown on first run when nothing is installed.

Every store operation runs as an ``app.jobs.Job`` on a background thread, one at a time, reporting progress as
bytes, speed and time left. Downloads resume: a cancelled or failed one keeps what arrived, and the next Download
continues it (also after a restart).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from glimpse.app.jobs import Job, JobFn
from glimpse.app.qtcompat import emit
from glimpse.app.settings import Settings
from glimpse.app.units import progress_line
from glimpse.app.widgets.license_panel import LicensePanel
from glimpse.app.widgets.model_table import ModelTable
from glimpse.engine import (
    CatalogEntry,
    DownloadOptions,
    GlimpseError,
    Progress,
    Store,
    catalog,
    fetch_license,
    import_model,
    is_offline,
    pull_model,
)

OFFLINE = ("Offline mode is on (HF_HUB_OFFLINE), so models cannot be downloaded. You can still import a model "
           "or checkpoint folder you already have.")


class ModelManager(QDialog):
    model_chosen = Signal(str)  # the store name of the model to use
    job_finished = Signal(str)  # "done" | "failed" | "cancelled" (for tests and the window)
    license_shown = Signal()

    def __init__(self, settings: Settings, *, options: DownloadOptions | None = None, store: Store | None = None,
                 first_run: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.resize(760, 460)
        self._settings = settings
        self._options = options
        self._store = store or Store.default()
        self._job: Job | None = None
        self._spent: Job | None = None
        self._outcome = ""
        self.unusable = ""  # the sentence saying why the store cannot be used, while it cannot

        intro = QLabel("Glimpse needs a model to see with. Download one (0.5B is quick and small; larger ones are "
                       "more accurate and slower), or import a folder you already have." if first_run else
                       "Download, import, remove, or choose the model Glimpse uses.")
        intro.setWordWrap(True)
        self.offline = QLabel(OFFLINE)
        self.offline.setWordWrap(True)
        self.offline.setStyleSheet("color:#8a5a00")
        self.offline.setVisible(is_offline(options))
        self.table = ModelTable()

        self.download_button = QPushButton("Download")
        self.use_button = QPushButton("Use this model")
        self.remove_button = QPushButton("Remove")
        self.import_button = QPushButton("Import folder…")
        self.cancel_button = QPushButton("Cancel")
        self.close_button = QPushButton("Close")
        tips = ((self.download_button, "Download the chosen model from Apple's repository, then convert it"),
                (self.use_button, "Caption and answer with the chosen model"),
                (self.remove_button, "Delete the chosen model's converted files"),
                (self.import_button, "Convert a checkpoint folder you already downloaded"),
                (self.cancel_button, "Stop the download or conversion (it can be resumed)"),
                (self.close_button, "Close this window (a download under way stops, and resumes next time)"))
        for button, tip in tips:
            button.setToolTip(tip)
        self.table.setAccessibleDescription("The models Glimpse can download and those installed, one per row: "
                                            "choose one, then a button below")
        self.progress = QProgressBar()
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.license = LicensePanel()
        self.license.hide()

        buttons = QHBoxLayout()
        for button in (self.download_button, self.use_button, self.remove_button, self.import_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.close_button)
        work = QHBoxLayout()
        work.addWidget(self.progress, 1)
        work.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(self.offline)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.license, 2)
        layout.addLayout(buttons)
        layout.addLayout(work)
        layout.addWidget(self.detail)

        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.download_button.clicked.connect(self.download)
        self.use_button.clicked.connect(self.use_selected)
        self.remove_button.clicked.connect(self.remove_selected)
        self.import_button.clicked.connect(self.choose_import_folder)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)
        self.license.accepted.connect(self._license_accepted)
        self.license.declined.connect(self._license_declined)
        self.refresh()

    # -- the list -------------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        # A store that cannot be used (a file, no permission, read-only, full) is said, naming the folder and
        # what to do, never shown as an empty list; nothing can be downloaded, imported or removed until it is fixed.
        try:
            self._store.check()
            self.table.fill(self._store, self._settings.model)
            self.unusable = ""
        except GlimpseError as e:
            self.unusable = e.gui_text
            self.table.setRowCount(0)
            self.detail.setText(self.unusable)
        self._update_buttons()

    def selected_name(self) -> str:
        return self.table.selected_name()

    def select(self, name: str) -> None:
        self.table.select(name)

    def _installed(self, name: str) -> bool:
        return any(m.name == name and m.complete for m in self._store.installed())

    def _update_buttons(self) -> None:
        if self.unusable:
            for button in (self.download_button, self.use_button, self.remove_button, self.import_button,
                           self.cancel_button):
                button.setEnabled(False)
            return
        busy = self._job is not None
        name = self.selected_name()
        entry = catalog.find(name) if name else None
        installed = bool(name) and self._installed(name)
        present = bool(name) and any((folder / name).exists() for folder in (self._store.models_dir,
                                                                            self._store.downloads_dir))
        busy = busy or not self.license.isHidden()  # a licence waiting for an answer holds everything else
        self.download_button.setEnabled(not busy and entry is not None and not installed
                                        and not is_offline(self._options))
        self.download_button.setText("Resume download" if entry is not None and
                                     (self._store.downloads_dir / name).exists() else "Download")
        self.use_button.setEnabled(not busy and installed and name != self._settings.model)
        self.remove_button.setEnabled(not busy and present)
        self.import_button.setEnabled(not busy)
        self.cancel_button.setEnabled(self._job is not None)
        self.table.setEnabled(not busy)
        if self._job is None:  # an empty bar, without a "0%" that reads as a download stuck at the start
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setTextVisible(False)

    # -- jobs -----------------------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._job is not None

    def _start(self, fn: JobFn, name: str, on_done: Any) -> None:
        if self._spent is not None:
            self._spent.deleteLater()
        job = Job(fn, name, self)
        job.progress.connect(self._on_progress)
        job.done.connect(on_done)
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_finished)
        self._job = job
        self.progress.setRange(0, 0)  # busy until the first report says how much there is
        job.start()
        self._update_buttons()

    def _on_progress(self, p: Progress) -> None:
        self.progress.setTextVisible(p.total > 0)
        if p.total > 0:
            scale = max(1, p.total // 1_000_000)  # QProgressBar counts in int: keep it small
            self.progress.setRange(0, int(p.total // scale))
            self.progress.setValue(int(p.done // scale))
        else:
            self.progress.setRange(0, 0)
        self.detail.setText(progress_line(p))

    def _on_failed(self, message: str) -> None:
        self.detail.setText(message)
        self._outcome = "failed"

    def _on_cancelled(self) -> None:
        self.detail.setText("Cancelled. What was downloaded so far is kept: Download resumes it.")
        self._outcome = "cancelled"

    def _on_finished(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.wait()
            # Deleted when the next job starts, not now: deleting a job from its own finished signal crashed
            # PySide6 6.12 while its relayed events were still being delivered.
            self._spent = job
        self.refresh()
        if self._outcome:  # a licence fetch has no outcome of its own: the download that follows has
            outcome, self._outcome = self._outcome, ""
            emit(self.job_finished, outcome)

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.detail.setText("Stopping…")

    # -- download -------------------------------------------------------------------------------------------------

    def download(self) -> None:
        entry = catalog.find(self.selected_name())
        if entry is None or self._job is not None:
            return
        if is_offline(self._options):
            self.detail.setText(OFFLINE)
            return
        if self._store.license_accepted(entry.license_id):
            self._pull(entry)
            return
        folder = self._store.download_path(entry.name)
        self.detail.setText(f"Fetching the licence of {entry.display_name}…")
        self._start(lambda _p, cancel: fetch_license(entry, folder, options=self._options, cancel=cancel),
                    f"licence {entry.name}", lambda text: self._show_license(entry, str(text)))

    def _show_license(self, entry: CatalogEntry, text: str) -> None:
        self.license.show_license(entry, text)
        self.detail.setText(f"Read the licence of {entry.display_name}, then accept it to download.")
        emit(self.license_shown)

    def _license_accepted(self, entry: CatalogEntry, text: str) -> None:
        self._store.accept_license(entry.license_id, text, entry.name)
        self.license.hide()
        self._pull(entry)

    def _license_declined(self) -> None:
        self.license.hide()
        self.detail.setText("The licence was not accepted, so nothing was downloaded.")
        self.refresh()

    def _pull(self, entry: CatalogEntry) -> None:
        def run(progress: Any, cancel: Any) -> Path:
            return pull_model(self._store, entry, options=self._options, progress=progress, cancel=cancel)

        self.detail.setText(f"Starting the download of {entry.display_name}…")
        self._start(run, f"download {entry.name}", lambda _path: self._installed_ok(entry.name, "Downloaded"))

    def _installed_ok(self, name: str, verb: str) -> None:
        self.detail.setText(f"{verb} {name}.")
        if not self._settings.model or not self._installed(self._settings.model):
            self._choose(name)
        self._outcome = "done"

    # -- import, remove, use --------------------------------------------------------------------------------------

    def choose_import_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a model or checkpoint folder")
        if folder:
            self.import_folder(folder)

    def import_folder(self, folder: str | Path) -> None:
        if self._job is not None:
            return

        def run(progress: Any, cancel: Any) -> Path:
            return import_model(self._store, folder, progress=progress, cancel=cancel)

        self.detail.setText(f"Importing {folder}…")
        self._start(run, "import", lambda path: self._installed_ok(Path(path).name, "Imported"))

    def remove_selected(self) -> None:
        name = self.selected_name()
        if not name or self._job is not None:
            return
        answer = QMessageBox.question(self, "Remove model", f"Remove {name} and its downloaded files?")
        if answer != QMessageBox.StandardButton.Yes:
            return
        self._start(lambda _p, _c: self._store.remove(name), f"remove {name}", lambda _r: self._removed(name))

    def _removed(self, name: str) -> None:
        self.detail.setText(f"Removed {name}.")
        if self._settings.model == name:
            self._settings.model = ""
            emit(self.model_chosen, "")
        self._outcome = "done"

    def use_selected(self) -> None:
        name = self.selected_name()
        if name and self._installed(name):
            self._choose(name)
            self.refresh()

    def _choose(self, name: str) -> None:
        self._settings.model = name
        emit(self.model_chosen, name)

    # -- closing --------------------------------------------------------------------------------------------------

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        """Cancel any job and wait for its thread (downloads keep what arrived and resume later)."""
        job = self._job
        if job is None:
            return True
        job.cancel()
        return job.wait(timeout_s)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._job is not None:
            self.cancel()
        super().closeEvent(event)

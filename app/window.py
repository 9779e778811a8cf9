"""The main window: the picture on the left, captions or the conversation on the right, a toolbar on top and the
status line below. It puts the parts together and owns their lifetime; the work happens in the model worker, the
sources' threads and the model manager's jobs, so the window itself never waits.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QIcon, QScreen
from PySide6.QtWidgets import QFileDialog, QMainWindow, QSplitter, QStackedWidget, QVBoxLayout, QWidget

from glimpse.app import closing, paths, shortcuts
from glimpse.app import threads as app_threads
from glimpse.app.ask_mode import AskAboutPicture
from glimpse.app.capture.cameras import Camera, list_cameras, multimedia_problem, with_camera_permission
from glimpse.app.capture.screen import screen_label, unavailable_reason
from glimpse.app.export import captions_markdown, captions_srt, captions_text, write_file
from glimpse.app.images import IMAGE_FILTER, VIDEO_FILTER, VIDEO_SUFFIXES, to_qimage
from glimpse.app.jobs import describe_error
from glimpse.app.live_mode import LiveCaptions
from glimpse.app.settings import Settings
from glimpse.app.sources import Sources
from glimpse.app.speech import Speaker
from glimpse.app.widgets.caption_panel import CaptionPanel
from glimpse.app.widgets.chat_panel import ChatPanel
from glimpse.app.widgets.message_bar import MessageBar
from glimpse.app.widgets.model_manager import ModelManager
from glimpse.app.widgets.settings_dialog import SettingsDialog
from glimpse.app.widgets.shortcuts_dialog import ShortcutsDialog
from glimpse.app.widgets.source_view import SourceView
from glimpse.app.widgets.status_line import StatusLine
from glimpse.app.widgets.toolbar import TILES, MainToolbar
from glimpse.app.worker import ModelWorker
from glimpse.engine import DownloadOptions, GlimpseError, Store

log = logging.getLogger(__name__)
U8Array = npt.NDArray[np.uint8]
OPEN_FILTER = IMAGE_FILTER.replace("Images (", "Images and videos (" + " ".join(f"*{s}" for s in
                                                                                sorted(VIDEO_SUFFIXES)) + " ")
TRANSCRIPT_KINDS = "Markdown (*.md);;Text (*.txt)"
PLACEHOLDER = ("Choose a camera, a video file or the screen under Source, or take a screenshot, paste (Ctrl+V), "
               "open (Ctrl+O) or drop an image here.")


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings, *, store: Store | None = None,
                 download_options: DownloadOptions | None = None, speech_engine: str | None = None) -> None:
        super().__init__()
        self.setWindowTitle("Glimpse")
        icon = paths.asset("glimpse.png")
        if icon is not None:
            self.setWindowIcon(QIcon(str(icon)))
        self.settings = settings
        self.store = store or Store.default()
        self._reclaimed = self.store.reclaim().sentence()  # GBs a killed conversion or import left behind
        self._download_options = download_options
        self.worker = ModelWorker(self)
        self.sources = Sources(self)
        self.speaker = Speaker(speech_engine, self)
        self.manager: ModelManager | None = None
        self.model_name = ""
        self.model_loading = False  # a model was chosen and is loading (or its process is restarting)
        self._closing = False
        self._closing_dialog: closing.ClosingDialog | None = None
        self._close_timer = QTimer(self)  # while closing waits for work to end: try again
        self._close_timer.setInterval(100)
        self._close_timer.timeout.connect(self.close)
        self._live_label = ""  # what the live captions are of, for their export
        self._media_devices: object = None  # QtMultimedia's device watcher, once it is loaded

        self.toolbar = MainToolbar(settings, self)
        self.addToolBar(self.toolbar)
        self.messages = MessageBar()
        self.view = SourceView()
        self.captions = CaptionPanel()
        self.chat = ChatPanel()
        self.side = QStackedWidget()
        self.side.addWidget(self.captions)
        self.side.addWidget(self.chat)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.view)
        self.splitter.addWidget(self.side)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.messages)
        layout.addWidget(self.splitter, 1)
        self.setCentralWidget(central)
        self.status = StatusLine()
        self.statusBar().addPermanentWidget(self.status, 1)

        self.live = LiveCaptions(worker=self.worker, sources=self.sources, panel=self.captions, status=self.status,
                                 presets=self.toolbar.presets, speaker=self.speaker,
                                 read_aloud=self.toolbar.read_aloud, settings=settings,
                                 has_model=lambda: bool(self.model_name), error=self.show_error,
                                 info=lambda m: self.messages.show_message(m, "info"),
                                 model_loading=lambda: self.model_loading, parent=self)
        self.asking = AskAboutPicture(worker=self.worker, sources=self.sources, chat=self.chat, status=self.status,
                                      presets=self.toolbar.presets, speaker=self.speaker,
                                      read_aloud=self.toolbar.read_aloud, settings=settings,
                                      model_name=lambda: self.model_name, error=self.show_error,
                                      model_loading=lambda: self.model_loading, parent=self)
        self._connect()
        self.shortcut_actions = self._install_shortcuts()
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self.shortcut_actions[-1])
        self._describe_for_assistive_technology()
        self._restore()
        if settings.notices or self._reclaimed:
            self.messages.show_message(" ".join([*settings.notices, self._reclaimed]).strip(), "info")
        QTimer.singleShot(0, self._start_model)

    # -- wiring ---------------------------------------------------------------------------------------------------

    def _connect(self) -> None:
        t, w, s = self.toolbar, self.worker, self.sources
        t.camera_chosen.connect(self.choose_camera)
        t.video_requested.connect(self._ask_for_video)
        t.screen_live_requested.connect(self.watch_screen)
        t.live_off.connect(self.sources.stop_live)
        t.capture_requested.connect(self.take_screenshot)
        t.paste_requested.connect(self.sources.paste)
        t.freeze_requested.connect(self.freeze)
        self.captions.freeze_requested.connect(self.freeze)
        t.open_requested.connect(self._ask_for_file)
        t.mode_chosen.connect(self.set_mode)
        t.size_chosen.connect(self._size_chosen)
        t.model_chosen.connect(self.use_model)
        t.manage_models.connect(self.open_model_manager)
        t.settings_requested.connect(self.open_settings)
        t.read_aloud.setEnabled(self.speaker.available)
        t.read_aloud.setChecked(self.settings.read_aloud and self.speaker.available)
        t.read_aloud.setToolTip(self.speaker.reason or "Read captions and answers aloud")
        t.read_aloud.toggled.connect(self._toggle_read_aloud)

        w.state_changed.connect(self.status.set_state)
        w.model_ready.connect(self._model_ready)
        w.devices.connect(self.status.set_devices)
        w.model_failed.connect(self._model_failed)
        w.failed.connect(self.show_error)
        w.notice.connect(lambda text: self.messages.show_message(text, "info"))
        w.model_lost.connect(self._model_lost)

        s.live_started.connect(self._live_started)
        s.live_stopped.connect(self._live_stopped)
        s.live_closed.connect(lambda: self._live_stopped(""))
        s.live_waiting.connect(self._live_waiting)
        s.frame.connect(self._show_frame)
        s.still.connect(self.set_still)
        s.failed.connect(self.show_error)
        s.grab_started.connect(self.hide)
        s.grab_finished.connect(self._grab_finished)

        self.view.file_dropped.connect(self.sources.open_file)
        self.view.image_dropped.connect(lambda image: self.sources.use_image(image, "a dropped image"))
        self.chat.export.connect(lambda: self._save_as("conversation.md", TRANSCRIPT_KINDS, self.asking.export))
        self.captions.export_markdown.connect(
            lambda: self._save_as("captions.md", TRANSCRIPT_KINDS, self.export_captions_markdown))
        self.captions.export_srt.connect(
            lambda: self._save_as("captions.srt", "Subtitles (*.srt)", self.export_captions_srt))

    def _restore(self) -> None:
        if not self.settings.geometry.isEmpty():
            self.restoreGeometry(self.settings.geometry)
        else:
            self.resize(1200, 760)
        if not self.settings.splitter.isEmpty():
            self.splitter.restoreState(self.settings.splitter)
        cameras, note = list_cameras()
        self.toolbar.set_cameras(cameras, note)
        self._update_capture_menu()
        self._watch_devices()
        self.set_mode(self.settings.mode)
        self.view.clear(PLACEHOLDER)
        # A camera used last time is opened again in live mode (the app is a camera assistant); never otherwise.
        last = next((c for c in cameras if c.device_id and c.device_id == self.settings.camera), None)
        if last is not None and self.settings.mode == "live":
            self.choose_camera(last)

    def _update_capture_menu(self) -> None:
        screens = [screen_label(i, s) for i, s in enumerate(QGuiApplication.screens())]
        self.toolbar.rebuild_capture_menu(screens, unavailable_reason())
        with self._source_choice_kept():
            self.toolbar.set_screens(screens, unavailable_reason())

    def _watch_devices(self) -> None:
        """Keep the source list current as cameras and monitors come and go."""
        app = QGuiApplication.instance()
        if isinstance(app, QGuiApplication):
            app.screenAdded.connect(self._screens_changed)  # bound methods: disconnected when the window goes
            app.screenRemoved.connect(self._screens_changed)
        if not multimedia_problem():
            # Optional: loaded only once multimedia_problem() says Qt Multimedia can be.
            from PySide6.QtMultimedia import QMediaDevices  # noqa: PLC0415

            self._media_devices = QMediaDevices(self)
            self._media_devices.videoInputsChanged.connect(self._refresh_cameras)

    def _screens_changed(self, _screen: QScreen) -> None:
        self._update_capture_menu()

    def _refresh_cameras(self) -> None:
        cameras, note = list_cameras()
        with self._source_choice_kept():
            self.toolbar.set_cameras(cameras, note)

    @contextmanager
    def _source_choice_kept(self) -> Iterator[None]:
        """Rebuilding the source list must not make it forget what is playing."""
        playing = self.toolbar.source.currentText() if self.sources.feed is not None else ""
        yield
        if playing:
            self.toolbar.show_live_source(playing)

    # -- models ---------------------------------------------------------------------------------------------------

    def _installed(self) -> list[str]:
        return [m.name for m in self.store.installed() if m.complete]

    def _start_model(self) -> None:
        installed = self._installed()
        self.toolbar.set_models(installed, self.settings.model)
        name = self.settings.model if self.settings.model in installed else (installed[0] if installed else "")
        if name:
            self.use_model(name)
        else:
            self.open_model_manager(first_run=True)

    def use_model(self, name: str) -> None:
        if not name:
            return
        self.settings.model = name
        self.toolbar.set_models(self._installed(), name)
        self.model_name = ""
        self.status.set_model(f"{name} (loading)")
        try:
            path = self.store.path(name)
        except GlimpseError as e:
            self._model_failed(describe_error(e))
            return
        self.live.stop()
        self.asking.model_changed()
        # Questions asked from now on wait in the worker's queue behind the load, and are answered after it.
        self.model_loading = True
        self.worker.load(str(path), self.settings.threads, self.settings.device)

    def _model_ready(self, name: str, _default_size: int) -> None:
        if self._closing:  # a load that could not be interrupted ended after Close: nothing more may start
            return
        self.model_loading = False
        self.model_name = self.settings.model or name
        self.status.set_model(self.model_name)
        self.asking.read_ahead()
        if self.settings.mode == "live" and self.sources.feed is not None:
            self.live.start()

    def _model_lost(self, message: str) -> None:
        """The model's process failed twice: it is unloaded; one click loads it again."""
        self.model_loading = False
        self.model_name = ""
        self.status.set_model("none")
        self.show_error(message, ("Load again", lambda: self.use_model(self.settings.model)))

    def _model_failed(self, message: str) -> None:
        self.model_loading = False
        self.model_name = ""
        self.status.set_model("none")
        self.show_error(f"The model could not be loaded. {message}", ("Manage models", self.open_model_manager))

    def open_model_manager(self, first_run: bool = False) -> ModelManager:
        if self.manager is None:
            self.manager = ModelManager(self.settings, options=self._download_options, store=self.store,
                                        first_run=first_run, parent=self)
            self.manager.model_chosen.connect(self._manager_chose)
            self.manager.job_finished.connect(
                lambda _outcome: self.toolbar.set_models(self._installed(), self.settings.model))
        self.manager.refresh()
        self.manager.show()
        self.manager.raise_()
        return self.manager

    def _manager_chose(self, name: str) -> None:
        self.toolbar.set_models(self._installed(), name)
        self.use_model(name)

    # -- sources and pictures -------------------------------------------------------------------------------------

    def choose_camera(self, camera: Camera) -> None:
        self.settings.camera = camera.device_id
        with_camera_permission(self, lambda: self.sources.open_camera(camera), self._camera_denied)

    def _camera_denied(self, message: str) -> None:
        self.show_error(message)
        self.toolbar.source.setCurrentIndex(0)

    def _ask_for_video(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Play a video as the camera", "", VIDEO_FILTER)
        if path:
            self.sources.open_video(path)
        else:
            self.toolbar.source.setCurrentIndex(0)

    def _ask_for_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an image or video", "", OPEN_FILTER)
        if path:
            self.sources.open_file(path)

    def watch_screen(self, what: str, label: str) -> None:
        """The screen as the live source (captions of what is on it, or freeze it to ask about it)."""
        reason = unavailable_reason()
        if reason:
            self.show_error(reason, ("Paste an image", self.sources.paste))
            self.toolbar.source.setCurrentIndex(0)
            return
        self.sources.open_screen(what, label)

    def take_screenshot(self, what: str) -> None:
        reason = unavailable_reason()
        if reason:
            self.show_error(reason, ("Paste an image", self.sources.paste))
            return
        self.sources.screenshot(what, self.settings.screenshot_delay)

    def _grab_finished(self) -> None:
        if self.sources.feed is None and (self.toolbar.source.currentData() or ("",))[0] == "screen":
            self.toolbar.source.setCurrentIndex(0)  # a live region that was cancelled (or is about to start)
        if not self._closing:
            self.show()
            self.raise_()
            self.activateWindow()

    def _live_started(self, label: str) -> None:
        self._live_label = label.split(": ", 1)[-1]  # what the captions are of, for their export
        self.toolbar.show_live_source(label)
        if self.settings.mode == "live":
            self.asking.forget_picture()
            if self.model_name:
                self.live.start()

    def _live_stopped(self, error: str) -> None:
        self.toolbar.source.setCurrentIndex(0)
        if error:
            self.show_error(error)
        if self.asking.picture is None:
            self.view.clear("The live source has stopped. Choose another under Source.")
        self.status.set_rates(None)

    def _live_waiting(self, note: str) -> None:
        """The live source sends no pictures (``note`` says so) or sends them again (""): the last picture stays, with
        the note as its badge, and the captions so far stay too."""
        feed = self.sources.feed
        if note and not self.view.image.isNull():
            self.view.set_image(self.view.image, note)
        elif not note and feed is not None:
            self._show_frame()

    def _show_frame(self) -> None:
        feed = self.sources.feed
        frame = feed.latest() if feed is not None else None
        if frame is not None and feed is not None and (self.asking.picture is None or self.settings.mode == "live"):
            self.view.set_image(to_qimage(frame.pixels), f"Live: {feed.name}")

    def set_still(self, pixels: U8Array, description: str) -> None:
        """A new picture to ask about: show it, switch to Ask mode, start a new conversation about it."""
        self.asking.set_picture(pixels, description)
        self.view.set_image(to_qimage(pixels), description[:1].upper() + description[1:])
        if self.settings.mode != "ask":
            self.toolbar.mode.setCurrentIndex(self.toolbar.mode.findData("ask"))
        self.chat.input.setFocus()

    def freeze(self) -> None:
        if not self.sources.freeze():
            self.show_error("There is no live picture to freeze: choose a camera, a video file or the screen "
                            "under Source.")

    def ask(self, question: str) -> None:
        self.asking.ask(question)

    # -- modes ----------------------------------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        self.settings.mode = mode
        if self.toolbar.mode.currentData() != mode:
            self.toolbar.mode.setCurrentIndex(self.toolbar.mode.findData(mode))
        self.side.setCurrentWidget(self.captions if mode == "live" else self.chat)
        self.toolbar.presets.length.setEnabled(mode == "ask")
        self.toolbar.presets.length.setToolTip("Answer length: how long answers should be" if mode == "ask"
                                               else "Answer length: live captions are always brief")
        if mode == "ask":
            self.live.stop()
            if self.asking.picture is None and self.sources.feed is not None:
                self.sources.freeze()
        else:
            self.asking.forget_picture()
            if self.sources.feed is not None and self.model_name and not self.asking.asking:
                self.live.start()

    # -- keyboard -------------------------------------------------------------------------------------------------

    def toggle_captions(self) -> None:
        if self.settings.mode != "live":
            self.set_mode("live")
        self.captions.start_button.click()

    def go_to_question(self) -> None:
        if self.settings.mode != "ask":
            self.set_mode("ask")
        self.chat.input.setFocus()

    def stop_current(self) -> None:
        """Esc: the answer being written, else the live captions."""
        if self.chat.busy:
            self.chat.stop_button.click()
        elif self.live.running:
            self.live.stop()

    def _install_shortcuts(self) -> list[QAction]:
        """The window's shortcut actions (app/shortcuts.py), in the order the list shows them."""
        t, act = self.toolbar, shortcuts.make_action
        return [
            act(self, None, shortcuts.CAPTIONS, self.toggle_captions),
            act(self, t.freeze_action, shortcuts.FREEZE, self.freeze),
            act(self, None, shortcuts.SCREENSHOT, lambda: self.take_screenshot("desktop")),
            act(self, t.region_action, shortcuts.REGION, lambda: self.take_screenshot("region")),
            act(self, None, shortcuts.ASK, self.go_to_question),
            act(self, None, shortcuts.STOP, self.stop_current),
            act(self, t.read_aloud, shortcuts.READ_ALOUD, t.read_aloud.toggle),
            act(self, t.paste_action, shortcuts.PASTE, self.sources.paste),
            act(self, t.open_action, shortcuts.OPEN, t.open_action.trigger),
            act(self, None, shortcuts.HELP, self.show_shortcuts),
        ]

    def show_shortcuts(self) -> ShortcutsDialog:
        dialog = ShortcutsDialog(shortcuts.table(self.shortcut_actions), self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def _describe_for_assistive_technology(self) -> None:
        """Tab goes through the window as it reads: the toolbar left to right, the message, the picture, then the
        panel on the right; and every control says what it is for."""
        t, c, a = self.toolbar, self.captions, self.chat
        # QToolBar leaves the buttons it makes for actions out of the Tab chain; these have no other way in.
        action_buttons = [t.widgetForAction(action) for action in (t.read_aloud, t.settings_action)]
        for button in action_buttons:
            button.setFocusPolicy(Qt.FocusPolicy.TabFocus)
        self.view.setFocusPolicy(Qt.FocusPolicy.TabFocus)  # a screen reader reads what the picture is
        order = [t.source, t.capture, t.mode, t.presets.combo, t.presets.length, t.presets.edit_button, t.size_box,
                 t.model, *action_buttons, *self.messages.controls(), self.view,
                 c.start_button, c.interval, c.freeze_button, c.current, c.history, c.copy_button,
                 c.markdown_button, c.srt_button, c.clear_button,
                 a.transcript, a.input, a.send_button, a.stop_button, a.copy_button, a.regenerate_button,
                 a.export_button]
        for first, second in itertools.pairwise(order):
            QWidget.setTabOrder(first, second)

    # -- export, messages, settings -------------------------------------------------------------------------------

    def export_conversation(self, path: Path) -> None:
        self.asking.export(path)

    def export_captions_markdown(self, path: Path) -> None:
        """Markdown, or plain text for a .txt file."""
        render = captions_text if path.suffix.lower() == ".txt" else captions_markdown
        write_file(path, render(self.captions.entries, model=self.model_name, source=self._live_label or "live source"))

    def export_captions_srt(self, path: Path) -> None:
        write_file(path, captions_srt(self.captions.entries))

    def _save_as(self, default: str, kinds: str, write: Callable[[Path], None]) -> None:
        name, chosen = QFileDialog.getSaveFileName(self, "Export", default, kinds)
        if not name:
            return
        if not Path(name).suffix:  # the format follows the suffix; none typed: the chosen filter's
            name += chosen[chosen.find("*") + 1:chosen.rfind(")")] if "*" in chosen else ""
        try:
            write(Path(name))
        except OSError as e:
            self.show_error(f"Could not save {name}: {e.strerror or e}.")
        else:
            self.messages.show_message(f"Saved {name}.", "info")

    def show_error(self, message: str, action: tuple[str, Callable[[], object]] | None = None) -> None:
        self.messages.show_message(message, "error", action)

    def _size_chosen(self, size: int) -> None:
        self.settings.tiles = size == TILES
        self.settings.image_size = max(0, size)  # tiles: automatic (512 live, the model's own size + tiles asked)
        self.live.restart_if_running()
        self.asking.size_changed()  # a picture not asked about yet is read again at the new size

    def _toggle_read_aloud(self, on: bool) -> None:
        self.settings.read_aloud = on
        if not on:
            self.speaker.stop()

    def open_settings(self) -> None:
        dialog = SettingsDialog(self.settings, speech_reason=self.speaker.reason, parent=self)
        if dialog.exec() == SettingsDialog.DialogCode.Accepted:
            reload = dialog.apply()
            self.toolbar.read_aloud.setChecked(self.settings.read_aloud and self.speaker.available)
            self._update_capture_menu()
            if reload and self.settings.model:
                self.use_model(self.settings.model)
        dialog.deleteLater()

    # -- closing --------------------------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop generation, capture and downloads, and close once their threads have ended: at once if they end
        within a few seconds (a generation stops within a token), else with a dialog saying what it waits for."""
        first = not self._closing
        if first:
            self._begin_closing()
        deadline = time.monotonic() + (closing.GRACE_S if first else 0.0)
        while app_threads.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        waiting = closing.waiting_for(app_threads.running(), self.worker.state)
        if waiting:
            event.ignore()  # a QThread destroyed while it runs aborts the process
            if self._closing_dialog is None:
                self._closing_dialog = closing.ClosingDialog(self)
                self._close_timer.start()
            self._closing_dialog.show_waiting(waiting)
            return
        self._close_timer.stop()
        if self._closing_dialog is not None:
            self._closing_dialog.close()
        log.info("window closed cleanly: generation, capture and downloads stopped")
        event.accept()

    def _begin_closing(self) -> None:
        """Save the layout and ask everything to stop, without waiting."""
        self._closing = True
        self.settings.geometry = self.saveGeometry()
        self.settings.splitter = self.splitter.saveState()
        self.settings.sync()
        self.live.close()
        self.speaker.stop()
        self.worker.stop()
        if self.manager is not None:
            self.manager.shutdown(0.0)
            self.manager.close()
        self.sources.shutdown(0.0)
        self.worker.shutdown(0.0)

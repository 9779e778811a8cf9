"""The main toolbar: live source, screenshot and other picture sources, mode, prompt preset, image size, model."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QComboBox, QLabel, QMenu, QToolBar, QToolButton, QWidget

from glimpse.app.capture.cameras import Camera
from glimpse.app.qtcompat import emit
from glimpse.app.settings import Settings
from glimpse.app.widgets.presets import PresetBar

SIZES = (0, 256, 384, 512, 768, 1024)
TILES = -1  # the size box's "small text" entry: the model's own size plus 2x2 tiles, for questions
TILES_TIP = ("For questions about big screenshots and documents: the whole picture plus a 2x2 grid of tiles at the "
             "model's own size (five times the work, done while you type). Live captions use 512 px.")
DELAYS = (0, 3, 5, 10)
MANAGE = "__manage__"


class MainToolbar(QToolBar):
    camera_chosen = Signal(object)  # Camera
    video_requested = Signal()
    screen_live_requested = Signal(str, str)  # "desktop" | "screen:N" | "region", and the item's text
    live_off = Signal()
    capture_requested = Signal(str)  # "desktop", "screen:N", "region"
    freeze_requested = Signal()
    paste_requested = Signal()
    open_requested = Signal()
    mode_chosen = Signal(str)  # "live" | "ask"
    size_chosen = Signal(int)
    model_chosen = Signal(str)
    manage_models = Signal()
    settings_requested = Signal()

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__("Main", parent)
        self.setMovable(False)
        self._settings = settings

        self.source = QComboBox()
        self.source.setAccessibleName("Live source")
        self.source.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.source.setToolTip("The camera, video file or screen to caption or freeze")
        self.source.activated.connect(self._source_activated)
        self._cameras: list[Camera] = []
        self._camera_note = ""
        self._screens: list[str] = []
        self._screen_reason = ""
        self.addWidget(QLabel(" Source "))
        self.addWidget(self.source)

        self.capture = QToolButton()
        self.capture.setText("Picture")
        self.capture.setToolTip("Take a screenshot, paste or open an image to ask about")
        self.capture.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.capture_menu = QMenu(self.capture)
        self.capture.setMenu(self.capture_menu)
        self.paste_action = QAction("Paste image", self)
        self.paste_action.setShortcut(QKeySequence.StandardKey.Paste)
        self.paste_action.triggered.connect(lambda: emit(self.paste_requested))
        self.open_action = QAction("Open image or video…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(lambda: emit(self.open_requested))
        self.freeze_action = QAction("Freeze the live frame", self)
        self.freeze_action.setShortcut(QKeySequence("Ctrl+Shift+F"))
        self.freeze_action.triggered.connect(lambda: emit(self.freeze_requested))
        self.region_action = QAction("Screen region…", self)
        self.region_action.setShortcut(QKeySequence("Ctrl+Shift+R"))
        self.region_action.triggered.connect(lambda: emit(self.capture_requested, "region"))
        self.delay_group = QActionGroup(self)
        self.addWidget(self.capture)
        self.rebuild_capture_menu([])

        self.addSeparator()
        self.mode = QComboBox()
        self.mode.setAccessibleName("Mode")
        self.mode.setToolTip("Mode: live captions of the source, or questions about one picture")
        self.mode.addItem("Live captions", "live")
        self.mode.addItem("Ask", "ask")
        self.mode.setCurrentIndex(max(0, self.mode.findData(settings.mode)))
        self.mode.currentIndexChanged.connect(lambda _i: emit(self.mode_chosen, str(self.mode.currentData())))
        self.addWidget(self.mode)

        self.presets = PresetBar(settings)
        self.addWidget(self.presets)

        self.size_box = QComboBox()
        self.size_box.setAccessibleName("Image size")
        self.size_box.setToolTip("Image size the model sees: larger reads small text better but is slower. "
                             "Auto: 512 for live captions, the model's own size for questions.")
        for size in SIZES:
            self.size_box.addItem("Auto size" if size == 0 else f"{size} px", size)
        self.size_box.addItem("Small text (tiles)", TILES)
        self.size_box.setItemData(self.size_box.count() - 1, TILES_TIP, Qt.ItemDataRole.ToolTipRole)
        shown = TILES if settings.tiles else settings.image_size
        self.size_box.setCurrentIndex(max(0, self.size_box.findData(shown)))
        self.size_box.currentIndexChanged.connect(lambda _i: emit(self.size_chosen, int(self.size_box.currentData())))
        self.addWidget(self.size_box)

        self.model = QComboBox()
        self.model.setAccessibleName("Model")
        self.model.setToolTip("The model that writes captions and answers; Manage models… downloads or imports one")
        self.model.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.model.activated.connect(self._model_activated)
        self.addWidget(self.model)

        self.read_aloud = QAction("Read aloud", self)
        self.read_aloud.setCheckable(True)
        self.addAction(self.read_aloud)
        self.settings_action = QAction("Settings…", self)
        self.settings_action.triggered.connect(lambda: emit(self.settings_requested))
        self.addAction(self.settings_action)

    # -- sources --------------------------------------------------------------------------------------------------

    def set_cameras(self, cameras: list[Camera], note: str = "") -> None:
        self._cameras, self._camera_note = cameras, note
        self._rebuild_sources()

    def set_screens(self, screens: list[str], reason: str = "") -> None:
        """``screens``: labels from ``screen_label``; ``reason``: why the screen cannot be captured here."""
        self._screens, self._screen_reason = screens, reason
        self._rebuild_sources()

    def _rebuild_sources(self) -> None:
        model = self.source.model()
        self.source.clear()
        self.source.addItem("No live source", ("off", None))
        for camera in self._cameras:
            self.source.addItem(f"Camera: {camera.name}", ("camera", camera))
        if not self._cameras:
            self.source.addItem("No camera found", ("none", None))
            model.item(self.source.count() - 1).setEnabled(False)  # type: ignore[attr-defined]
        self.source.addItem("Video file…", ("video", None))
        screens = [("desktop", "Screen: whole desktop" if len(self._screens) > 1 else "Screen: whole screen")]
        if len(self._screens) > 1:
            screens += [(f"screen:{i}", f"Screen: {label.split(': ', 1)[0].lower()} only")
                        for i, label in enumerate(self._screens)]
        screens.append(("region", "Screen: a region…"))
        for what, text in screens:
            self.source.addItem(text, ("screen", what))
            item = model.item(self.source.count() - 1)  # type: ignore[attr-defined]
            item.setToolTip(self._screen_reason or "Caption what is on the screen, twice a second "
                            "(Glimpse's own window is greyed out)")
            item.setEnabled(not self._screen_reason)
        self.source.setToolTip(self._camera_note or "The camera, video file or screen to caption or freeze")

    def show_live_source(self, label: str) -> None:
        """Show what is playing (a video file is not in the list until it is opened)."""
        index = self.source.findText(label)
        if index < 0:
            video = next(i for i in range(self.source.count()) if self.source.itemData(i)[0] == "video")
            self.source.insertItem(video, label, ("file", None))
            index = self.source.findText(label)
        self.source.setCurrentIndex(index)

    def _source_activated(self, index: int) -> None:
        kind, camera = self.source.itemData(index)
        if kind == "camera":
            emit(self.camera_chosen, camera)
        elif kind == "screen":
            emit(self.screen_live_requested, str(camera), self.source.itemText(index))
        elif kind == "video":
            emit(self.video_requested)
        elif kind == "off":
            emit(self.live_off)

    def rebuild_capture_menu(self, screens: list[str], reason: str = "") -> None:
        """``screens``: labels from ``screen_label``; ``reason``: why screenshots cannot work here."""
        menu = self.capture_menu
        menu.clear()
        desktop = menu.addAction("Whole desktop" if len(screens) > 1 else "Whole screen")
        desktop.triggered.connect(lambda: emit(self.capture_requested, "desktop"))
        if len(screens) > 1:
            for i, label in enumerate(screens):
                action = menu.addAction(label)
                action.triggered.connect(lambda _=False, i=i: emit(self.capture_requested, f"screen:{i}"))
        menu.addAction(self.region_action)
        for action in menu.actions():
            action.setToolTip(reason)
        delay = menu.addMenu("Delay before screenshot")
        for seconds in DELAYS:
            action = delay.addAction("No delay" if seconds == 0 else f"{seconds} seconds")
            action.setCheckable(True)
            action.setData(seconds)
            action.setChecked(seconds == self._settings.screenshot_delay)
            self.delay_group.addAction(action)
            action.triggered.connect(lambda _=False, s=seconds: setattr(self._settings, "screenshot_delay", s))
        menu.addSeparator()
        menu.addAction(self.freeze_action)
        menu.addAction(self.paste_action)
        menu.addAction(self.open_action)

    # -- models ---------------------------------------------------------------------------------------------------

    def set_models(self, names: list[str], active: str) -> None:
        self.model.clear()
        for name in names:
            self.model.addItem(name, name)
        if not names:
            self.model.addItem("No model", "")
        self.model.addItem("Manage models…", MANAGE)
        self.model.setCurrentIndex(max(0, self.model.findData(active)))

    def _model_activated(self, index: int) -> None:
        name = str(self.model.itemData(index))
        if name == MANAGE:
            self.model.setCurrentIndex(max(0, self.model.findData(self._settings.model)))
            emit(self.manage_models)
        elif name:
            emit(self.model_chosen, name)

# PyInstaller runtime hook: the launcher's processor check (app/cpu_baseline.py) as the frozen app's very first code.
# It must run before PyInstaller's own PySide6 hook, which imports PySide6: Qt's core library aborts on load on a
# CPU below its baseline ("Incompatible processor"), before the launcher's main() could say anything. Custom
# runtime hooks run before PyInstaller's.
import sys

from glimpse.app.cpu_baseline import baseline_message, missing_features


def _refuse_an_unsupported_cpu() -> None:
    message = baseline_message(missing_features())
    if message:
        if sys.stderr is not None:  # a windowed build has none; the launcher's log is not set up yet
            print(message, file=sys.stderr)
        sys.exit(3)


_refuse_an_unsupported_cpu()

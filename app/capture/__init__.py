"""Where pictures come from: cameras and video files (live), the screen, the clipboard and image files (stills)."""

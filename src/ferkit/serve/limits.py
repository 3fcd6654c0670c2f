"""The server's defaults, readable without the serve extra (``ferkit serve --help`` shows them)."""

HOST = "127.0.0.1"
PORT = 8000
MAX_UPLOAD_MB = 10
# A phone's clip is 50-150 MB a minute or two; uploads are spooled to disk, never held in memory whole.
MAX_VIDEO_MB = 200
MAX_PIXELS = 40_000_000
MAX_BATCH = 8
MAX_QUEUE = 32
# A live session (a browser tab's tracks) is forgotten after this long without a frame; at most this many are kept.
SESSION_IDLE_S = 60.0
MAX_SESSIONS = 256
# Frames read from one uploaded video: a longer one is read every Nth frame, so that its whole length fits.
MAX_VIDEO_FRAMES = 300

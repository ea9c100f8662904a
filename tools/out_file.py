"""Output files, as engine/out_file.h does it: a regular file (or a new one)
is replaced atomically, through a temporary file beside it that is fsynced and
renamed, so a failure leaves the old file; '-' (stdout), a device or a FIFO is
written straight through, since renaming over /dev/null would replace the
device node with a file."""
import os
import stat
import sys
import tempfile
from pathlib import Path


def is_direct(path):
    """True when path is written straight through: '-', or an existing file that is neither regular nor a folder."""
    if str(path) == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def write_bytes(path, data):
    if str(path) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(path)
    if is_direct(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # as an ordinary new file, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))

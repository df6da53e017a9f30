"""Tesseract in process, through its C API (libtesseract, the library the ``tesseract`` command
itself runs on), with the language model loaded once per thread.

Why: each ``tesseract`` command spends about 0.2 s loading its model before it reads a
pixel, which is most of the cost of reading a 512 x 512 slice. Same library, same model
files, same page segmentation mode: the words are the command's words. When the library
cannot be loaded, :func:`available` is False and callers use the command (pytesseract).
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import threading
import time

from PIL import Image

PSM_SPARSE_TEXT = 11  # "--psm 11", see ocr.TESSERACT_CONFIG
RIL_BLOCK, RIL_PARA, RIL_TEXTLINE, RIL_WORD = 0, 1, 2, 3

_lib: ctypes.CDLL | None = None
_lib_failed = False
_load_lock = threading.Lock()
_local = threading.local()
_handles: set[int] = set()  # live handles (deleted with their thread, or at exit: else tesseract warns of leaks)
_registered: list[bool] = []


class TessError(RuntimeError):
    """The library failed on an image or could not start (our own wording)."""


def _load() -> ctypes.CDLL | None:
    global _lib, _lib_failed
    with _load_lock:
        if _lib is not None or _lib_failed:
            return _lib
        try:
            name = ctypes.util.find_library("tesseract") or "libtesseract.so.5"
            lib = ctypes.CDLL(name)
            p, i, c = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
            signatures = {
                "TessBaseAPICreate": ([], p),
                "TessBaseAPIInit3": ([p, c, c], i),
                "TessBaseAPISetPageSegMode": ([p, i], None),
                "TessBaseAPISetVariable": ([p, c, c], i),
                "TessBaseAPISetImage": ([p, c, i, i, i, i], None),
                "TessBaseAPISetSourceResolution": ([p, i], None),
                "TessBaseAPIRecognize": ([p, p], i),
                "TessBaseAPIGetIterator": ([p], p),
                "TessBaseAPIClear": ([p], None),
                "TessBaseAPIDelete": ([p], None),
                "TessResultIteratorGetPageIterator": ([p], p),
                "TessResultIteratorGetUTF8Text": ([p, i], ctypes.c_void_p),
                "TessResultIteratorConfidence": ([p, i], ctypes.c_float),
                "TessResultIteratorNext": ([p, i], i),
                "TessResultIteratorDelete": ([p], None),
                "TessPageIteratorBoundingBox": ([p, i] + [ctypes.POINTER(i)] * 4, i),
                "TessPageIteratorIsAtBeginningOf": ([p, i], i),
                "TessDeleteText": ([ctypes.c_void_p], None),
                "TessMonitorCreate": ([], p),
                "TessMonitorDelete": ([p], None),
                "TessMonitorSetDeadlineMSecs": ([p, i], None),
            }
            for fname, (args, res) in signatures.items():
                fn = getattr(lib, fname)
                fn.argtypes, fn.restype = args, res
            _lib = lib
        except (OSError, AttributeError):
            _lib_failed = True
        return _lib


class _Handle:
    """One thread's API handle; freed when the thread ends (its thread-local goes), or at exit."""

    def __init__(self, pointer: int) -> None:
        self.pointer = pointer

    def __del__(self) -> None:
        _delete(self.pointer)


def _delete(pointer: int) -> None:
    with _load_lock:
        if pointer not in _handles:
            return
        _handles.remove(pointer)
    if _lib is not None:
        _lib.TessBaseAPIDelete(pointer)


def _delete_all() -> None:
    for pointer in list(_handles):
        _delete(pointer)


def _api() -> int:
    """This thread's initialised API handle (model loaded once per thread)."""
    handle = getattr(_local, "handle", None)
    if handle is not None:
        return handle.pointer
    lib = _load()
    if lib is None:
        raise TessError("tesseract library not available")
    pointer = lib.TessBaseAPICreate()
    datapath = os.environ.get("TESSDATA_PREFIX")
    if lib.TessBaseAPIInit3(pointer, datapath.encode() if datapath else None, b"eng") != 0:
        lib.TessBaseAPIDelete(pointer)
        raise TessError("tesseract library could not load its English model")
    lib.TessBaseAPISetPageSegMode(pointer, PSM_SPARSE_TEXT)
    # Its progress notes ("Estimating resolution as ...") went to the command's stderr; here
    # they would land in our logs.
    lib.TessBaseAPISetVariable(pointer, b"debug_file", os.devnull.encode())
    with _load_lock:
        if not _registered:
            atexit.register(_delete_all)
            _registered.append(True)
        _handles.add(pointer)
    _local.handle = _Handle(pointer)
    return pointer


def available() -> bool:
    """The library loads and its model initialises (checked once per thread)."""
    try:
        _api()
    except TessError:
        return False
    return True


def image_to_data(image: Image.Image, timeout_seconds: float) -> dict[str, list]:
    """Words of an 8-bit grey image, as ``pytesseract.image_to_data(..., Output.DICT)`` gives
    them at word level (level 5): text, conf, left, top, width, height, block/par/line numbers."""
    lib = _load()
    handle = _api()
    grey = image.convert("L")
    data = grey.tobytes()
    out: dict[str, list] = {k: [] for k in ("level", "text", "conf", "left", "top", "width", "height", "block_num", "par_num", "line_num")}
    lib.TessBaseAPISetImage(handle, data, grey.width, grey.height, 1, grey.width)
    monitor = lib.TessMonitorCreate()
    try:
        lib.TessMonitorSetDeadlineMSecs(monitor, int(timeout_seconds * 1000))
        start = time.monotonic()
        status = lib.TessBaseAPIRecognize(handle, monitor)
        # A run stopped at its deadline may keep the words read so far: never a full reading.
        if status != 0 or time.monotonic() - start >= 0.99 * timeout_seconds:
            raise TessError("tesseract library failed on this image or did not finish in time")
        iterator = lib.TessBaseAPIGetIterator(handle)
        if not iterator:
            return out
        try:
            page = lib.TessResultIteratorGetPageIterator(iterator)
            block = par = line = 0
            box = [ctypes.c_int() for _ in range(4)]
            while True:
                if lib.TessPageIteratorIsAtBeginningOf(page, RIL_BLOCK):
                    block, par, line = block + 1, 0, 0
                if lib.TessPageIteratorIsAtBeginningOf(page, RIL_PARA):
                    par, line = par + 1, 0
                if lib.TessPageIteratorIsAtBeginningOf(page, RIL_TEXTLINE):
                    line += 1
                pointer = lib.TessResultIteratorGetUTF8Text(iterator, RIL_WORD)
                if pointer:
                    text = ctypes.string_at(pointer).decode("utf-8", "replace")
                    lib.TessDeleteText(pointer)
                    lib.TessPageIteratorBoundingBox(page, RIL_WORD, *[ctypes.byref(b) for b in box])
                    x0, y0, x1, y1 = (b.value for b in box)
                    for key, value in (("level", 5), ("text", text), ("conf", float(lib.TessResultIteratorConfidence(iterator, RIL_WORD))),
                                       ("left", x0), ("top", y0), ("width", x1 - x0), ("height", y1 - y0),
                                       ("block_num", block), ("par_num", par), ("line_num", line)):  # fmt: skip
                        out[key].append(value)
                if not lib.TessResultIteratorNext(iterator, RIL_WORD):
                    break
        finally:
            lib.TessResultIteratorDelete(iterator)
    finally:
        lib.TessMonitorDelete(monitor)
        lib.TessBaseAPIClear(handle)
    return out

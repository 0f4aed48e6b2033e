"""The one mark of "the input's fault": a video, prompt or annotation a person must fix.

A job turns an `InputError` into the video's error row and goes on; any other exception is a bug or
a fault of the machine, and keeps its traceback. A `ValueError` subclass, so callers that refuse bad
values as a class keep working.
"""

from __future__ import annotations

import re

MAX_MESSAGE_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class InputError(ValueError):
    """Something wrong with one input (its bytes, its prompts, its ground truth), said in words."""


def printable_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """An error message as a row or a log may hold it: control characters (terminal escapes, NULs)
    shown as `\\xNN`, at most `limit` characters. A native library's message can quote the input's
    bytes; those must never reach a terminal or fill a Parquet column."""
    shown = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown) - limit} more characters)"

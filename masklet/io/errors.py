"""The one mark of "the input's fault": a video, prompt or annotation a person must fix.

A job turns an `InputError` into the video's error row and goes on; any other exception is a bug or
a fault of the machine, and keeps its traceback. A `ValueError` subclass, so callers that refuse bad
values as a class keep working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Something wrong with one input (its bytes, its prompts, its ground truth), said in words."""

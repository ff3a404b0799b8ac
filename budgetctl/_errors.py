"""The error a sampler raises when trying again cannot help, so the run stops at once."""

from __future__ import annotations

__all__ = ["FatalSamplerError"]


class FatalSamplerError(Exception):
    """Raised by a sampler whose calls cannot succeed by being tried again: the run stops at once.

    Connection refused, 400, 401, 403 and 404 fail the same way every time, so the run launches
    nothing more and ends with ``stop_reason="error"`` at once (calls in flight are cancelled; the
    best answer so far is still returned). The message, in ``Result.errors``, says what failed (the
    URL) and what to check. The OpenAI-compatible samplers raise it; any sampler may.
    """

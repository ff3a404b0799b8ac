"""Samplers for real model servers: OpenAI-compatible chat and completions, batched or streamed.

``openai_chat(url_or_client, model, messages)`` returns a sampler for :func:`budgetctl.solve`; each
call is one HTTP request. ``openai_chat_stream`` streams one chain of thought per call and yields a
probe of its answer every ``k`` tokens (deeper reasoning). ``alternate`` mixes the two. The
``openai`` package is needed only when a sampler is made (``pip install 'budgetctl[openai]'``).
"""

from ._mix import alternate as alternate
from ._openai import Messages as Messages
from ._openai import OpenAISampler as OpenAISampler
from ._openai import openai_chat as openai_chat
from ._openai import openai_completion as openai_completion
from ._price import Price as Price
from ._price import PriceLike as PriceLike
from ._retry import Retry as Retry
from ._stream import StreamingSampler as StreamingSampler
from ._stream import openai_chat_stream as openai_chat_stream
from ._stream import openai_completion_stream as openai_completion_stream
from ._stream import settled_text as settled_text

__all__ = (
    "Messages",
    "OpenAISampler",
    "Price",
    "PriceLike",
    "Retry",
    "StreamingSampler",
    "alternate",
    "openai_chat",
    "openai_chat_stream",
    "openai_completion",
    "openai_completion_stream",
    "settled_text",
)

"""spiritserve: serve Meta's Spirit LM (speech + text) with vLLM, batched speech stages and a FastAPI gateway.

Importing this package loads no weights, touches no GPU and reads no environment: all of that happens in
the server's lifespan or in explicit loader calls.
"""

__version__ = "0.1.0"

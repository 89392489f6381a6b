"""The export side (needs torch and transformers): from a fine-tuned checkpoint
to one validated ONNX file.

``checkpoint`` loads it, ``families/`` holds what each architecture family
needs (one module per family), ``selection`` the ACC math, ``model`` the
PyTorch layer loop that drops word-vectors, ``tracing`` and ``passes`` write
the graph, ``decoding`` the decoder-only graphs, ``optimize`` the fused, int8
and fp16 variants, ``validate`` the checks against transformers and against
``reference``, the independent numpy reference, and ``conversion`` runs it
all (``latexport convert``).  ``baseline`` writes the plain exports that
``bench`` compares with.
"""

from __future__ import annotations


def __getattr__(name: str):
    # `from latexport.export import convert` without importing torch for the
    # torch-free helpers (``passes``) that live beside it.
    if name in {"convert", "ConvertResult"}:
        from latexport.export import conversion

        return getattr(conversion, name)
    raise AttributeError(f"module 'latexport.export' has no attribute {name!r}")

"""latexport: Latency Adjustable Transformer export.

One ONNX file per model, holding the ACC scoring and token-dropping of every
layer, driven at run time by a ``keep_ratio`` input.  The runtime
(``latexport.runtime``) needs only onnxruntime, numpy and tokenizers.
"""

__version__ = "0.1.0"

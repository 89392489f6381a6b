"""Benchmarks as commands: ``latexport bench`` for encoders (``encoder``) and
generation (``generation``), peak memory in a fresh process (``memory``).
Timing itself is ``latexport.runtime.timing``, shared with ``calibrate``."""

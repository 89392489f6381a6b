"""Integrations with other stacks: transformers' ``pipeline`` (``pipeline``, needs the
``export`` extra) and optimum's ORTModel API (``ortmodel``, needs the ``optimum`` extra)."""

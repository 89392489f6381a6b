"""Integrations with other stacks: optimum's ORTModel API and transformers'
``pipeline`` (``ortmodel``, needs the ``export`` extra)."""

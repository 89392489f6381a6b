"""The training side: fine-tune once with elimination active (``finetune``,
``finetune_lm`` for language models, over ``data`` files or the built-in
``corpora``), then choose the speed offline (``evaluate``: ``latexport
evaluate`` and ``tune``).  Fine-tuning needs torch; evaluation and tuning run
the converted file through the runtime."""

"""Tiny random-weight checkpoints of every supported family, built from configs.

No hub: each checkpoint is a config, random weights and a small WordPiece
tokenizer written to a local directory, exactly as `from_pretrained` expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import (
    AlbertConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
    MPNetConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
    XLMRobertaConfig,
)

WORDS = (
    "the a an and or but not very quite film movie story plot actor actors scene scenes good bad great awful "
    "boring funny sad happy love hate best worst it is was this that of to in on with for as by at one two "
    "long short slow fast dull bright dark light music score ending beginning character characters"
).split()
LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'")

BERT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
ROBERTA_SPECIALS = {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"}


def name_labels(config, num_labels: int) -> None:
    """label_a, label_b, ...: classification checkpoints record their label names."""
    config.id2label = {i: f"label_{chr(97 + i)}" for i in range(num_labels)}
    config.label2id = {name: i for i, name in config.id2label.items()}


def tiny_tokenizer(specials: dict[str, str], max_length: int) -> PreTrainedTokenizerFast:
    order = ["cls", "pad", "sep", "unk", "mask"] if specials is ROBERTA_SPECIALS else ["pad", "unk", "cls", "sep", "mask"]
    pieces = WORDS + [c for c in LETTERS if c not in WORDS] + [f"##{c}" for c in LETTERS]
    vocab_list = [specials[key] for key in order] + pieces
    vocab = {token: index for index, token in enumerate(vocab_list)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token=specials["unk"]))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = specials["cls"], specials["sep"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        cls_token=cls,
        sep_token=sep,
        pad_token=specials["pad"],
        unk_token=specials["unk"],
        mask_token=specials["mask"],
        model_max_length=max_length,
    )


def tiny_t5_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """A SentencePiece-style (Unigram, Metaspace) tokenizer with T5's special ids:
    <pad> 0, </s> 1, <unk> 2, and </s> appended to every text."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + word, -3.0) for word in WORDS]
    pieces += [(letter, -5.0) for letter in LETTERS]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


T5_VOCAB_SIZE = 4 + len(WORDS) + len(LETTERS)


def tiny_t5_config(flan: bool = False, num_labels: int = 3, layers: int = 4, hidden: int = 32, heads: int = 4):
    """T5 (ReLU feed-forward, tied embeddings) or Flan-T5 / T5 v1.1 (gated GELU, untied head)
    shapes, with attention wider than hidden as in flan-t5-small (heads x d_kv != d_model)."""
    return T5Config(
        vocab_size=T5_VOCAB_SIZE,
        d_model=hidden,
        d_kv=hidden // heads + (4 if flan else 0),
        d_ff=hidden * 2,
        num_layers=layers,
        num_decoder_layers=layers // 2 if flan else layers,
        num_heads=heads,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=24,
        feed_forward_proj="gated-gelu" if flan else "relu",
        tie_word_embeddings=not flan,
        num_labels=num_labels,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def make_t5_checkpoint(
    directory: Path, flan: bool = False, task: str = "text2text-generation", num_labels: int = 3, seed: int = 0, **sizes
) -> Path:
    """A tiny random T5 or Flan-T5 checkpoint for ``task``."""
    config = tiny_t5_config(flan, num_labels=num_labels, **sizes)
    if task == "text-classification":
        name_labels(config, num_labels)
    torch.manual_seed(seed)
    if task == "text-classification":
        model = AutoModelForSequenceClassification.from_config(config)
    elif task == "feature-extraction":
        model = T5EncoderModel(config)
    else:
        model = T5ForConditionalGeneration(config)
    _sharpen(model)
    model.save_pretrained(directory)
    tiny_t5_tokenizer(max_length=256).save_pretrained(directory)
    return Path(directory)


def tiny_byte_level_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE over the 256 byte symbols plus a few word merges,
    with <|endoftext|> as beginning, end and padding token (as GPT-2 and Llama use one)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    merges = []
    for word in ("the", "film", "movie", "story"):
        pieces = "\u0120" + word
        current = pieces[0]
        for char in pieces[1:]:
            merges.append((current, char))
            current += char
            vocab.setdefault(current, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
        model_max_length=max_length, model_input_names=["input_ids", "attention_mask"],
    )


DECODER_VOCAB_SIZE = len(tiny_byte_level_tokenizer(128))


#: Decoder-only families with a tiny config each (``tiny_decoder_config``).
DECODER_CONFIG_FAMILIES = ("gpt2", "llama", "qwen2", "qwen3", "mistral", "phi3", "gemma", "gemma2", "gemma3")
#: The sliding window of the tiny configs that have one: short enough to bite on a 40-token prompt.
TINY_WINDOW = 8
#: Gemma's tiny configs: a wider weight init (peaked attention), and soft caps near the logits' size.
GEMMA_INIT = 0.2
GEMMA2_ATTENTION_CAP = 3.0
GEMMA_FINAL_CAP = 2.0


def tiny_decoder_config(family: str, num_labels: int = 3, layers: int = 4, hidden: int = 32, heads: int = 4):
    """GPT-2, or a Llama-shaped decoder with grouped-query attention (2 key/value heads), each as close
    to the real architecture as its config class allows:

    * qwen2: tied embeddings (as Qwen2.5's small models), q/k/v biases, the upper half of the layers
      sliding (``max_window_layers``);
    * qwen3: tied, per-head query/key norms, a head_dim wider than hidden / heads;
    * mistral: untied, a window in every layer;
    * phi3: fused projections, partial rotary (half of each head), a window in every layer;
    * gemma, gemma2, gemma3: tied, a head_dim wider than hidden / heads and a ``query_pre_attn_scalar``
      apart from it, weights drawn 10x wider than the default (``GEMMA_INIT``) so that attention is
      peaked and the soft caps bite.  gemma2: local and global layers alternating (``TINY_WINDOW``),
      attention logits capped at ``GEMMA2_ATTENTION_CAP`` and final logits at ``GEMMA_FINAL_CAP``;
      gemma3: per-head query/key norms, two local layers per global one, each type with its own
      rotary base (the global one scaled linearly, as Gemma 3 4B and larger), final logits capped.
    """
    eos = DECODER_VOCAB_SIZE - 1
    if family == "gpt2":
        return GPT2Config(
            vocab_size=DECODER_VOCAB_SIZE, n_positions=128, n_embd=hidden, n_layer=layers, n_head=heads,
            bos_token_id=eos, eos_token_id=eos, num_labels=num_labels,
        )
    common = dict(
        vocab_size=DECODER_VOCAB_SIZE, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=128,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, num_labels=num_labels, tie_word_embeddings=False,
    )
    if family == "qwen2":
        return Qwen2Config(**{**common, "tie_word_embeddings": True}, use_sliding_window=True, sliding_window=TINY_WINDOW,
                           max_window_layers=layers // 2)
    if family == "qwen3":
        return Qwen3Config(**{**common, "tie_word_embeddings": True}, head_dim=2 * hidden // heads)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=TINY_WINDOW)
    if family == "phi3":
        return Phi3Config(**common, partial_rotary_factor=0.5, sliding_window=TINY_WINDOW)
    if family.startswith("gemma"):
        gemma = {**common, "tie_word_embeddings": True, "head_dim": 2 * hidden // heads,
                 "query_pre_attn_scalar": 3 * hidden // heads, "initializer_range": GEMMA_INIT}
        if family == "gemma2":
            return Gemma2Config(**gemma, sliding_window=TINY_WINDOW, attn_logit_softcapping=GEMMA2_ATTENTION_CAP,
                                final_logit_softcapping=GEMMA_FINAL_CAP)
        if family == "gemma3":
            layer_types = ["full_attention" if (index + 1) % 3 == 0 else "sliding_attention" for index in range(layers)]
            return Gemma3TextConfig(**gemma, sliding_window=TINY_WINDOW, layer_types=layer_types,
                                    final_logit_softcapping=GEMMA_FINAL_CAP, rope_local_base_freq=10_000.0,
                                    rope_scaling={"rope_type": "linear", "factor": 8.0})
        return GemmaConfig(**{key: value for key, value in gemma.items() if key != "query_pre_attn_scalar"})
    return LlamaConfig(**{key: value for key, value in common.items() if key != "pad_token_id"})


def make_decoder_checkpoint(
    directory: Path, family: str = "gpt2", task: str = "text-generation", num_labels: int = 3, seed: int = 0, **sizes
) -> Path:
    """A tiny random GPT-2 or Llama checkpoint for ``task``."""
    from transformers import AutoModelForCausalLM

    config = tiny_decoder_config(family, num_labels=num_labels, **sizes)
    if task == "text-classification":
        name_labels(config, num_labels)
    torch.manual_seed(seed)
    auto = AutoModelForSequenceClassification if task == "text-classification" else AutoModelForCausalLM
    model = auto.from_config(config)
    with torch.no_grad():  # random heads give logits near 0.01; these make 1e-4 meaningful
        for name, parameter in model.named_parameters():
            if name.startswith("score."):
                parameter.mul_(20.0)
    model.save_pretrained(directory)
    tiny_byte_level_tokenizer(max_length=128).save_pretrained(directory)
    return Path(directory)


def _size_kwargs(layers: int, hidden: int, heads: int) -> dict:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=hidden * 2)


def tiny_config(family: str, num_labels: int = 3, layers: int = 4, hidden: int = 32, heads: int = 4, pooling: str = "cls"):
    vocab_size = 5 + len(WORDS) + 2 * len(LETTERS)
    common = dict(vocab_size=vocab_size, num_labels=num_labels, max_position_embeddings=128)
    if family == "bert":
        return BertConfig(**common, **_size_kwargs(layers, hidden, heads), type_vocab_size=2, pad_token_id=0)
    if family in ("roberta", "xlm-roberta"):
        config_class = RobertaConfig if family == "roberta" else XLMRobertaConfig
        return config_class(
            **{**common, "max_position_embeddings": 130},
            **_size_kwargs(layers, hidden, heads),
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
    if family == "electra":
        return ElectraConfig(**common, **_size_kwargs(layers, hidden, heads), embedding_size=hidden // 2, pad_token_id=0)
    if family == "distilbert":
        return DistilBertConfig(
            **common, n_layers=layers, dim=hidden, n_heads=heads, hidden_dim=hidden * 2, pad_token_id=0
        )
    if family == "mpnet":
        # transformers buckets MPNet's bias into 32 whatever the config says (a smaller table is read past its
        # end): exact up to 7 apart, then shared log-spaced buckets to 128, which 40 to 128 tokens reach.
        return MPNetConfig(
            **{**common, "max_position_embeddings": 130}, **_size_kwargs(layers, hidden, heads),
            relative_attention_num_buckets=32, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        )
    if family == "albert":
        # As albert-base-v2: one layer shared by every application, embeddings narrower than the hidden size.
        return AlbertConfig(
            **common, **_size_kwargs(layers, hidden, heads), embedding_size=hidden // 2, num_hidden_groups=1,
            inner_group_num=1, type_vocab_size=2, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        )
    if family == "modernbert":
        from transformers import ModernBertConfig

        # A window of 8 (4 each side) and a global layer every 2: both kinds bite at the validation's 40 tokens.
        return ModernBertConfig(
            **common, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=hidden * 3 // 2, local_attention=8, global_attn_every_n_layers=2,
            pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3, classifier_pooling=pooling,
        )
    if family == "deberta-v2":
        from transformers import DebertaV2Config

        # DeBERTa-v3's shape (shared position keys, c2p and p2c, LayerNorm'd relative embeddings, no absolute
        # positions or token types); 8 buckets over 32 distances, so the log buckets bite at 40 to 128 tokens.
        return DebertaV2Config(
            **common, **_size_kwargs(layers, hidden, heads), relative_attention=True, pos_att_type=["p2c", "c2p"],
            share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0,
            position_buckets=8, max_relative_positions=32, pad_token_id=0,
        )
    raise ValueError(family)


FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "modernbert", "mpnet", "albert", "deberta-v2")


def make_checkpoint(
    directory: Path, family: str = "bert", task: str = "text-classification", num_labels: int = 3, seed: int = 0,
    sharpen: bool = True, config_overrides: Optional[dict] = None, **sizes
) -> Path:
    """Write a tiny random checkpoint (config, weights, tokenizer) to ``directory``;
    ``config_overrides`` set config attributes before the model is built (a variant's options)."""
    config = tiny_config(family, num_labels=num_labels, **sizes)
    for attribute, value in (config_overrides or {}).items():
        setattr(config, attribute, value)
    if task == "text-classification" and num_labels > 1:
        name_labels(config, num_labels)
    torch.manual_seed(seed)
    auto = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    model = auto.from_config(config)
    if sharpen:
        _sharpen(model)
    model.save_pretrained(directory)
    specials = ROBERTA_SPECIALS if family in ("roberta", "xlm-roberta", "mpnet") else BERT_SPECIALS
    tiny_tokenizer(specials, max_length=128).save_pretrained(directory)
    return Path(directory)


def _sharpen(model: torch.nn.Module) -> None:
    """Make random weights behave like trained ones where the tests care.

    Random init gives near-uniform attention, so ACC scores differ only in
    their last digits and float rounding decides ties: larger query/key weights
    make attention peaked.  A random head gives logits near 0.01, which would
    make a 1e-4 tolerance meaningless: a larger head gives logits of order 1.
    """
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("query.weight", "key.weight", "q_lin.weight", "k_lin.weight")):
                parameter.mul_(8.0)
            if name.endswith("attn.Wqkv.weight"):  # ModernBERT: query, key and value rows in one matrix
                parameter[: 2 * parameter.shape[1]].mul_(8.0)
            if name.endswith(("attn.q.weight", "attn.k.weight")):  # MPNet
                parameter.mul_(8.0)
            if name.endswith(("query_proj.weight", "key_proj.weight")):  # DeBERTa, including its position projections
                parameter.mul_(8.0)
            if name.endswith("encoder.relative_attention_bias.weight"):  # MPNet's bias, initialised near 0.02
                parameter.mul_(50.0)
            if name.endswith(("SelfAttention.q.weight", "SelfAttention.k.weight")):
                parameter.mul_(1.5)  # T5's init already gives unit-scale scores (it does not divide by sqrt(d_kv))
            if name == "classification_head.out_proj.weight":
                parameter.mul_(4.0)
            if name.startswith(("classifier.", "pre_classifier.")) and name.endswith("weight"):
                parameter.mul_(20.0)
            if name.endswith(("pooler.dense.weight", "albert.pooler.weight")) or name == "pooler.weight":
                parameter.mul_(4.0)


# --- BART, mBART and Marian ---------------------------------------------------------

SEQ2SEQ_FAMILIES = ("bart", "mbart", "marian")
#: mBART's language codes close its vocabulary; sources end "</s> en_XX", mBART-50 forces the target's.
MBART_LANGUAGES = ("en_XX", "de_DE")


def _seq2seq_vocabulary(family: str) -> list[str]:
    pieces = ["\u2581"] + ["\u2581" + word for word in WORDS] + list(LETTERS)
    if family == "marian":  # as opus-mt: </s> 0, <unk> 1, padding the last id
        return ["</s>", "<unk>", *pieces, "<pad>"]
    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq's order, as BART and mBART
    return [*specials, *pieces, "<mask>", *(MBART_LANGUAGES if family == "mbart" else ())]


def tiny_seq2seq_tokenizer(family: str, max_length: int = 128) -> PreTrainedTokenizerFast:
    """A SentencePiece-style (Unigram, Metaspace) tokenizer with the family's special tokens and template:
    BART "<s> $A </s>", mBART "$A </s> en_XX", Marian "$A </s>"."""
    vocabulary = _seq2seq_vocabulary(family)
    ids = {token: index for index, token in enumerate(vocabulary)}
    scores = [(token, -3.0 if token.startswith("\u2581") and len(token) > 1 else -5.0) for token in vocabulary]
    backend = Tokenizer(models.Unigram(scores, unk_id=ids["<unk>"]))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    template = {"bart": "<s> $A </s>", "mbart": "$A </s> en_XX", "marian": "$A </s>"}[family]
    specials = [token for token in ("<s>", "</s>", "en_XX") if token in template]
    backend.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(token, ids[token]) for token in specials]
    )
    named = dict(eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    if family != "marian":
        named.update(bos_token="<s>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    if family == "mbart":
        named["additional_special_tokens"] = list(MBART_LANGUAGES)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, model_max_length=max_length, model_input_names=["input_ids", "attention_mask"], **named
    )


def tiny_seq2seq_config(family: str, num_labels: int = 3, layers: int = 2, hidden: int = 32, heads: int = 4):
    """As close to the real shapes as the config classes allow: BART post-LN with learned positions
    (offset 2), the embedding LayerNorm and tied embeddings; mBART the same but pre-LN with final
    LayerNorms and a scaled embedding; Marian post-LN, sinusoidal, a scaled embedding, SiLU, and
    padding as its decoder start token.  ``make_seq2seq_checkpoint`` adds what lives in the generation
    config: mBART-50's forced target language, and opus-mt's ban on generating padding."""
    from transformers import BartConfig, MarianConfig, MBartConfig

    vocabulary = _seq2seq_vocabulary(family)
    common = dict(
        vocab_size=len(vocabulary), d_model=hidden, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=hidden * 2,
        decoder_ffn_dim=hidden * 2, max_position_embeddings=128, num_labels=num_labels,
    )
    if family == "marian":
        pad = len(vocabulary) - 1
        return MarianConfig(
            **common, decoder_vocab_size=len(vocabulary), pad_token_id=pad, eos_token_id=0, decoder_start_token_id=pad,
            forced_eos_token_id=0, scale_embedding=True, activation_function="swish", share_encoder_decoder_embeddings=True,
        )
    if family == "mbart":
        return MBartConfig(
            **common, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
            scale_embedding=True,
        )
    return BartConfig(**common, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)


def make_seq2seq_checkpoint(
    directory: Path, family: str = "bart", task: str = "text2text-generation", num_labels: int = 3, seed: int = 0, **sizes
) -> Path:
    """A tiny random BART, mBART or Marian checkpoint for ``task`` (feature extraction: the bare ``*Model``)."""
    from transformers import AutoModelForSeq2SeqLM

    config = tiny_seq2seq_config(family, num_labels=num_labels, **sizes)
    if task == "text-classification":
        name_labels(config, num_labels)
    torch.manual_seed(seed)
    auto = {"text-classification": AutoModelForSequenceClassification, "feature-extraction": AutoModel}.get(
        task, AutoModelForSeq2SeqLM
    )
    model = auto.from_config(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
                parameter.mul_(6.0)  # peaked attention: ACC ties would leave the kept set to rounding
            if name.endswith("embed_positions.weight") and parameter.requires_grad:
                parameter.mul_(4.0)  # learned positions as large as the tokens', so that a wrong one shows
            if name == "classification_head.out_proj.weight":
                parameter.mul_(20.0)
        if hasattr(model, "final_logits_bias"):  # zero at init; a graph that forgot it would pass unseen
            model.final_logits_bias.normal_(0.0, 0.5)
    if family == "marian" and getattr(model, "generation_config", None) is not None:
        model.generation_config.bad_words_ids = [[config.pad_token_id]]  # as every opus-mt checkpoint
    if family == "mbart" and getattr(model, "generation_config", None) is not None:
        model.generation_config.forced_bos_token_id = _seq2seq_vocabulary(family).index("de_DE")  # as mBART-50
    model.save_pretrained(directory)
    tiny_seq2seq_tokenizer(family).save_pretrained(directory)
    return Path(directory)

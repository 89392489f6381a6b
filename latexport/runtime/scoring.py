"""The scoring rule: which word-vectors a layer keeps, once the profile has said how many.

The paper's rule scores every word-vector by its Attention Context
Contribution (ACC), the attention it receives summed over heads and all valid
queries, and keeps the best.  That is ``ScoringRule()``, the rule of every
encoder.

A decoder's prompt pass has one job: the next tokens.  Its rule
(``DECODER_PROMPT_RULE``) differs in five ways:

* ``last_queries``: ACC counts only the attention of the prompt's last W
  positions, the ones that predict what comes next.
* ``span_before``, ``span_after``: each score is spread over the phrase
  around it, a sliding max.  The last queries point at one or two tokens of
  a fact (in "The pass key is 73411. ... 73411 is the pass key.", at the
  final "the"), and a fact kept in part is lost: the span keeps it whole.
* ``sinks``: the first S tokens are always kept.  Decoders park attention on
  them ("attention sinks"), and losing them shifts every later attention
  distribution.
* ``recent``: the last R tokens are kept before any scored one.  A
  continuation leans on its recent context most.
* ``copy_ngram``, ``copy_span``: when the prompt's last G tokens occurred
  earlier in it, that occurrence and the C tokens that follow it are kept
  next, before any scored one.  A continuation that repeats an earlier passage
  (a quoted paragraph, a story a digest runs twice, code that repeats)
  copies it from there, and the last queries point at its first token or
  two only.

Measured with the published SmolLM2-135M (no fine-tuning), eager PyTorch,
FLOPs-estimated speedup 2.07x (keep_ratio 0.1, power 1.5): perplexity of the
next 64 tokens after 1,024-token prompts, 2 of each of four kinds of text,
and a pass key at 10 depths of a 1,000-token filler prompt (10 of 10 at 1.0):

=====================================================  ======  ========
rule                                                   rise    pass key
=====================================================  ======  ========
last 128, sinks 4, recent 128 (``LAST_QUERIES_RULE``)  +3.5%   2
last 16, spread 16 each way, recent 128                +6.3%   8
last 16, spread 24 before / 8 after, recent 128        +6.2%   9
the same, recent 192 (``DECODER_PROMPT_RULE``)         +3.9%   9
=====================================================  ======  ========

With the whole fact protected by hand in every layer (an oracle) the pass key
is 10 of 10, so the choice of survivors, not the budget, decides it.

The copy sources, measured the same way at 2,048 tokens (3 prompts of each
kind, FLOPs-estimated 1.86x at keep_ratio 0.2): one news prompt continues
with 63 tokens that its digest printed earlier word for word.  Without the
copy tier its perplexity rose by +1,463% and the mean of the four kinds by
+39.7%; with the last 8 tokens matched and the 128 tokens after a match kept,
+38% and +4.9%.  No other prompt changed by more than one point.  The copying
prompt still lost its first copied tokens (the first rose from 0.17 to 11.1
nats) until the earlier occurrence itself was kept too, which an induction
head reads to find the source: with the prompt-pass profile at 0.4 (FLOPs
1.98x) that took the prompt from +51% to -4%, and the mean from +6.9% to +2.9%.

Protected tokens rank by tiers: the head's token first (the graph's
``always_keep``), then sinks, then recent tokens, then copy sources, then
the rest by score.  The graph realises the tiers by adding ``SINK_BONUS``,
``RECENT_BONUS`` and ``COPY_BONUS`` to the scores, which is exact while
every score stays below ``COPY_BONUS`` (``check``); within a tier, the
scores decide.

Numpy-free and torch-free: the runtime reads the rule from the file's
metadata (``latexport.scoring``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from latexport.runtime.errors import SettingsError

#: Added to a recent token's score, and to a sink's: each above any score a rule can give.
RECENT_BONUS = 1.0e4
SINK_BONUS = 2.0e4
#: Added to a copy source's score: below a recent token's, above any score.
COPY_BONUS = 5.0e3


@dataclass(frozen=True)
class ScoringRule:
    #: 0: ACC over every valid query (the paper); W > 0: only each row's last W valid queries.
    last_queries: int = 0
    #: Each row's first ``sinks`` tokens are kept before any scored one.
    sinks: int = 0
    #: Each row's last ``recent`` tokens are kept before any scored one (after the sinks).
    recent: int = 0
    #: A scored token lifts the ``span_before`` alive tokens before it and the
    #: ``span_after`` after it to its score (a sliding max): what a token means
    #: is spread over the phrase that leads up to it, so a fact survives whole.
    span_before: int = 0
    span_after: int = 0
    #: G > 0: where the row's last G tokens occurred earlier, that occurrence and
    #: the ``copy_span`` tokens after it are kept before any scored one.
    copy_ngram: int = 0
    copy_span: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SettingsError(f"scoring rule: {name} must be a whole number >= 0, got {value!r}")
        if (self.copy_ngram > 0) != (self.copy_span > 0):
            raise SettingsError("scoring rule: copy_ngram and copy_span are both set or both 0")

    @property
    def copies(self) -> bool:
        return self.copy_ngram > 0

    @property
    def spreads(self) -> bool:
        return self.span_before > 0 or self.span_after > 0

    @property
    def protects(self) -> bool:
        return self.sinks > 0 or self.recent > 0 or self.copies

    def check(self, num_heads: int, causal: bool) -> None:
        """Refuse a rule whose scores could reach the lowest protection bonus in a model of this width.

        A score is at most heads x counted queries (each query's probabilities sum
        to 1); a causal rule over all queries divides by the queries that see the key.
        """
        if not self.protects:
            return
        if self.last_queries == 0 and not causal:
            raise SettingsError("a scoring rule that protects tokens must count the last queries, or be causal")
        bound = num_heads * (self.last_queries if self.last_queries else 1)
        lowest_bonus = COPY_BONUS if self.copies else RECENT_BONUS
        if bound >= lowest_bonus:
            raise SettingsError(
                f"scoring rule: {num_heads} heads x {self.last_queries} queries can score {bound}, "
                f"not below the protection bonus {lowest_bonus:g}; count fewer queries"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ScoringRule":
        fields = json.loads(text)
        names = ("last_queries", "sinks", "recent", "span_before", "span_after", "copy_ngram", "copy_span")
        return cls(**{name: int(fields.get(name, 0)) for name in names})

    def describe(self) -> str:
        if self == ScoringRule():
            return "ACC over all queries"
        queries = f"the last {self.last_queries} queries" if self.last_queries else "all queries"
        text = f"ACC over {queries}, first {self.sinks} and last {self.recent} tokens kept"
        if self.spreads:
            text += f", each score spread over the {self.span_before} tokens before and {self.span_after} after"
        if self.copies:
            text += f", an earlier occurrence of the last {self.copy_ngram} and the {self.copy_span} tokens after it kept next"
        return text


#: The rule of a decoder's prompt pass (text-generation): module doc.
DECODER_PROMPT_RULE = ScoringRule(
    last_queries=16, sinks=4, recent=192, span_before=24, span_after=8, copy_ngram=8, copy_span=128
)
#: The decoder rule before copy sources, kept as the measured ablation.
SPREAD_RULE = ScoringRule(last_queries=16, sinks=4, recent=192, span_before=24, span_after=8)
#: The previous decoder rule (no spread), kept as the measured ablation.
LAST_QUERIES_RULE = ScoringRule(last_queries=128, sinks=4, recent=128)

"""Query spelling correction against the catalog's own words.

Shoppers misspell ("toliet seat", "milwakee drill") and run words together
("washerparts"). BM25 finds nothing for a word no product contains, and the towers and
the reranker see a word piece salad. :class:`SpellCorrector` rewrites only the words
that are unknown, to a word the catalog uses, so every stage searches the corrected
text and the response says what changed.

A word is left alone when it is:

- shorter than :data:`MIN_WORD_CHARS` characters, or contains a digit (sizes and model
  numbers such as ``2x4`` or ``m18`` are matched as written);
- in the catalog (any count), or has the same Snowball stem as a catalog word
  (``sectionals`` when the catalog says ``sectional``): the lexical index stems too;
- a known word passed in by the caller (the service passes the whole words of the query
  tower's vocabulary, so real English words the catalog lacks, "swamp", "routing", are
  not "corrected" into catalog words).

Otherwise the replacement is, in order of preference: a catalog word one edit away
(insert, delete, substitute, transpose), then a split into two catalog words
("concretetile" -> "concrete tile"), then a word two edits away (words of six or more
characters only). Ties go to the word more products use. Only words used by at least
``min_count`` products are targets, so one product's typo is not spread to queries.
A candidate that only drops characters from either end ("unframed" -> "framed") is
refused: it changes the meaning rather than the spelling.

Measured on the Home Depot dev split (protocol A, README "Query rewriting"): alone, it adds
0.016 nDCG@10 to BM25 and 0.011 to the fine-tuned RRF hybrid; 175 of 1,248 queries change.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

from shopsearch.retrieval.types import QueryRewrite, RewriteChange

__all__ = [
    "MIN_WORD_CHARS",
    "SpellCorrector",
    "words",
]

#: Words shorter than this are never corrected: too many short words are one edit apart.
MIN_WORD_CHARS = 4
#: Words up to this length get at most one edit; longer ones up to two.
ONE_EDIT_MAX_CHARS = 5
#: Both halves of a split must have at least this many characters ("cell phone", not "c ellphone").
SPLIT_MIN_CHARS = 3

# Letters only (any script): digits and punctuation stay as typed.
_WORD = re.compile(r"[^\W\d_]+")
_HAS_DIGIT = re.compile(r"\d")


def words(text: str) -> list[str]:
    """The case-folded letter runs of ``text`` (the unit the corrector works on)."""
    return [w.casefold() for w in _WORD.findall(text)]


class SpellCorrector:
    """Corrects unknown query words to catalog words (see the module docstring).

    ``counts`` maps a case-folded word to the number of products using it. Building costs
    about a second per 50,000 product titles (symspell precomputes deletions);
    :meth:`correct` is sub-millisecond. Thread-safe for concurrent :meth:`correct` calls;
    :meth:`add_known` may run alongside them (it only adds set/dict members).
    """

    def __init__(
        self,
        counts: Mapping[str, int],
        *,
        known_words: Iterable[str] = (),
        min_count: int = 3,
        max_edit_distance: int = 2,
    ) -> None:
        import snowballstemmer
        from symspellpy import SymSpell, Verbosity

        self._closest = Verbosity.CLOSEST

        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_edit_distance not in (1, 2):
            raise ValueError(f"max_edit_distance must be 1 or 2, got {max_edit_distance}")
        self.min_count = min_count
        self.max_edit_distance = max_edit_distance
        self._stemmer = snowballstemmer.stemmer("english")
        self._counts: dict[str, int] = dict(counts)
        self._known: set[str] = {w.casefold() for w in known_words}
        self._stems: set[str] = set(self._stemmer.stemWords(list(self._counts)))
        self._symspell = SymSpell(max_dictionary_edit_distance=max_edit_distance, prefix_length=7)
        for word, count in self._counts.items():
            if count >= min_count and len(word) >= SPLIT_MIN_CHARS:
                self._symspell.create_dictionary_entry(word, count)

    @classmethod
    def from_texts(cls, texts: Iterable[str], **kwargs: object) -> SpellCorrector:
        """Count each word once per text (a text is one product's searchable words)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(set(words(text)))
        return cls(counts, **kwargs)  # type: ignore[arg-type]

    @property
    def vocabulary_size(self) -> int:
        """Distinct catalog words known to the corrector."""
        return len(self._counts)

    def add_known(self, texts: Iterable[str]) -> None:
        """Make the words of ``texts`` known (never corrected), e.g. of products upserted
        since the build. They become correction targets only when the corrector is
        rebuilt: the symspell index is not changed under concurrent readers."""
        new = {w for text in texts for w in words(text)} - self._counts.keys()
        for word in new:
            self._counts[word] = 1
        self._stems.update(self._stemmer.stemWords(list(new)))

    def _is_known(self, word: str) -> bool:
        return (
            word in self._counts
            or word in self._known
            or self._stemmer.stemWord(word) in self._stems
        )

    def suggest(self, word: str) -> str | None:
        """The replacement for one case-folded word, or None to keep it."""
        if len(word) < MIN_WORD_CHARS or _HAS_DIGIT.search(word) or self._is_known(word):
            return None
        limit = 1 if len(word) <= ONE_EDIT_MAX_CHARS else self.max_edit_distance
        # CLOSEST: the suggestions at the smallest distance, most used first.
        found = self._symspell.lookup(word, self._closest, max_edit_distance=limit)
        if found and _only_trims(word, found[0].term):
            return None  # the nearest catalog word is a different word inside this one
        edit = (found[0].distance, found[0].term) if found else None
        if edit is not None and edit[0] <= 1:
            return edit[1]
        split = self._split(word)
        if split is not None:
            return split
        return None if edit is None else edit[1]

    def _split(self, word: str) -> str | None:
        best: tuple[int, str] | None = None
        for i in range(SPLIT_MIN_CHARS, len(word) - SPLIT_MIN_CHARS + 1):
            left, right = word[:i], word[i:]
            support = min(self._counts.get(left, 0), self._counts.get(right, 0))
            if support >= self.min_count and (best is None or support > best[0]):
                best = (support, f"{left} {right}")
        return None if best is None else best[1]

    def count(self, word: str) -> int:
        """Products using the case-folded ``word`` (0 when unknown)."""
        return self._counts.get(word, 0)

    def correct(self, query: str) -> QueryRewrite:
        """``query`` with each unknown word replaced; everything else (spacing and
        punctuation included) as typed. Changes have reason ``"spelling"``."""
        changes: list[RewriteChange] = []

        def replace(match: re.Match[str]) -> str:
            typed = match.group(0)
            fixed = self.suggest(typed.casefold())
            if fixed is None:
                return typed
            changes.append(RewriteChange(typed, fixed, "spelling"))
            return fixed

        text = _WORD.sub(replace, query)
        return QueryRewrite(original=query, text=text, changes=tuple(changes))


def _only_trims(word: str, candidate: str) -> bool:
    """True when ``candidate`` is ``word`` minus two or more characters at its ends
    ("unframed" -> "framed"): a different word, not a misspelling of it."""
    return len(word) - len(candidate) >= 2 and candidate in word

"""Suggestions as you type: prefix completion over a catalog's own words and phrases.

:class:`SuggestIndex` is built from one snapshot's live products and answers a typed
prefix ("cordless dr") with the catalog phrases that start with it, ranked by how many
products contain them (document frequency, ``df``). Candidates are:

- ``phrase``: every run of 1 to :data:`MAX_PHRASE_WORDS` words of a title that starts at
  a word boundary ("cordless", "cordless drill", "cordless drill kit"); a run of two or
  more words must occur in at least ``min_df`` products (one product's word salad is not
  a suggestion); a run may not start or end with a stop word ("drill with", "of paint");
- ``brand``: a product's brand; ``category``: each level of a category path.

Words are the lower-cased runs of letters and digits, joined by ``'`` inside a word and
by ``.`` or ``/`` between digits ("1/2", "3.5", "men's"; "drill/driver", "jeld-wen" and
"2-light" are two words each, as the lexical analyzers see them and shoppers type them).
The texts live in one sorted list: a prefix is a contiguous range found with
:func:`bisect.bisect_left`, and the best ``size`` of that range by ``df`` come from one
``numpy.argpartition`` over its slice. On Home Depot (54,667 titles, about 123,000
phrases) a lookup costs well under a millisecond; the build 1.3 to 4 s on a busy
2-core machine (README "Suggestions as you type").

Never a suggestion that finds nothing: every suggestion's words are words of at least
one live product's title, brand or category, all of which the lexical leg indexes
(``retrieval/item_text.py``), all of them in one product: a phrase is a run of one
title, and a completion kept after typed words ("red cordless drill") is kept only when
some product has every word of the whole text. That product matches the suggestion
under any lexical rule, from "any word" (BM25) to "every word". The service rewrites
queries before searching (units, spelling); a suggestion it would rewrite into words
no one product has is dropped (``searched`` of :meth:`SuggestIndex.suggest`).
``products`` is a lower bound of the products the suggestion matches: those containing
the phrase itself (with a typed head: every word of the whole text).

Typing mistakes: when the prefix as typed finds fewer than ``size`` suggestions, each
finished word the catalog does not know is replaced by a catalog word one edit away
(or by the caller's corrector: the service passes its spelling corrector, which also
knows two edits and splits), and the word being typed (three or more characters) by the
catalog word prefixes one edit away ("drlil" -> "drill", "cordles dr" -> "cordless dr").

Popular past queries live in :mod:`retrieval.popular_queries`. Everything here is pure: no I/O, no
threads; the API's ``api/suggestions.py`` decides when to build and refresh.
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.types import Product

__all__ = [
    "KINDS",
    "MAX_PHRASE_WORDS",
    "PREFIX_END",
    "SuggestIndex",
    "Suggestion",
    "normalize",
    "tokens",
    "top_by_count",
]

#: Longest catalog phrase, in words (``SuggestIndex.build`` spells the three out, for
#: speed). Longer typed input completes its last words.
MAX_PHRASE_WORDS = 3
#: Kinds of a suggestion; when one text is several, the first listed here wins.
KINDS = ("query", "brand", "category", "phrase")
#: A phrase of 2+ words must occur in this many products (1 for single words: every
#: catalog word can be completed, so a rare product is still reachable by name).
DEFAULT_MIN_DF = 2
#: Most phrases one index keeps (the most used first): bounds memory on huge catalogs.
DEFAULT_MAX_PHRASES = 300_000
#: The word being typed is corrected (one edit) only from this many characters on.
FUZZY_MIN_CHARS = 3
#: Longest word indexed: longer runs are part numbers and URLs, not words to complete.
MAX_WORD_CHARS = 30
#: Past queries longer than this many words are not counted.
MAX_QUERY_WORDS = 8
#: Longest past query counted, in characters (the suggest endpoint's own limit).
MAX_QUERY_CHARS = 100

# Words that neither start nor end a phrase ("with", "x" in "2 in. x 4 in.").
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "by",
        "for",
        "from",
        "in",
        "into",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "to",
        "with",
        "w",
        "x",
    ]
)
_TOKEN = re.compile(r"\w+(?:(?:'|(?<=\d)[./](?=\d))\w+)*")
_PHRASE, _BRAND, _CATEGORY = KINDS.index("phrase"), KINDS.index("brand"), KINDS.index("category")
PREFIX_END = "\U0010ffff"  # sorts after every character: key + PREFIX_END closes a prefix range


def tokens(text: str) -> list[str]:
    """The case-folded words of ``text`` as suggestions see them (module docstring).

    >>> tokens("DeWalt 20V Drill/Driver, 1/2 in. (Tool-Only) 3.5")
    ['dewalt', '20v', 'drill', 'driver', '1/2', 'in', 'tool', 'only', '3.5']
    """
    return _TOKEN.findall(text.casefold())


def normalize(text: str) -> str:
    """``text`` as its words joined by single spaces (the form suggestions are in)."""
    return " ".join(tokens(text))


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One suggestion: the text to search, its source, and a lower bound of the
    products it matches."""

    text: str
    kind: str
    products: int


def _edge_ok(word: str) -> bool:
    return word not in _STOP and (len(word) > 1 or word.isdigit())


def top_by_count(values: npt.NDArray[np.int32], lo: int, hi: int, k: int) -> list[int]:
    """Indexes in ``[lo, hi)`` of the ``k`` largest values, largest first (ties: lower
    index first, i.e. alphabetical)."""
    if hi <= lo or k <= 0:
        return []
    seg = values[lo:hi]
    idx = np.arange(hi - lo) if hi - lo <= k else np.argpartition(-seg, k - 1)[:k]
    order = np.lexsort((idx, -seg[idx]))
    return [lo + int(i) for i in idx[order]]


class SuggestIndex:
    """Catalog phrases of one snapshot, sorted for prefix lookup (module docstring).

    Immutable after :meth:`build`; :meth:`suggest` and :meth:`count_all` are safe from
    any number of threads.
    """

    def __init__(
        self,
        texts: list[str],
        df: npt.NDArray[np.int32],
        kinds: npt.NDArray[np.int8],
        postings: dict[str, npt.NDArray[np.int32]],
    ) -> None:
        self.texts = texts
        self.df = df
        self.kinds = kinds
        #: word -> sorted ids of the products using it (title, brand or category).
        self.postings = postings
        self.words = sorted(postings)
        self.word_df = np.array([len(postings[w]) for w in self.words], dtype=np.int32)
        self.alphabet = "".join(sorted({c for w in self.words for c in w}))

    @classmethod
    def build(
        cls,
        products: Iterable[Product],
        *,
        min_df: int = DEFAULT_MIN_DF,
        max_phrases: int = DEFAULT_MAX_PHRASES,
    ) -> SuggestIndex:
        """Count the phrases, brands and category levels of ``products`` (the live ones
        of a snapshot) once per product, keep those allowed (module docstring) and the
        ``max_phrases`` most used, and sort them."""
        if min_df < 1 or max_phrases < 1:
            raise ValueError(f"min_df and max_phrases must be >= 1, got {min_df}, {max_phrases}")
        phrases: Counter[str] = Counter()
        named: dict[int, Counter[str]] = {_BRAND: Counter(), _CATEGORY: Counter()}
        postings: defaultdict[str, list[int]] = defaultdict(list)
        edge: dict[str, bool] = {}  # word -> may start or end a phrase (memo)
        for pid, product in enumerate(products):
            words = [w for w in tokens(product.title) if len(w) <= MAX_WORD_CHARS]
            ok = [edge[w] if w in edge else edge.setdefault(w, _edge_ok(w)) for w in words]
            grams: set[str] = set()
            n = len(words)
            for i in range(n):  # the 1-, 2- and 3-word runs (MAX_PHRASE_WORDS) from i
                if not ok[i]:
                    continue
                grams.add(words[i])
                if i + 1 < n:
                    two = f"{words[i]} {words[i + 1]}"
                    if ok[i + 1]:
                        grams.add(two)
                    if i + 2 < n and ok[i + 2]:
                        grams.add(f"{two} {words[i + 2]}")
            phrases.update(grams)
            used = set(words)
            if product.brand or product.category:
                levels = [normalize(level) for level in product.category.split(">")]
                for kind, texts in ((_BRAND, [normalize(product.brand)]), (_CATEGORY, levels)):
                    for text in set(texts) - {""}:
                        named[kind][text] += 1
                        used.update(text.split())
            for word in used:
                postings[word].append(pid)
        best: dict[str, tuple[int, int]] = {}  # text -> (kind, df)
        for text, count in phrases.items():
            if count >= min_df or " " not in text:
                best[text] = (_PHRASE, count)
        for kind in (_CATEGORY, _BRAND):  # brand last: it wins over category and phrase
            for text, count in named[kind].items():
                best[text] = (kind, max(count, best.get(text, (kind, 0))[1]))
        if len(best) > max_phrases:
            kept = heapq.nlargest(max_phrases, best.items(), key=lambda item: item[1][1])
            best = dict(kept)
        texts = sorted(best)
        return cls(
            texts,
            np.array([best[t][1] for t in texts], dtype=np.int32),
            np.array([best[t][0] for t in texts], dtype=np.int8),
            {w: np.array(rows, dtype=np.int32) for w, rows in postings.items()},
        )

    def __len__(self) -> int:
        return len(self.texts)

    def _range(self, sorted_texts: Sequence[str], key: str) -> tuple[int, int]:
        lo = bisect.bisect_left(sorted_texts, key)
        return lo, bisect.bisect_left(sorted_texts, key + PREFIX_END, lo)

    def count_all(self, text: str) -> int:
        """Products whose title, brand or category has every word of ``text`` (0 when
        one is unknown, or ``text`` has none): a lower bound of what it matches."""
        rows = self._rows(tokens(text))
        return 0 if rows is None else int(rows.size)

    def suggest(
        self,
        typed: str,
        size: int,
        *,
        correct: Callable[[str], str | None] | None = None,
        searched: Callable[[str], str] | None = None,
    ) -> list[Suggestion]:
        """Up to ``size`` catalog suggestions for ``typed``, best first: the completions
        of the prefix as typed, then (when short of ``size``) of its corrected form.

        A trailing space means the last word is finished ("cordless " completes to
        "cordless drill", not "cordlessly"). Input longer than a phrase completes its
        last words and keeps the rest as typed (see module docstring). ``correct`` maps
        an unknown finished word to a replacement (words, space separated) or None.
        ``searched`` maps a suggestion to the text the service will search for it (its
        query rewriting): one whose rewritten words are in no one product is dropped
        (units rewriting turns "20v" into "20 v", which titles saying "20V" lack).
        """
        words = tokens(typed)
        if not words or size <= 0:
            return []
        open_end = not typed[-1:].isspace()
        found = _Found(size, self, searched)
        variants = [words]
        self._complete(words, open_end, size, found, shortest_head=True)
        if len(found) < size:
            variants += self._variants(words, open_end, correct)
            for variant in variants[1:]:
                self._complete(variant, open_end, size, found, shortest_head=True)
                if len(found) >= size:
                    break
        for variant in variants[:2]:  # none yet: complete a shorter tail, keep a longer head
            if found:
                break
            self._complete(variant, open_end, size, found, shortest_head=False)
        return list(found.values())

    def _complete(
        self,
        words: list[str],
        open_end: bool,
        size: int,
        found: _Found,
        *,
        shortest_head: bool,
    ) -> None:
        """Add the completions of the tail of ``words`` that is at most a phrase long,
        the words before it kept as a head; with ``shortest_head`` False, of the longest
        shorter tail that has any instead."""
        first = max(0, len(words) - MAX_PHRASE_WORDS)
        starts = [first] if shortest_head else range(first + 1, len(words))
        for start in starts:
            key = " ".join(words[start:]) + ("" if open_end else " ")
            lo, hi = self._range(self.texts, key)
            if lo == hi:
                continue
            if start == 0:
                for i in top_by_count(self.df, lo, hi, 2 * size):
                    found.add(self.texts[i], KINDS[self.kinds[i]], int(self.df[i]))
                return
            # With a head, a completion is kept only when some product has every word
            # of the whole text; ``products`` counts those products.
            head = self._rows(words[:start])
            if head is None:
                continue
            for i in top_by_count(self.df, lo, hi, 2 * size):
                rows = self._rows(self.texts[i].split(), head)
                if rows is not None:
                    found.add(f"{' '.join(words[:start])} {self.texts[i]}", "phrase", rows.size)
            return

    def _rows(
        self, words: Iterable[str], rows: npt.NDArray[np.int32] | None = None
    ) -> npt.NDArray[np.int32] | None:
        """Products (sorted ids) having every word of ``words`` (and in ``rows`` when
        given); None when there is none."""
        lists = [rows] if rows is not None else []
        for word in set(words):
            found = self.postings.get(word)
            if found is None:
                return None
            lists.append(found)
        if not lists:
            return None
        lists.sort(key=len)
        out = lists[0]
        for other in lists[1:]:  # smallest first: each step costs len(out) * log(len(other))
            at = np.searchsorted(other, out)
            np.minimum(at, len(other) - 1, out=at)
            out = out[other[at] == out]
            if out.size == 0:
                return None
        return out

    def _variants(
        self, words: list[str], open_end: bool, correct: Callable[[str], str | None] | None
    ) -> list[list[str]]:
        """``words`` with unknown finished words corrected and, when the last word is
        being typed, each of its best one-edit catalog prefixes; nothing when no word
        changes."""
        fixed: list[str] = []
        finished = words[:-1] if open_end else words
        for word in finished:
            replacement = None if word in self.postings else self._correct_word(word, correct)
            fixed.extend(replacement.split() if replacement else [word])
        if not open_end:
            return [fixed] if fixed != words else []
        last = words[-1]
        variants = [[*fixed, p] for p in self._prefix_variants(last)]
        if fixed != words[:-1]:
            variants.insert(0, [*fixed, last])
        return variants

    def _correct_word(self, word: str, correct: Callable[[str], str | None] | None) -> str | None:
        if len(word) >= FUZZY_MIN_CHARS and not any(c.isdigit() for c in word):
            near = [w for w in _edits(word, self.alphabet) if w in self.postings]
            if near:
                return max(near, key=lambda w: (len(self.postings[w]), w))
        return correct(word) if correct is not None else None

    def _prefix_variants(self, partial: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` strings one edit from ``partial`` that begin catalog words,
        those whose most used word is used most first; none for short or known
        prefixes, or ones with digits (sizes and model numbers are typed exactly)."""
        if len(partial) < FUZZY_MIN_CHARS or any(c.isdigit() for c in partial):
            return []
        if self._range(self.words, partial)[0] != self._range(self.words, partial)[1]:
            return []
        scored: list[tuple[int, str]] = []
        for variant in _edits(partial, self.alphabet):
            lo, hi = self._range(self.words, variant)
            if lo < hi:
                scored.append((int(self.word_df[lo:hi].max()), variant))
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [variant for _, variant in scored[:limit]]


class _Found(dict[str, Suggestion]):
    """Suggestions collected so far, in order, at most ``size``; each text once, and
    only when the service's rewriting of it (``searched``) still has all its words in
    one product."""

    def __init__(
        self, size: int, index: SuggestIndex, searched: Callable[[str], str] | None
    ) -> None:
        super().__init__()
        self.size = size
        self._index = index
        self._searched = searched

    def add(self, text: str, kind: str, products: int) -> None:
        if len(self) >= self.size or text in self:
            return
        if self._searched is not None:
            rewritten = self._searched(text)
            if rewritten != text and self._index.count_all(rewritten) == 0:
                return
        self[text] = Suggestion(text, kind, int(products))


def _edits(word: str, alphabet: str) -> set[str]:
    """Every string one delete, transpose, substitute or insert from ``word``."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    out = {a + b[1:] for a, b in splits if b}
    out |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    out |= {a + c + b[1:] for a, b in splits if b for c in alphabet}
    out |= {a + c + b for a, b in splits for c in alphabet}
    out.discard(word)
    out.discard("")
    return out

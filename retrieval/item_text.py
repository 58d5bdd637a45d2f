"""The one definition of the text a product is known by.

The item tower, the BM25 index's ``text`` field and the reranker all read this, so a
change here changes every stage at once (and a snapshot must be rebuilt).
"""

from __future__ import annotations

from shopsearch.retrieval.types import Product

__all__ = ["DESCRIPTION_CHARS", "item_text"]

#: Descriptions are cut to this many characters: MiniLM sees 256 word pieces at most
#: and the title, brand and category carry most of the signal for product search.
DESCRIPTION_CHARS = 300


def item_text(product: Product) -> str:
    """Return ``"title | brand | category | description"`` with empty parts left out.

    >>> item_text(Product(id="1", title="Cordless Drill", brand="DeWalt",
    ...                   category="Tools > Drills", description="A drill."))
    'Cordless Drill | DeWalt | Tools > Drills | A drill.'
    """
    description = product.description.strip()
    if len(description) > DESCRIPTION_CHARS:
        cut = description[:DESCRIPTION_CHARS]
        # Cut at a word boundary so the tokenizers do not see half a word.
        description = cut.rsplit(" ", 1)[0] if " " in cut else cut
    parts = [product.title.strip(), product.brand.strip(), product.category.strip(), description]
    return " | ".join(part for part in parts if part)

"""The embedding store: one content-keyed mechanism for image embeddings (the cache grown up).

``dermfm embed SOURCE STORE`` fills a store (:func:`embed_source`, engines ``local`` and
``ray``); evaluation, SAE training, adapters and indexes read stores; the user's embedding cache
is a store under ``DERMFM_CACHE/embeddings`` (:func:`cache_store`). See ``docs/scale.md``.
"""

from dermfm.store.core import (
    COLUMNS,
    EmbeddingStore,
    StoreError,
    cache_store,
    image_key,
    model_identity,
    preprocessing,
)
from dermfm.store.engines import ENGINES, EmbedReport, embed_items, embed_source
from dermfm.store.sources import Source, SourceItem, Unit, item_of, open_source

__all__ = [
    "COLUMNS",
    "ENGINES",
    "EmbedReport",
    "EmbeddingStore",
    "Source",
    "SourceItem",
    "StoreError",
    "Unit",
    "cache_store",
    "embed_items",
    "embed_source",
    "image_key",
    "item_of",
    "model_identity",
    "open_source",
    "preprocessing",
]

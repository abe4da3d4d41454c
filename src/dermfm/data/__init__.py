"""Training data: manifests, source-folder readers, caption synthesis, transforms, datasets."""

from dermfm.data.captions import VIEWS, CaptionSynthesizer
from dermfm.data.datasets import Batch, ManifestDataset, SampleBuilder, collate, sample_seed
from dermfm.data.manifest import ManifestError, Record, read_manifest, write_manifest
from dermfm.data.shards import PackReport, ShardDataset, pack_shards, read_shard_index
from dermfm.data.sources import hash_split, read_source, read_sources, source_specs
from dermfm.data.transforms import Augmentation, mask_region, train_transform

__all__ = [
    "VIEWS",
    "Augmentation",
    "Batch",
    "CaptionSynthesizer",
    "ManifestDataset",
    "ManifestError",
    "PackReport",
    "Record",
    "SampleBuilder",
    "ShardDataset",
    "collate",
    "hash_split",
    "mask_region",
    "pack_shards",
    "read_manifest",
    "read_shard_index",
    "read_source",
    "read_sources",
    "sample_seed",
    "source_specs",
    "train_transform",
    "write_manifest",
]

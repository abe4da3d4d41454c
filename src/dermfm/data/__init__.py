"""Data: manifests, dataset specs and readers, CLIP_benchmark webdatasets, captions, transforms."""

from dermfm.data.captions import VIEWS, CaptionSynthesizer
from dermfm.data.clip_benchmark import WdsExport, export_clip_benchmark_wds
from dermfm.data.dataset_spec import dataset_names, hash_split, load_dataset_spec, source_specs
from dermfm.data.datasets import Batch, ManifestDataset, SampleBuilder, collate, sample_seed
from dermfm.data.manifest import ManifestError, Record, read_manifest, write_manifest
from dermfm.data.shards import PackReport, ShardDataset, pack_shards, read_shard_index
from dermfm.data.sources import (
    DatasetRecords,
    ReadReport,
    read_clip_benchmark_wds,
    read_dataset,
    read_source,
    read_sources,
)
from dermfm.data.transforms import Augmentation, mask_region, train_transform

__all__ = [
    "VIEWS",
    "Augmentation",
    "Batch",
    "CaptionSynthesizer",
    "DatasetRecords",
    "ManifestDataset",
    "ManifestError",
    "PackReport",
    "ReadReport",
    "Record",
    "SampleBuilder",
    "ShardDataset",
    "WdsExport",
    "collate",
    "dataset_names",
    "export_clip_benchmark_wds",
    "hash_split",
    "load_dataset_spec",
    "mask_region",
    "pack_shards",
    "read_clip_benchmark_wds",
    "read_dataset",
    "read_manifest",
    "read_shard_index",
    "read_source",
    "read_sources",
    "sample_seed",
    "source_specs",
    "train_transform",
    "write_manifest",
]

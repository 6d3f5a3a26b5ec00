"""2D-3D correspondence data: the sample format, the sources, prepared caches and the data module."""

from bpnp.data.base import CorrespondenceDataset, RejectedSample
from bpnp.data.bpnpnet_archive import BPnPNetArchiveDataset
from bpnp.data.cache import CachedDataset, CacheWriter
from bpnp.data.colmap import ColmapDataset
from bpnp.data.datamodule import SOURCES, BlindPnPDataModule, build_dataset
from bpnp.data.modelnet import ModelNet40Dataset
from bpnp.data.rgbd import RGBDDataset
from bpnp.data.sample import Batch, Sample, collate
from bpnp.data.synthetic import ObjectProtocol, SyntheticDataset
from bpnp.data.transforms import PointControl

__all__ = [
    "SOURCES",
    "BPnPNetArchiveDataset",
    "Batch",
    "BlindPnPDataModule",
    "CacheWriter",
    "CachedDataset",
    "ColmapDataset",
    "CorrespondenceDataset",
    "ModelNet40Dataset",
    "PointControl",
    "RGBDDataset",
    "RejectedSample",
    "Sample",
    "ObjectProtocol",
    "SyntheticDataset",
    "build_dataset",
    "collate",
]

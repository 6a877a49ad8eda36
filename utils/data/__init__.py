"""Downstream data: dataset specs and registry, on-disk layouts, torch datasets and the study's transforms.

    from utils.data import load_datasets
    splits = load_datasets("dtd", "/data/dtd", interpolation="bicubic")
"""
from utils.data.datasets import ImageFileDataset, TensorImageDataset, make_dataset, read_image
from utils.data.fingerprint import content_fingerprint
from utils.data.layouts import LAYOUTS, FileSamples, Layout, RawSplits, TensorSamples
from utils.data.loading import (
                                DATASETS,
                                DatasetSplits,
                                get_dataset_spec,
                                load_dataset_specs,
                                load_datasets,
                                stratified_subset,
)
from utils.data.spec import DatasetSpec
from utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from utils.data.yolo import is_detection_dataset, load_detection_datasets, load_yolo_data

__all__ = ["DATASETS", "IMAGENET_MEAN", "IMAGENET_STD", "LAYOUTS", "DatasetSpec", "DatasetSplits", "FileSamples",
           "ImageFileDataset", "Layout", "RawSplits", "TensorImageDataset", "TensorSamples", "build_transforms",
           "get_dataset_spec", "load_dataset_specs", "load_datasets", "make_dataset", "read_image",
           "stratified_subset", "is_detection_dataset", "load_detection_datasets", "load_yolo_data",
           "content_fingerprint"]

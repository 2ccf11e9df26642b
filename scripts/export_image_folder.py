"""Write a built-in data set as a folder of PNGs (root/train/<class>/, root/test/<class>/), the
layout `codanet train finetune --set data_dir=ROOT` reads (docs/finetuning.md).

    python scripts/export_image_folder.py mnist_5k runs/mnist_5k_png
"""
import argparse

from codanet.data import load_dataset
from codanet.data.folder import write_image_folder

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="mnist_5k, fashion_mnist, ...")
    p.add_argument("root", help="output folder")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    args = p.parse_args()
    for split in ("train", "test"):
        n = write_image_folder(load_dataset(args.dataset, split, args.data_dir), args.root, split, args.limit)
        print(f"{split}: {n} images under {args.root}/{split}/")

"""Data: the paper's preprocessing (Sec. 2) and augmentation (Sec. 4.1), from image folders or a prepared store.

    images.py       the ImageFolder layout, robust decoding, the R x R square every loader starts from
    samplers.py     order, sharding and seeds (resumable mid-epoch); the Loaders both paths return
    augment.py      the one augmentation: batched crop, flip, PCA colour shift, mean image, ten views
    folder.py       loaders over ROOT/train, ROOT/val (workers decode; the device augments)
    store.py        loaders over a prepared store (memory-mapped uint8 or JPEG-in-one-file)
    prepare.py      python -m dataloader.prepare ROOT OUT: write a store once
    stats.py        mean image, channel mean / std, RGB covariance eigen-decomposition
    demo.py         the bundled demo set;  imagenet_val.py  ImageNet's flat val folder -> class folders
"""

"""MNIST's files: download with checksums, IDX decoding, prepare and cache, the offline mirror, augmentation."""

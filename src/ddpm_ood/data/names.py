"""The datasets ``get_datasets.py`` can prepare (a leaf module: the parser reads it before any
heavy import)."""

DATASETS = ("MNIST", "FashionMNIST", "CIFAR10", "SVHN", "CelebA", "Digits", "MNIST5k", "MNI152", "MedNIST", "MedMNIST3D",
            "Decathlon")

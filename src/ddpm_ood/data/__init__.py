"""Images in, before any model: split files and image / volume loading (``loading``), the dataset
names (``names``), and the benchmark and medical datasets' download or conversion (``download``,
``medical``)."""


def __getattr__(name: str):  # deprecated: this package took the name of the 0.4 module ddpm_ood.data
    from ddpm_ood._moved import forward_attribute

    return forward_attribute(__name__, name)

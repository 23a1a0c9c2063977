"""Numbers from images and scores: the image distances (``distances``: MSE and LPIPS) and the
score arithmetic (``scoring``: the one z-score, AUROC and the OOD metrics, bootstrap intervals,
thresholds)."""


def __getattr__(name: str):  # deprecated: this package took the name of the 0.4 module ddpm_ood.metrics
    from ddpm_ood._moved import forward_attribute

    return forward_attribute(__name__, name)

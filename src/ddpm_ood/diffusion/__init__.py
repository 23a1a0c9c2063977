"""The diffusion process, knowing nothing of files: the DDPM schedule and the PLMS sampler
(``ddpm``) and the paper's multi-start reconstruction (``reconstruction``)."""


def __getattr__(name: str):  # deprecated: this package took the name of the 0.4 module ddpm_ood.diffusion
    from ddpm_ood._moved import forward_attribute

    return forward_attribute(__name__, name)

"""Training: every DDPM setting declared once (``settings``), the DDPM loop (``ddpm``:
``TrainLoop``) and a first stage's (``first_stage``: ``AutoencoderTrainer``)."""


def __getattr__(name: str):  # deprecated: this package took the name of the 0.4 module ddpm_ood.training
    from ddpm_ood._moved import forward_attribute

    return forward_attribute(__name__, name)

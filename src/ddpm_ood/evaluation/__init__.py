"""From a run's results to what a reader sees: typed scores and metrics (``scores``), tables and
files (``report``), figures (``figures``) and anomaly maps (``anomaly_maps``)."""


def __getattr__(name: str):  # deprecated: this package took the name of the 0.4 module ddpm_ood.evaluation
    from ddpm_ood._moved import forward_attribute

    return forward_attribute(__name__, name)

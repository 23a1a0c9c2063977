"""The fit files, one home for their format: ``ood/fits/<detector>.json``.

``ood_detection.py`` fits every detector on in-distribution images and saves, per detector (and
for the combinations), a plain-JSON record (never a pickle) with:

- ``detector``, ``main`` (its main score), ``fit_set`` (val or fit) and ``options`` (the flags
  that chose what was fitted);
- ``state``: the fit itself, as the detector's ``fit_state`` writes it (its ``load_fit`` reads it);
- ``settings``: the detector's settings as scored; ``fit_results``: the manifest of the results it
  was fitted on (which holds the model's identity); a combination's ``members`` instead;
- ``tpr``, ``threshold_set`` and ``thresholds``: per score, the threshold at that in-distribution TPR;
- ``sha256``: the seal of the rest, so that a file changed by hand is refused.

:func:`fit_record` builds a record, :func:`write_fit` writes it sealed, :func:`read_fit` reads it
back, checked: whole, unchanged, and fitted on the results the run holds now.
"""
from __future__ import annotations

import json
from pathlib import Path

from ddpm_ood.detectors import detector_class
from ddpm_ood.utils.errors import ScoringError
from ddpm_ood.runs.layout import RunFiles, made_with, manifest_differences, read_manifest, record_sha256, same_results
from ddpm_ood.metrics.scoring import fit_threshold


def fit_record(result, options, state: dict, fit_set: str, **entries) -> dict:
    """What scoring new images needs (ood/fits/<detector>.json, plain JSON): the fit, what it was
    fitted on and with, and each score's threshold at ``options.tpr`` on the validation scores.
    ``result``: an :class:`ddpm_ood.evaluation.scores.DetectorResult`; ``options``: its Options."""
    threshold_set = "val" if all("val" in by_set for by_set in result.scores.values()) else fit_set
    return {"detector": result.name, "main": result.main, "fit_set": fit_set, **entries,
            "options": {k: getattr(options, k) for k in ("max_start_t", "min_start_t", "t_skip", "fit_on",
                                                          "bootstrap_seed")},
            "state": state, "tpr": options.tpr, "threshold_set": threshold_set,
            "thresholds": {score: fit_threshold(by_set[threshold_set].to_numpy(), options.tpr)
                           for score, by_set in result.scores.items()}}


def write_fit(run: RunFiles, record: dict) -> Path:
    """Write a detector's record, sealed, to ``ood/fits/<detector>.json``."""
    from ddpm_ood.utils.files import write_text_atomic

    path = run.fit(record["detector"])
    write_text_atomic(path, json.dumps(seal(record), indent=1))
    return path


def read_fit(run: RunFiles, name: str) -> dict:
    """A detector's fit file, checked: whole, unchanged, and made from the run's current results."""
    path = run.fit(name)
    try:
        record = unseal(json.loads(path.read_text()), path)
    except FileNotFoundError:
        raise ScoringError(f"{path} does not exist: re-run ood_detection.py on this run (it saves every detector's "
                           "fit).") from None
    except (OSError, ValueError) as err:
        raise ScoringError(f"Cannot read {path} ({err}); re-run ood_detection.py on this run.") from err
    if "fit_results" in record:  # a measured detector: its results must be those it was fitted on
        results = run.results(detector_class(name).folder(), record["fit_set"])
        current = read_manifest(results)
        if current is None or not same_results(current, record["fit_results"]):
            changed = manifest_differences(record["fit_results"], made_with(current or {}))
            raise ScoringError(f"{path} was fitted on other results than {results} holds now ({'; '.join(changed)}): "
                               "re-run ood_detection.py on this run.")
    return record


def seal(record: dict) -> dict:
    """``record`` with the SHA-256 of its content, so that a fit file changed by hand is refused."""
    return {**record, "sha256": record_sha256(record)}


def unseal(record: dict, path: Path) -> dict:
    """The record of a fit file, checked against its SHA-256."""
    if not isinstance(record, dict) or record.get("sha256") != record_sha256(record):
        raise ScoringError(f"{path} was changed after ood_detection.py wrote it (its SHA-256 does not match its "
                           "content). Re-run ood_detection.py on this run to fit the detectors again.")
    return {k: v for k, v in record.items() if k != "sha256"}

"""A run folder: every artefact path and the settings manifest of each results file (``layout``),
one process per run (``lock``), results read back checked (``results``) and written in resumable
chunks (``store``)."""

"""What every layer uses: the user-facing errors (``errors``), atomic file writes (``files``), how a
process runs (``runtime``: device, precision, Ctrl-C) and torchrun process groups (``distributed``)."""

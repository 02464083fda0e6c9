"""One module per ``twins-np`` subcommand (see :mod:`twins_np.cli`)."""

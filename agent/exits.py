"""Exit codes of every `fos` command: 0 done, 1 the operation failed, 2 bad input (nothing was changed)."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

"""The exit codes of every command: 0 success, 1 some job failed, 2 usage or configuration."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

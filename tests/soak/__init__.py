"""Long-running reliability harnesses, shared by the CI tests and the soak scripts in bench/."""

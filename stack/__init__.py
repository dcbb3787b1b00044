"""Running the service on one machine: `make up`'s launcher and supervisor, and the embedded LM server (which
the `lm` image runs). What only tests and benchmarks need is in harness/."""

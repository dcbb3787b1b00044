"""Running the stack: `make up`'s launcher and supervisor, the embedded LM server, the scripted LM, and the
helpers that start the same processes for the tests and the benchmarks."""

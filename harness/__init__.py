"""What the tests and the benchmarks run the service with: starting its processes on free ports, the scripted
LM, a webhook receiver, an MLflow server, a Redis group with Sentinels, an SSE client, the failover scenario.
None of it ships: the images copy stack/ (make up's launcher and the embedded LM), never this."""

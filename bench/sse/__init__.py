"""The SSE benchmark's parts (`python -m bench.sse_bench`, whose CLI is bench/sse_bench.py).

`clients`: the SSE clients, raw asyncio protocols run in child processes;
`measure`: CPU sampling, the pub/sub observer, matching token events to LM
chunks; `profile`: py-spy on the API process; `stack`: the processes and one
run; `render`: the report (bench/results/sse.md).
"""

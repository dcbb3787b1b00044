"""The benchmark suite's parts (`python -m bench`, whose CLI is bench/suite.py).

`common`: the systems compared, the LM's timing, `log`; `stack`: the processes
measured; `closed_loop`: scenarios 1 and 2; `capacity`: scenario 3 (LM calls in
flight, memory with open SSE streams); `ttft`: scenario 4; `profiling`: the
py-spy profile; the report (BENCHMARKS.md): `results` (what a run measured,
the targets, the notes), `report_closed_loop` (sections 1 and 2),
`report_sections` (3 to 5) and `render` (the rest, and the whole).
"""

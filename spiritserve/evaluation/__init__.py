"""`spiritserve eval`: the paper's zero-shot comprehension benchmarks (sWUGGY, sBLIMP, spoken StoryCloze, MMLU)
and STSP, run against a running server through its `/v1/score` and `/v1/generate` routes.

`client` talks to the server, `report` holds results, confidence intervals and output, `tasks` is the registry
the CLI reads (`command`); each benchmark lives in its own module, imported only when its task runs.
"""

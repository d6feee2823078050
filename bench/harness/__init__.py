"""The speed benchmark behind ``bench/run.py``: one workload, one subprocess per system, one report.

``workload``  what every system runs (the same prompt token ids, the same token counts).
``worker``    the child-process side: run one system, print its measurements as JSON.
``systems``   one module per system (lhama, llama.cpp, transformers), each a ``run(cfg)``.
``report``    the table with ratios, the JSON files and the plot.
"""

"""The application on top of the stages: the `item` CLI, orchestration (runner), the Python API
(predict), the HTML report and plots, the demo, `item reproduce` and the polars query helper."""

"""The ITEM method apart from any stage: Eq. 3-8 arithmetic, the heads, metrics, evaluation rules,
the perturbation grid, and the reading of labelled cached rows that fit, evaluate, the baselines
and the report share. It uses the engine's store; it never imports a stage."""

"""The ITEM method apart from any stage: Eq. 3-8 arithmetic, the heads, metrics, evaluation rules,
the perturbation grid, the format-bias check, the paper's protocol and Tables I-III (its figures in
paper_tables.json), and the reading of labelled cached rows that fit, evaluate, the baselines and
the report share. It uses the engine's store; it never imports a stage."""

# cldsgm: one study as a DAG. Plain `snakemake` runs the embedded default study (params/config.yaml);
# `snakemake --configfile params/<study>.yaml` runs another. Every rule is one `cldsgm <verb>` call.
#   data -> train -> sample (SDE x sampler x striding x NFE, + exact-score oracle rows) -> evaluate -> report
#   beside them: each metric's floor, the scores' smoothness, the objectives' variance, the approach to equilibrium
#   and, for a study's `conditional` section: train classifiers -> guided / inpainted sets -> their evaluation


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/properties.smk"
include: "workflow/rules/conditional.smk"
include: "workflow/rules/report.smk"


# seconds of work each: on a cluster they run where Snakemake runs instead of waiting in the queue (so does the
# gathering `sample` step of sharded sampling, sample.smk)
localrules:
    all,
    mlflow_init,
    report,
    track,


onstart:
    check_store_for_executor()
    check_nodes_for_executor()


rule all:
    default_target: True
    input:
        report_outputs(),
        tracked_output(),

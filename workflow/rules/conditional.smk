# Conditional generation (the study's `conditional` section): noise-conditioned classifiers trained like
# the score models (`cldsgm train-classifier`), then one job per conditional sample set (a class-conditional set
# guided by a classifier, `cldsgm sample --classifier`, or an inpainted set, `cldsgm inpaint`), then one job per
# group of sets scoring them: class accuracy (and the known pixels' error of inpainted sets), plus per-class
# FD-digits / sliced W2 of guided sets and FD-digits / sliced W2 of completions against the held-out split. The sets
# come from cldsgm.study.conditional_table (TABLE["conditional"]); the functions mapping them to flags are in
# common.smk.

rule train_classifier:
    input:
        data=lambda wc: data_file(CLASSIFIERS[wc.classifier]["data"], "train"),
        config=lambda wc: CLASSIFIERS[wc.classifier]["config"],
        parent=parent_run(),
    output:
        done=f"{RESULTS}/classifiers/{{classifier}}/done.json",
    wildcard_constraints:
        classifier=one_of(CLASSIFIERS),
    params:
        flags=lambda wc, input: set_flags({**(CLASSIFIERS[wc.classifier].get("overrides") or {}),
                                           "data.path": input.data, "seed": STUDY["seed"]}),
        tracking=parent_flag,
        run_dir=f"{RESULTS}/classifiers/{{classifier}}",
    threads: 1
    priority: 1
    log:
        f"{LOGS}/train_classifier/{{classifier}}.log",
    benchmark:
        f"{BENCH}/train_classifier/{{classifier}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm train-classifier --config {input.config:q} --run-dir {params.run_dir:q} {params.flags} "
        "{params.tracking} --done {output.done:q} > {log:q} 2>&1"


rule conditional_sample:
    input:
        conditional_inputs,
    output:
        done=f"{RESULTS}/conditional/{{source}}/{{crow}}/done.json",
    wildcard_constraints:
        crow=r"(guided|inpaint)-[A-Za-z0-9_.-]+",
    params:
        args=conditional_args,
    threads: 1
    resources:
        gpu=SAMPLING["gpus"],
    log:
        f"{LOGS}/conditional/{{source}}/{{crow}}.log",
    benchmark:
        f"{BENCH}/conditional/{{source}}/{{crow}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "cldsgm {params.args} --done {output.done:q} > {log:q} 2>&1"


# one evaluation job per group of sets (conditional_group: a source's guided sets of one classifier and class, or its
# inpainted sets): one process and one torch import for several sets, the records in each set's own folder
rule conditional_eval:
    input:
        conditional_eval_inputs,
    output:
        done=f"{RESULTS}/records/conditional/{{source}}/{{group}}.done",
    wildcard_constraints:
        group=r"guided-[A-Za-z0-9_]+-k[0-9]+|inpaint",
    params:
        pairs=conditional_pairs,
        judge=conditional_judge,
        distance=conditional_distance,
        bootstrap=EVALUATION["bootstrap"],
    threads: 1
    log:
        f"{LOGS}/conditional_eval/{{source}}/{{group}}.log",
    benchmark:
        f"{BENCH}/conditional_eval/{{source}}/{{group}}.tsv"
    conda:
        "../envs/cldsgm.yaml"
    shell:
        "(cldsgm class-accuracy {params.pairs} --classifier {params.judge:q} --bootstrap {params.bootstrap:q} "
        "&& cldsgm {params.distance}) > {log:q} 2>&1 && echo complete > {output.done:q}"
